"""Two or more policies' ``par-eval`` reports side by side, paired seed by seed.

    python -m experiments.compare par=results/a.json dp=results/b.json --subgoals is_grasped --out results/c.json
    python -m experiments.compare par=results/a_0_49.json+results/a_50_99.json dp=results/b.json

Each ``NAME=REPORT[+REPORT...]`` is one policy; reports joined by ``+`` are one policy's evaluations
on disjoint seeds (an evaluation extended to more seeds), and a seed in two of them is an error. A
report may also be the episode log of an unfinished ``par-eval --out R.json`` (``R.json.episodes.jsonl``):
its finished episodes count, and the summary lists them as such. For
each policy: success and each subgoal's rate over its seeds, with 95% Wilson intervals; and against
the first policy, on the seeds both ran, the seeds only one of them solved (or reached the subgoal)
with the exact two-sided sign test. The summary is printed and, with ``--out``, written as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from par_agent.atomic import replace_text
from par_agent.evaluate import read_episode_log, wilson_ci95


def _reached(row: dict, subgoal: str | None) -> bool:
    return bool(row["success"] if subgoal is None else row.get("reached", {}).get(subgoal, False))


def paired(a: dict, b: dict, subgoal: str | None = None) -> dict:
    """Seeds only ``a`` solved against seeds only ``b`` solved (or reached ``subgoal``, e.g.
    ``is_grasped``, when given), with the exact two-sided sign test."""
    from scipy.stats import binomtest

    sa = {r["seed"]: _reached(r, subgoal) for r in a["per_seed"]}
    sb = {r["seed"]: _reached(r, subgoal) for r in b["per_seed"]}
    common = sorted(set(sa) & set(sb))
    only_a = sum(sa[s] and not sb[s] for s in common)
    only_b = sum(sb[s] and not sa[s] for s in common)
    p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    return {"seeds": len(common), "only_first": only_a, "only_second": only_b, "sign_test_p": p}


def _read_log(path: Path) -> dict:
    """The finished episodes of an unfinished par-eval's log (:func:`par_agent.evaluate.read_episode_log`)
    as a report."""
    lines, _ = read_episode_log(path)
    header = lines[0].get("run") if lines and isinstance(lines[0], dict) else None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a par-eval episode log (its first line names no run)")
    return {"task": header.get("task"), "per_seed": lines[1:]}


def join_reports(paths: list[Path]) -> dict:
    """One policy's reports on disjoint seeds as one: ``{"task", "per_seed", "sources"}``."""
    rows, tasks = {}, set()
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no report at {path}")
        r = _read_log(path) if path.name.endswith(".episodes.jsonl") else json.loads(path.read_text())
        if "per_seed" not in r:
            raise ValueError(f"{path}: not a par-eval report (no per_seed)")
        tasks.add(r.get("task"))
        for row in r["per_seed"]:
            if row["seed"] in rows:
                raise ValueError(f"seed {row['seed']} is in two of {[str(p) for p in paths]}: join reports on disjoint seeds")
            rows[row["seed"]] = row
    if len(tasks) > 1:
        raise ValueError(f"{[str(p) for p in paths]} evaluate different tasks: {sorted(map(str, tasks))}")
    return {"task": tasks.pop(), "per_seed": [rows[s] for s in sorted(rows)], "sources": [str(p) for p in paths]}


def rates(report: dict, subgoals: list[str]) -> dict:
    """Success and subgoal rates of a (joined) report, each with its count and 95% interval."""
    n = len(report["per_seed"])
    out = {"episodes": n, "seeds": [report["per_seed"][0]["seed"], report["per_seed"][-1]["seed"]] if n else []}
    for key in [None, *subgoals]:
        k = sum(_reached(r, key) for r in report["per_seed"])
        out[key or "success"] = {"count": k, "rate": k / n if n else 0.0, "ci95": list(wilson_ci95(k, n))}
    return out


def compare(policies: dict[str, dict], subgoals: list[str]) -> dict:
    """The summary of ``policies`` (name -> joined report), each paired against the first."""
    names = list(policies)
    first = policies[names[0]]
    summary = {"task": first["task"], "policies": {}, "paired_against": names[0]}
    for name, rep in policies.items():
        entry = {"sources": rep["sources"], **rates(rep, subgoals)}
        if name != names[0]:
            entry["paired"] = {key or "success": paired(first, rep, key) for key in [None, *subgoals]}
        summary["policies"][name] = entry
    return summary


def parse_policy(item: str) -> tuple[str, list[Path]]:
    name, sep, paths = item.partition("=")
    if not sep or not name or not paths:
        raise ValueError(f"{item!r}: expected NAME=REPORT or NAME=REPORT+REPORT")
    return name, [Path(p) for p in paths.split("+")]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("policies", nargs="+", help="NAME=REPORT[+REPORT...], the first is the reference")
    p.add_argument("--subgoals", nargs="*", default=[], help="info flags to count and pair as well (e.g. is_grasped)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    try:
        parsed = [parse_policy(item) for item in a.policies]
        if len({n for n, _ in parsed}) != len(parsed):
            raise ValueError(f"policy names repeat: {[n for n, _ in parsed]}")
        policies = {name: join_reports(paths) for name, paths in parsed}
        if len({r["task"] for r in policies.values()}) > 1:
            raise ValueError(f"the policies were evaluated on different tasks: {[r['task'] for r in policies.values()]}")
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"compare: {e}") from e
    summary = compare(policies, a.subgoals)
    for name, e in summary["policies"].items():
        cells = [f"{k} {e[k]['count']}/{e['episodes']} ({e[k]['rate']:.0%}, {e[k]['ci95'][0]:.0%}-{e[k]['ci95'][1]:.0%})"
                 for k in ["success", *a.subgoals]]
        line = f"{name}: " + ", ".join(cells)
        for k, pr in e.get("paired", {}).items():
            line += (f"; {k} only {summary['paired_against']} {pr['only_first']}, only {name} {pr['only_second']} "
                     f"of {pr['seeds']} (p={pr['sign_test_p']:.2g})")
        print(line)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        replace_text(a.out, json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
