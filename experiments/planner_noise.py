"""How far the noisy demos of ``experiments/noisy_demos.py`` (``--action-noise``) push the planner off
its path, and what it costs in failed plans.

For each noise setting, the same seeds are solved by ManiSkill's motion planner twice: clean, then with
the joint-target noise of :mod:`experiments.noisy_demos`. It prints, per setting, the share of noisy plans
that still succeed (``par-collect`` keeps only those), the mean over seeds of the largest distance of
the noisy gripper (TCP) from the clean run's path, and the seconds per plan (no rendering)::

    python -m experiments.planner_noise                                   # StackCube-v1, 8 seeds
    python -m experiments.planner_noise --sigma 0.01 0.02 0.03 --rho 0.8 --episodes 16
"""
from __future__ import annotations

import argparse
import time

import numpy as np


class _TcpLog:
    """Wraps ``env.step`` to record the TCP position after each step."""

    def __init__(self, env):
        self.env, self.points = env, []

    def __getattr__(self, name):
        return getattr(self.env, name)

    def step(self, action):
        out = self.env.step(action)
        self.points.append(self.env.unwrapped.agent.tcp.pose.p[0].cpu().numpy().copy())
        return out


def solve_once(task: str, seed: int, noise) -> tuple[bool, np.ndarray, float]:
    """One plan: (success, ``(T, 3)`` TCP positions, seconds)."""
    import mani_skill.envs  # noqa: F401

    from envs import gym_make
    from par_agent.data.collect import motion_planners, plan_succeeded
    from experiments.noisy_demos import JointTargetNoise

    env = gym_make(task, obs_mode="state", control_mode="pd_joint_pos", sim_backend="cpu")
    if noise.sigma > 0:
        env = JointTargetNoise(env, noise)
    log = _TcpLog(env)
    t = time.perf_counter()
    try:
        res = motion_planners()[task](log, seed=seed, debug=False, vis=False)
    except Exception:  # a planning error is a failed plan, as in par-collect
        res = -1
    dt = time.perf_counter() - t
    ok = plan_succeeded(res)
    env.close()
    return ok, np.array(log.points).reshape(-1, 3), dt


def path_deviation(path: np.ndarray, reference: np.ndarray) -> float:
    """Largest distance (m) from a point of ``path`` ``(T, 3)`` to its nearest point of ``reference`` ``(R, 3)``."""
    d = np.linalg.norm(path[:, None, :] - reference[None, :, :], axis=-1)
    return float(d.min(axis=1).max())


def main(argv=None) -> int:
    from experiments.noisy_demos import JointNoise

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="StackCube-v1")
    p.add_argument("--sigma", type=float, nargs="+", default=[0.01, 0.02])
    p.add_argument("--rho", type=float, default=0.8)
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--seed", type=int, default=10_000)
    args = p.parse_args(argv)
    seeds = range(args.seed, args.seed + args.episodes)
    clean = {s: solve_once(args.task, s, JointNoise()) for s in seeds}
    ok0 = sum(c[0] for c in clean.values())
    print(f"{args.task}, {args.episodes} seeds from {args.seed}, CPU sim, no rendering")
    print(f"  no noise: {ok0}/{args.episodes} plans succeed, "
          f"{np.mean([c[2] for c in clean.values()]):.1f} s per plan")
    for sigma in args.sigma:
        noise = JointNoise(sigma, args.rho)
        runs = {s: solve_once(args.task, s, noise) for s in seeds}
        ok = sum(r[0] for r in runs.values())
        dev = [path_deviation(r[1], clean[s][1]) for s, r in runs.items() if len(r[1]) and len(clean[s][1])]
        print(f"  sigma {sigma:g} rad, rho {args.rho:g}: {ok}/{args.episodes} plans succeed "
              f"({ok / max(ok0, 1):.2f} of the clean rate), TCP up to {100 * np.mean(dev):.1f} cm off the clean "
              f"path (mean over seeds of each plan's largest), {np.mean([r[2] for r in runs.values()]):.1f} s per plan")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
