"""PARPolicy inside Stable-Baselines3's own evaluate_policy, on real ManiSkill envs."""
import numpy as np
import pytest
from stable_baselines3.common.evaluation import evaluate_policy

from envs import make_vec_env
from helpers import tiny_model
from par_agent import PARPolicy


class RecordingPolicy(PARPolicy):
    """Logs, per predict() call, episode_start and each env's noise generator (a new one is made when
    an env's context starts, with deterministic=True) and committed steps."""

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        before = list(getattr(self, "generators", []))
        out = super().predict(observation, state, episode_start, deterministic)
        self.log.append((np.array(episode_start, dtype=bool), before, list(self.generators),
                         list(self.context.steps)))
        return out


@pytest.mark.maniskill
def test_evaluate_policy_two_envs_resets_rows_exactly_at_episode_starts():
    m = tiny_model()
    m.action_norm.set_stats(np.full(8, -0.05, np.float32), np.full(8, 0.05, np.float32))
    policy = RecordingPolicy(m)
    policy.log = []
    # 5-step episodes with chunks of 2: resets fall inside chunks, so a queue must be dropped too
    vec = make_vec_env("PushCube-v1", 2, seed=123, camera_size=32, max_episode_steps=5)
    rewards, lengths = evaluate_policy(policy, vec, n_eval_episodes=4, deterministic=True, return_episode_rewards=True)
    vec.close()
    assert len(lengths) == 4 and all(1 <= n <= 5 for n in lengths)
    assert policy.log[0][0].all()
    starts = 0
    for episode_start, before, after, steps in policy.log:
        for i in range(2):
            if episode_start[i]:
                starts += 1
                assert after[i] is not None and (not before or after[i] is not before[i]), "row not reset at an episode start"
                assert steps[i] == 0  # a fresh context: nothing committed yet
            else:
                assert after[i] is before[i], "row reset in the middle of an episode"
    assert starts >= 4


def test_sb3_save_load_round_trip(tmp_path):
    """SB3's own policy.save / PARPolicy.load: same config, weights and statistics, identical actions."""
    import torch

    from helpers import tiny_model
    from par_agent import PARPolicy

    m = tiny_model()
    m.action_norm.set_stats(-np.ones(8, np.float32), np.full(8, 2.0, np.float32))
    p = PARPolicy(m, seed=3)
    p.save(str(tmp_path / "p.pt"))
    q = PARPolicy.load(str(tmp_path / "p.pt"), device="cpu")
    assert q.cfg == p.cfg and q.task == p.task and q.seed == 3
    for (k, a), (k2, b) in zip(p.state_dict().items(), q.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    rng = np.random.default_rng(0)
    seq = [{"rgb": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
            "state": rng.standard_normal((2, 25)).astype(np.float32)} for _ in range(5)]
    starts = [np.array([t == 0, t == 0]) for t in range(5)]
    a = [p.predict(o, episode_start=s, deterministic=True)[0] for o, s in zip(seq, starts)]
    b = [q.predict(o, episode_start=s, deterministic=True)[0] for o, s in zip(seq, starts)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
