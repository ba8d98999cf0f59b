"""Dynamic batching: one worker thread owns the Generator and runs waiting requests together.

The event loop never runs the model. A route submits a `Job` (one HTTP request: one or
more prompts), the worker takes every waiting job up to `max_batch_size` sequences (after
waiting up to `batch_wait_s` for company), runs them as one batch with
`Generator.run`, and hands each text piece back to the job's asyncio queue through
`loop.call_soon_threadsafe`. A job stops early when its client leaves, its deadline passes
or the server shuts down: the generator polls `is_cancelled` at every decoding step, so a
cancelled job frees its place in the batch at once.

Batching is at request level: a batch runs until all its sequences finish; requests that
arrive meanwhile wait for the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

from fst.serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

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
        self, requests: Sequence[Any], loop: asyncio.AbstractEventLoop, timeout_s: float
    ) -> None:
        self.requests = list(requests)
        self.num_sequences = sum(r.params.num_return_sequences for r in self.requests)
        self.enqueued_at = time.monotonic()
        self.deadline = self.enqueued_at + timeout_s
        self.started_at: float | None = None
        self.first_piece_at: float | None = None
        self.cancel_reason: CancelReason | None = None
        self.result: list[list[Any]] | None = None
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
                except (asyncio.TimeoutError, TimeoutError):
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


class Scheduler:
    """Owns the generator; `submit` from the event loop, the worker thread does the rest."""

    def __init__(
        self,
        generator: Any,
        *,
        max_batch_size: int,
        queue_size: int,
        batch_wait_s: float,
        metrics: ServingMetrics,
    ) -> None:
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.queue_size = queue_size
        self.batch_wait_s = batch_wait_s
        self.metrics = metrics
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._accepting = True
        self._stopping = False
        self._abort = False
        self._last_batch_s = 1.0
        self._thread = threading.Thread(target=self._work, name="fst-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def submit(self, requests: Sequence[Any], timeout_s: float) -> Job:
        """Queue one HTTP request's generation requests; never blocks the event loop."""
        job = Job(requests, asyncio.get_running_loop(), timeout_s)
        with self._cond:
            if not self._accepting:
                raise SchedulerClosedError("the server is shutting down")
            if len(self._pending) >= self.queue_size:
                self.metrics.rejected.labels(reason="queue_full").inc()
                raise QueueFullError(self._retry_after())
            self._pending.append(job)
            self.metrics.queue_depth.set(len(self._pending))
            self._cond.notify()
        return job

    def stop(self, grace_s: float) -> None:
        """Refuse new work, cancel queued jobs, let the running batch finish for `grace_s`
        seconds and then cancel it, and join the worker. Blocking: call it in a thread."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            while self._pending:
                self._finish_cancelled(self._pending.popleft(), "shutdown")
            self.metrics.queue_depth.set(0)
            self._cond.notify_all()
        if not self._thread.is_alive():
            return
        self._thread.join(grace_s)
        if self._thread.is_alive():
            logger.warning("cancelling the running batch to shut down")
            self._abort = True
            self._thread.join()

    # -- worker thread ---------------------------------------------------------------------
    def _retry_after(self) -> int:
        batches_ahead = math.ceil((len(self._pending) + 1) / self.max_batch_size)
        return max(1, math.ceil(batches_ahead * self._last_batch_s))

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            if batch:
                self._run(batch)

    def _next_batch(self) -> list[Job] | None:
        """Wait for work; return the jobs of the next batch, or None when stopping."""
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            # Let the oldest job wait a little for company, unless the batch is full already.
            until = self._pending[0].enqueued_at + self.batch_wait_s
            while self._waiting_sequences() < self.max_batch_size and not self._stopping:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[Job] = []
            size = 0
            while self._pending:
                job = self._pending[0]
                if job.should_stop():
                    self._finish_cancelled(self._pending.popleft(), job.cancel_reason)
                    continue
                if batch and size + job.num_sequences > self.max_batch_size:
                    break  # first come, first served: no job jumps the queue
                batch.append(self._pending.popleft())
                size += job.num_sequences
            self.metrics.queue_depth.set(len(self._pending))
            return batch

    def _waiting_sequences(self) -> int:
        return sum(job.num_sequences for job in self._pending)

    def _finish_cancelled(self, job: Job, reason: CancelReason | None) -> None:
        """End a job that never ran (its client left, its deadline passed, or shutdown)."""
        job.cancel(reason or "shutdown")
        self.metrics.cancelled.labels(reason=job.cancel_reason).inc()
        if job.cancel_reason == "shutdown":
            job.deliver("error", SchedulerClosedError("the server is shutting down"))
        elif job.cancel_reason == "timeout":
            job.deliver("error", GenerationTimeoutError())
        # A client that left listens to nothing.

    def _run(self, batch: list[Job]) -> None:
        try:
            self._run_batch(batch)
        except Exception as exc:
            if len(batch) == 1:
                logger.exception("generation failed")
                batch[0].deliver("error", exc)
                return
            # One bad request must not fail its neighbours: rerun on its own each job that
            # has not streamed anything yet (rerunning the others would repeat their text).
            logger.warning("batch of %d requests failed (%s); retrying one by one", len(batch), exc)
            for job in batch:
                if job.first_piece_at is None:
                    self._run([job])
                else:
                    job.deliver("error", exc)

    def _run_batch(self, batch: list[Job]) -> None:
        owners: list[tuple[Job, int]] = [
            (job, i) for job in batch for i in range(len(job.requests))
        ]
        requests = [job.requests[i] for job, i in owners]

        def on_piece(request_idx: int, seq_idx: int, piece: str) -> None:
            job, prompt_idx = owners[request_idx]
            job.deliver("piece", (prompt_idx, seq_idx, piece))

        def is_cancelled(request_idx: int) -> bool:
            job = owners[request_idx][0]
            if self._abort:
                job.cancel("shutdown")
            return job.should_stop()

        started = time.monotonic()
        sequences = sum(job.num_sequences for job in batch)
        for job in batch:
            job.started_at = started
            self.metrics.queue_wait.observe(started - job.enqueued_at)
        self.metrics.batch_size.observe(sequences)
        self.metrics.batch_requests.observe(len(batch))
        self.metrics.running_sequences.set(sequences)
        try:
            results = self.generator.run(requests, on_piece=on_piece, is_cancelled=is_cancelled)
        finally:
            self.metrics.running_sequences.set(0)
        self._last_batch_s = max(time.monotonic() - started, 0.001)

        position = 0
        for job in batch:
            mine = results[position : position + len(job.requests)]
            position += len(job.requests)
            self._account(job, mine)
            job.deliver("done", mine)

    def _account(self, job: Job, completions: list[list[Any]]) -> None:
        if job.first_piece_at is not None:
            self.metrics.time_to_first_token.observe(job.first_piece_at - job.enqueued_at)
        if job.cancel_reason is not None:
            self.metrics.cancelled.labels(reason=job.cancel_reason).inc()
        for per_prompt in completions:
            if per_prompt:
                self.metrics.prompt_tokens.inc(per_prompt[0].prompt_tokens)
            self.metrics.generated_tokens.inc(sum(len(c.token_ids) for c in per_prompt))
