"""Diffusion Policy's training windows, as ManiSkill's recipe cuts them, over par-agent's demos.

For an episode of L actions and observations o_0..o_L, a window starting at ``s`` (from
``-(obs_horizon - 1)`` to ``L - obs_horizon - 1``) holds the observations o_s..o_{s+To-1} and the
actions a_s..a_{s+Tp-1}. Before the episode the first observation and the first action stand in
(so the episode's start, which the policy meets as (o_0, o_0), is trained); after it the actions
hold still: under delta control a zero arm and the last gripper command, else the last action.
Only the ``obs_horizon`` frames a window uses are gathered, a whole batch in one indexing step.
"""
from __future__ import annotations

import numpy as np
import torch


class DPWindows:
    """Windows over the episodes of a ``PhysicalStepDataset`` built with ``chunk_size=1``.

    ``batch(indices)`` -> frames (B, To, H, W, 3) uint8, state (B, To, Ds) float32 and actions
    (B, Tp, Da) float32, as torch tensors."""

    def __init__(self, dataset, obs_horizon: int, pred_horizon: int, delta_actions: bool) -> None:
        if dataset.chunk_size != 1:
            raise ValueError(f"DPWindows needs one action per step (chunk_size=1), got chunk_size={dataset.chunk_size}")
        if not 1 <= obs_horizon <= pred_horizon:
            raise ValueError(f"need 1 <= obs_horizon <= pred_horizon, got {obs_horizon} and {pred_horizon}")
        self.To, self.Tp, self.delta = obs_horizon, pred_horizon, delta_actions
        frames, states, actions, windows, obs_off, act_off, lengths = [], [], [], [], [], [], []
        n_obs = n_act = 0
        for e in range(dataset.num_episodes):
            ep = dataset.episode(e)
            L = int(ep["action_valid"].sum())
            frames.append(ep["frames"][:L + 1])
            states.append(ep["state"][:L + 1])
            actions.append(ep["actions"][:L])
            starts = np.arange(-(obs_horizon - 1), max(L - obs_horizon, 0))
            windows.append(np.stack([np.full(len(starts), e), starts], 1))
            obs_off.append(n_obs)
            act_off.append(n_act)
            lengths.append(L)
            n_obs += L + 1
            n_act += L
        self.frames = np.concatenate(frames)
        self.states = np.concatenate(states).astype(np.float32)
        self.actions = np.concatenate(actions).astype(np.float32)
        self.windows = np.concatenate(windows).astype(np.int64)  # (W, 2): episode, start
        self.obs_off, self.act_off = np.asarray(obs_off), np.asarray(act_off)
        self.lengths = np.asarray(lengths)

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e, s = self.windows[np.asarray(indices)].T
        L = self.lengths[e][:, None]
        obs = self.obs_off[e][:, None] + np.clip(s[:, None] + np.arange(self.To), 0, L)
        t = s[:, None] + np.arange(self.Tp)  # (B, Tp) action steps
        acts = self.actions[self.act_off[e][:, None] + np.clip(t, 0, L - 1)]
        after = t >= L
        if self.delta:  # hold still: no arm motion, the gripper as last commanded
            acts[..., :-1] = np.where(after[..., None], 0.0, acts[..., :-1])
        return (torch.from_numpy(self.frames[obs]), torch.from_numpy(self.states[obs]), torch.from_numpy(acts))
