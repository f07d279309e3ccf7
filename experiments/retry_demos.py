"""Demos that miss a grasp first, then retry it (the recovery a motion planner never shows).

    python -m experiments.retry_demos --miss-fraction 0.5 --task PickCube-v1 --num-demos 250 --out demos-retry ...

takes every ``par-collect`` flag, plus ``--miss-fraction P`` (the share of episodes that start with a
missed grasp) and ``--miss-offset LO HI`` (metres).

In recorded PickCube failures the policy closes the gripper beside the cube, lifts, and hovers until
the episode ends: the planner's demos grasp at the first attempt, so the model never saw what to do
after a miss. Here, in a share of the episodes, the arm first goes through a whole grasp at a pose
shifted sideways off the cube (across the fingers' closing direction, so that they close on air
beside it), lifts, opens, and only then does ManiSkill's own solution plan its grasp from wherever the
arm is. The state the policy reads carries the task's ``is_grasped`` flag, so "closed, lifted, not
grasped" is visible to it. The miss runs inside the episode the recorder keeps (it is part of the
demo) and is drawn from a generator seeded by the episode's seed, so it is reproducible; only
successful episodes are kept, as without it. ``par-collect`` gives it the ``act_wrapper`` hook.
"""
from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from typing import Any, Optional

import gymnasium as gym
import numpy as np

# the object each task's solution grasps first
GRASPED = {"PickCube-v1": "cube", "StackCube-v1": "cubeA"}
FINGER_LENGTH = 0.025  # the grasp depth ManiSkill's Panda solutions use


@dataclass(frozen=True)
class Miss:
    """Which episodes start with a missed grasp, and how far off it is.

    Attributes:
        fraction: share of episodes (drawn per seed) that miss first, in [0, 1].
        offset: (low, high) sideways distance of the missed grasp from the object's centre, metres,
            drawn uniformly; with a 4 cm cube and the Panda's 2 cm-wide fingers, 3.5 cm and more
            clears the cube.
    """

    fraction: float = 0.5
    offset: tuple[float, float] = (0.035, 0.05)

    def __post_init__(self):
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"miss fraction must be in [0, 1], got {self.fraction}")
        lo, hi = self.offset
        if not 0.0 < lo <= hi < 0.2:
            raise ValueError(f"miss offset must be 0 < low <= high < 0.2 metres, got {self.offset}")

    def describe(self) -> str:
        return f"a missed grasp first in {self.fraction:g} of episodes, {self.offset[0]:g}-{self.offset[1]:g} m sideways"


class MissFirst(gym.Wrapper):
    """On ``reset(seed=...)``, with probability ``miss.fraction``, runs a missed grasp through the env.

    Wraps the recorder (``par-collect``'s ``act_wrapper``), so the missed grasp's steps are recorded as
    the start of the episode; the solution that resets this env then plans from where the miss ended
    (arm above the object, gripper open). ``self.missed`` says whether the last reset missed.

    Args:
        env: a ManiSkill env in ``pd_joint_pos`` (the planner's control mode), e.g. the recorder.
        miss: the settings.
        task: the ManiSkill task id, for the grasped object's name (:data:`GRASPED`).
    """

    def __init__(self, env: gym.Env, miss: Miss, task: str):
        super().__init__(env)
        if task not in GRASPED:
            raise ValueError(f"retry demos know {sorted(GRASPED)}, not {task!r}")
        self.miss, self.task, self.missed = miss, task, False

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[Any, dict]:
        out = self.env.reset(seed=seed, options=options)
        rng = np.random.default_rng([int(seed or 0), 0x2E7])  # its own stream: the task draws from the seed
        self.missed = bool(rng.random() < self.miss.fraction)
        if self.missed:
            out = self._miss(rng)
        return out

    def _miss(self, rng: np.random.Generator) -> tuple[Any, dict]:
        import sapien
        from mani_skill.examples.motionplanning.base_motionplanner.utils import compute_grasp_info_by_obb, get_actor_obb
        from mani_skill.examples.motionplanning.panda.motionplanner import PandaArmMotionPlanningSolver

        base = self.env.unwrapped
        planner = PandaArmMotionPlanningSolver(self.env, debug=False, vis=False, base_pose=base.agent.robot.pose,
                                               visualize_target_grasp_pose=False, print_env_info=False)
        obj = getattr(base, GRASPED[self.task])
        approaching = np.array([0.0, 0.0, -1.0])
        target_closing = base.agent.tcp.pose.to_transformation_matrix()[0, :3, 1].cpu().numpy()
        info = compute_grasp_info_by_obb(get_actor_obb(obj), approaching=approaching, target_closing=target_closing,
                                         depth=FINGER_LENGTH)
        closing = info["closing"]
        across = np.cross(approaching, closing)  # horizontal, across the fingers: they pass beside the object
        across /= np.linalg.norm(across)
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(*self.miss.offset) * across
        pose = base.agent.build_grasp_pose(approaching, closing, obj.pose.sp.p + shift)
        above = pose * sapien.Pose([0, 0, -0.05])
        for target in (above, pose):
            if planner.move_to_pose_with_screw(target) == -1:
                raise RuntimeError("retry demos: no plan to the missed grasp")
        planner.close_gripper()
        if planner.move_to_pose_with_screw(above) == -1:
            raise RuntimeError("retry demos: no plan to lift after the missed grasp")
        obs, _, _, _, step_info = planner.open_gripper()
        return obs, step_info


def main(argv: list[str] | None = None) -> int:
    """par-collect with :class:`MissFirst` around the recorder (2: bad settings)."""
    from par_agent.data.collect import main as collect_main

    p = argparse.ArgumentParser(prog="python -m experiments.retry_demos", add_help=False)
    p.add_argument("--miss-fraction", type=float, required=True, metavar="P",
                   help="share of episodes that start with a missed grasp, in [0, 1]")
    p.add_argument("--miss-offset", type=float, nargs=2, default=(0.035, 0.05), metavar=("LO", "HI"),
                   help="sideways distance of the missed grasp from the object's centre, metres")
    p.add_argument("--task", default="PickCube-v1")
    a, rest = p.parse_known_args(argv)
    try:
        miss = Miss(a.miss_fraction, tuple(a.miss_offset))
        if a.task not in GRASPED:
            raise ValueError(f"retry demos know {sorted(GRASPED)}, not {a.task!r}")
    except ValueError as err:
        print(f"retry_demos: error: {err}", file=sys.stderr)
        return 2
    rest = ["--task", a.task, *rest]
    if miss.fraction == 0:
        return collect_main(rest)
    return collect_main(rest, act_wrapper=functools.partial(MissFirst, miss=miss, task=a.task),
                        source_note=miss.describe())


if __name__ == "__main__":
    sys.exit(main())
