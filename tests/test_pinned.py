"""The shipped checkpoints, pinned: their actions on recorded observations, cached against uncached
on the policy's own path, and one known seed solved.

``tests/data/pinned_<name>.npz`` holds 64 control steps (8 chunks, past the first eviction) that the
policy saw and chose in its own env (``scripts/pin_policies.py``: seed 1,000,000, deterministic,
1 thread). A checkpoint with scrambled weights or statistics, a wrong rotary position, a cache that
keeps a stale row or a mask that lets a token see the future changes these actions by far more than
the tolerance below; float rounding from a reordered sum changes them by about 1e-6.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from par_agent import PARPolicy
from par_agent.hub import builtin_policies

DATA = Path(__file__).parent / "data"
ATOL = 2e-4  # actions are O(1) (normalised to [-1, 1] before unnormalising); rounding differs by ~1e-6


def pinned(name: str) -> dict[str, np.ndarray]:
    with np.load(DATA / f"pinned_{name}.npz") as z:
        return {k: z[k] for k in z.files}


def replay(policy: PARPolicy, rec: dict, starts: np.ndarray | None = None) -> np.ndarray:
    """Actions (T, Da) of ``policy`` fed the recorded observations one step at a time."""
    T = len(rec["rgb"])
    starts = np.arange(T) == 0 if starts is None else starts
    return np.stack([policy.predict({"rgb": rec["rgb"][t], "state": rec["state"][t]},
                                    episode_start=starts[t:t + 1], deterministic=True)[0] for t in range(T)])


def test_every_shipped_policy_is_pinned():
    assert sorted(builtin_policies()) == sorted(p.name[len("pinned_"):-len(".npz")] for p in DATA.glob("pinned_*.npz"))


@pytest.mark.parametrize("name", builtin_policies())
def test_shipped_checkpoint_repeats_its_recorded_actions(name):
    rec = pinned(name)
    got = replay(PARPolicy.from_pretrained(name, num_threads=1), rec)
    np.testing.assert_allclose(got, rec["actions"], atol=ATOL, rtol=0,
                               err_msg=f"{name} no longer repeats its pinned actions (scripts/pin_policies.py)")


def test_cached_equals_uncached_on_the_policys_path_with_staggered_resets():
    """Two envs in one policy, one model call per chunk: env 1 starts 20 steps late and is reset again
    at step 45, so the two contexts have different lengths in every call and both evict. The KV cache
    must give the actions of recomputing every context from scratch."""
    rec = pinned("par-pickcube")
    T = len(rec["rgb"])
    off = [np.arange(T), (np.arange(T) + 20) % T]
    seq = [{"rgb": np.stack([rec["rgb"][o[t]] for o in off]), "state": np.stack([rec["state"][o[t]] for o in off])}
           for t in range(T)]
    starts = [np.array([t == 0, t in (0, 20 + 5, 45)]) for t in range(T)]
    runs = {}
    for cache in (True, False):
        p = PARPolicy.from_pretrained("par-pickcube", num_threads=1, use_kv_cache=cache)
        runs[cache] = np.stack([p.predict(o, episode_start=s, deterministic=True)[0] for o, s in zip(seq, starts)])
        assert p.context.blocks.max() >= 2
    spread = np.ptp(runs[False], axis=0).max()
    assert spread > 0.1  # a real policy's actions move: the comparison below is not between constants
    np.testing.assert_allclose(runs[True], runs[False], atol=ATOL, rtol=0)
    # env 0 alone (its own policy) acts as it does beside env 1
    alone = replay(PARPolicy.from_pretrained("par-pickcube", num_threads=1), rec)
    np.testing.assert_allclose(runs[True][:, 0], alone, atol=ATOL, rtol=0)


@pytest.mark.slow
@pytest.mark.maniskill
def test_par_pushcube_solves_a_known_seed():
    """Seed 1,000,001 is solved in 63 steps in the shipped report (results/pushcube_cpu_1000demos_250ep.json)."""
    from par_agent.evaluate import evaluate

    report = evaluate(PARPolicy.from_pretrained("par-pushcube", num_threads=1), "PushCube-v1", [1_000_001],
                      progress=False)
    assert report["per_seed"][0]["success"], report["per_seed"]


@pytest.mark.maniskill
def test_par_stackcube_locator_places_the_cubes_it_sees():
    """par-stackcube's locator on first frames of its own env (seeds whose cubes the arm does not
    hide), against the simulator's cube positions: within 3 cm on average and 6 cm at worst per cube
    (held-out demos: 2.3 / 1.6 cm mean; a locator that outputs a constant is off by 10 cm and more)."""
    import torch

    from envs import make_env

    policy = PARPolicy.from_pretrained("par-stackcube", num_threads=1)
    env = make_env(policy.task, **policy.env_kwargs)
    base = env.unwrapped
    errors = []
    for offset in (0, 2, 5, 6, 7, 9):
        obs, _ = env.reset(seed=1_000_000 + offset)
        true = np.stack([np.asarray(base.cubeA.pose.p).reshape(-1, 3)[0], np.asarray(base.cubeB.pose.p).reshape(-1, 3)[0]])
        with torch.no_grad():
            pos, _ = policy.locator.locate(torch.from_numpy(obs["rgb"])[None], torch.from_numpy(obs["state"])[None])
        errors.append(np.linalg.norm(pos[0].numpy() - true, axis=1) * 100)  # cm, (cube A, cube B)
    env.close()
    errors = np.stack(errors)
    assert (errors.mean(0) <= 3.0).all() and (errors <= 6.0).all(), errors.round(2)


@pytest.mark.maniskill
def test_par_eval_outcomes_do_not_depend_on_how_many_envs_share_a_call(tmp_path):
    """par-eval with 1 and with 2 envs runs the same seeds to the same outcomes (a batch of 2 rounds
    differently from two batches of 1, so an episode may end a few steps earlier or later: PushCube
    ends when the pushed cube crosses the goal's edge, and how far a rounding difference moves that
    crossing depends on the CPU's kernels (seed 1,000,000: 71 against 74 steps on an AMD EPYC); the bound is one
    chunk of 8 actions)."""
    from par_agent.evaluate import run

    reports = {n: run(["--policy", "par-pushcube", "--episodes", "3", "--num-envs", str(n), "--threads", "1",
                       "--no-progress", "--out", str(tmp_path / f"r{n}.json")]) for n in (1, 2)}
    one, two = ({r["seed"]: r for r in reports[n]["per_seed"]} for n in (1, 2))
    assert one.keys() == two.keys() == {1_000_000, 1_000_001, 1_000_002}
    assert all(one[s]["success"] == two[s]["success"] for s in one), (one, two)
    assert all(abs(one[s]["length"] - two[s]["length"]) <= 8 for s in one), (one, two)
    assert sum(r["success"] for r in one.values()) >= 2  # real outcomes, not three failures alike


@pytest.mark.slow  # about a minute of compiling
def test_compiled_policy_repeats_the_pinned_actions():
    """compile=True: one env, so every chunk after the first goes through the compiled ChunkGraphs."""
    rec = pinned("par-pickcube")
    policy = PARPolicy.from_pretrained("par-pickcube", num_threads=1, compile=True)
    got = replay(policy, rec)
    assert policy.graphs is not None and policy.graphs.compiled
    np.testing.assert_allclose(got, rec["actions"], atol=ATOL, rtol=0)
