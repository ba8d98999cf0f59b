"""The wheel must carry export/, runtime/ and serving/ as fst.export, fst.runtime, fst.serving."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAPPED = (
    "fst/core/",
    "fst/training/",
    "fst/evaluation/",
    "fst/export/",
    "fst/runtime/",
    "fst/serving/",
    "fst/serving/telegram/",
)


def test_wheel_maps_top_level_folders_into_fst(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("full_stack_transformer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for prefix in MAPPED:
        assert f"{prefix}__init__.py" in names, f"{prefix} missing from the wheel"
    assert not any(n.startswith(("export/", "runtime/", "serving/", "tests/")) for n in names)
    for asset in ("vocab.json", "merges.txt", "LICENSE"):  # GPT-2's BPE is package data
        assert f"fst/core/assets/gpt2_bpe/{asset}" in names, f"{asset} missing from the wheel"
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    for script in ("fst-train", "fst-export", "fst-generate", "fst-chat", "fst-serve"):
        assert script in entry_points
    assert "fst-telegram" in entry_points

    # Importing from the unpacked wheel (not the editable checkout) finds every mapped package.
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = (
        "import fst.export, fst.runtime, fst.serving, fst.serving.telegram;"
        f"assert fst.runtime.__file__.startswith({str(unpacked)!r}), fst.runtime.__file__;"
        f"assert fst.export.__file__.startswith({str(unpacked)!r}), fst.export.__file__"
    )
    subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(unpacked)!r}); {code}"],
        check=True,
        cwd=tmp_path,
    )


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """A new subpackage must be added to [tool.setuptools] packages, or the wheel misses it."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {folder: name for name, folder in config["package-dir"].items()}
    found = set()
    for folder, name in roots.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *rel)))
    assert found == listed, f"pyproject packages differ from the tree: {sorted(found ^ listed)}"
