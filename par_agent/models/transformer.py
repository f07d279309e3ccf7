"""Causal backbone: pre-norm transformer with rotary positions, SDPA and a KV cache.

The cache (after gpt-fast's ``KVCache``) holds fixed buffers per layer and context, allocated once;
a call writes its tokens' keys at the slots it is told and attends over the whole buffer, with the
mask saying which slots each query sees (``par_agent.models.context``).
"""
from __future__ import annotations

import torch
from torch import nn

from par_agent.models.attention import attention


def rope_cos_sin(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for positions. pos: (..., L) -> two (..., L, head_dim/2) float32 tensors."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim))
    ang = pos.to(torch.float32)[..., None] * inv
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels. x: (B, H, L, D); cos/sin: (L, D/2) or (B, 1, L, D/2)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class KVCache:
    """Keys and values of all layers for ``batch`` contexts, allocated once (after gpt-fast's
    ``setup_caches``): k, v (layers, batch, heads, max_len, head_dim).

    Slot t of a row holds the token at sequence position t. A call writes its new tokens' keys at
    the slots it is given (one row each, see :meth:`write`) and reads every slot; which of them a
    query may see is the attention mask's business, so a stale slot left by a shorter context or a
    dropped imagined block is never read. Nothing here is resized or rebuilt per call.
    """

    def __init__(self, layers: int, batch: int, heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        shape = (layers, batch, heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def write(self, layer: int, rows: torch.Tensor, slots: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values (R, heads, n, head_dim) of contexts ``rows`` (R,) at ``slots`` (R, n);
        return those rows' whole caches, (R, heads, max_len, head_dim) each."""
        self.k[layer, rows[:, None], :, slots] = k.transpose(1, 2).to(self.k.dtype)
        self.v[layer, rows[:, None], :, slots] = v.transpose(1, 2).to(self.v.dtype)
        return self.k[layer, rows], self.v[layer, rows]


class CacheView:
    """What one backbone call writes to and reads from a :class:`KVCache`: rows (R,) and slots (R, n)."""

    def __init__(self, cache: KVCache, rows: torch.Tensor, slots: torch.Tensor) -> None:
        self.cache, self.rows, self.slots = cache, rows, slots

    def __call__(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.write(layer, self.rows, self.slots, k, v)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                cache: CacheView | None = None, layer: int = 0) -> torch.Tensor:
        """x: (B, L, W); mask: (L, L_keys) or (B, 1, L, L_keys) bool; returns (B, L, W)."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache(layer, k, v)
        out = attention(q, k, v, mask, self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cos, sin, mask, cache=None, layer=0):
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, mask, cache, layer))
        return x + self.drop(self.mlp(self.norm2(x)))


class Backbone(nn.Module):
    """Pre-norm causal transformer over physical tokens."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0,
                 rope_theta: float = 10000.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.head_dim, self.rope_theta = heads, width // heads, rope_theta
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def new_cache(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        return KVCache(len(self.blocks), batch, self.heads, max_len, self.head_dim, device, dtype)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache: CacheView | None = None) -> torch.Tensor:
        """x: (B, L, W) token embeddings at sequence positions pos (L,); mask: (L, L_keys) bool.
        Per-row positions (B, L) and masks (B, L, L_keys) serve contexts of different lengths in one call.

        With a cache, these L tokens' keys are written to their slots first and the keys are the whole
        cache of each row (L_keys = its max_len). Returns (B, L, W) normalised hidden states.
        """
        cos, sin = rope_cos_sin(pos, self.head_dim, self.rope_theta)
        if pos.dim() == 2:  # per row: broadcast over heads
            cos, sin, mask = cos[:, None], sin[:, None], mask[:, None]
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, mask, cache, i)
        return self.norm(x)
