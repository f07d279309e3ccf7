"""PARPolicy: SB3 contract, per-env history, validation, loading."""
import numpy as np
import pytest

from helpers import test_device, tiny_model
from par_agent import PARPolicy


def tiny_policy(**kw) -> PARPolicy:
    m = tiny_model()
    m.action_norm.set_stats(-np.ones(8, np.float32), np.ones(8, np.float32))
    return PARPolicy(m, **kw)


def obs(n=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = () if n is None else (n,)
    return {"rgb": rng.integers(0, 256, shape + (32, 32, 3), dtype=np.uint8),
            "state": rng.standard_normal(shape + (25,)).astype(np.float32)}


def test_sb3_shapes_single_and_batched():
    p = tiny_policy()
    a, state = p.predict(obs())
    assert a.shape == (8,) and a.dtype == np.float32 and state is None
    with pytest.warns(UserWarning, match="got 3 observations after 1: every env's history is cleared"):
        a, _ = p.predict(obs(3))
    assert a.shape == (3, 8)
    assert p.n_envs == 3 and list(p.context.steps) == [0, 0, 0]  # number of envs changed: history reset
    p.predict(obs(2), episode_start=np.ones(2, bool))  # said so: no warning (pytest.ini turns none into errors)


def test_one_model_call_per_chunk_and_queue():
    p = tiny_policy()
    K = p.cfg.chunk_size
    for t in range(3 * K):
        p.predict(obs(seed=t), episode_start=np.array([t == 0]))
    assert p.chunks_predicted == 3
    assert p.context.steps[0] == 2  # two real blocks committed after the first


def test_deterministic_same_observations_same_actions():
    seq = [obs(seed=t) for t in range(5)]
    runs = []
    for _ in range(2):
        p = tiny_policy()
        runs.append([p.predict(o, episode_start=np.array([t == 0]), deterministic=True)[0] for t, o in enumerate(seq)])
    np.testing.assert_array_equal(np.stack(runs[0]), np.stack(runs[1]))


def test_action_horizon_executes_part_of_each_chunk_and_commits_it_padded():
    """action_horizon=M: a new chunk every M steps; the block committed holds the M executed actions
    padded to K with the last of them (as the dataset pads an episode's last block); M = K is the
    default policy, step for step."""
    from unittest import mock

    K = tiny_policy().cfg.chunk_size
    M = K // 2
    p = tiny_policy(action_horizon=M)
    seq = [obs(seed=t) for t in range(3 * M)]
    with mock.patch.object(p.model, "commit", wraps=p.model.commit) as commits:
        acts = [p.predict(o, episode_start=np.array([t == 0]), deterministic=True)[0] for t, o in enumerate(seq)]
    assert p.chunks_predicted == 3
    committed = commits.call_args_list[0].args[2][0].cpu().numpy()  # (K, A), raw actions
    np.testing.assert_allclose(committed[:M], np.stack(acts[:M]), atol=1e-6)
    np.testing.assert_allclose(committed[M:], np.repeat(committed[M - 1:M], K - M, 0), atol=0)
    full, default = tiny_policy(action_horizon=K), tiny_policy()
    np.testing.assert_array_equal(
        np.stack([full.predict(o, episode_start=np.array([t == 0]), deterministic=True)[0] for t, o in enumerate(seq)]),
        np.stack([default.predict(o, episode_start=np.array([t == 0]), deterministic=True)[0] for t, o in enumerate(seq)]))
    for bad in (0, K + 1):
        with pytest.raises(ValueError, match=f"action_horizon must be between 1 and the chunk size {K}"):
            tiny_policy(action_horizon=bad)


def test_episode_start_clears_only_that_env():
    p = tiny_policy()
    K = p.cfg.chunk_size
    for t in range(K + 1):  # both envs commit a block
        p.predict(obs(2, seed=t), episode_start=np.array([t == 0, t == 0]))
    assert list(p.context.blocks) == [2, 2]
    p.predict(obs(2, seed=99), episode_start=np.array([False, True]))
    assert list(p.context.blocks) == [2, 1] and list(p.context.steps) == [1, 0]


def test_actions_clipped_to_given_action_space():
    from gymnasium import spaces

    p = tiny_policy(action_space=spaces.Box(-0.1, 0.1, (8,), np.float32))
    a, _ = p.predict(obs())
    assert np.abs(a).max() <= np.float32(0.1)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"state": np.zeros(25, np.float32)}, "missing key 'rgb'"),
        ({"rgb": np.zeros((32, 32, 3), np.uint8)}, "missing key 'state'"),
        ({"rgb": np.zeros((32, 32, 3), np.float32), "state": np.zeros(25, np.float32)}, "dtype uint8, got float32"),
        ({"rgb": np.zeros((64, 48, 3), np.uint8), "state": np.zeros(25, np.float32)}, r"shape \(32, 32, 3\).*got \(64, 48, 3\)"),
        ({"rgb": np.zeros((32, 32, 3), np.uint8), "state": np.zeros(24, np.float32)}, r"'state'.*\(25,\), got \(24,\)"),
        ({"rgb": np.zeros((32, 32, 3), np.uint8), "state": np.full(25, np.nan, np.float32)}, "non-finite"),
        ({"rgb": np.zeros((32, 32, 3), np.uint8), "state": np.zeros(25, np.int64)}, "float dtype"),
    ],
)
def test_bad_observations_named(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_policy().predict(bad)


def test_other_image_size_is_resized_with_one_warning():
    """A 64x64 camera gives the actions of the same image resized (antialiased) to the model's 32x32."""
    import warnings

    from par_agent.tokenizers.frames import resize_frames

    big = [obs(seed=t) for t in range(3)]
    for o in big:
        o["rgb"] = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    small = [{**o, "rgb": resize_frames(o["rgb"][None], 32)[0]} for o in big]
    p, q = tiny_policy(), tiny_policy()
    with pytest.warns(UserWarning, match=r"64x64.*make_env\(task, \*\*policy.env_kwargs\)") as record:
        a = [p.predict(o, deterministic=True)[0] for o in big]
    assert len([w for w in record if "64x64" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # ours; libraries' deprecations vary with versions
        b = [q.predict(o, deterministic=True)[0] for o in small]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert p.env_kwargs == {"camera_size": 32}


def test_gym_tuple_mistake_explained():
    with pytest.raises(ValueError, match="obs, info"):
        tiny_policy().predict((obs(), {}))


def test_from_pretrained_round_trip_and_errors(tmp_path):
    p = tiny_policy()
    p.save_pretrained(tmp_path / "ck")
    q = PARPolicy.from_pretrained(str(tmp_path / "ck"), use_kv_cache=False, num_inference_steps=2)
    assert q.model.use_kv_cache is False and q.model.num_inference_steps == 2
    a1, _ = p.predict(obs(), deterministic=True)
    q2 = PARPolicy.from_pretrained(str(tmp_path / "ck"), device=test_device())  # the same noise generator
    a2, _ = q2.predict(obs(), deterministic=True)
    np.testing.assert_allclose(a1, a2, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="par-nope"):
        PARPolicy.from_pretrained("par-nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PARPolicy.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="width"):
        PARPolicy.from_pretrained(str(tmp_path / "ck"), width=8)


def test_predicted_frames_decoded():
    p = tiny_policy()
    assert p.predicted_frames() == []
    p.predict(obs(2))
    frames = p.predicted_frames()
    assert len(frames) == 2 and frames[0].shape == (32, 32, 3) and frames[0].dtype == np.uint8


def test_builtin_par_pushcube_loads_offline(monkeypatch):
    """The shipped checkpoint resolves by name from inside the package, with no network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from par_agent.hub import PRETRAINED_DIR, builtin_names

    assert "par-pushcube" in builtin_names()
    size = sum(f.stat().st_size for f in (PRETRAINED_DIR / "par-pushcube").iterdir())
    assert size <= 25 * 2**20
    p = PARPolicy.from_pretrained("par-pushcube")
    assert p.task == "PushCube-v1" and p.cfg.state_dim == 25 and p.cfg.action_dim == 8
    s = p.cfg.image_size
    a, _ = p.predict({"rgb": np.zeros((s, s, 3), np.uint8), "state": np.zeros(25, np.float32)}, deterministic=True)
    assert a.shape == (8,) and np.isfinite(a).all()


def _rollout_counting_acts(m, starts: list, seed: int, **policy_kw) -> tuple[np.ndarray, int]:
    """Deterministic actions (T, n, 8) of a PARPolicy(m, **policy_kw) on random observations with the
    given episode starts (T arrays of n), and how many times ``m.act`` (the eager call) ran."""
    from unittest import mock

    rng = np.random.default_rng(seed)
    n = len(starts[0])
    seq = [{"rgb": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            "state": rng.standard_normal((n, 25)).astype(np.float32)} for _ in starts]
    p = PARPolicy(m, **policy_kw)
    with mock.patch.object(m, "act", wraps=m.act) as calls:
        actions = np.stack([p.predict(o, episode_start=s, deterministic=True)[0] for o, s in zip(seq, starts)])
    return actions, calls.call_count


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_one_call_for_many_envs_equals_the_per_env_loop(use_kv_cache):
    """Envs that reset at different times have contexts of different lengths (and some evict); the
    batched path serves them in one call and gives the per-env loop's actions for the same noise."""
    m = tiny_model()
    m.action_norm.set_stats(-np.ones(8, np.float32), np.ones(8, np.float32))
    m.set_runtime(use_kv_cache=use_kv_cache)
    n, T = 4, 6 * m.cfg.chunk_size * m.cfg.history  # long enough for every env to evict several times
    starts = [np.array([t == 0 or (t % (3 + i) == 0 and i > 0) for i in range(n)]) for t in range(T)]
    (batched, calls_batched), (per_env, calls_per_env) = (
        _rollout_counting_acts(m, starts, seed=0, batch_envs=batch) for batch in (True, False))
    np.testing.assert_allclose(batched, per_env, atol=1e-5)
    assert calls_batched < calls_per_env


def test_chunk_graphs_give_the_eager_policys_actions():
    """Lockstep chunks through ChunkGraphs (CUDA graphs on a GPU, the same bodies eagerly here), mixed
    with eager starts, resets and evicting commits, give the eager policy's actions."""
    m = tiny_model()
    m.action_norm.set_stats(-np.ones(8, np.float32), np.ones(8, np.float32))
    n, T = 3, 4 * m.cfg.chunk_size * m.cfg.history
    starts = [np.full(n, t == 0) | (np.arange(n) == 1) & (t == T // 2) for t in range(T)]
    (eager, eager_calls), (graphed, graphed_calls) = (
        _rollout_counting_acts(m, starts, seed=1, chunk_graphs=graphs) for graphs in (False, True))
    tol = 1e-5 if m.device.type == "cpu" else 1e-3
    np.testing.assert_allclose(graphed, eager, atol=tol)
    assert graphed_calls < eager_calls / 2  # most chunks went through the graphs, not model.act


@pytest.mark.maniskill
def test_builtin_par_pickcube_acts_in_the_env_it_records(monkeypatch):
    """par-pickcube loads offline, at most 25 MB, records its env (end-effector control, framed 64 px
    camera), and acts in make_env(task, **policy.env_kwargs) within the env's action space."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from envs import make_env
    from par_agent.hub import PRETRAINED_DIR, builtin_names

    assert "par-pickcube" in builtin_names()
    assert sum(f.stat().st_size for f in (PRETRAINED_DIR / "par-pickcube").iterdir()) <= 25 * 2**20
    p = PARPolicy.from_pretrained("par-pickcube")
    assert p.task == "PickCube-v1" and p.cfg.action_dim == 4
    assert p.env_kwargs == {"camera_size": 64, "camera_fov": 0.8, "cameras": ["base_camera"],
                            "control_mode": "pd_ee_delta_pos", "max_episode_steps": 200, "obs_mode": "rgb"}
    env = make_env(p.task, **p.env_kwargs)
    obs, _ = env.reset(seed=1_000_000)
    for _ in range(9):  # one chunk and the start of the next
        a, _ = p.predict(obs, deterministic=True)
        assert env.action_space.contains(a)
        obs, *_ = env.step(a)
    env.close()


@pytest.mark.maniskill
def test_builtin_par_stackcube_acts_from_pixels_with_its_locator(monkeypatch):
    """par-stackcube loads offline, at most 25 MB, carries the locator that rebuilds the cubes' state
    from the frame, and acts in make_env(task, **policy.env_kwargs), whose state is the plain one."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from envs import make_env, state_dim
    from par_agent.hub import PRETRAINED_DIR, builtin_names

    assert "par-stackcube" in builtin_names()
    assert sum(f.stat().st_size for f in (PRETRAINED_DIR / "par-stackcube").rglob("*") if f.is_file()) <= 25 * 2**20
    p = PARPolicy.from_pretrained("par-stackcube")
    assert p.task == "StackCube-v1" and p.cfg.action_dim == 4
    assert p.env_kwargs["obs_mode"] == "rgb" and p.env_kwargs["control_mode"] == "pd_ee_delta_pos"
    assert p.locator is not None and p.cfg.state_dim > state_dim("StackCube-v1") == p.input_state_dim
    env = make_env(p.task, **p.env_kwargs)
    obs, _ = env.reset(seed=1_000_000)
    assert obs["state"].shape == (state_dim("StackCube-v1"),)
    for _ in range(9):  # one chunk and the start of the next
        a, _ = p.predict(obs, deterministic=True)
        assert env.action_space.contains(a)
        obs, *_ = env.step(a)
    env.close()


def test_bad_inputs_are_refused_by_name():
    p = tiny_policy()
    with pytest.raises(ValueError, match="episode_start has 3 entries for 2 observations"):
        p.predict(obs(2), episode_start=np.array([True, False, True]))
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        tiny_policy(num_threads=0)
    with pytest.raises(TypeError, match="exactly one of model="):
        PARPolicy(tiny_model(), config=tiny_model().cfg)
    with pytest.raises(TypeError, match="exactly one of model="):
        PARPolicy()
    with pytest.raises(ValueError, match="must be a dict"):
        p._predict(np.zeros(3))


def test_sb3_forward_takes_torch_tensors_and_acts_as_predict():
    """SB3 calls forward / _predict with torch tensors (obs_as_tensor): the same actions as predict's numpy."""
    import torch

    seq = [obs(2, seed=t) for t in range(3)]
    a, b = tiny_policy(), tiny_policy()
    for t, o in enumerate(seq):
        want, _ = a.predict(o, episode_start=np.array([t == 0] * 2), deterministic=True)
        if t == 0:
            b.predict(o, episode_start=np.array([True, True]), deterministic=True)  # starts both envs
            continue
        got = b.forward({k: torch.as_tensor(v) for k, v in o.items()}, deterministic=True)
        assert torch.is_tensor(got) and got.shape == (2, 8)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_channel_stacked_cameras_are_read_as_the_policys_first_cameras():
    """ManiSkill's FlattenRGBDObservationWrapper stacks several cameras along the channels ((64, 64, 6) for
    StackCube's base and wrist cameras): the policy reads its own, the first, with one warning; the same
    actions as given that camera alone."""
    o = obs(2)
    stacked = dict(o, rgb=np.concatenate([o["rgb"], 255 - o["rgb"]], axis=-1))  # (2, 32, 32, 6)
    with pytest.warns(UserWarning, match="2 cameras stacked along the channels; this policy reads"):
        got, _ = tiny_policy().predict(stacked, deterministic=True)
    want, _ = tiny_policy().predict(o, deterministic=True)
    np.testing.assert_array_equal(got, want)
    bad = dict(o, rgb=np.concatenate([o["rgb"][:, :, :16]] * 2, axis=-1))  # not square
    with pytest.raises(ValueError, match="stacked along the channels"):
        tiny_policy().predict(bad)


@pytest.mark.maniskill
def test_par_stackcube_acts_in_maniskills_own_loop_with_both_cameras(monkeypatch):
    """gym.make + FlattenRGBDObservationWrapper, as a ManiSkill user writes it: StackCube's two cameras
    come stacked, (1, 64, 64, 6), as torch tensors; the policy acts as it does on make_env's observations."""
    from contextlib import nullcontext

    import gymnasium as gym
    import torch
    from mani_skill.utils.wrappers.flatten import FlattenRGBDObservationWrapper

    import envs
    from envs import make_env

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kw = PARPolicy.from_pretrained("par-stackcube").env_kwargs
    raw = FlattenRGBDObservationWrapper(
        gym.make("StackCube-v1", obs_mode="rgb", control_mode=kw["control_mode"],
                 sensor_configs=envs.sensor_configs(kw["camera_size"], kw["camera_fov"])),
        rgb=True, depth=False, state=True)
    ours = make_env("StackCube-v1", **kw)
    a_obs, _ = raw.reset(seed=1_000_000)
    b_obs, _ = ours.reset(seed=1_000_000)
    assert tuple(a_obs["rgb"].shape) == (1, 64, 64, 6)
    p, q = PARPolicy.from_pretrained("par-stackcube"), PARPolicy.from_pretrained("par-stackcube")
    for t in range(9):  # one chunk and the start of the next
        with pytest.warns(UserWarning, match="stacked along the channels") if t == 0 else nullcontext():
            a, _ = p.predict(a_obs, episode_start=np.array([t == 0]), deterministic=True)
        b, _ = q.predict(b_obs, episode_start=np.array([t == 0]), deterministic=True)
        np.testing.assert_allclose(a[0], b, atol=1e-4)
        a_obs, *_ = raw.step(torch.as_tensor(a))
        b_obs, *_ = ours.step(b)
    raw.close(), ours.close()


@pytest.mark.maniskill
def test_par_pickcube_runs_the_same_episode_in_make_env_maniskills_own_loop_and_sb3(monkeypatch):
    """The shipped par-pickcube on seed 1,000,000 (solved in 74 steps in its report,
    results/pickcube_shipped_250ep.json) in the three loops a user writes: make_env; gym.make +
    FlattenRGBDObservationWrapper with torch observations; SB3's evaluate_policy on make_vec_env.
    Each episode ends at success, so the same length means the same outcome."""
    import gymnasium as gym
    import torch
    from mani_skill.utils.wrappers.flatten import FlattenRGBDObservationWrapper
    from stable_baselines3.common.evaluation import evaluate_policy

    import envs
    from envs import make_env, make_vec_env

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seed, kw = 1_000_000, PARPolicy.from_pretrained("par-pickcube").env_kwargs

    def episode(env, to_env=lambda a: a) -> tuple[bool, int]:
        p = PARPolicy.from_pretrained("par-pickcube")
        obs, _ = env.reset(seed=seed)
        for t in range(kw["max_episode_steps"]):
            a, _ = p.predict(obs, episode_start=np.array([t == 0]), deterministic=True)
            obs, _, term, trunc, info = env.step(to_env(a))
            if bool(np.asarray(term).any()) or bool(np.asarray(trunc).any()):
                break
        env.close()
        return bool(np.asarray(info["success"]).any()), t + 1

    ours = episode(make_env("PickCube-v1", **kw))
    raw = FlattenRGBDObservationWrapper(
        gym.make("PickCube-v1", obs_mode="rgb", control_mode=kw["control_mode"], max_episode_steps=kw["max_episode_steps"],
                 sensor_configs=envs.sensor_configs(kw["camera_size"], kw["camera_fov"])),
        rgb=True, depth=False, state=True)
    theirs = episode(raw, torch.as_tensor)
    vec = make_vec_env("PickCube-v1", 1, seed=seed, **kw)
    _, lengths = evaluate_policy(PARPolicy.from_pretrained("par-pickcube"), vec, n_eval_episodes=1, deterministic=True,
                                 return_episode_rewards=True)
    vec.close()
    assert ours[0] and theirs[0], (ours, theirs)  # solved, as in the report
    assert abs(ours[1] - theirs[1]) <= 2 and abs(ours[1] - lengths[0]) <= 2, (ours, theirs, lengths)
