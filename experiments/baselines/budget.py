"""The budget rule's minutes: how long PAR's stages trained, from their ``metrics.csv``.

    python -m experiments.baselines.budget runs/rebuild/par-pushcube          # prints the total minutes
    M=$(python -m experiments.baselines.budget runs/rebuild/par-pushcube)
    python -m experiments.baselines.diffusion_policy train ... --minutes $M

Each stage folder under a run (``tokenizer/``, ``pretrain-video/``, ``finetune/``: those holding a
``metrics.csv``) counts its steps times the median seconds a step between its logged ``train/loss``
rows, so that validation, checkpoints and pauses by other work on a shared machine do not count. The
per-stage minutes go to stderr, the total to stdout.
"""
from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

STAGES = ("tokenizer", "pretrain-video", "finetune")


def stage_minutes(metrics: Path) -> tuple[int, float]:
    """(last step, minutes) of one stage's ``metrics.csv`` (columns step, name, value, time)."""
    with metrics.open() as f:
        pts = sorted({(int(r["step"]), float(r["time"])) for r in csv.DictReader(f) if r["name"] == "train/loss"})
    rates = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(pts, pts[1:]) if s1 > s0]
    if not rates:
        raise ValueError(f"{metrics}: fewer than two logged train/loss rows, so no time per step")
    return pts[-1][0], statistics.median(rates) * pts[-1][0] / 60


def run_minutes(run: Path) -> dict[str, float]:
    """Minutes of each stage under ``run`` (a par-train ``--out`` folder), in the recipe's order."""
    found = {s: run / s / "metrics.csv" for s in STAGES if (run / s / "metrics.csv").is_file()}
    if not found:
        raise FileNotFoundError(f"{run}: no stage folder with a metrics.csv ({', '.join(STAGES)})")
    return {s: stage_minutes(m)[1] for s, m in found.items()}


def main(argv: list[str] | None = None) -> float:
    runs = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not runs or any(a.startswith("-") for a in map(str, runs)):
        raise SystemExit(__doc__)
    total = 0.0
    for run in runs:
        try:
            minutes = run_minutes(run)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"budget: {e}") from e
        for stage, m in minutes.items():
            print(f"{run}/{stage}: {m:.2f} min", file=sys.stderr)
        total += sum(minutes.values())
    print(f"{total:.1f}")
    return total


if __name__ == "__main__":
    main()
