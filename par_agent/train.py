"""``par-train``: the three training stages of PAR, resumable and distributed.

    par-train tokenizer      --data data/PushCube-v1 --out runs/pushcube          # frame autoencoder
    par-train pretrain-video --data data/ --out runs/pushcube                      # frames only, no actions
    par-train finetune       --data data/PushCube-v1 --out runs/pushcube           # frames + actions

Each stage writes ``OUT/<stage>/``: ``ckpt-<step>/`` training checkpoints (written to a temporary
folder, then renamed; ``latest`` names the newest), ``metrics.csv``, TensorBoard events,
validation videos (real beside predicted next frames; the video stages only), and at the end ``final/``: the EMA weights as a PAR checkpoint folder that
``PARPolicy.from_pretrained`` loads. Re-running a stage resumes from ``latest``. A stage starts
from the previous stage's ``final/`` (``--init`` to choose another folder).

Several GPUs or nodes: ``torchrun --nproc_per_node 8 -m par_agent.train finetune ...`` (or
``accelerate launch -m par_agent.train ...``) runs DistributedDataParallel; on CPUs it uses gloo.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import threading
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import MISSING, dataclass, field, fields
from datetime import timedelta
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from par_agent.config import PRESETS, PARConfig
from par_agent.device import resolve_device
from par_agent.data.sources import env_info, make_env_kwargs, task_of
from par_agent.models import PhysicalAutoregressiveModel
from par_agent.metrics import action_errors, frame_psnr
from par_agent.tokenizers import background_frame, get_dataset_stats, set_dataset_stats

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
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    threads: int | None = _opt(None, "torch threads per process (default: the machine's cores shared among the local "
                               "ranks); floating-point results are reproducible for a given count", type=int)
    val_fraction: float = _opt(0.1, "fraction of episodes held out for validation")
    val_windows: int = _opt(16, "held-out windows each validation scores, spread evenly over the held-out episodes "
                            "(16 is quick but noisy; all of them for a final figure)")
    progress: bool = _opt(True, "no progress bar", flag="--no-progress", action="store_false")
    fg_weight: float = _opt(20.0, "tokenizer stage: extra loss weight of pixels that differ from the static scene "
                            "(the arm, the cubes); 0 for a plain reconstruction loss")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.stage == "tokenizer" else 3e-4)


# ----------------------------------------------------------------------------- distributed
def dist_setup(device_name: str = "auto", timeout_s: float = 1800.0) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun/accelerate.

    The backend follows the device the run trains on (NCCL for CUDA, gloo for the CPU, also on a
    machine that has CUDA), and every collective fails after ``timeout_s`` instead of waiting forever."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_s))
    rank = dist.get_rank() if world > 1 else 0
    return rank, world, device


def dist_teardown(grace_s: float = 60.0) -> None:
    """Leave the process group once every rank has written its outputs, without hanging there.

    ``destroy_process_group`` joins the backend's threads; a run of ``torchrun --nproc_per_node 2 ...
    --steps 2`` once left rank 1 waiting there for 10 minutes after rank 0 had finished (1 run in 11;
    not seen again in 42 runs here, tests/test_train.py repeats it). Everything is written before this
    point, so a rank still inside it after ``grace_s`` says so and exits."""
    dist.barrier()
    rank = dist.get_rank()

    def give_up() -> None:
        print(f"[par-train] rank {rank}: destroy_process_group did not return in {grace_s:.0f} s; "
              "exiting (all outputs are written)", file=sys.stderr, flush=True)
        os._exit(0)

    timer = threading.Timer(grace_s, give_up)
    timer.daemon = True
    timer.start()
    dist.destroy_process_group()
    timer.cancel()


def all_mean(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        x = x.detach().clone()
        dist.all_reduce(x)
        x /= world
    return x


# ----------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of the trainable parameters (float32 copies)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = [params[n].detach().float().clone() for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up of the average
        params = dict(model.named_parameters())
        torch._foreach_lerp_(self.shadow, [params[n].detach().float() for n in self.names], 1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow))

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        for i, n in enumerate(self.names):
            self.shadow[i].copy_(sd[n])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for n, s in zip(self.names, self.shadow):
            params[n].copy_(s)


# ----------------------------------------------------------------------------- checkpoints
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


def save_training_checkpoint(stage_dir: Path, step: int, model: PhysicalAutoregressiveModel, opt, sched, ema: EMA,
                             keep: int = 2) -> Path:
    """Atomic: everything goes to ``ckpt-<step>.tmp`` which is renamed, then ``latest`` is replaced."""
    name = f"ckpt-{step:08d}"
    tmp = stage_dir / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "ema": ema.state_dict(), "rng": rng_state()}, tmp / "trainer.pt")
    final = stage_dir / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    ptr = stage_dir / "latest.tmp"
    ptr.write_text(name + "\n")
    os.replace(ptr, stage_dir / "latest")
    old = sorted(p for p in stage_dir.glob("ckpt-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for p in old[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- data
def build_datasets(args: TrainArgs, cfg: PARConfig, stats: dict | None,
                   tokens_from: PhysicalAutoregressiveModel | None = None):
    from torch.utils.data import ConcatDataset

    from par_agent.data.dataset import PhysicalStepDataset

    frames_only = args.stage != "finetune"
    train, val = [], []
    for path in args.data:
        task = task_of(path)
        tid = cfg.task_id(task) if task is not None else 0  # plain videos: the first task
        kw = dict(history=cfg.history, chunk_size=cfg.chunk_size, task_id=tid, frames_only=frames_only,
                  val_fraction=args.val_fraction, image_size=cfg.image_size)
        tr = PhysicalStepDataset(path, split="train", stats=stats, **kw)
        train.append(tr)
        try:
            val.append(PhysicalStepDataset(path, split="val", stats=tr.stats, **kw))
        except ValueError:
            pass  # too few episodes for a validation split
    stats = train[0].stats
    if frames_only:  # pure video: no proprio state (its size also differs between tasks: 25 / 29)
        train, val = [WithoutState(ds) for ds in train], [WithoutState(ds) for ds in val]
    if tokens_from is not None:  # frozen tokenizer: encode every frame once, not every step
        train = [TokenizedWindows(ds, tokens_from) for ds in train]
    return (train[0] if len(train) == 1 else ConcatDataset(train)), (val or None), stats


class WithoutState(torch.utils.data.Dataset):
    """A window dataset whose items leave out ``state`` (the frames-only stages read none)."""

    def __init__(self, ds) -> None:
        self.ds = ds
        self.frames = ds.frames

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.ds[i])
        item.pop("state", None)
        return item


class TokenizedWindows(torch.utils.data.Dataset):
    """A window dataset whose frames are replaced by precomputed frame tokens (B, T, P, C).

    The frame tokenizer is frozen after its own stage, so encoding the dataset's frames once
    is exact and saves a frame-encoder pass per frame per step.
    """

    def __init__(self, ds, model: PhysicalAutoregressiveModel, batch_size: int = 64) -> None:
        self.ds = ds
        tok = model.frame_tokenizer
        with torch.no_grad():
            chunks = [tok.encode(torch.from_numpy(ds.frames[i:i + batch_size]).to(model.device)).cpu()
                      for i in range(0, len(ds.frames), batch_size)]
        self.tokens = torch.cat(chunks)  # (N_frames, P, C)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.ds[i])
        del item["frames"]
        item["frame_tokens"] = self.tokens[item.pop("frame_index")]
        return item


# ----------------------------------------------------------------------------- model
def recorded_env_kwargs(paths) -> dict:
    """The make_env keyword arguments recorded with the fine-tuning data (one env set-up for all sources)."""
    found = {json.dumps(make_env_kwargs(env_info(p)), sort_keys=True) for p in paths if env_info(p)}
    if len(found) > 1:
        raise ValueError(f"the data sources {list(paths)} were recorded with different env settings: {sorted(found)}")
    return json.loads(found.pop()) if found else {}


def data_tasks(args: TrainArgs) -> tuple[str, ...]:
    """The task names of the stage's data: ``--tasks``, else those recorded with the data sources."""
    return tuple(args.tasks) or tuple(sorted({t for t in (task_of(p) for p in args.data) if t}))


def adapt_model(model: PhysicalAutoregressiveModel, **changes) -> tuple[PhysicalAutoregressiveModel, list[str]]:
    """``model`` rebuilt with ``cfg.replace(**changes)``, keeping every tensor whose shape still
    fits; task-embedding rows follow their task names. Returns the model and the names of the
    tensors that were re-initialised (e.g. the state embedding when ``state_dim`` changes)."""
    old_cfg, new_cfg = model.cfg, model.cfg.replace(**changes)
    if new_cfg == old_cfg:
        return model, []
    new = PhysicalAutoregressiveModel(new_cfg)
    own = new.state_dict()
    reinit = []
    for k, v in model.state_dict().items():
        if k == "task_emb.weight" and own[k].shape[1:] == v.shape[1:]:
            for i, t in enumerate(new_cfg.task_names):
                if t in old_cfg.task_names:
                    own[k][i] = v[old_cfg.task_names.index(t)]
            if not set(new_cfg.task_names) <= set(old_cfg.task_names):
                reinit.append(k)
        elif k in own and own[k].shape == v.shape:
            own[k] = v
        else:
            reinit.append(k)
    new.load_state_dict(own)
    return new, reinit


def build_model(args: TrainArgs) -> tuple[PhysicalAutoregressiveModel, str]:
    """A new model for the stage: from ``--init`` / the previous stage's ``final``, or fresh.

    A model started from a checkpoint takes the data's task names: exactly those for
    ``finetune`` (a single-task model by default, so its policy acts on that task), the
    checkpoint's plus any new ones for the other stages.
    """
    init = args.init
    if init is None and args.stage in PREVIOUS:
        prev = args.out / PREVIOUS[args.stage] / "final"
        if prev.is_dir():
            init = str(prev)
        elif args.stage == "finetune" and (args.out / "tokenizer" / "final").is_dir():
            init = str(args.out / "tokenizer" / "final")
    overrides = parse_overrides(args.overrides)
    tasks = data_tasks(args)
    if init is not None:
        model = PhysicalAutoregressiveModel.from_pretrained(init)
        cfg = model.cfg
        if tasks and "task_names" not in overrides:
            overrides["task_names"] = tasks if args.stage == "finetune" else \
                tuple(cfg.task_names) + tuple(t for t in tasks if t not in cfg.task_names)
        model, reinit = adapt_model(model, **overrides)
        note = f"initialised from {init}" + (f" (re-initialised {', '.join(reinit)})" if reinit else "")
        return model, note
    cfg = PARConfig.named(args.preset, **{"task_names": tasks or ("PushCube-v1",), **overrides})
    torch.manual_seed(args.seed)
    return PhysicalAutoregressiveModel(cfg), "initialised from scratch"


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


def frames_collate(items: list[dict]) -> dict:
    """The tokenizer stage's batches: the real frames of the windows, (N, H, W, 3), picked on the host
    (where the data are: selecting them on the device would be a data-dependent shape, a sync)."""
    from torch.utils.data import default_collate

    batch = default_collate(items)
    frames = batch["frames"]
    return {"frames": frames.reshape(-1, *frames.shape[-3:])[batch["frame_mask"].reshape(-1)]}


# ----------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model: PhysicalAutoregressiveModel, val_sets, stage: str, device, out_dir: Path | None, step: int,
             max_windows: int = 16, batch_size: int = 16) -> dict[str, float]:
    """Frame PSNR (dB) of teacher-forced next-frame predictions, tokenizer PSNR, action MSE.

    Over ``max_windows`` windows spread evenly over the validation sets (split between them),
    ``batch_size`` at a time; each figure is the mean over all frames (action entries) that count.
    """
    from torch.utils.data import default_collate

    model.eval()
    picks = [(ds, i) for ds in val_sets
             for i in np.linspace(0, len(ds) - 1, min(len(ds), max_windows // len(val_sets) or 1)).astype(int)]
    tok = model.frame_tokenizer
    scores: dict[str, list[torch.Tensor]] = defaultdict(list)  # per frame (PSNR) or action entry (MSE)
    g = torch.Generator(device=device).manual_seed(0)
    amp = autocast_for(torch.device(device))
    for start in range(0, len(picks), batch_size):
        batch = default_collate([ds[i] for ds, i in picks[start:start + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        frames = batch["frames"]  # (B, T, H, W, 3)
        fmask = batch["frame_mask"]
        scores["val/tokenizer_psnr"].append(frame_psnr(tok.decode(tok.encode(frames)), frames)[fmask])
        if stage == "tokenizer":
            continue
        with amp:
            pred = model.sample_window(batch, generator=g)
        img = tok.decode(pred["frame_tokens"])
        scores["val/frame_psnr"].append(frame_psnr(img, frames[:, 1:])[fmask[:, 1:] & fmask[:, :-1]])
        if "actions" in pred:
            sq, am = action_errors(pred["actions"], batch)
            scores["val/action_mse"].append(sq.mean(-1)[am])
        if out_dir is not None and start == 0:
            write_validation_video(frames[0, 1:], img[0], out_dir / f"val-{step:08d}.mp4")
    model.train()
    return {k: torch.cat(v).double().mean().item() for k, v in scores.items()}  # nan where none counted


def write_validation_video(real: torch.Tensor, pred: torch.Tensor, path: Path, fps: int = 4) -> None:
    """Real next frames (left) beside the predicted ones (right); (T, H, W, 3) uint8 each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pair = torch.cat([real, pred], dim=2).cpu().numpy()
    pair = pair.repeat(2, axis=1).repeat(2, axis=2)
    imageio.mimwrite(path, list(pair), fps=fps, macro_block_size=1)


# ----------------------------------------------------------------------------- one step
def make_optimizer(params: list[nn.Parameter], lr: float, weight_decay: float, warmup: int, steps: int):
    """AdamW (no decay on biases and norms) and diffusers' cosine schedule with warm-up, as par-train uses."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    return opt, get_cosine_schedule_with_warmup(opt, min(warmup, steps // 10 + 1), steps)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (TF32 matmuls for what stays in float32); nothing on the CPU."""
    if device.type != "cuda":
        return nullcontext()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.autocast("cuda", dtype=torch.bfloat16)


def train_step(objective: nn.Module, model: PhysicalAutoregressiveModel, batch: dict, opt, sched,
               params: list[nn.Parameter], grad_clip: float, ema: EMA, step: int, device: torch.device,
               amp) -> tuple[dict, torch.Tensor]:
    """One optimiser step as par-train runs it (``benchmarks/bench_train.py`` times this function):
    the batch to the device, forward, backward, gradient clipping, AdamW, the schedule and the EMA of
    step ``step + 1``. Returns the losses and the gradient norm as device tensors: no host sync."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with amp:
        out = objective(batch)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()
    ema.update(model, step + 1)
    return out, gnorm


# ----------------------------------------------------------------------------- loop
def train(args: TrainArgs) -> dict:
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

    resume = latest_checkpoint(stage_dir)
    if resume is not None:
        model = PhysicalAutoregressiveModel.from_pretrained(resume)
        note = f"resuming from {resume}"
    else:
        model, note = build_model(args)
    cfg = model.cfg
    model.to(device)  # the frozen tokenizer encodes the dataset on the training device
    stats = None
    if args.stage == "finetune" and resume is not None:
        stats = get_dataset_stats(model.action_norm, model.state_norm)
    train_set, val_sets, data_stats = build_datasets(args, cfg, stats,
                                                     tokens_from=model if args.stage != "tokenizer" else None)
    if args.stage == "finetune" and resume is None:
        dims = dict(state_dim=len(data_stats["state_mean"]), action_dim=len(data_stats["action_min"]))
        model, reinit = adapt_model(model, **dims, env_kwargs=recorded_env_kwargs(args.data))
        if reinit:  # e.g. PickCube's 29 state values after video pretraining with 25
            note += f"; {dims} from the data (re-initialised {', '.join(reinit)})"
        cfg = model.cfg
        set_dataset_stats(model.action_norm, model.state_norm, data_stats)
    model.to(device).train()

    if args.stage == "tokenizer":
        parts = getattr(train_set, "datasets", [train_set])  # a ConcatDataset when several data sources
        background = background_frame([d.frames for d in parts]) if args.fg_weight > 0 else None
        objective: nn.Module = TokenizerObjective(model, background, args.fg_weight)
        if background is not None and rank == 0:  # what the weighting treats as the static scene
            imageio.imwrite(stage_dir / "background.png", background.numpy())
        params = list(model.frame_tokenizer.parameters())
    else:
        objective = model
        for p in model.frame_tokenizer.parameters():
            p.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = make_optimizer(params, args.learning_rate, args.weight_decay, args.warmup, args.steps)
    ema = EMA(model, args.ema)
    step = 0
    if resume is not None:
        st = torch.load(resume / "trainer.pt", map_location="cpu", weights_only=False)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        ema.load_state_dict(st["ema"])
        step = st["step"]
        set_rng_state(st["rng"] if "rng" in st else st)
    ddp = objective
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            # video pretraining leaves the action head and state embedding without gradients
            find_unused_parameters=args.stage == "pretrain-video")

    sampler = DistributedSampler(train_set, world, rank, seed=args.seed) if world > 1 else \
        RandomSampler(train_set, replacement=True, num_samples=10**9, generator=torch.Generator().manual_seed(args.seed + step))
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        collate_fn=frames_collate if args.stage == "tokenizer" else None,
                        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    amp = autocast_for(device)

    writer = csv_file = tb = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(stage_dir / "tb"))
        new = not (stage_dir / "metrics.csv").exists()
        csv_file = open(stage_dir / "metrics.csv", "a", newline="")
        writer = csv.writer(csv_file)
        if new:
            writer.writerow(["step", "name", "value", "time"])
        print(f"[par-train] {args.stage}: {note}; {len(train_set)} training windows; "
              f"{sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters; device {device}; world {world}",
              file=sys.stderr)

    def log(metrics: dict[str, float]) -> None:
        if rank != 0:
            return
        now = time.time()
        for k, v in metrics.items():
            writer.writerow([step, k, f"{v:.6g}", f"{now:.1f}"])
            tb.add_scalar(k, v, step)
        csv_file.flush()

    bar = tqdm(total=args.steps, initial=step, desc=args.stage, disable=rank != 0 or not args.progress,
               dynamic_ncols=True)
    epoch, it = 0, None
    t_last, samples = time.time(), 0
    last_loss = float("nan")
    while step < args.steps:
        if it is None:
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)
            it = iter(loader)
        try:
            batch = next(it)
        except StopIteration:
            epoch, it = epoch + 1, None
            continue
        out, gnorm = train_step(ddp, model, batch, opt, sched, params, args.grad_clip, ema, step, device, amp)
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
            dt = time.time() - t_last
            vals["train/samples_per_s"] = samples / max(dt, 1e-9)
            vals["train/lr"] = sched.get_last_lr()[0]
            vals["train/grad_norm"] = float(gnorm)
            last_loss = vals["train/loss"]
            log(vals)
            bar.set_postfix(loss=f"{last_loss:.4f}", sps=f"{vals['train/samples_per_s']:.1f}")
            t_last, samples = time.time(), 0
        bar.update(1)
        if step % args.ckpt_every == 0 or step == args.steps:
            if rank == 0:
                save_training_checkpoint(stage_dir, step, model, opt, sched, ema)
            if world > 1:
                dist.barrier()
        if val_sets and rank == 0 and (step % args.val_every == 0 or step == args.steps):
            log(validate(model, val_sets, args.stage, device, stage_dir / "videos", step,
                         args.val_windows, args.batch_size))
    bar.close()

    summary = {"stage": args.stage, "step": step, "loss": None if math.isnan(last_loss) else last_loss}
    if rank == 0:
        final_model = PhysicalAutoregressiveModel(cfg)
        final_model.load_state_dict(model.state_dict())
        ema.copy_to(final_model)
        if args.stage == "tokenizer":
            sample = next(iter(DataLoader(train_set, batch_size=min(64, len(train_set)), shuffle=True)))
            fr = sample["frames"][sample["frame_mask"]]
            final_model.frame_tokenizer.to(device).eval().fit_latent_stats(fr.to(device))
        final_dir = stage_dir / "final"
        tmp = stage_dir / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        final_model.cpu().save_pretrained(tmp, extra={"stage": args.stage, "step": step})
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(tmp, final_dir)
        if val_sets:
            summary.update(validate(final_model.to(device), val_sets, args.stage, device, None, step,
                                        args.val_windows, args.batch_size))
        (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        csv_file.close()
        tb.close()
        print(f"[par-train] {args.stage} done at step {step}: {json.dumps(summary)}; model in {final_dir}", file=sys.stderr)
    if world > 1:
        checksum = sum(p.detach().double().sum().item() for p in model.parameters())
        (stage_dir / f"rank{rank}.json").write_text(json.dumps({"loss": last_loss, "param_checksum": checksum}))
        dist_teardown()
    return summary


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    """par-train's command line, one flag per :class:`TrainArgs` field (its default and help written there)."""
    p = argparse.ArgumentParser(prog="par-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
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
    return TrainArgs(**{**vars(a), "overrides": tuple(a.overrides), "tasks": tuple(a.tasks)})


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
