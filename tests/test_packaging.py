"""The wheel must carry export/, runtime/ and serving/ as fst.export, fst.runtime, fst.serving."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAPPED = ("fst/export/", "fst/runtime/", "fst/serving/", "fst/serving/telegram/", "fst/cli/")


def test_wheel_maps_top_level_folders_into_fst(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("full_stack_transformer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for prefix in MAPPED:
        assert f"{prefix}__init__.py" in names, f"{prefix} missing from the wheel"
    assert not any(n.startswith(("export/", "runtime/", "serving/", "tests/")) for n in names)
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))
    ).decode()
    for script in ("fst-train", "fst-export", "fst-generate", "fst-serve", "fst-telegram"):
        assert script in entry_points

    # Importing from the unpacked wheel (not the editable checkout) finds every mapped package.
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = (
        "import fst.export, fst.runtime, fst.serving, fst.serving.telegram, fst.cli;"
        f"assert fst.runtime.__file__.startswith({str(unpacked)!r}), fst.runtime.__file__;"
        f"assert fst.export.__file__.startswith({str(unpacked)!r}), fst.export.__file__"
    )
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(unpacked)!r}); {code}"],
                   check=True, cwd=tmp_path)
