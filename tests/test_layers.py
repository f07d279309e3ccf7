"""Imports run one way (docs/ARCHITECTURE.md, Layers): no file circles, envs does not import par_agent
(but for the lazily imported token wrapper), the core never imports the experiments, benchmarks or
tests beside it, and no private name crosses a package boundary (tests included)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> list[tuple[str, list[str]]]:
    """(module, names) of the imports of a file; function-local (lazy) ones only if not top_level_only."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


FILES = sorted(p for pkg in ("envs", "par_agent") for p in (ROOT / pkg).rglob("*.py"))
OUTSIDE = sorted(p for pkg in ("benchmarks", "experiments", "tests", "examples", "scripts") for p in (ROOT / pkg).rglob("*.py"))


def test_no_import_circle_between_files():
    mods = {_module(p): p for p in FILES}
    graph = {m: {i for i, _ in _imports(p, top_level_only=False) if i in mods and i != m} for m, p in mods.items()}

    def visit(m, stack):
        assert m not in stack, "import circle: " + " -> ".join(stack[stack.index(m):] + [m])
        for n in graph[m]:
            visit(n, stack + [m])

    for m in graph:
        visit(m, [])


def test_envs_does_not_import_par_agent():
    for p in (ROOT / "envs").rglob("*.py"):
        bad = [m for m, _ in _imports(p, top_level_only=False) if m.split(".")[0] == "par_agent"]
        assert not bad, f"{p.name} imports {bad}"


def test_no_private_names_across_packages():
    for p in FILES + OUTSIDE:
        pkg = p.relative_to(ROOT).parts[0]
        for m, names in _imports(p, top_level_only=False):
            if m.split(".")[0] in ("envs", "par_agent", "benchmarks", "experiments") and m.split(".")[0] != pkg:
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{p.relative_to(ROOT)} imports private {private} from {m}"


def test_core_does_not_import_what_lives_beside_it():
    for p in FILES:
        bad = [m for m, _ in _imports(p, top_level_only=False)
               if m.split(".")[0] in ("benchmarks", "experiments", "tests", "examples", "scripts")]
        assert not bad, f"{p.relative_to(ROOT)} imports {bad}"


def test_benchmarks_hold_speed_scripts_only():
    """benchmarks/ times and counts; diagnostics and baselines live in experiments/."""
    names = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")
    assert all(n.startswith("bench_") or n in ("count_syncs", "gpu_check") for n in names), names
