"""``par-eval``: success rate of a policy on a ManiSkill task, over a fixed list of seeds.

    par-eval --policy par-pushcube --task PushCube-v1 --episodes 250 --num-envs 2 --videos 2 --out results/pushcube.json

Episodes run in an SB3 vector env of :func:`envs.make_vec_env` (``--vec subproc`` for one process
per env); after every episode the env is re-seeded with the next seed of the list, so episode j
always uses ``seeds[j]`` whatever the number of envs. Success is ManiSkill's ``info["success"]``
at any step. The default seeds, ``DEFAULT_SEED_START + j``, are far above the seeds
``par-collect`` uses for demonstrations (0, 1, 2, ...), so no evaluation episode was a
training demo.

With ``--out``, every finished episode is also appended to ``OUT.episodes.jsonl``; re-running the same
command after an interruption runs only the seeds not in it, and the finished report replaces it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from par_agent.atomic import replace_text

DEFAULT_SEED_START = 1_000_000


def wilson_ci95(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if n == 0:
        return (0.0, 1.0)
    z, p = 1.959964, successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def parse_seeds(text: str | None, n: int) -> list[int]:
    """``None`` -> the default list; ``"0-99"`` a range; ``"1,5,9"`` a list."""
    if text is None:
        return [DEFAULT_SEED_START + j for j in range(n)]
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part[1:]:
            a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
            seeds += list(range(int(a), int(b) + 1))
        elif part:
            seeds.append(int(part))
    if not seeds:
        raise ValueError(f"--seeds {text!r} names no seed")
    return seeds


def read_episode_log(path: str | Path) -> tuple[list[dict], bool]:
    """The records of a ``par-eval`` episode log (header first) and whether its last line was cut by
    an interruption (that line left out); a bad line before the last is an error naming it."""
    text = Path(path).read_text().splitlines()
    lines = []
    for n, line in enumerate(text):
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(text) - 1:
                raise ValueError(f"{path}: line {n + 1} is not JSON; delete the file to start over")
    return lines, len(lines) < len(text)


class EpisodeLog:
    """Finished episodes of a ``par-eval`` run, one JSON line each after a header naming the run, so that
    an interrupted evaluation resumes where it stopped. A log written for another run (other policy,
    seeds or settings) is an error that names both, and is left as it is."""

    def __init__(self, path: str | Path, header: dict) -> None:
        self.path, self.header = Path(path), json.loads(json.dumps(header))
        self.finished: list[dict] = []
        if self.path.is_file():
            lines, cut = read_episode_log(self.path)
            if not lines or lines[0] != {"run": self.header}:
                raise ValueError(f"{self.path} holds episodes of another evaluation ({lines[0] if lines else 'empty'}; "
                                 f"this one is {self.header}); delete it or write the report elsewhere")
            if cut:  # the last line was cut by the interruption: that episode runs again
                replace_text(self.path, "".join(json.dumps(r) + "\n" for r in lines))
            self.finished = lines[1:]
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.add({"run": self.header})

    def add(self, record: dict) -> None:
        """Append one record (a finished episode) and make it durable before returning."""
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def evaluate(policy, task: str, seeds: list[int], num_envs: int = 1, max_episode_steps: int | None = None,
             videos: int = 0, video_dir: str | Path | None = None, deterministic: bool = True,
             vec_env_cls: str = "dummy", progress: bool = True, finished: Sequence[dict] = (),
             on_episode: Callable[[dict], None] | None = None, **env_overrides: Any) -> dict[str, Any]:
    """Run one episode per seed; returns the report (see module docstring).

    ``finished``: per-seed results of episodes already run (an interrupted run's), kept in the report
    and not run again; ``on_episode`` is called with each new episode's result as it finishes.

    ``policy`` is any object with SB3's ``predict(obs, state, episode_start, deterministic)``;
    a :class:`PARPolicy` also supplies its predicted frames for the videos and the env it was
    trained for (``policy.env_kwargs``: camera, control mode, observation mode, episode limit).
    ``env_overrides`` (``make_env`` keyword arguments, e.g. ``camera_size``, ``obs_mode``; ``None``
    values are ignored) replace those.
    """
    from envs import VideoRecorder, default_max_episode_steps, make_vec_env

    env_kwargs = {**getattr(policy, "env_kwargs", {}), **{k: v for k, v in env_overrides.items() if v is not None}}
    recorded_steps = env_kwargs.pop("max_episode_steps", None)
    max_steps = max_episode_steps or recorded_steps or default_max_episode_steps(task)
    done_by_seed = {r["seed"]: r for r in finished}
    results: dict[int, dict] = {j: done_by_seed[s] for j, s in enumerate(seeds) if s in done_by_seed}
    queue = [(j, s) for j, s in enumerate(seeds) if j not in results]
    n_done, n_success = len(results), sum(r["success"] for r in results.values())
    t_start = time.time()
    num_envs = max(1, min(num_envs, len(queue) or len(seeds)))
    if not queue:
        return _report(task, results, env_kwargs, max_steps, num_envs, vec_env_cls, t_start, 0.0, 0, deterministic)
    vec = make_vec_env(task, num_envs, seed=queue[0][1], vec_env_cls=vec_env_cls, max_episode_steps=max_steps,
                       **env_kwargs)
    slot: list[tuple[int, int] | None] = [None] * num_envs  # (episode index, seed) per env
    obs = vec.reset()
    recorders: dict[int, Any] = {}
    policy_time, control_steps = 0.0, 0

    def start(i: int) -> None:
        """Reset env i with the next seed (replaces the vec env's own auto-reset)."""
        if not queue:
            slot[i] = None
            return
        j, seed = queue.pop(0)
        slot[i] = (j, seed)
        o, _ = vec.env_method("reset", seed=seed, indices=[i])[0]
        for k in obs:
            obs[k][i] = o[k]
        results[j] = {"seed": seed, "success": False, "length": 0}
        if j < videos and video_dir is not None:
            recorders[j] = VideoRecorder(video_dir, fps=20, prefix=f"{task}_seed{seed}")

    for i in range(num_envs):
        start(i)
    episode_start = np.ones(num_envs, dtype=bool)
    bar = tqdm(total=len(seeds), initial=n_done, desc=f"eval {task}", disable=not progress)
    while any(s is not None for s in slot):
        t0 = time.perf_counter()
        actions, _ = policy.predict(obs, episode_start=episode_start, deterministic=deterministic)
        policy_time += time.perf_counter() - t0
        active = [i for i in range(num_envs) if slot[i] is not None]
        control_steps += len(active)
        frames_before = {i: obs["rgb"][i].copy() for i in active if slot[i][0] in recorders}
        predicted = [None] * num_envs  # decode imagined frames only when a video needs them
        if frames_before and hasattr(policy, "predicted_frames"):
            predicted = policy.predicted_frames()
        obs, _, dones, infos = vec.step(actions)
        episode_start = np.zeros(num_envs, dtype=bool)
        for i in active:
            j, seed = slot[i]
            r = results[j]
            r["length"] += 1
            r["success"] = r["success"] or bool(infos[i].get("success", False))
            for k, v in infos[i].items():  # ManiSkill's sub-goals (is_grasped, is_cubeA_on_cubeB, ...)
                if isinstance(v, (bool, np.bool_)) and k != "success" and not k.startswith("TimeLimit."):
                    reached = r.setdefault("reached", {})
                    reached[k] = reached.get(k, False) or bool(v)
            if j in recorders:
                recorders[j].add(frames_before[i], predicted[i], step=r["length"] - 1, success=r["success"])
            if dones[i]:
                if j in recorders:
                    final = infos[i].get("terminal_observation", {}).get("rgb")
                    if final is not None:
                        recorders[j].add(final, None, step=r["length"], success=r["success"])
                    r["video"] = str(recorders.pop(j).close_episode(success=r["success"]))
                if on_episode is not None:
                    on_episode(r)
                n_done += 1
                n_success += r["success"]
                bar.update(1)
                bar.set_postfix(success=f"{n_success / n_done:.0%}")
                start(i)
                episode_start[i] = True
    bar.close()
    vec.close()
    return _report(task, results, env_kwargs, max_steps, num_envs, vec_env_cls, t_start, policy_time,
                   control_steps, deterministic)


def _report(task: str, results: dict[int, dict], env_kwargs: dict, max_steps: int, num_envs: int,
            vec_env_cls: str, t_start: float, policy_time: float, control_steps: int,
            deterministic: bool) -> dict[str, Any]:
    """The report of per-episode ``results`` (episode index -> result)."""
    n = len(results)
    succ = sum(r["success"] for r in results.values())
    lo, hi = wilson_ci95(succ, n)
    flags = sorted({k for r in results.values() for k in r.get("reached", {})})
    return {
        "task": task,
        "success_rate": succ / n,
        "n_episodes": n,
        "ci95": [lo, hi],
        "mean_episode_length": float(np.mean([r["length"] for r in results.values()])),
        # fraction of episodes in which each boolean info flag was ever true: where a failure happens
        "subgoal_rates": {k: sum(r.get("reached", {}).get(k, False) for r in results.values()) / n for k in flags},
        "per_seed": [results[j] for j in sorted(results)],
        "env": {"control_mode": "pd_joint_pos", "obs_mode": "rgb", **env_kwargs, "max_episode_steps": max_steps,
                "num_envs": num_envs, "vec_env": vec_env_cls},
        "wall_time_s": time.time() - t_start,
        "policy_ms_per_control_step": 1000 * policy_time / max(control_steps, 1),
        "deterministic": deterministic,
        "videos": [r["video"] for j, r in sorted(results.items()) if "video" in r],
    }


def evaluate_to(out: str | Path | None, run_id: dict, extra: dict, policy, task: str, seeds: list[int],
                progress: bool = True, **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate`, resumable: with ``out``, episodes are logged to ``OUT.episodes.jsonl`` as they
    finish (``run_id`` names the run: the settings that decide each episode's outcome), a re-run with
    the same ``run_id`` runs only the missing seeds, and the report (with ``extra`` merged in and
    ``resumed_episodes``, those run before the interruption, whose time ``wall_time_s`` leaves out)
    is written whole to ``out``, then the log removed."""
    log = EpisodeLog(f"{out}.episodes.jsonl", run_id) if out else None
    if log is not None and log.finished and progress:
        print(f"resuming: {len(log.finished)} of {len(seeds)} episodes already in {log.path}", file=sys.stderr)
    report = evaluate(policy, task, seeds, progress=progress, finished=log.finished if log else (),
                      on_episode=log.add if log else None, **kwargs)
    report.update(extra, resumed_episodes=len(log.finished) if log else 0)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        replace_text(Path(out), json.dumps(report, indent=2) + "\n")
        log.remove()
    return report


def run(argv: list[str] | None = None) -> dict:
    """``par-eval`` with arguments; returns the report."""
    p = argparse.ArgumentParser(prog="par-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--policy", required=True, help="built-in name (par-pushcube), checkpoint folder or hub id")
    p.add_argument("--task", default=None, help="ManiSkill task id (default: the policy's first task)")
    p.add_argument("--episodes", type=int, default=50, help="episodes on the default seed list")
    p.add_argument("--seeds", default=None, help=f"'A-B' range or 'a,b,c' list (default: {DEFAULT_SEED_START}+j)")
    p.add_argument("--num-envs", type=int, default=1)
    p.add_argument("--vec", choices=["dummy", "subproc"], default="dummy")
    p.add_argument("--max-episode-steps", type=int, default=None)
    p.add_argument("--videos", type=int, default=0, help="record the first M episodes")
    p.add_argument("--video-dir", default="outputs/eval_videos")
    p.add_argument("--out", default=None, help="write the JSON report here (episodes go to OUT.episodes.jsonl as they "
                                               "finish; the same command resumes an interrupted run)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the policy (default 1: a policy call is small, and more threads fight "
                        "the renderer for the cores); results are deterministic for a given count")
    p.add_argument("--num-inference-steps", type=int, default=None)
    p.add_argument("--no-kv-cache", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="compile each lockstep chunk whole, and the diffusion heads (two or three minutes of compiling the first time, cached after, then faster chunks; same outcomes up to rounding)")
    p.add_argument("--action-horizon", type=int, default=None,
                   help="control steps executed of each chunk before predicting again (default: the whole chunk)")
    p.add_argument("--stochastic", action="store_true", help="sample with fresh noise (default: deterministic)")
    p.add_argument("--obs-mode", default=None,
                   help="ManiSkill observation mode (default: the one the policy was trained with, else 'rgb'); "
                        "'rgb+state_dict' adds the task's privileged state")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)

    from par_agent.policy import PARPolicy

    overrides: dict[str, Any] = {}
    if a.num_inference_steps:
        overrides["num_inference_steps"] = a.num_inference_steps
    if a.no_kv_cache:
        overrides["use_kv_cache"] = False
    policy = PARPolicy.from_pretrained(a.policy, device=a.device, task=a.task, num_threads=a.threads,
                                       action_horizon=a.action_horizon, compile=a.compile, **overrides)
    task = a.task or policy.task
    seeds = parse_seeds(a.seeds, a.episodes)  # an explicit --seeds list sets the number of episodes
    info = {"name": a.policy, "num_inference_steps": policy.model.num_inference_steps,
            "use_kv_cache": policy.model.use_kv_cache, "chunk_size": policy.cfg.chunk_size,
            "action_horizon": policy.action_horizon, "history": policy.cfg.history,
            "device": a.device, "threads": a.threads}
    # what decides each episode's outcome: a log of another run is not resumed
    run_id = {"policy": a.policy, "task": task, "seeds": seeds, "num_envs": a.num_envs, "vec": a.vec,
              "max_episode_steps": a.max_episode_steps, "threads": a.threads, "device": a.device,
              "overrides": overrides, "action_horizon": a.action_horizon, "stochastic": a.stochastic,
              "obs_mode": a.obs_mode}
    report = evaluate_to(a.out, run_id, {"policy": info}, policy, task, seeds, num_envs=a.num_envs,
                         max_episode_steps=a.max_episode_steps, videos=a.videos, video_dir=a.video_dir,
                         deterministic=not a.stochastic, vec_env_cls=a.vec, progress=not a.no_progress,
                         obs_mode=a.obs_mode)
    lo, hi = report["ci95"]
    print(f"{task}: success {report['success_rate']:.1%} over {report['n_episodes']} episodes "
          f"(95% CI {lo:.1%}-{hi:.1%}); mean length {report['mean_episode_length']:.1f}; "
          f"policy {report['policy_ms_per_control_step']:.1f} ms/step; wall {report['wall_time_s']:.0f} s", file=sys.stderr)
    if report["subgoal_rates"]:
        print("  ever reached: " + ", ".join(f"{k} {v:.0%}" for k, v in report["subgoal_rates"].items()), file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
