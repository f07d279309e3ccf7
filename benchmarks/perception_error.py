"""How well a model fine-tuned with ``--perception-targets`` sees the task state: its perception head's
error on held-out demo windows (teacher-forced, the frames and states of the demos), per target field,
beside the error of always answering the training mean (what a head that learned nothing scores).

Positions (the first 3 numbers of a ``*_pose`` field, and ``*_pos`` fields) are scored as the mean
Euclidean distance in cm; the quaternions of poses are left out (a cube's pose is ambiguous under its
symmetries, so the quaternion is not a fair target to score)::

    python benchmarks/perception_error.py --policy runs/percept/stackcube/finetune/final \
        --data data-priv/StackCube-v1/trajectory.rgb.pd_ee_delta_pos.h5 --windows 64
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def field_sizes(path: str | Path, keys) -> dict[str, int]:
    """Each target field's size in the concatenated targets (its order), read off the first episode of ``path``."""
    from par_agent.data.compact import open_h5, trajectory_names

    with open_h5(Path(path)) as f:
        first = f[trajectory_names(f)[0]]
        return {k: int(np.prod(first["obs/extra"][k].shape[1:])) for k in keys}


def position_columns(sizes: dict[str, int]) -> dict[str, slice]:
    """Each field's position, its first 3 numbers, as columns of the fields' concatenation (``sizes``
    in order, :func:`field_sizes`); fields of fewer than 3 numbers hold no position and are left out."""
    starts = np.cumsum([0, *sizes.values()])[:-1]
    return {k: slice(int(s), int(s) + 3) for (k, size), s in zip(sizes.items(), starts) if size >= 3}


@torch.no_grad()
def perception_errors(model, ds, sizes: dict[str, int], windows: int = 64,
                      batch_size: int = 16) -> dict[str, dict[str, float]]:
    """``{field: {"model_cm": ..., "mean_cm": ...}}`` over ``windows`` windows spread evenly over ``ds``;
    ``sizes``: each target field's size, in the model's order (:func:`field_sizes`)."""
    from torch.utils.data import default_collate

    picks = np.linspace(0, len(ds) - 1, min(len(ds), windows)).astype(int)
    pred, true = [], []
    for s in range(0, len(picks), batch_size):
        batch = default_collate([ds[int(i)] for i in picks[s:s + batch_size]])
        mask = batch["frame_mask"]
        pred.append(model.read_perception(batch)[mask])
        true.append(batch["perception"][mask])
    pred, true = torch.cat(pred).numpy(), torch.cat(true).numpy()
    mean = model.perception_norm.get_stats()[0]
    out = {}
    for name, cols in position_columns(sizes).items():
        dist = lambda p: float(np.linalg.norm(p[:, cols] - true[:, cols], axis=-1).mean() * 100)  # noqa: E731
        out[name] = {"model_cm": dist(pred), "mean_cm": dist(np.broadcast_to(mean, true.shape))}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, help="a checkpoint folder fine-tuned with --perception-targets")
    p.add_argument("--data", required=True, help="the demos' privileged copy (the .h5 it was fine-tuned on)")
    p.add_argument("--split", default="val", choices=("val", "train", "all"))
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="also write the figures as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from par_agent.data.dataset import PhysicalStepDataset
    from par_agent.models import PhysicalAutoregressiveModel

    model = PhysicalAutoregressiveModel.from_pretrained(a.policy).eval()
    if model.perception_head is None:
        raise SystemExit(f"{a.policy}: no perception head (fine-tuned without --perception-targets)")
    cfg = model.cfg
    ds = PhysicalStepDataset(a.data, history=cfg.history, chunk_size=cfg.chunk_size, split=a.split,
                             image_size=cfg.image_size, cameras=cfg.env_kwargs.get("cameras", ("base_camera",)),
                             perception_keys=cfg.perception_targets)
    errors = perception_errors(model, ds, field_sizes(a.data, cfg.perception_targets), a.windows)
    print(f"{'field':<22} {'model (cm)':>10} {'train mean (cm)':>16}   ({a.split} split, {a.windows} windows)")
    for name, e in errors.items():
        print(f"{name:<22} {e['model_cm']:>10.2f} {e['mean_cm']:>16.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps({"policy": a.policy, "data": a.data, "split": a.split,
                                           "windows": a.windows, "errors": errors}, indent=2) + "\n")
    return errors


if __name__ == "__main__":
    main()
