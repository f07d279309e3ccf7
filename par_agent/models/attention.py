"""Scaled dot-product attention as the backbone and the heads call it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              dropout_p: float = 0.0) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (q (B, H, L, d), k / v (B, H, M, d), boolean mask broadcastable to
    (B, H, L, M)); on the CPU with its math kernel. PAR's sequences are short (a window is at most a few
    hundred tokens), and there the math kernel's two batched products beat the CPU flash kernel: a cpu64
    fine-tuning step 7% faster in float32 and 21% in bfloat16, whose flash backward is three times
    slower than float32's (docs/RESULTS.md, "Speed")."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
