"""The Diffusion Policy baseline: trains on par-agent's demos, saves, loads and runs in par-eval's loop."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments.baselines.diffusion_policy import hold_still, main
from experiments.baselines.dp_policy import DPPolicy


def test_hold_still_pads_delta_actions_with_a_still_arm():
    a = torch.tensor([[[0.1, 0.2, 0.3, 1.0], [0.4, 0.5, 0.6, -1.0], [0.7, 0.8, 0.9, 1.0]]])
    mask = torch.tensor([[True, True, False]])
    out = hold_still(a, mask)
    assert torch.equal(out[0, :2], a[0, :2])
    assert torch.equal(out[0, 2], torch.tensor([0.0, 0.0, 0.0, -1.0]))  # still arm, the last real gripper


@pytest.mark.maniskill
def test_train_save_load_and_evaluate(pickcube_ee_demo, tmp_path):
    out = tmp_path / "dp"
    args = ["train", "--data", str(pickcube_ee_demo), "--out", str(out), "--steps", "3", "--batch-size", "4",
            "--unet-dims", "16", "32", "--inference-steps", "3", "--threads", "1", "--no-progress"]
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    assert main(args[:-3] + ["--steps", "5", "--no-progress"]) == 0  # resumes from OUT/latest
    assert json.loads((out / "summary.json").read_text())["steps"] == 5
    policy = DPPolicy.from_pretrained(out / "final")
    assert policy.env_kwargs["control_mode"] == "pd_ee_delta_pos" and policy.env_kwargs["camera_size"] == 32
    assert policy.task == "PickCube-v1"

    from envs import make_env

    env = make_env("PickCube-v1", **{k: v for k, v in policy.env_kwargs.items() if k != "max_episode_steps"})
    obs, _ = env.reset(seed=3)
    first = [policy.predict(obs, episode_start=np.array([True]))[0]]
    again = [policy.predict(obs, episode_start=np.array([True]))[0]]
    assert first[0].shape == (4,) and np.array_equal(first[0], again[0])  # deterministic per episode seed
    env.close()

    report_path = tmp_path / "dp.json"
    assert main(["eval", "--policy", str(out / "final"), "--episodes", "2", "--num-envs", "2",
                 "--max-episode-steps", "12", "--out", str(report_path), "--no-progress"]) == 0
    report = json.loads(report_path.read_text())
    assert report["n_episodes"] == 2 and report["env"]["control_mode"] == "pd_ee_delta_pos"
    assert [r["length"] for r in report["per_seed"]] == [12, 12]
    assert report["policy"]["name"] == "diffusion_policy"
