"""What a ``par-train`` run is told: :class:`TrainArgs`, one field per flag, and the command line
built from those fields (each default and help text is written once, on its field)."""
from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from par_agent.config import PRESETS
from par_agent.device import resolve_device
from par_agent.precision import PRECISIONS

STAGES = ("tokenizer", "pretrain-video", "finetune")
PREVIOUS = {"pretrain-video": "tokenizer", "finetune": "pretrain-video"}


def _opt(default, help: str, **argparse_kw):
    """A TrainArgs field: its default and help are written here once; par-train's flag is made from them."""
    return field(default=default, metadata={"help": help, **argparse_kw})


@dataclass
class TrainArgs:
    """Everything a par-train run is told; ``parse_args`` builds the command line from these fields."""

    stage: str = field(metadata={"help": "tokenizer | pretrain-video | finetune", "choices": STAGES, "positional": True})
    data: list[str] = field(metadata={"help": ".h5 files, compact folders, data folders or video folders",
                                      "nargs": "+", "required": True})
    out: Path = field(metadata={"help": "run folder; each stage writes OUT/<stage>/", "required": True, "type": Path})
    steps: int = _opt(2000, "optimiser steps of the stage")
    batch_size: int = _opt(16, "windows per step (per process)")
    lr: float | None = _opt(None, "peak learning rate (default 1e-3 for the tokenizer, 3e-4 otherwise)", type=float)
    weight_decay: float = _opt(0.05, "AdamW weight decay (not on biases and norms)")
    warmup: int = _opt(100, "learning-rate warm-up steps (at most a tenth of --steps)")
    grad_clip: float = _opt(1.0, "gradient-norm clipping")
    ema: float = _opt(0.999, "decay of the weights' moving average (what final/ holds)")
    ckpt_every: int = _opt(500, "steps between training checkpoints (atomic; a re-run resumes from the last)")
    val_every: int = _opt(500, "steps between validations")
    log_every: int = _opt(10, "steps between logged losses (and the finiteness check)")
    workers: int = _opt(0, "DataLoader workers (frames are already in memory)")
    seed: int = _opt(0, "seed of the model's initialisation, the sampler and the noise")
    init: str | None = _opt(None, "checkpoint folder to start from (default: the previous stage's final/)", type=str)
    preset: str = _opt("small", "model size when starting from scratch (cpu64: 64x64 frames, trains on a CPU)",
                       choices=sorted(PRESETS))
    overrides: tuple[str, ...] = _opt((), "config overrides, e.g. --set chunk_size=4 history=8", flag="--set",
                                      nargs="*", metavar="KEY=VALUE")
    tasks: tuple[str, ...] = _opt((), "task names of the model (default: those in the data)", nargs="*")
    cameras: tuple[str, ...] = _opt((), "cameras of the data stitched left to right into each frame, e.g. "
                                    "base_camera hand_camera (default: those of the model started from, else "
                                    "base_camera); the model's num_cameras follows", nargs="+")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    precision: str = _opt("auto", "number format of the matrix products: bf16 (autocast; weights, optimiser and losses "
                          "stay float32), fp32, or auto: bf16 on CUDA, fp32 on the CPU (where bf16 is 1.4-1.5x faster "
                          "on CPUs with AVX512-BF16 or AMX: docs/RESULTS.md, Speed)", choices=PRECISIONS)
    threads: int | None = _opt(None, "torch threads per process (default: the machine's cores shared among the local "
                               "ranks); floating-point results are reproducible for a given count", type=int)
    val_fraction: float = _opt(0.1, "fraction of episodes held out for validation")
    train_episodes: int | None = _opt(None, "train on only the first N training episodes of each --data source "
                                      "(the held-out episodes stay the same): data-efficiency curves", type=int)
    val_windows: int = _opt(16, "held-out windows each validation scores, spread evenly over the held-out episodes "
                            "(16 is quick but noisy; all of them for a final figure)")
    progress: bool = _opt(True, "no progress bar", flag="--no-progress", action="store_false")
    fg_weight: float = _opt(20.0, "tokenizer stage: extra loss weight of pixels that differ from the static scene "
                            "(the arm, the cubes); 0 for a plain reconstruction loss")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.stage == "tokenizer" else 3e-4)


def parse_args(argv: list[str] | None = None, doc: str = "") -> TrainArgs:
    """par-train's command line, one flag per :class:`TrainArgs` field (its default and help written there);
    ``doc``: the usage text (its first paragraph is the description, the rest the epilog)."""
    head, _, tail = doc.partition("\n\n")
    p = argparse.ArgumentParser(prog="par-train", description=head or None, epilog=tail or None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainArgs):
        kw = dict(f.metadata)
        if kw.pop("positional", False):
            p.add_argument(f.name, **kw)
            continue
        flag = kw.pop("flag", "--" + f.name.replace("_", "-"))
        if f.default is not MISSING:
            kw["default"] = f.default
            if "type" not in kw and "action" not in kw and "nargs" not in kw:
                kw["type"] = type(f.default)
        p.add_argument(flag, dest=f.name, **kw)
    a = p.parse_args(argv)
    if a.val_windows < 1:
        p.error(f"--val-windows must be at least 1, got {a.val_windows}")
    try:
        resolve_device(a.device)
    except (RuntimeError, ValueError) as err:  # e.g. --device cuda on a machine without CUDA: one line
        p.error(str(err))
    return TrainArgs(**{**vars(a), "overrides": tuple(a.overrides), "tasks": tuple(a.tasks),
                         "cameras": tuple(a.cameras)})


def parse_overrides(items) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out
