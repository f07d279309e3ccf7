"""Training checkpoints (atomic, resumable): the model folder plus ``trainer.pt`` (optimiser, schedule,
EMA, step and every random state), the ``latest`` pointer, and the EMA of the weights (diffusers'
``EMAModel``)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from par_agent.atomic import atomic_folder, replace_text


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the EMA averages, by name, in the model's order: those that require gradients."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def make_ema(model: nn.Module, decay: float):
    """diffusers' ``EMAModel`` over :func:`trainable` parameters of ``model``: decay ``min(decay, (1 + n) / (10 + n))``
    at its n-th update (a warm-up of the average), float32 copies. Step it with ``ema.step(trainable(model).values())``."""
    from diffusers.training_utils import EMAModel

    return EMAModel(list(trainable(model).values()), decay=decay, foreach=True)


def ema_copy_to(ema, trained: nn.Module, target: nn.Module) -> None:
    """Write the averaged weights into ``target``: the parameters named as ``trained``'s trainable ones
    (those :func:`make_ema` averages; ``target`` may be a fresh copy with nothing frozen)."""
    params = dict(target.named_parameters())
    ema.copy_to([params[n] for n in trainable(trained)])


def load_ema_state(ema, state: dict, model: nn.Module, step: int) -> None:
    """Restore :func:`make_ema`'s state; also reads the name -> tensor average of checkpoints written
    before par-train used diffusers' EMA (2026-11-30)."""
    if "shadow_params" not in state:
        state = {"shadow_params": [state[n] for n in trainable(model)], "optimization_step": step}
    ema.load_state_dict(state)


def rng_state() -> dict:
    """The random state of every generator a training step draws from: the CPU's, numpy's and, once
    CUDA is in use, every GPU's (the diffusion timesteps and noise are drawn on the model's device)."""
    out = {"cpu": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state` (checkpoints before 2026-11-30 hold only the CPU and numpy states)."""
    torch.set_rng_state(state["cpu"] if "cpu" in state else state["torch_rng"])
    np.random.set_state(state["numpy"] if "numpy" in state else state["numpy_rng"])
    if "cuda" in state:
        if not torch.cuda.is_available():
            raise RuntimeError("this checkpoint was trained on CUDA; resuming it needs the GPU RNG states restored, "
                               "and CUDA is not available here")
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(stage_dir: Path) -> Path | None:
    f = stage_dir / "latest"
    if not f.is_file():
        return None
    p = stage_dir / f.read_text().strip()
    return p if (p / "trainer.pt").is_file() else None


def save_training_checkpoint(stage_dir: Path, step: int, model: nn.Module, opt, sched, ema,
                             keep: int = 2, extra: dict | None = None) -> Path:
    """Atomic: everything goes to ``ckpt-<step>.tmp``, which is renamed, then ``latest`` is replaced;
    all but the newest ``keep`` checkpoints are removed. ``model`` is anything with ``save_pretrained``
    (a PAR model, an object locator); ``extra`` goes into ``trainer.pt`` as well. Returns the folder."""
    name = f"ckpt-{step:08d}"
    with atomic_folder(stage_dir / name) as tmp:
        model.save_pretrained(tmp)
        torch.save({**(extra or {}), "step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "ema": ema.state_dict(), "rng": rng_state()}, tmp / "trainer.pt")
    replace_text(stage_dir / "latest", name + "\n")
    old = sorted(p for p in stage_dir.glob("ckpt-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for p in old[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return stage_dir / name
