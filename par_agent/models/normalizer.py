"""Normalisers for actions and states, with dataset statistics held in buffers so that a
saved model folder carries them (after diffusion_policy's ``LinearNormalizer``)."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn


class Normalizer(nn.Module):
    """Affine normaliser over the last dimension.

    ``mode="minmax"`` maps [min, max] to [-1, 1] (actions); ``mode="meanstd"`` standardises
    (states). Statistics start at identity and are set with :meth:`set_stats`.
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("minmax", "meanstd"):
            raise ValueError(f"Normalizer mode must be 'minmax' or 'meanstd', got {mode!r}")
        self.mode = mode
        self.register_buffer("offset", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def dim(self) -> int:
        return self.offset.numel()

    def set_stats(self, a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, eps: float = 1e-6) -> None:
        """minmax: a=min, b=max; meanstd: a=mean, b=std. Each (dim,)."""
        a = torch.as_tensor(np.asarray(a), dtype=torch.float32).reshape(-1)
        b = torch.as_tensor(np.asarray(b), dtype=torch.float32).reshape(-1)
        if a.numel() != self.dim or b.numel() != self.dim:
            raise ValueError(f"statistics have {a.numel()}/{b.numel()} entries, the normaliser expects {self.dim}")
        if self.mode == "minmax":
            offset, scale = (a + b) / 2, ((b - a) / 2).clamp_min(eps)
        else:
            offset, scale = a, b.clamp_min(eps)
        self.offset.copy_(offset)
        self.scale.copy_(scale)
        self.fitted.fill_(True)

    def get_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """The statistics :meth:`set_stats` takes: (min, max) or (mean, std), float32 (dim,) each."""
        offset, scale = self.offset.detach().cpu(), self.scale.detach().cpu()
        if self.mode == "minmax":
            return (offset - scale).numpy(), (offset + scale).numpy()
        return offset.numpy(), scale.numpy()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) raw -> normalised."""
        return (x - self.offset) / self.scale

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) normalised -> raw."""
        return x * self.scale + self.offset


def get_dataset_stats(action_norm: Normalizer, state_norm: Normalizer) -> dict[str, np.ndarray]:
    """The inverse of :func:`set_dataset_stats`: the statistics the normalisers hold."""
    action_min, action_max = action_norm.get_stats()
    state_mean, state_std = state_norm.get_stats()
    return {"action_min": action_min, "action_max": action_max, "state_mean": state_mean, "state_std": state_std}


def set_dataset_stats(action_norm: Normalizer, state_norm: Normalizer, stats: Mapping[str, np.ndarray]) -> None:
    """Load the dataset's ``action_min/max`` and ``state_mean/std`` into the normalisers."""
    missing = [k for k in ("action_min", "action_max", "state_mean", "state_std") if k not in stats]
    if missing:
        raise ValueError(f"dataset statistics lack {missing}")
    action_norm.set_stats(stats["action_min"], stats["action_max"])
    state_norm.set_stats(stats["state_mean"], stats["state_std"])
