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

``--rule both`` (:func:`filtered`): every located object through its running median, and cube A at the
gripper while the fingers hold it (its median restarting meanwhile). Before the grasp, cube A rests
too, and the arm that reaches for it hides it from the base camera just when its place matters most.

Two modes, one rule against the policy as shipped:

* offline, on a privileged demo file's held-out episodes (``par-train``'s split): each touched
  object's error (cm) located and with the rule, in all frames, before it first moves and while it
  is carried;
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


def held_mask(plain: torch.Tensor, joints: tuple = (7, 8), width: tuple = (0.03, 0.06)) -> torch.Tensor:
    """(B,) whether the fingers (``joints`` of ``agent/qpos``) hold something, from ``plain`` (B, Dp)."""
    w = sum(plain[:, QPOS][:, j] for j in joints)
    return (w > width[0]) & (w < width[1])


def held_positions(plain: torch.Tensor, positions: torch.Tensor, obj: int = 0, joints: tuple = (7, 8),
                   width: tuple = (0.03, 0.06)) -> torch.Tensor:
    """Located positions (B, n, 3) with object ``obj``'s replaced by the gripper's position where the
    fingers (``joints`` of ``agent/qpos``) hold something; ``plain`` (B, Dp) as the locator reads it."""
    holds = held_mask(plain, joints, width)
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


def filtered(policy, resting: tuple = ("cubeB",), held: str | None = None, **kw) -> None:
    """Make ``policy`` (a located PARPolicy) read each object of ``resting`` through a
    :class:`RunningMedian` per env, and ``held`` (if given) at the gripper while the fingers hold it
    (:func:`held_positions`; its median restarts meanwhile, so that it starts afresh where it is put down)."""
    loc = policy.locator
    names = [n for n, _ in loc.cfg.plain_fields]
    if held is not None and names[:3] != ["agent/qpos", "agent/qvel", "extra/tcp_pose"]:
        raise SystemExit(f"the locator's plain state is {names}: the held rule reads Panda's qpos, qvel, tcp_pose")
    idx = {o: loc.cfg.objects.index(o) for o in {*resting, *([held] if held else [])}}
    located, new_chunks = loc.locate, policy._new_chunks
    filts, served = {o: RunningMedian(**kw) for o in resting}, []

    def _new_chunks(envs, rgb, st, deterministic):
        for e, going in zip(envs, policy.context.started(envs)):
            if not going:
                for f in filts.values():
                    f.reset(e)
        served[:] = envs
        return new_chunks(envs, rgb, st, deterministic)

    def locate(frames, state):
        pos, yaw = located(frames, state)
        out = pos.clone()
        holds = held_mask(state.float()) if held is not None else torch.zeros(len(pos), dtype=torch.bool)
        for j, e in enumerate(served):
            for o, f in filts.items():
                if o == held and holds[j]:
                    f.reset(e)
                else:
                    out[j, idx[o]] = torch.from_numpy(f(e, pos[j, idx[o]].cpu().numpy())).to(pos)
            if held is not None and holds[j]:
                out[j, idx[held]] = state[j, TCP].to(pos)
        return out, yaw

    policy._new_chunks, loc.locate = _new_chunks, locate


def median(policy, obj: str = "cubeB", **kw) -> None:
    """Make ``policy`` read ``obj`` through a :class:`RunningMedian` per env (``--rule median``)."""
    filtered(policy, resting=(obj,), **kw)


def replay(raw: np.ndarray, plain: np.ndarray, chunk: int, objects: tuple, resting: tuple,
           held: str | None) -> np.ndarray:
    """One episode's estimates as the closed-loop rules give them at each chunk start, held over the chunk.

    raw (T, n, 3) located positions, plain (T, Dp) -> (T, n, 3)."""
    starts = np.arange(0, len(raw), chunk)
    holds = held_mask(torch.from_numpy(plain[starts])).numpy() if held else np.zeros(len(starts), bool)
    filts = {o: RunningMedian() for o in resting}
    out = raw[starts].copy()
    for s, t in enumerate(starts):
        for o, f in filts.items():
            k = objects.index(o)
            if o == held and holds[s]:
                f.reset(0)
            else:
                out[s, k] = f(0, raw[t, k])
        if held and holds[s]:
            out[s, objects.index(held)] = plain[t, TCP]
    return out[np.arange(len(raw)) // chunk]


def offline(policy, data: Path, obj: str, val_fraction: float, rule: str, chunk: int) -> dict:
    """Held-out error (cm) located and with ``rule``, per object the rule touches, in all frames, the
    frames before the object first moves and those it is carried in."""
    from experiments.locator_filter import cm_summary, locate_episode
    from par_agent.data.dataset import split_episodes
    from par_agent.locate import load_demos, plain_columns

    loc = policy.locator
    objects = tuple(loc.cfg.objects)
    episodes, full, _, _ = load_demos(data, list(objects), "base_camera", progress=False)
    cols = plain_columns(full, list(loc.cfg.plain_fields))
    touched = list(objects) if rule == "both" else [obj]
    phases = ("all", "before_moving", "carried")
    errs: dict = {o: {ph: {f: [] for f in ("located", "rule")} for ph in phases} for o in touched}
    for i in split_episodes([e["name"] for e in episodes], val_fraction)[1]:
        ep = episodes[i]
        n = min(len(ep["frames"]), len(ep["full"]))
        plain = ep["full"][:n, cols].astype(np.float32)
        raw = locate_episode(loc, ep["frames"][:n], plain)
        if rule == "held":  # every frame
            ruled, est = held_positions(torch.from_numpy(plain), torch.from_numpy(raw), objects.index(obj)).numpy(), raw
        else:  # read at chunk starts, as the policy reads the locator
            est = raw[(np.arange(n) // chunk) * chunk]
            ruled = replay(raw, plain, chunk, objects, *((objects, "cubeA") if rule == "both" else ((obj,), None)))
        for o in touched:
            k = objects.index(o)
            truth = ep["poses"][:n, k, :3]
            moved = np.linalg.norm(truth - truth[0], axis=-1) > 0.01
            # carried: moved from its start and within 3 cm of the gripper (ManiSkill's labels)
            mask = {"all": np.ones(n, bool), "before_moving": np.cumsum(moved) == 0,
                    "carried": moved & (np.linalg.norm(truth - plain[:, TCP], axis=-1) < 0.03)}
            for f, e in (("located", est[:, k]), ("rule", ruled[:, k])):
                d = np.linalg.norm(e - truth, axis=-1) * 100
                for ph in phases:
                    errs[o][ph][f].extend(d[mask[ph]].tolist())
    report = {"rule": rule, "objects": touched, "data": str(data), "frames": {}}
    for o in touched:
        for ph, by in errs[o].items():
            if by["located"]:
                report["frames"][f"{o}/{ph}"] = {"n": len(by["located"]), **{f: cm_summary(v) for f, v in by.items()}}
                print(f"{o}/{ph}", json.dumps(report["frames"][f"{o}/{ph}"]))
    return report


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default="par-stackcube", help="a located policy (par-locate's OUT/final or a name)")
    p.add_argument("--rule", choices=["held", "median", "both"], default="held")
    p.add_argument("--object", default=None, help="default: cubeA for held, cubeB for median (both: cubeA held, all medians)")
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
    obj = a.object or {"held": "cubeA", "median": "cubeB", "both": "cubeA"}[a.rule]
    if a.data is not None:
        report = offline(policy, a.data, obj, a.val_fraction, a.rule, policy.action_horizon)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(report, indent=2) + "\n")
        return report
    if a.rule == "held":
        hold(policy.locator, obj)
    elif a.rule == "median":
        median(policy, obj)
    else:
        filtered(policy, resting=tuple(policy.locator.cfg.objects), held=obj)
    seeds = parse_seeds(a.seeds, 0)
    run_id = {"policy": a.policy, "rule": a.rule, "object": obj, "seeds": seeds, "num_envs": a.num_envs,
              "threads": a.threads}
    report = evaluate_to(a.out, run_id, {"policy": {"name": a.policy, "rule": a.rule, "object": obj, "threads": a.threads}},
                         policy, policy.task, seeds, num_envs=a.num_envs)
    print(f"success {report['success_rate']:.1%} of {report['n_episodes']}; reached {report['subgoal_rates']}")
    return report


if __name__ == "__main__":
    main()
