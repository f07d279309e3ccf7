"""The progress (value) head: how far through a demonstration a frame looks, scored from its frame
tokens. Best-of-N sampling (``PARConfig.best_of``) imagines N next frames and acts towards the one
it scores highest; ``par-train value`` trains it on the demos' frames with the rest of the model frozen."""
from __future__ import annotations

import torch
from torch import nn


class ProgressHead(nn.Module):
    """Frame tokens (B, P, C) -> progress (B,) in [0, 1] (0: a demo's first frame, 1: its last).

    Each token is projected with its learned position (so where things are counts), passed through
    an MLP, averaged over the P tokens and mapped to one logit."""

    def __init__(self, token_dim: int, num_tokens: int, width: int) -> None:
        super().__init__()
        self.inp = nn.Linear(token_dim, width)
        self.pos = nn.Parameter(torch.randn(num_tokens, width) * 0.02)
        self.token_mlp = nn.Sequential(nn.GELU(), nn.Linear(width, width), nn.GELU())
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1))

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, P, C) -> (B,) logits of the progress."""
        h = self.token_mlp(self.inp(tokens) + self.pos)
        return self.out(h.mean(dim=1)).squeeze(-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, P, C) -> progress (B,) in [0, 1]."""
        return torch.sigmoid(self.logits(tokens))

    def loss(self, tokens: torch.Tensor, progress: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Binary cross-entropy against the progress (B,) targets in [0, 1] (a regression bounded like
        them), averaged with ``weight`` (B,) (0 for padded frames: weighted, not selected, so no host sync)."""
        per = nn.functional.binary_cross_entropy_with_logits(self.logits(tokens), progress.float(), reduction="none")
        if weight is None:
            return per.mean()
        weight = weight.float()
        return (per * weight).sum() / weight.sum().clamp(min=1)
