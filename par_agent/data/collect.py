"""``par-collect``: successful motion-planning demonstrations with camera observations.

Runs ManiSkill's own motion-planning solutions (``mani_skill.examples.motionplanning.panda``)
under ManiSkill's ``RecordEpisode`` wrapper with ``obs_mode="rgb"``, ``control_mode="pd_joint_pos"``,
and keeps only successful episodes. Output is ManiSkill's trajectory format::

    OUT/TASK/motionplanning/trajectory.rgb.pd_joint_pos.h5    # traj_0, traj_1, ... (obs/, actions, env_states, ...)
    OUT/TASK/motionplanning/trajectory.rgb.pd_joint_pos.json  # env_info + one entry per episode (episode_seed, ...)

Workers are processes; worker ``w`` of ``W`` tries seeds ``base + w, base + w + W, ...`` (disjoint
streams), writes finished chunks of at most ``--chunk-size`` demos into ``chunks/``, and the run ends
by merging them (ManiSkill's ``merge_trajectories``) into the single file above. A second run with the
same ``--out`` continues from the highest recorded seed and adds demos up to ``--num-demos``.
``collect(..., act_wrapper=...)`` wraps the env the planner acts in, outside the recorder (what the
wrapper makes of the planner's actions is what gets recorded); ``experiments/noisy_demos.py`` uses it.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from par_agent.data.convert import CONTROL_MODES, convert_control_mode

CONTROL_MODE = "pd_joint_pos"
OBS_MODE = "rgb"


def motion_planners() -> dict:
    from mani_skill.examples.motionplanning.panda import solutions

    names = {
        "PushCube-v1": "solvePushCube", "PickCube-v1": "solvePickCube", "StackCube-v1": "solveStackCube",
        "PegInsertionSide-v1": "solvePegInsertionSide", "PlugCharger-v1": "solvePlugCharger",
        "PullCube-v1": "solvePullCube", "LiftPegUpright-v1": "solveLiftPegUpright",
        "PullCubeTool-v1": "solvePullCubeTool", "PlaceSphere-v1": "solvePlaceSphere",
        "StackPyramid-v1": "solveStackPyramid",
    }
    return {task: getattr(solutions, fn) for task, fn in names.items() if hasattr(solutions, fn)}


def trajectory_path(out: str | os.PathLike, task: str) -> Path:
    """Where ``par-collect`` writes the merged ``.h5`` of ``task`` under ``out``."""
    return Path(out) / task / "motionplanning" / f"trajectory.{OBS_MODE}.{CONTROL_MODE}.h5"


def _chunk_dir(out, task) -> Path:
    return trajectory_path(out, task).parent / "chunks"


def _finished_chunks(chunk_dir: Path) -> list[Path]:
    return sorted(p for p in chunk_dir.glob("chunk_*.h5") if not p.name.endswith(".partial.h5"))


@contextlib.contextmanager
def _exclusive(chunk_dir: Path):
    """Hold an exclusive lock on ``chunk_dir`` (released when the process ends, however it ends)."""
    with open(chunk_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another par-collect is collecting into {chunk_dir.parent}; wait for it to end "
                               "or stop it (its finished chunks are kept) before starting a new one") from None
        yield


def _recorded_seeds(h5_paths) -> list[int]:
    from mani_skill.utils.io_utils import load_json

    seeds = []
    for p in h5_paths:
        j = Path(p).with_suffix(".json")
        if j.exists():
            seeds += [int(ep["episode_seed"]) for ep in load_json(str(j))["episodes"]]
    return seeds


def check_same_settings(h5_paths, sensor_configs: dict, source_desc: str) -> None:
    """Refuse to top up a folder whose demos were recorded with other camera settings (their
    ``env_kwargs.sensor_configs``) or another act wrapper (their ``source_desc``): one folder, one setting."""
    from mani_skill.utils.io_utils import load_json

    for p in h5_paths:
        j = Path(p).with_suffix(".json")
        if not j.exists():
            continue
        meta = load_json(str(j))
        recorded = {"sensor_configs": meta.get("env_info", {}).get("env_kwargs", {}).get("sensor_configs"),
                    "source_desc": meta.get("source_desc")}
        wanted = {"sensor_configs": (sensor_configs, "--camera-size / --camera-fov / --cameras"),
                  "source_desc": (source_desc, "collect's act_wrapper")}
        for name, (value, flags) in wanted.items():
            if recorded[name] is not None and recorded[name] != value:
                raise ValueError(f"{j} was recorded with {name}={recorded[name]!r}, this run asks for {value!r} "
                                 f"({flags}): use another --out")


def plan_succeeded(result) -> bool:
    """Whether a motion-planning solution's result (its last step's outputs, or -1) ended in success."""
    return result != -1 and bool(np.asarray(result[-1]["success"]).reshape(-1)[0])


def _source_desc(note: str) -> str:
    desc = "ManiSkill motion planning solution, collected with par-collect"
    return f"{desc}; {note}" if note else desc


def _worker(task, worker_id, num_workers, base_seed, quota, chunk_size, camera_size, cameras, max_episode_steps,
            chunk_dir, events, camera_fov=None, act_wrapper=None, source_note: str = ""):
    """Collect ``quota`` successful demos; report each attempt on ``events`` as ("ok"|"fail", seed)."""
    try:
        if num_workers > 1:
            # several workers share the cores: one rendering / BLAS thread each avoids oversubscription
            os.environ.setdefault("LP_NUM_THREADS", "1")
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            import torch

            torch.set_num_threads(1)
        import mani_skill.envs  # noqa: F401
        from mani_skill.utils.wrappers.record import RecordEpisode

        from envs import capture_only, gym_make, keep_renderer_warm, sensor_configs

        solve = motion_planners()[task]
        parent = mp.parent_process()  # None when run in the calling process (one worker)
        seed = base_seed + worker_id
        done = 0
        while done < quota:
            n_chunk = min(chunk_size, quota - done)
            name = f"chunk_s{seed:08d}_w{worker_id}"
            env = gym_make(
                task, obs_mode=OBS_MODE, control_mode=CONTROL_MODE, render_mode="rgb_array",
                sensor_configs=sensor_configs(camera_size, camera_fov, cameras or ("base_camera",)),
                max_episode_steps=max_episode_steps, sim_backend="cpu",
            )
            keep_renderer_warm(env)
            if cameras is not None:
                capture_only(env, cameras)
            recorder = RecordEpisode(
                env, output_dir=str(chunk_dir), trajectory_name=name + ".partial", save_video=False,
                source_type="motionplanning", source_desc=_source_desc(source_note),
                record_reward=False, save_on_reset=False,
            )
            # outside the recorder: the actions the wrapper passes on are recorded, so replays reproduce the episode
            env = act_wrapper(recorder) if act_wrapper is not None else recorder
            got = 0
            while got < n_chunk:
                if parent is not None and not parent.is_alive():
                    # par-collect was killed (even with SIGKILL): stop rather than run on as an orphan that
                    # would write the same chunk names as the next run; that run removes this .partial chunk
                    print(f"[par-collect] worker {worker_id}: parent process gone, stopping", file=sys.stderr)
                    os._exit(1)
                try:
                    res = solve(env, seed=seed, debug=False, vis=False)
                except Exception as err:  # planner failures are part of the job
                    print(f"[par-collect] seed {seed}: planning error: {err}", file=sys.stderr)
                    res = -1
                ok = plan_succeeded(res)
                if ok:
                    recorder.flush_trajectory()
                    got += 1
                else:
                    recorder.flush_trajectory(save=False)
                events.put(("ok" if ok else "fail", seed))
                seed += num_workers
            env.close()
            # the .h5 last: a chunk counts (``_finished_chunks``) only once its .json is in place
            for ext in (".json", ".h5"):
                os.replace(chunk_dir / f"{name}.partial{ext}", chunk_dir / f"{name}{ext}")
            done += n_chunk
        events.put(("done", worker_id))
    except BaseException:
        events.put(("error", traceback.format_exc()))
        raise


def collect(task: str, num_demos: int, out, camera_size: int = 128, workers: int = 1,
            chunk_size: int = 50, max_episode_steps: Optional[int] = None, seed: int = 0,
            progress: bool = True, cameras: Optional[Sequence[str]] = ("base_camera",),
            camera_fov: Optional[float] = None, act_wrapper: Optional[Callable] = None, source_note: str = "") -> Path:
    """Collect until ``out`` holds ``num_demos`` successful demos of ``task``; returns the ``.h5`` path.

    Args:
        task: ManiSkill task with a motion-planning solution (PushCube-v1, PickCube-v1, StackCube-v1, ...).
        num_demos: total number of successful demos wanted in the output file (existing ones count).
        out: output root folder.
        camera_size: camera width and height.
        workers: parallel processes (each with its own seed stream).
        chunk_size: demos per intermediate file (what an interrupted run can lose per worker).
        max_episode_steps: recorded episode limit; ``None`` -> ``envs.default_max_episode_steps(task)``.
        seed: first seed of a fresh collection.
        progress: show a progress bar.
        cameras: the cameras rendered and recorded (``None``: all of the task's). PAR reads
            ``base_camera``; recording StackCube's ``hand_camera`` as well made its collection 1.4 times
            slower (2 workers) and its file 6 times larger on a CPU renderer (docs/DATA.md).
        camera_fov: field of view (radians) of the recorded cameras; ``None`` keeps the task's (pi/2).
            A folder holds one camera set-up: topping it up with another fov is refused.
        act_wrapper: a picklable ``env -> env`` the planner acts through, wrapped around the recorder, so
            what it passes on is what is recorded (default none; ``experiments/noisy_demos.py`` adds noise
            to the planner's joint targets).
        source_note: what ``act_wrapper`` does, appended to the recorded ``source_desc``; a folder holds
            one note (a top-up with another is refused).
    """
    from mani_skill.trajectory.merge_trajectory import merge_trajectories
    from tqdm import tqdm

    from envs import check_task, default_max_episode_steps

    check_task(task)
    solutions = motion_planners()
    if task not in solutions:
        raise ValueError(f"no motion-planning solution for {task!r}; available: {', '.join(sorted(solutions))}")
    if num_demos < 1 or workers < 1 or chunk_size < 1:
        raise ValueError("num_demos, workers and chunk_size must be >= 1")
    if max_episode_steps is None:
        max_episode_steps = default_max_episode_steps(task)
    final = trajectory_path(out, task)
    chunk_dir = _chunk_dir(out, task)
    chunk_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(chunk_dir):  # one par-collect per folder: a second one would delete the first one's chunks
        for stale in chunk_dir.glob("*.partial.*"):  # left by an interrupted run: possibly corrupt
            print(f"[par-collect] removing unfinished chunk {stale}", file=sys.stderr)
            stale.unlink()

        # the final file counts once its .json is in place (the merge below writes that last)
        have_final = final.exists() and final.with_suffix(".json").exists()
        existing = ([final] if have_final else []) + _finished_chunks(chunk_dir)
        from envs import sensor_configs

        check_same_settings(existing, sensor_configs(camera_size, camera_fov, cameras or ("base_camera",)),
                             _source_desc(source_note))
        seeds = _recorded_seeds(existing)
        have = len(seeds)
        todo = num_demos - have
        base = max(seeds) + 1 if seeds else seed
        if todo > 0:
            workers = min(workers, todo)
            quotas = [todo // workers + (1 if w < todo % workers else 0) for w in range(workers)]
            print(f"[par-collect] {task}: have {have}, collecting {todo} more with {workers} worker(s) "
                  f"from seed {base}", file=sys.stderr)
            ctx = mp.get_context("spawn")
            events = ctx.Queue()
            common = dict(task=task, num_workers=workers, base_seed=base, chunk_size=chunk_size,
                          camera_size=camera_size, cameras=cameras, max_episode_steps=max_episode_steps,
                          chunk_dir=chunk_dir, camera_fov=camera_fov, act_wrapper=act_wrapper,
                          source_note=source_note)
            procs = []
            if workers == 1:
                procs = None
            else:
                for w in range(workers):
                    p = ctx.Process(target=_worker, kwargs=dict(common, worker_id=w, quota=quotas[w], events=events),
                                    daemon=True)
                    p.start()
                    procs.append(p)
            bar = tqdm(total=todo, desc=f"par-collect {task}", disable=not progress, unit="demo")
            tries = successes = finished = 0
            errors = []

            def handle(kind, payload):
                nonlocal tries, successes, finished
                if kind in ("ok", "fail"):
                    tries += 1
                    successes += kind == "ok"
                    bar.update(kind == "ok")
                    bar.set_postfix(success_rate=f"{successes / tries:.2f}", seed=payload)
                elif kind == "done":
                    finished += 1
                elif kind == "error":
                    errors.append(payload)

            try:
                if procs is None:  # one worker: run in this process, drain events as we go
                    class _Q:
                        def put(self, item):
                            handle(*item)

                    _worker(**common, worker_id=0, quota=quotas[0], events=_Q())
                else:
                    while finished + len(errors) < len(procs):
                        try:
                            handle(*events.get(timeout=1.0))
                        except queue_mod.Empty:
                            dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                            if dead and events.empty():
                                errors.append(f"worker exited with code {dead[0].exitcode}")
                                break
                    for p in procs:
                        p.join(timeout=30)
            finally:
                bar.close()
                if procs:
                    for p in procs:
                        if p.is_alive():
                            p.terminate()
                    for p in procs:
                        p.join(timeout=10)
            if errors:
                raise RuntimeError(f"par-collect worker failed (finished chunks are kept in {chunk_dir}):\n"
                                   f"{errors[0]}")
            print(f"[par-collect] {successes} successes in {tries} attempts "
                  f"({successes / max(tries, 1):.0%} success rate)", file=sys.stderr)

        chunks = _finished_chunks(chunk_dir)
        if chunks:
            tmp = final.with_name(final.stem + ".merging.h5")
            merge_trajectories(str(tmp), ([str(final)] if have_final else []) + [str(c) for c in chunks])
            # .h5 first: stopped between the two, the old .json still lists only the merged file's first
            # episodes (the merge keeps their ids) and the chunks are still there, so a re-run merges again
            os.replace(tmp, final)
            os.replace(tmp.with_suffix(".json"), final.with_suffix(".json"))
            for c in chunks:
                c.unlink()
                c.with_suffix(".json").unlink(missing_ok=True)
        return final


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="par-collect",
        description="Generate successful ManiSkill motion-planning demos with rgb observations (pd_joint_pos), "
        "in ManiSkill's .h5/.json trajectory format. Re-running with the same --out resumes.",
    )
    p.add_argument("--task", default="PushCube-v1", help="ManiSkill task id (PushCube-v1, PickCube-v1, StackCube-v1, ...)")
    p.add_argument("--num-demos", type=int, default=1000, help="total successful demos wanted in --out")
    p.add_argument("--out", default="data", help="output root; the file goes to OUT/TASK/motionplanning/")
    p.add_argument("--camera-size", type=int, default=128, help="camera width = height in pixels")
    p.add_argument("--cameras", nargs="+", default=["base_camera"],
                   help="cameras to render and record, or 'all' for every camera of the task "
                   "(StackCube also has hand_camera)")
    p.add_argument("--camera-fov", type=float, default=None,
                   help="field of view of the cameras in radians (default: the task's, pi/2); e.g. 0.8 frames "
                   "the workspace so the cubes get several times the pixels")
    p.add_argument("--control-mode", default="pd_joint_pos", choices=CONTROL_MODES,
                   help="control mode of the demos to train on: the planners act in pd_joint_pos; another mode "
                   "(pd_ee_delta_pos is ManiSkill's choice for imitation learning) is converted afterwards with "
                   "ManiSkill's replay tool into trajectory.rgb.MODE.h5 beside the source")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--chunk-size", type=int, default=50, help="demos per intermediate chunk file")
    p.add_argument("--max-episode-steps", type=int, default=None, help="recorded episode limit (default per task)")
    p.add_argument("--seed", type=int, default=0, help="first seed of a fresh collection")
    p.add_argument("--export-compact", metavar="DIR", default=None,
                   help="also write the compact form (H.264 MP4 frames + .npz) to DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through collect()'s finally, which stops the workers


def main(argv=None, act_wrapper: Optional[Callable] = None, source_note: str = "") -> int:
    """``par-collect``'s command line; ``act_wrapper`` and ``source_note``: see :func:`collect`."""
    try:
        return _main(argv, act_wrapper, source_note)
    except (RuntimeError, ValueError) as err:
        if "par-collect worker failed" in str(err):  # a worker's traceback is the useful part
            raise
        print(f"par-collect: error: {err}", file=sys.stderr)
        return 2


def _main(argv=None, act_wrapper=None, source_note: str = "") -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (kill, timeout, a batch scheduler) stops the workers too; restored on return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if _in_main_thread() else None
    try:
        t0 = time.time()
        path = collect(args.task, args.num_demos, args.out, camera_size=args.camera_size, workers=args.workers,
                       chunk_size=args.chunk_size, max_episode_steps=args.max_episode_steps, seed=args.seed,
                       progress=not args.no_progress, cameras=None if args.cameras == ["all"] else args.cameras,
                       camera_fov=args.camera_fov, act_wrapper=act_wrapper, source_note=source_note)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if args.control_mode != CONTROL_MODE:
        path = convert_control_mode(path, args.control_mode, workers=args.workers)
    print(f"[par-collect] {path} ({time.time() - t0:.1f} s)")
    if args.export_compact:
        from par_agent.data.compact import export_compact

        out = export_compact(path, args.export_compact)
        print(f"[par-collect] compact copy in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
