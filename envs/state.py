"""The state vector of a physical token: one function, shared by the env wrapper and the dataset.

Layout (the contract with the model): ``agent/qpos``, ``agent/qvel``, then every ``extra/*``
field flattened, in sorted key order of the extra keys.

    PushCube-v1   qpos 9 + qvel 9 + tcp_pose 7                                = 25
    PickCube-v1   qpos 9 + qvel 9 + goal_pos 3 + is_grasped 1 + tcp_pose 7    = 29
    StackCube-v1  qpos 9 + qvel 9 + tcp_pose 7                                = 25
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

# Known state sizes (checked against ManiSkill 3.0.1, obs_mode="rgb").
STATE_DIMS = {"PushCube-v1": 25, "PickCube-v1": 29, "StackCube-v1": 25}


def state_keys(obs: Mapping) -> list[str]:
    """The ordered list of leaf names that :func:`flatten_state` concatenates."""
    _check_obs(obs)
    return ["agent/qpos", "agent/qvel"] + [f"extra/{k}" for k in sorted(obs.get("extra", {}).keys())]


def _check_obs(obs: Mapping) -> None:
    if "agent" not in obs or "qpos" not in obs["agent"] or "qvel" not in obs["agent"]:
        raise KeyError(
            "flatten_state needs a ManiSkill observation dict with 'agent/qpos' and 'agent/qvel' "
            f"(got top-level keys {sorted(obs.keys())})"
        )


def flatten_state(obs: Mapping):
    """Concatenate the proprio and task fields of a ManiSkill observation into one float32 vector.

    Works on the raw ManiSkill obs (torch, batched ``(B, d)``), on one unbatched step ``(d,)``, and
    on the ``obs`` group of a trajectory ``.h5`` read into nested dicts of numpy arrays ``(T, d)``.
    Fields without a trailing feature axis (e.g. ``extra/is_grasped`` of shape ``(B,)``) count as one
    feature. Booleans become 0/1.

    Args:
        obs: nested mapping with ``agent`` (``qpos``, ``qvel``) and optionally ``extra``.
    Returns:
        ``(*lead, D_s)`` float32, a ``torch.Tensor`` if ``agent/qpos`` is one, else ``np.ndarray``.
    """
    _check_obs(obs)
    qpos = obs["agent"]["qpos"]
    lead = tuple(qpos.shape[:-1])
    parts = [qpos, obs["agent"]["qvel"]]
    extra = obs.get("extra", {})
    parts += [extra[k] for k in sorted(extra.keys())]
    if isinstance(qpos, torch.Tensor):
        parts = [torch.as_tensor(p, device=qpos.device).to(torch.float32).reshape(*lead, -1) for p in parts]
        return torch.cat(parts, dim=-1)
    parts = [np.asarray(p).astype(np.float32, copy=False).reshape(*lead, -1) for p in parts]
    return np.concatenate(parts, axis=-1)


def state_dim(task: str) -> int:
    """Size D_s of the state vector for ``task`` (builds a state-only env for unknown tasks)."""
    if task in STATE_DIMS:
        return STATE_DIMS[task]
    from envs.make import _check_task, gym_make  # local: avoids importing ManiSkill eagerly

    _check_task(task)
    env = gym_make(task, obs_mode="state_dict", render_backend="none")
    try:
        obs, _ = env.reset(seed=0)
        return int(flatten_state(obs).shape[-1])
    finally:
        env.close()
