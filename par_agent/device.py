"""One rule for turning a device name into a ``torch.device``, used by loading, training and evaluation."""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: ``cuda:<local_rank>`` when CUDA is available, else the CPU. ``"cuda"`` without an index:
    ``cuda:<local_rank>`` (the process's GPU under torchrun). Other names pass through.

    Raises:
        RuntimeError: a CUDA device is asked for on a machine where CUDA is not available.
        ValueError: a device name torch does not know.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
            raise RuntimeError(f"device {str(device)!r} asked for, but CUDA is not available on this machine "
                               f"(torch {torch.__version__}, {build}); use device 'cpu' or 'auto'")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev
