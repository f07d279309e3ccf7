"""Noise injected into a planner's joint targets while it demonstrates (DART-style data off its paths).

    python -m experiments.noisy_demos --action-noise 0.02 --task StackCube-v1 --num-demos 250 --out demos-noisy ...

takes every ``par-collect`` flag, plus ``--action-noise SIGMA`` and ``--action-noise-rho RHO``. The
result was negative (StackCube: 0-2% with noisy demos, docs/RESULTS.md), so it lives beside the
library: ``par-collect`` gives it the ``act_wrapper`` hook.

A motion planner drives the arm along narrow, repeatable paths, so a policy cloned from its demos never
sees the states its own small errors lead to, and cannot recover from them (covariate shift). DART
(Laskey et al., CoRL 2017, arXiv 1703.09327) widens the demonstrated states by perturbing the
demonstrator while it acts. Here the perturbation is a slowly varying offset added to the arm's joint
targets (an AR(1) process, so the arm really leaves the path for a few tenths of a second), the
planner's next segment is planned from wherever the arm ended up, and the executed (noisy) targets are
what gets recorded, so a replay, or the conversion to end-effector control, reproduces the episode.
The recorded step is the plan's step plus an offset that shrinks by ``1 - rho`` each step: on average
it points back towards the plan. Only successful episodes are kept, as without noise.
"""
from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from typing import Any, Optional

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class JointNoise:
    """Stationary AR(1) offset on the arm's joint targets.

    Attributes:
        sigma: stationary standard deviation of each arm joint's offset, radians (0: no noise).
        rho: correlation from one control step to the next (0.8: an offset fades over about 5 steps).
        moving_speed: joint-target change per step (radians, largest joint) at and above which the full
            noise is drawn; slower commands draw proportionally less, so the offset fades wherever the
            planner holds still (closing or opening the gripper, the end of each planned segment) and
            grasps and releases keep their precision.
    """

    sigma: float = 0.0
    rho: float = 0.8
    moving_speed: float = 0.02

    def __post_init__(self):
        if not np.isfinite(self.sigma) or self.sigma < 0:
            raise ValueError(f"action noise sigma must be >= 0 radians, got {self.sigma}")
        if not 0.0 <= self.rho < 1.0:
            raise ValueError(f"action noise rho must be in [0, 1), got {self.rho}")
        if not self.moving_speed > 0:
            raise ValueError(f"action noise moving_speed must be > 0 radians per step, got {self.moving_speed}")

    def describe(self) -> str:
        return (f"joint-target noise AR(1) sigma={self.sigma:g} rad rho={self.rho:g} "
                f"moving_speed={self.moving_speed:g} rad/step")


class JointTargetNoise(gym.ActionWrapper):
    """Adds a :class:`JointNoise` offset to the arm part of ``pd_joint_pos`` actions.

    The action is ``(n_arm + 1,)``: arm joint targets then the gripper, which is left alone. The offset
    restarts at zero on each reset and is drawn from a generator seeded by the reset's seed, so an
    episode's noise is reproducible from its seed.

    Args:
        env: an env whose action is ``(..., n_arm + 1)`` joint targets + gripper (ManiSkill ``pd_joint_pos``).
        noise: the noise's parameters.
    """

    def __init__(self, env: gym.Env, noise: JointNoise):
        super().__init__(env)
        self.noise = noise
        self._offset: Optional[np.ndarray] = None
        self._last: Optional[np.ndarray] = None
        self._rng = np.random.default_rng()

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[Any, dict]:
        if seed is not None:
            # a stream of its own: the task draws its initial state from the same seed
            self._rng = np.random.default_rng([int(seed), 0x5EED])
        self._offset = self._last = None
        return self.env.reset(seed=seed, options=options)

    def action(self, action):
        a = np.array(action, dtype=np.float32, copy=True)
        if self.noise.sigma == 0.0:
            return a
        n_arm = a.shape[-1] - 1
        rho, sigma = self.noise.rho, self.noise.sigma
        arm = a[..., :n_arm].astype(np.float64)
        if self._offset is None:  # start at zero: the episode's first frame is the task's own start
            self._offset, self._last = np.zeros_like(arm), arm
        speed = np.abs(arm - self._last).max(axis=-1, keepdims=True)
        gate = np.minimum(1.0, speed / self.noise.moving_speed)
        self._last = arm
        step = self._rng.normal(0.0, sigma * np.sqrt(1.0 - rho ** 2), size=arm.shape)
        self._offset = rho * self._offset + gate * step
        a[..., :n_arm] += self._offset.astype(np.float32)
        return a


def main(argv: list[str] | None = None) -> int:
    """par-collect with :class:`JointTargetNoise` around the recorder (2: bad noise settings)."""
    from par_agent.data.collect import main as collect_main

    p = argparse.ArgumentParser(prog="python -m experiments.noisy_demos", add_help=False)
    p.add_argument("--action-noise", type=float, required=True, metavar="SIGMA",
                   help="stationary std of each arm joint target's offset, radians (0.02 keeps about 3 of 4 "
                   "StackCube plans successful)")
    p.add_argument("--action-noise-rho", type=float, default=0.8, metavar="RHO",
                   help="step-to-step correlation of that offset, in [0, 1)")
    a, rest = p.parse_known_args(argv)
    try:
        noise = JointNoise(a.action_noise, a.action_noise_rho)
    except ValueError as err:
        print(f"noisy_demos: error: {err}", file=sys.stderr)
        return 2
    if noise.sigma == 0:
        return collect_main(rest)
    return collect_main(rest, act_wrapper=functools.partial(JointTargetNoise, noise=noise), source_note=noise.describe())


if __name__ == "__main__":
    sys.exit(main())
