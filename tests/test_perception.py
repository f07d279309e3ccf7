"""par-train finetune --perception-targets: the task state (from a privileged copy of the demos) becomes
the perception head's target instead of a state input, and the policy acts in the plain env."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from par_agent.train import main as train_main

TINY = ["--preset", "tiny", "--batch-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def privileged_pushcube(pushcube_demos, tmp_path_factory):
    """The 2 PushCube demos with ManiSkill's privileged fields (goal_pos, obj_pose) added."""
    from par_agent.data import privileged

    out = tmp_path_factory.mktemp("priv")
    privileged.main(["--data", str(pushcube_demos), "--out", str(out), "--no-progress"])
    return out / pushcube_demos.name


def test_targets_leave_the_state_and_come_back_as_perception(privileged_pushcube):
    from par_agent.data.dataset import PhysicalStepDataset

    plain = PhysicalStepDataset(privileged_pushcube, history=2, chunk_size=8)
    ds = PhysicalStepDataset(privileged_pushcube, history=2, chunk_size=8, perception_keys=("obj_pose", "goal_pos"))
    assert plain.states.shape[-1] == 25 + 3 + 7 and ds.states.shape[-1] == 25  # the rgb env's state
    item = ds[1]
    assert item["perception"].shape == (2, 7 + 3)
    # in the order given: obj_pose (7) then goal_pos (3), the values the privileged state held
    rows = item["frame_index"]
    torch.testing.assert_close(item["perception"][:, 7:], torch.from_numpy(plain.states[rows, 25:28]))
    torch.testing.assert_close(item["perception"][:, :7], torch.from_numpy(plain.states[rows, 28:35]))
    assert set(ds.stats) >= {"perception_mean", "perception_std"} and ds.stats["perception_mean"].shape == (10,)


def test_a_missing_target_is_named_with_the_fix(pushcube_demos):
    from par_agent.data.dataset import PhysicalStepDataset

    with pytest.raises(ValueError, match=r"no extra/obj_pose.*par_agent\.data\.privileged"):
        PhysicalStepDataset(pushcube_demos, history=2, chunk_size=8, perception_keys=("obj_pose",))


def test_the_perception_loss_joins_the_model_loss_and_reaches_the_backbone(privileged_pushcube, tmp_path):
    from par_agent.config import PARConfig
    from par_agent.data.dataset import PhysicalStepDataset
    from par_agent.models import PhysicalAutoregressiveModel

    cfg = PARConfig.named("tiny", chunk_size=8, history=2, perception_targets=("obj_pose", "goal_pos"),
                          perception_dim=10, perception_loss_weight=0.5)
    ds = PhysicalStepDataset(privileged_pushcube, history=2, chunk_size=8, image_size=cfg.image_size,
                             perception_keys=cfg.perception_targets)
    model = PhysicalAutoregressiveModel(cfg)
    model.perception_norm.set_stats(ds.stats["perception_mean"], ds.stats["perception_std"])
    batch = torch.utils.data.default_collate([ds[0], ds[2]])
    torch.manual_seed(0)
    out = model(batch)
    torch.manual_seed(0)
    without = model({k: v for k, v in batch.items() if k != "perception"})
    assert "perception_loss" not in without
    assert out["loss"].item() == pytest.approx(without["loss"].item() + 0.5 * out["perception_loss"].item(), rel=1e-5)
    out["perception_loss"].backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone.") and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    pred = model.read_perception(batch)
    assert pred.shape == (2, 2, 10)

    with pytest.raises(ValueError, match="perception_dim"):
        PARConfig.named("tiny", perception_targets=("obj_pose",))


@pytest.fixture(scope="module")
def perception_run(privileged_pushcube, tmp_path_factory):
    """A tiny model fine-tuned 2 steps on the privileged PushCube demos with their two privileged fields as
    perception targets; returns its final folder."""
    run = tmp_path_factory.mktemp("percept")
    train_main(["finetune", "--data", str(privileged_pushcube), "--out", str(run), "--steps", "2", *TINY,
                "--perception-targets", "goal_pos", "obj_pose", "--val-fraction", "0.5", "--val-every", "2",
                "--log-every", "1"])
    return run / "finetune" / "final"


def test_finetune_with_targets_acts_in_the_plain_env(perception_run, tmp_path):
    from par_agent.evaluate import run as eval_main
    from par_agent.models import PhysicalAutoregressiveModel
    from par_agent.policy import PARPolicy

    model = PhysicalAutoregressiveModel.from_pretrained(perception_run)
    assert model.cfg.perception_targets == ("goal_pos", "obj_pose") and model.cfg.perception_dim == 10
    assert model.cfg.state_dim == 25 and model.perception_norm.fitted
    metrics = (perception_run.parent / "metrics.csv").read_text()
    assert "train/perception_loss" in metrics and "val/perception_mae" in metrics
    policy = PARPolicy.from_pretrained(perception_run)
    assert policy.env_kwargs["obs_mode"] == "rgb"  # the privileged copy recorded rgb+state_dict
    report = tmp_path / "report.json"
    eval_main(["--policy", str(perception_run), "--task", "PushCube-v1", "--episodes", "1",
               "--max-episode-steps", "3", "--out", str(report), "--no-progress"])
    r = json.loads(report.read_text())
    assert r["env"]["obs_mode"] == "rgb" and r["per_seed"][0]["length"] == 3


def test_the_benchmarks_score_positions_per_field(perception_run, privileged_pushcube, tmp_path):
    """perception_error: the head's error per field beside the training mean's; locate_cubes: regressors on
    pixels and on tokens, trained on one episode and scored on the other."""
    from benchmarks.locate_cubes import main as locate
    from benchmarks.perception_error import main as perception_error

    errors = perception_error(["--policy", str(perception_run), "--data", str(privileged_pushcube),
                               "--split", "all", "--windows", "4", "--out", str(tmp_path / "err.json")])
    assert set(errors) == {"goal_pos", "obj_pose"}
    assert all(e["model_cm"] >= 0 and e["mean_cm"] > 0 for e in errors.values())
    assert json.loads((tmp_path / "err.json").read_text())["errors"] == errors

    args = ["--model", str(perception_run), "--data", str(privileged_pushcube), "--fields", "obj_pose", "goal_pos",
            "--epochs", "1", "--threads", "1"]
    plain = locate(args)
    cache = tmp_path / "scenes.npz"
    out = locate(args + ["--scenes", "2", "--scenes-cache", str(cache)])  # 2 random layouts, 3 frames each
    assert out["frames"]["train"] == plain["frames"]["train"] + 6 and out["frames"]["val"] > 0
    with np.load(cache) as z:
        assert z["frames"].shape[0] == 6 and z["positions"].shape == (6, 6)
        assert not np.allclose(z["positions"][0, :3], z["positions"][3, :3])  # two layouts, two cube places
    assert locate(args + ["--scenes", "2", "--scenes-cache", str(cache)])["frames"] == out["frames"]  # read back
    with pytest.raises(SystemExit, match="holds 2 layouts"):
        locate(args + ["--scenes", "3", "--scenes-cache", str(cache)])
    for k in ("pixels_cm", "tokens_cm", "train_mean_cm"):
        assert len(out[k]) == 2 and all(v >= 0 for v in out[k])


def test_a_resume_with_other_targets_is_refused(perception_run, privileged_pushcube):
    """The run folder's checkpoints learned these targets; resuming with others would silently drop them."""
    run = perception_run.parent.parent
    with pytest.raises(ValueError, match=r"trained with --perception-targets \['goal_pos', 'obj_pose'\].*asks for \[\]"):
        train_main(["finetune", "--data", str(privileged_pushcube), "--out", str(run), "--steps", "3", *TINY])


def test_targets_outside_finetune_are_refused(pushcube_demos, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main(["pretrain-video", "--data", str(pushcube_demos), "--out", str(tmp_path / "x"), "--steps", "1",
                    *TINY, "--perception-targets", "obj_pose"])
    assert "--perception-targets is for the finetune stage" in capsys.readouterr().err
