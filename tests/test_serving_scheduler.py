"""The scheduler alone: batch formation, cancellation in the queue, back-pressure, shutdown.

Jobs are queued before the worker starts, so the batches it forms are deterministic.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from serving_fakes import FakeGenerator

from fst.core.generation_params import GenerationParams
from fst.runtime import GenerationRequest
from fst.serving.jobs import GenerationTimeoutError, QueueFullError, SchedulerClosedError
from fst.serving.metrics import ServingMetrics
from fst.serving.scheduler import Scheduler


def request(prompt: str, n: int = 1, tokens: int = 3) -> GenerationRequest:
    return GenerationRequest(
        prompt, GenerationParams(max_new_tokens=tokens, num_return_sequences=n)
    )


def scheduler(fake: FakeGenerator, **kw) -> Scheduler:
    options = {"max_batch_size": 8, "queue_size": 8, "batch_wait_s": 0.0, **kw}
    return Scheduler(fake, metrics=ServingMetrics(), **options)


def test_batches_fill_up_to_max_sequences_first_come_first_served() -> None:
    fake = FakeGenerator()
    sched = scheduler(fake)

    async def main() -> list:
        jobs = [sched.submit([request(p, n=3)], timeout_s=10) for p in "abc"]
        jobs.append(sched.submit([request("d", n=1), request("e", n=1)], timeout_s=10))
        sched.start()
        results = [await job.wait() for job in jobs]
        sched.stop(grace_s=5)
        return results

    results = asyncio.run(main())
    # 3 + 3 fit in 8; the third job (3) would overflow, so it leads the next batch with d, e.
    assert fake.batches == [6, 5]
    assert [len(r) for r in results] == [1, 1, 1, 2]
    assert [c.index for c in results[0][0]] == [0, 1, 2]
    assert results[3][1][0].prompt == "e"


def test_job_cancelled_while_queued_never_runs() -> None:
    fake = FakeGenerator()
    sched = scheduler(fake)

    async def main() -> None:
        kept = sched.submit([request("kept")], timeout_s=10)
        gone = sched.submit([request("gone")], timeout_s=10)
        gone.cancel("disconnect")
        sched.start()
        await kept.wait()
        sched.stop(grace_s=5)

    asyncio.run(main())
    assert [r.prompt for r in fake.requests] == ["kept"]
    assert sched.metrics.cancelled.labels(reason="disconnect")._value.get() == 1


def test_queue_bound_and_deadline_in_the_queue() -> None:
    sched = scheduler(FakeGenerator(), queue_size=2)

    async def main() -> None:
        expired = sched.submit([request("a")], timeout_s=0.01)
        sched.submit([request("b")], timeout_s=10)
        with pytest.raises(QueueFullError) as full:
            sched.submit([request("c")], timeout_s=10)
        assert full.value.retry_after_s >= 1
        with pytest.raises(GenerationTimeoutError):
            await expired.wait()  # the worker has not even started
        assert expired.cancel_reason == "timeout"
        sched.stop(grace_s=1)

    asyncio.run(main())


def test_stop_cancels_queued_work_aborts_the_batch_and_joins() -> None:
    fake = FakeGenerator(step_s=0.02)
    sched = scheduler(fake, max_batch_size=1)

    async def main() -> None:
        running = sched.submit([request("long", tokens=1000)], timeout_s=60)  # 20 s
        queued = sched.submit([request("queued")], timeout_s=60)
        sched.start()
        while not fake.batches:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await asyncio.to_thread(sched.stop, 0.2)
        assert time.monotonic() - started < 5
        with pytest.raises(SchedulerClosedError):
            await queued.wait()
        (completions,) = await running.wait()
        assert completions[0].finish_reason == "cancelled"
        assert running.cancel_reason == "shutdown"
        with pytest.raises(SchedulerClosedError):
            sched.submit([request("late")], timeout_s=1)

    asyncio.run(main())
    assert [r.prompt for r in fake.requests] == ["long"]


def test_continuous_job_with_n_rows_is_finished_and_counted_once() -> None:
    """Regression: the rows of a cancelled n=4 job all end in one step; the job must be
    delivered and its cancellation counted once, not once per row."""
    fake = FakeGenerator(step_s=0.005)
    sched = scheduler(fake, mode="continuous")

    async def main() -> list:
        sched.start()
        job = sched.submit([request("long", n=4, tokens=1000)], timeout_s=30)
        async for _ in job.pieces():
            break
        job.cancel("disconnect")
        results = await job.wait()
        sched.stop(grace_s=5)
        return results

    (completions,) = asyncio.run(main())
    assert [c.finish_reason for c in completions] == ["cancelled"] * 4
    assert fake.cancelled_sequences == 4
    assert sched.metrics.cancelled.labels(reason="disconnect")._value.get() == 1
    assert sched.metrics.time_to_first_token._sum.get() > 0
    generated = sum(len(c.token_ids) for c in completions)
    assert sched.metrics.generated_tokens._value.get() == generated


@pytest.mark.parametrize(
    ("mode", "budget", "tokens", "admissions"),
    [
        # 100 + 100 fit in 250, a third would not: it leads the next step's admission.
        ("continuous", 250, [100] * 6, [2, 2, 2]),
        # The first waiting job always starts, whole, even beyond the budget.
        ("continuous", 250, [1000, 100, 100], [1, 2]),
        ("continuous", 0, [100] * 6, [6]),  # 0: no limit
        ("request", 250, [100] * 6, [6]),  # a request-level batch runs to its end: no limit
    ],
)
def test_prefill_budget_admits_a_burst_over_several_steps(
    mode: str, budget: int, tokens: list[int], admissions: list[int]
) -> None:
    fake = FakeGenerator(step_s=0.005)
    sched = scheduler(fake, mode=mode, max_prefill_tokens=budget)

    async def main() -> None:
        jobs = [
            sched.submit([request(f"p{i}", tokens=20)], timeout_s=30, prompt_tokens=n)
            for i, n in enumerate(tokens)
        ]
        sched.start()
        for job in jobs:
            await job.wait()
        sched.stop(grace_s=5)

    asyncio.run(main())
    assert fake.batches == admissions
