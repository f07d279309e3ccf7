"""Diffusion Policy's network: a small conv encoder per frame and a 1-D conditional U-Net over the
action sequence, with FiLM conditioning on the observation history and the diffusion step.

The recipe is ManiSkill's baseline (``examples/baselines/diffusion_policy``): observation horizon 2,
prediction horizon 16 (8 executed), U-Net widths (64, 128, 256), a conv encoder trained from scratch,
DDPM with 100 steps and a squared-cosine schedule, epsilon prediction. This is the project's own code;
the noise schedule is diffusers'.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DPConfig:
    """Sizes of the Diffusion Policy network and its data (``dims`` are filled from the dataset)."""

    image_size: int = 64
    state_dim: int = 0
    action_dim: int = 0
    obs_horizon: int = 2
    pred_horizon: int = 16
    act_horizon: int = 8
    visual_dim: int = 256
    unet_dims: list = field(default_factory=lambda: [64, 128, 256])
    step_embed_dim: int = 64
    kernel_size: int = 5
    n_groups: int = 8
    num_train_timesteps: int = 100
    num_inference_steps: int = 100
    delta_actions: bool = True
    """Arm actions are deltas (``pd_ee_delta_pos``...): padding past an episode's end holds the arm still
    (zero arm action, last gripper action) rather than repeating the last action."""
    env_kwargs: dict = field(default_factory=dict)
    task: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DPConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DPConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


class ConvEncoder(nn.Module):
    """(N, 3, H, W) floats in [0, 1] -> (N, out_dim): four conv + max-pool stages, a 1x1 conv,
    global max-pool and a linear layer."""

    def __init__(self, out_dim: int = 256) -> None:
        super().__init__()
        layers, c = [], 3
        for w in (16, 32, 64, 128):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        layers += [nn.Conv2d(c, 128, 1), nn.ReLU(inplace=True), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                   nn.Linear(128, out_dim), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def step_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of diffusion steps t (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


def _conv_block(c_in: int, c_out: int, k: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, k, padding=k // 2), nn.GroupNorm(groups, c_out), nn.Mish())


class FiLMBlock(nn.Module):
    """Residual block over (N, C, T): conv, FiLM (scale and shift from the condition), conv."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, k: int, groups: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv_block(c_in, c_out, k, groups), _conv_block(c_out, c_out, k, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[:, :, None].chunk(2, dim=1)
        h = self.conv1(x) * scale + shift
        return self.conv2(h) + self.skip(x)


class ConditionalUNet1D(nn.Module):
    """Noise prediction: x (N, T, Da), t (N,), cond (N, C) -> (N, T, Da). T must divide by
    2^(len(dims) - 1)."""

    def __init__(self, action_dim: int, cond_dim: int, dims: list, step_dim: int, k: int, groups: int) -> None:
        super().__init__()
        self.step_dim = step_dim
        self.step_mlp = nn.Sequential(nn.Linear(step_dim, 4 * step_dim), nn.Mish(), nn.Linear(4 * step_dim, step_dim))
        c = cond_dim + step_dim
        widths = [action_dim] + list(dims)
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(dims) - 1
            self.down.append(nn.ModuleList([FiLMBlock(a, b, c, k, groups), FiLMBlock(b, b, c, k, groups),
                                            nn.Identity() if last else nn.Conv1d(b, b, 3, stride=2, padding=1)]))
        self.mid = nn.ModuleList([FiLMBlock(dims[-1], dims[-1], c, k, groups) for _ in range(2)])
        self.up = nn.ModuleList()
        for a, b in reversed(list(zip(dims[:-1], dims[1:]))):
            self.up.append(nn.ModuleList([FiLMBlock(2 * b, a, c, k, groups), FiLMBlock(a, a, c, k, groups),
                                          nn.ConvTranspose1d(a, a, 4, stride=2, padding=1)]))
        self.final = nn.Sequential(_conv_block(dims[0], dims[0], k, groups), nn.Conv1d(dims[0], action_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([self.step_mlp(step_embedding(t, self.step_dim)), cond], dim=-1)
        h, skips = x.transpose(1, 2), []
        for block1, block2, down in self.down:
            h = block2(block1(h, cond), cond)
            skips.append(h)
            h = down(h)
        for block in self.mid:
            h = block(h, cond)
        for block1, block2, up in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = up(block2(block1(h, cond), cond))
        return self.final(h).transpose(1, 2)


class DiffusionPolicyNet(nn.Module):
    """Encoder + U-Net + normalisation statistics (buffers, so they travel with the weights).

    Observations: frames (B, To, H, W, 3) uint8 and states (B, To, Ds) raw; actions (B, Tp, Da) raw.
    """

    def __init__(self, cfg: DPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg.visual_dim)
        cond_dim = cfg.obs_horizon * (cfg.visual_dim + cfg.state_dim)
        self.unet = ConditionalUNet1D(cfg.action_dim, cond_dim, cfg.unet_dims, cfg.step_embed_dim,
                                      cfg.kernel_size, cfg.n_groups)
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))
        self.register_buffer("action_min", -torch.ones(cfg.action_dim))
        self.register_buffer("action_max", torch.ones(cfg.action_dim))

    def set_stats(self, stats: dict) -> None:
        for k in ("state_mean", "state_std", "action_min", "action_max"):
            getattr(self, k).copy_(torch.as_tensor(stats[k], dtype=torch.float32))

    def normalize_actions(self, a: torch.Tensor) -> torch.Tensor:
        span = (self.action_max - self.action_min).clamp_min(1e-6)
        return 2 * (a - self.action_min) / span - 1

    def unnormalize_actions(self, a: torch.Tensor) -> torch.Tensor:
        return (a.clamp(-1, 1) + 1) / 2 * (self.action_max - self.action_min) + self.action_min

    def condition(self, frames: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """(B, To, H, W, 3) uint8, (B, To, Ds) -> (B, To * (visual_dim + Ds))."""
        B, To = frames.shape[:2]
        x = frames.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0
        feats = self.encoder(x).view(B, To, -1)
        st = (states - self.state_mean) / self.state_std
        return torch.cat([feats, st], dim=-1).flatten(1)

    def loss(self, frames, states, actions, scheduler, generator=None) -> torch.Tensor:
        """Epsilon-prediction MSE over every action of the sequence (padding included: it teaches the
        end of an episode)."""
        cond = self.condition(frames, states)
        x0 = self.normalize_actions(actions)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
        return F.mse_loss(self.unet(scheduler.add_noise(x0, noise, t), t, cond), noise)
