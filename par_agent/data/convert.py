"""Demonstrations in another control mode, converted by ManiSkill's own replay tool.

ManiSkill's motion planners act in ``pd_joint_pos``. ``par-collect --control-mode pd_ee_delta_pos``
(ManiSkill's choice for imitation learning) collects in ``pd_joint_pos`` as usual, then replays each
demo with ``mani_skill.trajectory.replay_trajectory``, which tracks the original end-effector
targets in the new controller and keeps the demos that still succeed::

    OUT/TASK/motionplanning/trajectory.rgb.pd_joint_pos.h5        # the source
    OUT/TASK/motionplanning/trajectory.rgb.pd_ee_delta_pos.h5     # the converted demos (same seeds)

The converted ``.json`` keeps the source's episode limit (ManiSkill's replay writes the task's
registered one) and records ``converted_from``; a second run converts again only when the source
has more demos than were converted.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

CONTROL_MODES = ("pd_joint_pos", "pd_ee_delta_pos", "pd_ee_delta_pose", "pd_joint_delta_pos")


def converted_path(source: str | os.PathLike, control_mode: str) -> Path:
    """Where :func:`convert_control_mode` writes ``source`` converted to ``control_mode``."""
    source = Path(source)
    return source.with_name(f"trajectory.rgb.{control_mode}.h5")


def convert_control_mode(source: str | os.PathLike, control_mode: str, workers: int = 1) -> Path:
    """Replay the ``pd_joint_pos`` demos of ``source`` in ``control_mode`` (with rgb observations, same
    cameras); returns the converted ``.h5`` (:func:`converted_path`).

    Raises:
        ValueError: unknown control mode, or a source that is not a pd_joint_pos demo file.
    """
    from mani_skill.trajectory import replay_trajectory as rt

    source = Path(source)
    if control_mode not in CONTROL_MODES:
        raise ValueError(f"control mode {control_mode!r} not supported; choose one of {', '.join(CONTROL_MODES)}")
    meta = json.loads(source.with_suffix(".json").read_text())
    info = meta.get("env_info", {})
    had = info.get("env_kwargs", {}).get("control_mode")
    if had != "pd_joint_pos":
        raise ValueError(f"{source}: demos in control mode {had!r}; conversion starts from pd_joint_pos demos")
    out = converted_path(source, control_mode)
    if control_mode == "pd_joint_pos":
        return source
    n_source = len(meta.get("episodes", []))
    if out.exists() and out.with_suffix(".json").exists():
        done = json.loads(out.with_suffix(".json").read_text()).get("converted_from", {})
        if done.get("episodes") == n_source:
            return out
    print(f"[par-collect] converting {n_source} demos to {control_mode} with ManiSkill's replay tool "
          f"({workers} process(es))", file=sys.stderr)
    rt.main(rt.Args(traj_path=str(source), target_control_mode=control_mode, obs_mode="rgb", save_traj=True,
                    num_envs=workers))
    written = source.with_name(f"trajectory.rgb.{control_mode}.physx_cpu.h5")
    if not written.exists():
        raise RuntimeError(f"ManiSkill's replay wrote no {written}; see its output above")
    new = json.loads(written.with_suffix(".json").read_text())
    new["env_info"]["max_episode_steps"] = info.get("max_episode_steps", new["env_info"].get("max_episode_steps"))
    new["converted_from"] = {"file": source.name, "episodes": n_source}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new, indent=2))
    os.replace(written, out)
    os.replace(tmp, out.with_suffix(".json"))
    written.with_suffix(".json").unlink(missing_ok=True)
    print(f"[par-collect] {len(new.get('episodes', []))} of {n_source} demos converted to {control_mode}: {out}",
          file=sys.stderr)
    return out
