"""Several cameras side by side (e.g. StackCube's base_camera and the wrist's hand_camera): each camera
encoded on its own, one-camera checkpoints carried over, par-train --cameras, and a policy acting in a
real two-camera env whose cameras have different fields of view."""
import json

import h5py
import numpy as np
import pytest
import torch

from helpers import synthetic_batch, tiny_model
from par_agent.train import main as train_main

TINY = ["--preset", "tiny", "--batch-size", "4", "--no-progress", "--val-every", "1000"]
CAMS = ["base_camera", "hand_camera"]


def test_each_camera_is_encoded_on_its_own_and_decoded_back_side_by_side():
    one, two = tiny_model(), tiny_model(num_cameras=2)
    one.frame_tokenizer.load_state_dict(two.frame_tokenizer.state_dict())
    frames = synthetic_batch(two.cfg, B=2)["frames"]  # (2, T, 32, 64, 3)
    p = one.cfg.frame_tokens
    tokens = two.frame_tokenizer.encode(frames)
    assert two.cfg.frame_tokens == 2 * p and tokens.shape[-2] == 2 * p
    torch.testing.assert_close(tokens[..., :p, :], one.frame_tokenizer.encode(frames[..., :32, :].contiguous()))
    torch.testing.assert_close(tokens[..., p:, :], one.frame_tokenizer.encode(frames[..., 32:, :].contiguous()))
    assert two.frame_tokenizer.decode(tokens).shape == frames.shape
    with pytest.raises(ValueError, match=r"\(\.\.\., 32, 64, 3\).*2 cameras side by side"):
        two.frame_tokenizer.encode(frames[..., :32, :])


def test_a_one_camera_model_starts_a_two_camera_one_with_its_weights_in_each_place():
    from par_agent.training.model import adapt_model

    one = tiny_model()
    two, reinit = adapt_model(one, num_cameras=2)
    assert reinit == []  # the shared position tables fit; only the camera rows are new
    assert torch.equal(two.frame_pos, one.frame_pos) and torch.equal(two.frame_head.pos, one.frame_head.pos)
    assert two.camera_pos.shape == (2, one.cfg.width) and two.frame_head.camera_pos.shape == (2, one.cfg.frame_head_width)
    two.train()
    two(synthetic_batch(two.cfg, B=2))["loss"].backward()
    assert two.camera_pos.grad is not None and two.camera_pos.grad.abs().sum() > 0


def test_a_two_camera_model_without_camera_names_asks_for_them():
    from par_agent.training.args import TrainArgs
    from par_agent.training.model import stage_cameras

    cfg = tiny_model(num_cameras=2).cfg  # e.g. a one-camera checkpoint adapted to two cameras by hand
    with pytest.raises(ValueError, match="--cameras base_camera hand_camera"):
        stage_cameras(TrainArgs(stage="pretrain-video", data=("d",), out="o"), cfg)
    assert stage_cameras(TrainArgs(stage="pretrain-video", data=("d",), out="o", cameras=tuple(CAMS)), cfg) == tuple(CAMS)


def test_config_rejects_env_cameras_that_disagree_with_num_cameras():
    from par_agent.config import PARConfig

    with pytest.raises(ValueError, match="num_cameras=1"):
        PARConfig.named("tiny", env_kwargs={"cameras": CAMS})


def test_recorded_fields_of_view_are_kept_per_camera():
    from par_agent.data.sources import make_env_kwargs
    from envs.make import sensor_configs

    info = {"env_kwargs": {"sensor_configs": {"width": 64, "height": 64, "base_camera": {"fov": 0.8}}}}
    assert make_env_kwargs(info)["camera_fov"] == 0.8
    both = make_env_kwargs(info, CAMS)  # the hand camera kept the task's field of view
    assert both["camera_fov"] == {"base_camera": 0.8} and both["cameras"] == CAMS
    assert sensor_configs(64, both["camera_fov"], CAMS) == {"width": 64, "height": 64, "base_camera": {"fov": 0.8}}
    assert sensor_configs(64, 0.8, CAMS)["hand_camera"] == {"fov": 0.8}
    with pytest.raises(ValueError, match="hand_camera"):
        sensor_configs(64, {"hand_camera": 4.0}, CAMS)


def with_hand_camera(src, dst):
    """A copy of real demos with a second camera: the base camera's frames flipped upside down."""
    from conftest import copy_demo

    path = copy_demo(src, dst)
    with h5py.File(path, "r+") as f:
        for name in f:
            base = f[name]["obs/sensor_data/base_camera/rgb"][()]
            f[name]["obs/sensor_data"].create_group("hand_camera")["rgb"] = base[:, ::-1].copy()
    return path


def test_train_stages_with_two_cameras(pushcube_demos, tmp_path):
    from par_agent.models import PhysicalAutoregressiveModel

    data, out = with_hand_camera(pushcube_demos, tmp_path / "data"), tmp_path / "run"
    train_main(["tokenizer", "--data", str(data), "--out", str(out), "--steps", "2", "--cameras", *CAMS, *TINY])
    # the names are recorded from the first stage, so the later stages read the same cameras unasked
    assert PhysicalAutoregressiveModel.from_pretrained(out / "tokenizer" / "final").cfg.env_kwargs == {"cameras": CAMS}
    train_main(["pretrain-video", "--data", str(data), "--out", str(out), "--steps", "2", *TINY])
    train_main(["finetune", "--data", str(data), "--out", str(out), "--steps", "2", *TINY])
    m = PhysicalAutoregressiveModel.from_pretrained(out / "finetune" / "final")
    assert m.cfg.num_cameras == 2 and m.cfg.env_kwargs["cameras"] == CAMS
    summary = json.loads((out / "finetune" / "summary.json").read_text())
    assert np.isfinite(summary["loss"])


@pytest.mark.maniskill
def test_two_camera_policy_acts_in_a_real_env_built_from_its_env_kwargs(tmp_path):
    from envs import make_env
    from par_agent import PARPolicy

    kw = dict(cameras=CAMS, camera_size=32, camera_fov={"base_camera": 0.8}, control_mode="pd_ee_delta_pos")
    m = tiny_model(num_cameras=2, state_dim=25, action_dim=4, task_names=("StackCube-v1",), env_kwargs=kw)
    m.save_pretrained(tmp_path / "two")
    policy = PARPolicy.from_pretrained(str(tmp_path / "two"))
    env = make_env("StackCube-v1", **policy.env_kwargs)
    obs, _ = env.reset(seed=0)
    assert obs["rgb"].shape == (32, 64, 3)
    for _ in range(3):
        action, _ = policy.predict(obs)
        obs, *_ = env.step(action)
    assert action.shape == (4,) and np.isfinite(action).all()
    with pytest.raises(ValueError, match="2 square camera images side by side"):
        policy.predict({"rgb": obs["rgb"][:, :32], "state": obs["state"]})
    env.close()
