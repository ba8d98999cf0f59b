"""Atomic bundle folders and the manifest that describes them.

A bundle is built in `<output>.tmp-<random>` beside the output and renamed into place only
once it is complete and verified; any failure removes the temporary folder. An existing
output is replaced only with `force`, and only if it is an fst bundle (or empty): a typo
in `--output` must never delete someone's folder.

A process killed outright (SIGKILL, the OOM killer, a power cut) cannot clean up, and a
GPT-2 staging folder holds gigabytes. So each staging folder holds an owner file (pid,
process start time, host), and every export first removes the staging folders of its
output whose owner is no longer running on this host (an owner file older than an hour
with no owner file at all, for folders of older fst versions).

An output that is a symbolic link (`current -> bundles/v3`) is followed: the bundle is
built beside the link's target and replaces the target's folder atomically, so the link
keeps pointing at the new bundle; a dangling link's target is created. A link that loops
is refused up front.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

from fst.core.bundle import sha256_file
from fst.core.constants import BUNDLE_MANIFEST
from fst.core.versions import library_versions as _library_versions

log = logging.getLogger(__name__)

OWNER_FILE = ".fst-export-owner"  # inside a staging folder; never part of a bundle
# A staging folder without an owner file (older fst, or killed right after creating it) is
# left alone this long: it may belong to an export that is still running.
UNOWNED_GRACE_S = 3600.0


class OutputExistsError(FileExistsError):
    """The output folder exists and may not be replaced."""


def resolve_output(output: Path) -> Path:
    """The folder a bundle at `output` is written to: `output`, or where the symbolic links
    in its path lead (see the module docstring)."""
    target = Path(os.path.realpath(output))
    if target.is_symlink():  # realpath stops at a loop
        raise OutputExistsError(f"{output}: a symbolic link that loops; give a real folder")
    if target != Path(os.path.abspath(output)):
        log.info("%s is a symbolic link: writing the bundle to %s", output, target)
    return target


def check_output(output: Path, force: bool) -> None:
    """Fail early (before minutes of work) when `output` cannot be written."""
    output = resolve_output(output)
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
    output = resolve_output(output)
    check_output(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output)
    tmp = Path(tempfile.mkdtemp(prefix=f"{output.name}.tmp-", dir=output.parent))
    try:
        _write_owner(tmp)
        # mkdtemp makes the folder private (0700); a bundle is read by servers running as
        # other users, so give it the permissions a plain mkdir would have.
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        _replace(tmp, output, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_staging(output: Path) -> list[Path]:
    """Remove the `<output>.tmp-*` (and, once `output` exists, `<output>.old-*`) folders
    whose exporter is no longer running; returns them."""
    removed = []
    pattern = glob.escape(str(output))
    candidates = glob.glob(f"{pattern}.tmp-*")
    if output.exists():  # otherwise an .old- folder may hold the only copy of the bundle
        candidates += glob.glob(f"{pattern}.old-*")
    for name in sorted(candidates):
        folder = Path(name)
        if folder.is_dir() and not folder.is_symlink() and not _owner_running(folder):
            log.info("removing %s, left by an export that no longer runs", folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _write_owner(folder: Path) -> None:
    owner = {"pid": os.getpid(), "start": _start_time(os.getpid()), "host": socket.gethostname()}
    (folder / OWNER_FILE).write_text(json.dumps(owner))


def _owner_running(folder: Path) -> bool:
    """Whether the process that made `folder` may still be working in it."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
        pid, start, host = int(owner["pid"]), owner.get("start"), str(owner["host"])
    except FileNotFoundError:
        with suppress(OSError):
            return time.time() - folder.stat().st_mtime < UNOWNED_GRACE_S
        return False
    except (OSError, ValueError, KeyError, TypeError):
        return True  # unreadable: do not guess, leave it
    if host != socket.gethostname():
        return True  # another machine's export (shared file system): cannot tell
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process is alive
    # Alive, or a zombie not yet reaped, or the pid was reused by another program.
    return _state(pid) not in ("Z", "X", None) and _start_time(pid) == start


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (field 3 on), None if unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    if fields is None:
        return "?" if not Path("/proc/self/stat").exists() else None  # no /proc: unknown
    return fields[0]


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(tmp: Path, output: Path, force: bool) -> None:
    check_output(output, force)  # again: something may have appeared meanwhile
    (tmp / OWNER_FILE).unlink()  # the bundle itself carries no owner
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
    _write_owner(old)  # killed during the removal below: the next export finishes it
    shutil.rmtree(old, ignore_errors=True)


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file in the bundle except the manifest itself."""
    return {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in (BUNDLE_MANIFEST, OWNER_FILE)
    }


# Manifest key -> distribution(s) of the libraries a bundle records.
EXPORT_LIBRARIES = {
    "torch": "torch",
    "transformers": "transformers",
    "onnx": "onnx",
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
}


def library_versions() -> dict[str, str]:
    """What the bundle was exported with (`fst.core.versions`, the one implementation)."""
    return _library_versions(EXPORT_LIBRARIES)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
