"""How much of each task object the camera shows in the first frame of par-eval's seeds, and how the
outcomes of evaluation reports split by it.

Resets the task at ``par-eval``'s seeds (1,000,000 + j) with the camera of ``--camera-size`` /
``--camera-fov`` (a checkpoint's are in its ``env_kwargs``), counts each object's pixels in the first frame with ManiSkill's
segmentation, and calls an object *hidden* when it shows fewer than ``--hidden-below`` times its
median count over the seeds (the arm at its rest pose can cover a cube entirely, and a narrow view
can cut one off). Given ``par-eval`` reports, it prints how often a sub-goal was reached on the seeds
where the first object is hidden and on the others::

    python experiments/cube_visibility.py --task StackCube-v1 --camera-fov 0.8 --seeds 50 \
        --objects cubeA cubeB --reports results/stackcube_cpu_fov08_ee*.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from par_agent.atomic import atomic_file
from par_agent.evaluate import DEFAULT_SEED_START


def visible_pixels(task: str, objects: Sequence[str], seeds: Sequence[int], camera_size: int = 64,
                   camera_fov: float | None = None, camera: str = "base_camera") -> np.ndarray:
    """(len(seeds), len(objects)) int: each object's pixels in ``camera``'s first frame after
    ``reset(seed)``; ``objects`` are attributes of the unwrapped env (ManiSkill actors)."""
    from envs import gym_make, sensor_configs

    env = gym_make(task, obs_mode="rgb+segmentation", sim_backend="cpu",
                   sensor_configs=sensor_configs(camera_size, camera_fov, (camera,)))
    try:
        base = env.unwrapped
        missing = [o for o in objects if not hasattr(base, o)]
        if missing:
            raise ValueError(f"{task} has no object(s) {missing}; e.g. StackCube-v1: cubeA cubeB, PickCube-v1: cube")
        ids = [int(getattr(base, o).per_scene_id.reshape(-1)[0]) for o in objects]
        out = np.zeros((len(seeds), len(objects)), dtype=np.int64)
        for i, s in enumerate(seeds):
            obs, _ = env.reset(seed=int(s))
            seg = np.asarray(obs["sensor_data"][camera]["segmentation"]).reshape(camera_size, camera_size)
            out[i] = [(seg == k).sum() for k in ids]
        return out
    finally:
        env.close()


def split_outcomes(report: dict, hidden_seeds: set[int], subgoal: str) -> dict:
    """How often ``subgoal`` (or ``success``) was reached on ``hidden_seeds`` and on the report's other seeds."""
    def reached(e: dict) -> bool:
        return bool(e["success"]) if subgoal == "success" else bool(e.get("reached", {}).get(subgoal, False))

    rows = report["per_seed"]
    hid = [reached(e) for e in rows if e["seed"] in hidden_seeds]
    vis = [reached(e) for e in rows if e["seed"] not in hidden_seeds]
    return {"hidden": [sum(hid), len(hid)], "visible": [sum(vis), len(vis)]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="StackCube-v1")
    p.add_argument("--objects", nargs="+", default=["cubeA", "cubeB"], help="env attributes to count")
    p.add_argument("--seeds", type=int, default=50, help="par-eval's first N seeds")
    p.add_argument("--camera-size", type=int, default=64)
    p.add_argument("--camera-fov", type=float, default=None, help="radians (default: the task's)")
    p.add_argument("--hidden-below", type=float, default=0.25,
                   help="hidden: fewer pixels than this fraction of the object's median count")
    p.add_argument("--reports", nargs="*", default=[], help="par-eval reports to split by the first object's visibility")
    p.add_argument("--subgoal", default="is_cubeA_grasped", help="a report's sub-goal, or 'success'")
    p.add_argument("--out", help="also write the figures as JSON here")
    a = p.parse_args(argv)
    if a.seeds < 1 or not 0 < a.hidden_below < 1:
        raise SystemExit("--seeds must be >= 1 and --hidden-below in (0, 1)")
    seeds = [DEFAULT_SEED_START + j for j in range(a.seeds)]
    px = visible_pixels(a.task, a.objects, seeds, a.camera_size, a.camera_fov)
    median = np.median(px, axis=0)
    hidden = px < a.hidden_below * median
    result: dict = {"task": a.task, "camera_size": a.camera_size, "camera_fov": a.camera_fov, "seeds": len(seeds),
                    "hidden_below": a.hidden_below, "objects": {}, "reports": {}}
    print(f"{a.task}, {a.camera_size}px, fov {a.camera_fov or 'task default'}: first frames of {len(seeds)} seeds")
    for k, o in enumerate(a.objects):
        hs = [seeds[i] for i in np.flatnonzero(hidden[:, k])]
        result["objects"][o] = {"median_pixels": float(median[k]), "min_pixels": int(px[:, k].min()),
                                "hidden_seeds": hs, "pixels": px[:, k].tolist()}
        print(f"  {o}: median {median[k]:.0f} px; hidden in {len(hs)} of {len(seeds)} "
              f"(seeds +{', +'.join(str(s - DEFAULT_SEED_START) for s in hs) or 'none'})")
    first_hidden = set(result["objects"][a.objects[0]]["hidden_seeds"])
    any_hidden = sorted({seeds[i] for i in np.flatnonzero(hidden.any(axis=1))})
    result["any_hidden_seeds"] = any_hidden
    print(f"  some object hidden: {len(any_hidden)} of {len(seeds)}")
    total = {"hidden": [0, 0], "visible": [0, 0]}
    for path in a.reports:
        rep = json.loads(Path(path).read_text())
        if rep.get("task") not in (None, a.task):
            raise SystemExit(f"{path} evaluates {rep.get('task')}, not {a.task}")
        s = split_outcomes(rep, first_hidden, a.subgoal)
        result["reports"][path] = s
        for key in total:
            total[key] = [total[key][0] + s[key][0], total[key][1] + s[key][1]]
        print(f"  {Path(path).name}: {a.subgoal} {s['hidden'][0]}/{s['hidden'][1]} when {a.objects[0]} is hidden, "
              f"{s['visible'][0]}/{s['visible'][1]} otherwise")
    if a.reports:
        result["total"] = total
        print(f"  all reports: {a.subgoal} {total['hidden'][0]}/{total['hidden'][1]} hidden, "
              f"{total['visible'][0]}/{total['visible'][1]} otherwise")
    if a.out:
        with atomic_file(a.out) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
