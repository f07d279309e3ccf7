"""Would filtering a locator's estimates over an episode's frames help, and where is its error?

A located policy (``par-locate``) reads each object's position off one frame at every chunk start.
Its error on single held-out frames is the figure ``par-locate`` reports. This script replays the
held-out demo episodes frame by frame (the same split as ``par-train`` and ``par-locate``) and
prints each object's position error (cm) in two phases: while the object still rests where the
episode started it (within ``--moved-cm`` of its first position: what the policy must find to
grasp it or place on it) and after it moved (cube A in the gripper). Beside the raw estimate it
scores two causal filters a policy could run on the frames it sees:

* ``mean``: the running mean of the estimates since the episode's start, restarted whenever a new
  estimate lies more than ``--gate-cm`` from it (the object was moved);
* ``window``: the mean of the last ``--window`` estimates.

::

    python experiments/locator_filter.py --policy runs/located/stackcube/final \
        --data data-fov08-priv/StackCube-v1/trajectory.rgb.pd_ee_delta_pos.h5 [--out results/x.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def gated_mean(raw: np.ndarray, gate: float) -> np.ndarray:
    """(T, 3) causal estimates -> (T, 3) running means, restarted when an estimate is ``gate`` away."""
    out, total, count = np.empty_like(raw), np.zeros(3), 0
    for t, x in enumerate(raw):
        if count and np.linalg.norm(x - total / count) > gate:
            total, count = np.zeros(3), 0
        total, count = total + x, count + 1
        out[t] = total / count
    return out


def window_mean(raw: np.ndarray, k: int) -> np.ndarray:
    """(T, 3) -> (T, 3): the mean of the last ``k`` estimates (fewer at the start)."""
    c = np.cumsum(np.concatenate([np.zeros((1, 3)), raw]), axis=0)
    t = np.arange(1, len(raw) + 1)
    lo = np.maximum(t - k, 0)
    return (c[t] - c[lo]) / (t - lo)[:, None]


def cm_summary(values) -> dict:
    """Errors in cm -> their mean, median and 90th percentile, rounded to 0.01 cm."""
    return {"cm_mean": round(float(np.mean(values)), 2), "cm_median": round(float(np.median(values)), 2),
            "cm_p90": round(float(np.quantile(values, 0.9)), 2)}


@torch.no_grad()
def locate_episode(locator, frames: np.ndarray, state: np.ndarray, batch: int = 512) -> np.ndarray:
    """frames (T, H, W, 3) uint8, plain state (T, Dp) -> positions (T, n, 3) in metres."""
    out = [locator.locate(torch.from_numpy(frames[i:i + batch]), torch.from_numpy(state[i:i + batch]))[0]
           for i in range(0, len(frames), batch)]
    return torch.cat(out).numpy()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, help="a located PAR checkpoint (par-locate's OUT/final)")
    p.add_argument("--data", required=True, help="the privileged demo .h5 its locator was trained on")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out episodes (par-train's split)")
    p.add_argument("--all", action="store_true", help="score every episode (demos the locator never saw)")
    p.add_argument("--moved-cm", type=float, default=1.0)
    p.add_argument("--gate-cm", type=float, default=4.0)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from par_agent.data.dataset import split_episodes
    from par_agent.locate import load_demos, plain_columns
    from par_agent import PARPolicy

    policy = PARPolicy.from_pretrained(a.policy)
    if policy.locator is None:
        raise SystemExit(f"{a.policy} has no locator (make one with par-locate)")
    model, loc = policy.model, policy.locator
    objects = list(loc.cfg.objects)
    camera = (model.cfg.env_kwargs.get("cameras") or ["base_camera"])[0]
    episodes, full, _, _ = load_demos(Path(a.data), objects, camera, progress=False)
    if [tuple(f) for f in full] != [tuple(f) for f in loc.cfg.privileged_fields]:
        raise SystemExit(f"{a.data}: its state fields differ from the ones the locator rebuilds")
    cols = plain_columns(full, list(loc.cfg.plain_fields))
    val_idx = range(len(episodes)) if a.all else split_episodes([e["name"] for e in episodes], a.val_fraction)[1]
    if not val_idx:
        raise SystemExit(f"{a.data}: no held-out episode at --val-fraction {a.val_fraction}; pass --all for demos "
                         "the locator never saw")
    errs: dict = {o: {ph: {f: [] for f in ("raw", "mean", "window")} for ph in ("resting", "moved")} for o in objects}
    for i in val_idx:
        ep = episodes[i]
        n = min(len(ep["frames"]), len(ep["full"]))
        raw = locate_episode(loc, ep["frames"][:n], ep["full"][:n, cols].astype(np.float32))
        truth = ep["poses"][:n, :, :3]
        for j, o in enumerate(objects):
            moved = np.linalg.norm(truth[:, j] - truth[0, j], axis=-1) * 100 > a.moved_cm
            est = {"raw": raw[:, j], "mean": gated_mean(raw[:, j], a.gate_cm / 100),
                   "window": window_mean(raw[:, j], a.window)}
            for f, e in est.items():
                d = np.linalg.norm(e - truth[:, j], axis=-1) * 100
                errs[o]["resting"][f].extend(d[~moved].tolist())
                errs[o]["moved"][f].extend(d[moved].tolist())
    report = {"policy": a.policy, "data": a.data, "episodes": len(val_idx), "moved_cm": a.moved_cm,
              "gate_cm": a.gate_cm, "window": a.window, "objects": {}}
    for o in objects:
        report["objects"][o] = {}
        for ph, by in errs[o].items():
            if not by["raw"]:
                continue
            report["objects"][o][ph] = {"frames": len(by["raw"]), **{f: cm_summary(v) for f, v in by.items()}}
            row = "  ".join(f"{f} {s['cm_mean']:.2f}/{s['cm_median']:.2f}/{s['cm_p90']:.2f}"
                            for f, s in report["objects"][o][ph].items() if f != "frames")
            print(f"{o:8s} {ph:8s} ({len(by['raw'])} frames) cm mean/median/p90: {row}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
