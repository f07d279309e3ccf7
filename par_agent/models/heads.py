"""DiT de-tokenizers: small diffusion transformers that turn backbone states into continuous
frame latents and action chunks (adaLN-Zero blocks, after DiT and MAR's ``diffloss.py``).

Noise schedules and samplers come from ``diffusers``: ``DDPMScheduler`` adds noise in
training; DPM-Solver++ (multistep) or DDIM samples in a few steps at inference, run as the fixed
linear combinations ``sampling.LinearSteps`` reads off the scheduler once per step count.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import nn
from torch.nn import functional as F

from par_agent.models.attention import attention
from par_agent.models.sampling import LinearSteps


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding. t: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def camera_rows(num_cameras: int, width: int) -> nn.Parameter | None:
    """One learned row per camera of a frame's tokens, or None for one camera."""
    return nn.Parameter(torch.randn(num_cameras, width) * 0.02) if num_cameras > 1 else None


def frame_positions(table: torch.Tensor, cameras: torch.Tensor | None) -> torch.Tensor:
    """Positions of a frame's tokens: ``table`` (camera_tokens, W), shared by every camera, plus
    ``cameras`` (n, W), one row per camera -> (n * camera_tokens, W). A model trained on one camera
    thus starts one for several with the same weights in each camera's place."""
    return table if cameras is None else (cameras[:, None] + table[None]).flatten(0, 1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class MultiHeadAttention(nn.Module):
    """Plain attention; keys/values may come from another sequence (cross-attention)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def keys_values(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ctx: (N, M, W) -> k, v: (N, heads, M, W/heads)."""
        k, v = self.kv(ctx).unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        q = self.q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k, v = kv if kv is not None else self.keys_values(x)
        return self.proj(attention(q, k, v).transpose(1, 2).flatten(2))


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention, optional cross-attention to condition tokens, MLP."""

    def __init__(self, width: int, heads: int, cross: bool = False, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = MultiHeadAttention(width, heads)
        self.cross = MultiHeadAttention(width, heads) if cross else None
        self.norm_c = nn.LayerNorm(width, eps=1e-6) if cross else None
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[-1].weight)
        nn.init.zeros_(self.ada[-1].bias)
        if cross:
            nn.init.zeros_(self.cross.proj.weight)
            nn.init.zeros_(self.cross.proj.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, ctx_kv=None) -> torch.Tensor:
        """x: (N, L, W); c: (N, W) conditioning vector; ctx_kv: cross-attention keys/values."""
        s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), s1, sc1))
        if self.cross is not None:
            x = x + self.cross(self.norm_c(x), ctx_kv)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), s2, sc2))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, out_dim)
        for m in (self.ada[-1], self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.out(modulate(self.norm(x), shift, scale))


class FrameHead(nn.Module):
    """Denoises the P latent tokens of the next frame.

    Conditioning: per position from the backbone outputs of the current frame tokens
    (N, P, D) and globally from the last token of the current block (N, D).
    """

    def __init__(self, token_dim: int, camera_tokens: int, cond_dim: int, width: int, depth: int, heads: int,
                 num_cameras: int = 1) -> None:
        super().__init__()
        self.width = width
        self.inp = nn.Linear(token_dim, width)
        self.cond_tokens = nn.Linear(cond_dim, width)
        self.cond_global = nn.Linear(cond_dim, width)
        self.pos = nn.Parameter(torch.randn(camera_tokens, width) * 0.02)
        self.camera_pos = camera_rows(num_cameras, width)
        self.t_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(DiTBlock(width, heads) for _ in range(depth))
        self.final = FinalLayer(width, token_dim)

    def prepare(self, cond_tokens: torch.Tensor, cond_global: torch.Tensor) -> dict:
        """Project the conditioning once per sample (it does not change across steps)."""
        tok = self.cond_tokens(cond_tokens) + frame_positions(self.pos, self.camera_pos)
        return {"tok": tok, "glob": self.cond_global(cond_global)}

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """x: (N, P, token_dim) noisy latents; t: (N,) timesteps -> (N, P, token_dim)."""
        c = self.t_mlp(timestep_embedding(t, self.width)) + cond["glob"]
        h = self.inp(x) + cond["tok"]
        for blk in self.blocks:
            h = blk(h, c)
        return self.final(h, c)


class ActionHead(nn.Module):
    """Denoises a chunk of K actions, cross-attending to the backbone outputs of [F_{n+1}, BOA]
    (N, M, D) and modulated by the BOA output (N, D)."""

    def __init__(self, action_dim: int, chunk_size: int, cond_dim: int, width: int, depth: int, heads: int,
                 out_dim: int | None = None) -> None:
        super().__init__()
        self.width = width
        self.inp = nn.Linear(action_dim, width)
        self.ctx = nn.Linear(cond_dim, width)
        self.cond_global = nn.Linear(cond_dim, width)
        self.pos = nn.Parameter(torch.randn(chunk_size, width) * 0.02)
        self.t_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(DiTBlock(width, heads, cross=True) for _ in range(depth))
        self.final = FinalLayer(width, out_dim or action_dim)

    def prepare(self, cond_tokens: torch.Tensor, cond_global: torch.Tensor) -> dict:
        """Cross-attention keys/values of every layer, computed once per sample."""
        ctx = self.ctx(cond_tokens)
        return {"kv": [blk.cross.keys_values(ctx) for blk in self.blocks], "glob": self.cond_global(cond_global)}

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """x: (N, K, action_dim) noisy normalised actions; t: (N,) -> (N, K, action_dim)."""
        c = self.t_mlp(timestep_embedding(t, self.width)) + cond["glob"]
        h = self.inp(x) + self.pos
        for blk, kv in zip(self.blocks, cond["kv"]):
            h = blk(h, c, kv)
        return self.final(h, c)


class BinnedActions:
    """The discrete-action ablation's read-out, with :class:`Diffusion`'s ``loss`` / ``sample``
    interface: each normalised action dimension in [-1, 1] falls in one of ``bins`` equal bins, the
    action head (built with ``out_dim = action_dim * bins``) reads logits off the same conditioning
    in one pass (its input and timestep fixed at zero), trained by cross-entropy; ``sample`` returns
    the centre of the most likely bin (the noise is not used)."""

    def __init__(self, bins: int, action_dim: int) -> None:
        self.bins, self.action_dim = bins, action_dim

    def _logits(self, net: Callable, like: torch.Tensor, cond: dict) -> torch.Tensor:
        zeros = torch.zeros_like(like)
        t = torch.zeros(like.shape[0], dtype=torch.long, device=like.device)
        return net(zeros, t, cond).unflatten(-1, (self.action_dim, self.bins))  # (N, K, Da, bins)

    def loss(self, net: Callable, target: torch.Tensor, cond: dict, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy over dimensions. target: (N, K, Da) normalised; mask: (N, K) bool or None."""
        idx = ((target.clamp(-1, 1) + 1) / 2 * self.bins).long().clamp(0, self.bins - 1)
        logits = self._logits(net, target, cond)
        err = F.cross_entropy(logits.flatten(0, 2), idx.flatten(), reduction="none").view(idx.shape).mean(-1)
        return masked_mean(err, mask)

    def steps(self, steps: int) -> None:
        """Nothing to prepare (one pass, no sampling steps): :class:`Diffusion`'s interface."""

    @torch.no_grad()
    def sample(self, net: Callable, noise: torch.Tensor, cond: dict, steps: int) -> torch.Tensor:
        """(N, K, Da): the centre of each dimension's most likely bin, in [-1, 1]."""
        best = self._logits(net, noise, cond).argmax(-1)
        return (best.to(noise.dtype) + 0.5) / self.bins * 2 - 1


def masked_mean(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of err (N, K) over the entries mask (N, K) keeps (all when None)."""
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def repeat_cond(cond: dict, n: int) -> dict:
    """Repeat every tensor of a prepared condition n times along the batch (diffusion_batch_mul)."""
    if n == 1:
        return cond
    rep = lambda t: t.repeat(n, *([1] * (t.dim() - 1)))  # noqa: E731
    return {k: [tuple(rep(t) for t in kv) for kv in v] if k == "kv" else rep(v) for k, v in cond.items()}


class Diffusion:
    """Training loss and few-step sampling around a denoiser ``net(x_t, t, cond)``."""

    def __init__(self, num_train_timesteps: int, beta_schedule: str, prediction_type: str, sampler: str) -> None:
        common = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type=prediction_type)
        self.train_sched = DDPMScheduler(**common, clip_sample=False)
        if sampler == "dpmsolver":
            self.sample_sched = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
        else:
            self.sample_sched = DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
        self.prediction_type = prediction_type
        self.T = num_train_timesteps
        self._steps: dict[int, LinearSteps] = {}

    def loss(self, net: Callable, target: torch.Tensor, cond: dict, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean denoising loss. target: (N, L, C) clean; mask: (N, L) bool or None."""
        n = target.shape[0]
        t = torch.randint(0, self.T, (n,), device=target.device)
        noise = torch.randn_like(target)
        x_t = self.train_sched.add_noise(target, noise, t)
        if self.prediction_type == "epsilon":
            want = noise
        elif self.prediction_type == "v_prediction":
            want = self.train_sched.get_velocity(target, noise, t)
        else:
            want = target
        err = (net(x_t, t, cond) - want).pow(2).mean(-1)
        return masked_mean(err, mask)

    def steps(self, steps: int) -> LinearSteps:
        """The sampler's ``steps`` steps as fixed weights (read off the scheduler once, then kept)."""
        if steps not in self._steps:
            self._steps[steps] = LinearSteps(self.sample_sched, steps)
        return self._steps[steps]

    @torch.no_grad()
    def sample(self, net: Callable, noise: torch.Tensor, cond: dict, steps: int) -> torch.Tensor:
        """Deterministic sampling from the given initial noise (N, L, C): the scheduler's own steps,
        as plain tensor arithmetic (no per-step scheduler state, so a caller's graph compiles whole)."""
        return self.steps(steps).sample(net, noise, cond)
