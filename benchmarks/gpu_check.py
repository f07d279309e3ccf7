"""GPU readiness in one run: correctness on the device, benchmarks, and a scaled fine-tune.

    # on a GPU machine (docs/GPU.md gives the exact command, with the demos carried in compact form)
    python -m benchmarks.gpu_check --device cuda --data DEMOS --policy par-pickcube \\
        --scaled-init VIDEO_MODEL --scaled-minutes 5 --out OUT
    # on the CPU, tiny (tests/test_benchmarks.py runs this)
    python -m benchmarks.gpu_check --device cpu --tiny --data DEMOS --out OUT

Parts, in this order (``--parts`` picks some); each is recorded in ``OUT/gpu_check.json`` as soon as it
ends, and one that fails is recorded with its error without stopping the others:

  train   each par-train stage (tokenizer, pretrain-video, finetune) for ``--train-steps`` steps on
          ``--train-data`` (default DEMOS)
          (bf16 autocast on CUDA); every final folder loads back.
  policy  ``PARPolicy.from_pretrained(--policy, device=DEVICE)`` on DEMOS's recorded observations:
          cached and uncached actions agree on the device (same noise), and the device's actions are as
          close to the demos' as the CPU's (the two draw different noise).
  bench   bench_inference at batch 1 and 64: eager; on CUDA also with the diffusion heads compiled
          (``torch.compile(mode="reduce-overhead")``) and with whole lockstep chunks replayed as CUDA
          graphs (``--graphs``, ``ChunkGraphs``); and bench_train with MFU.
  pytest  the model, policy and checkpoint tests with ``PAR_TEST_DEVICE=DEVICE`` (tests/helpers.py).
  scaled  par-train finetune from ``--scaled-init`` at ``--scaled-batch`` for as many steps as fit in
          ``--scaled-minutes`` (or what ``--budget-s`` leaves, less a reserve for loading the data,
          validating and saving), at the rate measured first with bench_train; the final folder is
          copied to ``OUT/scaled/`` for ``par-eval`` on a machine with ManiSkill.

ManiSkill is not needed: the demos are read from files.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

PARTS = ("train", "policy", "bench", "pytest", "scaled")
ROOT = Path(__file__).resolve().parents[1]
H200_BF16_PEAK_TFLOPS = 989.0  # dense bf16, NVIDIA's H200 SXM figure (for MFU)
PYTEST_FILES = ("tests/test_model.py", "tests/test_graphs.py", "tests/test_policy.py", "tests/test_checkpoint.py", "tests/test_masks.py")


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- parts
def part_train(a, work: Path) -> dict:
    """Each par-train stage for a few steps; returns each stage's summary, rate and a load check."""
    from par_agent.models import PhysicalAutoregressiveModel
    from par_agent.training import parse_args, train

    run, rows = work / "train", {}
    for stage in ("tokenizer", "pretrain-video", "finetune"):
        argv = [stage, "--data", *(a.train_data or a.data), "--out", str(run), "--steps", str(a.train_steps),
                "--batch-size", str(a.train_batch), "--device", a.device, "--ckpt-every", str(a.train_steps),
                "--val-every", str(a.train_steps), "--warmup", "0", "--no-progress", "--threads", str(a.threads)]
        if stage == "tokenizer":
            argv += ["--preset", a.preset]
        t0 = time.perf_counter()
        summary = train(parse_args(argv))
        wall = time.perf_counter() - t0
        final = run / stage / "final"
        PhysicalAutoregressiveModel.from_pretrained(str(final), device=a.device)  # loads back on the device
        rows[stage] = {"summary": summary, "wall_s": wall, "steps_per_s": a.train_steps / wall}
        log(f"train {stage}: {a.train_steps} steps in {wall:.1f} s; {summary}")
    if a.policy is None:
        a.policy = str(run / "finetune" / "final")
    if a.scaled_init is None:
        a.scaled_init = str(run / "pretrain-video" / "final")
    return {"autocast": "bf16" if torch.device(a.device).type == "cuda" else "none", "stages": rows}


def recorded_observations(data: list[str], image_size: int, chunk_size: int, max_steps: int):
    """Physical steps of held-out demo episodes, in order: a list of episodes, each a list of
    ``(obs, demo_actions (K, A))`` with ``obs = {"rgb": (H, W, 3) uint8, "state": (D,) float32}``."""
    from par_agent.data import PhysicalStepDataset

    ds = PhysicalStepDataset(data, history=2, chunk_size=chunk_size, split="val", image_size=image_size)
    episodes, last_row, n = [], None, 0
    for i in range(len(ds)):
        item = ds[i]
        if not bool(item["action_mask"][0].all()):
            continue  # the padded end of an episode
        row = int(item["frame_index"][0])
        if last_row is None or row != last_row + 1:
            episodes.append([])
        last_row = row
        obs = {"rgb": item["frames"][0].numpy(), "state": item["state"][0].numpy()}
        episodes[-1].append((obs, item["actions"][0].numpy()))
        n += 1
        if n >= max_steps:
            break
    return episodes


def run_policy(policy, episodes) -> np.ndarray:
    """Chunks the policy predicts on the recorded observations, deterministic: ``(N, K, A)``."""
    K, chunks = policy.cfg.chunk_size, []
    for ep in episodes:
        for t, (obs, _) in enumerate(ep):
            chunk = [policy.predict(obs, episode_start=np.array([t == 0 and k == 0]), deterministic=True)[0]
                     for k in range(K)]  # the same observation for the K control steps of the chunk
            chunks.append(np.stack(chunk))
    return np.stack(chunks)


def part_policy(a, work: Path) -> dict:
    from par_agent import PARPolicy
    from par_agent.config import PARConfig
    from par_agent.hub import CONFIG_NAME, resolve

    torch.backends.cuda.matmul.allow_tf32 = False  # as in a user's process (training turned it on)
    torch.backends.cudnn.allow_tf32 = False
    cfg = PARConfig.from_json(resolve(a.policy) / CONFIG_NAME)  # sizes only: the timed loads come below
    episodes = recorded_observations(a.data, cfg.image_size, cfg.chunk_size, a.policy_steps)
    demo = np.concatenate([np.stack([act for _, act in ep]) for ep in episodes])
    out: dict = {"policy": a.policy, "episodes": len(episodes), "chunks": int(len(demo))}
    runs = {}
    for name, device, cache in (("device_cached", a.device, True), ("device_uncached", a.device, False),
                                ("cpu_cached", "cpu", True)):
        policy = PARPolicy.from_pretrained(a.policy, device=device, use_kv_cache=cache)
        t0 = time.perf_counter()
        runs[name] = run_policy(policy, episodes)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        out[f"{name}_ms_per_control_step"] = 1000 * (time.perf_counter() - t0) / runs[name][:, :, 0].size
    out["cached_vs_uncached_max_abs_diff"] = float(np.abs(runs["device_cached"] - runs["device_uncached"]).max())
    for name in ("device_cached", "cpu_cached"):
        out[f"{name}_mae_to_demo"] = float(np.abs(runs[name] - demo).mean())
    out["action_range"] = float(demo.max() - demo.min())
    log(f"policy: {out}")
    return out


def part_scaled(a, work: Path, out_dir: Path, seconds_left: float) -> dict:
    """par-train finetune at a large batch for about ``--scaled-minutes`` (at most ``seconds_left`` less
    ``--scaled-reserve-s``), from ``--scaled-init``."""
    from benchmarks.bench_train import bench_stage
    from par_agent.models import PhysicalAutoregressiveModel
    from par_agent.training import parse_args, train

    dev = torch.device(a.device)
    model = PhysicalAutoregressiveModel.from_pretrained(a.scaled_init, device=dev).train()
    rate = bench_stage(model, "finetune", a.scaled_batch, steps=10, warmup=3)
    del model
    train_s = min(a.scaled_minutes * 60, seconds_left - a.scaled_reserve_s)
    steps = max(2, int(train_s * 1000 / rate["ms_per_step"]))
    run = work / "scaled"
    argv = ["finetune", "--data", *a.data, "--out", str(run), "--init", a.scaled_init, "--steps", str(steps),
            "--batch-size", str(a.scaled_batch), "--lr", str(a.scaled_lr), "--warmup", str(min(200, steps // 10)),
            "--ema", "0.999", "--ckpt-every", str(max(1, steps // 4)), "--val-every", str(max(1, steps // 2)),
            "--val-windows", "256", "--device", a.device, "--no-progress", "--threads", str(a.threads)]
    log(f"scaled: {rate['ms_per_step']:.1f} ms/step at batch {a.scaled_batch} -> {steps} steps; par-train {' '.join(argv)}")
    t0 = time.perf_counter()
    summary = train(parse_args(argv))
    wall = time.perf_counter() - t0
    dst = out_dir / "scaled"
    shutil.copytree(run / "finetune" / "final", dst, dirs_exist_ok=True)
    shutil.copy(run / "finetune" / "metrics.csv", dst / "metrics.csv")
    return {"argv": argv, "bench_ms_per_step": rate["ms_per_step"], "planned_train_s": train_s, "steps": steps,
            "batch_size": a.scaled_batch,
            "wall_s": wall, "samples_per_s": steps * a.scaled_batch / wall, "summary": summary,
            "final": str(dst)}


def part_bench(a) -> dict:
    from benchmarks import bench_train

    out: dict = {"inference": {}, "train": {}}
    peak = H200_BF16_PEAK_TFLOPS if torch.device(a.device).type == "cuda" else 0.0
    for batch in (1, 64):
        for mode in a.bench_modes if torch.device(a.device).type == "cuda" else ("eager",):
            key = f"batch{batch}_{mode}"
            argv = ["--preset", a.preset, "--device", a.device, "--batch", str(batch), "--contexts", "16",
                    "--repeats", str(a.bench_repeats), "--steady-chunks", str(a.bench_chunks), "--json",
                    "--compile", "reduce-overhead" if mode == "reduce-overhead" else "none", "--threads", str(a.threads)]
            argv += ["--graphs"] if mode == "graphs" else []
            try:  # its own process, under a time limit: a slow compile must not eat the scaled run's time
                proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_inference", *argv], capture_output=True,
                                      text=True, timeout=a.bench_timeout_s, cwd=ROOT)
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["actions_per_s"] = batch * 1000 / r["ms_per_control_step"]
                out["inference"][key] = r
                log(f"bench_inference {key}: {r['ms_per_control_step']:.3f} ms per control step, "
                    f"{r['actions_per_s']:.0f} actions/s")
            except Exception as err:  # a compile failure or time-out is a finding, not the end of the run
                out["inference"][key] = {"error": f"{type(err).__name__}: {err}"}
                log(f"bench_inference {key} failed: {err}")
    for batch in a.bench_train_batches:
        argv = ["--preset", a.preset, "--device", a.device, "--batch-size", str(batch), "--steps", "10",
                "--warmup", "3", "--json", "--threads", str(a.threads)] + (["--peak-tflops", str(peak)] if peak else [])
        out["train"][f"batch{batch}"] = r = bench_train.main(argv)
        log(f"bench_train batch {batch}: {json.dumps(r['stages'])}")
    b1 = out["inference"].get("batch1_eager", {})
    b64 = out["inference"].get("batch64_eager", {})
    best1 = min((v["ms_per_control_step"] for k, v in out["inference"].items() if k.startswith("batch1_") and "error" not in v),
                default=None)
    best64 = max((v["actions_per_s"] for k, v in out["inference"].items() if k.startswith("batch64_") and "error" not in v),
                 default=None)
    out["goals"] = {"ms_per_control_step_batch1_best": best1, "goal_ms_batch1": 1.0,
                    "actions_per_s_batch64_best": best64, "goal_actions_per_s_batch64": 10_000,
                    "eager_ms_batch1": b1.get("ms_per_control_step"), "eager_actions_per_s_batch64": b64.get("actions_per_s")}
    return out


def part_pytest(a, out_dir: Path) -> dict:
    xml = out_dir / "pytest.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not maniskill and not slow",
           f"--junitxml={xml}", *PYTEST_FILES]
    env = {**os.environ, "PAR_TEST_DEVICE": a.device, "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=a.pytest_timeout_s)
    tail = (proc.stdout + proc.stderr)[-4000:]
    print(tail, flush=True)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", tail)}
    return {"returncode": proc.returncode, "counts": counts, "wall_s": time.perf_counter() - t0,
            "device": a.device, "files": list(PYTEST_FILES), "failures": re.findall(r"FAILED (\S+)", tail)}


# ------------------------------------------------------------------------------------------------ main
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--data", nargs="+", required=True, help="demos: .h5 files or compact folders")
    p.add_argument("--out", type=Path, required=True, help="gpu_check.json and the scaled run's final folder")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--tiny", action="store_true", help="the tiny config and a handful of steps (CPU CI)")
    p.add_argument("--preset", default="cpu64", help="model size of the train and bench parts")
    p.add_argument("--train-data", nargs="+", default=None, help="demos of the train part (default: --data)")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--policy", default=None, help="checkpoint of the policy part (default: the train part's)")
    p.add_argument("--policy-steps", type=int, default=60, help="recorded physical steps the policy part plays")
    p.add_argument("--scaled-init", default=None, help="video model to fine-tune from (default: the train part's)")
    p.add_argument("--scaled-batch", type=int, default=256)
    p.add_argument("--scaled-lr", type=float, default=1e-3)
    p.add_argument("--scaled-minutes", type=float, default=5.0, help="optimiser time of the scaled run, at most")
    p.add_argument("--budget-s", type=float, default=float("inf"),
                   help="wall-clock budget of the whole check; the scaled run takes what is left of it")
    p.add_argument("--scaled-reserve-s", type=float, default=90.0,
                   help="seconds kept from the scaled run's budget for loading data, validating and saving")
    p.add_argument("--bench-repeats", type=int, default=5)
    p.add_argument("--bench-chunks", type=int, default=24)
    p.add_argument("--bench-modes", nargs="+", default=["eager", "reduce-overhead", "graphs"],
                   choices=["eager", "reduce-overhead", "graphs"],
                   help="inference modes on CUDA: eager; the diffusion heads compiled as CUDA graphs; whole "
                        "lockstep chunks as CUDA graphs (ChunkGraphs)")
    p.add_argument("--bench-train-batches", type=int, nargs="+", default=[16, 256])
    p.add_argument("--bench-timeout-s", type=float, default=120.0, help="time limit of each bench_inference run")
    p.add_argument("--pytest-timeout-s", type=float, default=180.0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if a.tiny:
        a.preset, a.train_steps, a.train_batch, a.policy_steps = "tiny", 2, 2, 3
        a.scaled_batch, a.scaled_minutes, a.bench_repeats, a.bench_chunks = 2, 0.05, 1, 2
        a.bench_train_batches = [2]
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": a.device, "argv": sys.argv[1:] if argv is None else argv, "torch": torch.__version__,
                    "parts": {}}
    if torch.device(a.device).type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        for part in a.parts:
            log(f"--- {part}")
            t0 = time.perf_counter()
            try:
                if part == "train":
                    res = part_train(a, work)
                elif part == "policy":
                    res = part_policy(a, work)
                elif part == "scaled":
                    res = part_scaled(a, work, a.out, a.budget_s - (time.perf_counter() - start))
                elif part == "bench":
                    res = part_bench(a)
                else:
                    res = part_pytest(a, a.out)
                res["ok"] = part != "pytest" or res["returncode"] == 0
            except Exception as err:
                traceback.print_exc()
                res = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
            res["part_wall_s"] = time.perf_counter() - t0
            report["parts"][part] = res
            (a.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
            log(f"{part}: {'ok' if res['ok'] else 'FAILED'} in {res['part_wall_s']:.1f} s")
    return report


if __name__ == "__main__":
    rep = main()
    sys.exit(0 if all(p["ok"] for p in rep["parts"].values()) else 1)
