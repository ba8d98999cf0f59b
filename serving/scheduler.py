"""Batching: one worker thread owns the Generator and decodes waiting requests together.

The event loop never runs the model. A route submits a `Job` (one HTTP request: one or
more prompts) to a bounded queue; the worker thread takes jobs first come, first served,
up to `max_batch_size` sequences, and delivers text pieces and results back to each job.
A job stops early when its client leaves, its deadline passes or the server shuts down:
its sequences are checked at every decoding step, so a cancelled job frees its place at
once.

One worker decodes through `continuous.ContinuousEngine` (the runtime's `DecodeBatch`);
the two ways to batch (`mode`) differ only in when it admits jobs:
- "continuous" (token level, the default): a job joins the running batch at the next
  decoding step and leaves it as soon as it finishes, so nobody waits for a whole batch.
  One step admits waiting jobs up to `max_prefill_tokens` prompt tokens (the first always):
  a burst of requests joins over a few steps instead of all waiting for one long prefill.
- "request" (request level): the waiting jobs (after up to `batch_wait_s` for company)
  start together; jobs that arrive meanwhile wait until the whole batch has finished.

A failure ends only the job it belongs to: a row whose sampling (or whose model run alone)
fails gives its job the error and cancels the job's other rows; the batch goes on. Only a
step that fails for no row in particular fails every job of the batch. The gauges are set
from the engine after every step, failed or not, so they read 0 when it is idle.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

from fst.serving.batch_sizing import BatchSizer, MemoryGate
from fst.serving.continuous import ContinuousEngine, owner
from fst.serving.generator_protocol import ServedGenerator
from fst.serving.jobs import (
    CancelReason,
    GenerationTimeoutError,
    Job,
    QueueFullError,
    SchedulerClosedError,
)
from fst.serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

BatchingMode = Literal["continuous", "request"]


class Scheduler:
    """Owns the generator; `submit` from the event loop, the worker thread does the rest."""

    def __init__(
        self,
        generator: ServedGenerator,
        *,
        max_batch_size: int,
        queue_size: int,
        batch_wait_s: float,
        metrics: ServingMetrics,
        max_prefill_tokens: int = 0,
        mode: BatchingMode = "request",
        sizer: BatchSizer | None = None,
    ) -> None:
        self.generator = generator
        self.max_batch_size = max_batch_size
        # How many sequences decode together: memory and measured step time, within
        # max_batch_size (batch_sizing.py); a plain cap when none is given.
        self.sizer = sizer or BatchSizer(max_batch_size)
        self.queue_size = queue_size
        self.batch_wait_s = batch_wait_s
        self.max_prefill_tokens = max_prefill_tokens
        self.metrics = metrics
        self.mode = mode
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._accepting = True
        self._stopping = False
        self._abort = False
        self._service_s = 1.0  # how long the last batch (or job) took: for Retry-After
        self._thread = threading.Thread(target=self._work, name="fst-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(
        self, requests: Sequence[Any], timeout_s: float, prompt_tokens: int | None = None
    ) -> Job:
        """Queue one HTTP request's generation requests; never blocks the event loop.
        `prompt_tokens`: what their prefill takes, when the route has counted it (None:
        not counted against `max_prefill_tokens`)."""
        job = Job(requests, asyncio.get_running_loop(), timeout_s, prompt_tokens)
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
        """Refuse new work, cancel queued jobs, let running ones finish for `grace_s`
        seconds and then cancel them, and join the worker. Blocking: call it in a thread."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            while self._pending:
                self._finish_unstarted(self._pending.popleft(), "shutdown")
            self.metrics.queue_depth.set(0)
            self._cond.notify_all()
        if not self._thread.is_alive():
            return
        self._thread.join(grace_s)
        if self._thread.is_alive():
            logger.warning("cancelling running generations to shut down")
            self.abort()
            self._thread.join()

    def abort(self) -> None:
        """End running generations at their next step (their clients get a shutdown error).
        Safe from any thread, and from a signal handler."""
        self._abort = True

    def _retry_after(self) -> int:
        batches_ahead = math.ceil((len(self._pending) + 1) / self.max_batch_size)
        return max(1, math.ceil(batches_ahead * self._service_s))

    # -- worker thread: the queue ----------------------------------------------------------
    def _take(
        self,
        free: int,
        idle: bool,
        memory: MemoryGate | None = None,
        prefill_tokens: int | None = None,
    ) -> list[Job] | None:
        """Jobs to start now, first come first served, within `free` sequences (and, when
        given, the KV `memory` and `prefill_tokens` prompt tokens; the first job always).

        When `idle` (nothing decoding), block until work comes and let the oldest job wait
        up to `batch_wait_s` for company; return None when the scheduler stops.
        """
        with self._cond:
            if idle:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                until = self._pending[0].enqueued_at + self.batch_wait_s
                while self._waiting_sequences() < free and not self._stopping:
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            jobs: list[Job] = []
            while self._pending:
                job = self._pending[0]
                if job.should_stop():
                    self._finish_unstarted(self._pending.popleft(), job.cancel_reason)
                    continue
                # The first job of an idle worker always starts, even if larger than a batch.
                if (jobs or not idle) and (
                    job.num_sequences > free or (memory is not None and not memory.fits(job))
                ):
                    break  # no job jumps the queue
                if prefill_tokens is not None:
                    prefill_tokens -= job.prompt_tokens or 0
                    if jobs and prefill_tokens < 0:
                        break  # the rest join at the next steps
                if memory is not None:
                    memory.add(job)
                jobs.append(self._pending.popleft())
                free -= job.num_sequences
            self.metrics.queue_depth.set(len(self._pending))
        started = time.monotonic()
        for job in jobs:
            job.started_at = started
            self.metrics.queue_wait.observe(started - job.enqueued_at)
        return jobs

    def _waiting_sequences(self) -> int:
        return sum(job.num_sequences for job in self._pending)

    def _finish_unstarted(self, job: Job, reason: CancelReason | None) -> None:
        """End a job that never ran (its client left, its deadline passed, or shutdown)."""
        job.cancel(reason or "shutdown")
        self.metrics.cancelled.labels(reason=job.cancel_reason).inc()
        if job.cancel_reason == "shutdown":
            job.deliver("error", SchedulerClosedError("the server is shutting down"))
        elif job.cancel_reason == "timeout":
            job.deliver("error", GenerationTimeoutError())
        # A client that left listens to nothing.

    def _should_stop(self, job: Job) -> bool:
        if self._abort:
            job.cancel("shutdown")
        return job.should_stop() or job.error is not None

    def _finish(self, job: Job, completions: list[list[Any]]) -> None:
        if job.first_piece_at is not None:
            self.metrics.time_to_first_token.observe(job.first_piece_at - job.enqueued_at)
        if job.cancel_reason is not None:
            self.metrics.cancelled.labels(reason=job.cancel_reason).inc()
        for per_prompt in completions:
            if per_prompt:
                self.metrics.prompt_tokens.inc(per_prompt[0].prompt_tokens)
                cached = getattr(per_prompt[0], "cached_tokens", 0)
                self.metrics.prefix_cache.labels(result="hit" if cached else "miss").inc()
                self.metrics.cached_tokens.inc(cached)
            self.metrics.generated_tokens.inc(sum(len(c.token_ids) for c in per_prompt))
        job.deliver("done", completions)

    # -- worker thread: the decode loop ----------------------------------------------------
    def _work(self) -> None:
        engine = ContinuousEngine(self.generator)
        joins = self.mode == "continuous"  # "request": admit only into an idle engine
        while True:
            admitted = False
            if joins or engine.idle:
                live = engine.live_rows
                free = min(self.sizer.step_limit(), self.max_batch_size) - len(live)
                memory = MemoryGate(self.sizer, (row.request for row in live))
                budget = self.max_prefill_tokens if joins and self.max_prefill_tokens else None
                jobs = self._take(free, idle=engine.idle, memory=memory, prefill_tokens=budget)
                if jobs is None:
                    return
                if jobs:
                    self._admit(engine, jobs)
                    admitted = True
                    if not joins and not engine.idle:  # request level: one look per batch
                        self._observe_batch(engine)
            if engine.idle:
                continue
            if joins:  # token level: one look per step
                self._observe_batch(engine)
            try:
                rows, start = len(engine.live_rows), time.perf_counter()
                ended = engine.step(self._should_stop)
                if not admitted:  # an admission already ran this step's model call
                    self.sizer.observe_step(rows, time.perf_counter() - start)
                # Several rows of one job may end in the same step: finish each job once.
                for job in {id(owner(row)): owner(row) for row in ended}.values():
                    self._job_rows_ended(job)
            except Exception as exc:
                logger.exception("decoding step failed")
                for job in {id(owner(row)): owner(row) for row in engine.live_rows}.values():
                    job.deliver("error", exc)
                engine.reset()
                self.metrics.running_sequences.set(0)
                continue
            if engine.idle:
                self.metrics.running_sequences.set(0)

    def _observe_batch(self, engine: ContinuousEngine) -> None:
        live = engine.live_rows
        self.metrics.batch_size.observe(len(live))
        self.metrics.batch_requests.observe(len({id(owner(row)) for row in live}))
        self.metrics.running_sequences.set(len(live))

    def _admit(self, engine: ContinuousEngine, jobs: list[Job]) -> None:
        try:
            rows = engine.admit(jobs)
        except Exception as exc:
            if len(jobs) > 1:  # one bad prompt must not refuse its neighbours
                for job in jobs:
                    self._admit(engine, [job])
                return
            logger.warning("could not start a generation: %s", exc)
            jobs[0].deliver("error", exc)
            return
        for job in jobs:
            job.rows = [row for row in rows if owner(row) is job]

    def _job_rows_ended(self, job: Job) -> None:
        """Some of the job's rows ended: once all have, deliver its completions; at the
        first row that failed, deliver its error (its other rows stop at the next step)."""
        if job.error is None:
            job.error = next((r.error for r in job.rows if r.error is not None), None)
            if job.error is not None:
                logger.error("a generation failed", exc_info=job.error)
                job.deliver("error", job.error)
                return
        if job.error is not None or any(r.finish_reason is None for r in job.rows):
            return
        self._service_s = max(time.monotonic() - (job.started_at or job.enqueued_at), 0.001)
        completions: list[list[Any]] = [[] for _ in job.requests]
        for r in job.rows:
            completions[r.tag.prompt].append(r.completion())
        self._finish(job, completions)
