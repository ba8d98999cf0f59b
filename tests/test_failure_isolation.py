"""One failing row ends only its own request: in the runtime's DecodeBatch and in the server's
scheduler, for a row whose sampling raises and for a model run that fails because of one row;
afterwards the scheduler's gauges read 0.

Victims are compared with the same requests decoded alone (the reference).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from fst.core.generation_params import GenerationParams
from fst.runtime import GenerationRequest, Generator
from fst.runtime.sampling import SequenceSampler
from fst.serving.metrics import ServingMetrics
from fst.serving.scheduler import Scheduler

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=8, ignore_eos=True)
SAMPLED = GenerationParams(temperature=1.3, top_k=0, max_new_tokens=8, seed=3, ignore_eos=True)
BAD_SAMPLING_SEED = 666  # a row with this seed raises in its sampler
BAD_GRAPH_SEED = 667  # a row with this seed makes the model run fail (it samples POISON)
POISON = 5


class SamplingBug(RuntimeError):
    pass


class GraphBug(RuntimeError):
    pass


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows seeded BAD_SAMPLING_SEED raise when sampling; rows seeded BAD_GRAPH_SEED sample
    POISON, and every other row avoids it (so only that row's token fails the graph)."""
    choose = SequenceSampler.choose

    def patched(self: SequenceSampler, row: np.ndarray, num_new: int) -> int:
        if self.params.seed == BAD_SAMPLING_SEED and num_new == 2:
            raise SamplingBug("sampling failed")
        if self.params.seed == BAD_GRAPH_SEED:
            return POISON
        row[POISON] = -np.inf
        return choose(self, row, num_new)

    monkeypatch.setattr(SequenceSampler, "choose", patched)


class PoisonStepper:
    """The generator's stepper, but a decode that feeds POISON raises (like a bad graph run).
    `always` makes every decode fail (a failure no row reproduces alone)."""

    def __init__(self, inner: Any, always: bool = False) -> None:
        self.inner, self.always = inner, always

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def decode(self, cache: Any, tokens: np.ndarray) -> np.ndarray:
        if self.always or POISON in tokens.tolist():
            raise GraphBug("graph run failed")
        return self.inner.decode(cache, tokens)


@pytest.fixture(scope="module", params=["concat", "shared"])
def generator(request) -> Generator:
    bundle = {"concat": "tiny_plain_bundle", "shared": "tiny_shared_bundle"}[request.param]
    return Generator.from_bundle(request.getfixturevalue(bundle), threads=1)


@pytest.fixture
def poison_generator(generator: Generator, poisoned, monkeypatch: pytest.MonkeyPatch) -> Generator:
    monkeypatch.setattr(generator, "_stepper", PoisonStepper(generator._stepper))
    return generator


def victims() -> list[GenerationRequest]:
    return [
        GenerationRequest("Hello there", GREEDY),
        GenerationRequest("A", SAMPLED),
        GenerationRequest("The quick brown fox", GREEDY.with_overrides(num_return_sequences=2)),
    ]


def alone(generator: Generator, request: GenerationRequest) -> list[list[int]]:
    return [c.token_ids for c in generator.run([request])[0]]


def bad(seed: int) -> GenerationRequest:
    return GenerationRequest("Poisoned", SAMPLED.with_overrides(seed=seed))


@pytest.mark.parametrize("seed", [BAD_SAMPLING_SEED, BAD_GRAPH_SEED])
def test_a_failing_row_ends_alone_and_its_neighbours_decode_as_alone(
    poison_generator: Generator, seed: int
) -> None:
    expected = [alone(poison_generator, r) for r in victims()]
    batch = poison_generator.new_batch()
    rows = batch.add([victims()[0], bad(seed), *victims()[1:]])
    events = []
    while batch.num_live:
        events += batch.step()
    (failed,) = rows[1]
    assert failed.finish_reason == "error"
    assert isinstance(failed.error, SamplingBug if seed == BAD_SAMPLING_SEED else GraphBug)
    assert sum(1 for e in events if e.row is failed and e.finished) == 1
    got = [[row.token_ids for row in per] for i, per in enumerate(rows) if i != 1]
    assert got == expected
    assert all(row.finish_reason == "length" for i, per in enumerate(rows) if i != 1 for row in per)


def test_generator_run_raises_the_rows_error(poison_generator: Generator) -> None:
    with pytest.raises(SamplingBug):
        poison_generator.run([victims()[0], bad(BAD_SAMPLING_SEED)])
    with pytest.raises(GraphBug):
        list(poison_generator.stream("x", SAMPLED.with_overrides(seed=BAD_GRAPH_SEED)))


def _serve(generator: Generator, requests: list[GenerationRequest]) -> tuple[list, Scheduler]:
    """Each request as its own job through a continuous-batching scheduler; the results (a
    completion list or the exception) and the scheduler, stopped."""
    sched = Scheduler(
        generator,
        max_batch_size=16,
        queue_size=16,
        batch_wait_s=0.0,
        metrics=ServingMetrics(),
        mode="continuous",
    )

    async def main() -> list:
        jobs = [sched.submit([r], timeout_s=60) for r in requests]
        sched.start()
        results = await asyncio.gather(*(job.wait() for job in jobs), return_exceptions=True)
        sched.stop(grace_s=10)
        return results

    return asyncio.run(main()), sched


def _gauges(sched: Scheduler) -> tuple[float, float]:
    m = sched.metrics
    return m.running_sequences._value.get(), m.queue_depth._value.get()


def test_the_scheduler_fails_only_the_poisoned_jobs_and_its_gauges_return_to_0(
    poison_generator: Generator,
) -> None:
    expected = [alone(poison_generator, r) for r in victims()]
    requests = [bad(BAD_SAMPLING_SEED), *victims(), bad(BAD_GRAPH_SEED)]
    results, sched = _serve(poison_generator, requests)
    assert isinstance(results[0], SamplingBug)
    assert isinstance(results[-1], GraphBug)
    got = [[c.token_ids for c in result[0]] for result in results[1:-1]]
    assert got == expected
    assert _gauges(sched) == (0, 0)


def test_a_step_no_row_explains_fails_its_jobs_and_the_gauges_return_to_0(
    generator: Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generator, "_stepper", PoisonStepper(generator._stepper, always=True))
    results, sched = _serve(generator, victims())
    assert all(isinstance(r, GraphBug) for r in results)
    assert _gauges(sched) == (0, 0)
