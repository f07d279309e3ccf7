"""Diffusion Policy baseline: train on par-agent's demos, evaluate with par-eval's own loop.

    python -m experiments.baselines.diffusion_policy train --data DEMOS.h5 --out runs/dp --minutes 35
    python -m experiments.baselines.diffusion_policy eval --policy runs/dp/final --episodes 50 --out results/dp.json

``train`` reads the demos with :class:`par_agent.data.PhysicalStepDataset` (one control step per
physical step, so a window holds consecutive frames and actions), records the demos' env
(``make_env`` keyword arguments) in the checkpoint, and stops after ``--steps`` or ``--minutes`` of
wall-clock time, whichever comes first: the CPU budget is what the PAR comparison fixes. It
checkpoints atomically every ``--ckpt-minutes`` and resumes from ``OUT/latest`` when run again with
the same ``--out``. ``eval`` runs ``par_agent.evaluate.evaluate`` (the loop behind ``par-eval``) on
the default seeds, so the two policies meet the same episodes.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from experiments.baselines.dp_model import DiffusionPolicyNet, DPConfig
from experiments.baselines.dp_policy import DPPolicy, make_scheduler, save_policy
from par_agent.atomic import atomic_folder


def hold_still(actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace padded actions (mask False) of delta control by "stay": zero arm, the last real gripper.
    actions (B, Tp, Da), mask (B, Tp) -> (B, Tp, Da)."""
    out = actions.clone()
    last = (mask.long().cumsum(1) - 1).clamp_min(0)  # index of the latest real action at each position
    gripper = actions[..., -1].gather(1, last)
    out[..., :-1] = torch.where(mask[..., None], actions[..., :-1], torch.zeros_like(actions[..., :-1]))
    out[..., -1] = torch.where(mask, actions[..., -1], gripper)
    return out


def batch_to_inputs(batch: dict, cfg: DPConfig) -> tuple[torch.Tensor, ...]:
    """A PhysicalStepDataset batch (chunk_size 1, history pred_horizon + 1) -> frames (B, To, H, W, 3),
    states (B, To, Ds), actions (B, Tp, Da)."""
    To = cfg.obs_horizon
    actions = batch["actions"][:, :, 0]
    if cfg.delta_actions:
        actions = hold_still(actions, batch["action_mask"][:, :, 0])
    return batch["frames"][:, :To], batch["state"][:, :To], actions


def _save_trainer(out: Path, step: int, net, ema, opt, sched, elapsed: float) -> None:
    with atomic_folder(out / "latest") as tmp:
        torch.save({"step": step, "net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "elapsed_s": elapsed, "rng": torch.get_rng_state()},
                   tmp / "trainer.pt")
        (tmp / "config.json").write_text(json.dumps(net.cfg.to_dict(), indent=2) + "\n")


def train(a: argparse.Namespace) -> Path:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from diffusers.optimization import get_cosine_schedule_with_warmup

    from par_agent.data import PhysicalStepDataset
    from par_agent.data.sources import env_info, make_env_kwargs

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    cfg = DPConfig(num_inference_steps=a.inference_steps, unet_dims=list(a.unet_dims))
    ds = PhysicalStepDataset(a.data, history=cfg.pred_horizon + 1, chunk_size=1, split="all")
    info = env_info(a.data)
    control = info.get("env_kwargs", {}).get("control_mode", "pd_joint_pos")
    cfg.state_dim, cfg.action_dim = ds.states.shape[1], ds.actions.shape[1]
    cfg.image_size = ds.frame_shape[0]
    cfg.delta_actions = "delta" in control
    cfg.env_kwargs = make_env_kwargs(info) if info else {}
    cfg.task = info.get("env_id", "")
    net = DiffusionPolicyNet(cfg)
    net.set_stats(ds.stats)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(a.ema))
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, betas=(0.95, 0.999), weight_decay=1e-6)
    sched = get_cosine_schedule_with_warmup(opt, a.warmup, a.steps)
    step, elapsed = 0, 0.0
    if (out / "latest" / "trainer.pt").is_file():
        st = torch.load(out / "latest" / "trainer.pt", weights_only=False)
        if st["net"]["action_min"].shape != net.action_min.shape:
            raise ValueError(f"{out}/latest was trained on other demos (action size differs); use another --out")
        net.load_state_dict(st["net"]), ema.load_state_dict(st["ema"]), opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        torch.set_rng_state(st["rng"])
        step, elapsed = st["step"], st["elapsed_s"]
        print(f"resuming from {out}/latest at step {step} ({elapsed / 60:.1f} min done)", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    scheduler = make_scheduler(cfg)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"Diffusion Policy: {n_params / 1e6:.2f} M parameters, {ds.num_episodes} demos, {len(ds)} windows, "
          f"{control}; budget {a.steps} steps or {a.minutes} min", file=sys.stderr)
    g = torch.Generator().manual_seed(a.seed + step)
    log = open(out / "metrics.csv", "a")
    t0, last_ckpt = time.time() - elapsed, time.time()
    bar = tqdm(total=a.steps, initial=step, desc="dp train", disable=a.no_progress)
    net.train()
    while step < a.steps and (time.time() - t0) < 60 * a.minutes:
        idx = torch.randint(0, len(ds), (a.batch_size,), generator=g).tolist()
        batch = torch.utils.data.default_collate([ds[i] for i in idx])
        frames, states, actions = batch_to_inputs(batch, cfg)
        loss = net.loss(frames, states, actions, scheduler, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update_parameters(net)
        step += 1
        bar.update(1)
        if step % 100 == 0:
            log.write(f"{step},loss,{loss.item():.6f},{time.time() - t0:.1f}\n")
            log.flush()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if time.time() - last_ckpt > 60 * a.ckpt_minutes:
            _save_trainer(out, step, net, ema, opt, sched, time.time() - t0)
            last_ckpt = time.time()
    bar.close()
    _save_trainer(out, step, net, ema, opt, sched, time.time() - t0)
    final = copy.deepcopy(net)
    final.load_state_dict(ema.module.state_dict())
    path = save_policy(final, out / "final")
    summary = {"steps": step, "minutes": (time.time() - t0) / 60, "batch_size": a.batch_size, "threads": a.threads,
               "parameters": n_params, "demos": ds.num_episodes, "data": str(a.data)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {path}: {step} steps in {summary['minutes']:.1f} min", file=sys.stderr)
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
    report = evaluate_to(a.out, run_id, {"policy": info}, policy, task, seeds, num_envs=a.num_envs, videos=a.videos,
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
    t.add_argument("--minutes", type=float, default=float("inf"), help="wall-clock budget (the CPU budget)")
    t.add_argument("--batch-size", type=int, default=64, help="the recipe's 256 is a GPU batch")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--warmup", type=int, default=500)
    t.add_argument("--ema", type=float, default=0.999)
    t.add_argument("--inference-steps", type=int, default=100, help="DDPM steps when acting (the recipe's 100)")
    t.add_argument("--unet-dims", type=int, nargs="+", default=[64, 128, 256], help="U-Net widths (the recipe's)")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--ckpt-minutes", type=float, default=5.0)
    t.add_argument("--seed", type=int, default=0)
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
