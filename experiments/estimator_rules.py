"""Rules on top of a located policy's state estimate: do they help, offline and in closed loop?

``--rule held`` (:func:`held_positions`): the gripper hides a cube it holds from the base camera,
where a locator is worst, while the arm's own state knows where the gripper is. Whenever the
fingers' summed opening says they are closed on something (between 3 and 6 cm; Panda's fingers on a
4 cm cube sum to 0.042 m, open to 0.08, closed on nothing to 0), the held object's position is the
gripper's (``extra/tcp_pose``); otherwise the located one stands. It reads the same step only.

``--rule median`` (:class:`RunningMedian`): an object that rests (StackCube's cube B) is where the
median of its located positions since the episode's start says, read at each chunk start; the
median restarts when ``patience`` reads in a row lie more than ``gate`` from it (the object was
moved). It keeps per-env state, reset with each env's episode.

Two modes, one rule against the policy as shipped:

* offline, on a privileged demo file's held-out episodes (``par-train``'s split): the held object's
  error (cm) located and with the rule, in all frames and in the frames it is carried;
* closed loop: a ``par-eval`` report of the policy with the rule, on the seeds given.

::

    python -m experiments.estimator_rules --rule held --policy par-stackcube --data PRIV.h5 --out results/x.json
    python -m experiments.estimator_rules --rule held --policy par-stackcube --seeds 2000000-2000049 \\
        --num-envs 2 --threads 2 --out results/y.json                                             # closed loop

A compact demo folder is read back to a ``.h5`` first (``par_agent.data.compact.import_compact``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

QPOS, TCP = slice(0, 9), slice(18, 21)  # the plain state's agent/qpos and extra/tcp_pose position (Panda)


def held_positions(plain: torch.Tensor, positions: torch.Tensor, obj: int = 0, joints: tuple = (7, 8),
                   width: tuple = (0.03, 0.06)) -> torch.Tensor:
    """Located positions (B, n, 3) with object ``obj``'s replaced by the gripper's position where the
    fingers (``joints`` of ``agent/qpos``) hold something; ``plain`` (B, Dp) as the locator reads it."""
    w = sum(plain[:, QPOS][:, j] for j in joints)
    holds = (w > width[0]) & (w < width[1])
    out = positions.clone()
    out[:, obj] = torch.where(holds[:, None], plain[:, TCP].to(positions.dtype), positions[:, obj])
    return out


def hold(locator, obj: str = "cubeA", **kw) -> None:
    """Make ``locator`` (a policy's ``ObjectLocator``) apply :func:`held_positions` to ``obj``."""
    names = [n for n, _ in locator.cfg.plain_fields]
    if names[:3] != ["agent/qpos", "agent/qvel", "extra/tcp_pose"]:
        raise SystemExit(f"the locator's plain state is {names}: this rule reads Panda's qpos, qvel, tcp_pose")
    k, located = locator.cfg.objects.index(obj), locator.locate

    def locate(frames, state):
        pos, yaw = located(frames, state)
        return held_positions(state.float(), pos, k, **kw), yaw

    locator.locate = locate


class RunningMedian:
    """Per env, the median of an object's located positions (3,) since its episode's start."""

    def __init__(self, gate: float = 0.04, patience: int = 3) -> None:
        self.gate, self.patience = gate, patience
        self.hist: dict[int, list] = {}
        self.far: dict[int, int] = {}

    def reset(self, env: int) -> None:
        self.hist[env], self.far[env] = [], 0

    def __call__(self, env: int, x: np.ndarray) -> np.ndarray:
        h = self.hist.setdefault(env, [])
        if h and np.linalg.norm(x - np.median(h, 0)) > self.gate:
            self.far[env] = self.far.get(env, 0) + 1
            if self.far[env] >= self.patience:
                self.reset(env)
                h = self.hist[env]
        else:
            self.far[env] = 0
        h.append(x)
        return np.median(h, 0)


def median(policy, obj: str = "cubeB", **kw) -> None:
    """Make ``policy`` (a located PARPolicy) read ``obj`` through a :class:`RunningMedian` per env."""
    loc = policy.locator
    k, located, new_chunks = loc.cfg.objects.index(obj), loc.locate, policy._new_chunks
    filt, served = RunningMedian(**kw), []

    def _new_chunks(envs, rgb, st, deterministic):
        for e, going in zip(envs, policy.context.started(envs)):
            if not going:
                filt.reset(e)
        served[:] = envs
        return new_chunks(envs, rgb, st, deterministic)

    def locate(frames, state):
        pos, yaw = located(frames, state)
        out = pos.clone()
        for j, e in enumerate(served):
            out[j, k] = torch.from_numpy(filt(e, pos[j, k].cpu().numpy())).to(pos)
        return out, yaw

    policy._new_chunks, loc.locate = _new_chunks, locate


def offline(policy, data: Path, obj: str, val_fraction: float, rule: str, chunk: int) -> dict:
    from experiments.locator_filter import cm_summary, locate_episode
    from par_agent.data.dataset import split_episodes
    from par_agent.locate import load_demos, plain_columns

    loc = policy.locator
    episodes, full, _, _ = load_demos(data, list(loc.cfg.objects), "base_camera", progress=False)
    cols = plain_columns(full, list(loc.cfg.plain_fields))
    k = loc.cfg.objects.index(obj)
    errs: dict = {ph: {f: [] for f in ("located", "rule")} for ph in ("all", "carried")}
    for i in split_episodes([e["name"] for e in episodes], val_fraction)[1]:
        ep = episodes[i]
        n = min(len(ep["frames"]), len(ep["full"]))
        plain = ep["full"][:n, cols].astype(np.float32)
        raw = locate_episode(loc, ep["frames"][:n], plain)
        if rule == "held":
            ruled = held_positions(torch.from_numpy(plain), torch.from_numpy(raw), k).numpy()[:, k]
            est = raw[:, k]
        else:  # read at chunk starts, as the policy reads the locator
            starts = (np.arange(n) // chunk) * chunk
            est = raw[starts, k]
            filt = RunningMedian()
            per_chunk = {t: filt(0, raw[t, k]) for t in range(0, n, chunk)}
            ruled = np.stack([per_chunk[t] for t in starts])
        truth = ep["poses"][:n, k, :3]
        # carried: moved from its start and within 3 cm of the gripper (ManiSkill's labels)
        carried = (np.linalg.norm(truth - truth[0], axis=-1) > 0.01) & (np.linalg.norm(truth - plain[:, TCP], axis=-1) < 0.03)
        for f, e in (("located", est), ("rule", ruled)):
            d = np.linalg.norm(e - truth, axis=-1) * 100
            errs["all"][f].extend(d.tolist())
            errs["carried"][f].extend(d[carried].tolist())
    report = {"rule": rule, "object": obj, "data": str(data), "frames": {}}
    for ph, by in errs.items():
        if not by["located"]:
            continue
        report["frames"][ph] = {"n": len(by["located"]), **{f: cm_summary(v) for f, v in by.items()}}
        print(ph, json.dumps(report["frames"][ph]))
    return report


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default="par-stackcube", help="a located policy (par-locate's OUT/final or a name)")
    p.add_argument("--rule", choices=["held", "median"], default="held")
    p.add_argument("--object", default=None, help="default: cubeA for held, cubeB for median")
    p.add_argument("--data", type=Path, help="offline: the privileged demo .h5 its locator was trained on")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seeds", help="closed loop: 'A-B' or 'a,b,c'")
    p.add_argument("--num-envs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if (a.data is None) == (a.seeds is None):
        p.error("give --data (offline) or --seeds (closed loop)")
    torch.set_num_threads(a.threads)
    from par_agent import PARPolicy
    from par_agent.evaluate import evaluate_to, parse_seeds

    policy = PARPolicy.from_pretrained(a.policy, num_threads=a.threads)
    if policy.locator is None:
        raise SystemExit(f"{a.policy} has no locator")
    obj = a.object or {"held": "cubeA", "median": "cubeB"}[a.rule]
    if a.data is not None:
        report = offline(policy, a.data, obj, a.val_fraction, a.rule, policy.action_horizon)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(report, indent=2) + "\n")
        return report
    hold(policy.locator, obj) if a.rule == "held" else median(policy, obj)
    seeds = parse_seeds(a.seeds, 0)
    run_id = {"policy": a.policy, "rule": a.rule, "object": obj, "seeds": seeds, "num_envs": a.num_envs,
              "threads": a.threads}
    report = evaluate_to(a.out, run_id, {"policy": {"name": a.policy, "rule": a.rule, "object": obj, "threads": a.threads}},
                         policy, policy.task, seeds, num_envs=a.num_envs)
    print(f"success {report['success_rate']:.1%} of {report['n_episodes']}; reached {report['subgoal_rates']}")
    return report


if __name__ == "__main__":
    main()
