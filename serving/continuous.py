"""Token-level continuous batching: requests join the running batch between decoding steps.

With request-level batching a request that arrives while a batch decodes waits for the
whole batch to finish. Here the scheduler admits it at the next step. The decoding itself is
the runtime's `DecodeBatch` (`generator.new_batch()`), the same per-token loop as
`Generator.run`: `add` prefills the new prompts and merges their KV cache into the running
batch, `step` samples one token per row and reports final text and finished rows, so a
text depends only on its prompt, params and seed, never on its neighbours in the batch.
This module only maps the batch's rows to the scheduler's jobs; request-level batching
drives the same engine, admitting only when it is idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fst.runtime import Row
from fst.serving.generator_protocol import ServedGenerator


@dataclass(frozen=True)
class Owner:
    """A row's tag: which job, and which of the job's prompts."""

    job: Any  # the scheduler's Job
    prompt: int


def owner(row: Row) -> Any:
    """The job a row belongs to."""
    return row.tag.job


class ContinuousEngine:
    """The running batch: `admit` jobs, `step` one token for every row, deliver the text."""

    def __init__(self, generator: ServedGenerator) -> None:
        self.generator = generator
        self.batch = generator.new_batch()

    @property
    def live_rows(self) -> list[Row]:
        return self.batch.live_rows

    @property
    def idle(self) -> bool:
        return not self.batch.live_rows

    def reset(self) -> None:
        """Forget every row (after a failed step)."""
        self.batch = self.generator.new_batch()

    def admit(self, jobs: list[Any]) -> list[Row]:
        """Prefill the jobs' prompts and add their samples to the batch; returns the new rows.

        Raises (before changing the batch) on a prompt the model cannot take.
        """
        requests = [request for job in jobs for request in job.requests]
        tags = [Owner(job, i) for job in jobs for i in range(len(job.requests))]
        return [row for rows in self.batch.add(requests, tags) for row in rows]

    def step(self, should_stop: Any) -> list[Row]:
        """Cancel the rows whose job `should_stop(job)`, decode one token for the others,
        deliver the text to each row's job; returns the rows that ended."""
        for row in self.batch.live_rows:
            if should_stop(owner(row)):
                self.batch.cancel(row)
        ended = []
        for event in self.batch.step():
            row = event.row
            if event.piece:
                owner(row).deliver("piece", (row.tag.prompt, row.index, event.piece))
            if event.finished:
                ended.append(row)
        return ended
