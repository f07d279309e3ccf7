"""What a data source records about itself: the task it was collected on and the env settings.

ManiSkill's trajectory ``.json`` (and a compact folder's ``meta.json``, which keeps it) holds
``env_info``: ``env_id``, ``env_kwargs`` (``obs_mode``, ``control_mode``, ``sensor_configs``, ...) and
``max_episode_steps``. A checkpoint fine-tuned on the source keeps the ``envs.make_env`` keyword
arguments that rebuild that env (``PARConfig.env_kwargs``), so a policy cannot be evaluated on an env
it was not trained for.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


def env_info(path: str | Path) -> dict:
    """``env_info`` recorded with a data source (a ``.h5``, a compact folder or a folder of those);
    ``{}`` when none is recorded (e.g. plain videos)."""
    p = Path(path)
    candidates = [p.with_suffix(".json")] if p.suffix == ".h5" else []
    if p.is_dir():
        candidates += [p / "meta.json"] + sorted(h.with_suffix(".json") for h in p.rglob("*.h5") if "chunks" not in h.parts)
        candidates += sorted(p.rglob("meta.json"))
    for c in candidates:
        if c.is_file():
            try:
                info = json.loads(c.read_text()).get("env_info")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(info, dict) and info.get("env_id"):
                return info
    return {}


def task_of(path: str | Path) -> str | None:
    """The ManiSkill env id recorded with a data source, or None (e.g. plain videos)."""
    return env_info(path).get("env_id")


def make_env_kwargs(info: dict, cameras: Sequence[str] = ("base_camera",)) -> dict:
    """The ``envs.make_env`` keyword arguments of the env described by ``env_info``.

    Returns a subset of ``control_mode``, ``obs_mode``, ``camera_size``, ``camera_fov`` (a number, or
    ``{camera: fov}`` when the cameras differ or some keep the task's), ``cameras`` and
    ``max_episode_steps`` (what the record says; the rest are make_env's defaults).
    """
    kw = info.get("env_kwargs", {}) or {}
    out: dict = {k: kw[k] for k in ("control_mode", "obs_mode") if k in kw}
    sensors = kw.get("sensor_configs", {}) or {}
    if "width" in sensors:
        out["camera_size"] = int(sensors["width"])
    fovs = {c: float(sensors[c]["fov"]) for c in cameras if isinstance(sensors.get(c), dict) and "fov" in sensors[c]}
    if fovs and len(fovs) == len(cameras) and len(set(fovs.values())) == 1:
        out["camera_fov"] = fovs[cameras[0]]  # one field of view for every camera
    elif fovs:
        out["camera_fov"] = fovs  # per camera; the others keep the task's
    out["cameras"] = list(cameras)
    if info.get("max_episode_steps"):
        out["max_episode_steps"] = int(info["max_episode_steps"])
    return out
