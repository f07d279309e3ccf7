"""The demos behind the shipped checkpoints, in data/: readable offline, and the very demos each
checkpoint was fine-tuned on (its normalisation statistics come out of them)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from par_agent.data.compact import read_compact_episode, read_compact_meta

DATA = Path(__file__).resolve().parents[1] / "data"
# shipped checkpoint -> the compact demo folders it was fine-tuned on
SHIPPED = {"par-pickcube": ("pickcube-ee-fov08", "pickcube-ee-fov08-more750"), "par-pickcube-250": ("pickcube-ee-fov08",),
           "par-stackcube": ("stackcube-ee-fov08-priv",), "par-pushcube": ("pushcube-joint",)}


def present(name: str) -> list[Path]:
    """The demo folders of shipped checkpoint ``name``, or a skip where this checkout lacks one."""
    return [in_checkout(folder) for folder in SHIPPED[name]]


def in_checkout(folder: str) -> Path:
    path = DATA / folder
    if not (path / "meta.json").is_file():
        pytest.skip(f"{path} is not in this checkout (docs/DATA.md: the shipped demos)")
    return path


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_few_shipped_episodes_read_offline(name):
    path = present(name)[-1]
    meta = read_compact_meta(path)
    assert meta["env_info"]["env_id"] in ("PickCube-v1", "StackCube-v1", "PushCube-v1")
    for ep in meta["episodes"][:2]:
        data = read_compact_episode(path, ep)
        L = len(data["actions"])
        frames = data["obs"]["sensor_data"]["base_camera"]["rgb"]
        assert frames.shape == (L + 1, 64, 64, 3) and frames.dtype == np.uint8
        assert 20 < frames.std() and frames.max() > frames.min()  # a rendered scene, not a blank
        assert data["obs"]["agent"]["qpos"].shape == (L + 1, 9)


def test_stackcube_demos_fit_par_stackcube():
    """data/stackcube-ee-fov08-priv is par-stackcube's recipe collected again (seeds 0-249; ManiSkill's
    replay kept 248 where the original kept 249, one of them with a larger first action): the same
    state layout and action space as the checkpoint, not the very same demos (docs/DATA.md)."""
    from par_agent import PARPolicy
    from par_agent.data.dataset import episodes_in

    path, = present("par-stackcube")
    cfg = PARPolicy.from_pretrained("par-stackcube").cfg
    eps = episodes_in(path)
    data = eps[0].load(False)
    assert len(eps) == 248 and data["state"].shape[1] == cfg.state_dim and data["actions"].shape[1] == cfg.action_dim


@pytest.mark.parametrize("name,action_atol,split", [("par-pickcube", 1e-4, "train"), ("par-pickcube-250", 1e-4, "all"),
                                                    ("par-pushcube", 0.03, "all")])
def test_checkpoint_statistics_come_from_its_shipped_demos(name, action_atol, split):
    """Each checkpoint's action range and state statistics are those of its demos. par-train took them
    from the training split (10% held out) of the first ``--data`` folder: for par-pickcube, fine-tuned
    on these very files (1,000 demos), data/pickcube-ee-fov08's training split. par-pickcube-250 and
    par-pushcube were fine-tuned on earlier collections of their folders' demos (the same planner
    seeds; docs/DATA.md), so their statistics are checked against the whole folder: PickCube's action
    range agrees to 1e-5; PushCube's demos were collected again on another CPU, where the simulator
    rounds differently (two joints' extreme targets differ by up to 0.021 rad). The state statistics
    agree to within 0.01 for all. Demos of another task, control mode or camera set-up differ by far
    more. (par-train now pools the statistics of all its --data sources; par-pickcube was trained before
    that, with the first folder's.)"""
    from par_agent import PARPolicy
    from par_agent.data.dataset import compute_stats, episodes_in, split_episodes

    first = present(name)[0]
    model = PARPolicy.from_pretrained(name).model
    episodes = episodes_in(first)
    train, _ = split_episodes([ep.key for ep in episodes], 0.1)  # par-train's split (10% held out)
    data = [episodes[i].load(False) for i in (train if split == "train" else range(len(episodes)))]
    stats = compute_stats([d["actions"] for d in data], [d["state"] for d in data], model.cfg.chunk_size)
    lo, hi = model.action_norm.get_stats()
    np.testing.assert_allclose(stats["action_min"], lo, atol=action_atol)
    np.testing.assert_allclose(stats["action_max"], hi, atol=action_atol)
    mean, std = model.state_norm.get_stats()
    np.testing.assert_allclose(stats["state_mean"], mean, atol=0.01)
    np.testing.assert_allclose(stats["state_std"], std, atol=0.01)


def test_the_shipped_video_model_loads_by_name_and_is_refused_as_a_policy():
    """par-video-pickcube (the video stage of par-pickcube's recipe, examples/rebuild_checkpoint.sh)
    ships for `par-train finetune --init par-video-pickcube`: float16 on disk, a float32 model once
    loaded, never offered as a policy."""
    from safetensors import safe_open

    from par_agent import PARPolicy
    from par_agent.hub import PRETRAINED_DIR, builtin_names, builtin_policies, checkpoint_extra
    from par_agent.models import PhysicalAutoregressiveModel

    folder = PRETRAINED_DIR / "par-video-pickcube"
    assert "par-video-pickcube" in builtin_names() and "par-video-pickcube" not in builtin_policies()
    assert checkpoint_extra(folder)["stage"] == "pretrain-video"
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) <= 25e6
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.get_tensor("boa").dtype == torch.float16
    model = PhysicalAutoregressiveModel.from_pretrained("par-video-pickcube")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.cfg.task_names == ("PickCube-v1",)
    with pytest.raises(ValueError, match="pretrain-video checkpoint"):
        PARPolicy.from_pretrained("par-video-pickcube")


def _grasps_per_demo(folder: Path) -> np.ndarray:
    """How often each demo's gripper action turns to closing (< 0), from the arrays alone (no video)."""
    counts = []
    for ep in read_compact_meta(folder)["episodes"]:
        with np.load(folder / ep["arrays"]) as arrays:
            closed = arrays["actions"][:, -1] < 0
        counts.append(int(closed[0]) + int((closed[1:] & ~closed[:-1]).sum()))
    return np.array(counts)


def test_the_retry_demos_close_the_gripper_twice_in_about_half_and_the_planners_once():
    """data/pickcube-ee-fov08-retry50 (experiments/retry_demos.py, --miss-fraction 0.5): about half of
    its demos grasp twice (a miss beside the cube, then ManiSkill's grasp); the planner's own demos of
    the same seeds in data/pickcube-ee-fov08 grasp exactly once."""
    retry, plain = in_checkout("pickcube-ee-fov08-retry50"), in_checkout("pickcube-ee-fov08")
    twice = _grasps_per_demo(retry)
    assert len(twice) == 249 and set(np.unique(twice)) == {1, 2} and 0.35 < (twice == 2).mean() < 0.65
    assert set(np.unique(_grasps_per_demo(plain))) == {1}
