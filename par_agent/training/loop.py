"""The training loop of a stage: set-up (device, model, data, objective), the steps with logging,
checkpoints and validation, and the final EMA model. Each piece lives in its own module of this
package; this one puts them in order."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm.auto import tqdm

from par_agent.atomic import atomic_folder
from par_agent.models import PhysicalAutoregressiveModel, get_dataset_stats, set_dataset_stats
from par_agent.tokenizers import background_frame
from par_agent.training.args import STAGES, TrainArgs
from par_agent.training.checkpoints import (ema_copy_to, latest_checkpoint, load_ema_state, make_ema,
                                            save_training_checkpoint, set_rng_state)
from par_agent.training.data import build_datasets, frames_collate, recorded_env_kwargs
from par_agent.training.distributed import all_mean, dist_setup, dist_teardown
from par_agent.training.model import adapt_model, build_model, stage_cameras
from par_agent.precision import autocast_for, resolve_precision
from par_agent.training.step import (TokenizerObjective, make_optimizer,
                                     train_step)
from par_agent.training.validation import validate


class MetricsLog:
    """``metrics.csv`` (step, name, value, time) and TensorBoard events of rank 0; other ranks write nothing."""

    def __init__(self, stage_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(stage_dir / "tb"))
        new = not (stage_dir / "metrics.csv").exists()
        self.file = open(stage_dir / "metrics.csv", "a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(["step", "name", "value", "time"])

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        now = time.time()
        for k, v in metrics.items():
            self.csv.writerow([step, k, f"{v:.6g}", f"{now:.1f}"])
            self.tb.add_scalar(k, v, step)
        self.file.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()


def prepare_model(args: TrainArgs, device: torch.device):
    """The stage's model on ``device`` (resumed, or built and adapted to the fine-tuning data), its
    datasets, the checkpoint it resumes from (or None) and a note saying where it came from."""
    resume = latest_checkpoint(args.out / args.stage)
    if resume is not None:
        model, note = PhysicalAutoregressiveModel.from_pretrained(resume), f"resuming from {resume}"
    else:
        model, note = build_model(args)
    model.to(device)  # the frozen tokenizer encodes the dataset on the training device
    stats = get_dataset_stats(model.action_norm, model.state_norm) if args.stage == "finetune" and resume else None
    args = dataclasses.replace(args, cameras=stage_cameras(args, model.cfg))
    if args.stage != "finetune" and resume is None and model.cfg.num_cameras > 1 \
            and model.cfg.env_kwargs.get("cameras") != list(args.cameras):
        # the camera names travel with the model from its first stage, so later stages need no --cameras
        model, _ = adapt_model(model, env_kwargs={**model.cfg.env_kwargs, "cameras": list(args.cameras)})
    # the frozen tokenizer encodes every frame once, not every step
    tokens_from = model if args.stage != "tokenizer" else None
    train_set, val_sets, data_stats = build_datasets(args, model.cfg, stats, tokens_from=tokens_from)
    if args.stage == "finetune" and resume is None:
        dims = dict(state_dim=len(data_stats["state_mean"]), action_dim=len(data_stats["action_min"]))
        model, reinit = adapt_model(model, **dims, env_kwargs=recorded_env_kwargs(args.data, args.cameras))
        if reinit:  # e.g. PickCube's 29 state values after video pretraining with 25
            note += f"; {dims} from the data (re-initialised {', '.join(reinit)})"
        set_dataset_stats(model.action_norm, model.state_norm, data_stats)
    return model.to(device).train(), train_set, val_sets, resume, note


def stage_objective(args: TrainArgs, model: PhysicalAutoregressiveModel, train_set, stage_dir: Path,
                    rank: int) -> tuple[nn.Module, list[nn.Parameter]]:
    """What the stage minimises and the parameters it trains: the tokenizer's reconstruction (with the
    foreground weighting) in the tokenizer stage, else the model's own losses with the tokenizer frozen."""
    if args.stage == "tokenizer":
        parts = getattr(train_set, "datasets", [train_set])  # a ConcatDataset when several data sources
        bg = background_frame([d.frames for d in parts]) if args.fg_weight > 0 else None
        if bg is not None and rank == 0:  # what the weighting treats as the static scene
            imageio.imwrite(stage_dir / "background.png", bg.numpy())
        return TokenizerObjective(model, bg, args.fg_weight), list(model.frame_tokenizer.parameters())
    for p in model.frame_tokenizer.parameters():
        p.requires_grad_(False)
    return model, [p for p in model.parameters() if p.requires_grad]


class StepBatches(Sampler):
    """The windows of every optimiser step from ``start`` on: ``batch_size`` indices drawn with
    replacement from ``n`` by a generator seeded with (seed, step), so a resumed run trains on exactly
    the batches the uninterrupted run would have."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int) -> None:
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start

    def __iter__(self):
        step = self.start
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            yield torch.randint(self.n, (self.batch_size,), generator=g).tolist()
            step += 1

    def __len__(self) -> int:
        return 10**9


def make_loader(args: TrainArgs, train_set, rank: int, world: int, step: int, device: torch.device) -> DataLoader:
    """Endless sampling with replacement, batch by batch from the step (one process), or DDP's sharded epochs."""
    collate = frames_collate if args.stage == "tokenizer" else None
    # the loader's own generator: starting an iterator draws a worker seed, which must not come from the
    # global generator (a resumed run starts its iterator at another point of that stream)
    common = dict(num_workers=args.workers, collate_fn=collate, pin_memory=device.type == "cuda",
                  persistent_workers=args.workers > 0, generator=torch.Generator().manual_seed(args.seed + step))
    if world > 1:
        return DataLoader(train_set, batch_size=args.batch_size, sampler=DistributedSampler(train_set, world, rank,
                          seed=args.seed), drop_last=True, **common)
    return DataLoader(train_set, batch_sampler=StepBatches(len(train_set), args.batch_size, args.seed, step), **common)


def batches(loader: DataLoader):
    """Batches forever, starting a new DDP epoch (with its own shuffle) when one runs out."""
    epoch = 0
    while True:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def save_final(model: PhysicalAutoregressiveModel, ema, args: TrainArgs, train_set, stage_dir: Path, step: int,
               device: torch.device) -> PhysicalAutoregressiveModel:
    """``stage_dir/final``: the EMA weights as a PAR checkpoint folder (written to ``final.tmp``, then
    renamed). After the tokenizer stage the latent statistics are fitted on training frames."""
    final_model = PhysicalAutoregressiveModel(model.cfg)
    final_model.load_state_dict(model.state_dict())
    ema_copy_to(ema, model, final_model)
    if args.stage == "tokenizer":
        sample = next(iter(DataLoader(train_set, batch_size=min(64, len(train_set)), shuffle=True)))
        fr = sample["frames"][sample["frame_mask"]]
        final_model.frame_tokenizer.to(device).eval().fit_latent_stats(fr.to(device))
    with atomic_folder(stage_dir / "final") as tmp:
        final_model.cpu().save_pretrained(tmp, extra={"stage": args.stage, "step": step})
    return final_model


def train(args: TrainArgs) -> dict:
    """Run (or resume) one stage; returns its summary (last loss and, with held-out data, the
    validation scores of the final model)."""
    if args.stage not in STAGES:
        raise ValueError(f"unknown stage {args.stage!r}; choose from {STAGES}")
    rank, world, device = dist_setup(args.device)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    stage_dir = args.out / args.stage
    if rank == 0:
        stage_dir.mkdir(parents=True, exist_ok=True)
    if world > 1:
        dist.barrier()
    torch.manual_seed(args.seed + rank)
    np.random.seed(args.seed + rank)

    model, train_set, val_sets, resume, note = prepare_model(args, device)
    objective, params = stage_objective(args, model, train_set, stage_dir, rank)
    opt, sched = make_optimizer(params, args.learning_rate, args.weight_decay, args.warmup, args.steps)
    ema = make_ema(model, args.ema)
    step = 0
    if resume is not None:
        st = torch.load(resume / "trainer.pt", map_location="cpu", weights_only=False)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        step = st["step"]
        load_ema_state(ema, st["ema"], model, step)
        set_rng_state(st["rng"] if "rng" in st else st)
    ddp = objective
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            # video pretraining leaves the action head and state embedding without gradients
            find_unused_parameters=args.stage == "pretrain-video")
    data = batches(make_loader(args, train_set, rank, world, step, device))
    amp = autocast_for(device, args.precision)
    log = MetricsLog(stage_dir, enabled=rank == 0)
    if rank == 0:
        print(f"[par-train] {args.stage}: {note}; {len(train_set)} training windows; "
              f"{sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters; device {device}; "
              f"{resolve_precision(args.precision, device)} matrix products; world {world}",
              file=sys.stderr)

    bar = tqdm(total=args.steps, initial=step, desc=args.stage, disable=rank != 0 or not args.progress,
               dynamic_ncols=True)
    t_last, samples, last_loss = time.time(), 0, float("nan")
    while step < args.steps:
        out, gnorm = train_step(ddp, model, next(data), opt, sched, params, args.grad_clip, ema, device, amp)
        step += 1
        samples += args.batch_size * world
        if step % args.log_every == 0 or step == args.steps or step % args.ckpt_every == 0:
            # the one host sync of a step, at log and checkpoint steps only: every rank reads the same
            # all-reduced loss, so all of them stop together on a non-finite one (no rank is left
            # waiting in a collective), and no checkpoint is written after it
            vals = {f"train/{k}": all_mean(v.float(), world).item() for k, v in out.items()}
            if not math.isfinite(vals["train/loss"]):
                raise FloatingPointError(f"non-finite loss at step {step} (checked every {args.log_every} steps and "
                                         f"before each checkpoint; the last checkpoint is older): {vals}")
            vals["train/samples_per_s"] = samples / max(time.time() - t_last, 1e-9)
            vals["train/lr"] = sched.get_last_lr()[0]
            vals["train/grad_norm"] = float(gnorm)
            last_loss = vals["train/loss"]
            log(step, vals)
            bar.set_postfix(loss=f"{last_loss:.4f}", sps=f"{vals['train/samples_per_s']:.1f}")
            t_last, samples = time.time(), 0
        bar.update(1)
        if step % args.ckpt_every == 0 or step == args.steps:
            if rank == 0:
                save_training_checkpoint(stage_dir, step, model, opt, sched, ema)
            if world > 1:
                dist.barrier()
        if val_sets and rank == 0 and (step % args.val_every == 0 or step == args.steps):
            log(step, validate(model, val_sets, args.stage, device, stage_dir / "videos", step,
                               args.val_windows, args.batch_size, args.precision))
    bar.close()

    summary = {"stage": args.stage, "step": step, "loss": None if math.isnan(last_loss) else last_loss}
    if rank == 0:
        final_model = save_final(model, ema, args, train_set, stage_dir, step, device)
        if val_sets:
            summary.update(validate(final_model.to(device), val_sets, args.stage, device, None, step,
                                    args.val_windows, args.batch_size, args.precision))
        (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.close()
        print(f"[par-train] {args.stage} done at step {step}: {json.dumps(summary)}; model in {stage_dir / 'final'}",
              file=sys.stderr)
    if world > 1:
        checksum = sum(p.detach().double().sum().item() for p in model.parameters())
        (stage_dir / f"rank{rank}.json").write_text(json.dumps({"loss": last_loss, "param_checksum": checksum}))
        dist_teardown()
    return summary
