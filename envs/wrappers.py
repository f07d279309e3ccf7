"""Gymnasium wrappers that turn a ManiSkill env into the PAR observation contract.

Two wrappers, one job each:

- :class:`PARObservationWrapper`: ManiSkill's nested obs dict -> ``{"rgb", "state"}`` (batched torch).
- :class:`SingleEnvNumpyWrapper`: batched torch -> unbatched numpy for one CPU env, with full
  Gymnasium seeding (passes ``gymnasium.utils.env_checker.check_env``).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding

from envs.maniskill import has_display
from envs.state import flatten_state


def _to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    return x


def stitch_cameras(sensor_data: dict, cameras: Sequence[str]):
    """Side-by-side concatenation of the rgb images of ``cameras``.

    Args:
        sensor_data: ManiSkill ``obs["sensor_data"]``; each camera holds ``rgb`` of shape ``(..., H, W, 3)``.
        cameras: camera names, left to right.
    Returns:
        ``(..., H, n_cameras * W, 3)`` uint8 (torch or numpy, as given).
    """
    missing = [c for c in cameras if c not in sensor_data or "rgb" not in sensor_data[c]]
    if missing:
        raise KeyError(f"camera(s) {missing} have no rgb image; available: {sorted(sensor_data.keys())}")
    images = [sensor_data[c]["rgb"] for c in cameras]
    if len(images) == 1:
        return images[0]
    if isinstance(images[0], torch.Tensor):
        return torch.cat(images, dim=-2)
    return np.concatenate(images, axis=-2)


class PARObservationWrapper(gym.ObservationWrapper):
    """ManiSkill obs (``obs_mode="rgb"``) -> ``{"rgb": (B, H, W*n, 3) uint8, "state": (B, D_s) float32}``.

    Args:
        env: a ManiSkill env made with an rgb observation mode (batched torch outputs).
        cameras: cameras to stitch left to right into ``rgb``.
    """

    def __init__(self, env: gym.Env, cameras: Sequence[str] = ("base_camera",)):
        super().__init__(env)
        self.cameras = tuple(cameras)
        base = env.unwrapped
        raw = base._init_raw_obs if getattr(base, "_init_raw_obs", None) is not None else None
        if raw is None:
            raw, _ = base.reset(seed=0)
        sensor_data = raw.get("sensor_data", {})
        rgb = stitch_cameras(sensor_data, self.cameras)
        state = flatten_state(raw)
        h, w = rgb.shape[-3], rgb.shape[-2]
        d = state.shape[-1]
        single = spaces.Dict(
            {
                "rgb": spaces.Box(0, 255, (h, w, 3), np.uint8),
                "state": spaces.Box(-np.inf, np.inf, (d,), np.float32),
            }
        )
        self.single_observation_space = single
        n = base.num_envs
        self.observation_space = spaces.Dict(
            {
                "rgb": spaces.Box(0, 255, (n, h, w, 3), np.uint8),
                "state": spaces.Box(-np.inf, np.inf, (n, d), np.float32),
            }
        )

    def observation(self, observation: dict) -> dict:
        return {
            "rgb": stitch_cameras(observation["sensor_data"], self.cameras),
            "state": flatten_state(observation),
        }


class SingleEnvNumpyWrapper(gym.Wrapper):
    """One CPU-simulated env: removes the batch axis, converts to numpy, seeds like Gymnasium.

    ``reset(seed=s)`` seeds the simulator episode (ManiSkill episode seed ``s``, as in the demo
    json), ``np_random`` and the action space; ``reset()`` draws the next episode seed from
    ``np_random``, so any sequence of resets after a seeded one is reproducible. ``info["success"]`` is a plain ``bool``.

    Args:
        env: a ManiSkill env with ``num_envs == 1`` (usually wrapped in :class:`PARObservationWrapper`).
        seed: seed used by the first ``reset()`` when that call passes none.
    """

    def __init__(self, env: gym.Env, seed: Optional[int] = None):
        super().__init__(env)
        if env.unwrapped.num_envs != 1:
            raise ValueError("SingleEnvNumpyWrapper needs num_envs == 1")
        self.observation_space = getattr(env, "single_observation_space", None) or env.unwrapped.single_observation_space
        self.action_space = env.unwrapped.single_action_space
        # ManiSkill lists "human" (a viewer window); on a machine without a display it cannot open, so
        # it is not advertised there (gymnasium's check_env re-makes the env in every listed mode)
        modes = tuple(env.metadata.get("render_modes", ()))
        self.metadata = {**env.metadata, "render_modes": tuple(m for m in modes if m != "human" or has_display())}
        self._first_seed = seed
        self._spec = None

    @property
    def spec(self):
        return self._spec if self._spec is not None else self.env.spec

    @spec.setter
    def spec(self, value):
        self._spec = value

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        if seed is None and self._first_seed is not None:
            seed = self._first_seed
        self._first_seed = None
        if seed is not None:
            self.unwrapped._np_random, _ = seeding.np_random(seed)
            self.action_space.seed(seed)
        else:
            # ManiSkill draws unseeded episodes from global RNGs; draw the episode seed from our
            # own generator instead, so reset(seed=s) followed by reset() is reproducible.
            seed = int(self.unwrapped.np_random.integers(2**31 - 1))
        obs, info = self.env.reset(seed=seed, options=options)
        return self._unbatch(obs), self._info(info)

    def step(self, action):
        action = np.asarray(action, dtype=self.action_space.dtype)
        obs, reward, terminated, truncated, info = self.env.step(action)
        return (
            self._unbatch(obs),
            float(_to_numpy(reward).reshape(-1)[0]),
            bool(_to_numpy(terminated).reshape(-1)[0]),
            bool(_to_numpy(truncated).reshape(-1)[0]),
            self._info(info),
        )

    def render(self):
        img = self.env.render()
        if img is None:
            return None
        img = _to_numpy(img)
        return img[0] if img.ndim == 4 else img

    @staticmethod
    def _unbatch(obs):
        obs = _to_numpy(obs)
        if isinstance(obs, dict):
            return {k: SingleEnvNumpyWrapper._unbatch(v) for k, v in obs.items()}
        return obs[0]

    @staticmethod
    def _info(info: dict) -> dict[str, Any]:
        out = {}
        for k, v in info.items():
            v = _to_numpy(v)
            if isinstance(v, np.ndarray) and v.size == 1:
                v = v.reshape(()).item()
            elif isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == 1:
                v = v[0]
            out[k] = v
        if "success" in out:
            out["success"] = bool(out["success"])
        return out
