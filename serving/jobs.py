"""A generation job: one HTTP request's prompts, as the scheduler's worker and a route see it.

The worker thread hands text pieces and the result to the job's asyncio queue through
`loop.call_soon_threadsafe`; the route reads them with `pieces()` or `wait()`. Either side
may cancel the job (client gone, deadline passed, shutdown); the worker polls
`should_stop()` at every decoding step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

CancelReason = Literal["disconnect", "timeout", "shutdown"]


class QueueFullError(Exception):
    """The queue holds `queue_size` jobs already; the client should retry later."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("the server is busy: too many requests are waiting")
        self.retry_after_s = retry_after_s


class SchedulerClosedError(Exception):
    """The server is shutting down and takes no new work."""


class GenerationTimeoutError(Exception):
    """The job did not finish before its deadline."""


class Job:
    """One HTTP request's generation: its prompts run in the same batch.

    Written by the worker thread only through `call_soon_threadsafe`, read on the event loop.
    `cancel_reason` is a plain attribute both threads may set (a single assignment is atomic).
    """

    def __init__(
        self,
        requests: Sequence[Any],
        loop: asyncio.AbstractEventLoop,
        timeout_s: float,
        prompt_tokens: int | None = None,
    ) -> None:
        self.requests = list(requests)
        self.prompt_tokens = prompt_tokens  # its prompts' tokens (the prefill), if counted
        self.num_sequences = sum(r.params.num_return_sequences for r in self.requests)
        self.enqueued_at = time.monotonic()
        self.deadline = self.enqueued_at + timeout_s
        self.started_at: float | None = None
        self.first_piece_at: float | None = None
        self.cancel_reason: CancelReason | None = None
        self.result: list[list[Any]] | None = None
        self.rows: list[Any] = []  # continuous batching: this job's rows in the batch
        self.error: BaseException | None = None  # set (worker) when one of its rows failed
        self._loop = loop
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    # -- either thread ---------------------------------------------------------------------
    def cancel(self, reason: CancelReason) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason

    def should_stop(self) -> bool:
        """True once the job is cancelled; marks it timed out when its deadline has passed."""
        if self.cancel_reason is None and time.monotonic() > self.deadline:
            self.cancel("timeout")
        return self.cancel_reason is not None

    # -- worker thread ---------------------------------------------------------------------
    def deliver(self, kind: str, payload: Any) -> None:
        if kind == "piece" and self.first_piece_at is None:
            self.first_piece_at = time.monotonic()
        # RuntimeError: the event loop is gone (server stopped), so nobody is listening.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, payload))

    # -- event loop ------------------------------------------------------------------------
    async def pieces(self) -> AsyncIterator[tuple[int, int, str]]:
        """Yield `(prompt_index, sequence_index, text)` as text becomes final.

        Afterwards `self.result` holds the completions (one list per prompt). Raises
        `GenerationTimeoutError` at the deadline even if the worker has not started the job.
        """
        while True:
            if self._events.empty():
                remaining = self.deadline - time.monotonic()
                try:
                    kind, payload = await asyncio.wait_for(self._events.get(), max(remaining, 0))
                except TimeoutError:
                    self.cancel("timeout")
                    raise GenerationTimeoutError from None
            else:
                kind, payload = self._events.get_nowait()
            if kind == "piece":
                yield payload
            elif kind == "done":
                self.result = payload
                return
            else:
                raise payload

    async def wait(self) -> list[list[Any]]:
        async for _ in self.pieces():
            pass
        assert self.result is not None
        return self.result
