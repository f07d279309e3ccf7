"""The perception head: the task state an observation shows (e.g. where StackCube's cubes are), read off
the backbone's outputs at that observation's frame tokens. Fine-tuning trains it beside the policy
(``par-train finetune --perception-targets``) from the demos' recorded task state, so the gradient
that teaches it asks the backbone to keep where small objects are in exactly the tokens the action
head reads. Acting never calls it; the state it predicts is never an input."""
from __future__ import annotations

import torch
from torch import nn


class PerceptionHead(nn.Module):
    """Backbone outputs at one block's frame tokens (B, P, D) -> task state (B, Dp), normalised.

    Each token gets its learned position (so where a token sits counts), passes an MLP, and the
    tokens are averaged and mapped to the Dp numbers."""

    def __init__(self, width: int, num_tokens: int, out_dim: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(num_tokens, width) * 0.02)
        self.token_mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
        self.out = nn.Linear(width, out_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, P, D) -> (B, Dp)."""
        return self.out(self.token_mlp(hidden + self.pos).mean(dim=1))

    def loss(self, hidden: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error against ``target`` (B, Dp) (normalised), averaged with ``weight`` (B,)
        (0 for padded observations: weighted, not selected, so no host sync)."""
        per = (self(hidden) - target.float()).pow(2).mean(-1)
        if weight is None:
            return per.mean()
        weight = weight.float()
        return (per * weight).sum() / weight.sum().clamp(min=1)
