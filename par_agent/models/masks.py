"""Token layout and the causal-with-inverse-kinematics attention mask.

A window of T physical steps is laid out as::

    [TASK] [F_0 S_0] [F_1 BOA A_0 S_1] ... [F_{T-1} BOA A_{T-2} S_{T-1}]

``F_n`` are the P frame tokens of observation n, ``S_n`` its state token, ``A_{n-1}`` the K
action tokens of the chunk that led from o_{n-1} to o_n, ``BOA`` a learned begin-of-action
token. Without actions (video pretraining) ``BOA``/``A`` are absent; without state, ``S`` is.

The state token sits *last* in its block: the action head reads A_{n-1} off ``[F_n, BOA]``,
and for joint-position control s_n (qpos) nearly equals the commanded action, so a state token
visible to those tokens would let training cheat with information the policy never has when
it acts (it imagines F_n, it cannot observe s_n before acting).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch


class Kind(IntEnum):
    """Token kinds of the layout."""

    PREFIX = 0
    FRAME = 1
    BOA = 2
    ACTION = 3
    STATE = 4


@dataclass(frozen=True)
class BlockSpec:
    """Token counts of one physical-step block."""

    frame_tokens: int
    chunk_size: int
    has_actions: bool
    has_state: bool

    def kinds(self, first: bool) -> list[Kind]:
        """Kinds of the tokens of a block in order; the first block of a window has no actions."""
        out = [Kind.FRAME] * self.frame_tokens
        if self.has_actions and not first:
            out += [Kind.BOA] + [Kind.ACTION] * self.chunk_size
        if self.has_state:
            out.append(Kind.STATE)
        return out


def window_layout(spec: BlockSpec, num_blocks: int, prefix: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Block index and kind of every token of a window.

    Returns:
        block: (L,) int64, -1 for prefix tokens, else the block index 0..num_blocks-1
        kind:  (L,) int64 values of :class:`Kind`
    """
    blocks, kinds = [-1] * prefix, [Kind.PREFIX] * prefix
    for n in range(num_blocks):
        k = spec.kinds(first=n == 0)
        blocks += [n] * len(k)
        kinds += k
    return torch.tensor(blocks, dtype=torch.long), torch.tensor([int(k) for k in kinds], dtype=torch.long)


def ik_attention_mask(
    q_block: torch.Tensor,
    q_kind: torch.Tensor,
    q_pos: torch.Tensor,
    k_block: torch.Tensor,
    k_kind: torch.Tensor,
    k_pos: torch.Tensor,
) -> torch.Tensor:
    """Boolean attention mask (True = may attend) for queries against keys.

    Rules (q = query token, k = key token):

    1. Every token sees the prefix ([TASK]); prefix tokens see only the prefix.
    2. Block-causal: a token sees every token of every earlier block and nothing of later blocks.
    3. Inside a block, frame tokens see the block's frame tokens (bidirectional) and nothing else.
    4. BOA sees the block's frame tokens and itself (the inverse-kinematics link: the action
       that led to o_n is read off the frames of o_n and the history).
    5. Action tokens see the block's frames, BOA, and the block's action tokens up to
       themselves (causal among actions).
    6. The state token sees its whole block.

    Args:
        q_block, q_kind, q_pos: (Lq,) block index (-1 = prefix), kind and sequence position.
        k_block, k_kind, k_pos: (Lk,) the same for keys.
    Returns:
        (Lq, Lk) bool
    """
    qb, qk, qp = q_block[:, None], q_kind[:, None], q_pos[:, None]
    kb, kk, kp = k_block[None, :], k_kind[None, :], k_pos[None, :]
    q_prefix, k_prefix = qk == Kind.PREFIX, kk == Kind.PREFIX
    same = qb == kb
    k_frame = kk == Kind.FRAME
    inside = (
        ((qk == Kind.FRAME) & k_frame)
        | ((qk == Kind.BOA) & (k_frame | (kk == Kind.BOA)))
        | ((qk == Kind.ACTION) & (k_frame | (kk == Kind.BOA) | ((kk == Kind.ACTION) & (kp <= qp))))
        | (qk == Kind.STATE)
    )
    visible = k_prefix | (~q_prefix & ((kb < qb) | (same & inside)))
    return visible & ~(q_prefix & ~k_prefix)


def attention_mask(name: str, q_block: torch.Tensor, q_kind: torch.Tensor, q_pos: torch.Tensor,
                   k_block: torch.Tensor, k_kind: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """The mask ``PARConfig.attention_mask`` names: ``"ik"`` (:func:`ik_attention_mask`) or
    ``"causal"``, plain token-causal (a token sees every token at or before its position; the
    prefix sees only the prefix). In this layout the two differ only inside a block's frame tokens,
    which see each other under "ik" and only the earlier ones under "causal". (Lq, Lk) bool."""
    if name == "ik":
        return ik_attention_mask(q_block, q_kind, q_pos, k_block, k_kind, k_pos)
    if name != "causal":
        raise ValueError(f"unknown attention mask {name!r}: 'ik' or 'causal'")
    q_prefix, k_prefix = (q_kind == Kind.PREFIX)[:, None], (k_kind == Kind.PREFIX)[None, :]
    return (k_pos[None, :] <= q_pos[:, None]) & ~(q_prefix & ~k_prefix)


def window_mask(spec: BlockSpec, num_blocks: int, prefix: int = 1, name: str = "ik") -> torch.Tensor:
    """(L, L) mask of a whole training window, from :func:`window_layout`."""
    block, kind = window_layout(spec, num_blocks, prefix)
    pos = torch.arange(len(block))
    return attention_mask(name, block, kind, pos, block, kind, pos)
