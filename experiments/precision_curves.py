"""Held-out curves of two runs of the same recipe that differ only in ``--precision`` (float32 against
bf16): one figure and a report of the largest difference per metric.

    python -m experiments.precision_curves --runs fp32=RUN_FP32/finetune bf16=RUN_BF16/finetune \
        --png docs/precision_curves.png --out results/precision_pickcube_300.json

Each run folder holds par-train's ``metrics.csv``; the held-out metrics (``val/*``) and the training
loss are read at the steps both runs logged.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path


def read_metrics(path: Path) -> dict[str, dict[int, float]]:
    """``metrics.csv`` -> name -> step -> value (the last value logged at a step)."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    with open(path) as f:
        for row in csv.DictReader(f):
            out[row["name"]][int(row["step"])] = float(row["value"])
    return out


def compare(runs: dict[str, dict[str, dict[int, float]]], names: list[str]) -> dict:
    """Per metric: the steps both runs logged, each run's values, and the largest absolute and
    relative difference of the second run from the first."""
    (a_name, a), (b_name, b) = list(runs.items())[:2]
    report = {}
    for name in names:
        steps = sorted(set(a.get(name, {})) & set(b.get(name, {})))
        if not steps:
            continue
        va, vb = [a[name][s] for s in steps], [b[name][s] for s in steps]
        diff = [abs(x - y) for x, y in zip(va, vb)]
        rel = [d / max(abs(x), 1e-12) for d, x in zip(diff, va)]
        report[name] = {"steps": steps, a_name: va, b_name: vb, "max_abs_diff": max(diff), "max_rel_diff": max(rel)}
    return report


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        r = report[name]
        for run in [k for k in r if k not in ("steps", "max_abs_diff", "max_rel_diff")]:
            ax.plot(r["steps"], r[run], marker="o", ms=3, label=run)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.precision_curves", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs=2, required=True, metavar="LABEL=STAGE_DIR",
                   help="two par-train stage folders (each with metrics.csv), the reference first")
    p.add_argument("--metrics", nargs="+", default=["val/action_mse", "val/frame_psnr", "val/tokenizer_psnr"])
    p.add_argument("--png", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    runs = {}
    for spec in a.runs:
        label, _, folder = spec.partition("=")
        if not folder:
            p.error(f"--runs takes LABEL=STAGE_DIR, got {spec!r}")
        path = Path(folder) / "metrics.csv"
        if not path.is_file():
            p.error(f"{path} does not exist (a par-train stage folder holds metrics.csv)")
        runs[label] = read_metrics(path)
    report = compare(runs, a.metrics)
    if not report:
        p.error(f"the runs share no logged step of {a.metrics}")
    for name, r in report.items():
        print(f"{name}: largest difference {r['max_abs_diff']:.4g} ({100 * r['max_rel_diff']:.2f}%) over steps "
              f"{r['steps'][0]}-{r['steps'][-1]}")
    if a.png:
        plot(report, a.png)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"runs": a.runs, "metrics": report}, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
