"""Demonstrations in another control mode, converted by ManiSkill's own replay tool.

ManiSkill's motion planners act in ``pd_joint_pos``. ``par-collect --control-mode pd_ee_delta_pos``
(ManiSkill's choice for imitation learning) collects in ``pd_joint_pos`` as usual, then replays each
demo with ``mani_skill.trajectory.replay_trajectory``, which tracks the original end-effector
targets in the new controller and keeps the demos that still succeed::

    OUT/TASK/motionplanning/trajectory.rgb.pd_joint_pos.h5        # the source
    OUT/TASK/motionplanning/trajectory.rgb.pd_ee_delta_pos.h5     # the converted demos (same seeds)

The demos are replayed in pieces of ``chunk_size`` (a few minutes each), each kept under
``converting.<mode>/`` once done, so an interrupted conversion resumes at the piece it was in;
the pieces are merged (ManiSkill's ``merge_trajectories``) at the end. The converted ``.json`` keeps
the source's episode limit (ManiSkill's replay writes the task's registered one) and records
``converted_from``; a second run converts again only when the source has more demos than were
converted.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

CONTROL_MODES = ("pd_joint_pos", "pd_ee_delta_pos", "pd_ee_delta_pose", "pd_joint_delta_pos")


def converted_path(source: str | os.PathLike, control_mode: str) -> Path:
    """Where :func:`convert_control_mode` writes ``source`` converted to ``control_mode``."""
    source = Path(source)
    return source.with_name(f"trajectory.rgb.{control_mode}.h5")


def _piece_plan(source: Path, episodes: list[dict]) -> dict:
    return {"source": source.name, "episodes": [[e["episode_id"], e.get("episode_seed")] for e in episodes]}


def _convert_piece(source: Path, meta: dict, episodes: list[dict], piece: Path, control_mode: str,
                   workers: int) -> Path:
    """Replay ``episodes`` of ``source`` in ``control_mode`` inside the folder ``piece``; returns its
    ``done.h5`` (written last, so its presence means the piece is complete)."""
    import h5py
    from mani_skill.trajectory import replay_trajectory as rt

    done = piece / "done.h5"
    plan = _piece_plan(source, episodes)
    if done.exists() and done.with_suffix(".json").exists() and \
            json.loads((piece / "plan.json").read_text()) == plan:
        return done
    shutil.rmtree(piece, ignore_errors=True)  # unfinished or planned from other demos
    piece.mkdir(parents=True)
    (piece / "plan.json").write_text(json.dumps(plan))
    part = piece / "trajectory.rgb.pd_joint_pos.h5"
    with h5py.File(source, "r") as f, h5py.File(part, "w") as g:
        for e in episodes:
            f.copy(f"traj_{e['episode_id']}", g)
    part.with_suffix(".json").write_text(json.dumps({**meta, "episodes": episodes}))
    rt.main(rt.Args(traj_path=str(part), target_control_mode=control_mode, obs_mode="rgb", save_traj=True,
                    num_envs=min(workers, len(episodes))))
    written = piece / f"trajectory.rgb.{control_mode}.physx_cpu.h5"
    if not written.exists():
        raise RuntimeError(f"ManiSkill's replay wrote no {written}; see its output above")
    part.unlink()
    os.replace(written.with_suffix(".json"), done.with_suffix(".json"))
    os.replace(written, done)
    return done


def convert_control_mode(source: str | os.PathLike, control_mode: str, workers: int = 1,
                         chunk_size: int = 20) -> Path:
    """Replay the ``pd_joint_pos`` demos of ``source`` in ``control_mode`` (with rgb observations, same
    cameras), ``chunk_size`` demos at a time, resuming after the pieces an interrupted run finished;
    returns the converted ``.h5`` (:func:`converted_path`).

    Raises:
        ValueError: unknown control mode, ``chunk_size`` < 1, or a source that is not a pd_joint_pos
            demo file.
    """
    from mani_skill.trajectory.merge_trajectory import merge_trajectories

    source = Path(source)
    if control_mode not in CONTROL_MODES:
        raise ValueError(f"control mode {control_mode!r} not supported; choose one of {', '.join(CONTROL_MODES)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    meta = json.loads(source.with_suffix(".json").read_text())
    info = meta.get("env_info", {})
    had = info.get("env_kwargs", {}).get("control_mode")
    if had != "pd_joint_pos":
        raise ValueError(f"{source}: demos in control mode {had!r}; conversion starts from pd_joint_pos demos")
    out = converted_path(source, control_mode)
    if control_mode == "pd_joint_pos":
        return source
    episodes = meta.get("episodes", [])
    n_source = len(episodes)
    if out.exists() and out.with_suffix(".json").exists():
        done = json.loads(out.with_suffix(".json").read_text()).get("converted_from", {})
        if done.get("episodes") == n_source:
            return out
    work = source.with_name(f"converting.{control_mode}")
    starts = range(0, n_source, chunk_size)
    print(f"[par-collect] converting {n_source} demos to {control_mode} with ManiSkill's replay tool "
          f"({workers} process(es), {len(starts)} piece(s) of {chunk_size}, kept in {work})", file=sys.stderr)
    pieces = []
    for k, start in enumerate(starts):
        print(f"[par-collect] conversion piece {k + 1}/{len(starts)}", file=sys.stderr)
        pieces.append(_convert_piece(source, meta, episodes[start:start + chunk_size], work / f"{start:06d}",
                                     control_mode, workers))
    merging = out.with_name(out.stem + ".merging.h5")
    merge_trajectories(str(merging), [str(p) for p in pieces])
    new = json.loads(merging.with_suffix(".json").read_text())
    new["env_info"]["max_episode_steps"] = info.get("max_episode_steps", new["env_info"].get("max_episode_steps"))
    new["converted_from"] = {"file": source.name, "episodes": n_source}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new, indent=2))
    merging.with_suffix(".json").unlink()
    os.replace(merging, out)
    os.replace(tmp, out.with_suffix(".json"))
    shutil.rmtree(work)
    print(f"[par-collect] {len(new.get('episodes', []))} of {n_source} demos converted to {control_mode}: {out}",
          file=sys.stderr)
    return out
