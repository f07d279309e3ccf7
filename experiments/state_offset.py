"""How far off may a policy's object positions be? Evaluate a policy fine-tuned with privileged task
state (``python -m par_agent.data.privileged``) while each named object's position in that state is
off by a fixed distance, as a cube locator's error would be.

At the start of every episode each object in ``--objects`` gets a horizontal offset of length
``--offset-cm`` in a random direction, kept for the whole episode; every field that holds the
object's position moves with it, by ManiSkill's field names: ``O_pose`` (its first 3 numbers),
``tcp_to_O_pos`` (+offset), ``X_to_O_pos`` (+offset of O, -offset of X). The episodes run through
``par-eval``'s loop on its seeds, in the ``rgb+state_dict`` env, and the report is a par-eval report::

    python experiments/state_offset.py --policy runs/priv/stackcube/finetune/final --task StackCube-v1 \
        --objects cubeA cubeB --offset-cm 2 --episodes 50 --out results/stackcube_privileged_offset2cm.json
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

import numpy as np

from par_agent.evaluate import DEFAULT_SEED_START, evaluate_to


def offset_columns(task: str, objects: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """For each object, the state columns its xy offset moves and the sign it moves them with:
    ``{object: [(column, +1 or -1), ...]}`` (x and y columns both listed), in the layout of
    ``make_env(task, obs_mode="rgb+state_dict")``'s state."""
    from envs.state import task_state_fields

    sizes = [(name.split("/", 1)[1], size) for name, size in task_state_fields(task)]
    start, cols = 0, {o: [] for o in objects}
    for name, size in sizes:
        for o in objects:
            if name == f"{o}_pose" or (name.endswith(f"_to_{o}_pos") and size == 3):  # tcp_to_O, X_to_O
                cols[o] += [(start, 1.0), (start + 1, 1.0)]
            elif name.startswith(f"{o}_to_") and name.endswith("_pos") and size == 3:
                cols[o] += [(start, -1.0), (start + 1, -1.0)]
        start += size
    missing = [o for o, c in cols.items() if not c]
    if missing:
        raise ValueError(f"no privileged field of {task} holds the position of {missing}; "
                         f"its fields: {[n for n, _ in sizes]}")
    return cols


class OffsetStatePolicy:
    """Wraps a policy: before each ``predict``, the state columns of ``columns`` are moved by each
    env's current per-object offsets, drawn anew (length ``radius`` metres, random direction) for
    every env whose ``episode_start`` is set. Everything else is the wrapped policy's."""

    def __init__(self, policy: Any, columns: dict[str, list[tuple[int, float]]], radius: float, seed: int = 0):
        self.policy, self.columns, self.radius = policy, columns, radius
        self.rng = np.random.default_rng(seed)
        self.offsets: np.ndarray | None = None  # (n_envs, n_objects, 2)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)

    def predict(self, obs: dict, state: Any = None, episode_start: Any = None, deterministic: bool = True):
        s = np.array(obs["state"], dtype=np.float32, copy=True)
        n = s.shape[0]
        draw = np.asarray(episode_start if episode_start is not None else False, dtype=bool).reshape(-1)
        if self.offsets is None or len(self.offsets) != n:
            self.offsets = np.zeros((n, len(self.columns), 2))
            draw = np.ones(n, dtype=bool)  # first call: every env needs an offset
        for i in np.flatnonzero(draw):
            angle = self.rng.uniform(0, 2 * np.pi, size=len(self.columns))
            self.offsets[i] = self.radius * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        for k, cols in enumerate(self.columns.values()):
            for j, (c, sign) in enumerate(cols):
                s[:, c] += sign * self.offsets[:, k, j % 2]
        return self.policy.predict({**obs, "state": s}, state, episode_start, deterministic)


def main(argv: list[str] | None = None) -> dict:
    from par_agent import PARPolicy

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, help="a policy fine-tuned on a privileged copy of the demos")
    p.add_argument("--task", default=None, help="default: the policy's")
    p.add_argument("--objects", nargs="+", default=["cubeA", "cubeB"])
    p.add_argument("--offset-cm", type=float, required=True, help="length of each object's offset, cm")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--num-envs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seed of the offsets' directions")
    p.add_argument("--out", help="the report (resumes from OUT.episodes.jsonl)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.offset_cm < 0:
        raise SystemExit(f"--offset-cm must be >= 0, got {a.offset_cm}")
    policy = PARPolicy.from_pretrained(a.policy, num_threads=a.threads)
    task = a.task or policy.task
    wrapped = OffsetStatePolicy(policy, offset_columns(task, a.objects), a.offset_cm / 100, a.seed)
    seeds = [DEFAULT_SEED_START + j for j in range(a.episodes)]
    run_id = {"policy": a.policy, "task": task, "objects": a.objects, "offset_cm": a.offset_cm, "seed": a.seed,
              "num_envs": a.num_envs, "threads": a.threads}
    report = evaluate_to(a.out, run_id, {"state_offset": run_id}, wrapped, task, seeds, progress=not a.no_progress,
                         num_envs=a.num_envs, obs_mode="rgb+state_dict")
    lo, hi = report["ci95"]
    print(f"{task}, {a.objects} off by {a.offset_cm} cm: success {report['success_rate']:.0%} ({lo:.0%}-{hi:.0%}) "
          f"of {len(seeds)}; sub-goals {report['subgoal_rates']}")
    return report


if __name__ == "__main__":
    main()
