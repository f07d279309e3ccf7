"""Physical-token observations (par_agent.PhysicalTokenObservation) and the SB3 extractor on real
ManiSkill rendering (32x32 camera, tiny model): spaces, Gymnasium conformance, equality with the
model's own token calls, PPO/SAC training and SB3 save/load."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import tiny_model

pytestmark = pytest.mark.maniskill

STATE_DIMS = {"PushCube-v1": 25, "PickCube-v1": 29, "StackCube-v1": 25}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One-frame encodes are ~80x slower with 2 OpenMP threads on 2 busy cores; restore afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``state_dim -> (model, folder)``: tiny models (image_size 32) with non-trivial state statistics."""
    out = {}
    for d in sorted(set(STATE_DIMS.values())):
        model = tiny_model(state_dim=d)
        g = torch.Generator().manual_seed(d)
        model.state_norm.set_stats(torch.randn(d, generator=g), torch.rand(d, generator=g) + 0.5)
        out[d] = (model, model.save_pretrained(tmp_path_factory.mktemp(f"tiny{d}")))
    return out


@pytest.mark.parametrize("task", [
    "PushCube-v1",
    pytest.param("PickCube-v1", marks=pytest.mark.slow),
    pytest.param("StackCube-v1", marks=pytest.mark.slow),
])
def test_observations_in_space_and_check_env(task, checkpoints):
    from gymnasium.utils.env_checker import check_env

    from envs import make_env
    from par_agent.tokens import PhysicalTokenObservation

    model, folder = checkpoints[STATE_DIMS[task]]
    env = PhysicalTokenObservation.from_pretrained(make_env(task, camera_size=32, max_episode_steps=8), folder)
    try:
        space = env.observation_space
        assert set(space.spaces) == {"frame_tokens", "state"}
        assert space["frame_tokens"].shape == (model.cfg.frame_tokens, model.cfg.token_dim)
        assert space["state"].shape == (STATE_DIMS[task],)
        obs, _ = env.reset(seed=1)
        assert obs in space and obs["frame_tokens"].std() > 0
        for _ in range(3):
            obs, *_ = env.step(env.action_space.sample())
            assert obs in space
        with pytest.warns(UserWarning):  # only the checker's advice on unbounded boxes and the action range
            check_env(env, skip_render_check=True)  # includes env.spec.make(): the wrapper is rebuilt
        assert env.spec.make().observation_space == space
    finally:
        env.close()


def test_tokens_equal_the_models_own_calls(checkpoints):
    from envs import flatten_state, make_env
    from par_agent.tokens import PhysicalTokenObservation

    model, folder = checkpoints[25]
    base = make_env("PushCube-v1", camera_size=32, max_episode_steps=8)
    env = PhysicalTokenObservation(base, model, keep_rgb=True)
    assert env.spec is None  # an in-memory model cannot be rebuilt from a spec
    try:
        env.reset(seed=2)
        obs, *_ = env.step(env.action_space.sample())
        assert obs in env.observation_space
        raw_state = flatten_state(base.unwrapped.get_obs())[0]
        with torch.no_grad():
            tokens = model.frame_tokenizer.encode(torch.from_numpy(obs["rgb"]))
            state = model.state_norm.normalize(raw_state)
        np.testing.assert_array_equal(obs["frame_tokens"], tokens.numpy())
        np.testing.assert_array_equal(obs["state"], state.numpy())
        assert not np.allclose(obs["state"], raw_state.numpy())  # the statistics were applied

        # a bare tokenizer + normaliser, and the loaded checkpoint, give the same observation
        bare = PhysicalTokenObservation(base, model.frame_tokenizer, state_norm=model.state_norm)
        loaded = PhysicalTokenObservation.from_pretrained(base, folder)
        raw = {"rgb": obs["rgb"], "state": raw_state.numpy()}
        for other in (bare, loaded):
            got = other.observation(raw)
            np.testing.assert_array_equal(got["frame_tokens"], obs["frame_tokens"])
            np.testing.assert_array_equal(got["state"], obs["state"])

        # batched torch observations (PARObservationWrapper, B=1) -> batched torch tokens, same values
        batched = PhysicalTokenObservation(base.env, model)
        assert batched.observation_space["frame_tokens"].shape == (1, *env.observation_space["frame_tokens"].shape)
        assert batched.single_observation_space == bare.observation_space
        out = batched.observation(base.env.observation(base.unwrapped.get_obs()))
        assert isinstance(out["frame_tokens"], torch.Tensor) and out["frame_tokens"].shape[0] == 1
        np.testing.assert_array_equal(out["frame_tokens"][0].numpy(), obs["frame_tokens"])
        np.testing.assert_array_equal(out["state"][0].numpy(), obs["state"])
    finally:
        env.close()


def test_size_mismatch_errors_name_both_sizes(checkpoints):
    from envs import make_env
    from par_agent.tokens import PhysicalTokenObservation

    model, _ = checkpoints[25]
    env = make_env("PushCube-v1", camera_size=64, max_episode_steps=8)
    try:
        with pytest.raises(ValueError, match=r"32x32.*64x64.*camera_size=32"):
            PhysicalTokenObservation(env, model)
    finally:
        env.close()
    env = make_env("PushCube-v1", camera_size=32, max_episode_steps=8)
    try:
        with pytest.raises(ValueError, match="29 state values but the env gives 25"):
            PhysicalTokenObservation(env, checkpoints[29][0])
        with pytest.raises(TypeError, match="PhysicalAutoregressiveModel or a FrameTokenizer"):
            PhysicalTokenObservation(env, torch.nn.Linear(2, 2))
    finally:
        env.close()


def test_extractor_shapes_gradients_and_bad_kwargs():
    from gymnasium import spaces

    from par_agent.sb3 import PhysicalTokenExtractor

    space = spaces.Dict({
        "frame_tokens": spaces.Box(-np.inf, np.inf, (16, 16), np.float32),
        "state": spaces.Box(-np.inf, np.inf, (25,), np.float32),
        "rgb": spaces.Box(0, 255, (32, 32, 3), np.uint8),
    })
    ext = PhysicalTokenExtractor(space, features_dim=48, token_width=32, num_heads=4, num_queries=2, state_width=16)
    assert ext.features_dim == 48
    obs = {"frame_tokens": torch.randn(5, 16, 16), "state": torch.randn(5, 25), "rgb": torch.zeros(5, 32, 32, 3)}
    feats = ext(obs)
    assert feats.shape == (5, 48) and torch.isfinite(feats).all()
    feats.sum().backward()
    assert ext.query.grad is not None and ext.pos.grad.abs().sum() > 0
    # the position embedding makes the read-out depend on where a token sits
    perm = {**obs, "frame_tokens": obs["frame_tokens"].flip(1)}
    assert not torch.allclose(ext(perm), ext(obs))
    with pytest.raises(ValueError, match="divisible"):
        PhysicalTokenExtractor(space, token_width=30, num_heads=4)
    with pytest.raises(ValueError, match="frame_tokens"):
        PhysicalTokenExtractor(spaces.Dict({"state": space["state"]}))


class _Record:
    """An SB3 ``KVWriter`` keeping every dumped row."""

    def __init__(self):
        self.rows = []

    def write(self, key_values, key_excluded, step=0):
        self.rows.append(dict(key_values))

    def close(self):
        pass


def _recording_logger():
    from stable_baselines3.common.logger import Logger

    rec = _Record()
    return Logger(folder=None, output_formats=[rec]), rec


@pytest.fixture(scope="module")
def token_vec_env(checkpoints):
    from par_agent.tokens import make_token_vec_env

    _, folder = checkpoints[25]
    vec = make_token_vec_env("PushCube-v1", 2, folder, seed=0, max_episode_steps=20, reward_mode="normalized_dense")
    yield vec
    vec.close()


def _finite_values(logger, rows, keys):
    seen = {k: [r[k] for r in rows if k in r] + ([logger.name_to_value[k]] if k in logger.name_to_value else [])
            for k in keys}
    for k, vals in seen.items():
        assert vals, f"{k} was never logged"
        assert all(math.isfinite(v) for v in vals), f"{k}: {vals}"
    return seen


def test_ppo_trains_on_tokens_and_reloads(token_vec_env, tmp_path):
    from stable_baselines3 import PPO

    from par_agent.sb3 import PhysicalTokenExtractor

    kwargs = dict(features_extractor_class=PhysicalTokenExtractor,
                  features_extractor_kwargs=dict(features_dim=32, token_width=16, num_heads=2),
                  net_arch=[32, 32])
    model = PPO("MultiInputPolicy", token_vec_env, n_steps=64, batch_size=64, n_epochs=2, seed=0,
                policy_kwargs=kwargs, device="cpu")
    logger, rec = _recording_logger()
    model.set_logger(logger)
    model.learn(total_timesteps=256)
    assert model.num_timesteps == 256
    assert isinstance(model.policy.features_extractor, PhysicalTokenExtractor)
    _finite_values(logger, rec.rows, ["train/loss", "train/value_loss", "train/policy_gradient_loss", "train/entropy_loss"])

    model.save(tmp_path / "ppo_tokens")
    again = PPO.load(tmp_path / "ppo_tokens", device="cpu")
    obs = token_vec_env.reset()
    a, _ = model.predict(obs, deterministic=True)
    b, _ = again.predict(obs, deterministic=True)
    assert a.shape == (2, 8)
    np.testing.assert_array_equal(a, b)


def test_sac_trains_on_tokens(token_vec_env):
    from stable_baselines3 import SAC

    from par_agent.sb3 import PhysicalTokenExtractor

    kwargs = dict(features_extractor_class=PhysicalTokenExtractor,
                  features_extractor_kwargs=dict(features_dim=32, token_width=16, num_heads=2), net_arch=[32, 32])
    model = SAC("MultiInputPolicy", token_vec_env, learning_starts=16, batch_size=16, buffer_size=200,
                seed=0, policy_kwargs=kwargs, device="cpu")
    logger, rec = _recording_logger()
    model.set_logger(logger)
    model.learn(total_timesteps=48)
    assert isinstance(model.actor.features_extractor, PhysicalTokenExtractor)
    _finite_values(logger, rec.rows, ["train/actor_loss", "train/critic_loss"])
