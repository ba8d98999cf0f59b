"""Staging folders of killed exports are removed by the next export."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fst.export import bundle_writer
from fst.export.bundle_writer import OWNER_FILE, remove_stale_staging, staging_folder

# A stand-in exporter: opens a staging folder for `output`, says where, then works forever.
HOLDER = """
import sys, time
from pathlib import Path
from fst.export.bundle_writer import staging_folder
with staging_folder(Path(sys.argv[1]), force=True) as tmp:
    (tmp / "model.onnx").write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(600)
"""


def _holder(output: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(output)], stdout=subprocess.PIPE, text=True
    )
    return proc, Path(proc.stdout.readline().strip())


def _leftovers(output: Path) -> list[str]:
    return sorted(p.name for p in output.parent.iterdir() if p.name != output.name)


def test_the_staging_folder_of_a_killed_export_is_removed_by_the_next_one(tmp_path) -> None:
    output = tmp_path / "bundle"
    killed, killed_tmp = _holder(output)
    running, running_tmp = _holder(output)
    try:
        assert json.loads((killed_tmp / OWNER_FILE).read_text())["pid"] == killed.pid
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        with staging_folder(output, force=True) as tmp:
            (tmp / "model.onnx").write_bytes(b"bundle")
        # The dead export's folder is gone; the live one's is left to it.
        assert not killed_tmp.exists() and running_tmp.is_dir()
        assert sorted(p.name for p in output.iterdir()) == ["model.onnx"]  # no owner file
    finally:
        running.kill()
        running.wait(10)
    assert remove_stale_staging(output) == [running_tmp]
    assert _leftovers(output) == []


def test_a_reused_pid_a_zombie_and_unowned_folders(tmp_path, monkeypatch) -> None:
    output = tmp_path / "bundle"
    output.mkdir()

    def staging(name: str, owner: dict | None, age_s: float = 0.0) -> Path:
        folder = tmp_path / f"bundle.{name}"
        folder.mkdir()
        if owner is not None:
            (folder / OWNER_FILE).write_text(json.dumps(owner))
        then = time.time() - age_s
        os.utime(folder, (then, then))
        return folder

    me = {"pid": os.getpid(), "host": socket.gethostname()}
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while bundle_writer._state(zombie.pid) != "Z":  # exited, not yet reaped
        time.sleep(0.01)
    reused = staging("tmp-reused", {**me, "pid": os.getppid(), "start": -1})
    dead = staging("tmp-zombie", {**me, "pid": zombie.pid, "start": None})
    other_host = staging("tmp-elsewhere", {"pid": 1, "host": "another-machine", "start": 0})
    recent = staging("tmp-unowned-recent", None)
    old = staging("tmp-unowned-old", None, age_s=2 * bundle_writer.UNOWNED_GRACE_S)
    old_bundle = staging("old-abc", {**me, "pid": zombie.pid, "start": None})
    try:
        removed = remove_stale_staging(output)
    finally:
        zombie.wait(10)
    assert sorted(removed) == sorted([reused, dead, old, old_bundle])
    assert other_host.is_dir() and recent.is_dir()


def test_an_old_folder_is_kept_while_it_holds_the_only_copy(tmp_path) -> None:
    output = tmp_path / "bundle"  # missing: killed between moving it aside and the rename
    old = tmp_path / "bundle.old-xyz"
    old.mkdir()
    (old / "model.onnx").write_bytes(b"the previous bundle")
    assert remove_stale_staging(output) == [] and old.is_dir()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_remove_the_staging_folder_at_once(tmp_path, sig) -> None:
    # fst-export's own handler turns SIGTERM into the KeyboardInterrupt Ctrl-C raises.
    # SIGINT's default handler too: a shell starts background jobs with SIGINT ignored, and
    # Python then leaves it ignored (CI launched as `cmd &` did).
    script = HOLDER.replace(
        "import sys, time",
        "import signal, sys, time\n"
        "from fst.export.cli import _raise_interrupt\n"
        "signal.signal(signal.SIGTERM, _raise_interrupt)\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)",
    )
    output = tmp_path / "bundle"
    proc = subprocess.Popen([sys.executable, "-c", script, str(output)], stdout=subprocess.PIPE)
    tmp = Path(proc.stdout.readline().decode().strip())
    assert tmp.is_dir()
    proc.send_signal(sig)
    proc.wait(10)
    assert _leftovers(output) == []


def _stage(output: Path, content: bytes, force: bool = False) -> None:
    with staging_folder(output, force=force) as tmp:
        (tmp / "fst_bundle.json").write_text("{}")
        (tmp / "model.onnx").write_bytes(content)


def test_a_dangling_symlink_output_gets_the_bundle_at_its_target(tmp_path) -> None:
    target = tmp_path / "bundles" / "v3"
    (tmp_path / "bundles").mkdir()
    link = tmp_path / "current"
    link.symlink_to(target)
    _stage(link, b"new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert (link / "model.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in target.iterdir()) == ["fst_bundle.json", "model.onnx"]
    assert _leftovers(link) == ["bundles"] and _leftovers(target) == []


def test_force_through_a_symlink_replaces_the_targets_bundle_and_keeps_the_link(tmp_path) -> None:
    target = tmp_path / "v2"
    _stage(target, b"old")
    link = tmp_path / "current"
    link.symlink_to(target)
    with pytest.raises(bundle_writer.OutputExistsError, match="--force"):
        _stage(link, b"new")
    _stage(link, b"new", force=True)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert (target / "model.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in target.iterdir()) == ["fst_bundle.json", "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v2"]


def test_a_symlink_loop_is_refused_before_any_work(tmp_path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(bundle_writer.OutputExistsError, match="loops"):
        bundle_writer.check_output(loop, force=True)


@pytest.mark.parametrize("code", ["ENOSPC", "EFBIG"])
def test_no_room_for_the_bundle_is_one_line(tmp_path, monkeypatch, capsys, code) -> None:
    import errno

    from fst.export import cli, exporter

    def no_room(*args, **kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(exporter, "export_bundle", no_room)
    output = tmp_path / "bundle"
    assert cli.main(["--model_path", str(tmp_path), "--output", str(output), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "disk is full" in err and "unexpected" not in err
