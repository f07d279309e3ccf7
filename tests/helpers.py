"""Small builders shared by the tests."""
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from par_agent.config import PARConfig
from par_agent.models import PhysicalAutoregressiveModel


def test_device() -> torch.device:
    """Where the model tests run: ``PAR_TEST_DEVICE`` (default cpu). ``benchmarks/gpu_check.py`` runs
    the model, policy and checkpoint tests with ``PAR_TEST_DEVICE=cuda`` on a GPU machine."""
    return torch.device(os.environ.get("PAR_TEST_DEVICE", "cpu"))


test_device.__test__ = False  # a helper, not a test


def tiny_model(seed: int = 0, randomize_zero_init: bool = True, **overrides) -> PhysicalAutoregressiveModel:
    """A tiny model on :func:`test_device`; zero-initialised (adaLN-Zero) weights are randomised so
    outputs depend on inputs (the same values on every device: initialised on the CPU, then moved)."""
    torch.manual_seed(seed)
    m = PhysicalAutoregressiveModel(PARConfig.named("tiny", **overrides))
    if randomize_zero_init:
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() >= 1 and bool((p == 0).all()):
                    p.normal_(0, 0.05)
    return m.to(test_device()).eval()


def synthetic_batch(cfg: PARConfig, B: int = 4, T: int | None = None, seed: int = 0, actions: bool = True, state: bool = True):
    g = torch.Generator().manual_seed(seed)
    T = T or cfg.history
    batch = {
        "frames": torch.randint(0, 256, (B, T, *cfg.frame_shape), dtype=torch.uint8, generator=g),
        "task_id": torch.zeros(B, dtype=torch.long),
        "frame_mask": torch.ones(B, T, dtype=torch.bool),
    }
    if state:
        batch["state"] = torch.randn(B, T, cfg.state_dim, generator=g)
    if actions:
        batch["actions"] = torch.rand(B, T - 1, cfg.chunk_size, cfg.action_dim, generator=g) * 2 - 1
        batch["action_mask"] = torch.ones(B, T - 1, cfg.chunk_size, dtype=torch.bool)
    return batch


def write_fake_h5(path: Path, lengths: list[int] | None = None, d_a: int = 3, hw: int = 8, seed: int = 0,
                  rgb: bool = True, frames: list[np.ndarray] | None = None) -> Path:
    """A ManiSkill-layout .h5 with episodes of the given action counts and random actions and states;
    frame t is filled with value t, or, with ``frames`` ((L+1, H, W, 3) uint8 per episode), the episodes
    show those frames (``lengths`` then follow from them)."""
    rng = np.random.default_rng(seed)
    if frames is not None:
        lengths = [len(f) - 1 for f in frames]
    with h5py.File(path, "w") as f:
        for i, L in enumerate(lengths):
            g = f.create_group(f"traj_{i}")
            g["actions"] = rng.normal(size=(L, d_a)).astype(np.float32)
            g["obs/agent/qpos"] = rng.normal(size=(L + 1, 2)).astype(np.float32)
            g["obs/agent/qvel"] = rng.normal(size=(L + 1, 2)).astype(np.float32)
            g["obs/extra/tcp_pose"] = rng.normal(size=(L + 1, 7)).astype(np.float32)
            g["obs/extra/is_grasped"] = rng.integers(0, 2, size=(L + 1,)).astype(bool)
            if frames is not None:
                g["obs/sensor_data/base_camera/rgb"] = frames[i]
            elif rgb:
                fr = np.broadcast_to(np.arange(L + 1, dtype=np.uint8)[:, None, None, None], (L + 1, hw, hw, 3))
                g["obs/sensor_data/base_camera/rgb"] = np.ascontiguousarray(fr)
    return path
