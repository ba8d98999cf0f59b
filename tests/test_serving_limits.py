"""fst-serve's connection limits and deadlines on a real uvicorn (127.0.0.1, raw sockets).

Slow or idle clients must not hold connections forever: a request must arrive within
`request_read_timeout_s`, an idle keep-alive connection closes after
`timeout_keep_alive_s`, a stream the client stops reading is closed (and its generation
cancelled) after `write_stall_timeout_s`, `limit_concurrency` answers 503 beyond it, and
running out of file descriptors is logged once, not once per accept() attempt.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from serving_fakes import FakeGenerator, running_server

from fst.serving.app import create_app
from fst.serving.settings import ServingSettings


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def connect(base: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connecting, so the window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    sock.settimeout(5)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (socket.timeout if it never does)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def serve_fake(**settings: Any) -> Any:
    fake = FakeGenerator(**settings.pop("fake", {}))
    return fake, running_server(create_app(ServingSettings(**settings), generator=fake))


def test_a_request_that_never_completes_gets_408_and_is_closed() -> None:
    """Regression: 100 partial requests stayed open 40 s (nothing timed them out)."""
    _, server = serve_fake(request_read_timeout_s=0.5)
    with server as base:
        partial, silent, slow_body = connect(base), connect(base), connect(base)
        started = time.monotonic()
        partial.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
        slow_body.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n{"
        )
        answers = [read_until_closed(s) for s in (partial, silent, slow_body)]
        elapsed = time.monotonic() - started
        healthy = httpx.get(f"{base}/health", timeout=5)  # a prompt client is unaffected
    assert answers[0].startswith(b"HTTP/1.1 408 ") and answers[1].startswith(b"HTTP/1.1 408 ")
    assert answers[2] == b"" or answers[2].startswith(b"HTTP/1.1 408 ")
    assert elapsed < 4
    assert healthy.status_code == 200


def test_idle_keep_alive_connections_close_and_the_limit_answers_503() -> None:
    _, server = serve_fake(timeout_keep_alive_s=0.3, limit_concurrency=3)
    with server as base:
        keep_alive = connect(base)
        keep_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        answer = read_until_closed(keep_alive)
        closed_after = time.monotonic() - started
        idle = [connect(base) for _ in range(3)]
        wait_until(lambda: _status(base) == 503, timeout=5)  # 3 idle + this one > 3
        refused = read_until_closed(connect(base))  # beyond the limit: refused at once
        for sock in idle:
            sock.close()
        wait_until(lambda: _status(base) == 200, timeout=5)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"status":"ok","detail":null}')
    assert closed_after < 3
    assert refused.startswith(b"HTTP/1.1 503 ") and refused.endswith(b"too many connections\n")


def test_a_stream_the_client_stops_reading_is_closed_and_cancelled() -> None:
    """A client that stops reading used to hold its batch slot until max_tokens."""
    fake, server = serve_fake(
        fake={"max_positions": 2_000_000, "step_s": 0.01},
        write_stall_timeout_s=0.5,
        max_new_tokens_limit=100_000,
        max_body_bytes=2_000_000,
    )
    # Echoing a 500 KB prompt 16 times (8 MB) overflows every buffer on the way at once.
    body = {"prompt": "a" * 500_000, "n": 16, "echo": True, "max_tokens": 90_000, "stream": True}
    payload = json.dumps(body).encode()
    with server as base:
        sock = connect(base, rcvbuf=4096)
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(payload) + payload
        )
        assert sock.recv(16).startswith(b"HTTP/1.1 200")  # then read nothing more
        wait_until(lambda: fake.cancelled_sequences == 16, timeout=10)
        sock.close()


def test_running_out_of_file_descriptors_is_logged_once() -> None:
    """Regression: under a small fd limit, asyncio logged a traceback per accept() attempt
    (229,328 in 5 s). Now: one line, and the server answers again once fds are free."""
    script = Path(__file__).with_name("serving_fakes.py")
    path = os.pathsep.join(p for p in (str(script.parent), os.environ.get("PYTHONPATH")) if p)
    limit = 48

    def small_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    proc = subprocess.Popen(
        [sys.executable, str(script), "0", "--request-read-timeout-s", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        preexec_fn=small_fd_limit,
    )
    clients: list[socket.socket] = []
    try:
        base = f"http://127.0.0.1:{int(proc.stdout.readline())}"
        wait_until(lambda: _status(base) == 200, timeout=20)
        for _ in range(limit + 20):  # more than the server can hold
            clients.append(connect(base))
        time.sleep(1.5)  # accept() fails, retried each second: a few hundred attempts
        for sock in clients:
            sock.close()
        wait_until(lambda: _status(base) == 200, timeout=10)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        log = proc.stderr.read()
    finally:
        for sock in clients:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log[-3000:]
    assert log.count("cannot accept connections: [Errno 24] Too many open files") == 1, log[-3000:]
    assert "out of system resource" not in log and "Traceback" not in log


def _status(base: str) -> int:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code
    except httpx.HTTPError:
        return 0
