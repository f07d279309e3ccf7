"""Where does a small object's position get lost: in the frames, or in the frozen tokenizer's tokens?

Trains two small regressors from scratch to locate task objects (e.g. StackCube's two cubes) in the
demos' frames, on the training episodes, and scores them on the held-out episodes: one reads the
frames' pixels (a 4-layer CNN, no pooling, so where things are is kept), the other the tokens of a
model's frozen frame tokenizer (the same input PAR's backbone gets, through an MLP on all tokens).
Both see one frame, no state. It prints each object's mean held-out position error in cm, beside the
error of always answering the training mean. The targets come from a privileged copy of the demos
(``python -m par_agent.data.privileged``). Demos show few layouts (one per episode), so ``--scenes N``
also trains both regressors on N more layouts: fresh resets of the model's env (seeds from 5,000,000),
each followed by random end-effector moves and rendered every few steps, with ManiSkill's labels::

    python benchmarks/locate_cubes.py --model runs/ee/stackcube/finetune/final \
        --data data-priv/StackCube-v1/trajectory.rgb.pd_ee_delta_pos.h5 --fields cubeA_pose cubeB_pose \
        [--scenes 2000]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.perception_error import field_sizes, position_columns
from par_agent.atomic import atomic_file


def pixel_regressor(out_dim: int, size: int) -> nn.Module:
    """(N, 3, size, size) float in [0, 1] -> (N, out_dim): four stride-2/1 convolutions, then an MLP on the grid."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.GELU(), nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(),
        nn.Conv2d(64, 64, 3, 2, 1), nn.GELU(), nn.Conv2d(64, 32, 3, 1, 1), nn.GELU(),
        nn.Flatten(), nn.Linear(32 * (size // 8) ** 2, 256), nn.GELU(), nn.Linear(256, out_dim))


def token_regressor(out_dim: int, num_tokens: int, token_dim: int) -> nn.Module:
    """(N, P, C) tokens -> (N, out_dim): an MLP on all tokens, flattened (so a token's place counts)."""
    return nn.Sequential(nn.Flatten(), nn.LayerNorm(num_tokens * token_dim), nn.Linear(num_tokens * token_dim, 256),
                         nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, out_dim))


def fit(net: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, epochs: int, batch_size: int = 64,
        lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Adam on the mean squared error of standardised targets, ``epochs`` passes over shuffled batches."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * (len(x_train) // batch_size))
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=g)
        for s in range(0, len(order) - batch_size + 1, batch_size):
            i = order[s:s + batch_size]
            loss = (net(x_train[i]) - y_train[i]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def random_scenes(task: str, env_kwargs: dict, fields, num: int, moves: int = 4, every: int = 2,
                  seed: int = 5_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Frames (M, H, W, 3) uint8 of ``num`` fresh layouts of ``task`` (each reset, then ``moves`` random
    actions, a frame every ``every`` steps from the reset on) and the positions (M, 3 * len(fields)) of
    ``fields`` in them, read from ManiSkill's ``rgb+state_dict`` observation."""
    from envs import gym_make, sensor_configs

    cams = env_kwargs.get("cameras", ["base_camera"])
    if len(cams) != 1:
        raise ValueError(f"random scenes are rendered for one camera; the model reads {cams}")
    env = gym_make(task, obs_mode="rgb+state_dict", control_mode=env_kwargs.get("control_mode", "pd_joint_pos"),
                   sim_backend="cpu", sensor_configs=sensor_configs(env_kwargs.get("camera_size", 64),
                                                                    env_kwargs.get("camera_fov"), cams))
    rng = np.random.default_rng(seed)
    frames, labels = [], []

    def record(obs):
        frames.append(np.asarray(obs["sensor_data"][cams[0]]["rgb"][0].cpu()))
        labels.append(np.concatenate([np.asarray(obs["extra"][k][0, :3].cpu()) for k in fields]))

    low, high = env.action_space.low, env.action_space.high
    for i in range(num):
        obs, _ = env.reset(seed=seed + i)
        record(obs)
        for t in range(1, moves + 1):
            obs, *_ = env.step(rng.uniform(low, high).astype(np.float32))
            if t % every == 0:
                record(obs)
    env.close()
    return np.stack(frames), np.stack(labels).astype(np.float32)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a PAR checkpoint folder: its frozen tokenizer gives the tokens")
    p.add_argument("--data", required=True, help="a privileged demo copy (.h5) holding the fields")
    p.add_argument("--fields", nargs="+", required=True, help="obs/extra fields whose first 3 numbers are a position")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--scenes", type=int, default=0, help="also train on this many random layouts (see above)")
    p.add_argument("--scenes-cache", help="an .npz keeping the rendered layouts (made when missing, else read)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="also write the figures as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from par_agent.data.dataset import PhysicalStepDataset
    from par_agent.models import PhysicalAutoregressiveModel

    model = PhysicalAutoregressiveModel.from_pretrained(a.model).eval()
    cfg = model.cfg
    cols = [i for c in position_columns(field_sizes(a.data, a.fields)).values() for i in range(c.start, c.stop)]
    if len(cols) != 3 * len(a.fields):
        raise SystemExit(f"--fields {a.fields}: each must hold a position (at least 3 numbers)")
    kw = dict(history=2, chunk_size=cfg.chunk_size, image_size=cfg.image_size, perception_keys=tuple(a.fields),
              cameras=cfg.env_kwargs.get("cameras", ("base_camera",)))
    train = PhysicalStepDataset(a.data, split="train", **kw)
    val = PhysicalStepDataset(a.data, split="val", stats=train.stats, **kw)
    y = {n: torch.from_numpy(ds.perception[:, cols]) for n, ds in (("train", train), ("val", val))}
    frames = {n: torch.from_numpy(ds.frames) for n, ds in (("train", train), ("val", val))}
    scenes_s = 0.0
    if a.scenes:
        t0 = time.time()
        cache = Path(a.scenes_cache) if a.scenes_cache else None
        if cache is not None and cache.is_file():
            with np.load(cache) as z:
                f, lab = z["frames"], z["positions"]
                had = (int(z["scenes"]), list(z["fields"]))
            if had != (a.scenes, list(a.fields)):
                raise SystemExit(f"{cache} holds {had[0]} layouts of {had[1]}, not {a.scenes} of {a.fields}: "
                                 "use another --scenes-cache")
        else:
            f, lab = random_scenes(cfg.task_names[0], cfg.env_kwargs, a.fields, a.scenes)
            if cache is not None:
                with atomic_file(cache) as tmp, open(tmp, "wb") as fh:
                    np.savez_compressed(fh, frames=f, positions=lab, fields=np.asarray(a.fields),
                                        scenes=np.asarray(a.scenes))
        scenes_s = round(time.time() - t0, 1)
        if f.shape[1] != cfg.image_size:
            from par_agent.tokenizers.frames import resize_frames

            f = resize_frames(f, cfg.image_size)
        frames["train"] = torch.cat([frames["train"], torch.from_numpy(f)])
        y["train"] = torch.cat([y["train"], torch.from_numpy(lab)])
    with torch.no_grad():
        tokens = {n: torch.cat([model.frame_tokenizer.encode(f[i:i + 256]) for i in range(0, len(f), 256)])
                  for n, f in frames.items()}
    pixels = {n: f.permute(0, 3, 1, 2).float() / 255 for n, f in frames.items()}
    mean, std = y["train"].mean(0), y["train"].std(0)

    def error_cm(pred: torch.Tensor) -> list[float]:  # mean Euclidean distance per object, cm
        d = (pred - y["val"]).view(len(pred), -1, 3).norm(dim=-1)
        return [round(float(v) * 100, 2) for v in d.mean(0)]

    out = {"frames": {"train": len(frames["train"]), "val": len(val.frames)}, "fields": a.fields,
           "scenes": a.scenes, "scenes_s": scenes_s,
           "train_mean_cm": error_cm(mean.expand_as(y["val"]))}
    inputs = {"pixels": (pixels, pixel_regressor(len(cols), cfg.image_size)),
              "tokens": (tokens, token_regressor(len(cols), cfg.frame_tokens, cfg.token_dim))}
    for name, (x, net) in inputs.items():
        t0 = time.time()
        net = fit(net, x["train"], (y["train"] - mean) / std, a.epochs)
        with torch.no_grad():
            out[f"{name}_cm"] = error_cm(net(x["val"]) * std + mean)
        out[f"{name}_s"] = round(time.time() - t0, 1)
    print(f"held-out position error (cm), {out['frames']['val']} frames of held-out episodes; "
          f"trained on {out['frames']['train']} ({a.scenes} random layouts among them), {a.epochs} epochs")
    for i, f in enumerate(a.fields):
        print(f"  {f:<14} pixels {out['pixels_cm'][i]:6.2f}   tokens {out['tokens_cm'][i]:6.2f}   "
              f"training mean {out['train_mean_cm'][i]:6.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
