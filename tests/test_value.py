"""Best-of-N with the world model: the progress (value) head, ``par-train value`` and the policy acting
towards the imagined frame the head scores highest."""
import csv

import numpy as np
import pytest
import torch

from helpers import tiny_model
from par_agent.config import PARConfig
from par_agent.train import main as train_main

TINY = ["--preset", "tiny", "--batch-size", "4", "--no-progress", "--val-every", "1000"]


def _contexts(m, R: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (R, *m.cfg.frame_shape), dtype=torch.uint8, generator=g)
    state = torch.randn(R, m.cfg.state_dim, generator=g)
    return m.start_many(torch.zeros(R, dtype=torch.long), frames, state)


def test_best_of_n_acts_towards_the_imagined_frame_the_value_head_scores_highest():
    m = tiny_model(value_head_width=16, best_of=4)
    cfg, R, N = m.cfg, 3, 4
    g = torch.Generator().manual_seed(1)
    frame_noise = torch.randn(R, N, cfg.frame_tokens, cfg.token_dim, generator=g)
    action_noise = torch.randn(R, cfg.chunk_size, cfg.action_dim, generator=g)
    actions, chosen = m.act_many(_contexts(m, R), frame_noise, action_noise)

    m.set_runtime(best_of=1)  # each candidate alone, from the same contexts and noise
    alone = [m.act_many(_contexts(m, R), frame_noise[:, n], action_noise) for n in range(N)]
    frames = torch.stack([f for _, f in alone], 1)  # (R, N, P, C)
    scores = m.progress(frames.flatten(0, 1)).view(R, N)
    assert scores.std() > 0  # the head tells the candidates apart
    best = scores.argmax(1)
    for r in range(R):
        torch.testing.assert_close(chosen[r], frames[r, best[r]], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(actions[r], alone[int(best[r])][0][r], atol=1e-5, rtol=1e-4)


def test_best_of_needs_a_value_head_and_noise_of_its_shape():
    with pytest.raises(ValueError, match="par-train value"):
        PARConfig.named("tiny", best_of=2)
    m = tiny_model()
    with pytest.raises(ValueError, match="value_head_width=0"):
        m.set_runtime(best_of=2)
    with pytest.raises(ValueError, match="no value head"):
        m.progress(torch.zeros(1, m.cfg.frame_tokens, m.cfg.token_dim))
    m = tiny_model(value_head_width=8, best_of=2)
    cfg = m.cfg
    with pytest.raises(ValueError, match=r"frame_noise must have shape \(2, 2, "):
        m.act_many(_contexts(m), torch.zeros(2, cfg.frame_tokens, cfg.token_dim),
                   torch.zeros(2, cfg.chunk_size, cfg.action_dim))


def test_value_stage_trains_only_the_progress_head_and_the_policy_acts_best_of_n(pushcube_demos, tmp_path):
    from par_agent import PARPolicy
    from par_agent.models import PhysicalAutoregressiveModel

    out = tmp_path / "run"
    train_main(["finetune", "--data", str(pushcube_demos), "--out", str(out), "--steps", "2", *TINY])
    train_main(["value", "--data", str(pushcube_demos), "--out", str(out), "--steps", "60", "--lr", "3e-3",
                "--warmup", "1", "--log-every", "1", "--ema", "0", *TINY])
    policy_model = PhysicalAutoregressiveModel.from_pretrained(out / "finetune" / "final")
    valued = PhysicalAutoregressiveModel.from_pretrained(out / "value" / "final")
    assert policy_model.value_head is None and valued.cfg.value_head_width > 0
    assert valued.cfg.env_kwargs == policy_model.cfg.env_kwargs and valued.cfg.task_names == policy_model.cfg.task_names
    mine = valued.state_dict()
    for k, v in policy_model.state_dict().items():  # every weight of the policy is left as it was
        torch.testing.assert_close(mine[k], v, rtol=0, atol=0, msg=k)

    rows = list(csv.DictReader(open(out / "value" / "metrics.csv")))
    losses = [float(r["value"]) for r in rows if r["name"] == "train/loss"]
    assert len(losses) == 60 and np.mean(losses[-10:]) < np.mean(losses[:10])  # it learns the progress

    policy = PARPolicy.from_pretrained(str(out / "value" / "final"), best_of=3)
    cfg = policy.cfg
    obs = {"rgb": np.zeros((2, *cfg.frame_shape), np.uint8), "state": np.zeros((2, cfg.state_dim), np.float32)}
    actions, _ = policy.predict(obs, episode_start=np.ones(2, bool), deterministic=True)
    assert actions.shape == (2, cfg.action_dim) and np.isfinite(actions).all()
