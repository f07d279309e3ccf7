"""Policy actions per second for many envs: one model call for all envs (``PARPolicy``'s default)
against one call per env (``batch_envs=False``), measured in one run.

    python benchmarks/bench_policy_envs.py                       # par-pushcube, CPU, 1 / 8 / 64 envs
    python benchmarks/bench_policy_envs.py --envs 1 8 --chunks 2 --json
    python benchmarks/bench_policy_envs.py --device cuda --envs 1 64 512

Each env gets random observations of the model's size. Two patterns of episode starts:

- ``aligned``: every env starts at step 0, so every chunk boundary is shared by all envs (ManiSkill's
  GPU simulation without partial resets, or SB3's ``evaluate_policy`` until the first episode ends);
- ``staggered``: then env i starts a new episode at step 2K + (i mod K), which spreads the chunk
  boundaries over the K steps of a chunk, as episodes of different lengths do in a long evaluation:
  each step, about n_envs / K envs need a new chunk, with contexts of different lengths.

``actions_per_s`` counts every action ``predict`` returns (n_envs per call); the model runs when an
env's chunk of K actions runs out. The figures time only the policy: no simulator runs.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from par_agent import PARPolicy


def actions_per_second(policy: PARPolicy, n_envs: int, chunks: int, staggered: bool, seed: int = 0) -> float:
    """Actions per second over ``chunks`` chunks of every env, after the warm-up (see module docstring)."""
    K = policy.cfg.chunk_size
    rng = np.random.default_rng(seed)
    warm = 3 * K if staggered else K
    steps = warm + chunks * K
    obs = [{"rgb": rng.integers(0, 256, (n_envs, policy.cfg.image_size, policy.cfg.image_size, 3), dtype=np.uint8),
            "state": rng.standard_normal((n_envs, policy.cfg.state_dim)).astype(np.float32)} for _ in range(4)]
    restart = 2 * K + np.arange(n_envs) % K
    policy.reset(n_envs)
    t0 = 0.0
    for t in range(steps):
        if t == warm:
            if policy.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        start = np.full(n_envs, t == 0) | (staggered & (restart == t))
        policy.predict(obs[t % 4], episode_start=start, deterministic=True)
    if policy.device.type == "cuda":
        torch.cuda.synchronize()
    return n_envs * (steps - warm) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default="par-pushcube")
    p.add_argument("--envs", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--chunks", type=int, default=3, help="timed chunks per env")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the policy's default is 1)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    rows = []
    policy = PARPolicy.from_pretrained(a.policy, device=a.device, num_threads=a.threads)
    for pattern in ("aligned", "staggered"):
        for n in a.envs:
            row = {"pattern": pattern, "n_envs": n}
            for batched in (True, False):
                policy.batch_envs = batched
                row["batched" if batched else "per_env_loop"] = actions_per_second(policy, n, a.chunks,
                                                                                   pattern == "staggered")
            row["speedup"] = row["batched"] / row["per_env_loop"]
            rows.append(row)
    report = {"policy": a.policy, "device": a.device, "threads": a.threads, "rows": rows}
    if a.json:
        print(json.dumps(report))
    else:
        print(f"{a.policy} on {a.device}, {a.threads} thread(s): policy actions per second")
        print(f"{'starts':>10} {'envs':>6} {'one call':>10} {'per-env loop':>13} {'ratio':>7}")
        for r in rows:
            print(f"{r['pattern']:>10} {r['n_envs']:>6} {r['batched']:>10.0f} {r['per_env_loop']:>13.0f} {r['speedup']:>6.2f}x")
    return report


if __name__ == "__main__":
    main()
