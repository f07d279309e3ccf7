"""PhysicalAutoregressiveModel: losses, parallel training, cached == uncached inference."""
import pytest
import torch

from helpers import synthetic_batch, tiny_model


def rollout(model, use_cache: bool, steps: int, B: int = 2, seed: int = 0):
    """Run the inference loop with fixed noise and observations; return actions and frames."""
    model.set_runtime(use_kv_cache=use_cache)
    cfg = model.cfg
    g_obs, g_noise = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    obs = lambda: (  # noqa: E731
        torch.randint(0, 256, (B, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=g_obs),
        torch.randn(B, cfg.state_dim, generator=g_obs),
    )
    ctx, rows = model.new_contexts(B), list(range(B))
    model.start(ctx, rows, torch.zeros(B, dtype=torch.long), *obs())
    acts, frames, blocks = [], [], []
    for _ in range(steps):
        a, f = model.act(ctx, rows, torch.randn(B, cfg.frame_tokens, cfg.token_dim, generator=g_noise),
                         torch.randn(B, cfg.chunk_size, cfg.action_dim, generator=g_noise))
        acts.append(a)
        frames.append(f)
        model.commit(ctx, rows, a, *obs())
        blocks.append(int(ctx.blocks[0]))
    return torch.stack(acts), torch.stack(frames), blocks


def test_losses_for_all_batch_kinds():
    m = tiny_model().train()
    cfg = m.cfg
    full = m(synthetic_batch(cfg))
    assert set(full) == {"loss", "frame_loss", "action_loss"}
    assert all(torch.isfinite(v) for v in full.values())
    frames_only = m(synthetic_batch(cfg, actions=False, state=False))
    assert set(frames_only) == {"loss", "frame_loss"}
    with_state = m(synthetic_batch(cfg, actions=False))
    assert torch.isfinite(with_state["loss"])


def test_masked_steps_do_not_contribute():
    """Padding at an episode end (mask False) must not change the loss."""
    m = tiny_model().train()
    cfg = m.cfg
    b = synthetic_batch(cfg, B=2)
    b["frame_mask"][:, -1] = False
    b["action_mask"][:, -1] = False
    torch.manual_seed(3)
    l1 = m(b)["loss"]
    b["frames"][:, -1] = 0
    b["actions"][:, -1] = 0.5
    torch.manual_seed(3)
    l2 = m(b)["loss"]
    torch.testing.assert_close(l1, l2)


@pytest.mark.parametrize("mask", ["ik", "causal"])
def test_cached_equals_uncached_with_rollbacks_and_eviction(mask):
    m = tiny_model(attention_mask=mask)
    steps = 3 * m.cfg.history  # several evictions (history 4, eviction 2)
    a1, f1, blocks1 = rollout(m, True, steps)
    a2, f2, blocks2 = rollout(m, False, steps)
    assert blocks1 == blocks2 and max(blocks1) == m.cfg.history - 1 and min(blocks1[m.cfg.history:]) < m.cfg.history - 1
    torch.testing.assert_close(a1, a2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f1, f2, atol=1e-5, rtol=1e-5)
    assert a1.std() > 0.05  # outputs really depend on the inputs


def test_same_noise_same_actions_and_noise_matters():
    m = tiny_model()
    a1, _, _ = rollout(m, True, 3, seed=5)
    a2, _, _ = rollout(m, True, 3, seed=5)
    a3, _, _ = rollout(m, True, 3, seed=6)
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    assert not torch.allclose(a1, a3)


def test_actions_are_clipped_to_the_dataset_range():
    m = tiny_model()
    m.action_norm.set_stats(torch.full((m.cfg.action_dim,), -0.5), torch.full((m.cfg.action_dim,), 0.25))
    a, _, _ = rollout(m, True, 2)
    assert a.min() >= -0.5 - 1e-6 and a.max() <= 0.25 + 1e-6


def test_evicted_context_looks_like_a_training_window():
    """After an eviction a context is the training window of its blocks: the first block cut back to
    [F S], every token at the position it has in a window; its outputs equal a fresh window's."""
    from par_agent.models import BlockSpec, Kind, window_layout

    m = tiny_model()
    cfg = m.cfg
    g = torch.Generator().manual_seed(0)
    obs = [(torch.randint(0, 256, (1, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=g),
            torch.randn(1, cfg.state_dim, generator=g)) for _ in range(cfg.history)]
    ctx = m.new_contexts(1)
    m.start(ctx, [0], torch.zeros(1, dtype=torch.long), *obs[0])
    acts = []
    for t in range(1, cfg.history):
        a, _ = m.act(ctx, [0], torch.randn(1, cfg.frame_tokens, cfg.token_dim, generator=g),
                     torch.randn(1, cfg.chunk_size, cfg.action_dim, generator=g))
        acts.append(a)
        m.commit(ctx, [0], a, *obs[t])
    kept = cfg.history - cfg.eviction
    assert ctx.blocks[0] == kept
    _, kind = window_layout(BlockSpec(cfg.frame_tokens, cfg.chunk_size, True, True), kept)
    assert kind[1:cfg.frame_tokens + 2].tolist() == [Kind.FRAME] * cfg.frame_tokens + [Kind.STATE]
    # the same blocks run as a fresh window from [TASK]: the kept context's last-block outputs
    first = cfg.history - kept
    fresh = m.new_contexts(1)
    m.start(fresh, [0], torch.zeros(1, dtype=torch.long), *obs[first])
    for t in range(first + 1, cfg.history):
        m.commit(fresh, [0], acts[t - 1], *obs[t])
    torch.testing.assert_close(ctx.hidden, fresh.hidden, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_actions", [False, True], ids=["frames-only", "frames+actions"])
def test_tiny_model_overfits_a_small_sequence(with_actions):
    torch.manual_seed(0)
    m = tiny_model(randomize_zero_init=False).train()
    batch = synthetic_batch(m.cfg, B=2, actions=with_actions, state=with_actions)
    with torch.no_grad():  # a frame tokenizer with stable latents: fixed targets
        batch["frame_tokens"] = m.frame_tokenizer.encode(batch.pop("frames"))
        batch["frame_tokens"] = batch["frame_tokens"] / batch["frame_tokens"].std()
    opt = torch.optim.Adam([p for n, p in m.named_parameters() if not n.startswith("frame_tokenizer")], lr=3e-3)
    losses = []
    for _ in range(300):
        out = m(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    first, last = sum(losses[:10]) / 10, sum(losses[-30:]) / 30
    assert last < first / 5, (first, last)


def test_contexts_not_started_are_refused_by_row():
    m = tiny_model()
    cfg = m.cfg
    ctx = m.new_contexts(2)
    fr = torch.zeros(1, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8)
    m.start(ctx, [0], torch.zeros(1, dtype=torch.long), fr, torch.zeros(1, cfg.state_dim))
    noise = (torch.zeros(2, cfg.frame_tokens, cfg.token_dim), torch.zeros(2, cfg.chunk_size, cfg.action_dim))
    with pytest.raises(ValueError, match=r"contexts \[1\] were not started"):
        m.act(ctx, [0, 1], *noise)
    with pytest.raises(ValueError, match=r"contexts \[1\] were not started"):
        m.commit(ctx, [1], torch.zeros(1, cfg.chunk_size, cfg.action_dim), fr, torch.zeros(1, cfg.state_dim))
    with pytest.raises(ValueError, match="action noise must have shape"):
        m.act(ctx, [0], noise[0][:1], noise[1])


@pytest.mark.parametrize("mask", ["ik", "causal"])
def test_the_inference_context_runs_the_training_window(mask):
    """start + commits over a window's real frames, states and actions give the last block the
    outputs the training forward gives it: inference runs the layout and the mask training ran."""
    from par_agent.models import BlockSpec, Kind, window_layout

    m = tiny_model(attention_mask=mask)
    cfg = m.cfg
    T = cfg.history - 1  # no eviction yet
    b = synthetic_batch(cfg, B=1, T=T)
    with torch.no_grad():
        h = m._run_window(b)[3]
        ctx = m.new_contexts(1)
        m.start(ctx, [0], torch.zeros(1, dtype=torch.long), b["frames"][:, 0], b["state"][:, 0])
        for t in range(1, T):
            m.commit(ctx, [0], b["actions"][:, t - 1], b["frames"][:, t], b["state"][:, t])
    block, kind = window_layout(BlockSpec(cfg.frame_tokens, cfg.chunk_size, True, True), T)
    last = torch.arange(len(block)) == len(block) - 1
    kept = (block == T - 1) & ((kind == Kind.FRAME) | last)  # what a context keeps: the frames and the last token
    torch.testing.assert_close(ctx.hidden[0], h[0, kept], atol=1e-5, rtol=1e-5)


def test_discrete_action_ablation_learns_bins_and_acts_on_their_centres():
    """action_bins=16: cross-entropy over each dimension's bins on the action head's one pass; a tiny
    model fits a batch's actions to within a bin, and the policy path returns bin centres."""
    torch.manual_seed(0)
    m = tiny_model(randomize_zero_init=False, action_bins=16).train()
    m.action_norm.set_stats(-torch.ones(m.cfg.action_dim), torch.ones(m.cfg.action_dim))
    batch = synthetic_batch(m.cfg, B=2)
    opt = torch.optim.Adam([p for n, p in m.named_parameters() if not n.startswith("frame_tokenizer")], lr=3e-3)
    for _ in range(250):
        out = m(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    m.eval()
    got = m.sample_window(batch)["actions"]
    # bins are 0.125 wide: a uniform action is 0.031 from its bin's centre on average
    assert (got - batch["actions"]).abs().mean() < 0.05, (got - batch["actions"]).abs().mean()
    a, _, _ = rollout(m, True, 2)
    centres = (torch.arange(16) + 0.5) / 16 * 2 - 1
    assert torch.isclose(a.reshape(-1, 1), centres, atol=1e-5).any(-1).all()
    with pytest.raises(ValueError, match="action_bins must be 0"):
        tiny_model(action_bins=1)
