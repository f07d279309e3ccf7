"""make_env on real ManiSkill with CPU rendering: shapes, real frames, Gymnasium conformance."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.maniskill

TASKS = {
    "PushCube-v1": (("base_camera",), 25),
    "PickCube-v1": (("base_camera",), 29),
    "StackCube-v1": (("base_camera", "hand_camera"), 25),
}


@pytest.mark.parametrize("task", list(TASKS))
def test_make_env_real_frames_and_state(task):
    from envs import flatten_state, make_env, state_dim

    cameras, d = TASKS[task]
    env = make_env(task, cameras=cameras, camera_size=64)
    try:
        obs, info = env.reset(seed=3)
        assert set(obs) == {"rgb", "state"}
        assert obs["rgb"].shape == (64, 64 * len(cameras), 3) and obs["rgb"].dtype == np.uint8
        assert obs["state"].shape == (d,) and obs["state"].dtype == np.float32
        assert obs["rgb"].std() > 10, "camera frame looks constant: is rendering working?"
        assert obs in env.observation_space
        assert state_dim(task) == d
        # the single-env state is exactly flatten_state of ManiSkill's own raw observation
        raw = env.unwrapped.get_obs()
        np.testing.assert_array_equal(flatten_state(raw)[0].cpu().numpy(), obs["state"])
        obs2, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
        assert isinstance(info["success"], bool)
        assert not np.array_equal(obs2["state"], obs["state"])
    finally:
        env.close()


@pytest.mark.parametrize("obs_mode", ["rgb", "rgb+state_dict"])
@pytest.mark.parametrize("task", list(TASKS))
def test_state_equals_maniskills_own_flattening(task, obs_mode):
    """A user's ManiSkill pipeline (FlattenRGBDObservationWrapper) and make_env give the policy the same
    state, element by element; and the fixed order table (used to read stored demos) is ManiSkill's."""
    import gymnasium as gym
    from mani_skill.utils.wrappers import FlattenRGBDObservationWrapper

    from envs import EXTRA_ORDER, make_env

    theirs = FlattenRGBDObservationWrapper(gym.make(task, obs_mode=obs_mode, control_mode="pd_joint_pos",
                                                    sensor_configs=dict(width=32, height=32)), depth=False)
    ours = make_env(task, obs_mode=obs_mode, camera_size=32)
    try:
        a, _ = theirs.reset(seed=5)
        b, _ = ours.reset(seed=5)
        np.testing.assert_array_equal(a["state"][0].numpy(), b["state"])
        action = ours.action_space.sample()
        a = theirs.step(action[None])[0]
        b = ours.step(action)[0]
        np.testing.assert_array_equal(a["state"][0].numpy(), b["state"])
        extra = list(ours.unwrapped.get_obs()["extra"])
        assert [k for k in EXTRA_ORDER[task] if k in extra] == extra
    finally:
        theirs.close()
        ours.close()


def test_only_the_stitched_cameras_are_rendered():
    """StackCube's robot carries a hand_camera; make_env stops capturing it (a CPU renderer pays per
    camera) and the base_camera frames stay bit for bit those of ManiSkill's unpruned env."""
    from envs import make_env
    from envs import gym_make

    env = make_env("StackCube-v1", camera_size=32)
    raw = gym_make("StackCube-v1", obs_mode="rgb", control_mode="pd_joint_pos", sim_backend="cpu",
                   sensor_configs=dict(width=32, height=32))
    try:
        assert list(env.unwrapped._sensors) == ["base_camera"]
        obs, _ = env.reset(seed=4)
        ref, _ = raw.reset(seed=4)
        assert sorted(ref["sensor_data"]) == ["base_camera", "hand_camera"]
        np.testing.assert_array_equal(obs["rgb"], ref["sensor_data"]["base_camera"]["rgb"][0].numpy())
        rng = np.random.default_rng(0)
        for _ in range(3):
            a = rng.uniform(-0.5, 0.5, env.action_space.shape).astype(np.float32)
            obs = env.step(a)[0]
            ref = raw.step(a[None])[0]
            np.testing.assert_array_equal(obs["rgb"], ref["sensor_data"]["base_camera"]["rgb"][0].numpy())
        # a reconfiguring reset rebuilds ManiSkill's sensors: the choice must survive it
        env.reset(seed=5, options=dict(reconfigure=True))
        assert sorted(env.unwrapped.get_obs()["sensor_data"]) == ["base_camera"]
    finally:
        env.close()
        raw.close()


def test_unknown_camera_is_named():
    from envs import make_env

    with pytest.raises(KeyError, match=r"hand_camera.*PushCube-v1.*base_camera"):
        make_env("PushCube-v1", cameras=("hand_camera",), camera_size=32)


def test_check_env_pushcube_headless(monkeypatch):
    """gymnasium's check_env with its default arguments (it re-makes the env in every advertised render
    mode): on a machine without a display, ManiSkill's "human" viewer is not advertised."""
    from gymnasium.utils.env_checker import check_env

    from envs import make_env

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    env = make_env("PushCube-v1", camera_size=64, render_mode="rgb_array")
    try:
        assert "human" not in env.metadata["render_modes"] and "rgb_array" in env.metadata["render_modes"]
        check_env(env)
        monkeypatch.setenv("DISPLAY", ":0")
        assert "human" in make_env("PushCube-v1", camera_size=32).metadata["render_modes"]
        frame = env.render()
        assert frame.ndim == 3 and frame.shape[-1] == 3 and frame.dtype == np.uint8
    finally:
        env.close()


def test_reset_seed_reproducible_and_default_limit():
    from envs import DEFAULT_MAX_EPISODE_STEPS, make_env

    env = make_env("PushCube-v1", camera_size=32, seed=7)
    try:
        a, _ = env.reset()
        b, _ = env.reset(seed=7)
        np.testing.assert_array_equal(a["rgb"], b["rgb"])
        c, _ = env.reset(seed=8)
        assert not np.array_equal(a["state"], c["state"]) or not np.array_equal(a["rgb"], c["rgb"])
        steps = 0
        env.reset(seed=1)
        truncated = terminated = False
        zero = env.unwrapped.agent.robot.get_qpos()[0].cpu().numpy()[:8]  # hold still in pd_joint_pos
        zero[-1] = 1.0
        while not (terminated or truncated):
            _, _, terminated, truncated, _ = env.step(zero)
            steps += 1
        assert truncated and steps == DEFAULT_MAX_EPISODE_STEPS["PushCube-v1"]
    finally:
        env.close()


def test_make_vec_env_distinct_seeds():
    from envs import make_vec_env

    vec = make_vec_env("PushCube-v1", n_envs=2, seed=0, camera_size=32)
    try:
        obs = vec.reset()
        assert obs["rgb"].shape == (2, 32, 32, 3) and obs["state"].shape == (2, 25)
        assert not np.array_equal(obs["state"][0], obs["state"][1]) or not np.array_equal(obs["rgb"][0], obs["rgb"][1])
        obs, rew, done, infos = vec.step(np.stack([vec.action_space.sample()] * 2))
        assert rew.shape == (2,) and isinstance(infos[0]["success"], bool)
    finally:
        vec.close()


def test_unknown_task_lists_supported():
    from envs import make_env

    with pytest.raises(ValueError, match="PushCube-v1.*PickCube-v1.*StackCube-v1"):
        make_env("PushCubeee-v9")


def test_missing_vulkan_gives_setup_hint(monkeypatch):
    import gymnasium as gym

    from envs import make_env

    def fail(*args, **kwargs):
        raise RuntimeError("vk::createInstanceUnique: ErrorIncompatibleDriver")

    monkeypatch.setattr(gym, "make", fail)
    with pytest.raises(RuntimeError, match="make setup.*setup_system.sh"):
        make_env("PushCube-v1")


def test_flatten_state_layout_numpy_and_torch():
    import torch

    from envs import extra_order, flatten_state, state_keys

    obs = {
        "agent": {"qpos": np.ones((5, 9)), "qvel": np.full((5, 9), 2.0)},
        "extra": {"tcp_pose": np.full((5, 7), 3.0), "is_grasped": np.zeros(5, bool), "goal_pos": np.full((5, 3), 4.0)},
    }
    s = flatten_state(obs)
    assert s.shape == (5, 29) and s.dtype == np.float32
    # the mapping's own order: tcp_pose (7), is_grasped (1), goal_pos (3)
    np.testing.assert_array_equal(s[0], [1] * 9 + [2] * 9 + [3] * 7 + [0] + [4] * 3)
    # PickCube's order in ManiSkill (what a stored file, listed alphabetically, must be read back with)
    order = extra_order("PickCube-v1")
    s = flatten_state(obs, order)
    np.testing.assert_array_equal(s[0], [1] * 9 + [2] * 9 + [0] + [3] * 7 + [4] * 3)
    assert state_keys(obs, order)[2:] == ["extra/is_grasped", "extra/tcp_pose", "extra/goal_pos"]
    tobs = {g: {k: torch.as_tensor(v) for k, v in d.items()} for g, d in obs.items()}
    ts = flatten_state(tobs, order)
    assert isinstance(ts, torch.Tensor) and ts.dtype == torch.float32
    np.testing.assert_array_equal(ts.numpy(), s)
    with pytest.raises(ValueError, match=r"\['obj_pose'\] are not in the given order"):
        flatten_state({**obs, "extra": {**obs["extra"], "obj_pose": np.zeros((5, 7))}}, ("tcp_pose", "is_grasped", "goal_pos"))


def test_video_recorder(tmp_path):
    import imageio.v2 as imageio

    from envs import VideoRecorder

    rec = VideoRecorder(tmp_path, fps=20, panel_size=64)
    real = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for t in range(5):
        rec.add(real, real if t % 2 else None, step=t, success=t == 4)
    path = rec.close_episode(success=True)
    assert path.exists() and path.name.endswith("_success.mp4")
    frames = imageio.mimread(path)
    assert len(frames) == 5 and frames[0].shape[1] >= 2 * 64
    assert rec.close_episode() is None


def test_predicted_video_wrapper(tmp_path):
    from envs import PredictedVideoWrapper, make_env

    env = PredictedVideoWrapper(make_env("PushCube-v1", camera_size=32), tmp_path, panel_size=64)
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        env.set_prediction(obs["rgb"])
        obs, *_ = env.step(env.action_space.sample())
    env.reset(seed=1)
    env.step(env.action_space.sample())
    env.close()
    assert len(list(tmp_path.glob("*.mp4"))) == 2
