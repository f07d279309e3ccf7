"""A diffusers sampler's few deterministic steps as fixed linear combinations.

With no thresholding and no added noise, DDIM (eta 0) and DPM-Solver++ (multistep) are linear:
each step's sample is a fixed weighted sum of the initial noise and the model outputs so far, with
weights that depend only on the schedule and the step count. :class:`LinearSteps` reads those weights
off the ``diffusers`` scheduler itself, once per step count, by running its own loop on scalar
probes (one unit input at a time); sampling is then plain tensor arithmetic: no scheduler state, no
step counter, no host-side tables. That is what lets a whole chunk compile (inductor) or be captured
as one CUDA graph without the scheduler's per-step Python, and the schedule stays the library's.

A scheduler whose step is not linear in these inputs (thresholding, a stochastic variant) is refused
at construction: a random probe is checked against the sum of the unit probes.
"""
from __future__ import annotations

import copy
import random
from typing import Callable

import torch


def _run_probe(sched, steps: int, noise: float, outputs: list[float]) -> list[float]:
    """The scheduler's own loop on (1, 1, 1) inputs (a batch of one with one channel and one value), with the model's outputs replayed from
    ``outputs``: returns the sample before each step and after the last (steps + 1 values)."""
    sched.set_timesteps(steps)
    x = torch.full((1, 1, 1), noise, dtype=torch.float64) * sched.init_noise_sigma
    xs = [x.item()]
    for k, t in enumerate(sched.timesteps.tolist()):
        x = sched.step(torch.full((1, 1, 1), outputs[k], dtype=torch.float64), t, x).prev_sample
        xs.append(x.item())
    return xs


class LinearSteps:
    """``steps`` deterministic sampling steps of ``scheduler`` (a diffusers scheduler; it is copied,
    not changed) as weights: the sample before step k is ``weights[k][0] * noise + sum_j
    weights[k][1 + j] * output_j`` over the model outputs j < k.

    Attributes:
        timesteps: the model's timestep at each step, ``steps`` ints.
        weights: ``steps + 1`` rows; row k has k + 1 floats.
    """

    def __init__(self, scheduler, steps: int, check_tol: float = 1e-5) -> None:
        sched = copy.deepcopy(scheduler)
        sched.set_timesteps(steps)
        self.timesteps: list[int] = [int(t) for t in sched.timesteps.tolist()]
        S = len(self.timesteps)
        unit = lambda i: [1.0 if j == i else 0.0 for j in range(S + 1)]  # noqa: E731
        cols = [_run_probe(sched, S, u[0], u[1:]) for u in map(unit, range(S + 1))]  # cols[i][k]
        self.weights: list[list[float]] = [[cols[i][k] for i in range(k + 1)] for k in range(S + 1)]
        # the step must be linear in (noise, outputs): a random probe, large enough to reach any clipping
        # or thresholding, equals its weighted sum
        rng = random.Random(0)  # not torch.randn: the probe is host arithmetic and must not touch the model's RNG
        probe = [10 * rng.gauss(0.0, 1.0) for _ in range(S + 1)]
        got = _run_probe(sched, S, probe[0], probe[1:])
        for k in range(S + 1):
            want = sum(w * p for w, p in zip(self.weights[k], probe))
            scale = sum(abs(w * p) for w, p in zip(self.weights[k], probe))  # float32 rounding grows with it
            bad = [cols[i][k] for i in range(k + 1, S + 1) if cols[i][k] != 0.0]  # a later output cannot count
            if abs(got[k] - want) > check_tol * max(1.0, scale) or bad:
                raise ValueError(f"{type(scheduler).__name__} is not a linear deterministic sampler (step {k}): "
                                 "use DDIM with eta 0 or DPM-Solver++ without thresholding")

    def __len__(self) -> int:
        return len(self.timesteps)

    def sample(self, net: Callable, noise: torch.Tensor, cond: dict) -> torch.Tensor:
        """Run the steps from ``noise`` (N, L, C): ``net(x, t, cond)`` with t (N,) int64 timesteps
        returns the model output (N, L, C). Returns the last sample (N, L, C)."""
        n = noise.shape[0]
        x, outputs = self.weights[0][0] * noise, []
        for k, t in enumerate(self.timesteps):
            tt = torch.full((n,), t, dtype=torch.long, device=noise.device)
            outputs.append(net(x, tt, cond))
            w = self.weights[k + 1]
            x = w[0] * noise
            for wj, out in zip(w[1:], outputs):
                if wj != 0.0:
                    x = x + wj * out
        return x
