"""The sampler as fixed weights (models/sampling.py) against diffusers' own step loop."""
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from par_agent.models.heads import Diffusion
from par_agent.models.sampling import LinearSteps


def _net(dtype=torch.float32):
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.3
    return lambda x, t, cond: torch.tanh(x @ w.to(x.dtype)) + cond["b"] + t[:, None, None].to(x.dtype) / 1000


def _diffusers_loop(sched, net, noise, cond, steps):
    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps.tolist():
        x = sched.step(net(x, torch.full((len(x),), t), cond), t, x).prev_sample
    return x


@pytest.mark.parametrize("sampler", ["dpmsolver", "ddim"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("steps", [1, 2, 6, 20])
def test_linear_steps_repeat_the_schedulers_own_loop(sampler, prediction, steps):
    d = Diffusion(1000, "squaredcos_cap_v2", prediction, sampler)
    noise = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))
    cond = {"b": torch.full((3, 5, 8), 0.1)}
    got = d.sample(_net(), noise, cond, steps)
    want = _diffusers_loop(d.sample_sched, _net(), noise, cond, steps)
    # epsilon-prediction under DPM-Solver++ divides by alpha ~ 1e-4 at t = 999, so both float32 runs
    # round at the scale of their large intermediates: compare against that scale
    scale = max(1.0, want.abs().max().item())
    assert (got - want).abs().max().item() <= 2e-5 * scale * max(1.0, 1e3 * (prediction == "epsilon" and sampler == "dpmsolver"))
    assert len(d.steps(steps)) == len(d.sample_sched.timesteps)


def test_linear_steps_are_closer_to_float64_than_the_float32_scheduler():
    """Where float32 rounding matters (epsilon, DPM-Solver++), the weights (read in float64) lose
    no more than diffusers' own float32 step."""
    d = Diffusion(1000, "squaredcos_cap_v2", "epsilon", "dpmsolver")
    noise = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cond = {"b": torch.zeros(3, 5, 8, dtype=torch.float64)}
    ref = d.sample(_net(), noise, cond, 6)
    ours = (d.sample(_net(), noise.float(), {"b": cond["b"].float()}, 6) - ref).abs().max()
    theirs = (_diffusers_loop(d.sample_sched, _net(), noise.float(), {"b": cond["b"].float()}, 6) - ref).abs().max()
    assert ours <= theirs


def test_a_nonlinear_scheduler_is_refused():
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                        prediction_type="v_prediction", thresholding=True)
    with pytest.raises(ValueError, match="not a linear deterministic sampler"):
        LinearSteps(sched, 6)
    clipped = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    with pytest.raises(ValueError, match="DDIMScheduler is not a linear"):
        LinearSteps(clipped, 6)


def test_the_scheduler_given_is_not_changed():
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    sched.set_timesteps(10)
    LinearSteps(sched, 6)
    assert len(sched.timesteps) == 10
