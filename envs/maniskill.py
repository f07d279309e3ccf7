"""Everything that touches ManiSkill's internals, in one place: making a task with an actionable
error when no Vulkan driver is found, the task check, and two patches of a CPU-simulated env
(which sensors are captured, a renderer kept alive).

Pinned to ManiSkill 3.0.1 (``setup.py``): :func:`capture_only` edits ``BaseEnv._sensors`` and
wraps ``BaseEnv._setup_sensors``; :func:`keep_renderer_warm` holds ``scene.sub_scenes[0].render_system``.
Both are private ManiSkill attributes; check them when moving to another ManiSkill version
(``tests/test_envs.py`` covers both).
"""
from __future__ import annotations

from typing import Sequence

import gymnasium as gym

SUPPORTED_TASKS = ("PushCube-v1", "PickCube-v1", "StackCube-v1")

SETUP_HINT = (
    "ManiSkill could not open a Vulkan device for rendering. On a CPU-only Debian 12 machine install "
    "Mesa 25 (llvmpipe) from bookworm-backports: run `make setup` or `bash scripts/setup_system.sh` "
    "(as root). Original error: {err}"
)


def _registered_tasks() -> list[str]:
    import mani_skill.envs  # noqa: F401  (registers the tasks)
    from mani_skill.utils.registration import REGISTERED_ENVS

    return sorted(REGISTERED_ENVS.keys())


def check_task(task: str) -> None:
    if not isinstance(task, str) or task not in _registered_tasks():
        raise ValueError(
            f"unknown task {task!r}. Supported tasks: {', '.join(SUPPORTED_TASKS)} "
            "(any task id registered by ManiSkill also works, e.g. 'PullCube-v1')"
        )


def has_display() -> bool:
    """Whether a window can be opened (ManiSkill's ``render_mode="human"`` viewer needs one)."""
    import os

    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _is_vulkan_error(err: BaseException) -> bool:
    msg = str(err).lower()
    return any(s in msg for s in ("vk::", "vulkan", "physical device", "incompatibledriver", "render device"))


def gym_make(task: str, **kwargs) -> gym.Env:
    """``gym.make`` of a ManiSkill task, with no wrappers, that turns a missing Vulkan driver into an
    actionable ``RuntimeError``. For tools that need the raw env (for example a state-only one,
    ``obs_mode="state_dict", render_backend="none"``); agents want :func:`make_env`."""
    import mani_skill.envs  # noqa: F401

    try:
        return gym.make(task, **kwargs)
    except RuntimeError as err:
        if _is_vulkan_error(err):
            raise RuntimeError(SETUP_HINT.format(err=err)) from err
        raise


_RENDER_KEEPALIVE: list = []


def keep_renderer_warm(env: gym.Env) -> None:
    """Hold the first env's SAPIEN render system for the life of the process.

    On a CPU renderer (Mesa llvmpipe) the first camera picture of a process compiles the shader
    pipelines (8-15 s on 2 cores). They are freed when the last render system goes away, so a loop
    that makes, closes and makes envs again (evaluation, tests) pays that every time; holding one
    render system keeps later makes at ~0.5 s.
    """
    if _RENDER_KEEPALIVE:
        return
    try:
        scene = env.unwrapped.scene
        if not getattr(env.unwrapped, "gpu_sim_enabled", False) and scene.sub_scenes:
            rs = scene.sub_scenes[0].render_system
            if rs is not None:
                _RENDER_KEEPALIVE.append(rs)
    except Exception:  # best effort: only a speed-up
        pass


def capture_only(env: gym.Env, cameras: Sequence[str]) -> None:
    """Make a CPU-simulated ManiSkill env capture only ``cameras`` at each observation.

    ManiSkill captures every sensor of a task with ``obs_mode="rgb"``, including ones nobody reads:
    StackCube's ``panda_wristcam`` robot carries a ``hand_camera``, and on a CPU renderer (Mesa
    llvmpipe) a captured camera costs about the same whatever its size: a 64x64 StackCube step takes
    201 ms with both cameras and 100 ms with ``base_camera`` only (``benchmarks/bench_env_step.py``,
    docs/DATA.md). The other cameras stay in the scene (the robot
    and what the kept cameras see are unchanged, bit for bit); they are only no longer captured, and
    their images leave the observation. The choice also holds after a reconfiguring ``reset``.
    GPU-simulated envs are left as they are (their cameras render in batched groups set up once).

    Raises:
        KeyError: a camera in ``cameras`` that the task does not have (the message lists those it has).
    """
    from mani_skill.sensors.camera import Camera

    base = env.unwrapped
    if getattr(base, "gpu_sim_enabled", False):
        return
    missing = [c for c in cameras if c not in base._sensors]
    if missing:
        task = base.spec.id if getattr(base, "spec", None) is not None else type(base).__name__
        raise KeyError(f"camera(s) {missing} not in {task}; it has: {sorted(base._sensors)}")
    keep = set(cameras)

    def prune() -> None:
        for name in [n for n, s in base._sensors.items() if n not in keep and isinstance(s, Camera)]:
            del base._sensors[name]  # the same dict as base.scene.sensors

    setup = base._setup_sensors

    def _setup_sensors(options: dict) -> None:  # run again by reconfiguring resets
        setup(options)
        prune()

    base._setup_sensors = _setup_sensors
    prune()
