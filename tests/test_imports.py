"""The runtime and the server work without torch, transformers or Lightning installed.

A subprocess installs an import hook that makes those packages unimportable (as on a
serving machine with only `pip install full-stack-transformer[serve]`), imports
`fst.runtime`, `fst.serving` and every module under them, and generates from a bundle.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKED = ("torch", "transformers", "lightning", "pytorch_lightning")

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    BLOCKED = {blocked!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())

    import fst.runtime
    import fst.runtime.generator
    import fst.serving

    imported = []
    for package in (fst.runtime, fst.serving):
        prefix = package.__name__ + "."
        for info in pkgutil.walk_packages(package.__path__, prefix):
            importlib.import_module(info.name)
            imported.append(info.name)

    from fst.runtime import Generator
    generator = Generator.from_bundle({bundle!r}, threads=1)
    completion = generator.generate("Hello world", temperature=0.0, max_new_tokens=4)[0]
    assert len(completion.token_ids) >= 1, completion

    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("IMPORTED", " ".join(imported))
    """
)


def test_runtime_and_serving_import_and_generate_without_torch(tiny_plain_bundle: Path) -> None:
    script = SCRIPT.format(blocked=BLOCKED, bundle=str(tiny_plain_bundle))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported = result.stdout.split("IMPORTED", 1)[1].split()
    assert "fst.runtime.generator" in imported and "fst.runtime.cli" in imported
    serving = Path(__file__).resolve().parents[1] / "serving"
    expected = {f"fst.serving.{p.stem}" for p in serving.glob("*.py") if p.stem != "__init__"}
    assert expected <= set(imported)


def test_the_blocker_really_blocks() -> None:
    script = SCRIPT.format(blocked=BLOCKED, bundle="").split("import fst.runtime\n")[0]
    script += "import torch\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0 and "blocked in this test" in result.stderr
