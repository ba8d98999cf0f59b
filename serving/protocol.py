"""uvicorn's h11 HTTP protocol with the two deadlines uvicorn lacks.

uvicorn closes an idle keep-alive connection, but not one that never finishes its
request (slowloris: a few header bytes, then silence), nor one whose client stops reading
a response (a stream then holds its batch slot until `max_tokens`). Each such connection
holds a file descriptor; a few hundred made the server unreachable. Here:

- the request read deadline: from connecting (or from the first byte of the next request
  on a keep-alive connection) to the end of the request body; when it passes before the
  response has started, the client gets 408 and the connection is closed;
- connections beyond `limit_concurrency` get 503 and are closed when they connect
  (uvicorn's own check runs only when a request arrives, so idle ones would pile up);
- the write stall deadline: when the transport's buffer stays full (no write progress)
  for that long, the connection is aborted. The app then sees the client leave, as with
  any disconnect, and cancels the generation.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

_TIMEOUT_BODY = b"request not received in time\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n" % len(_TIMEOUT_BODY) + _TIMEOUT_BODY
)


_TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections\n"
)


class DeadlineH11Protocol(H11Protocol):
    """H11Protocol plus a request read deadline and a write stall deadline (seconds)."""

    request_read_timeout_s: float = 30.0
    write_stall_timeout_s: float = 30.0

    @classmethod
    def with_timeouts(cls, request_read_s: float, write_stall_s: float) -> type[H11Protocol]:
        """A subclass with these deadlines, to pass as uvicorn's `http` protocol class."""
        attrs = {"request_read_timeout_s": request_read_s, "write_stall_timeout_s": write_stall_s}
        return type(cls.__name__, (cls,), attrs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._stall_deadline: asyncio.TimerHandle | None = None

    # -- reading the request ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.limit_concurrency is not None and len(self.connections) > self.limit_concurrency:
            # uvicorn answers 503 only to a request; idle connections would pile up.
            self.transport.write(_TOO_MANY_CONNECTIONS)
            self.transport.close()
            return
        self._arm_read_deadline()

    def data_received(self, data: bytes) -> None:
        if self._read_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm_read_deadline()  # the next request on a keep-alive connection starts
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._cancel(self._read_deadline)  # the whole request is in
            self._read_deadline = None

    def _arm_read_deadline(self) -> None:
        self._read_deadline = self.loop.call_later(self.request_read_timeout_s, self._read_late)

    def _read_late(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        logger.info(
            "%s: request not received within %.3g s; closing",
            self._peer(),
            self.request_read_timeout_s,
        )
        if self.conn.our_state is h11.IDLE:  # no response started: say why
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()

    # -- writing the response --------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        self._cancel(self._stall_deadline)
        self._stall_deadline = self.loop.call_later(self.write_stall_timeout_s, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel(self._stall_deadline)
        self._stall_deadline = None

    def _stalled(self) -> None:
        self._stall_deadline = None
        logger.info(
            "%s: client read nothing for %.3g s; closing the connection",
            self._peer(),
            self.write_stall_timeout_s,
        )
        self.transport.abort()  # close() would wait to flush what the client won't read

    # -- both ------------------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._read_deadline, self._stall_deadline):
            self._cancel(handle)
        self._read_deadline = self._stall_deadline = None
        super().connection_lost(exc)

    @staticmethod
    def _cancel(handle: asyncio.TimerHandle | None) -> None:
        if handle is not None:
            handle.cancel()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"
