"""The Diffusion Policy baseline: trains on par-agent's demos, saves, loads and runs in par-eval's loop."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments.baselines.diffusion_policy import main
from experiments.baselines.dp_data import DPWindows
from experiments.baselines.dp_policy import DPPolicy


class _Episodes:
    """Two episodes of 3 and 5 steps in PhysicalStepDataset's episode() form (chunk_size 1)."""

    chunk_size, num_episodes = 1, 2

    def episode(self, e):
        L = (3, 5)[e]
        frames = np.full((L + 1, 2, 2, 3), 0, np.uint8) + np.arange(L + 1, dtype=np.uint8)[:, None, None, None] + 10 * e
        acts = np.stack([np.arange(L) + 100 * e, np.arange(L) + 0.5, np.where(np.arange(L) % 2, 1.0, -1.0)], 1)
        return {"frames": frames, "state": frames[:, 0, 0, :2].astype(np.float32),
                "actions": acts.astype(np.float32), "action_valid": np.ones(L, bool)}


def test_dp_windows_pad_the_episode_start_and_hold_still_after_the_end():
    """ManiSkill's windows: starts -1..L-3 (obs_horizon 2), the first observation and action repeated
    before the episode, a still arm and the last gripper command after it (delta control)."""
    w = DPWindows(_Episodes(), obs_horizon=2, pred_horizon=4, delta_actions=True)
    assert w.windows.tolist() == [[0, -1], [0, 0], [1, -1], [1, 0], [1, 1], [1, 2]]
    frames, state, actions = w.batch([0, 5])
    assert frames.shape == (2, 2, 2, 2, 3) and state.shape == (2, 2, 2) and actions.shape == (2, 4, 3)
    assert frames[0, :, 0, 0, 0].tolist() == [0, 0]  # (o0, o0): the start the policy meets
    assert actions[0, :, 0].tolist() == [0, 0, 1, 2] and actions[0, :, 2].tolist() == [-1, -1, 1, -1]
    assert frames[1, :, 0, 0, 0].tolist() == [12, 13]
    # episode 1 from step 2: actions 2, 3, 4, then the arm holds still with the last gripper command
    assert actions[1, :, 0].tolist() == [102, 103, 104, 0] and actions[1, :, 2].tolist() == [-1, 1, -1, -1]
    held = DPWindows(_Episodes(), obs_horizon=2, pred_horizon=4, delta_actions=False).batch([5])[2]
    assert held[0, 3].tolist() == held[0, 2].tolist()  # absolute control: the last action repeated


@pytest.mark.maniskill
def test_train_save_load_and_evaluate(pickcube_ee_demo, tmp_path):
    out = tmp_path / "dp"
    args = ["train", "--data", str(pickcube_ee_demo), "--out", str(out), "--steps", "3", "--batch-size", "4",
            "--unet-dims", "16", "32", "--inference-steps", "3", "--threads", "1", "--no-progress"]
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    assert main(args[:-3] + ["--steps", "5", "--no-progress"]) == 0  # resumes from OUT/latest
    assert json.loads((out / "summary.json").read_text())["steps"] == 5
    # a budget of minutes: a step is measured first and the schedule ends with the steps that fit
    timed = ["train", "--data", str(pickcube_ee_demo), "--out", str(tmp_path / "timed"), "--minutes", "0.05",
             "--warmup", "1", "--batch-size", "4", "--unet-dims", "16", "32", "--threads", "1", "--no-progress"]
    assert main(timed) == 0
    summary = json.loads((tmp_path / "timed" / "summary.json").read_text())
    # the plan is sized to the budget; a slow machine may stop at 1.25x the minutes before it ends
    assert 1 <= summary["steps"] <= summary["planned_steps"] < 30000
    assert summary["minutes"] < 0.05 * 1.25 + 0.05  # the margin, plus one step past it at most
    if summary["steps"] == summary["planned_steps"]:
        assert summary["final_lr"] < 1e-6  # the cosine schedule ran to its end
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
    assert report["training"]["steps"] == 5  # train's summary.json, beside the policy it evaluated


def test_budget_counts_each_stages_steps_at_its_median_pace(tmp_path, capsys):
    """The budget rule's minutes: steps x the median seconds a step between logged train/loss rows, so a
    pause (here 600 s between steps 20 and 30) does not count; other rows are ignored."""
    from experiments.baselines.budget import main as budget

    def metrics(stage, rows):
        (tmp_path / "run" / stage).mkdir(parents=True)
        lines = ["step,name,value,time"] + [f"{s},{n},0.5,{t}" for s, n, t in rows]
        (tmp_path / "run" / stage / "metrics.csv").write_text("\n".join(lines) + "\n")

    metrics("tokenizer", [(10, "train/loss", 100.0), (20, "train/loss", 103.0), (30, "train/loss", 703.0),
                          (40, "train/loss", 706.0), (40, "val/psnr", 900.0)])
    metrics("finetune", [(10, "train/loss", 0.0), (20, "train/loss", 6.0), (30, "train/loss", 12.0)])
    assert abs(budget([str(tmp_path / "run")]) - (40 * 0.3 + 30 * 0.6) / 60) < 1e-9
    assert capsys.readouterr().out.strip() == "0.5"
    metrics("pretrain-video", [(10, "train/loss", 0.0)])
    with pytest.raises(SystemExit, match="fewer than two logged train/loss rows"):
        budget([str(tmp_path / "run")])
    with pytest.raises(SystemExit, match="no stage folder with a metrics.csv"):
        budget([str(tmp_path / "none")])


@pytest.mark.maniskill
def test_a_budget_of_minutes_is_replanned_on_the_pace_of_whole_steps(pickcube_ee_demo, tmp_path, monkeypatch):
    """After the first estimate the plan is measured again on steps REPLAN_FROM..REPLAN_AT (within
    the warm-up, whose rate does not depend on the plan), and the cosine schedule ends with the new plan."""
    from experiments.baselines import diffusion_policy as dp

    monkeypatch.setattr(dp, "REPLAN_FROM", 2)
    monkeypatch.setattr(dp, "REPLAN_AT", 4)
    out = tmp_path / "dp"
    assert dp.main(["train", "--data", str(pickcube_ee_demo), "--out", str(out), "--minutes", "0.1", "--warmup", "5",
                    "--batch-size", "2", "--unet-dims", "8", "16", "--threads", "1", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    plan = summary["plan"]
    assert plan["replanned_at"] == 4 and plan["warmup"] == 5 and plan["replanned_s"] > 0
    assert summary["planned_steps"] == max(5, int(60 * 0.1 / plan["replanned_s"]))
    if summary["steps"] == summary["planned_steps"]:
        assert summary["final_lr"] < 1e-6  # the re-planned schedule ran to its end
