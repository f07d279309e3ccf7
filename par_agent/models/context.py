"""The contexts of many episodes, one per env, allocated once: the inference path's state.

Every context is laid out as a training window (``masks.window_layout``) of at most ``history``
blocks, so slot t of a row always holds the token of sequence position t and the same kind::

    slot:  0      1 .. P+1        P+2 .. P+2+(P+K+2)-1        ...
           [TASK] [F_0 S_0]        [F_1 BOA A_0 S_1]           ... [F_n BOA A_{n-1} S_n] [F^_{n+1} BOA]

A context of ``b`` real blocks fills :meth:`ContextLayout.length` (b) slots; the imagined block
[F^ BOA] of the next step takes the first P+1 slots of block b, which the real block overwrites
when it is committed. Hence one attention mask, the full window's (M, M), serves every call: a
call that writes n tokens at slots s..s+n-1 of a row reads rows s..s+n-1 of it, and a slot past a
context's end (stale, from a longer context before a reset or an eviction) belongs to a later block
or a later token of the block, which the mask hides. No mask is built and no cache is resized
per call; the host only counts each context's blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from par_agent.models.masks import BlockSpec, attention_mask, window_layout
from par_agent.models.transformer import KVCache


@dataclass(frozen=True)
class ContextLayout:
    """Slot arithmetic of a context: P frame tokens, chunks of K actions, ``history`` blocks at most,
    ``eviction`` blocks dropped when full."""

    frame_tokens: int
    chunk_size: int
    history: int
    eviction: int
    attention: str = "ik"

    @property
    def block_len(self) -> int:
        """Tokens of a real block after the first: [F BOA A S]."""
        return self.frame_tokens + self.chunk_size + 2

    @property
    def max_len(self) -> int:
        """M: slots of a context of ``history`` blocks."""
        return self.length(self.history)

    def length(self, blocks: int) -> int:
        """Slots filled by ``blocks`` real blocks: [TASK] [F S] [F BOA A S]*(blocks-1)."""
        return 0 if blocks == 0 else 2 + self.frame_tokens + (blocks - 1) * self.block_len

    @cached_property
    def mask(self) -> torch.Tensor:
        """(M, M) bool: the attention mask of a full window, on the host."""
        block, kind = window_layout(BlockSpec(self.frame_tokens, self.chunk_size, True, True), self.history)
        pos = torch.arange(len(block))
        return attention_mask(self.attention, block, kind, pos, block, kind, pos)

    def last_block_slots(self, blocks: int) -> np.ndarray:
        """Slots of the P frame tokens and the state token of the last of ``blocks`` real blocks."""
        end = self.length(blocks)
        start = end - (self.frame_tokens + 1 if blocks == 1 else self.block_len)
        return np.r_[start:start + self.frame_tokens, end - 1]

    def evicted_slots(self) -> np.ndarray:
        """Source slot of each token of a full context (``history`` real blocks) after ``eviction``
        blocks are dropped and the first one left is cut back to [F S], as a training window starts."""
        first = self.length(self.eviction)  # slot where block ``eviction`` starts
        P = self.frame_tokens
        return np.r_[0, first:first + P, first + self.block_len - 1, first + self.block_len:self.max_len]


class Contexts:
    """``n`` episode contexts, allocated once on the model's device.

    emb: (n, M, D) input embeddings of every slot (what a refill after an eviction, or a call
        without the cache, recomputes from); hidden: (n, P+1, D) backbone outputs of each context's
        last real block (its frame tokens, then its state token), what the frame head reads;
        cache: the :class:`KVCache` (layers, n, heads, M, head_dim), or None without one.
    blocks, steps: (n,) host counters: real blocks in each context (0: not started) and physical
        steps committed since its start.
    """

    def __init__(self, n: int, layout: ContextLayout, width: int, cache: KVCache | None,
                 device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        self.layout = layout
        self.emb = torch.zeros(n, layout.max_len, width, device=device, dtype=dtype)
        self.hidden = torch.zeros(n, layout.frame_tokens + 1, width, device=device, dtype=dtype)
        self.cache = cache
        self.mask = layout.mask.to(device)
        self.blocks = np.zeros(n, dtype=np.int64)
        self.steps = np.zeros(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.blocks)

    def reset(self, rows) -> None:
        """Forget the contexts ``rows`` (their slots are overwritten from slot 0 when they start again)."""
        self.blocks[rows] = 0
        self.steps[rows] = 0

    def ends(self, rows) -> np.ndarray:
        """(R,) the first free slot of each context ``rows``: where its next tokens are written."""
        return np.array([self.layout.length(int(b)) for b in self.blocks[rows]], dtype=np.int64)

    def started(self, rows) -> np.ndarray:
        """Which of ``rows`` hold a context."""
        return self.blocks[rows] > 0
