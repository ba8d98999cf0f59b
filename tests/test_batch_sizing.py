"""The decode batch sized from memory and measured step time (fst.serving.batch_sizing),
alone and as the scheduler's admission limit."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from serving_fakes import FakeGenerator

from fst.core.generation_params import GenerationParams
from fst.runtime import GenerationRequest
from fst.serving.batch_sizing import MIN_SEQUENCES, BatchSizer, kv_bytes_per_token
from fst.serving.metrics import ServingMetrics
from fst.serving.scheduler import Scheduler

pytestmark = pytest.mark.timeout(30)


def request(prompt: str, n: int = 1, tokens: int = 3) -> GenerationRequest:
    return GenerationRequest(
        prompt, GenerationParams(max_new_tokens=tokens, num_return_sequences=n)
    )


def test_the_cap_holds_until_a_step_is_measured() -> None:
    assert BatchSizer(64, max_step_s=0.1).step_limit() == 64
    assert BatchSizer(64).step_limit() == 64  # no step-time limit at all


def test_one_batch_size_seen_extrapolates_through_the_origin() -> None:
    sizer = BatchSizer(256, max_step_s=0.1)
    sizer.observe_step(4, 0.004)  # 1 ms a row, assumed all per-row cost (pessimistic)
    assert sizer.step_model() == pytest.approx((0.0, 0.001))
    assert sizer.step_limit() == 100


def test_the_step_time_never_limits_below_the_former_fixed_size() -> None:
    sizer = BatchSizer(64, max_step_s=0.1)
    sizer.observe_step(1, 0.3)  # a loaded machine: slower than the target at batch 1
    assert sizer.step_limit() == MIN_SEQUENCES == 16
    assert BatchSizer(8, max_step_s=0.1).step_limit() == 8  # a smaller hard cap wins


def test_two_sizes_fit_a_fixed_and_a_per_row_cost() -> None:
    sizer = BatchSizer(256, max_step_s=0.1)
    for rows in (1, 8, 16, 8, 1):
        sizer.observe_step(rows, 0.02 + 0.001 * rows)  # 20 ms fixed + 1 ms a row
    intercept, slope = sizer.step_model()
    assert intercept == pytest.approx(0.02) and slope == pytest.approx(0.001)
    assert sizer.step_limit() == 80  # (100 - 20) / 1
    assert BatchSizer(32, max_step_s=0.1).step_limit() == 32  # the cap still holds


def test_memory_counts_every_row_at_the_longest_rows_length() -> None:
    sizer = BatchSizer(64, kv_budget_bytes=1200, kv_bytes_per_token=10, max_positions=64)
    assert sizer.fits([20, 20], [30, 30])  # 4 rows x 30 tokens (left-padded) x 10 bytes
    assert not sizer.fits([20, 20], [30, 30, 30])
    assert not sizer.fits([], [121])
    assert BatchSizer(64).fits([10**9], [10**9])  # no budget: always fits


def test_a_sequence_is_bounded_by_its_prompt_bytes_and_max_new_tokens() -> None:
    sizer = BatchSizer(64, max_positions=100)
    assert sizer.request_tokens(request("héllo", n=2, tokens=10)) == [6 + 8 + 10] * 2
    document = GenerationRequest({"body": "ab", "meta": "c"}, GenerationParams(max_new_tokens=5))
    assert sizer.request_tokens(document) == [3 + 8 + 5]
    assert sizer.request_tokens(request("x" * 500, tokens=10)) == [100]  # the model's limit


def test_kv_bytes_per_token_from_the_manifest() -> None:
    from fst.core.bundle import ArchitectureInfo

    arch = ArchitectureInfo(
        model_type="llama", num_layers=3, num_heads=8, num_kv_heads=2, head_dim=16,
        hidden_size=128, vocab_size=10, max_positions=64,
    )  # fmt: skip
    fp32 = SimpleNamespace(
        manifest=SimpleNamespace(architecture=arch, graph=SimpleNamespace(dtype="float32"))
    )
    fp16 = SimpleNamespace(
        manifest=SimpleNamespace(architecture=arch, graph=SimpleNamespace(dtype="float16"))
    )
    assert kv_bytes_per_token(fp32) == 2 * 3 * 2 * 16 * 4  # keys and values, kv heads only
    assert kv_bytes_per_token(fp16) == 2 * 3 * 2 * 16 * 2
    assert kv_bytes_per_token(object()) is None


class StubSizer(BatchSizer):
    """A fixed step limit; records what the scheduler measured."""

    def __init__(self, limit: int, **kw) -> None:
        super().__init__(64, **kw)
        self.limit, self.steps = limit, []

    def step_limit(self) -> int:
        return self.limit

    def observe_step(self, rows: int, seconds: float) -> None:
        self.steps.append(rows)


def run_jobs(sizer: BatchSizer, prompts: str) -> FakeGenerator:
    fake = FakeGenerator()
    sched = Scheduler(
        fake, max_batch_size=8, queue_size=8, batch_wait_s=0.0, metrics=ServingMetrics(),
        mode="continuous", sizer=sizer,
    )  # fmt: skip

    async def main() -> None:
        jobs = [sched.submit([request(p)], timeout_s=10) for p in prompts]
        sched.start()
        for job in jobs:
            await job.wait()
        sched.stop(grace_s=5)

    asyncio.run(main())
    return fake


def test_the_scheduler_admits_within_the_step_limit_and_measures_steps() -> None:
    sizer = StubSizer(2)
    fake = run_jobs(sizer, "abcd")
    assert fake.batches == [2, 2]  # 4 jobs, at most 2 decoding at once
    assert sizer.steps and max(sizer.steps) <= 2


def test_the_scheduler_admits_within_the_kv_budget() -> None:
    # Each sequence: 1 prompt byte + 8 + 3 new tokens = 12 tokens of 1 byte; 2 fit in 30.
    sizer = BatchSizer(64, kv_budget_bytes=30, kv_bytes_per_token=1, max_positions=100)
    fake = run_jobs(sizer, "abcd")
    assert fake.batches == [2, 2]
