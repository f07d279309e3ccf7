"""Diffusion Policy as an SB3-style policy, so that ``par_agent.evaluate.evaluate`` (``par-eval``'s
loop) runs it on the same envs and seeds as a :class:`par_agent.PARPolicy`.

    policy = DPPolicy.from_pretrained("runs/dp/final")
    actions, _ = policy.predict(obs, episode_start=starts)   # obs: {"rgb": (n,H,W,3), "state": (n,Ds)}

Per env the policy keeps the last ``obs_horizon`` observations (the first one repeated at an
episode's start) and a queue of actions; when the queue is empty it samples a sequence of
``pred_horizon`` actions and queues ``act_horizon`` of them, from the one aligned with the newest
observation on (ManiSkill's recipe).

A policy trained on privileged task state (StackCube's cube poses) can carry an object locator
(``par-locate``'s, in ``locator/`` as in a PAR checkpoint): it is then given the plain state and the
locator completes it from the frame, exactly as a located :class:`par_agent.PARPolicy` does.
"""
from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from experiments.baselines.dp_model import DiffusionPolicyNet, DPConfig
from par_agent.atomic import atomic_folder
from par_agent.models.locator import ObjectLocator, load_locator, save_locator
from par_agent.policy import torch_threads


def make_scheduler(cfg: DPConfig):
    """diffusers' DDPM with ManiSkill's settings (squared-cosine betas, clipped samples, epsilon)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         clip_sample=True, prediction_type="epsilon")


@torch.no_grad()
def sample_actions(net: DiffusionPolicyNet, scheduler, frames: torch.Tensor, states: torch.Tensor,
                   generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """(B, To, H, W, 3) uint8, (B, To, Ds) -> raw actions (B, Tp, Da), by the scheduler's reverse process."""
    cfg = net.cfg
    cond = net.condition(frames, states)
    B = frames.shape[0]
    shape = (1, cfg.pred_horizon, cfg.action_dim)
    x = torch.cat([torch.randn(shape, generator=g) for g in generators]) if generators else \
        torch.randn((B, *shape[1:]))
    scheduler.set_timesteps(cfg.num_inference_steps)
    for t in scheduler.timesteps:
        eps = net.unet(x, torch.full((B,), int(t), dtype=torch.long), cond)
        x = scheduler.step(eps, t, x, generator=generators).prev_sample
    return net.unnormalize_actions(x)


class DPPolicy:
    """SB3's ``predict`` contract over a :class:`DiffusionPolicyNet` (CPU)."""

    def __init__(self, net: DiffusionPolicyNet, seed: int = 0, num_threads: int | None = 1,
                 locator: ObjectLocator | None = None) -> None:
        if locator is not None and locator.cfg.privileged_dim != net.cfg.state_dim:
            raise ValueError(f"the locator rebuilds a state of {locator.cfg.privileged_dim} numbers; this Diffusion "
                             f"Policy reads {net.cfg.state_dim}")
        self.net = net.eval()
        self.locator = locator.eval() if locator is not None else None
        self.cfg = net.cfg
        self.scheduler = make_scheduler(self.cfg)
        self.seed, self.num_threads = seed, num_threads
        self.task = self.cfg.task
        self.reset(0)

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """``make_env`` keyword arguments of the env the policy was trained for; with a locator the
        plain ``obs_mode="rgb"`` (the locator rebuilds the privileged fields)."""
        kw = {"camera_size": self.cfg.image_size, **self.cfg.env_kwargs}
        return {**kw, "obs_mode": "rgb"} if self.locator is not None else kw

    @property
    def state_dim(self) -> int:
        """Size of the state the policy is given: the net's, or the plain state its locator completes."""
        return self.locator.cfg.plain_dim if self.locator is not None else self.cfg.state_dim

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs) -> "DPPolicy":
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: not a Diffusion Policy checkpoint (no config.json)")
        net = DiffusionPolicyNet(DPConfig.from_dict(json.loads((folder / "config.json").read_text())))
        net.load_state_dict(load_file(folder / "model.safetensors"))
        return cls(net, locator=load_locator(folder), **kwargs)

    def reset(self, n_envs: int) -> None:
        self.n_envs = n_envs
        self.history = [deque(maxlen=self.cfg.obs_horizon) for _ in range(n_envs)]
        self.queues = [deque() for _ in range(n_envs)]
        self.generators = [torch.Generator().manual_seed(self.seed) for _ in range(n_envs)]

    def reset_env(self, i: int) -> None:
        self.history[i].clear()
        self.queues[i].clear()
        self.generators[i].manual_seed(self.seed)  # as PARPolicy: an episode's noise depends on the seed only

    def predict(self, observation: dict, state=None, episode_start=None, deterministic: bool = True):
        """Actions (n, Da) for observations {"rgb": (n, H, W, 3) uint8, "state": (n, Ds)} (or one env
        without the batch dimension)."""
        rgb, st = np.asarray(observation["rgb"]), np.asarray(observation["state"], dtype=np.float32)
        batched = rgb.ndim == 4
        if not batched:
            rgb, st = rgb[None], st[None]
        if rgb.shape[1:] != (self.cfg.image_size, self.cfg.image_size, 3) or st.shape[1:] != (self.state_dim,):
            raise ValueError(f"observation shapes rgb {rgb.shape}, state {st.shape}; this policy takes "
                             f"rgb (n, {self.cfg.image_size}, {self.cfg.image_size}, 3) and state (n, {self.state_dim})")
        if self.locator is not None:  # the privileged fields the net reads, from the frames
            with torch_threads(self.num_threads), torch.no_grad():
                st = self.locator.complete_state(torch.from_numpy(rgb), torch.from_numpy(st)).numpy()
        n = rgb.shape[0]
        if n != self.n_envs:
            self.reset(n)
            episode_start = np.ones(n, dtype=bool)
        starts = np.zeros(n, bool) if episode_start is None else np.asarray(episode_start, bool).reshape(-1)
        for i in range(n):
            if starts[i]:
                self.reset_env(i)
            h = self.history[i]
            h.append((rgb[i], st[i]))
            while len(h) < h.maxlen:  # an episode's first observation stands for the ones before it
                h.appendleft(h[0])
        need = [i for i in range(n) if not self.queues[i]]
        if need:
            frames = torch.from_numpy(np.stack([np.stack([f for f, _ in self.history[i]]) for i in need]))
            states = torch.from_numpy(np.stack([np.stack([s for _, s in self.history[i]]) for i in need]))
            gens = [self.generators[i] for i in need] if deterministic else None
            with torch_threads(self.num_threads):
                acts = sample_actions(self.net, self.scheduler, frames, states, gens).numpy()
            first = self.cfg.obs_horizon - 1
            for row, i in enumerate(need):
                self.queues[i].extend(acts[row, first:first + self.cfg.act_horizon])
        out = np.stack([self.queues[i].popleft() for i in range(n)]).astype(np.float32)
        return (out if batched else out[0]), state


def save_policy(net: DiffusionPolicyNet, folder: str | Path, locator: ObjectLocator | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (and ``locator/``) into ``folder`` (atomically: a
    temporary folder renamed)."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(net.cfg.to_dict(), indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, tmp / "model.safetensors")
        if locator is not None:
            save_locator(locator, tmp)
    return folder
