"""Held-out scores of a stage (frame PSNR of teacher-forced predictions, tokenizer PSNR, action MSE)
and the validation videos (real next frames beside the predicted ones)."""
from __future__ import annotations

import warnings
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from par_agent.metrics import action_errors, frame_psnr
from par_agent.models import PhysicalAutoregressiveModel
from par_agent.precision import autocast_for


@torch.no_grad()
def validate(model: PhysicalAutoregressiveModel, val_sets, stage: str, device, out_dir: Path | None, step: int,
             max_windows: int = 16, batch_size: int = 16, precision: str = "auto") -> dict[str, float]:
    """Frame PSNR (dB) of teacher-forced next-frame predictions, tokenizer PSNR and action MSE.

    Over ``max_windows`` windows spread evenly over the validation sets (split between them),
    ``batch_size`` at a time; each figure is the mean over all frames (action entries) that count.
    """
    from torch.utils.data import default_collate

    model.eval()
    picks = [(ds, i) for ds in val_sets
             for i in np.linspace(0, len(ds) - 1, min(len(ds), max_windows // len(val_sets) or 1)).astype(int)]
    tok = model.frame_tokenizer
    scores: dict[str, list[torch.Tensor]] = defaultdict(list)  # per frame (PSNR) or action entry (MSE)
    g = torch.Generator(device=device).manual_seed(0)
    amp = autocast_for(torch.device(device), precision)
    for start in range(0, len(picks), batch_size):
        batch = default_collate([ds[i] for ds, i in picks[start:start + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        frames = batch["frames"]  # (B, T, H, W, 3)
        fmask = batch["frame_mask"]
        tokens = tok.encode(frames)  # (B, T, P, C)
        scores["val/tokenizer_psnr"].append(frame_psnr(tok.decode(tokens), frames)[fmask])
        if stage == "tokenizer":
            continue
        with amp:
            pred = model.sample_window(batch, generator=g)
        img = tok.decode(pred["frame_tokens"])
        scores["val/frame_psnr"].append(frame_psnr(img, frames[:, 1:])[fmask[:, 1:] & fmask[:, :-1]])
        if "actions" in pred:
            sq, am = action_errors(pred["actions"], batch)
            scores["val/action_mse"].append(sq.mean(-1)[am])
        if out_dir is not None and start == 0:
            write_validation_video(frames[0, 1:], img[0], out_dir / f"val-{step:08d}.mp4")
    model.train()
    return {k: torch.cat(v).double().mean().item() for k, v in scores.items()}  # nan where none counted


@lru_cache(maxsize=None)
def can_write_videos() -> bool:
    """Whether imageio can write MP4 here (imageio-ffmpeg, a dependency, may be missing from a GPU
    image's own Python); warns once when it cannot, so training goes on without the videos."""
    try:
        import imageio_ffmpeg  # noqa: F401
        return True
    except ImportError:
        pass
    warnings.warn("imageio-ffmpeg is not installed: validation videos are not written "
                  "(pip install imageio-ffmpeg); scores and checkpoints are", stacklevel=2)
    return False


def write_validation_video(real: torch.Tensor, pred: torch.Tensor, path: Path, fps: int = 4) -> None:
    """Real next frames (left) beside the predicted ones (right); (T, H, W, 3) uint8 each. Skipped
    (with one warning per process) where MP4 cannot be written."""
    if not can_write_videos():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    pair = torch.cat([real, pred], dim=2).cpu().numpy()
    pair = pair.repeat(2, axis=1).repeat(2, axis=2)
    imageio.mimwrite(path, list(pair), fps=fps, macro_block_size=1)
