"""Diffusion Policy baseline: train on par-agent's demos, evaluate with par-eval's own loop.

    python -m experiments.baselines.diffusion_policy train --data DEMOS.h5 --out runs/dp --minutes 35
    python -m experiments.baselines.diffusion_policy eval --policy runs/dp/final --episodes 50 --out results/dp.json

``train`` reads par-train's training split of the demos (its held-out episodes left out, so both
models learn from the same demos) with :class:`par_agent.data.PhysicalStepDataset` and cuts ManiSkill's
windows from them (:mod:`experiments.baselines.dp_data`: episode starts padded, as the policy meets
them), records the demos' env (``make_env`` keyword arguments) in the checkpoint, and trains for
``--steps``, or for as many steps as fit ``--minutes`` of optimisation time: it measures a step
first, sizes the cosine schedule to that count and re-plans it on the pace of its whole steps
200-450 (still in the warm-up), so the learning rate anneals as the budget ends.
Gathering batches is timed apart (``summary.json``: ``load_minutes``). The budget rule for the
comparison with PAR (docs/RESULTS.md): the same total minutes, PAR's tokenizer and video
pretraining included. It checkpoints atomically every ``--ckpt-minutes`` and resumes from
``OUT/latest`` (with the schedule it planned) when run again with the same ``--out``.

On privileged demos (StackCube's cube poses in the state), ``--locator par-stackcube`` copies that
PAR policy's object locator into the checkpoint: the policy then acts from the frame and the plain
state, the locator completing it, so both policies are given the same located state.

``eval`` runs ``par_agent.evaluate.evaluate`` (the loop behind ``par-eval``) on the default seeds,
so the two policies meet the same episodes.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from experiments.baselines.dp_data import DPWindows
from experiments.baselines.dp_model import DiffusionPolicyNet, DPConfig
from experiments.baselines.dp_policy import DPPolicy, make_scheduler, save_policy
from par_agent.atomic import atomic_folder


REPLAN_FROM, REPLAN_AT = 200, 450
"""Under a budget of minutes the plan is measured again on the optimisation time of steps 200-450
(all of a step: forward, backward, update, EMA; past the first steps' warm-up of caches and
allocator), still within the learning-rate warm-up, where the rate does not depend on the plan:
so the cosine schedule ends with the budget, not with the first estimate (10 forward and backward
passes plus 15% for the update, which was 15% slow on PushCube and 4% fast on PickCube)."""


def _save_trainer(out: Path, step: int, planned: int, net, ema, opt, sched, elapsed: float, load_s: float,
                  plan: dict) -> None:
    with atomic_folder(out / "latest") as tmp:
        torch.save({"step": step, "planned_steps": planned, "plan": plan, "net": net.state_dict(), "ema": ema.state_dict(),
                    "opt": opt.state_dict(), "sched": sched.state_dict(), "elapsed_s": elapsed, "load_s": load_s,
                    "rng": torch.get_rng_state()}, tmp / "trainer.pt")
        (tmp / "config.json").write_text(json.dumps(net.cfg.to_dict(), indent=2) + "\n")


def measure_step_s(net, windows: DPWindows, scheduler, batch_size: int, steps: int, g: torch.Generator) -> float:
    """Seconds of one training step's forward and backward (no update), the median of ``steps``
    after one warm-up: what sizes the schedule to a budget of minutes."""
    times = []
    for _ in range(steps + 1):
        frames, states, actions = windows.batch(torch.randint(0, len(windows), (batch_size,), generator=g).numpy())
        t = time.perf_counter()
        net.loss(frames, states, actions, scheduler, generator=g).backward()
        times.append(time.perf_counter() - t)
    net.zero_grad(set_to_none=True)
    return float(np.median(times[1:]))


def _locator(policy: str, state_dim: int):
    """The object locator of the PAR checkpoint ``policy`` (a folder or a shipped name), checked
    against the demos' privileged state of ``state_dim`` numbers."""
    from par_agent.hub import resolve
    from par_agent.models.locator import load_locator

    locator = load_locator(resolve(policy))
    if locator is None:
        raise SystemExit(f"--locator {policy}: that checkpoint has no object locator (par-locate makes one)")
    if locator.cfg.privileged_dim != state_dim:
        raise SystemExit(f"--locator {policy} rebuilds a state of {locator.cfg.privileged_dim} numbers; the demos' "
                         f"state has {state_dim}: pass the privileged demos that policy was fine-tuned on")
    return locator


def train(a: argparse.Namespace) -> Path:
    """Train to ``--steps``, or to the steps that fit ``--minutes`` of optimisation time (measured
    first, so that the cosine schedule ends with the run); gathering batches is timed apart and not
    counted in the budget."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from par_agent.data import PhysicalStepDataset
    from par_agent.data.sources import env_info, make_env_kwargs

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    cfg = DPConfig(num_inference_steps=a.inference_steps, unet_dims=list(a.unet_dims))
    # par-train's training split (its held-out episodes left out), so both train on the same demos
    ds = PhysicalStepDataset(a.data, history=2, chunk_size=1, split="train", train_episodes=a.train_episodes)
    info = env_info(a.data)
    control = info.get("env_kwargs", {}).get("control_mode", "pd_joint_pos")
    cfg.state_dim, cfg.action_dim = ds.states.shape[1], ds.actions.shape[1]
    cfg.image_size = ds.frame_shape[0]
    cfg.delta_actions = "delta" in control
    cfg.env_kwargs = make_env_kwargs(info) if info else {}
    cfg.task = info.get("env_id", "")
    locator = _locator(a.locator, cfg.state_dim) if a.locator else None
    windows = DPWindows(ds, cfg.obs_horizon, cfg.pred_horizon, cfg.delta_actions)
    net = DiffusionPolicyNet(cfg)
    net.set_stats(ds.stats)
    scheduler = make_scheduler(cfg)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(a.ema))
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, betas=(0.95, 0.999), weight_decay=1e-6)
    step, elapsed, load_s, planned = 0, 0.0, 0.0, a.steps
    plan: dict = {}  # how the steps were planned: first estimate, warm-up, re-planned count
    resume = out / "latest" / "trainer.pt"
    st = torch.load(resume, weights_only=False) if resume.is_file() else None
    if st is not None:
        if st["net"]["action_min"].shape != net.action_min.shape:
            raise ValueError(f"{out}/latest was trained on other demos (action size differs); use another --out")
        step, elapsed, load_s = st["step"], st["elapsed_s"], st.get("load_s", 0.0)
        # a budget of minutes keeps the schedule it measured; a count of steps is the one asked for now
        planned = st.get("planned_steps", a.steps) if math.isfinite(a.minutes) else a.steps
        plan = st.get("plan", {}) if math.isfinite(a.minutes) else {}
    elif math.isfinite(a.minutes):
        g0 = torch.Generator().manual_seed(a.seed + 1)
        per_step = measure_step_s(net, windows, scheduler, a.batch_size, 10, g0) * 1.15  # + the update and EMA
        planned = max(1, min(a.steps, int(60 * a.minutes / per_step)))
        plan = {"first_estimate_steps": planned, "first_estimate_s": per_step}
        print(f"about {per_step:.3f} s a step: {planned} steps fit {a.minutes:g} min", file=sys.stderr)
    warmup = plan.setdefault("warmup", min(a.warmup, planned // 10 + 1))
    sched = get_cosine_schedule_with_warmup(opt, warmup, planned)
    if st is not None:
        net.load_state_dict(st["net"]), ema.load_state_dict(st["ema"]), opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        torch.set_rng_state(st["rng"])
        print(f"resuming from {out}/latest at step {step} of {planned} ({elapsed / 60:.1f} min done)", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"Diffusion Policy: {n_params / 1e6:.2f} M parameters, {ds.num_episodes} demos, {len(windows)} windows, "
          f"{control}; {planned} steps (budget {a.steps} steps or {a.minutes} min)", file=sys.stderr)
    g = torch.Generator().manual_seed(a.seed + step)
    log = open(out / "metrics.csv", "a")
    last_ckpt = time.time()
    bar = tqdm(total=planned, initial=step, desc="dp train", disable=a.no_progress)
    net.train()
    replan = math.isfinite(a.minutes) and "replanned_at" not in plan and REPLAN_AT <= warmup and planned > REPLAN_AT
    elapsed_from = elapsed if step == REPLAN_FROM else None
    while step < planned and elapsed < 60 * a.minutes * 1.25:  # the measured plan, with a margin
        t = time.perf_counter()
        frames, states, actions = windows.batch(torch.randint(0, len(windows), (a.batch_size,), generator=g).numpy())
        t1 = time.perf_counter()
        loss = net.loss(frames, states, actions, scheduler, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update_parameters(net)
        load_s += t1 - t
        elapsed += time.perf_counter() - t1
        step += 1
        bar.update(1)
        if replan and step == REPLAN_FROM:
            elapsed_from = elapsed
        if replan and step == REPLAN_AT and elapsed_from is not None:  # the pace of whole steps; in the warm-up the rate is the same either way
            pace = (elapsed - elapsed_from) / (REPLAN_AT - REPLAN_FROM)
            planned = max(step + 1, min(a.steps, int(60 * a.minutes / pace)))
            plan.update(replanned_at=step, replanned_s=pace)
            sched = get_cosine_schedule_with_warmup(opt, warmup, planned, last_epoch=step - 1)
            bar.total = planned
            print(f"re-planned at step {step}: {pace:.3f} s a step, {planned} steps fit {a.minutes:g} min", file=sys.stderr)
        if step % 100 == 0:
            log.write(f"{step},loss,{loss.item():.6f},{elapsed:.1f}\n")
            log.flush()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if time.time() - last_ckpt > 60 * a.ckpt_minutes:
            _save_trainer(out, step, planned, net, ema, opt, sched, elapsed, load_s, plan)
            last_ckpt = time.time()
    bar.close()
    _save_trainer(out, step, planned, net, ema, opt, sched, elapsed, load_s, plan)
    final = copy.deepcopy(net)
    final.load_state_dict(ema.module.state_dict())
    path = save_policy(final, out / "final", locator)
    summary = {"steps": step, "planned_steps": planned, "plan": plan, "minutes": elapsed / 60, "load_minutes": load_s / 60,
               "final_lr": sched.get_last_lr()[0], "batch_size": a.batch_size, "threads": a.threads,
               "parameters": n_params, "demos": ds.num_episodes, "windows": len(windows), "data": str(a.data),
               "locator": a.locator}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {path}: {step} steps in {summary['minutes']:.1f} min of optimisation "
          f"(+{summary['load_minutes']:.1f} min gathering batches)", file=sys.stderr)
    return path


def evaluate_cli(a: argparse.Namespace) -> dict:
    from par_agent.evaluate import evaluate_to, parse_seeds

    policy = DPPolicy.from_pretrained(a.policy, num_threads=a.threads)
    task = a.task or policy.task
    seeds = parse_seeds(a.seeds, a.episodes)
    info = {"name": "diffusion_policy", "path": str(a.policy), "threads": a.threads,
            **{k: getattr(policy.cfg, k) for k in ("obs_horizon", "pred_horizon", "act_horizon", "num_inference_steps")}}
    run_id = {"policy": str(a.policy), "task": task, "seeds": seeds, "num_envs": a.num_envs, "threads": a.threads,
              "max_episode_steps": a.max_episode_steps}
    extra = {"policy": info}
    summary = Path(a.policy).parent / "summary.json"  # train's record of its budget, beside OUT/final
    if summary.is_file():
        extra["training"] = json.loads(summary.read_text())
    report = evaluate_to(a.out, run_id, extra, policy, task, seeds, num_envs=a.num_envs, videos=a.videos,
                         max_episode_steps=a.max_episode_steps, video_dir=a.video_dir, progress=not a.no_progress)
    lo, hi = report["ci95"]
    print(f"{task}: success {report['success_rate']:.1%} over {report['n_episodes']} episodes (95% CI {lo:.1%}-{hi:.1%}); "
          + ", ".join(f"{k} {v:.0%}" for k, v in report["subgoal_rates"].items()), file=sys.stderr)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.baselines.diffusion_policy", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train on demos (ManiSkill .h5, compact folder or a folder of those)")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=30_000, help="most optimizer steps (the recipe's 30k)")
    t.add_argument("--minutes", type=float, default=float("inf"),
                   help="optimisation-time budget: the steps that fit it are measured first and the schedule sized to them")
    t.add_argument("--batch-size", type=int, default=64, help="the recipe's 256 is a GPU batch")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--warmup", type=int, default=500)
    t.add_argument("--ema", type=float, default=0.999)
    t.add_argument("--inference-steps", type=int, default=100, help="DDPM steps when acting (the recipe's 100)")
    t.add_argument("--unet-dims", type=int, nargs="+", default=[64, 128, 256], help="U-Net widths (the recipe's)")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--ckpt-minutes", type=float, default=5.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--train-episodes", type=int, default=None,
                   help="the first N of par-train's training episodes (as par-train --train-episodes)")
    t.add_argument("--locator", default=None,
                   help="a located PAR policy (folder or name, e.g. par-stackcube) whose object locator the policy "
                        "acts through, on privileged demos")
    t.add_argument("--no-progress", action="store_true")
    e = sub.add_parser("eval", help="success rate with par-eval's loop and seeds")
    e.add_argument("--policy", required=True)
    e.add_argument("--task", default=None)
    e.add_argument("--episodes", type=int, default=50)
    e.add_argument("--seeds", default=None)
    e.add_argument("--num-envs", type=int, default=2)
    e.add_argument("--videos", type=int, default=0)
    e.add_argument("--video-dir", default="outputs/dp_videos")
    e.add_argument("--max-episode-steps", type=int, default=None, help="default: the one the demos were recorded with")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--out", default=None)
    e.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    train(a) if a.cmd == "train" else evaluate_cli(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
