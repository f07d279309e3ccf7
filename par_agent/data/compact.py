"""Compact demonstrations: frames as H.264 MP4, everything else as ``.npz``.

A ManiSkill ``.h5`` with 128x128 rgb observations is ~375 KB per PushCube demo; the compact form is
a few tens of KB, the form to move a training set between machines. Layout of a compact folder::

    DIR/meta.json                 {"format": "par-compact", "version": 1, "env_info": ..., "episodes": [...]}
    DIR/traj_<i>.<camera>.mp4     rgb frames of one camera, (T+1) frames, H.264 yuv444p
    DIR/traj_<i>.npz              every other array of the h5 group traj_<i>, keyed by its h5 path
                                  ("actions", "obs/agent/qpos", "env_states/actors/cube", ...)

``meta.json`` keeps the ManiSkill json (env_info, per-episode seeds and reset kwargs), so
``import_compact(dir, out_h5)`` gives back a ManiSkill trajectory file. Actions and states are exact;
frames are lossy (mean absolute error ~1/255 at the default crf 18 with yuv444p).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import h5py
import imageio.v2 as imageio
import numpy as np

FORMAT = "par-compact"
VERSION = 1


def open_h5(path) -> h5py.File:
    """Open a trajectory ``.h5`` read-only, with errors that name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trajectory file not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: cannot read the .h5 (truncated or corrupt file?): {err}") from err


def trajectory_names(f: h5py.File) -> list[str]:
    """The ``traj_N`` groups of an open ManiSkill trajectory file, in episode order (N as a number)."""
    return sorted((k for k in f.keys() if k.startswith("traj_")), key=lambda k: int(k[5:]))


def load_episodes_json(h5_path) -> dict:
    """The ManiSkill ``.json`` next to ``h5_path`` (``{}`` when absent)."""
    j = Path(h5_path).with_suffix(".json")
    if not j.exists():
        return {}
    with open(j) as f:
        return json.load(f)


def read_group(group: h5py.Group, skip=()) -> dict:
    """An h5 group as nested dicts of numpy arrays (datasets whose path is in ``skip`` are left out)."""
    out = {}
    for k, v in group.items():
        if isinstance(v, h5py.Group):
            out[k] = read_group(v, skip=tuple(s[len(k) + 1:] for s in skip if s.startswith(k + "/")))
        elif k not in skip:
            out[k] = v[()]
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def _write_group(group: h5py.Group, d: dict) -> None:
    for k, v in d.items():
        if isinstance(v, dict):
            _write_group(group.create_group(k), v)
        else:
            group.create_dataset(k, data=v)


def write_video(path, frames: np.ndarray, fps: int = 20, crf: int = 18) -> None:
    """``frames``: ``(T, H, W, 3)`` uint8 -> H.264 MP4 (yuv444p, so colours survive)."""
    imageio.mimwrite(
        path, list(frames), fps=fps, codec="libx264", quality=None, pixelformat="yuv444p",
        output_params=["-crf", str(crf), "-preset", "medium"], macro_block_size=1,
    )


def read_video(path) -> np.ndarray:
    """An MP4 (any video ffmpeg reads) -> ``(T, H, W, 3)`` uint8.

    Decoded with imageio's ffmpeg plugin (``imageio-ffmpeg``, a dependency); where that is missing
    (a GPU image with its own Python, say) OpenCV's decoder is used if ``cv2`` is installed.
    """
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return _read_video_opencv(path)
    try:
        reader = imageio.get_reader(path, format="FFMPEG")
    except Exception as err:
        raise ValueError(f"{path}: cannot open video: {err}") from err
    try:
        frames = [np.asarray(f)[..., :3] for f in reader]
    except Exception as err:
        raise ValueError(f"{path}: cannot decode video (truncated or corrupt?): {err}") from err
    finally:
        reader.close()
    if not frames:
        raise ValueError(f"{path}: video has no frames")
    return np.stack(frames).astype(np.uint8, copy=False)


def _read_video_opencv(path) -> np.ndarray:
    try:
        import cv2
    except ImportError as err:
        raise ImportError(f"{path}: reading a compact folder's videos needs imageio-ffmpeg "
                          "(pip install imageio-ffmpeg) or OpenCV (pip install opencv-python-headless)") from err
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path}: cannot open video")
    frames = []
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"{path}: video has no frames")
    return np.stack(frames)


def export_compact(h5_path, out_dir, crf: int = 18, fps: Optional[int] = None, drop: tuple[str, ...] = ()) -> Path:
    """Write the compact form of a ManiSkill trajectory ``.h5`` (with rgb obs) to ``out_dir``.

    Args:
        h5_path: trajectory file (its ``.json`` is read too, when present).
        out_dir: output folder (created).
        crf: H.264 quality (lower is better; 18 is visually lossless).
        fps: video frame rate; default the control rate (20 Hz).
        drop: h5 paths (and the groups under them) to leave out, e.g.
            ``("env_states", "obs/sensor_param")``: training reads neither, and together they are a
            fifth of a 64 px PickCube demo's compact size; without them a demo cannot be replayed.
    Returns:
        ``out_dir`` as a ``Path``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_json = load_episodes_json(h5_path)
    fps = fps or 20
    episodes_meta = {int(ep["episode_id"]): ep for ep in meta_json.get("episodes", [])}
    episodes = []
    with open_h5(h5_path) as f:
        for name in trajectory_names(f):
            g = f[name]
            sensor = g.get("obs/sensor_data")
            cameras = sorted(c for c in sensor.keys() if "rgb" in sensor[c]) if sensor is not None else []
            if not cameras:
                raise ValueError(f"{h5_path}: {name} has no rgb observations; collect with `par-collect` (obs -o rgb)")
            files = {}
            for cam in cameras:
                fn = f"{name}.{cam}.mp4"
                write_video(out_dir / fn, sensor[cam]["rgb"][()], fps=fps, crf=crf)
                files[cam] = fn
            flat = _flatten(read_group(g, skip=tuple(f"obs/sensor_data/{c}/rgb" for c in cameras)))
            flat = {k: v for k, v in flat.items() if not any(k == d or k.startswith(d.rstrip("/") + "/") for d in drop)}
            np.savez_compressed(out_dir / f"{name}.npz", **flat)
            ep = dict(episodes_meta.get(int(name[5:]), {"episode_id": int(name[5:])}))
            ep.update(videos=files, arrays=f"{name}.npz", traj=name)
            episodes.append(ep)
    meta = {k: v for k, v in meta_json.items() if k != "episodes"}
    meta.update(format=FORMAT, version=VERSION, fps=fps, crf=crf, source=str(h5_path), episodes=episodes,
                dropped=list(drop))
    with open(out_dir / "meta.json", "w") as fh:
        json.dump(meta, fh, indent=2)
    return out_dir


def is_compact_dir(path) -> bool:
    p = Path(path) / "meta.json"
    if not p.is_file():
        return False
    try:
        with open(p) as fh:
            return json.load(fh).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def read_compact_meta(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"compact folder not found: {path}")
    if not is_compact_dir(path):
        raise ValueError(f"{path}: not a compact demo folder (no meta.json with format '{FORMAT}')")
    with open(path / "meta.json") as fh:
        return json.load(fh)


def read_compact_episode(path, ep: dict) -> dict:
    """One compact episode as the nested dict of its h5 group (frames decoded back into obs/sensor_data)."""
    path = Path(path)
    npz = path / ep["arrays"]
    if not npz.exists():
        raise FileNotFoundError(f"compact episode arrays not found: {npz}")
    try:
        with np.load(npz) as z:
            flat = {k: z[k] for k in z.files}
    except Exception as err:
        raise ValueError(f"{npz}: cannot read (truncated or corrupt?): {err}") from err
    for cam, fn in ep["videos"].items():
        vid = path / fn
        if not vid.exists():
            raise FileNotFoundError(f"compact episode video not found: {vid}")
        flat[f"obs/sensor_data/{cam}/rgb"] = read_video(vid)
    return _unflatten(flat)


def import_compact(path, out_h5=None):
    """Read a compact folder back.

    Args:
        path: folder written by :func:`export_compact`.
        out_h5: if given, write a ManiSkill trajectory ``.h5`` (+ ``.json``) there and return its path.
    Returns:
        ``out_h5`` as a ``Path``, or (without it) a list of episodes, each the nested dict of numpy
        arrays of its h5 group (``actions``, ``obs/agent/qpos``, ``obs/sensor_data/<cam>/rgb``, ...).
    """
    meta = read_compact_meta(path)
    episodes = [read_compact_episode(path, ep) for ep in meta["episodes"]]
    if out_h5 is None:
        return episodes
    out_h5 = Path(out_h5)
    out_h5.parent.mkdir(parents=True, exist_ok=True)
    json_eps = []
    with h5py.File(out_h5, "w") as f:
        for ep_meta, data in zip(meta["episodes"], episodes):
            _write_group(f.create_group(ep_meta["traj"]), data)
            json_eps.append({k: v for k, v in ep_meta.items() if k not in ("videos", "arrays", "traj")})
    skip = {"format", "version", "fps", "crf", "source", "episodes"}
    out_json = {k: v for k, v in meta.items() if k not in skip}
    out_json["episodes"] = json_eps
    with open(out_h5.with_suffix(".json"), "w") as fh:
        json.dump(out_json, fh, indent=2)
    return out_h5
