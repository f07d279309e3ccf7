"""One optimiser step as par-train runs it (``benchmarks/bench_train.py`` times it): the optimiser and
schedule, the tokenizer stage's objective and :func:`train_step` (autocast: ``par_agent.precision``)."""
from __future__ import annotations

import torch
from torch import nn

from par_agent.models import PhysicalAutoregressiveModel
from par_agent.training.checkpoints import trainable


def make_optimizer(params: list[nn.Parameter], lr: float, weight_decay: float, warmup: int, steps: int):
    """AdamW (no decay on biases and norms) and diffusers' cosine schedule with warm-up, as par-train uses.
    The fused AdamW kernel where the parameters live on the CPU or CUDA: one pass over all parameters
    instead of a dozen small ops per tensor (a cpu64 fine-tuning step 15% faster on 2 cores)."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=fused or None)
    return opt, get_cosine_schedule_with_warmup(opt, min(warmup, steps // 10 + 1), steps)


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
