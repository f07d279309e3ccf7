"""The state vector of a physical token: one function, shared by the env wrapper and the dataset.

Layout (the contract with the model): ``agent/qpos``, ``agent/qvel``, then every ``extra/*`` field
flattened, in the order ManiSkill's task inserts them (its ``_get_obs_extra``). That is the order of
ManiSkill's own ``FlattenRGBDObservationWrapper``, so a user's ManiSkill pipeline and
:func:`envs.make_env` give a policy the same numbers, element by element.

    PushCube-v1   qpos 9 + qvel 9 + tcp_pose 7                                = 25
    PickCube-v1   qpos 9 + qvel 9 + is_grasped 1 + tcp_pose 7 + goal_pos 3    = 29
    StackCube-v1  qpos 9 + qvel 9 + tcp_pose 7                                = 25

A live ManiSkill observation is a dict in that order already. A trajectory ``.h5`` read back with
h5py lists its groups alphabetically, so readers of stored data pass the task's order
(:func:`extra_order`) explicitly.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

# Known state sizes (checked against ManiSkill 3.0.1, obs_mode="rgb").
STATE_DIMS = {"PushCube-v1": 25, "PickCube-v1": 29, "StackCube-v1": 25}

# ManiSkill 3.0.1's order of each task's extra fields; the fields after the first ones appear only
# with a state observation mode (e.g. obs_mode="rgb+state_dict"). tests/test_envs.py checks this
# table against ManiSkill's FlattenRGBDObservationWrapper.
EXTRA_ORDER = {
    "PushCube-v1": ("tcp_pose", "goal_pos", "obj_pose"),
    "PickCube-v1": ("is_grasped", "tcp_pose", "goal_pos", "obj_pose", "tcp_to_obj_pos", "obj_to_goal_pos"),
    "StackCube-v1": ("tcp_pose", "cubeA_pose", "cubeB_pose", "tcp_to_cubeA_pos", "tcp_to_cubeB_pos",
                     "cubeA_to_cubeB_pos"),
}


def _check_obs(obs: Mapping) -> None:
    if "agent" not in obs or "qpos" not in obs["agent"] or "qvel" not in obs["agent"]:
        raise KeyError(
            "flatten_state needs a ManiSkill observation dict with 'agent/qpos' and 'agent/qvel' "
            f"(got top-level keys {sorted(obs.keys())})"
        )


def _extra_keys(extra: Mapping, order: Optional[Sequence[str]]) -> list[str]:
    if order is None:
        return list(extra.keys())
    unknown = [k for k in extra if k not in order]
    if unknown:
        raise ValueError(f"extra field(s) {unknown} are not in the given order {list(order)}; "
                         "pass the task's order (envs.extra_order(task))")
    return [k for k in order if k in extra]


def state_keys(obs: Mapping, extra_order: Optional[Sequence[str]] = None) -> list[str]:
    """The ordered list of leaf names that :func:`flatten_state` concatenates."""
    _check_obs(obs)
    return ["agent/qpos", "agent/qvel"] + [f"extra/{k}" for k in _extra_keys(obs.get("extra", {}), extra_order)]


def flatten_state(obs: Mapping, extra_order: Optional[Sequence[str]] = None):
    """Concatenate the proprio and task fields of a ManiSkill observation into one float32 vector.

    Works on the raw ManiSkill obs (torch, batched ``(B, d)``), on one unbatched step ``(d,)``, and
    on the ``obs`` group of a trajectory ``.h5`` read into nested dicts of numpy arrays ``(T, d)``.
    Fields without a trailing feature axis (e.g. ``extra/is_grasped`` of shape ``(B,)``) count as one
    feature. Booleans become 0/1.

    Args:
        obs: nested mapping with ``agent`` (``qpos``, ``qvel``) and optionally ``extra``.
        extra_order: the order of the ``extra`` fields (:func:`extra_order`); ``None`` keeps the
            mapping's own order, which for a live ManiSkill observation is ManiSkill's.
    Returns:
        ``(*lead, D_s)`` float32, a ``torch.Tensor`` if ``agent/qpos`` is one, else ``np.ndarray``.
    Raises:
        ValueError: an extra field that ``extra_order`` does not list.
    """
    _check_obs(obs)
    qpos = obs["agent"]["qpos"]
    lead = tuple(qpos.shape[:-1])
    parts = [qpos, obs["agent"]["qvel"]]
    extra = obs.get("extra", {})
    parts += [extra[k] for k in _extra_keys(extra, extra_order)]
    if isinstance(qpos, torch.Tensor):
        parts = [torch.as_tensor(p, device=qpos.device).to(torch.float32).reshape(*lead, -1) for p in parts]
        return torch.cat(parts, dim=-1)
    parts = [np.asarray(p).astype(np.float32, copy=False).reshape(*lead, -1) for p in parts]
    return np.concatenate(parts, axis=-1)


def state_fields(obs: Mapping, extra_order: Optional[Sequence[str]] = None) -> list[tuple[str, int]]:
    """``(name, size)`` of each field :func:`flatten_state` concatenates, in its order (names as
    :func:`state_keys` gives them). ``obs`` may be batched ``(B, d)``, one step, or a stored ``(T, d)`` group."""
    lead = np.asarray(obs["agent"]["qpos"].shape[:-1]).size
    out = []
    for key in state_keys(obs, extra_order):
        group, name = key.split("/", 1)
        shape = tuple(obs[group][name].shape)
        out.append((key, int(np.prod(shape[lead:])) if len(shape) > lead else 1))
    return out


def task_state_fields(task: str) -> list[tuple[str, int]]:
    """:func:`state_fields` of ``task`` with every field ManiSkill gives (its ``state_dict`` mode,
    privileged fields included), in the task's order; builds a state-only env."""
    return state_fields(state_only_obs(task), extra_order(task))


@lru_cache(maxsize=None)
def extra_order(task: str) -> tuple[str, ...]:
    """ManiSkill's order of ``task``'s extra fields: the table above, else read off a state-only env."""
    if task in EXTRA_ORDER:
        return EXTRA_ORDER[task]
    obs = state_only_obs(task)
    return tuple(obs.get("extra", {}).keys())


def state_only_obs(task: str) -> dict:
    from envs.maniskill import gym_make  # local: avoids importing ManiSkill eagerly

    env = gym_make(task, obs_mode="state_dict", render_backend="none")
    try:
        obs, _ = env.reset(seed=0)
        return obs
    finally:
        env.close()


def state_dim(task: str) -> int:
    """Size D_s of the state vector for ``task`` (builds a state-only env for unknown tasks)."""
    if task in STATE_DIMS:
        return STATE_DIMS[task]
    return int(flatten_state(state_only_obs(task)).shape[-1])
