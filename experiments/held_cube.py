"""Does placing a held cube at the gripper, instead of where the locator sees it, help a located policy?

The gripper hides a cube it holds from the base camera, where a locator is worst, while the arm's own
state knows where the gripper is. The rule (:func:`held_positions`): whenever the fingers' summed
opening says they are closed on something (between ``--width`` bounds; Panda's fingers on a 4 cm cube
sum to 0.042 m, open to 0.08, closed on nothing to 0), the held object's position is the gripper's
(``extra/tcp_pose``); otherwise the located one stands. It reads the plain state of the same step
only, so the policy keeps no estimator state between steps.

Two modes, one change against the policy as shipped:

* offline, on a privileged demo file's held-out episodes (``par-train``'s split): the held object's
  error (cm) located and with the rule, in all frames and in the frames it is carried;
* closed loop: a ``par-eval`` report of the policy with the rule, on the seeds given.

::

    python -m experiments.held_cube --policy par-stackcube --data PRIV.h5 --out results/x.json   # offline
    python -m experiments.held_cube --policy par-stackcube --seeds 2000000-2000049 --num-envs 2 --threads 2 \\
        --out results/y.json                                                                      # closed loop

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


def offline(policy, data: Path, obj: str, val_fraction: float) -> dict:
    from experiments.locator_filter import locate_episode
    from par_agent.data.dataset import split_episodes
    from par_agent.locate import load_demos, plain_columns

    loc = policy.locator
    episodes, full, _, _ = load_demos(data, list(loc.cfg.objects), "base_camera", progress=False)
    cols = plain_columns(full, list(loc.cfg.plain_fields))
    k = loc.cfg.objects.index(obj)
    errs: dict = {ph: {f: [] for f in ("located", "held rule")} for ph in ("all", "carried")}
    for i in split_episodes([e["name"] for e in episodes], val_fraction)[1]:
        ep = episodes[i]
        n = min(len(ep["frames"]), len(ep["full"]))
        plain = ep["full"][:n, cols].astype(np.float32)
        raw = locate_episode(loc, ep["frames"][:n], plain)
        rule = held_positions(torch.from_numpy(plain), torch.from_numpy(raw), k).numpy()
        truth = ep["poses"][:n, k, :3]
        # carried: moved from its start and within 3 cm of the gripper (ManiSkill's labels)
        carried = (np.linalg.norm(truth - truth[0], axis=-1) > 0.01) & (np.linalg.norm(truth - plain[:, TCP], axis=-1) < 0.03)
        for f, est in (("located", raw[:, k]), ("held rule", rule[:, k])):
            d = np.linalg.norm(est - truth, axis=-1) * 100
            errs["all"][f].extend(d.tolist())
            errs["carried"][f].extend(d[carried].tolist())
    report = {"object": obj, "data": str(data), "frames": {}}
    for ph, by in errs.items():
        report["frames"][ph] = {"n": len(by["located"]), **{f: {
            "cm_mean": round(float(np.mean(v)), 2), "cm_median": round(float(np.median(v)), 2),
            "cm_p90": round(float(np.quantile(v, 0.9)), 2)} for f, v in by.items()}}
        print(ph, json.dumps(report["frames"][ph]))
    return report


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default="par-stackcube", help="a located policy (par-locate's OUT/final or a name)")
    p.add_argument("--object", default="cubeA")
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
    if a.data is not None:
        report = offline(policy, a.data, a.object, a.val_fraction)
        if a.out:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(report, indent=2) + "\n")
        return report
    hold(policy.locator, a.object)
    seeds = parse_seeds(a.seeds, 0)
    run_id = {"policy": a.policy, "held": a.object, "seeds": seeds, "num_envs": a.num_envs, "threads": a.threads}
    report = evaluate_to(a.out, run_id, {"policy": {"name": a.policy, "held": a.object, "threads": a.threads}},
                         policy, policy.task, seeds, num_envs=a.num_envs)
    print(f"success {report['success_rate']:.1%} of {report['n_episodes']}; reached {report['subgoal_rates']}")
    return report


if __name__ == "__main__":
    main()
