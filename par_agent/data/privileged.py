"""How much of a task's gap is perception? Add ManiSkill's privileged task state to demonstrations.

In ``obs_mode="rgb"`` a PickCube policy sees the cube only through the camera (2-3 pixels at
64x64); its state holds the arm, the goal and ``is_grasped``. ManiSkill's ``"rgb+state_dict"`` mode
adds the task's privileged fields to ``obs["extra"]`` (PickCube: ``obj_pose``, ``tcp_to_obj_pos``,
``obj_to_goal_pos``). This script writes a copy of a demo set whose ``obs/extra`` holds those fields
too, so that a model fine-tuned on it (``par-train finetune``, unchanged: ``envs.flatten_state``
takes every extra field) and evaluated with ``par-eval --obs-mode rgb+state_dict`` shows what
the policy reaches when it does not have to find the objects in the pixels.

The values come from ManiSkill itself, not from formulas here: for each recorded step the
episode's ``env_states`` are set on a state-only env (no rendering) and its ``get_obs()`` is read.
The fields the demo already holds must come out equal (``--atol``), which checks the replay.

    python -m par_agent.data.privileged --data data1k/PickCube-v1 --out data1k-priv/PickCube-v1
    par-train finetune --data data1k-priv/PickCube-v1 --out runs/pick-privileged --init VIDEO_MODEL ...
    par-eval --policy runs/pick-privileged/finetune/final --task PickCube-v1 --obs-mode rgb+state_dict
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from envs import gym_make
from par_agent.atomic import atomic_file, replace_text
from par_agent.data.compact import load_episodes_json, open_h5, read_group, trajectory_names
from par_agent.data.dataset import demo_h5_files


def privileged_extra(env, env_states: dict, stored_extra: dict, atol: float = 1e-4) -> dict[str, np.ndarray]:
    """The extra fields that ``env`` (a ``state_dict``-mode ManiSkill env) adds to ``stored_extra``.

    Args:
        env: the task's env made with ``obs_mode="state_dict"`` (any render backend).
        env_states: an episode's ``env_states`` group as nested dicts of ``(T+1, ...)`` arrays.
        stored_extra: the episode's ``obs/extra`` as ``{name: (T+1, ...)}``.
        atol: largest difference allowed between a stored field and ManiSkill's value of it.
    Returns:
        ``{name: (T+1, d) float32}`` for every extra field the demo lacks.
    Raises:
        ValueError: when a stored field disagrees with the replayed state (wrong task or states).
    """
    from mani_skill.trajectory.utils import dict_to_list_of_dicts

    base = env.unwrapped
    states = dict_to_list_of_dicts(env_states)
    new: dict[str, list[np.ndarray]] = {}
    for t, state in enumerate(states):
        base.set_state_dict({k: _batched(v) for k, v in state.items()})
        extra = {k: np.asarray(v.cpu()).reshape(-1) for k, v in base.get_obs()["extra"].items()}
        for k, v in extra.items():
            if k in stored_extra:
                if k == "is_grasped":  # contact-based: needs a physics step, not a pose
                    continue
                ref = np.asarray(stored_extra[k][t], dtype=np.float32).reshape(-1)
                if ref.shape != v.shape or not np.allclose(ref, v, atol=atol):
                    raise ValueError(f"step {t}: stored extra/{k}={ref} but ManiSkill gives {v} for the recorded "
                                     "env state (do the states belong to this task?)")
            else:
                new.setdefault(k, []).append(v.astype(np.float32))
    return {k: np.stack(v) for k, v in new.items()}


def _batched(x):
    if isinstance(x, dict):
        return {k: _batched(v) for k, v in x.items()}
    return np.asarray(x)[None]


def convert(src: Path, dst: Path, atol: float = 1e-4, progress: bool = True) -> dict:
    """Write ``dst`` (.h5 + .json): ``src`` with the privileged extra fields added to every episode."""
    meta = load_episodes_json(src)
    info = meta.get("env_info", {})
    task = info.get("env_id")
    if not task:
        raise ValueError(f"{src}: its .json names no env_info.env_id; cannot tell the task")
    kwargs = info.get("env_kwargs", {})
    env = gym_make(task, obs_mode="state_dict", render_backend="none", sim_backend="cpu",
                   control_mode=kwargs.get("control_mode", "pd_joint_pos"))
    seeds = {f"traj_{e['episode_id']}": e.get("episode_seed") for e in meta.get("episodes", [])}
    dst.parent.mkdir(parents=True, exist_ok=True)
    added: set[str] = set()
    with atomic_file(dst) as tmp, open_h5(src) as fin, h5py.File(tmp, "w") as fout:
        names = trajectory_names(fin)
        for name in tqdm(names, desc=src.name, disable=not progress):
            g = fin[name]
            if "env_states" not in g:
                raise ValueError(f"{src}: {name} has no env_states; the privileged fields are replayed from them")
            fin.copy(g, fout, name=name)
            env.reset(seed=seeds.get(name))
            extra = privileged_extra(env, read_group(g["env_states"]), read_group(g["obs/extra"]), atol=atol)
            for k, v in extra.items():
                fout[name]["obs/extra"].create_dataset(k, data=v)
            added |= set(extra)
    env.close()
    json_out = dict(meta)
    json_out["env_info"] = {**info, "env_kwargs": {**kwargs, "obs_mode": "rgb+state_dict"}}
    replace_text(dst.with_suffix(".json"), json.dumps(json_out, indent=2))
    return {"task": task, "episodes": len(names), "added": sorted(added)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a demo .h5 or a folder of them (par-collect's output)")
    p.add_argument("--out", required=True, help="output folder (the .h5 files keep their names)")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    src = Path(a.data)
    files = demo_h5_files(src)
    if not files:
        raise SystemExit(f"{src}: no .h5 demo files")
    out = Path(a.out)
    t0 = time.time()
    reports = []
    for f in files:
        rel = f.name if src.is_file() else f.relative_to(src)
        reports.append(convert(f, out / rel, atol=a.atol, progress=not a.no_progress))
    for r in reports:
        print(f"{r['task']}: {r['episodes']} episodes, added extra/{', extra/'.join(r['added'])}")
    print(f"wrote {out} in {time.time() - t0:.0f} s", file=sys.stderr)
    return {"files": [str(f) for f in files], "reports": reports}


if __name__ == "__main__":
    main()
