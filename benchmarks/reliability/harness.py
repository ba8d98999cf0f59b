"""What every reliability probe uses: the report rows, process inspection through /proc, an
fst-serve subprocess on a free 127.0.0.1 port, and the HTTP client calls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks import common

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("reliability")
PROMPT = "The meaning of life is"


@dataclass
class Row:
    probe: str
    figure: str
    passed: bool


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, probe: str, figure: str, passed: bool) -> None:
        self.rows.append(Row(probe, figure, bool(passed)))
        log.info("%s %s: %s", "PASS" if passed else "FAIL", probe, figure)

    def crashed(self, probe: str, error: BaseException) -> None:
        self.add(probe, f"the probe itself failed: {type(error).__name__}: {error}", False)


# --- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def rss_mb(pid: int) -> float | None:
    return common.proc_mb(f"/proc/{pid}/status", "VmRSS")


def alive(pid: int) -> bool:
    """Running, not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in "ZX"
    except OSError:
        return False


def _live_processes_where(field: int, value: int) -> list[int]:
    """Live (non-zombie) pids whose /proc stat field `field` (after the command name:
    1 = parent pid, 2 = process group) equals `value`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[field]) == value and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (a server started in its own session)."""
    return _live_processes_where(2, pgid)


def children_of(pid: int) -> list[int]:
    return _live_processes_where(1, pid)


def exit_status(rc: int | None) -> str:
    """'exit 0', or 'killed by SIGTERM (shell status 143)' for Popen's negative codes."""
    if rc is None:
        return "still running"
    if rc < 0:
        return f"killed by {signal.Signals(-rc).name} (shell status {128 - rc})"
    return f"exit {rc}"


def one_line(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return len(lines) == 1 and "Traceback" not in stderr


class Server:
    """fst-serve in its own session on a free loopback port."""

    def __init__(self, bundle: Path, *extra: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable, "-m", "fst.serving.cli", "--bundle", str(bundle),
            "--host", "127.0.0.1", "--port", str(self.port), "--threads", "1",
            "--log-level", "warning", *extra,
        ]  # fmt: skip
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (open while the server runs)
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=self.stderr, start_new_session=True
        )

    def wait_ready(self, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    return True
            time.sleep(0.3)
        return False

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in group_members(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return self.proc.returncode

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")


def completion_body(i: int, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "prompt": f"{PROMPT} {i}",
        "max_tokens": max_tokens,
        "seed": i,
        "ignore_eos": True,
        "stream": stream,
    }


async def completion(client: httpx.AsyncClient, i: int, max_tokens: int, stream: bool) -> int:
    """Status of one request (a stream counts as 200 only if it ends with [DONE])."""
    body = completion_body(i, max_tokens, stream)
    if not stream:
        return (await client.post("/v1/completions", json=body)).status_code
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            return response.status_code
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    return 200 if lines and lines[-1] == "data: [DONE]" else 599


async def run_warmup(base: str, clients: int) -> None:
    """One round of concurrent requests so the 'before' figures are not a cold start's."""
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        await asyncio.gather(*(completion(client, i, 16, i % 2 == 0) for i in range(clients)))
