"""Training throughput of each ``par-train`` stage, and model FLOPs utilisation on a GPU, in one run.

    python benchmarks/bench_train.py                          # default ("small") config, CPU
    python benchmarks/bench_train.py --preset cpu64 --json    # one JSON object
    python benchmarks/bench_train.py --device cuda --batch-size 64 --peak-tflops 989
    python benchmarks/bench_train.py --preset cpu64 --set image_size=128 vae_stride=8 'vae_channels=[16,32,64,64]' patch_size=4

One optimiser step is timed exactly as ``par-train`` runs it, with its own function
(``par_agent.training.step.train_step``): the host->device copy of the batch, forward (bf16 autocast on
CUDA), backward, gradient clipping, AdamW, the schedule and the EMA, on windows of ``history`` blocks. ``pretrain-video`` and
``finetune`` use precomputed frame tokens (the tokenizer is frozen after its stage, and
``par-train`` encodes the dataset once); ``tokenizer`` trains the autoencoder on single frames.
FLOPs per step are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
convolutions, forward + backward). MFU = achieved FLOP/s / ``--peak-tflops`` (dense bf16 peak of
the GPU: about 989 for an H100 SXM); without a peak only the achieved TFLOP/s are printed.
Data and weights are random: timing does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from par_agent.config import PARConfig
from par_agent.models import PhysicalAutoregressiveModel
from par_agent.training import parse_overrides
from par_agent.training.checkpoints import make_ema
from par_agent.precision import autocast_for, native_bf16_cpu, resolve_precision
from par_agent.training.step import TokenizerObjective, make_optimizer, train_step

STAGES = ("tokenizer", "pretrain-video", "finetune")


def make_batch(cfg: PARConfig, stage: str, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A random batch shaped like the stage's training batches (see ``PhysicalStepDataset``)."""
    B, T, K = batch, cfg.history, cfg.chunk_size
    if stage == "tokenizer":  # the real frames of B windows (par_agent.training.data.frames_collate)
        return {"frames": torch.randint(0, 256, (B * T, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8,
                                        device=device)}
    out = {"frame_tokens": torch.randn(B, T, cfg.frame_tokens, cfg.token_dim, device=device),
           "task_id": torch.zeros(B, dtype=torch.long, device=device)}
    if stage == "finetune":
        out["actions"] = torch.rand(B, T - 1, K, cfg.action_dim, device=device) * 2 - 1
        out["state"] = torch.randn(B, T, cfg.state_dim, device=device)
    return out


def matmul_tflops(dtype: torch.dtype, size: int = 512, repeats: int = 20) -> float:
    """This machine's matmul rate (TFLOP/s) at the current thread count: the median of ``repeats``
    products of two ``size`` x ``size`` matrices of ``dtype``."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    times.sort()
    return 2 * size**3 / times[len(times) // 2] / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_stage(model: PhysicalAutoregressiveModel, stage: str, batch_size: int, steps: int, warmup: int,
                precision: str = "auto") -> dict:
    dev = model.device
    amp = autocast_for(dev, precision)
    if stage == "tokenizer":
        objective, params = TokenizerObjective(model), list(model.frame_tokenizer.parameters())
    else:
        objective = model
        params = [p for n, p in model.named_parameters() if not n.startswith("frame_tokenizer.")]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt, sched = make_optimizer(params, lr=1e-4, weight_decay=0.05, warmup=0, steps=10**6)
    ema = make_ema(model, 0.999)
    batch = make_batch(model.cfg, stage, batch_size, torch.device("cpu"))  # moved to the device in each step

    def step() -> None:
        train_step(objective, model, batch, opt, sched, params, 1.0, ema, dev, amp)

    for _ in range(warmup):
        step()
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    dt = (time.perf_counter() - t0) / steps
    return {"ms_per_step": 1000 * dt, "samples_per_s": batch_size / dt, "gflops_per_step": flops / 1e9,
            "achieved_tflops": flops / dt / 1e12, "trainable_params": sum(p.numel() for p in params)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="config overrides on top of the preset, as par-train --set takes them")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16, help="windows per step (tokenizer: windows of frames)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--steps", type=int, default=5, help="timed steps per stage")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's dense bf16 peak, for MFU")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "bf16", "fp32"],
                   help="number formats to time (par-train --precision); several are timed one after the other")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = PARConfig.named(args.preset, **parse_overrides(args.overrides))
    model = PhysicalAutoregressiveModel(cfg).to(dev).train()
    out: dict = {"preset": args.preset, "overrides": list(args.overrides), "device": str(dev), "batch_size": args.batch_size,
                 "threads": torch.get_num_threads(), "history": cfg.history, "image_size": cfg.image_size,
                 "stages": {}}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    if not args.json:
        print(f"{args.preset} config{' + ' + ' '.join(args.overrides) if args.overrides else ''}, {cfg.image_size}px, history {cfg.history}, batch {args.batch_size}, "
              f"{out['threads']} threads, device {out.get('gpu', dev)}")
    if dev.type == "cpu":  # the target: model FLOP/s against this machine's float32 matmul rate, measured now
        out["matmul_tflops"] = {"float32": matmul_tflops(torch.float32), "bfloat16": matmul_tflops(torch.bfloat16)}
        out["native_bf16"] = native_bf16_cpu()
        if not args.json:
            print(f"matmul rate here, now ({out['threads']} threads): float32 {out['matmul_tflops']['float32']:.3f} "
                  f"TFLOP/s, bfloat16 {out['matmul_tflops']['bfloat16']:.3f} TFLOP/s (native bf16: {out['native_bf16']})")
    for stage in args.stages:
        for precision in args.precision:
            row = bench_stage(model, stage, args.batch_size, args.steps, args.warmup, precision)
            row["precision"] = resolve_precision(precision, dev)
            if args.peak_tflops:
                row["mfu"] = row["achieved_tflops"] / args.peak_tflops
            if "matmul_tflops" in out:
                row["x_fp32_matmul_rate"] = row["achieved_tflops"] / out["matmul_tflops"]["float32"]
            key = stage if len(args.precision) == 1 else f"{stage}/{precision}"
            out["stages"][key] = row
            if not args.json:
                mfu = f"  MFU {100 * row['mfu']:.1f}%" if "mfu" in row else ""
                rate = f"  {row['x_fp32_matmul_rate']:.2f}x the fp32 matmul rate" if "x_fp32_matmul_rate" in row else ""
                print(f"{key:20s} {row['precision']:5s} {row['ms_per_step']:9.1f} ms/step  {row['samples_per_s']:8.1f} "
                      f"samples/s  {row['gflops_per_step']:8.1f} GFLOP/step  {row['achieved_tflops']:7.3f} TFLOP/s"
                      f"{mfu}{rate}")
    if dev.type == "cuda":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
