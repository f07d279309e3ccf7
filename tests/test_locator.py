"""The object locator: rebuilding privileged state fields from located objects, and ``par-locate``
end to end (real PickCube demos, real re-rendered layouts, a policy that then acts in the plain env)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from par_agent.models.locator import LocatorConfig, ObjectLocator, assemble_state, yaw_of

STACK_FULL = (("agent/qpos", 9), ("agent/qvel", 9), ("extra/tcp_pose", 7), ("extra/cubeA_pose", 7),
              ("extra/cubeB_pose", 7), ("extra/tcp_to_cubeA_pos", 3), ("extra/tcp_to_cubeB_pos", 3),
              ("extra/cubeA_to_cubeB_pos", 3))


def stack_cfg(**kw) -> LocatorConfig:
    return LocatorConfig(objects=("cubeA", "cubeB"), plain_fields=STACK_FULL[:3], privileged_fields=STACK_FULL, **kw)


def test_assemble_rebuilds_maniskill_fields_from_positions():
    """A real StackCube observation: from its plain state and the cubes' true positions and yaw, every
    privileged field comes back as ManiSkill computes it (quaternions up to the cube's quarter turns)."""
    from envs import gym_make
    from envs.state import extra_order, flatten_state, state_fields, task_state_fields

    env = gym_make("StackCube-v1", obs_mode="state_dict", render_backend="none")
    obs, _ = env.reset(seed=3)
    env.close()
    full = flatten_state(obs, extra_order("StackCube-v1")).float()
    assert tuple(task_state_fields("StackCube-v1")) == STACK_FULL == tuple(state_fields(obs, extra_order("StackCube-v1")))
    assert full.shape[-1] == sum(s for _, s in STACK_FULL)
    cfg = stack_cfg()
    pos = torch.stack([obs["extra"]["cubeA_pose"][:, :3], obs["extra"]["cubeB_pose"][:, :3]], 1).float()
    yaw = yaw_of(torch.stack([obs["extra"]["cubeA_pose"][:, 3:], obs["extra"]["cubeB_pose"][:, 3:]], 1).float())
    out = assemble_state(cfg, full[:, :25], pos, yaw)
    quat_cols = [28, 29, 30, 31, 35, 36, 37, 38]
    keep = [i for i in range(full.shape[-1]) if i not in quat_cols]
    torch.testing.assert_close(out[:, keep], full[:, keep], atol=1e-5, rtol=0)
    # the rebuilt quaternions are rotations about z by the same yaw, modulo a quarter turn
    for c in (28, 35):
        dy = yaw_of(out[:, c:c + 4]) - yaw_of(full[:, c:c + 4])
        assert float(torch.remainder(dy + math.pi / 4, math.pi / 2) - math.pi / 4).__abs__() < 1e-4


def test_config_refuses_what_it_cannot_rebuild():
    with pytest.raises(ValueError, match="cannot rebuild extra/goal_pos"):
        LocatorConfig(objects=("obj",), plain_fields=STACK_FULL[:3],
                      privileged_fields=STACK_FULL[:3] + (("extra/goal_pos", 3),))
    with pytest.raises(ValueError, match="objects is empty"):
        LocatorConfig(objects=(), plain_fields=STACK_FULL[:3], privileged_fields=STACK_FULL)


def test_held_cube_rule_places_cube_a_at_the_gripper_on_a_real_demo():
    """experiments.estimator_rules: in a shipped StackCube demo, wherever the fingers are closed on the cube
    its position comes from the arm's state (within 1 cm of the true one); elsewhere the located
    position stands."""
    from pathlib import Path

    from experiments.estimator_rules import held_positions
    from par_agent.data.compact import read_compact_episode, read_compact_meta

    folder = Path(__file__).parents[1] / "data" / "stackcube-ee-fov08-priv"
    ep = read_compact_episode(folder, read_compact_meta(folder)["episodes"][0])
    obs = ep["obs"]
    plain = torch.from_numpy(np.concatenate([obs["agent"]["qpos"], obs["agent"]["qvel"], obs["extra"]["tcp_pose"]], -1)).float()
    truth = torch.from_numpy(np.stack([obs["extra"]["cubeA_pose"][:, :3], obs["extra"]["cubeB_pose"][:, :3]], 1)).float()
    located = truth + 0.05  # a locator 5 cm off everywhere
    out = held_positions(plain, located, obj=0)
    width = plain[:, 7] + plain[:, 8]
    holds = (width > 0.03) & (width < 0.06)
    carried = ((truth[:, 0] - truth[0, 0]).norm(dim=-1) > 0.02) & ((truth[:, 0] - plain[:, 18:21]).norm(dim=-1) < 0.01)
    assert holds.sum() > 10 and carried.sum() > 10 and float(holds[carried].float().mean()) > 0.8  # not the frames just after release
    assert float((out[holds, 0] - truth[holds, 0]).norm(dim=-1).max()) < 0.01
    torch.testing.assert_close(out[~holds], located[~holds])
    torch.testing.assert_close(out[:, 1], located[:, 1])  # cube B is never held


def test_running_median_ignores_occluded_reads_and_follows_a_moved_object():
    """experiments.estimator_rules.RunningMedian: two far reads (an occluded frame) leave the estimate
    alone; three in a row (the object moved) restart it; a reset forgets the episode."""
    from experiments.estimator_rules import RunningMedian

    f, rest, moved = RunningMedian(gate=0.04, patience=3), np.array([0.1, 0.2, 0.02]), np.array([0.1, 0.3, 0.02])
    for dx in (0.005, -0.005, 0.0, 0.002, -0.002, 0.001):
        f(0, rest + dx)
    for _ in range(2):  # far reads join the history but barely move its median
        np.testing.assert_allclose(f(0, moved), rest, atol=0.005)
    f(0, rest)  # the run of far reads is broken
    got = [f(0, moved) for _ in range(3)]
    np.testing.assert_allclose(got[1], rest, atol=0.005)
    np.testing.assert_allclose(got[2], moved)
    np.testing.assert_allclose(f(1, moved), moved)  # another env keeps its own history
    f.reset(0)
    np.testing.assert_allclose(f(0, rest), rest)


def test_locator_shapes_and_yaw_range():
    net = ObjectLocator(stack_cfg(image_size=32, width=4, keypoints=2))
    frames = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    state = torch.randn(3, 25)
    pos, yaw = net.locate(frames, state)
    assert pos.shape == (3, 2, 3) and yaw.shape == (3, 2)
    assert float(yaw.abs().max()) <= math.pi / 4 + 1e-6
    assert net.complete_state(frames, state).shape == (3, 48)
    with pytest.raises(ValueError, match="plain state of 25"):
        net.complete_state(frames, torch.randn(3, 48))
    with pytest.raises(ValueError, match="reads 32x32"):
        net(torch.zeros((1, 64, 64, 3), dtype=torch.uint8), torch.randn(1, 25))


def test_locator_training_resumes_exactly_after_a_kill(tmp_path):
    """fit_locator with par-train's checkpoints: a run stopped after its step-4 checkpoint and run again
    ends with the weights, statistics and held-out log of the run that was never stopped."""
    from par_agent.training.locator import LocatorTraining, fit_locator

    torch.manual_seed(0)
    net = ObjectLocator(stack_cfg(image_size=32, width=4, keypoints=2))
    frames = torch.randint(0, 256, (24, 32, 32, 3), dtype=torch.uint8)
    states, pos = torch.randn(24, 25), torch.randn(24, 2, 3) * 0.1
    net.set_stats(states, pos)
    targets = net.targets(pos, torch.zeros(24, 2))
    cfg = LocatorTraining(steps=6, batch_size=4, warmup=2, ema=0.5, ckpt_every=4, val_every=3)
    score = lambda m: {"cubeA": {"cm_mean": float(m(frames[:4], states[:4]).square().mean())}}  # noqa: E731
    first = ObjectLocator(net.cfg)
    first.load_state_dict(net.state_dict())
    whole, log = fit_locator(first, frames, states, targets, tmp_path / "a", cfg, evaluate=score, progress=False)
    assert [e["step"] for e in log] == [3, 6]
    second = ObjectLocator(net.cfg)
    second.load_state_dict(net.state_dict())
    fit_locator(second, frames, states, targets, tmp_path / "b", cfg, evaluate=score, progress=False)
    shutil.rmtree(tmp_path / "b" / "ckpt-00000006")  # killed after the step-4 checkpoint
    shutil.rmtree(tmp_path / "b" / "final")
    (tmp_path / "b" / "latest").write_text("ckpt-00000004\n")
    third = ObjectLocator(net.cfg)
    third.load_state_dict(net.state_dict())
    resumed, log2 = fit_locator(third, frames, states, targets, tmp_path / "b", cfg, evaluate=score, progress=False)
    assert log2 == log
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)
    assert not torch.equal(whole.head[0].weight, net.head[0].weight)  # it trained
    torch.testing.assert_close(ObjectLocator.from_pretrained(tmp_path / "b" / "final").state_dict()["pos_mean"],
                               net.pos_mean)


@pytest.fixture(scope="module")
def located_pickcube(pickcube_ee_demo, tmp_path_factory):
    """par-locate on a privileged copy of the PickCube ee demo and a tiny policy with its state layout."""
    from helpers import tiny_model
    from par_agent.data import privileged
    from par_agent.locate import main as locate_main

    root = tmp_path_factory.mktemp("locate")
    privileged.main(["--data", str(pickcube_ee_demo), "--out", str(root / "priv"), "--no-progress"])
    data = root / "priv" / pickcube_ee_demo.name
    model = tiny_model(state_dim=29 + 7 + 3 + 3, action_dim=4, task_names=("PickCube-v1",),
                       env_kwargs={"camera_size": 32, "control_mode": "pd_ee_delta_pos", "cameras": ["base_camera"],
                                   "obs_mode": "rgb+state_dict"}).cpu()
    model.action_norm.set_stats(-np.ones(4, np.float32), np.ones(4, np.float32))
    model.save_pretrained(root / "priv_policy")
    report = locate_main(["--policy", str(root / "priv_policy"), "--data", str(data), "--out", str(root / "run"),
                          "--objects", "obj=cube", "--layouts", "6", "--steps", "6", "--ckpt-every", "4", "--val-every", "3", "--batch-size", "8", "--width", "4",
                          "--keypoints", "2", "--workers", "1", "--threads", "1", "--no-progress"])
    return root, report


def test_par_locate_renders_layouts_trains_and_writes_a_plain_policy(located_pickcube):
    root, report = located_pickcube
    run = root / "run"
    assert report["frames"]["layouts"] == 6 and report["frames"]["demo_train"] > 0
    with np.load(run / "layouts" / "part-0000.npz") as z:
        assert z["frames"].shape[1:] == (32, 32, 3) and z["poses"].shape == (6, 1, 7)
        # the cube was moved: the relaid layouts do not all keep the demo's starting place
        assert np.ptp(z["poses"][:, 0, :2], axis=0).max() > 0.02
    assert json.loads((run / "report.json").read_text())["objects"] == ["obj"]
    cfg = json.loads((run / "final" / "config.json").read_text())
    # the model as fine-tuned (it reads the full state), its locator beside it in locator/
    assert cfg["env_kwargs"]["obs_mode"] == "rgb+state_dict" and "locator" not in cfg
    assert json.loads((run / "final" / "locator" / "config.json").read_text())["objects"] == ["obj"]
    # par-train's checkpoints: a finished run's newest is its last step, with the held-out log
    assert (run / "locator" / "latest").read_text().strip() == "ckpt-00000006"
    rows = (run / "locator" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,name,value,time" and rows[1].startswith("6,train/loss,")


def test_located_policy_acts_from_the_plain_env_and_survives_sb3_save(located_pickcube, tmp_path, monkeypatch):
    from envs import make_env
    from par_agent import PARPolicy

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root, _ = located_pickcube
    p = PARPolicy.from_pretrained(str(root / "run" / "final"))
    assert p.input_state_dim == 29 and p.cfg.state_dim == 42 and p.env_kwargs["obs_mode"] == "rgb"
    assert p.observation_space["state"].shape == (29,)
    env = make_env(p.task, **p.env_kwargs)
    obs, _ = env.reset(seed=1_000_000)
    assert obs["state"].shape == (29,)
    actions = []
    for _ in range(9):
        a, _ = p.predict(obs, deterministic=True)
        assert env.action_space.contains(a)
        actions.append(a)
        obs, *_ = env.step(a)
    env.close()
    p.save(tmp_path / "sb3.zip")
    q = PARPolicy.load(tmp_path / "sb3.zip")
    assert q.locator is not None and q.env_kwargs == p.env_kwargs
    for name, v in p.locator.state_dict().items():
        torch.testing.assert_close(q.locator.state_dict()[name], v)
    with pytest.raises(ValueError, match=r"shape \(29,\)"):
        p.predict({"rgb": obs["rgb"], "state": np.zeros(42, np.float32)})


def test_locator_filter_benchmark_scores_resting_and_moved_frames(located_pickcube, tmp_path):
    from experiments.locator_filter import main

    root, _ = located_pickcube
    data = next((root / "priv").glob("*.h5"))
    out = main(["--policy", str(root / "run" / "final"), "--data", str(data), "--all", "--threads", "1",
                "--out", str(tmp_path / "f.json")])
    phases = out["objects"]["obj"]
    assert set(phases) == {"resting", "moved"}  # the demo lifts the cube
    for ph in phases.values():
        assert ph["frames"] > 0 and set(ph) == {"frames", "raw", "mean", "window"}
        assert all(np.isfinite(v["cm_mean"]) and v["cm_mean"] >= 0 for k, v in ph.items() if k != "frames")
    assert json.loads((tmp_path / "f.json").read_text())["episodes"] == 1


def test_a_policy_saved_with_the_locator_inside_its_model_still_loads(located_pickcube, tmp_path):
    """par-agent 0.1 kept the locator inside the model (config "locator", weights "locator.*", the
    model's obs_mode "rgb"): PARPolicy.from_pretrained gives it to the policy, the model alone loads
    without it, and a bare config holding one is refused by name."""
    from safetensors.torch import save_file

    from par_agent import PARPolicy
    from par_agent.hub import config_from_saved, read_module
    from par_agent.models import PhysicalAutoregressiveModel

    root, _ = located_pickcube
    new = root / "run" / "final"
    config, state, _ = read_module(new)
    loc_config, loc_state, _ = read_module(new / "locator")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    loc_config = {("full_fields" if k == "privileged_fields" else k): v for k, v in loc_config.items()}  # 0.1's name
    old = {**config, "locator": loc_config, "env_kwargs": {**config["env_kwargs"], "obs_mode": "rgb"}}
    (legacy / "config.json").write_text(json.dumps(old))
    save_file({**state, **{f"locator.{k}": v for k, v in loc_state.items()}}, str(legacy / "model.safetensors"))
    a, b = PARPolicy.from_pretrained(str(new)), PARPolicy.from_pretrained(str(legacy))
    assert b.env_kwargs == a.env_kwargs and b.input_state_dim == a.input_state_dim == 29
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0, msg=k)
    m = PhysicalAutoregressiveModel.from_pretrained(str(legacy))
    assert m.cfg.env_kwargs["obs_mode"] == "rgb+state_dict" and not any(k.startswith("locator") for k in m.state_dict())
    with pytest.raises(ValueError, match="object locator inside the model"):
        config_from_saved(old)


def test_diffusion_policy_acts_through_the_same_locator(located_pickcube, pickcube_ee_demo, tmp_path):
    """The baseline given PAR's located state: trained on the privileged demos with ``--locator``, it
    carries that policy's locator, asks for the plain env and acts from its frame and plain state."""
    from envs import make_env
    from experiments.baselines.diffusion_policy import main as dp_main
    from experiments.baselines.dp_policy import DPPolicy
    from par_agent.models.locator import load_locator

    root, _ = located_pickcube
    tiny = ["--steps", "2", "--batch-size", "4", "--unet-dims", "16", "32", "--inference-steps", "2", "--threads", "1",
            "--no-progress"]
    data = root / "priv" / pickcube_ee_demo.name
    assert dp_main(["train", "--data", str(data), "--out", str(tmp_path / "dp"), "--locator", str(root / "run" / "final"),
                    *tiny]) == 0
    p = DPPolicy.from_pretrained(tmp_path / "dp" / "final")
    assert p.locator is not None and p.cfg.state_dim == 42 and p.state_dim == 29
    assert p.env_kwargs["obs_mode"] == "rgb"
    torch.testing.assert_close(p.locator.state_dict()["pos_mean"],
                               load_locator(root / "run" / "final").state_dict()["pos_mean"])
    env = make_env(p.task, **{k: v for k, v in p.env_kwargs.items() if k != "max_episode_steps"})
    obs, _ = env.reset(seed=1_000_000)
    a, _ = p.predict(obs, episode_start=np.array([True]))
    assert env.action_space.contains(a)
    env.close()
    with pytest.raises(ValueError, match=r"state \(n, 29\)"):
        p.predict({"rgb": obs["rgb"], "state": np.zeros(42, np.float32)})
    # a checkpoint without a locator, and a locator over another state, are refused before training
    with pytest.raises(SystemExit, match="no object locator"):
        dp_main(["train", "--data", str(data), "--out", str(tmp_path / "x"), "--locator", str(root / "priv_policy"), *tiny])
    with pytest.raises(SystemExit, match="rebuilds a state of 42 numbers; the demos' state has 29"):
        dp_main(["train", "--data", str(pickcube_ee_demo), "--out", str(tmp_path / "y"),
                 "--locator", str(root / "run" / "final"), *tiny])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_both_rules_replayed_on_a_real_demo_hold_cube_a_and_ignore_an_occluded_read():
    """experiments.estimator_rules.replay (``--rule both``), on a shipped StackCube demo: one far read of
    each resting cube (a hidden cube) leaves its chunk's estimate at the median of the earlier reads;
    while the fingers hold cube A it sits at the gripper; each estimate is the chunk start's."""
    from pathlib import Path

    from experiments.estimator_rules import TCP, held_mask, replay
    from par_agent.data.compact import read_compact_episode, read_compact_meta

    folder = Path(__file__).parents[1] / "data" / "stackcube-ee-fov08-priv"
    ep = read_compact_episode(folder, read_compact_meta(folder)["episodes"][0])
    obs = ep["obs"]
    plain = np.concatenate([obs["agent"]["qpos"], obs["agent"]["qvel"], obs["extra"]["tcp_pose"]], -1).astype(np.float32)
    truth = np.stack([obs["extra"]["cubeA_pose"][:, :3], obs["extra"]["cubeB_pose"][:, :3]], 1).astype(np.float32)
    raw = truth.copy()
    raw[16] += 0.1  # the third chunk start reads both cubes 10 cm off
    out = replay(raw, plain, 8, ("cubeA", "cubeB"), ("cubeA", "cubeB"), "cubeA")
    holds = held_mask(torch.from_numpy(plain)).numpy()
    assert not holds[16] and holds.sum() > 10
    np.testing.assert_allclose(out[16:24], np.broadcast_to(truth[8], (8, 2, 3)), atol=0.005)  # not 10 cm off
    starts = np.arange(len(raw)) // 8 * 8
    held_rows = holds[starts]
    np.testing.assert_allclose(out[held_rows, 0], plain[starts][held_rows][:, TCP])
    np.testing.assert_allclose(out[:, 1], truth[starts, 1], atol=0.005)  # cube B rests throughout
