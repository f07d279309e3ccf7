"""Env step time on the CPU renderer: every camera of a task captured vs only the one PAR reads.

ManiSkill captures every sensor of a task in ``obs_mode="rgb"``. StackCube's ``panda_wristcam`` robot
carries a ``hand_camera`` besides ``base_camera``, and on Mesa llvmpipe each captured camera costs a
fixed amount per step, whatever its size. ``envs.make_env`` and ``par-collect`` capture only the
cameras asked for (``envs.capture_only``); this script measures what that saves, in one run,
with the same seed and the same random actions for both:

    python benchmarks/bench_env_step.py                      # StackCube-v1, 64x64, 50 steps
    python benchmarks/bench_env_step.py --task PickCube-v1 --camera-size 128

It prints the milliseconds per ``env.step`` for each setting and their ratio, and checks that the
``base_camera`` frames of the two settings are identical.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from envs import capture_only, gym_make, keep_renderer_warm


def step_time(task: str, camera_size: int, steps: int, cameras, seed: int = 0) -> tuple[float, np.ndarray, list[str]]:
    """Mean seconds per ``env.step`` and the ``(steps, H, W, 3)`` base-camera frames.

    Args:
        cameras: the cameras to capture; ``None`` for all of the task's (ManiSkill's default).
    """
    env = gym_make(task, obs_mode="rgb", control_mode="pd_joint_pos", sim_backend="cpu",
                   sensor_configs=dict(width=camera_size, height=camera_size))
    keep_renderer_warm(env)
    if cameras is not None:
        capture_only(env, cameras)
    captured = list(env.unwrapped._sensors)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-0.5, 0.5, (steps + 3, *env.action_space.shape)).astype(np.float32)
    for a in actions[:3]:  # warm-up: first captures compile shaders
        env.step(a)
    frames = []
    t = time.perf_counter()
    for a in actions[3:]:
        obs = env.step(a)[0]
        frames.append(obs["sensor_data"]["base_camera"]["rgb"][0].numpy())
    dt = (time.perf_counter() - t) / steps
    env.close()
    return dt, np.stack(frames), captured


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="StackCube-v1")
    p.add_argument("--camera-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args(argv)
    t_all, f_all, c_all = step_time(args.task, args.camera_size, args.steps, None)
    t_one, f_one, c_one = step_time(args.task, args.camera_size, args.steps, ("base_camera",))
    print(f"{args.task}, {args.camera_size}x{args.camera_size}, {args.steps} steps, CPU sim and renderer")
    print(f"  every camera captured {c_all}: {t_all * 1e3:.1f} ms/step")
    print(f"  only {c_one}: {t_one * 1e3:.1f} ms/step")
    print(f"  ratio: {t_all / t_one:.2f}x; base_camera frames identical: {np.array_equal(f_all, f_one)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
