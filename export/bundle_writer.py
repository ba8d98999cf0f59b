"""Atomic bundle folders and the manifest that describes them.

A bundle is built in `<output>.tmp-<random>` beside the output and renamed into place only
once it is complete and verified; any failure removes the temporary folder. An existing
output is replaced only with `force`, and only if it is an fst bundle (or empty): a typo
in `--output` must never delete someone's folder.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from fst.bundle import sha256_file
from fst.constants import BUNDLE_MANIFEST


class OutputExistsError(FileExistsError):
    """The output folder exists and may not be replaced."""


def check_output(output: Path, force: bool) -> None:
    """Fail early (before minutes of work) when `output` cannot be written."""
    if not output.exists():
        parent = next((p for p in output.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise OutputExistsError(f"{parent}: exists and is not a folder; cannot write {output}")
        return
    if not force:
        raise OutputExistsError(f"{output}: already exists (use --force to replace it)")
    if not output.is_dir():
        raise OutputExistsError(f"{output}: exists and is not a folder; not replacing it")
    if not (output / BUNDLE_MANIFEST).is_file() and any(output.iterdir()):
        raise OutputExistsError(
            f"{output}: exists and is not an fst bundle (no {BUNDLE_MANIFEST}); not replacing it"
        )


@contextmanager
def staging_folder(output: Path, force: bool) -> Iterator[Path]:
    """A temporary folder beside `output` that becomes `output` if the block succeeds."""
    check_output(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{output.name}.tmp-", dir=output.parent))
    # mkdtemp makes the folder private (0700); a bundle is read by servers running as
    # other users, so give it the permissions a plain mkdir would have.
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _replace(tmp, output, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(tmp: Path, output: Path, force: bool) -> None:
    check_output(output, force)  # again: something may have appeared meanwhile
    if not output.exists():
        tmp.rename(output)
        return
    # Move the old bundle aside first so `output` is never missing a file half-way.
    old = Path(tempfile.mkdtemp(prefix=f"{output.name}.old-", dir=output.parent))
    old.rmdir()
    output.rename(old)
    try:
        tmp.rename(output)
    except BaseException:
        old.rename(output)
        raise
    shutil.rmtree(old, ignore_errors=True)


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file in the bundle except the manifest itself."""
    return {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != BUNDLE_MANIFEST
    }


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    import fst

    return {
        "fst": fst.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
