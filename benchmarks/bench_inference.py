"""Inference latency of one control chunk, with and without the KV cache, in one run.

    python benchmarks/bench_inference.py                 # default ("small") config, CPU, batch 1
    python benchmarks/bench_inference.py --json          # one JSON object
    python benchmarks/bench_inference.py --device cuda --batch 64 --contexts 1 16
    python benchmarks/bench_inference.py --device cuda --compile reduce-overhead   # CUDA graphs
    python benchmarks/bench_inference.py --preset cpu64 --threads 1 --contexts 1 4   # the shipped size: its
                                                         # chunk against the float32 / bfloat16 matmul rates

A chunk = imagine the next frame (frame DiT) + infer K actions (backbone on [F^ BOA] + action
DiT) + commit the real observation (frame encoder + backbone on [F BOA A S]): the calls the policy
makes (``model.act``, ``model.commit``). The context length is the number of real blocks already
in the context. ``ms_per_control_step`` is the steady-state cost (median chunk of a rollout with the
config's own history, evictions included) / K. On the CPU the chunk's FLOPs (``FlopCounterMode``)
are set against this machine's float32 and bfloat16 matmul rates, measured in the same run.
Weights are random: timing does not depend on them.

``--graphs`` serves the steady-state rollout through ``ChunkGraphs``: on CUDA each lockstep chunk
(act, then a commit that does not evict) is two CUDA graph replays; evicting commits stay eager
(``mean_ms_per_chunk`` counts them, the median does not). The per-context table is skipped.

``--compile-chunk`` (CPU) compiles each ``ChunkGraphs`` body whole instead (inductor, static
shapes: the chunk's act, and its non-evicting commit).

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
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root, so that benchmarks.* imports
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_train import matmul_tflops  # noqa: E402
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
    model.compile_heads(mode)


def _noise(cfg: PARConfig, batch: int, device: torch.device):
    return (torch.randn(batch, cfg.frame_tokens, cfg.token_dim, device=device),
            torch.randn(batch, cfg.chunk_size, cfg.action_dim, device=device))


@torch.no_grad()
def chunk(model: PhysicalAutoregressiveModel, ctx, rows: list[int], obs=None, graphs=None) -> None:
    """One control chunk of every row: imagine, act, commit the next observation (the policy's calls),
    through ``graphs`` (a ``ChunkGraphs`` of ``ctx``) where they serve it."""
    cfg, dev = model.cfg, model.device
    noise = _noise(cfg, len(rows), dev)
    a, _ = graphs.act(*noise) if graphs is not None else model.act(ctx, rows, *noise)
    obs = obs or _obs(cfg, len(rows), dev)
    if graphs is None or not graphs.commit(a, *obs):
        model.commit(ctx, rows, a, *obs)


@torch.no_grad()
def time_chunks(model: PhysicalAutoregressiveModel, context: int, batch: int, repeats: int) -> float:
    """Median ms of one chunk with ``context`` real blocks in the context (no eviction)."""
    cfg, dev = model.cfg, model.device
    ctx, rows = model.new_contexts(batch), list(range(batch))
    model.start(ctx, rows, torch.zeros(batch, dtype=torch.long, device=dev), *_obs(cfg, batch, dev))
    for _ in range(context - 1):
        model.commit(ctx, rows, torch.zeros(batch, cfg.chunk_size, cfg.action_dim, device=dev), *_obs(cfg, batch, dev))
    blocks, hidden = ctx.blocks.copy(), ctx.hidden.clone()

    def restore() -> None:  # the same context length for every repeat
        ctx.blocks[:], ctx.hidden[:] = blocks, hidden

    return median_chunk_ms(model, ctx, rows, repeats, after=restore)


def median_chunk_ms(model: PhysicalAutoregressiveModel, ctx, rows: list[int], repeats: int, after=None,
                    graphs=None, times_out: list | None = None) -> float:
    """Median ms of ``repeats`` chunks of ``rows`` (``after()`` runs untimed after each); each chunk's
    seconds are appended to ``times_out`` when given."""
    cfg, dev = model.cfg, model.device
    times = []
    for _ in range(repeats):
        obs = _obs(cfg, len(rows), dev)
        _sync(dev)
        t0 = time.perf_counter()
        chunk(model, ctx, rows, obs, graphs)
        _sync(dev)
        times.append(time.perf_counter() - t0)
        if times_out is not None:
            times_out.append(times[-1])
        if after is not None:
            after()
    times.sort()
    return 1000 * times[len(times) // 2]


@torch.no_grad()
def steady_state_ms(model: PhysicalAutoregressiveModel, batch: int, chunks: int, graphs: bool = False,
                    times_out: list | None = None, compile_chunk: bool = False) -> float:
    """Median ms per chunk over a rollout long enough to evict several times (after warm-up), through
    ``ChunkGraphs`` when ``graphs`` (its bodies compiled whole when ``compile_chunk``)."""
    from par_agent.models.graphs import ChunkGraphs

    cfg, dev = model.cfg, model.device
    ctx, rows = model.new_contexts(batch), list(range(batch))
    cg = ChunkGraphs(model, ctx, compile=compile_chunk) if graphs else None
    model.start(ctx, rows, torch.zeros(batch, dtype=torch.long, device=dev), *_obs(cfg, batch, dev))
    for _ in range(cfg.history):  # warm up past the first eviction
        chunk(model, ctx, rows, graphs=cg)
    return median_chunk_ms(model, ctx, rows, chunks, graphs=cg, times_out=times_out)


def chunk_flops(model: PhysicalAutoregressiveModel, batch: int = 1) -> int:
    """Model FLOPs of one steady-state chunk (``torch.utils.flop_counter``: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg, dev = model.cfg, model.device
    ctx, rows = model.new_contexts(batch), list(range(batch))
    model.start(ctx, rows, torch.zeros(batch, dtype=torch.long, device=dev), *_obs(cfg, batch, dev))
    for _ in range(cfg.history - 2):  # a context as full as it gets before an eviction
        chunk(model, ctx, rows)
    with FlopCounterMode(display=False) as counter:
        chunk(model, ctx, rows)
    return counter.get_total_flops()


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
    p.add_argument("--graphs", action="store_true",
                   help="steady state through ChunkGraphs (CUDA graphs on a GPU); skips the per-context table")
    p.add_argument("--compile-chunk", action="store_true",
                   help="with --graphs on the CPU: compile each ChunkGraphs body whole (inductor, static shapes)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    args.graphs = args.graphs or args.compile_chunk
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = PARConfig.named(args.preset)
    long_cfg = cfg.replace(history=max(args.contexts) + 2)
    model = PhysicalAutoregressiveModel(long_cfg).to(dev).eval()
    out: dict = {"preset": args.preset, "device": str(dev), "batch": args.batch, "threads": torch.get_num_threads(),
                 "compile": args.compile, "graphs": args.graphs, "compile_chunk": args.compile_chunk,
                 "chunk_size": cfg.chunk_size, "num_inference_steps": cfg.num_inference_steps,
                 "history": cfg.history, "params": model.num_parameters()["total"],
                 "params_by_part": model.num_parameters(), "contexts": {}}
    model_default = PhysicalAutoregressiveModel(cfg).to(dev).eval()  # the config's own history, same weights
    model_default.load_state_dict(model.state_dict())
    if args.compile != "none":
        compile_heads(model, args.compile)
        compile_heads(model_default, args.compile)
    for ctx in [] if args.graphs else args.contexts:
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
    times: list[float] = []
    ms_chunk = steady_state_ms(model_default, args.batch, args.steady_chunks, args.graphs, times, args.compile_chunk)
    out["ms_per_chunk"] = ms_chunk
    out["mean_ms_per_chunk"] = 1000 * sum(times) / len(times)
    out["ms_per_control_step"] = ms_chunk / cfg.chunk_size
    if dev.type == "cpu":  # the chunk against this machine's matmul rates, measured here, now
        flops = chunk_flops(model_default, args.batch)
        rates = {"float32": matmul_tflops(torch.float32), "bfloat16": matmul_tflops(torch.bfloat16)}
        out["chunk_mflop"] = flops / 1e6
        out["matmul_tflops"] = rates
        out["flop_limit_ms"] = {k: flops / (r * 1e12) * 1e3 for k, r in rates.items()}
        out["x_flop_limit"] = {k: ms_chunk / v for k, v in out["flop_limit_ms"].items()}
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
        if "x_flop_limit" in out:
            lim = out["flop_limit_ms"]
            print(f"chunk: {out['chunk_mflop']:.0f} MFLOP; at this machine's matmul rate it would take "
                  f"{lim['float32']:.2f} ms (float32, {out['matmul_tflops']['float32']:.3f} TFLOP/s) or "
                  f"{lim['bfloat16']:.2f} ms (bfloat16, {out['matmul_tflops']['bfloat16']:.3f} TFLOP/s): "
                  f"the chunk runs at {out['x_flop_limit']['float32']:.1f}x the float32 limit "
                  f"(target <= 3x) and {out['x_flop_limit']['bfloat16']:.1f}x the bfloat16 one")
        if "speedup_at_16" in out:
            print(f"KV cache speed-up at 16 blocks: {out['speedup_at_16']:.2f}x")
        print(f"peak memory: {out['peak_memory_mb']:.0f} MB")
    return out


if __name__ == "__main__":
    main()
