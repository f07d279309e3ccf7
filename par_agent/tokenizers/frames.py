"""Frame tokenizer: a continuous KL autoencoder (``diffusers.AutoencoderKL``) whose latents are
scaled to unit variance per channel and cut into 2x2 patches, the frame tokens.

    uint8 (..., H, n*H, 3) --encode--> (..., P, C*p*p) float --decode--> uint8 (..., H, n*H, 3)

With ``n = cfg.num_cameras`` square camera images stitched left to right, each camera is encoded on
its own (the same autoencoder) and its tokens follow the previous camera's: P = n * camera tokens.

The small autoencoder is trained on task frames by ``par-train tokenizer`` (the loss is
:meth:`FrameTokenizer.loss`); any pretrained ``AutoencoderKL`` folder can be used instead
(:meth:`FrameTokenizer.from_autoencoder`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from einops import rearrange
from torch import nn

from par_agent.config import PARConfig
from par_agent.metrics import psnr


def build_autoencoder(cfg: PARConfig) -> AutoencoderKL:
    """The small KL autoencoder of the config (stride ``cfg.vae_stride``)."""
    levels = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=cfg.vae_channels,
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_norm_groups,
        sample_size=cfg.image_size,
        mid_block_add_attention=False,
    )


class FrameTokenizer(nn.Module):
    def __init__(self, cfg: PARConfig, vae: AutoencoderKL | None = None) -> None:
        super().__init__()
        self.image_size, self.patch, self.num_cameras = cfg.image_size, cfg.patch_size, cfg.num_cameras
        self.vae = vae if vae is not None else build_autoencoder(cfg)
        c = self.vae.config.latent_channels
        if c != cfg.latent_channels:
            raise ValueError(f"autoencoder has {c} latent channels, the config says latent_channels={cfg.latent_channels}")
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))

    @classmethod
    def from_autoencoder(cls, cfg: PARConfig, path: str | Path) -> "FrameTokenizer":
        """Use a pretrained ``AutoencoderKL`` saved with ``save_pretrained`` in a local folder."""
        if not Path(path).is_dir():
            raise FileNotFoundError(f"no AutoencoderKL folder at {path}")
        return cls(cfg, AutoencoderKL.from_pretrained(str(path)))

    def check_frames(self, frames: torch.Tensor) -> None:
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}")
        want = (self.image_size, self.num_cameras * self.image_size, 3)
        if frames.shape[-3:] != want:
            cams = f" ({self.num_cameras} cameras side by side)" if self.num_cameras > 1 else ""
            raise ValueError(f"frames must be (..., {', '.join(map(str, want))}) channel-last{cams}, "
                             f"got {tuple(frames.shape)}")

    def squares(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., H, n*H, 3) stitched cameras -> (..., n, H, H, 3), one square image per camera."""
        return rearrange(frames, "... h (n w) c -> ... n h w c", n=self.num_cameras)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters of ``encode`` (the autoencoder's encoder and its posterior projection)."""
        quant = getattr(self.vae, "quant_conv", None)
        return list(self.vae.encoder.parameters()) + (list(quant.parameters()) if quant is not None else [])

    @staticmethod
    def to_pixels(frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
        return frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    def encode_latents(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (..., H, n*H, 3) -> unscaled posterior mean (..., n, C, h, w), one per camera."""
        self.check_frames(frames)
        sq = self.squares(frames)
        lead = sq.shape[:-3]
        x = self.to_pixels(sq.reshape(-1, *sq.shape[-3:]).to(self.latent_mean.device))
        z = self.vae.encode(x).latent_dist.mean
        return z.reshape(*lead, *z.shape[1:])

    def latents_to_tokens(self, z: torch.Tensor) -> torch.Tensor:
        """(..., n, C, h, w) unscaled -> (..., P, C*p*p) unit-variance tokens, camera after camera."""
        if z.ndim < 4 or z.shape[-4] != self.num_cameras:
            raise ValueError(f"latents must be (..., {self.num_cameras}, C, h, w), one per camera, got {tuple(z.shape)}")
        z = (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]
        return rearrange(z, "... n c (h p) (w q) -> ... (n h w) (c p q)", p=self.patch, q=self.patch)

    def tokens_to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., P, C*p*p) -> (..., n, C, h, w) unscaled."""
        side = math.isqrt(tokens.shape[-2] // self.num_cameras)
        z = rearrange(tokens, "... (n h w) (c p q) -> ... n c (h p) (w q)", n=self.num_cameras, h=side,
                      p=self.patch, q=self.patch)
        return z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (..., H, n*H, 3) -> frame tokens (..., P, C*p*p)."""
        return self.latents_to_tokens(self.encode_latents(frames))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """frame tokens (..., P, C*p*p) -> uint8 (..., H, n*H, 3)."""
        lead = tokens.shape[:-2]
        z = self.tokens_to_latents(tokens.reshape(-1, *tokens.shape[-2:]))  # (M, n, C, h, w)
        x = self.vae.decode(z.flatten(0, 1)).sample
        img = x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
        img = rearrange(img, "(m n) h w c -> m h (n w) c", n=self.num_cameras)
        return img.reshape(*lead, *img.shape[1:])

    def loss(self, frames: torch.Tensor, kl_weight: float = 1e-6, grad_weight: float = 0.5,
             background: torch.Tensor | None = None, fg_weight: float = 0.0,
             fg_threshold: float = 0.1) -> dict[str, torch.Tensor]:
        """Autoencoder training loss on uint8 frames (N, H, n*H, 3), each camera's image on its own:
        L1 + MSE reconstruction, an image-gradient term (a cheap stand-in for a perceptual loss that
        keeps edges sharp; LPIPS would need downloaded weights) and a small KL term. Returns ``loss``, and the unweighted
        ``l1`` and ``mse`` (for logs) and ``kl``.

        Foreground weighting: with a ``background`` frame (H, n*H, 3) uint8 (the static scene, see
        :func:`background_frame`) and ``fg_weight`` > 0, every pixel that differs from it by more
        than ``fg_threshold`` (in [-1, 1] units, any channel) weighs ``1 + fg_weight`` in the L1
        and MSE terms. The fixed camera sees the same table in every frame, so this is where the
        arm and the few pixels of the cubes are; unweighted, the loss lets them blur away.
        """
        self.check_frames(frames)
        x = self.to_pixels(self.squares(frames.to(self.latent_mean.device)).flatten(0, 1))  # (N*n, 3, H, H)
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample()).sample
        err = rec - x
        abs_err, sq_err = err.abs(), err.pow(2)
        w: torch.Tensor | float = 1.0
        if background is not None and fg_weight > 0:
            bg = self.to_pixels(self.squares(background.to(x.device))).repeat(len(frames), 1, 1, 1)  # (N*n, ...)
            fg = ((x - bg).abs().amax(1, keepdim=True) > fg_threshold).float()  # (N, 1, H, W)
            w = (1.0 + fg_weight * fg) / (1.0 + fg_weight * fg.mean())  # mean weight 1: same loss scale
        grad = sum((torch.diff(rec, dim=d) - torch.diff(x, dim=d)).abs().mean() for d in (2, 3))
        kl = post.kl().mean()
        loss = (w * abs_err).mean() + (w * sq_err).mean() + grad_weight * grad + kl_weight * kl
        return {"loss": loss, "l1": abs_err.mean().detach(), "mse": sq_err.mean().detach(), "kl": kl}

    @torch.no_grad()
    def fit_latent_stats(self, frames: torch.Tensor | np.ndarray, batch_size: int = 64) -> None:
        """Set the per-channel latent mean/std from frames (N, H, n*H, 3) uint8."""
        frames = torch.as_tensor(frames)
        zs = [self.encode_latents(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)]
        z = torch.cat(zs).movedim(-3, 0).flatten(1)  # (C, N * n * h * w)
        self.latent_mean.copy_(z.mean(1))
        self.latent_std.copy_(z.std(1).clamp_min(1e-4))


def resize_frames(frames: np.ndarray, image_size: int) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 -> ``(T, image_size, round(image_size*W/H), 3)`` uint8 (antialiased bilinear).

    The one resize of camera frames: the dataset applies it to stored demos, the policy to camera
    images of another size than the model's, so both see the same pixels."""
    t, h, w, _ = frames.shape
    out_w = max(1, round(image_size * w / h))
    if (h, w) == (image_size, out_w):
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(image_size, out_w), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def background_frame(frames: np.ndarray | torch.Tensor | list, max_frames: int = 2048) -> torch.Tensor:
    """The static scene of a fixed camera: the per-pixel median of (N, H, W, 3) uint8 frames
    (an even subsample of at most ``max_frames``) -> (H, W, 3) uint8. Objects placed at random
    and the moving arm fall out of the median; the table and the walls stay. ``frames`` may also
    be a list of such arrays (e.g. one per dataset), read as their concatenation without copying it."""
    parts = [torch.as_tensor(f) for f in (frames if isinstance(frames, (list, tuple)) else [frames])]
    total = sum(len(f) for f in parts)
    if total == 0 or any(f.ndim != 4 for f in parts):
        raise ValueError(f"background_frame needs frames (N, H, W, 3), got {[tuple(f.shape) for f in parts]}")
    idx = torch.linspace(0, total - 1, min(max_frames, total)).long()
    lengths = torch.tensor([len(f) for f in parts])
    ends = lengths.cumsum(0)
    which = torch.searchsorted(ends, idx, right=True)  # the part each index falls in
    starts = (ends - lengths).tolist()
    picked = torch.stack([parts[p][i - starts[p]] for p, i in zip(which.tolist(), idx.tolist())])
    return picked.median(0).values


@torch.no_grad()
def reconstruct(tok: FrameTokenizer, frames: np.ndarray | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """encode -> decode of frames (N, H, W, 3) uint8, in batches; returns (N, H, W, 3) uint8 on the CPU."""
    frames = torch.as_tensor(frames)
    return torch.cat([tok.decode(tok.encode(frames[i:i + batch_size].to(tok.latent_mean.device))).cpu()
                      for i in range(0, len(frames), batch_size)])


def reconstruction_psnr(tok: FrameTokenizer, frames: np.ndarray | torch.Tensor, batch_size: int = 64) -> float:
    """PSNR (dB, 8-bit) of encode->decode over frames (N, H, W, 3) uint8, from the MSE of all pixels."""
    frames = torch.as_tensor(frames)
    return psnr(F.mse_loss(reconstruct(tok, frames, batch_size).float(), frames.float())).item()
