"""Inference latency of one control chunk, with and without the KV cache, in one run.

    python benchmarks/bench_inference.py                 # default ("small") config, CPU, batch 1
    python benchmarks/bench_inference.py --json          # one JSON object
    python benchmarks/bench_inference.py --device cuda --batch 64 --contexts 1 16
    python benchmarks/bench_inference.py --device cuda --compile reduce-overhead   # CUDA graphs

A chunk = imagine the next frame (frame DiT) + infer K actions (backbone on [F^ BOA] + action
DiT) + commit the real observation (frame encoder + backbone on [F BOA A S]). The context
length is the number of real blocks already in the context. ``ms_per_control_step`` is the
steady-state cost of a rollout with the config's own history (evictions included) / K.
Weights are random: timing does not depend on them.

``--compile MODE`` compiles the two diffusion heads (``torch.compile(head, mode=MODE)``): they run
``num_inference_steps`` times per chunk on shapes fixed by the batch, so ``reduce-overhead`` replays
them as CUDA graphs. The backbone sees a context that grows and is evicted, and stays eager.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from par_agent.config import PARConfig
from par_agent.models import PhysicalAutoregressiveModel


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _obs(cfg: PARConfig, batch: int, device: torch.device):
    frames = torch.randint(0, 256, (batch, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, device=device)
    return frames, torch.randn(batch, cfg.state_dim, device=device)


def compile_heads(model: PhysicalAutoregressiveModel, mode: str) -> None:
    """Compile the frame and action heads in place (``mode`` as ``torch.compile`` takes it)."""
    model.frame_head = torch.compile(model.frame_head, mode=mode)
    model.action_head = torch.compile(model.action_head, mode=mode)


@torch.no_grad()
def time_chunks(model: PhysicalAutoregressiveModel, context: int, batch: int, repeats: int) -> float:
    """Median ms of one chunk with ``context`` real blocks in the context (no eviction)."""
    cfg, dev = model.cfg, model.device
    st = model.start(torch.zeros(batch, dtype=torch.long, device=dev), *_obs(cfg, batch, dev))
    for _ in range(context - 1):
        model.commit(st, torch.zeros(batch, cfg.chunk_size, cfg.action_dim, device=dev), *_obs(cfg, batch, dev))
    times = []
    for _ in range(repeats):
        obs = _obs(cfg, batch, dev)
        n_blocks, blocks, kinds, hidden = st.num_blocks, list(st.blocks), list(st.kinds), st.hidden
        _sync(dev)
        t0 = time.perf_counter()
        a, _ = model.act(st)
        model.commit(st, a, *obs)
        _sync(dev)
        times.append(time.perf_counter() - t0)
        # restore the context length so every repeat measures the same point
        st.blocks, st.kinds = blocks, kinds
        if st.cache is not None:
            st.cache.rollback(st.cache.length - 1 - sum(len(k) for k in kinds))
        st.hidden = hidden
        assert st.num_blocks == n_blocks
    times.sort()
    return 1000 * times[len(times) // 2]


@torch.no_grad()
def steady_state_ms(model: PhysicalAutoregressiveModel, batch: int, chunks: int) -> float:
    """Mean ms per chunk over a rollout long enough to evict several times (after warm-up)."""
    cfg, dev = model.cfg, model.device
    st = model.start(torch.zeros(batch, dtype=torch.long, device=dev), *_obs(cfg, batch, dev))
    for _ in range(cfg.history):  # warm up past the first eviction
        a, _ = model.act(st)
        model.commit(st, a, *_obs(cfg, batch, dev))
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(chunks):
        a, _ = model.act(st)
        model.commit(st, a, *_obs(cfg, batch, dev))
    _sync(dev)
    return 1000 * (time.perf_counter() - t0) / chunks


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--contexts", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steady-chunks", type=int, default=24)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode of the diffusion heads (none: eager)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = PARConfig.named(args.preset)
    long_cfg = cfg.replace(history=max(args.contexts) + 2)
    model = PhysicalAutoregressiveModel(long_cfg).to(dev).eval()
    out: dict = {"preset": args.preset, "device": str(dev), "batch": args.batch, "threads": torch.get_num_threads(),
                 "compile": args.compile,
                 "chunk_size": cfg.chunk_size, "num_inference_steps": cfg.num_inference_steps,
                 "history": cfg.history, "params": model.num_parameters()["total"],
                 "params_by_part": model.num_parameters(), "contexts": {}}
    model_default = PhysicalAutoregressiveModel(cfg).to(dev).eval()  # the config's own history, same weights
    model_default.load_state_dict(model.state_dict())
    if args.compile != "none":
        compile_heads(model, args.compile)
        compile_heads(model_default, args.compile)
    for ctx in args.contexts:
        row = {}
        for cached in (True, False):
            model.set_runtime(use_kv_cache=cached)
            time_chunks(model, min(ctx, 2), args.batch, 1)  # warm-up
            row["cached_ms" if cached else "uncached_ms"] = time_chunks(model, ctx, args.batch, args.repeats)
        row["speedup"] = row["uncached_ms"] / row["cached_ms"]
        out["contexts"][str(ctx)] = row
        if not args.json:
            print(f"context {ctx:3d} blocks: cached {row['cached_ms']:8.1f} ms  uncached {row['uncached_ms']:8.1f} ms"
                  f"  speedup {row['speedup']:5.2f}x", file=sys.stderr)
    ms_chunk = steady_state_ms(model_default, args.batch, args.steady_chunks)
    out["ms_per_chunk"] = ms_chunk
    out["ms_per_control_step"] = ms_chunk / cfg.chunk_size
    if "16" in out["contexts"]:
        out["speedup_at_16"] = out["contexts"]["16"]["speedup"]
    if dev.type == "cuda":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        print(json.dumps(out))
    else:
        parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in out["params_by_part"].items())
        print(f"parameters: {parts}")
        print(f"steady state (history {cfg.history}, K={cfg.chunk_size}, {cfg.num_inference_steps} sampling steps, "
              f"batch {args.batch}, {out['threads']} threads): {ms_chunk:.1f} ms per chunk = "
              f"{out['ms_per_control_step']:.1f} ms per control step")
        if "speedup_at_16" in out:
            print(f"KV cache speed-up at 16 blocks: {out['speedup_at_16']:.2f}x")
        print(f"peak memory: {out['peak_memory_mb']:.0f} MB")
    return out


if __name__ == "__main__":
    main()
