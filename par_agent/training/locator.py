"""Training an object locator (``par-locate``) with the pieces ``par-train`` runs on: AdamW with
the warm-up and cosine schedule (:func:`make_optimizer`), the batches of each step drawn from
(seed, step) (:class:`StepBatches`, so a resumed run trains on the batches the uninterrupted one
would have), the EMA of the weights, ``metrics.csv``, and atomic, resumable checkpoints
(:func:`save_training_checkpoint`: the locator's folder plus ``trainer.pt``)."""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from par_agent.atomic import atomic_folder
from par_agent.models.locator import ObjectLocator
from par_agent.training.checkpoints import (ema_copy_to, latest_checkpoint, load_ema_state, make_ema,
                                            save_training_checkpoint, set_rng_state)
from par_agent.training.loop import MetricsLog, StepBatches
from par_agent.training.step import make_optimizer


@dataclass
class LocatorTraining:
    """How a locator trains: ``steps`` AdamW steps of ``batch_size`` frames at peak ``lr`` after a
    warm-up of ``warmup`` steps, the EMA ``ema`` (0: the last weights), a checkpoint every
    ``ckpt_every`` steps and the held-out errors every ``val_every``."""

    steps: int = 8000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    ema: float = 0.0
    ckpt_every: int = 500
    val_every: int = 1000
    log_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "ckpt_every", "val_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"LocatorTraining.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"LocatorTraining.ema must be in [0, 1), got {self.ema}")


def fit_locator(net: ObjectLocator, frames: torch.Tensor, states: torch.Tensor, targets: torch.Tensor,
                out: Path, cfg: LocatorTraining, evaluate: Callable[[ObjectLocator], dict] | None = None,
                progress: bool = True) -> tuple[ObjectLocator, list[dict]]:
    """Train ``net`` (its normalisation already set) to predict ``targets`` (N, n, 5) from ``frames``
    (N, H, W, 3) uint8 and plain ``states`` (N, Dp), with checkpoints in ``out/`` (a re-run resumes
    from the newest). ``evaluate(net)`` gives the held-out errors logged every ``val_every`` steps.
    Returns the final locator (the EMA weights, written to ``out/final``) and the log."""
    out.mkdir(parents=True, exist_ok=True)
    resume = latest_checkpoint(out)
    if resume is not None:
        net = ObjectLocator.from_pretrained(resume)
    params = list(net.parameters())
    opt, sched = make_optimizer(params, cfg.lr, cfg.weight_decay, cfg.warmup, cfg.steps)
    ema = make_ema(net, cfg.ema)
    step, log = 0, []
    if resume is not None:
        st = torch.load(resume / "trainer.pt", map_location="cpu", weights_only=False)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        step, log = st["step"], st.get("log", [])
        load_ema_state(ema, st["ema"], net, step)
        set_rng_state(st["rng"])
        print(f"[par-locate] resuming from {resume} (step {step})", file=sys.stderr)
    metrics = MetricsLog(out, enabled=True)
    batches = iter(StepBatches(len(frames), cfg.batch_size, cfg.seed, step))
    net.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="locator", disable=not progress, dynamic_ncols=True)
    total = torch.zeros(())
    while step < cfg.steps:
        i = torch.as_tensor(next(batches))
        loss = (net(frames[i], states[i]) - targets[i]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.step(params)
        total += loss.detach()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            value = float(total) / (cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every)
            if not math.isfinite(value):
                raise FloatingPointError(f"par-locate: non-finite loss at step {step}")
            metrics(step, {"train/loss": value, "train/lr": sched.get_last_lr()[0]})
            bar.set_postfix(loss=f"{value:.4f}")
            total.zero_()
        if evaluate is not None and (step % cfg.val_every == 0 or step == cfg.steps):
            net.eval()
            entry = {"step": step, "val": evaluate(net)}
            net.train()
            log.append(entry)
            metrics(step, {f"val/{o}_cm_mean": e["cm_mean"] for o, e in entry["val"].items()})
            print(json.dumps(entry), file=sys.stderr, flush=True)
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_training_checkpoint(out, step, net, opt, sched, ema, extra={"log": log})
    bar.close()
    metrics.close()
    final = ObjectLocator(net.cfg)
    final.load_state_dict(net.state_dict())  # normalisation buffers, then the averaged weights
    ema_copy_to(ema, net, final)
    with atomic_folder(out / "final") as tmp:
        final.save_pretrained(tmp)
    return final.eval(), log
