"""Image and action metrics shared by validation (``par-train``) and the benchmarks.

All image metrics take channel-last uint8 frames ``(..., H, W, 3)`` and score 8-bit pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(mse: torch.Tensor | float, peak: float = 255.0) -> torch.Tensor:
    """PSNR (dB) from a mean squared error of values whose range is ``peak`` (255 for 8-bit pixels)."""
    return 10 * torch.log10(peak**2 / torch.as_tensor(mse, dtype=torch.float32).clamp_min(1e-10))


def frame_psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each frame: (..., H, W, 3) uint8 each -> (...)."""
    return psnr(((a.float() - b.float()) ** 2).mean((-1, -2, -3)))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004, Gaussian window sigma 1.5) of (N, H, W, 3) uint8 -> (N,)."""
    x, y = (t.permute(0, 3, 1, 2).float() / 255 for t in (a, b))
    g = torch.exp(-((torch.arange(window, device=x.device) - window // 2) ** 2) / (2 * 1.5**2))
    k = (g[:, None] * g[None, :] / g.sum() ** 2).expand(3, 1, window, window)
    f = lambda t: F.conv2d(t, k, groups=3)  # noqa: E731
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean((1, 2, 3))


def object_mask(frames: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, H, W) bool: saturated red, green or blue pixels (the cubes)."""
    r, g, b = (frames[..., i].int() for i in range(3))
    return ((r > 120) & (g < 60) & (b < 60)) | ((g > 120) & (r < 90) & (b < 90)) | ((b > 120) & (b - r > 60) & (r < 90))


def object_psnr(pred: torch.Tensor, real: torch.Tensor) -> float:
    """PSNR (dB) over the real frames' object pixels only, (N, H, W, 3) uint8 each (nan if none)."""
    m = object_mask(real)
    if not m.any():
        return float("nan")
    return psnr(((pred.float() - real.float()) ** 2)[m].mean()).item()


def action_errors(pred_actions: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared action errors (B, T-1, K, D_a) of ``sample_window``'s actions against the window's,
    and the mask (B, T-1, K) of those that count: real actions between two real frames."""
    valid = batch["frame_mask"][:, 1:] & batch["frame_mask"][:, :-1]
    return (pred_actions - batch["actions"]) ** 2, batch["action_mask"] & valid[..., None]
