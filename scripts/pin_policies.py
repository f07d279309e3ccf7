"""Record what the shipped checkpoints do, so that a test notices when they do something else.

For each shipped checkpoint this rolls the policy out in the env it records (``make_env(task,
**policy.env_kwargs)``, one env, seed 1,000,000, deterministic, 1 torch thread) for ``--steps``
control steps and stores the observations it saw and the actions it chose in
``tests/data/pinned_<name>.npz``. ``tests/test_pinned.py`` then feeds the stored observations back to
the policy, offline and without ManiSkill, and checks the actions.

Run it again only when a checkpoint is deliberately replaced (and say so in the commit):

    python scripts/pin_policies.py                      # all shipped checkpoints
    python scripts/pin_policies.py --names par-pickcube --steps 72
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data"


def record(name: str, steps: int, seed: int = 1_000_000) -> dict[str, np.ndarray]:
    """Roll out ``name`` for ``steps`` control steps. Returns rgb (T, H, W, 3) uint8, state (T, Ds)
    float32 and actions (T, Da) float32."""
    from envs import make_env
    from par_agent import PARPolicy

    policy = PARPolicy.from_pretrained(name, num_threads=1)
    env = make_env(policy.task, **policy.env_kwargs)
    obs, _ = env.reset(seed=seed)
    rgb, state, actions = [], [], []
    for t in range(steps):
        a, _ = policy.predict(obs, episode_start=np.array([t == 0]), deterministic=True)
        rgb.append(obs["rgb"]), state.append(obs["state"]), actions.append(a)
        obs, *_ = env.step(a)
    env.close()
    return {"rgb": np.stack(rgb), "state": np.stack(state).astype(np.float32),
            "actions": np.stack(actions).astype(np.float32), "seed": np.int64(seed)}


def main(argv=None) -> int:
    from par_agent.hub import builtin_policies

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", nargs="+", default=builtin_policies())
    p.add_argument("--steps", type=int, default=64, help="control steps (8 chunks of 8 pass the first eviction)")
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        rec = record(name, args.steps)
        path = OUT / f"pinned_{name}.npz"
        np.savez_compressed(path, **rec)
        print(f"{name}: {args.steps} steps -> {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
