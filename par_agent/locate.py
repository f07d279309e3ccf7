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
its state input is the plain one and its ``env_kwargs`` ask for ``obs_mode="rgb"``.

Resumable: the rendered layouts are written in parts (``OUT/layouts/part-*.npz``) and training
checkpoints after every epoch (``OUT/locator-ckpt.pt``); a re-run continues where it stopped.
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

from par_agent.atomic import atomic_file, replace_text
from par_agent.models.locator import LocatorConfig, ObjectLocator, field_rule, yaw_of

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


def train(net: ObjectLocator, data: tuple, epochs: int, batch_size: int, lr: float, ckpt: Path, progress: bool,
          val: tuple | None = None) -> list[dict]:
    """AdamW with a cosine schedule on the normalised targets; a checkpoint after every epoch."""
    frames, states, targets = data
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = len(frames) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * per_epoch, pct_start=0.05)
    log, first = [], 0
    if ckpt.is_file():
        c = torch.load(ckpt, weights_only=False)
        net.load_state_dict(c["net"])
        opt.load_state_dict(c["opt"])
        sched.load_state_dict(c["sched"])
        log, first = c["log"], c["epoch"]
    g = torch.Generator().manual_seed(0)
    for epoch in range(first, epochs):
        g.manual_seed(epoch)
        order = torch.randperm(len(frames), generator=g)
        net.train()
        total, t0 = 0.0, time.time()
        for s in tqdm(range(per_epoch), desc=f"locator epoch {epoch + 1}/{epochs}", disable=not progress):
            i = order[s * batch_size:(s + 1) * batch_size]
            loss = (net(frames[i], states[i]) - targets[i]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        net.eval()
        entry = {"epoch": epoch + 1, "loss": round(total / per_epoch, 5), "s": round(time.time() - t0, 1)}
        if val is not None:
            entry["val"] = errors(net, *val)
        log.append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)
        with atomic_file(ckpt) as tmp:
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "log": log,
                        "epoch": epoch + 1}, tmp)
    return log


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
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
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
    from par_agent.models import PhysicalAutoregressiveModel

    model = PhysicalAutoregressiveModel.from_pretrained(a.policy)
    cfg, kw = model.cfg, dict(model.cfg.env_kwargs)
    if cfg.locator:
        raise SystemExit(f"{a.policy} has a locator already")
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
    lcfg = LocatorConfig(objects=tuple(a.objects), plain_fields=tuple(plain), full_fields=tuple(full),
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
    log = train(net, (frames, states, targets), a.epochs, a.batch_size, a.lr, a.out / "locator-ckpt.pt",
                not a.no_progress, val=val)
    train_s = time.time() - t0
    model.attach_locator(net)
    model.save_pretrained(a.out / "final")
    report = {"policy": a.policy, "data": str(files[0]), "task": task, "objects": a.objects,
              "frames": {"demo_train": int(sum(len(e["frames"]) for e in tr)), "layouts": int(len(lf)),
                         "val": int(len(val[0])) if val else 0},
              "epochs": a.epochs, "render_s": round(render_s, 1), "train_s": round(train_s, 1),
              "val": errors(net, *val) if val else {}, "log": log}
    replace_text(a.out / "report.json", json.dumps(report, indent=2) + "\n")
    for o, e in report["val"].items():
        print(f"{o}: held-out error {e['cm_mean']} cm mean, {e['cm_median']} median, {e['cm_p90']} p90; "
              f"yaw {e['yaw_deg_mean']} deg")
    print(f"wrote {a.out / 'final'} (acts from obs_mode='rgb')")
    return report


if __name__ == "__main__":
    main()
