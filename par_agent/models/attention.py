"""Scaled dot-product attention as the backbone and the heads call it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              dropout_p: float = 0.0) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (q (B, H, L, d), k / v (B, H, M, d), boolean mask broadcastable to
    (B, H, L, M)); on the CPU, when gradients are recorded (training), with its math kernel. PAR's windows
    are short (a few hundred tokens), and there the math kernel's two batched products beat the CPU
    flash kernel's backward: a cpu64 fine-tuning step 7% faster in float32 and 21% in bfloat16, whose
    flash backward is three times slower than float32's. Inference (a few queries against the cached
    keys, no backward) keeps the flash kernel, which is faster there: a par-pickcube chunk 28.2 ms
    against 33.9 (docs/RESULTS.md, "Speed")."""
    if q.device.type != "cpu" or not torch.is_grad_enabled():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
