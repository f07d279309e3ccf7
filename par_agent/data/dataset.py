"""Windows of physical steps for training PAR.

A physical step covers ``K = chunk_size`` control steps. For an episode with ``L`` actions and
``L + 1`` observations, ``N = ceil(L / K)`` and

    o_n = obs[min(n*K, L)]                      n = 0..N   (o_N is the final observation)
    A_n = actions[n*K : n*K + K]                n = 0..N-1 (the last chunk is padded by repeating the
                                                           last action, with the mask False)

An item is a window of ``T = history`` consecutive physical steps starting at any block ``s`` in
``0..N``; steps past the end are padded (last observation / last action repeated, masks False):

    frames       uint8   (T, H, W, 3)     o_s .. o_{s+T-1}, channel-last
    state        float32 (T, D_s)         raw (not normalised), layout of envs.flatten_state (ManiSkill's order)
    actions      float32 (T-1, K, D_a)    actions[i] = A_{s+i}, the chunk from o_{s+i} to o_{s+i+1}
    frame_mask   bool    (T,)             o_{s+i} is a real observation
    action_mask  bool    (T-1, K)         the action is real
    task_id      int64   ()

Frames-only mode (video pretraining) keeps ``frames``, ``frame_mask``, ``task_id`` (and ``state``
when every source has it). Sources: ManiSkill ``.h5`` files, compact folders
(:mod:`par_agent.data.compact`), folders of ``.h5`` files, and (frames-only) folders of videos.

All frames are decoded once at construction into one uint8 array; an item is a gather of rows.
"""
from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from envs import extra_order, flatten_state, stitch_cameras
from par_agent.data.sources import env_info
from par_agent.tokenizers.frames import resize_frames
from par_agent.data.compact import (
    is_compact_dir,
    open_h5,
    read_compact_episode,
    read_compact_meta,
    read_group,
    read_video,
    trajectory_names,
)

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
STAT_KEYS = ("action_min", "action_max", "state_mean", "state_std")
NO_RGB_HINT = (
    "it has no rgb camera observations. Collect demos with images: `par-collect --task TASK` "
    "(records obs_mode='rgb'), or replay ManiSkill demos with "
    "`python -m mani_skill.trajectory.replay_trajectory --traj-path FILE.h5 -o rgb --save-traj`"
)


@dataclass
class _Episode:
    """Where one episode lives; ``load(with_frames)`` -> dict(frames (L+1,H,W,3)|None, state, actions)."""

    key: str
    source: str
    load: Callable[[bool], dict]
    has_actions: bool
    has_state: bool


# ----------------------------------------------------------------------------- sources


def _state_order(env_info: dict) -> Optional[tuple[str, ...]]:
    """The order of the recorded task's extra state fields (ManiSkill's, ``envs.extra_order``); stored
    files list them alphabetically. ``None`` (the file's own order) when the task is not recorded."""
    env_id = (env_info or {}).get("env_id")
    return extra_order(env_id) if env_id else None


def _h5_episodes(path: Path, cameras: Sequence[str]) -> list[_Episode]:
    meta = path.with_suffix(".json")
    order = _state_order(json.loads(meta.read_text()).get("env_info")) if meta.is_file() else None
    with open_h5(path) as f:
        try:
            names = trajectory_names(f)
        except (OSError, RuntimeError, KeyError) as err:
            raise ValueError(f"{path}: cannot read the .h5 (truncated or corrupt file?): {err}") from err
        if not names:
            raise ValueError(f"{path}: no trajectories (traj_N groups) in this .h5")
        first = f[names[0]]
        sensor = first.get("obs/sensor_data") if "obs" in first else None
        if sensor is None or not any(c in sensor and "rgb" in sensor[c] for c in cameras):
            raise ValueError(f"{path}: {NO_RGB_HINT}")

    def loader(name):
        def load(with_frames: bool) -> dict:
            try:
                with open_h5(path) as f:
                    g = f[name]
                    obs = g["obs"]
                    out = {"actions": g["actions"][()].astype(np.float32)}
                    out["state"] = flatten_state({k: read_group(obs[k]) for k in ("agent", "extra") if k in obs}, order)
                    if with_frames:
                        sd = {c: {"rgb": obs[f"sensor_data/{c}/rgb"][()]} for c in cameras
                              if f"sensor_data/{c}/rgb" in obs}
                        if len(sd) != len(cameras):
                            raise ValueError(f"{path}: {name} lacks camera(s) {set(cameras) - set(sd)}; {NO_RGB_HINT}")
                        out["frames"] = stitch_cameras(sd, cameras)
                    return out
            except (OSError, KeyError, RuntimeError) as err:
                raise ValueError(f"{path}: cannot read {name} (truncated or corrupt file?): {err}") from err

        return load

    return [_Episode(f"{path.name}/{n}", str(path), loader(n), True, True) for n in names]


def _compact_episodes(path: Path, cameras: Sequence[str]) -> list[_Episode]:
    meta = read_compact_meta(path)
    order = _state_order(meta.get("env_info"))
    if not meta["episodes"]:
        raise ValueError(f"{path}: compact folder holds no episodes")
    missing = set(cameras) - set(meta["episodes"][0]["videos"])
    if missing:
        raise ValueError(f"{path}: no video for camera(s) {sorted(missing)}; {NO_RGB_HINT}")

    def loader(ep):
        def load(with_frames: bool) -> dict:
            e = dict(ep)
            e["videos"] = {c: ep["videos"][c] for c in cameras} if with_frames else {}
            data = read_compact_episode(path, e)
            obs = data["obs"]
            out = {"actions": data["actions"].astype(np.float32),
                   "state": flatten_state({k: obs[k] for k in ("agent", "extra") if k in obs}, order)}
            if with_frames:
                out["frames"] = stitch_cameras(obs["sensor_data"], cameras)
            return out

        return load

    # keyed by the .h5 it was exported from, so a compact copy splits train / held-out as its .h5 does
    name = Path(meta["source"]).name if meta.get("source") else path.name
    return [_Episode(f"{name}/{ep['traj']}", str(path), loader(ep), True, True) for ep in meta["episodes"]]


def _video_episodes(paths: list[Path]) -> list[_Episode]:
    def loader(p):
        def load(with_frames: bool) -> dict:
            return {"frames": center_square(read_video(p)) if with_frames else None}

        return load

    return [_Episode(f"{p.parent.name}/{p.name}", str(p), loader(p), False, False) for p in paths]


def _check_one_control_mode(episodes: list[_Episode]) -> None:
    """Refuse demos recorded in different control modes (e.g. a folder holding ManiSkill's
    ``trajectory.rgb.pd_joint_pos.h5`` beside its ``pd_ee_delta_pos`` conversion): their actions mean
    different things."""
    modes: dict[str, list[str]] = {}
    for src in sorted({ep.source for ep in episodes}):
        mode = env_info(src).get("env_kwargs", {}).get("control_mode")
        if mode:
            modes.setdefault(mode, []).append(src)
    if len(modes) > 1:
        listing = "; ".join(f"{m}: {', '.join(s)}" for m, s in sorted(modes.items()))
        raise ValueError(f"demos in {len(modes)} control modes ({listing}); actions of different control modes "
                         "cannot be trained together: pass the files of one mode")


def center_square(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` -> ``(T, S, S, 3)`` with ``S = min(H, W)``: the centre square of each frame.

    Plain videos for video pretraining may have any aspect; PAR's frames are square, and cropping
    keeps the pixels' scale (padding would add borders the robot's camera never shows)."""
    h, w = frames.shape[1:3]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return frames[:, top:top + s, left:left + s]


def demo_h5_files(path: str | os.PathLike) -> list[Path]:
    """The ManiSkill demo files under ``path`` (itself if it is a .h5 file), sorted. ``par-collect``'s
    unmerged ``chunks/`` folders are skipped: their demos are also in the merged file beside them."""
    path = Path(path)
    if path.is_file():
        return [path] if path.suffix == ".h5" else []
    return sorted(p for p in path.rglob("*.h5") if "chunks" not in p.parts)


def episodes_in(path, cameras: Sequence[str] = ("base_camera",), frames_only: bool = False) -> list[_Episode]:
    """The episodes of one data source (a .h5, a compact folder, a folder of either, or videos), each
    with a ``load(with_frames)`` that reads it (actions and state always, frames when asked)."""
    return _episodes_from_path(path, tuple(cameras), frames_only)


def _episodes_from_path(path, cameras, frames_only: bool) -> list[_Episode]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path not found: {path}")
    if path.is_file():
        if path.suffix == ".h5":
            return _h5_episodes(path, cameras)
        if path.suffix.lower() in VIDEO_EXTS:
            if not frames_only:
                raise ValueError(f"{path}: a video has no actions; use frames_only=True")
            return _video_episodes([path])
        raise ValueError(f"{path}: unsupported file type (expected a ManiSkill .h5, a compact folder or videos)")
    if is_compact_dir(path):
        return _compact_episodes(path, cameras)
    h5s = demo_h5_files(path)
    if h5s:
        return [ep for h in h5s for ep in _h5_episodes(h, cameras)]
    compacts = sorted(p.parent for p in path.rglob("meta.json") if is_compact_dir(p.parent))
    if compacts:
        return [ep for c in compacts for ep in _compact_episodes(c, cameras)]
    videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTS)
    if videos:
        if not frames_only:
            raise ValueError(f"{path}: holds only videos, which have no actions; use frames_only=True")
        return _video_episodes(videos)
    raise ValueError(
        f"{path}: no videos ({', '.join(VIDEO_EXTS)}), ManiSkill .h5 files or compact demo folders in this folder"
    )


# ----------------------------------------------------------------------------- split and stats


def split_episodes(keys: Sequence[str], val_fraction: float) -> tuple[list[int], list[int]]:
    """Deterministic split by episode: order by CRC32 of the key, the first ``round(f*n)`` are val.

    At least one val episode when ``val_fraction > 0`` and there are >= 2 episodes. Independent of
    the order in which sources are listed. Returns (train indices, val indices), each sorted.
    """
    n = len(keys)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = sorted(range(n), key=lambda i: (zlib.crc32(keys[i].encode()), keys[i]))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return train, val


def compute_stats(actions: list[np.ndarray], states: list[np.ndarray], chunk_size: int) -> dict:
    """Normalisation statistics (float32): action_min/max (D_a,) and state_mean/std (D_s,) (std >= 1e-6).

    Args:
        actions: per episode ``(L, D_a)``.
        states: per episode ``(L+1, D_s)`` (every control step).
    """
    stats: dict = {}
    if actions:
        a = np.concatenate(actions)
        stats["action_min"] = a.min(0).astype(np.float32)
        stats["action_max"] = a.max(0).astype(np.float32)
    if states:
        s = np.concatenate(states).astype(np.float64)
        stats["state_mean"] = s.mean(0).astype(np.float32)
        stats["state_std"] = np.maximum(s.std(0), 1e-6).astype(np.float32)
        stats["num_states"] = len(s)
    stats["num_episodes"] = len(actions) if actions else len(states)
    stats["num_windows"] = int(sum(math.ceil(len(a) / chunk_size) + 1 for a in actions))
    return stats


def merge_stats(parts: Sequence[dict], names: Sequence[str] | None = None) -> dict:
    """The statistics of several sources' training episodes taken together, from each source's own
    :func:`compute_stats`: the action range spans every source's, and the state mean and std are
    pooled over every state row (each part needs its ``num_states``). ``names`` label the parts in
    errors (for example the ``--data`` paths)."""
    names = list(names) if names is not None else [f"source {i}" for i in range(len(parts))]
    if not parts:
        raise ValueError("merge_stats needs at least one set of statistics")
    for key in STAT_KEYS:  # lists, not dicts: the same source may be given twice
        dims = [(n, np.shape(p[key])) for n, p in zip(names, parts) if key in p]
        if dims and len(dims) != len(parts):
            raise ValueError(f"{key} is in the statistics of {[n for n, _ in dims]} only, not of every source")
        if len({d for _, d in dims}) > 1:
            raise ValueError(f"the sources disagree on the size of {key}: {dict(dims)}; train them separately "
                             "or give them the same state and action layout")
    out: dict = {"num_episodes": sum(p["num_episodes"] for p in parts),
                 "num_windows": sum(p["num_windows"] for p in parts)}
    if "action_min" in parts[0]:
        out["action_min"] = np.min([p["action_min"] for p in parts], 0).astype(np.float32)
        out["action_max"] = np.max([p["action_max"] for p in parts], 0).astype(np.float32)
    if "state_mean" in parts[0]:
        missing = [n for n, p in zip(names, parts) if "num_states" not in p]
        if missing:
            raise ValueError(f"statistics of {missing} have no num_states: pooling the state mean needs it")
        n = np.array([p["num_states"] for p in parts], np.float64)[:, None]
        mean = np.array([p["state_mean"] for p in parts], np.float64)
        var = np.array([p["state_std"] for p in parts], np.float64) ** 2
        m = (n * mean).sum(0) / n.sum()
        v = (n * (var + mean ** 2)).sum(0) / n.sum() - m ** 2
        out["state_mean"] = m.astype(np.float32)
        out["state_std"] = np.maximum(np.sqrt(np.maximum(v, 0.0)), 1e-6).astype(np.float32)
        out["num_states"] = int(n.sum())
    return out


def save_stats(stats: dict, path) -> None:
    """Write statistics as json (arrays as lists)."""
    with open(path, "w") as fh:
        json.dump({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in stats.items()}, fh, indent=2)


def load_stats(path) -> dict:
    with open(path) as fh:
        raw = json.load(fh)
    return {k: (np.asarray(v, np.float32) if k in STAT_KEYS else v) for k, v in raw.items()}


# ----------------------------------------------------------------------------- dataset


class PhysicalStepDataset(Dataset):
    """Windows of ``history`` physical steps of ``chunk_size`` control steps (see module docstring).

    Args:
        paths: ManiSkill ``.h5`` files, compact folders, folders of those, or (frames-only) video
            files / folders; a single path is accepted too.
        history: T, physical steps per window.
        chunk_size: K, control steps per physical step (video frames per step in video folders).
        task_id: integer task label put in every item.
        frames_only: leave actions out (video pretraining); required for plain videos.
        split: ``"train"``, ``"val"`` or ``"all"`` episodes (split by episode, deterministic).
        val_fraction: fraction of episodes in the val split.
        stats: statistics to reuse (e.g. the train split's for the val split); computed over the
            train split when ``None``.
        image_size: resize frames to this height (width keeps the aspect) at load time.
        cameras: cameras stitched left to right into ``frames`` (as ``envs.make_env``).
        train_episodes: keep only the first this many training episodes (in the sources' order) for
            the ``"train"`` and ``"all"`` splits and their statistics; the held-out split is the same
            for every count, so smaller training sets nest (25 in 50 in 100 ...) and share one held-out
            set (data-efficiency curves).
    """

    def __init__(
        self,
        paths: Union[str, Path, Sequence[Union[str, Path]]],
        history: int,
        chunk_size: int,
        task_id: int = 0,
        frames_only: bool = False,
        split: str = "all",
        val_fraction: float = 0.1,
        stats: Optional[dict] = None,
        image_size: Optional[int] = None,
        cameras: Sequence[str] = ("base_camera",),
        train_episodes: Optional[int] = None,
    ):
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if not paths:
            raise ValueError("no dataset paths given")
        if history < 1 or chunk_size < 1:
            raise ValueError(f"history and chunk_size must be >= 1 (got {history}, {chunk_size})")
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if not frames_only and history < 2:
            raise ValueError("history must be >= 2 when actions are used (an action links two observations)")
        self.history, self.chunk_size, self.task_id = history, chunk_size, int(task_id)
        self.frames_only, self.split, self.cameras = frames_only, split, tuple(cameras)

        episodes = [ep for p in paths for ep in _episodes_from_path(p, self.cameras, frames_only)]
        if not frames_only:
            _check_one_control_mode(episodes)
        keys = [ep.key for ep in episodes]
        if len(set(keys)) != len(keys):
            keys = [f"{ep.source}::{ep.key}" for ep in episodes]
        train_idx, val_idx = split_episodes(keys, val_fraction)
        if train_episodes is not None:
            if not 1 <= train_episodes <= len(train_idx):
                raise ValueError(f"train_episodes={train_episodes}, but {list(map(str, paths))} has "
                                 f"{len(train_idx)} training episodes ({len(episodes)} in all, "
                                 f"val_fraction={val_fraction}); choose 1..{len(train_idx)}")
            train_idx = train_idx[:train_episodes]
        chosen = {"train": train_idx, "val": val_idx, "all": sorted(train_idx + val_idx)}[split]
        if not chosen:
            raise ValueError(f"split {split!r} is empty ({len(episodes)} episodes, val_fraction={val_fraction})")
        self.episode_keys = [keys[i] for i in chosen]
        self.has_actions = not frames_only and all(ep.has_actions for ep in episodes)
        self.has_state = all(ep.has_state for ep in episodes)

        K = chunk_size
        frames, states, actions, amasks = [], [], [], []
        self._n_blocks: list[int] = []
        loaded = {}
        for i in chosen:
            data = episodes[i].load(True)
            loaded[i] = data
            f = data["frames"]
            L = len(data["actions"]) if data.get("actions") is not None else len(f) - 1
            if self.has_actions and L < 1:
                continue
            N = math.ceil(L / K)
            idx = np.minimum(np.arange(N + 1) * K, L)
            fr = f[idx]
            if image_size is not None:
                fr = resize_frames(fr, image_size)
            if frames and fr.shape[1:] != frames[0].shape[1:]:
                raise ValueError(f"{episodes[i].source}: frames of {fr.shape[1:]} (H, W, C), but the first episode's "
                                 f"are {frames[0].shape[1:]}; every episode must have the same frame size")
            frames.append(fr)
            if self.has_state:
                states.append(data["state"][idx].astype(np.float32))
            if self.has_actions:
                a = data["actions"]
                pad = N * K - L
                actions.append(np.concatenate([a, np.repeat(a[-1:], pad, 0)]) if pad else a)
                amasks.append(np.arange(N * K) < L)
            self._n_blocks.append(N)
        if not frames:
            raise ValueError(f"no usable episodes (with at least one action) in {list(map(str, paths))}")
        self.frames = np.concatenate(frames)  # (sum N_e+1, H, W, 3) uint8
        self.states = np.concatenate(states) if self.has_state else None
        self.actions = np.concatenate(actions).astype(np.float32) if self.has_actions else None
        self.action_valid = np.concatenate(amasks) if self.has_actions else None
        n_blocks = np.asarray(self._n_blocks)
        self._frame_off = np.concatenate([[0], np.cumsum(n_blocks + 1)[:-1]]).astype(np.int64)
        self._act_off = np.concatenate([[0], np.cumsum(n_blocks * K)[:-1]]).astype(np.int64)
        self._last_act = np.asarray([o + int(m.sum()) - 1 for o, m in zip(self._act_off, amasks)], np.int64) \
            if self.has_actions else None
        # every window start s in 0..N of every episode
        self._windows = np.concatenate(
            [np.stack([np.full(N + 1, e), np.arange(N + 1)], 1) for e, N in enumerate(n_blocks)]
        ).astype(np.int64)

        if stats is None:
            stats = self._train_stats(episodes, train_idx, loaded)
        self.stats = stats

    def _train_stats(self, episodes, train_idx, loaded) -> dict:
        acts, sts = [], []
        for i in train_idx:
            data = loaded.get(i)
            if data is None:
                data = episodes[i].load(False)
            if self.has_actions and data.get("actions") is not None:
                acts.append(data["actions"])
            if self.has_state and data.get("state") is not None:
                sts.append(data["state"])
        stats = compute_stats(acts, sts, self.chunk_size)
        if not acts:  # frames only: count windows from the frames
            stats["num_windows"] = int(sum(math.ceil((len(loaded[i]["frames"]) - 1) / self.chunk_size) + 1
                                           for i in train_idx if i in loaded))
        return stats

    @property
    def num_episodes(self) -> int:
        return len(self._n_blocks)

    def episode(self, e: int) -> dict[str, np.ndarray]:
        """Episode ``e``'s arrays as loaded (views): ``frames`` (N+1, H, W, 3) uint8 and ``state``
        (N+1, Ds) at its block starts, ``actions`` (N*K, Da) and ``action_valid`` (N*K,) bool (False
        where the last block was padded). With ``chunk_size=1`` that is every step's frame and action."""
        if not 0 <= e < self.num_episodes:
            raise IndexError(f"episode {e} of {self.num_episodes}")
        N, K = self._n_blocks[e], self.chunk_size
        f0, a0 = int(self._frame_off[e]), int(self._act_off[e])
        out = {"frames": self.frames[f0:f0 + N + 1]}
        if self.has_state:
            out["state"] = self.states[f0:f0 + N + 1]
        if self.has_actions:
            out["actions"] = self.actions[a0:a0 + N * K]
            out["action_valid"] = self.action_valid[a0:a0 + N * K]
        return out

    @property
    def frame_shape(self) -> tuple:
        return tuple(self.frames.shape[1:])

    def __len__(self) -> int:
        return len(self._windows)

    def __getitem__(self, index: int) -> dict:
        e, s = self._windows[index]
        N, T, K = self._n_blocks[e], self.history, self.chunk_size
        steps = s + np.arange(T)
        frame_rows = self._frame_off[e] + np.minimum(steps, N)
        item = {
            "frames": torch.from_numpy(self.frames[frame_rows]),
            "frame_mask": torch.from_numpy(steps <= N),
            "frame_index": torch.from_numpy(frame_rows),  # rows of self.frames (precomputed tokens)
            "task_id": torch.tensor(self.task_id, dtype=torch.int64),
        }
        if self.has_state:
            item["state"] = torch.from_numpy(self.states[frame_rows])
        if self.has_actions and T > 1:
            blocks = s + np.arange(T - 1)
            valid_block = blocks < N
            rows = self._act_off[e] + blocks[:, None] * K + np.arange(K)[None, :]
            rows = np.where(valid_block[:, None], rows, self._last_act[e])
            item["actions"] = torch.from_numpy(self.actions[rows])
            item["action_mask"] = torch.from_numpy(self.action_valid[rows] & valid_block[:, None])
        return item
