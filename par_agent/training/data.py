"""The windows a stage trains on: datasets per source (train / held-out split), frames-only views, the
dataset encoded once by a frozen tokenizer, the tokenizer stage's batches, and what the sources
record (tasks, env settings)."""
from __future__ import annotations

import json

import torch

from par_agent.config import PARConfig
from par_agent.data.sources import env_info, make_env_kwargs, task_of
from par_agent.models import PhysicalAutoregressiveModel
from par_agent.training.args import TrainArgs


def build_datasets(args: TrainArgs, cfg: PARConfig, stats: dict | None,
                   tokens_from: PhysicalAutoregressiveModel | None = None):
    """The stage's windows: (training set, held-out sets or None, statistics). One
    :class:`PhysicalStepDataset` per ``--data`` source (split by episode; the training set concatenates
    them), frames only before fine-tuning; with ``tokens_from`` the frames are replaced by that model's
    frame tokens, computed once. ``stats``: normalisation statistics to reuse (a resumed fine-tuning);
    otherwise they are computed over the training episodes of every source together."""
    from torch.utils.data import ConcatDataset

    from par_agent.data.dataset import PhysicalStepDataset

    frames_only = args.stage != "finetune"
    train, val = [], []
    for path in args.data:
        task = task_of(path)
        tid = cfg.task_id(task) if task is not None else 0  # plain videos: the first task
        kw = dict(history=cfg.history, chunk_size=cfg.chunk_size, task_id=tid, frames_only=frames_only,
                  val_fraction=args.val_fraction, image_size=cfg.image_size, cameras=args.cameras)
        tr = PhysicalStepDataset(path, split="train", stats=stats, train_episodes=args.train_episodes, **kw)
        train.append(tr)
        try:
            val.append(PhysicalStepDataset(path, split="val", stats=tr.stats, **kw))
        except ValueError:
            pass  # too few episodes for a validation split
    if stats is None and len(train) > 1 and not frames_only:  # one normalisation for every source
        from par_agent.data.dataset import merge_stats

        merged = merge_stats([ds.stats for ds in train], [str(p) for p in args.data])
        for ds in train + val:
            ds.stats = merged
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


def frames_collate(items: list[dict]) -> dict:
    """The tokenizer stage's batches: the real frames of the windows, (N, H, W, 3), picked on the host
    (where the data are: selecting them on the device would be a data-dependent shape, a sync)."""
    from torch.utils.data import default_collate

    batch = default_collate(items)
    frames = batch["frames"]
    return {"frames": frames.reshape(-1, *frames.shape[-3:])[batch["frame_mask"].reshape(-1)]}


def recorded_env_kwargs(paths, cameras=("base_camera",)) -> dict:
    """The make_env keyword arguments recorded with the fine-tuning data (one env set-up for all sources),
    for the ``cameras`` the model reads."""
    found = {json.dumps(make_env_kwargs(env_info(p), cameras), sort_keys=True) for p in paths if env_info(p)}
    if len(found) > 1:
        raise ValueError(f"the data sources {list(paths)} were recorded with different env settings: {sorted(found)}")
    return json.loads(found.pop()) if found else {}


def data_tasks(args: TrainArgs) -> tuple[str, ...]:
    """The task names of the stage's data: ``--tasks``, else those recorded with the data sources."""
    return tuple(args.tasks) or tuple(sorted({t for t in (task_of(p) for p in args.data) if t}))
