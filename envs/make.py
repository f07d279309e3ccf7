"""``make_env``: a ManiSkill task with the PAR observation wrapper applied, plus SB3 vec-env helpers."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

from envs.maniskill import capture_only, check_task, gym_make, keep_renderer_warm
from envs.wrappers import PARObservationWrapper, SingleEnvNumpyWrapper

# ManiSkill registers these tasks with 50 steps, but motion-planning demos are longer (seen here:
# PushCube 62-77 steps, PickCube 50-86, StackCube 94-109 in pd_joint_pos at 20 Hz). The limits
# leave room for a learned policy's slower, corrective episodes; see docs/DATA.md.
DEFAULT_MAX_EPISODE_STEPS = {"PushCube-v1": 100, "PickCube-v1": 200, "StackCube-v1": 400}


def default_max_episode_steps(task: str) -> int:
    """Episode limit used when ``make_env(max_episode_steps=None)``: the table above, else 2x ManiSkill's."""
    if task in DEFAULT_MAX_EPISODE_STEPS:
        return DEFAULT_MAX_EPISODE_STEPS[task]
    from mani_skill.utils.registration import REGISTERED_ENVS

    registered = REGISTERED_ENVS[task].max_episode_steps
    return 2 * registered if registered else 400


def sensor_configs(camera_size: int, camera_fov: Optional[float | dict[str, float]] = None,
                   cameras: Sequence[str] = ("base_camera",), extra: Optional[dict] = None) -> dict:
    """ManiSkill ``sensor_configs`` for PAR's cameras: every camera ``camera_size`` square and, when
    ``camera_fov`` is given, a vertical field of view in radians: a number for each of ``cameras``, or
    ``{camera: fov}`` for the cameras named (the others keep the task's). The tasks' ``base_camera``
    has pi/2; a narrower one, from the same pose, frames the workspace and gives the cubes more pixels
    at the same frame size. ``extra`` is merged last."""
    if isinstance(camera_fov, dict):
        fovs = camera_fov
    else:
        fovs = {} if camera_fov is None else dict.fromkeys(cameras, camera_fov)
    for cam, fov in fovs.items():
        if isinstance(fov, bool) or not isinstance(fov, (int, float)) or not 0 < fov < 3.14:
            raise ValueError(f"camera_fov must be in radians, between 0 and pi, got {fov!r} for {cam}")
    out: dict = dict(width=camera_size, height=camera_size)
    for cam, fov in fovs.items():
        out[cam] = dict(fov=float(fov))
    for k, v in (extra or {}).items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_env(
    task: str,
    num_envs: int = 1,
    obs_mode: str = "rgb",
    control_mode: str = "pd_joint_pos",
    render_mode: Optional[str] = None,
    max_episode_steps: Optional[int] = None,
    camera_size: int = 128,
    sim_backend: str = "auto",
    seed: Optional[int] = None,
    cameras: Sequence[str] = ("base_camera",),
    camera_fov: Optional[float | dict[str, float]] = None,
    **kwargs,
) -> gym.Env:
    """Make a ManiSkill task that speaks the PAR observation contract.

    Observations: ``{"rgb": (H, n_cameras*W, 3) uint8, "state": (D_s,) float32}`` (see
    :func:`envs.flatten_state` for the state layout). One env (``num_envs=1``): numpy, unbatched,
    Gymnasium-conformant. ``num_envs > 1`` (GPU simulation): a ManiSkill vector env whose
    observations are batched torch tensors ``(num_envs, ...)`` on the sim device.

    Args:
        task: a ManiSkill task id, e.g. ``"PushCube-v1"``.
        num_envs: parallel envs; > 1 needs the GPU sim backend (use :func:`make_vec_env` on CPU).
        obs_mode: ManiSkill observation mode; must include rgb (``"rgb"``, ``"rgbd"``, ...).
        control_mode: ManiSkill controller, ``pd_joint_pos`` as in the demonstrations.
        render_mode: e.g. ``"rgb_array"`` for ``env.render()``.
        max_episode_steps: episode limit; ``None`` -> :func:`default_max_episode_steps`.
        camera_size: width and height of every camera image.
        sim_backend: ``"auto"``, ``"cpu"`` or ``"gpu"``.
        seed: seed for the first ``reset()`` that passes none.
        cameras: cameras stitched left to right into ``rgb``; on the CPU sim only these are rendered
            (:func:`capture_only`).
        camera_fov: field of view (radians) of ``cameras``, or ``{camera: fov}`` for some of them;
            ``None`` keeps the task's (pi/2).
        **kwargs: passed to ``gym.make`` (e.g. ``sensor_configs`` extras, ``shader_pack``).
    """
    check_task(task)
    if "rgb" not in obs_mode:
        raise ValueError(f"obs_mode must contain camera images (e.g. 'rgb'), got {obs_mode!r}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if max_episode_steps is None:
        max_episode_steps = default_max_episode_steps(task)
    sensors = sensor_configs(camera_size, camera_fov, cameras, kwargs.pop("sensor_configs", None))
    if num_envs > 1 and sim_backend == "cpu":
        raise ValueError(
            "ManiSkill simulates several envs in one process only on the GPU; "
            "on CPU use envs.make_vec_env(task, n_envs) (one process/env per copy)"
        )
    env = gym_make(
        task,
        num_envs=num_envs,
        obs_mode=obs_mode,
        control_mode=control_mode,
        render_mode=render_mode,
        max_episode_steps=max_episode_steps,
        sensor_configs=sensors,
        sim_backend=sim_backend,
        **kwargs,
    )
    keep_renderer_warm(env)
    capture_only(env, cameras)
    env = PARObservationWrapper(env, cameras=cameras)
    if env.unwrapped.num_envs == 1 and not env.unwrapped.gpu_sim_enabled:
        single = SingleEnvNumpyWrapper(env, seed=seed)
        # A spec that rebuilds this exact env (gymnasium's checker and tools re-make envs from it).
        single.spec = EnvSpec(
            id=f"par/{task}",
            entry_point="envs.make:make_env",
            max_episode_steps=None,
            order_enforce=False,
            disable_env_checker=True,
            kwargs=dict(
                task=task, num_envs=1, obs_mode=obs_mode, control_mode=control_mode,
                render_mode=render_mode, max_episode_steps=max_episode_steps, camera_size=camera_size,
                sim_backend=sim_backend, seed=seed, cameras=tuple(cameras), camera_fov=camera_fov, **kwargs,
            ),
        )
        return single
    if num_envs == 1:
        raise ValueError("one GPU-simulated env: pass sim_backend='cpu' or num_envs > 1")
    from mani_skill.vector.wrappers.gymnasium import ManiSkillVectorEnv

    vec = ManiSkillVectorEnv(env, auto_reset=True, ignore_terminations=False)
    if seed is not None:
        vec.reset(seed=seed)
    return vec


def make_vec_env(task: str, n_envs: int, seed: int = 0, vec_env_cls: str = "dummy",
                 wrapper: Optional[Callable[[gym.Env], gym.Env]] = None, **make_env_kwargs):
    """An SB3 ``DummyVecEnv`` / ``SubprocVecEnv`` of ``n_envs`` :func:`make_env` copies.

    Copy ``i`` is seeded with ``seed + i`` (SB3's ``VecEnv.seed`` convention).

    Args:
        task: ManiSkill task id.
        n_envs: number of copies.
        seed: seed of copy 0.
        vec_env_cls: ``"dummy"`` (one process) or ``"subproc"`` (one process per copy).
        wrapper: applied to each copy inside its own process, e.g. a token wrapper.
        **make_env_kwargs: forwarded to :func:`make_env` (``num_envs`` is forced to 1).
    """
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    check_task(task)
    classes = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}
    if vec_env_cls not in classes:
        raise ValueError(f"vec_env_cls must be one of {sorted(classes)}, got {vec_env_cls!r}")
    make_env_kwargs = dict(make_env_kwargs)
    make_env_kwargs.pop("num_envs", None)
    make_env_kwargs.setdefault("sim_backend", "cpu")

    def factory(i: int):
        def _thunk():
            env = make_env(task, num_envs=1, seed=seed + i, **make_env_kwargs)
            return wrapper(env) if wrapper is not None else env

        return _thunk

    vec = classes[vec_env_cls]([factory(i) for i in range(n_envs)])
    vec.seed(seed)
    return vec


def control_freq(env: gym.Env) -> int:
    """Control rate in Hz of a ManiSkill env (20 for the Panda tasks)."""
    return int(env.unwrapped.control_freq)
