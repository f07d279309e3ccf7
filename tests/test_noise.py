"""Joint-target noise for DART-style demos (experiments/noisy_demos.py): the wrapper alone, then
par-collect with it through its act_wrapper hook (real planner)."""
from __future__ import annotations

import gymnasium as gym
import h5py
import numpy as np
import pytest
from gymnasium import spaces

from experiments.noisy_demos import JointNoise, JointTargetNoise


class _Echo(gym.Env):
    """Records the actions it is given; 7 arm targets + gripper."""

    action_space = spaces.Box(-10, 10, (8,), np.float32)
    observation_space = spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self):
        self.seen = []

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.seen.append(np.array(action))
        return np.zeros(1, np.float32), 0.0, False, False, {}


def _run(noise, seed, targets):
    env = JointTargetNoise(_Echo(), noise)
    env.reset(seed=seed)
    for a in targets:
        env.step(a)
    return np.stack(env.unwrapped.seen)


def _moving_then_still(n_move=40, n_still=40):
    arm = np.concatenate([np.linspace(0, 1.2, n_move), np.full(n_still, 1.2)])  # 0.03 rad per step, then held
    a = np.zeros((n_move + n_still, 8), np.float32)
    a[:, :7] = arm[:, None]
    a[:, 7] = 1.0
    return a


def test_noise_moves_the_arm_off_its_targets_while_moving_and_fades_when_still():
    targets = _moving_then_still()
    out = _run(JointNoise(sigma=0.05), 3, targets)
    off = out - targets
    assert np.all(off[:, 7] == 0), "the gripper command is left alone"
    assert np.all(off[0] == 0), "the first step starts on the plan"
    assert np.abs(off[5:40, :7]).max() > 0.05, "a moving arm is perturbed"
    assert np.abs(off[-1, :7]).max() < 0.05 * 0.8 ** 30, "a held target loses its offset"
    assert np.array_equal(out, _run(JointNoise(sigma=0.05), 3, targets)), "reproducible from the reset's seed"
    assert not np.array_equal(out, _run(JointNoise(sigma=0.05), 4, targets))
    assert np.array_equal(_run(JointNoise(sigma=0.0), 3, targets), targets)


@pytest.mark.parametrize("kwargs, match", [
    ({"sigma": -0.1}, "sigma must be >= 0"), ({"sigma": float("nan")}, "sigma must be >= 0"),
    ({"sigma": 0.1, "rho": 1.0}, r"rho must be in \[0, 1\)"), ({"sigma": 0.1, "moving_speed": 0}, "moving_speed"),
])
def test_bad_noise_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JointNoise(**kwargs)


@pytest.mark.maniskill
def test_par_collect_records_the_noisy_targets_it_executed(tmp_path, capsys):
    """The recorded actions are the executed ones (a replay from the seed reproduces the recorded
    states), they differ from the clean plan of the same seed, and the folder remembers its noise."""
    import mani_skill.envs  # noqa: F401
    from mani_skill.utils.io_utils import load_json

    from envs import gym_make
    from experiments.noisy_demos import main
    from par_agent.data.collect import main as collect_main
    from par_agent.data.collect import trajectory_path

    common = ["--task", "PushCube-v1", "--camera-size", "32", "--no-progress"]
    args = common + ["--num-demos", "1"]
    assert collect_main(args + ["--out", str(tmp_path / "clean")]) == 0
    assert main(args + ["--out", str(tmp_path / "noisy"), "--action-noise", "0.02"]) == 0
    clean, noisy = trajectory_path(tmp_path / "clean", "PushCube-v1"), trajectory_path(tmp_path / "noisy", "PushCube-v1")
    meta = load_json(str(noisy.with_suffix(".json")))
    assert "sigma=0.02" in meta["source_desc"] and meta["episodes"][0]["episode_seed"] == 0
    with h5py.File(clean) as fc, h5py.File(noisy) as fn:
        a_clean, a_noisy = fc["traj_0/actions"][()], fn["traj_0/actions"][()]
        qpos_end = fn["traj_0/env_states/articulations/panda"][-1]
    n = min(len(a_clean), len(a_noisy))
    assert np.abs(a_clean[:n, :7] - a_noisy[:n, :7]).max() > 0.005

    env = gym_make("PushCube-v1", obs_mode="state", control_mode="pd_joint_pos", sim_backend="cpu")
    env.reset(seed=0)
    for a in a_noisy:
        env.step(a)
    replayed = env.unwrapped.get_state_dict()["articulations"]["panda"].cpu().numpy()[0]
    env.close()
    np.testing.assert_allclose(replayed, qpos_end, atol=1e-4)

    # a folder holds one noise setting
    capsys.readouterr()
    assert main(common + ["--num-demos", "2", "--out", str(tmp_path / "clean"), "--action-noise", "0.02"]) == 2
    assert "act_wrapper" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "x"), "--action-noise", "-1"]) == 2
    assert "sigma must be >= 0" in capsys.readouterr().err


def test_path_deviation_is_the_largest_nearest_point_distance():
    from experiments.planner_noise import path_deviation

    ref = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], float)
    assert path_deviation(ref, ref) == 0
    assert path_deviation(np.array([[1, 0.3, 0], [2, 0, 0.1]]), ref) == pytest.approx(0.3)


@pytest.mark.maniskill
def test_planner_noise_benchmark_measures_the_plans_it_runs(capsys):
    """Same seed, no noise: the same path twice; with noise the gripper leaves it."""
    from experiments.planner_noise import main, path_deviation, solve_once

    ok, clean, _ = solve_once("PushCube-v1", 0, JointNoise())
    ok2, again, _ = solve_once("PushCube-v1", 0, JointNoise())
    _, noisy, _ = solve_once("PushCube-v1", 0, JointNoise(0.03))
    assert ok and ok2 and clean.shape[1] == 3 and len(clean) > 10
    assert path_deviation(again, clean) < 1e-6
    assert path_deviation(noisy, clean) > 0.005
    assert main(["--task", "PushCube-v1", "--episodes", "1", "--sigma", "0.02"]) == 0
    assert "1/1 plans succeed" in capsys.readouterr().out
