"""Which number format the matrix products run in: one rule for training, validation and benchmarks.

``"bf16"`` runs them in bfloat16 under ``torch.autocast`` (the weights, the optimiser and the losses
stay float32); ``"fp32"`` runs everything in float32. ``"auto"`` picks bf16 on CUDA, and on a CPU
that multiplies bfloat16 natively (AVX512-BF16 or AMX, :func:`native_bf16_cpu`) for models whose
backbone is at least :data:`MIN_BF16_WIDTH` wide; float32 otherwise. On such a CPU bf16 pays where
the products are large enough (a ``cpu64`` fine-tuning step 1.23x faster, its tokenizer step 1.7x)
and costs where they are tiny (the ``tiny`` test preset's tokenizer ran several times slower):
``python benchmarks/bench_train.py --preset cpu64 --precision fp32 bf16`` measures it (docs/RESULTS.md,
"Speed").
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "bf16", "fp32")
MIN_BF16_WIDTH = 128


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX tiles), as oneDNN reports it."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(precision: str, device: torch.device, width: int | None = None) -> str:
    """``"bf16"`` or ``"fp32"`` for ``precision`` (one of :data:`PRECISIONS`) on ``device``, for a model
    whose backbone is ``width`` wide (None: wide enough)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    wide = width is None or width >= MIN_BF16_WIDTH
    return "bf16" if device.type == "cpu" and native_bf16_cpu() and wide else "fp32"


def autocast_for(device: torch.device, precision: str = "auto", width: int | None = None):
    """The autocast context of ``precision`` on ``device`` (TF32 too for what stays float32 on CUDA)."""
    if resolve_precision(precision, device, width) == "fp32":
        return nullcontext()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.autocast(device.type, dtype=torch.bfloat16)
