"""``par-locate``: give a policy fine-tuned on privileged task state an object locator, so that it
acts from the camera frame and the plain state only.

    python -m par_agent.data.privileged --data data/StackCube-v1 --out data-priv/StackCube-v1
    par-train finetune --data data-priv/StackCube-v1 --out runs/priv --init par-pickcube ...
    par-locate --policy runs/priv/finetune/final --data data-priv/StackCube-v1 --out runs/located \
        --objects cubeA cubeB --layouts 20000
    par-eval --policy runs/located/final --task StackCube-v1       # obs_mode="rgb": frames + plain state

The locator (:mod:`par_agent.models.locator`) learns each object's position and yaw from the
demos' frames (the privileged copy holds ManiSkill's labels) and from ``--layouts`` more frames:
demo steps re-rendered with the resting objects moved (:mod:`par_agent.data.layouts`), so that it
sees many more places than the demos' one layout per episode. The held-out episodes (the same
split as ``par-train``'s) measure its error. ``OUT/final/`` is the policy with the locator inside:
the policy's state estimator, in ``OUT/final/locator/`` beside the model: the policy's state input
is the plain one and its ``env_kwargs`` ask for ``obs_mode="rgb"``.

Resumable: the rendered layouts are written in parts (``OUT/layouts/part-*.npz``), and the locator
trains with par-train's optimiser, batches and checkpoints (:mod:`par_agent.training.locator`,
``OUT/locator/ckpt-*``); a re-run continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from par_agent.atomic import atomic_file, atomic_folder, replace_text
from par_agent.models.locator import LocatorConfig, ObjectLocator, field_rule, load_locator, save_locator, yaw_of
from par_agent.training.locator import LocatorTraining, fit_locator

PART = 1000  # layouts per part file


def load_demos(path: Path, objects: list[str], camera: str, progress: bool = True) -> tuple[list[dict], list[tuple[str, int]], str, dict]:
    """Episodes of a privileged demo file as dicts (frames, plain and full state, object poses, env_states)."""
    from envs.state import extra_order, flatten_state, state_fields
    from par_agent.data.compact import load_episodes_json, open_h5, read_group, trajectory_names

    info = load_episodes_json(path).get("env_info", {})
    task = info.get("env_id")
    order = extra_order(task)
    episodes, full = [], None
    with open_h5(path) as f:
        for name in tqdm(trajectory_names(f), desc=f"reading {path.name}", disable=not progress):
            g = f[name]
            obs = read_group(g["obs"], skip=("sensor_param",))
            missing = [o for o in objects if f"{o}_pose" not in obs.get("extra", {})]
            if missing:
                raise SystemExit(f"{path}: {name} has no extra/{missing[0]}_pose: pass a privileged copy "
                                 "(python -m par_agent.data.privileged)")
            if camera not in obs.get("sensor_data", {}):
                raise SystemExit(f"{path}: {name} has no {camera} frames (it has {sorted(obs.get('sensor_data', {}))})")
            full = full or state_fields(obs, order)
            episodes.append({"name": name, "frames": obs["sensor_data"][camera]["rgb"],
                             "full": flatten_state(obs, order),
                             "poses": np.stack([obs["extra"][f"{o}_pose"] for o in objects], 1).astype(np.float32),
                             "env_states": read_group(g["env_states"])})
    return episodes, full, task, info


def plain_columns(full: list[tuple[str, int]], plain: list[tuple[str, int]]) -> np.ndarray:
    starts = np.cumsum([0] + [s for _, s in full])
    pos = {n: (int(starts[i]), s) for i, (n, s) in enumerate(full)}
    return np.concatenate([np.arange(pos[n][0], pos[n][0] + size) for n, size in plain])


def _render_part(task: str, env_kw: dict, episodes: list[dict], objects: list[str], actor_names: dict, camera: str,
                 n: int, seed: int, path: Path, progress: bool) -> Path:
    """Render one part of relaid layouts into ``path`` (atomic). Runs in a worker process."""
    import torch as _torch

    from envs import gym_make
    from envs.maniskill import capture_only
    from par_agent.data.layouts import relaid_frames

    _torch.set_num_threads(1)
    env = gym_make(task, **env_kw)
    capture_only(env, [camera])  # the other cameras cost as much to render and are not read
    try:
        f, s, p = relaid_frames(env, episodes, objects, n, camera=camera, seed=seed, progress=progress,
                                actor_names=actor_names)
    finally:
        env.close()
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, frames=f, states=s, poses=p)
    return path


def layouts(out: Path, task: str, env_kw: dict, episodes: list[dict], objects: list[str], actor_names: dict,
            camera: str, num: int, workers: int, progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``num`` relaid frames, states and poses, rendered in parts of ``PART`` by ``workers``
    processes; the parts are kept, so a re-run renders only the missing ones."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    folder = out / "layouts"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [min(PART, num - i * PART) for i in range(math.ceil(num / PART))]
    paths = [folder / f"part-{i:04d}.npz" for i in range(len(sizes))]

    def done(i: int) -> bool:
        if not paths[i].is_file():
            return False
        with np.load(paths[i]) as z:
            return len(z["frames"]) == sizes[i]

    todo = [i for i in range(len(sizes)) if not done(i)]
    if todo:
        light = [{"env_states": e["env_states"], "state": e["state"]} for e in episodes]
        with ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context("spawn")) as pool:
            jobs = [pool.submit(_render_part, task, env_kw, light, objects, actor_names, camera, sizes[i], 1000 + i, paths[i],
                                progress and workers == 1) for i in todo]
            for k, j in enumerate(jobs):
                j.result()
                print(f"layouts: part {k + 1}/{len(jobs)} rendered", file=sys.stderr, flush=True)
    parts = []
    for p in paths:
        with np.load(p) as z:
            parts.append((z["frames"], z["states"], z["poses"]))
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def errors(net: ObjectLocator, frames: torch.Tensor, states: torch.Tensor, poses: torch.Tensor) -> dict:
    """Held-out error per object: position (cm: mean, median, 90th percentile) and yaw (degrees, modulo symmetry)."""
    with torch.no_grad():
        out = [net.locate(frames[i:i + 512], states[i:i + 512]) for i in range(0, len(frames), 512)]
    pos, yaw = torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])
    d = (pos - poses[..., :3]).norm(dim=-1) * 100
    k = net.cfg.yaw_symmetry
    dy = torch.remainder(yaw - yaw_of(poses[..., 3:]) + math.pi / k, 2 * math.pi / k) - math.pi / k
    res = {}
    for i, o in enumerate(net.cfg.objects):
        res[o] = {"cm_mean": round(float(d[:, i].mean()), 2), "cm_median": round(float(d[:, i].median()), 2),
                  "cm_p90": round(float(d[:, i].quantile(0.9)), 2),
                  "yaw_deg_mean": round(float(dy[:, i].abs().mean() * 180 / math.pi), 1)}
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="par-locate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="a PAR checkpoint fine-tuned on privileged state")
    p.add_argument("--data", required=True, help="the privileged demo .h5 it was fine-tuned on")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--objects", nargs="+", default=["cubeA", "cubeB"],
                   help="objects to locate by their observation name (extra/<name>_pose), as NAME or NAME=ACTOR where "
                        "the scene's actor is named otherwise (PickCube: obj=cube)")
    p.add_argument("--layouts", type=int, default=20000, help="relaid demo frames to render and train on besides the demos'")
    d = LocatorTraining()
    p.add_argument("--steps", type=int, default=d.steps, help="optimiser steps (about 12 passes over 44,000 frames)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate, after a warm-up, then cosine")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--ema", type=float, default=d.ema, help="EMA decay of the weights (0: the last weights)")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--width", type=int, default=32, help="channels of the locator's convolutions")
    p.add_argument("--keypoints", type=int, default=8, help="soft-argmax maps per object")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out episodes (par-train's split)")
    p.add_argument("--workers", type=int, default=2, help="processes rendering the layouts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    actor_names = dict(o.split("=", 1) for o in a.objects if "=" in o)
    a.objects = [o.split("=", 1)[0] for o in a.objects]
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from envs import sensor_configs
    from envs.state import state_dim
    from par_agent.data.dataset import demo_h5_files, split_episodes
    from par_agent.hub import resolve
    from par_agent.models import PhysicalAutoregressiveModel

    train_cfg = LocatorTraining(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup, ema=a.ema,
                                ckpt_every=a.ckpt_every, val_every=a.val_every)
    if load_locator(resolve(a.policy)) is not None:
        raise SystemExit(f"{a.policy} has a locator already")
    model = PhysicalAutoregressiveModel.from_pretrained(a.policy)
    cfg, kw = model.cfg, dict(model.cfg.env_kwargs)
    camera = (kw.get("cameras") or ["base_camera"])[0]
    files = demo_h5_files(a.data)
    if len(files) != 1:
        raise SystemExit(f"--data {a.data}: expected one demo .h5, found {len(files)}")
    episodes, full, task, info = load_demos(files[0], a.objects, camera, not a.no_progress)
    if sum(s for _, s in full) != cfg.state_dim:
        raise SystemExit(f"the demos' state has {sum(s for _, s in full)} numbers, the policy reads {cfg.state_dim}: "
                         "pass the privileged demos the policy was fine-tuned on")
    plain = [(n, s) for n, s in full if field_rule(n, tuple(a.objects), dict(full)) is None]
    if sum(s for _, s in plain) != state_dim(task):
        raise SystemExit(f"after removing the fields the locator rebuilds, the state has {sum(s for _, s in plain)} "
                         f"numbers; {task}'s plain state has {state_dim(task)}: fields {plain}")
    lcfg = LocatorConfig(objects=tuple(a.objects), plain_fields=tuple(plain), privileged_fields=tuple(full),
                         image_size=cfg.image_size, width=a.width, keypoints=a.keypoints)
    cols = plain_columns(full, plain)
    for ep in episodes:
        ep["state"] = ep["full"][:, cols]
    if episodes[0]["frames"].shape[1] != cfg.image_size:
        raise SystemExit(f"the demos' frames are {episodes[0]['frames'].shape[1]} px, the policy reads {cfg.image_size}")
    train_idx, val_idx = split_episodes([e["name"] for e in episodes], a.val_fraction)
    tr, va = [episodes[i] for i in train_idx], [episodes[i] for i in val_idx]

    env_kw = dict(obs_mode="rgb+state_dict", control_mode=kw.get("control_mode", "pd_joint_pos"), sim_backend="cpu",
                  sensor_configs=sensor_configs(kw.get("camera_size", cfg.image_size), kw.get("camera_fov"), [camera]))

    t0 = time.time()
    lf, ls, lp = layouts(a.out, task, env_kw, tr, a.objects, actor_names, camera, a.layouts,
                                 a.workers, not a.no_progress) if a.layouts \
        else (np.zeros((0, *tr[0]["frames"].shape[1:]), np.uint8), np.zeros((0, len(cols)), np.float32),
              np.zeros((0, len(a.objects), 7), np.float32))
    render_s = time.time() - t0

    def stack(eps, key):
        return torch.from_numpy(np.concatenate([e[key] for e in eps]))

    frames = torch.cat([stack(tr, "frames"), torch.from_numpy(lf)])
    states = torch.cat([stack(tr, "state"), torch.from_numpy(ls)])
    poses = torch.cat([stack(tr, "poses"), torch.from_numpy(lp)])
    val = (stack(va, "frames"), stack(va, "state"), stack(va, "poses")) if va else None
    net = ObjectLocator(lcfg)
    net.set_stats(states, poses[..., :3])
    targets = net.targets(poses[..., :3], yaw_of(poses[..., 3:]))
    t0 = time.time()
    net, log = fit_locator(net, frames, states, targets, a.out / "locator", train_cfg,
                           evaluate=(lambda m: errors(m, *val)) if val else None, progress=not a.no_progress)
    train_s = time.time() - t0
    with atomic_folder(a.out / "final") as tmp:  # the policy: the model as it was, its locator beside it
        model.save_pretrained(tmp)
        save_locator(net, tmp)
    report = {"policy": a.policy, "data": str(files[0]), "task": task, "objects": a.objects,
              "frames": {"demo_train": int(sum(len(e["frames"]) for e in tr)), "layouts": int(len(lf)),
                         "val": int(len(val[0])) if val else 0},
              "training": {k: v for k, v in vars(train_cfg).items()}, "render_s": round(render_s, 1), "train_s": round(train_s, 1),
              "val": errors(net, *val) if val else {}, "log": log}
    replace_text(a.out / "report.json", json.dumps(report, indent=2) + "\n")
    for o, e in report["val"].items():
        print(f"{o}: held-out error {e['cm_mean']} cm mean, {e['cm_median']} median, {e['cm_p90']} p90; "
              f"yaw {e['yaw_deg_mean']} deg")
    print(f"wrote {a.out / 'final'} (acts from obs_mode='rgb')")
    return report


if __name__ == "__main__":
    main()
