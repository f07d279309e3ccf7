"""ChunkGraphs: the static-buffer act/commit bodies (captured as CUDA graphs on a GPU) give the eager
path's numbers, through evictions, and refuse what they cannot serve."""
import pytest
import torch

from helpers import tiny_model
from par_agent.models.graphs import ChunkGraphs


def _rollout(model, graphs: bool, steps: int, B: int = 3, seed: int = 0, compile: bool = False):
    """Actions and imagined frames of a lockstep rollout with fixed noise and observations, and how
    many commits the graphs served."""
    cfg, dev = model.cfg, model.device
    g = torch.Generator().manual_seed(seed)
    obs = lambda: (torch.randint(0, 256, (B, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=g).to(dev),  # noqa: E731
                   torch.randn(B, cfg.state_dim, generator=g).to(dev))
    ctx, rows = model.new_contexts(B), list(range(B))
    cg = ChunkGraphs(model, ctx, compile=compile) if graphs else None
    model.start(ctx, rows, torch.zeros(B, dtype=torch.long, device=dev), *obs())
    acts, frames, served = [], [], 0
    for _ in range(steps):
        noise = (torch.randn(B, cfg.frame_tokens, cfg.token_dim, generator=g).to(dev),
                 torch.randn(B, cfg.chunk_size, cfg.action_dim, generator=g).to(dev))
        a, f = cg.act(*noise) if cg else model.act(ctx, rows, *noise)
        acts.append(a)
        frames.append(f)
        o = obs()
        if cg and cg.commit(a, *o):
            served += 1
        else:
            model.commit(ctx, rows, a, *o)
    return torch.stack(acts), torch.stack(frames), served


@pytest.mark.parametrize("cache", [True, False])
def test_graph_bodies_match_the_eager_calls_through_evictions(cache):
    model = tiny_model().eval()
    model.set_runtime(use_kv_cache=cache)
    steps = 3 * model.cfg.history  # several evictions, served by the eager commit in between
    a_eager, f_eager, _ = _rollout(model, False, steps)
    a_graph, f_graph, served = _rollout(model, True, steps)
    assert 0 < served < steps - 1, served  # both paths ran
    tol = 1e-5 if model.device.type == "cpu" else 1e-3
    torch.testing.assert_close(a_graph, a_eager, atol=tol, rtol=tol)
    torch.testing.assert_close(f_graph, f_eager, atol=tol, rtol=tol)


@pytest.mark.slow  # about a minute of compiling
def test_bodies_compiled_whole_on_the_cpu_match_the_eager_calls():
    """compile=True: each body one inductor graph (no break: the sampler is plain arithmetic)."""
    import torch._dynamo

    model = tiny_model().eval()
    steps = 2 * model.cfg.history
    a_eager, f_eager, _ = _rollout(model, False, steps)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=False):
        a_comp, f_comp, served = _rollout(model, True, steps, compile=True)
    assert served > 0
    counts = torch._dynamo.utils.counters["stats"]
    assert counts["unique_graphs"] >= 2
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    torch.testing.assert_close(a_comp, a_eager, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(f_comp, f_eager, atol=1e-4, rtol=1e-4)


def test_graphs_refuse_started_contexts_and_unstarted_rows():
    model = tiny_model().eval()
    cfg, dev = model.cfg, model.device
    ctx = model.new_contexts(2)
    cg = ChunkGraphs(model, ctx)
    noise = (torch.zeros(2, cfg.frame_tokens, cfg.token_dim, device=dev), torch.zeros(2, cfg.chunk_size, cfg.action_dim, device=dev))
    with pytest.raises(ValueError, match="start them all"):
        cg.act(*noise)
    model.start(ctx, [0, 1], torch.zeros(2, dtype=torch.long, device=dev),
                torch.zeros(2, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8, device=dev),
                torch.zeros(2, cfg.state_dim, device=dev))
    with pytest.raises(ValueError, match="noise must have shapes"):
        cg.act(noise[0][:1], noise[1])
    with pytest.raises(ValueError, match="fresh contexts"):
        ChunkGraphs(model, ctx)
