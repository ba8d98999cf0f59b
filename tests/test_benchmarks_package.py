"""benchmarks/ is a package run as `python -m benchmarks.<group>.<name>`: every module imports
cheaply and without side effects, none edits sys.path, no import circles, and
benchmarks/README.md names every runnable one."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SOURCES = sorted(p for p in BENCH.rglob("*.py") if "results" not in p.relative_to(BENCH).parts)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SOURCES}
RUNNABLE = sorted(m for m, p in MODULES.items() if '__name__ == "__main__"' in p.read_text())


def test_the_groups_are_packages() -> None:
    groups = {"latency", "serving", "sizes", "quality", "reliability", "gpu"}
    assert {f"benchmarks.{g}" for g in groups} <= set(MODULES)
    assert len(RUNNABLE) >= 20


def test_every_module_imports_cheaply_and_writes_nothing() -> None:
    """Heavy work and heavy imports wait for main(): importing loads no torch and leaves the
    tree as it was (a benchmark imported by another, or by a test, must not run)."""
    before = sorted(str(p) for p in BENCH.rglob("*") if "__pycache__" not in p.parts)
    code = (
        "import importlib, json, sys\n"
        f"for name in {sorted(MODULES)!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = ('torch', 'transformers', 'pytorch_lightning', 'lightning')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    assert _python_json(code, timeout=240) == []
    after = sorted(str(p) for p in BENCH.rglob("*") if "__pycache__" not in p.parts)
    assert after == before


def test_nothing_edits_sys_path() -> None:
    edits = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend)|\[|\+?=)")
    offenders = [str(p.relative_to(REPO)) for p in SOURCES if edits.search(p.read_text())]
    offenders += [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "tests").glob("*.py"))
        if any(edits.search(line) and "benchmarks" in line for line in p.read_text().splitlines())
    ]
    assert offenders == []


def imported_benchmark_modules(path: Path) -> set[str]:
    """The benchmarks modules a file imports, at any depth (a lazy import closes a circle too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from benchmarks.latency import run`: run is a module; `from x import name`: x is.
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        found |= {name for name in names if name in MODULES and name != "benchmarks"}
    return found


def test_no_import_circles() -> None:
    graph = {name: imported_benchmark_modules(path) for name, path in MODULES.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            assert state.get(dep) != "open", "import circle: " + " -> ".join([*trail, dep])
            if dep not in state:
                visit(dep, [*trail, dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # The check sees lazy imports: engines.py imports engines_llamacpp.py inside a function.
    assert "benchmarks.latency.engines_llamacpp" in graph["benchmarks.latency.engines"]


def test_the_readme_names_every_runnable_benchmark() -> None:
    readme = (BENCH / "README.md").read_text()
    missing = [name for name in RUNNABLE if f"python -m {name}" not in readme]
    assert missing == []


def test_every_lazy_import_of_the_project_resolves() -> None:
    """The imports inside functions (heavy work waits for main()) run only when a benchmark
    does: a name moved elsewhere in fst breaks them without failing an import. Every
    `from fst... / benchmarks... import name` in benchmarks/ must name something that exists."""
    wanted: dict[str, set[str]] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.level == 0
                and node.module.split(".")[0] in ("fst", "benchmarks")
            ):
                wanted.setdefault(node.module, set()).update(a.name for a in node.names)
    assert "fst.export.exporter" in wanted  # the walk sees function-level imports
    code = (
        "import importlib, json\n"
        f"wanted = {json.dumps({m: sorted(n) for m, n in wanted.items()})}\n"
        "missing = []\n"
        "for module, names in sorted(wanted.items()):\n"
        "    loaded = importlib.import_module(module)\n"
        "    for name in names:\n"
        "        if not hasattr(loaded, name):\n"
        "            try:\n"
        "                importlib.import_module(module + '.' + name)\n"
        "            except ImportError:\n"
        "                missing.append(module + '.' + name)\n"
        "print(json.dumps(missing))\n"
    )
    assert _python_json(code, timeout=300) == []


def _python_json(code: str, timeout: int) -> object:
    """Run `code` in a fresh interpreter at the repository root; its last line, as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])
