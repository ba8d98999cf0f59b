"""fst-serve under uvicorn: connection limits, a drain-then-close shutdown, exit codes.

What uvicorn does not do on its own, and this module adds:
- shutdown drains before it closes: on SIGTERM / Ctrl-C the server keeps listening while
  running generations finish (for `shutdown_timeout_s`, then they are ended with an
  error event and `data: [DONE]`); meanwhile /ready answers 503 "stopping" and new
  generation requests 503. Only then does uvicorn close the socket and the connections.
  (uvicorn's own graceful timeout used to expire first and cut streams mid-body.)
- a clean signal exit is exit status 0 (uvicorn re-raises the signal: 143 for SIGTERM); a
  second signal ends running generations at once;
- a model that fails to load stops the server (the CLI then exits 2 with one line);
- the deadlines of `protocol.DeadlineH11Protocol` and uvicorn's connection limit;
- when accept() runs out of file descriptors, asyncio logs a traceback on every attempt
  (thousands a second); here it is one line a minute.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from fst.serving.protocol import DeadlineH11Protocol
from fst.serving.settings import ServingSettings
from fst.serving.state import ServingState

logger = logging.getLogger("fst.serving")

# After the drain, how long uvicorn waits for the last responses to be written.
FLUSH_TIMEOUT_S = 5
# asyncio's message for accept() failing with EMFILE / ENFILE / ENOBUFS / ENOMEM.
ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"
ACCEPT_LOG_INTERVAL_S = 60.0


class FstServer(uvicorn.Server):
    """uvicorn.Server that drains the app's scheduler before closing, and exits cleanly."""

    def __init__(self, config: uvicorn.Config, state: ServingState) -> None:
        super().__init__(config)
        self.state = state

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        with asyncio.Runner(loop_factory=EventLoop) as runner:  # asyncio's, see EventLoop
            runner.run(self.serve(sockets=sockets))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Unlike uvicorn's, records no signal to re-raise: a graceful stop exits 0.
        if self.should_exit:  # a second signal: stop now
            self.force_exit = True
            self.state.abort()
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(AcceptErrorLog())
        await super().startup(sockets=sockets)

    async def on_tick(self, counter: int) -> bool:
        if self.state.status == "failed":
            return True  # nothing to serve: stop, and let the CLI say why
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        grace = self.state.settings.shutdown_timeout_s
        logger.info("stopping: draining running generations (up to %.3g s)", grace)
        await self.state.drain()  # still listening: /ready says "stopping"
        await super().shutdown(sockets=sockets)


class EventLoop(asyncio.SelectorEventLoop):
    """asyncio's loop, without the retries of a closed listening socket.

    When accept() fails for lack of file descriptors, asyncio (3.11) goes on calling it
    `backlog` times in the same tick, scheduling a retry a second later for each failure;
    the retries that fire after shutdown closed the socket each logged a traceback
    (thousands). They have nothing to do then.
    """

    def _start_serving(self, protocol_factory: Any, sock: Any, *args: Any, **kwargs: Any) -> None:
        if sock.fileno() == -1:
            return
        super()._start_serving(protocol_factory, sock, *args, **kwargs)  # type: ignore[misc]


class AcceptErrorLog:
    """Loop exception handler: accept() out of file descriptors, once a minute with a count."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._since_last = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_OUT_OF_RESOURCES:
            loop.default_exception_handler(context)
            return
        self._since_last += 1
        now = time.monotonic()
        if self._last is not None and now - self._last < ACCEPT_LOG_INTERVAL_S:
            return
        logger.error(
            "cannot accept connections: %s (open-files limit %d; %d failed attempts since the last report); "
            "retrying every second: raise the limit (ulimit -n) or lower --limit_concurrency",
            context.get("exception"),
            open_files_limit(),
            self._since_last,
        )
        self._last, self._since_last = now, 0


def open_files_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def check_open_files_limit(limit_concurrency: int) -> None:
    """Warn when the fd limit cannot hold `limit_concurrency` connections (raise the soft
    limit up to the hard one first, as it is ours to raise)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = limit_concurrency + 64  # the model, logs, sockets of the process itself
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        logger.warning(
            "open-files limit %d is below --limit_concurrency %d + 64: connections may be "
            "refused before the limit answers 503; raise ulimit -n or lower the limit",
            target,
            limit_concurrency,
        )


def build_server(app: FastAPI, settings: ServingSettings) -> FstServer:
    """The uvicorn server for `app` (made by `create_app(settings)`), with its limits."""
    check_open_files_limit(settings.limit_concurrency)
    protocol = DeadlineH11Protocol.with_timeouts(
        settings.request_read_timeout_s, settings.write_stall_timeout_s
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=protocol,
        loop="asyncio",  # run() makes it an EventLoop
        lifespan="on",
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.timeout_keep_alive_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=FLUSH_TIMEOUT_S,
    )
    return FstServer(config, app.state.serving)
