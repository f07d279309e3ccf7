"""Small builders shared by the tests."""
from pathlib import Path

import h5py
import numpy as np
import torch

from par_agent.config import PARConfig
from par_agent.models import PhysicalAutoregressiveModel


def tiny_model(seed: int = 0, randomize_zero_init: bool = True, **overrides) -> PhysicalAutoregressiveModel:
    """A tiny model; zero-initialised (adaLN-Zero) weights are randomised so outputs depend on inputs."""
    torch.manual_seed(seed)
    m = PhysicalAutoregressiveModel(PARConfig.named("tiny", **overrides))
    if randomize_zero_init:
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() >= 1 and bool((p == 0).all()):
                    p.normal_(0, 0.05)
    return m.eval()


def synthetic_batch(cfg: PARConfig, B: int = 4, T: int | None = None, seed: int = 0, actions: bool = True, state: bool = True):
    g = torch.Generator().manual_seed(seed)
    T = T or cfg.history
    s = cfg.image_size
    batch = {
        "frames": torch.randint(0, 256, (B, T, s, s, 3), dtype=torch.uint8, generator=g),
        "task_id": torch.zeros(B, dtype=torch.long),
        "frame_mask": torch.ones(B, T, dtype=torch.bool),
    }
    if state:
        batch["state"] = torch.randn(B, T, cfg.state_dim, generator=g)
    if actions:
        batch["actions"] = torch.rand(B, T - 1, cfg.chunk_size, cfg.action_dim, generator=g) * 2 - 1
        batch["action_mask"] = torch.ones(B, T - 1, cfg.chunk_size, dtype=torch.bool)
    return batch


def write_frames_h5(path: Path, episodes: list[np.ndarray]) -> Path:
    """A ManiSkill-layout ``.h5`` whose episodes show the given frames ((L+1, H, W, 3) uint8 each), with
    zero actions and states: frames for ``par-train tokenizer`` (train with ``--set chunk_size=1`` to see
    every frame)."""
    with h5py.File(path, "w") as f:
        for i, frames in enumerate(episodes):
            g = f.create_group(f"traj_{i}")
            g["actions"] = np.zeros((len(frames) - 1, 2), np.float32)
            g["obs/agent/qpos"] = np.zeros((len(frames), 2), np.float32)
            g["obs/agent/qvel"] = np.zeros((len(frames), 2), np.float32)
            g["obs/sensor_data/base_camera/rgb"] = frames
    return path
