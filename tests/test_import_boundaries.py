"""Who may import whom: the tree's layers, checked on every import statement.

`fst.core` is the torch-free contract every stage shares; the runtime and the server may
import only it (and themselves), so a serving machine never needs the training stage.
Export reads checkpoints, so it may also import `fst.training`. The check is static (the
AST of every module, imports inside functions included), so a lazy import cannot hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package -> (its source folder, the fst packages it may import besides itself)
LAYERS = {
    "fst.core": (REPO / "fst" / "core", ()),
    "fst.runtime": (REPO / "runtime", ("fst.core",)),
    "fst.serving": (REPO / "serving", ("fst.core", "fst.runtime")),
    "fst.training": (REPO / "fst" / "training", ("fst.core",)),
    "fst.evaluation": (REPO / "fst" / "evaluation", ("fst.core", "fst.training", "fst.runtime")),
    "fst.export": (REPO / "export", ("fst.core", "fst.training", "fst.runtime")),
}
ALWAYS_ALLOWED = {"fst"}  # fst/__init__.py: __version__ only


def fst_imports(source: Path) -> set[str]:
    """Every `fst...` module named by an import statement in one file."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {name for name in names if name == "fst" or name.startswith("fst.")}


def allowed(name: str, package: str, others: tuple[str, ...]) -> bool:
    if name in ALWAYS_ALLOWED:
        return True
    return any(name == p or name.startswith(p + ".") for p in (package, *others))


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_package_imports_only_its_layers(package: str) -> None:
    folder, others = LAYERS[package]
    sources = sorted(folder.rglob("*.py"))
    assert sources, f"no sources under {folder}"
    breaches = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sources
        for name in sorted(fst_imports(path))
        if not allowed(name, package, others)
    ]
    assert not breaches, "\n".join(breaches)


def test_the_check_sees_a_breach(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from fst.training.model import build_model\n")
    assert fst_imports(module) == {"fst.training.model"}
    assert not allowed("fst.training.model", "fst.runtime", ("fst.core",))
