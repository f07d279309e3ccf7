"""One optimiser step as par-train runs it (``benchmarks/bench_train.py`` times it): the optimiser and
schedule, autocast, the tokenizer stage's objective and :func:`train_step`."""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from par_agent.models import PhysicalAutoregressiveModel
from par_agent.training.checkpoints import trainable


def make_optimizer(params: list[nn.Parameter], lr: float, weight_decay: float, warmup: int, steps: int,
                   slow_params: list[nn.Parameter] = (), slow_lr: float = 0.0):
    """AdamW (no decay on biases and norms) and diffusers' cosine schedule with warm-up, as par-train uses.
    ``slow_params`` (e.g. the frame encoder fine-tuned with the policy) train at ``slow_lr`` on the same schedule."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    def groups(ps, group_lr: float) -> list[dict]:
        return [{"params": [p for p in ps if p.dim() >= 2], "weight_decay": weight_decay, "lr": group_lr},
                {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0, "lr": group_lr}]

    slow = groups(list(slow_params), slow_lr) if len(slow_params) else []
    opt = torch.optim.AdamW(groups(params, lr) + slow, lr=lr, betas=(0.9, 0.95))
    return opt, get_cosine_schedule_with_warmup(opt, min(warmup, steps // 10 + 1), steps)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (TF32 matmuls for what stays in float32); nothing on the CPU."""
    if device.type != "cuda":
        return nullcontext()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.autocast("cuda", dtype=torch.bfloat16)


class TokenizerObjective(nn.Module):
    """Wraps the frame tokenizer so DDP sees one module whose forward returns the losses.

    ``background`` (H, W, 3) uint8 and ``fg_weight``: the foreground weighting of
    :meth:`FrameTokenizer.loss`."""

    def __init__(self, model: PhysicalAutoregressiveModel, background: torch.Tensor | None = None,
                 fg_weight: float = 0.0) -> None:
        super().__init__()
        self.tok = model.frame_tokenizer
        self.background, self.fg_weight = background, fg_weight

    def forward(self, batch: dict) -> dict:
        """batch: ``frames`` (N, H, W, 3) uint8, the real frames of a batch of windows (:func:`frames_collate`)."""
        return self.tok.loss(batch["frames"], background=self.background, fg_weight=self.fg_weight)


class FinetuneObjective(nn.Module):
    """Fine-tuning's losses with the frame encoder in training (``--encoder-lr``) and ``--encoder-recon``:
    the model's own losses plus ``weight`` times the tokenizer's reconstruction loss of each window's last
    frame, through the frozen decoder, so that the action loss cannot reshape the tokens into something
    the decoder no longer reads (what ``--encoder-lr`` alone did to StackCube's frames, docs/RESULTS.md)."""

    def __init__(self, model: PhysicalAutoregressiveModel, weight: float,
                 background: torch.Tensor | None = None, fg_weight: float = 0.0) -> None:
        super().__init__()
        self.model, self.weight = model, weight
        self.background, self.fg_weight = background, fg_weight

    def forward(self, batch: dict) -> dict:
        """batch: the model's (``frames`` (B, T, H, W, 3) uint8, ``state``, ``actions``, ...); adds ``recon``."""
        out = dict(self.model(batch))
        rec = self.model.frame_tokenizer.loss(batch["frames"][:, -1], background=self.background,
                                              fg_weight=self.fg_weight)["loss"]
        return {**out, "loss": out["loss"] + self.weight * rec, "recon": rec.detach()}


class ValueObjective(nn.Module):
    """The value stage's loss: the progress head's cross-entropy against each real frame's place in its
    demo (0 first, 1 last), from the windows' frame tokens (or frames, encoded here when augmented)."""

    def __init__(self, model: PhysicalAutoregressiveModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> dict:
        """batch: ``frame_tokens`` (B, T, P, C) or ``frames`` (B, T, H, W, 3), ``frame_mask`` and ``progress`` (B, T)."""
        if "frame_tokens" in batch:
            tokens = batch["frame_tokens"].flatten(0, 1)
        else:
            with torch.no_grad():
                tokens = self.model.frame_tokenizer.encode(batch["frames"].flatten(0, 1))
        # frames past an episode's end (repeats of its last) are weighted out, not selected: no host sync
        return {"loss": self.model.value_head.loss(tokens, batch["progress"].flatten(), batch["frame_mask"].flatten())}


def train_step(objective: nn.Module, model: PhysicalAutoregressiveModel, batch: dict, opt, sched,
               params: list[nn.Parameter], grad_clip: float, ema, device: torch.device,
               amp) -> tuple[dict, torch.Tensor]:
    """One optimiser step as par-train runs it (``benchmarks/bench_train.py`` times this function):
    the batch to the device, forward, backward, gradient clipping, AdamW, the schedule and the EMA
    (diffusers' ``EMAModel``). Returns the losses and the gradient norm as device tensors: no host sync."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with amp:
        out = objective(batch)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()
    ema.step(trainable(model).values())
    return out, gnorm
