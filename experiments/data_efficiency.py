"""What video pretraining buys: PickCube success against the number of demonstrations, fine-tuned
from a video model and from the tokenizer alone at the same fine-tuning budget (one figure, one report).

    python -m experiments.data_efficiency run --out runs/data_efficiency \
        --video runs/rebuild/par-pickcube/pretrain-video/final --tokenizer runs/rebuild/par-pickcube/tokenizer/final
    python -m experiments.data_efficiency report --out runs/data_efficiency \
        --png docs/data_efficiency_pickcube.png --report results/data_efficiency_pickcube.json

``run`` goes through the points smallest first, both arms at each count, so that a run cut short
leaves whole pairs: ``par-train finetune --train-episodes N`` (the first N training episodes of
``--data``; the held-out episodes are the same for every N) with the shipped recipe's fine-tuning
flags, then ``par-eval`` on ``--episodes`` seeds from 1,000,000. A point whose evaluation exists is
skipped and a cut fine-tuning resumes from its last checkpoint, so running it again continues.
``--reuse ARM:N=REPORT`` takes a point already measured with the same command (for example the full
training split, which is the rebuilt checkpoint and the no-video ablation).

The video model's frames need no actions: pass a video model pretrained on more episodes than the
demonstrations (``par-train pretrain-video --data data/pickcube-ee-fov08 data/pickcube-video-fov08``, 750
action-free videos beside the demos' frames) to measure what action-free video buys when
demonstrations are few. The report gives success and grasp rates with their intervals, and pairs the
arms seed by seed on both.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from experiments.compare import paired
from par_agent.evaluate import wilson_ci95
from par_agent.precision import PRECISIONS

ARMS = ("video", "no-video")
RECIPE = ["--steps", "4500", "--batch-size", "16", "--lr", "6e-4", "--warmup", "100", "--ema", "0.999",
          "--ckpt-every", "250", "--val-every", "750"]
"""par-pickcube's fine-tuning flags (docs/RESULTS.md, Rebuilding a shipped checkpoint)."""


def point_dir(out: Path, arm: str, count: int) -> Path:
    return out / f"{arm}-{count}"


def commands(data: str, out: Path, arm: str, count: int, init: str, episodes: int, threads: int,
             precision: str) -> list[list[str]]:
    """The par-train and par-eval command lines of one point (run with the current interpreter)."""
    run = point_dir(out, arm, count)
    train = [sys.executable, "-m", "par_agent.train", "finetune", "--data", data, "--out", str(run), "--init", init,
             "--train-episodes", str(count), *RECIPE, "--threads", str(threads), "--precision", precision,
             "--no-progress"]
    evaluate = [sys.executable, "-m", "par_agent.evaluate", "--policy", str(run / "finetune" / "final"),
                "--episodes", str(episodes), "--num-envs", "2", "--threads", str(threads), "--no-progress",
                "--out", str(run / "eval.json")]
    return [train, evaluate]


def parse_reuse(items: list[str]) -> dict[tuple[str, int], Path]:
    """``ARM:N=REPORT`` items -> {(arm, N): report}."""
    out = {}
    for item in items:
        key, sep, path = item.partition("=")
        arm, _, n = key.partition(":")
        if not sep or arm not in ARMS or not n.isdigit():
            raise ValueError(f"--reuse {item!r}: expected ARM:N=REPORT with ARM one of {ARMS}, e.g. video:225=r.json")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--reuse {item!r}: no report at {path}")
        out[(arm, int(n))] = Path(path)
    return out


def run(a: argparse.Namespace) -> None:
    inits = {"video": a.video, "no-video": a.tokenizer}
    reuse = parse_reuse(a.reuse)
    for count in sorted(a.counts):
        for arm in ARMS:
            dest = point_dir(a.out, arm, count) / "eval.json"
            if dest.is_file():
                print(f"[data-efficiency] {arm} {count}: done ({dest})", flush=True)
                continue
            if (arm, count) in reuse:
                dest.parent.mkdir(parents=True, exist_ok=True)
                report = json.loads(reuse[(arm, count)].read_text())
                report["reused_from"] = str(reuse[(arm, count)])
                dest.write_text(json.dumps(report, indent=1))
                print(f"[data-efficiency] {arm} {count}: reused {reuse[(arm, count)]}", flush=True)
                continue
            for cmd in commands(a.data, a.out, arm, count, inits[arm], a.episodes, a.threads, a.precision):
                print("[data-efficiency] " + " ".join(cmd[1:]), flush=True)
                subprocess.run(cmd, check=True)


def collect(out: Path) -> dict:
    """Every finished point under ``out``: arm -> N -> success, interval, grasp rate, source."""
    points: dict = {arm: {} for arm in ARMS}
    reports: dict = {}
    for arm in ARMS:
        for d in sorted(out.glob(f"{arm}-*")):
            n = d.name[len(arm) + 1:]
            if not n.isdigit() or not (d / "eval.json").is_file():
                continue
            r = json.loads((d / "eval.json").read_text())
            reports[(arm, int(n))] = r
            grasped = r.get("subgoal_rates", {}).get("is_grasped")
            points[arm][int(n)] = {
                "success_rate": r["success_rate"], "ci95": r["ci95"], "n_episodes": r["n_episodes"], "grasped": grasped,
                "grasped_ci95": None if grasped is None else wilson_ci95(round(grasped * r["n_episodes"]), r["n_episodes"]),
                "policy": r.get("policy", {}).get("name"), "reused_from": r.get("reused_from")}
    common = [n for n in sorted(points["video"]) if n in points["no-video"]]
    pairs = {n: paired(reports[("video", n)], reports[("no-video", n)]) for n in common}
    grasp_pairs = {n: paired(reports[("video", n)], reports[("no-video", n)], "is_grasped") for n in common}
    return {"points": points, "paired_video_vs_no_video": pairs, "paired_grasped_video_vs_no_video": grasp_pairs}


def plot(summary: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({n for arm in ARMS for n in summary["points"][arm]})
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4), sharey=True)
    for ax, (key, ci, title) in zip(axes, (("success_rate", "ci95", "success"), ("grasped", "grasped_ci95", "cube grasped"))):
        for arm, marker in zip(ARMS, "os"):
            pts = {n: p for n, p in summary["points"][arm].items() if p[key] is not None}
            ns = sorted(pts)
            if not ns:
                continue
            rate = [100 * pts[n][key] for n in ns]
            lo = [r - 100 * pts[n][ci][0] for r, n in zip(rate, ns)]
            hi = [100 * pts[n][ci][1] - r for r, n in zip(rate, ns)]
            ax.errorbar(ns, rate, yerr=[lo, hi], marker=marker, capsize=3, label=arm)
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.minorticks_off()
        ax.set_xlabel("demonstrations fine-tuned on")
        ax.set_title(f"PickCube {title}", fontsize=10)
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("% of episodes, 95% interval")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    head, _, tail = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(prog="python -m experiments.data_efficiency", description=head, epilog=tail,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="fine-tune and evaluate every point not yet done")
    r.add_argument("--data", default="data/pickcube-ee-fov08")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--video", required=True, help="video model the 'video' arm starts from")
    r.add_argument("--tokenizer", required=True, help="tokenizer the 'no-video' arm starts from")
    r.add_argument("--counts", type=int, nargs="+", default=[25, 50, 100, 225],
                   help="training demonstrations per point (225: the whole training split of 250 demos)")
    r.add_argument("--episodes", type=int, default=100, help="evaluation seeds per point, from 1,000,000")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--precision", default="bf16", choices=PRECISIONS)
    r.add_argument("--reuse", nargs="*", default=[], metavar="ARM:N=REPORT",
                   help="a point measured already with the same command, e.g. video:225=results/x.json")
    s = sub.add_parser("report", help="the figure and the report of the finished points")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--png", type=Path, required=True)
    s.add_argument("--report", type=Path, required=True)
    a = p.parse_args(argv)
    if a.cmd == "run":
        run(a)
        return
    summary = collect(a.out)
    if not any(summary["points"].values()):
        p.error(f"no finished points (OUT/<arm>-<N>/eval.json) under {a.out}")
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.write_text(json.dumps(summary, indent=1))
    plot(summary, a.png)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
