"""Which number format the matrix products run in: one rule for training, validation and benchmarks.

``"bf16"`` runs them in bfloat16 under ``torch.autocast`` (the weights, the optimiser and the losses
stay float32); ``"fp32"`` runs everything in float32. ``"auto"`` picks bf16 on CUDA and float32 on
the CPU. On a CPU that multiplies bfloat16 natively (AVX512-BF16 or AMX, :func:`native_bf16_cpu`),
``"bf16"`` makes a ``cpu64`` training step 1.4-1.5x faster (docs/RESULTS.md, "Speed"; measure it with
``python benchmarks/bench_train.py --preset cpu64 --precision fp32 bf16``). It stays opt-in on the CPU:
its held-out curves match float32's (``results/precision_pickcube_300.json``), but PickCube's
fine-tuning in bf16 succeeded in 48% of 200 seeds against 57% for the same fine-tuning in float32
from the same video model (``results/pickcube_precision_200seeds.json``; docs/RESULTS.md,
"Rebuilding a shipped checkpoint").
It does not pay for tiny models (the ``tiny`` test preset's tokenizer ran several times slower).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX tiles), as oneDNN reports it."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"bf16"`` or ``"fp32"`` for ``precision`` (one of :data:`PRECISIONS`) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


def autocast_for(device: torch.device, precision: str = "auto"):
    """The autocast context of ``precision`` on ``device`` (TF32 too for what stays float32 on CUDA)."""
    if resolve_precision(precision, device) == "fp32":
        return nullcontext()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.autocast(device.type, dtype=torch.bfloat16)
