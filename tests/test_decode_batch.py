"""fst.runtime.DecodeBatch: requests joining and leaving a running batch, the cache merge
under it, and the public-API fallback of the ONNX Runtime binding."""

from __future__ import annotations

import numpy as np
import pytest

from fst.core.generation_params import GenerationParams
from fst.runtime import DecodeBatch, GenerationRequest, Generator
from fst.runtime.kv_cache import CausalLMStepper
from fst.runtime.ort_io import CLevelCalls, PublicCalls, make_io

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)
SEEDED = GenerationParams(
    temperature=1.3,
    top_k=0,
    top_p=0.95,
    max_new_tokens=10,
    seed=7,
    num_return_sequences=2,
    ignore_eos=True,
)


@pytest.fixture(scope="module", params=["concat", "shared"])
def generator(request) -> Generator:
    """Each test runs on both KV layouts (plain export, and --optimize's shared buffers)."""
    bundle = {"concat": "tiny_plain_bundle", "shared": "tiny_shared_bundle"}[request.param]
    return Generator.from_bundle(request.getfixturevalue(bundle), threads=1)


def alone(generator: Generator, prompt: str, params: GenerationParams) -> list[list[int]]:
    return [c.token_ids for c in generator.generate(prompt, params)]


def drain(batch: DecodeBatch, steps: int | None = None) -> list:
    """Step `steps` times (or until done); return every event."""
    events = []
    while batch.live_rows and (steps is None or steps > 0):
        events += batch.step()
        steps = None if steps is None else steps - 1
    return events


def test_requests_joining_a_running_batch_decode_as_alone(generator: Generator) -> None:
    first = GenerationRequest("Hello", GREEDY)
    # Longer than `first`'s past when it joins (first's rows get left padding), then a
    # shorter one (the joining rows get it); the seeded one brings two samples per prompt.
    longer = GenerationRequest("The quick brown fox jumps over the lazy dog", GREEDY)
    seeded = GenerationRequest("A", SEEDED)
    batch = generator.new_batch()
    (first_rows,) = batch.add([first])
    events = drain(batch, 3)
    (longer_rows,) = batch.add([longer], tags=["longer"])
    assert batch.batch_size == 2
    events += drain(batch, 2)
    (seeded_rows,) = batch.add([seeded], tags=["seeded"])
    assert batch.batch_size == 4 and len(batch.live_rows) == 4
    events += drain(batch)

    assert [r.token_ids for r in first_rows] == alone(generator, "Hello", GREEDY)
    assert [r.token_ids for r in longer_rows] == alone(generator, longer.prompt, GREEDY)
    assert [r.token_ids for r in seeded_rows] == alone(generator, "A", SEEDED)
    assert [r.tag for r in longer_rows + seeded_rows] == ["longer", "seeded", "seeded"]
    rows = first_rows + longer_rows + seeded_rows
    # Pieces join to each row's text; each row is reported finished exactly once.
    for row in rows:
        assert "".join(e.piece for e in events if e.row is row) == row.text
        assert [e.finished for e in events if e.row is row].count(True) == 1
        assert row.completion().finish_reason == "length"
    assert batch.live_rows == [] and batch.batch_size == 0


def test_cancel_frees_the_row_and_leaves_the_others_unchanged(generator: Generator) -> None:
    keep = GenerationRequest("Hello world", GREEDY)
    drop = GenerationRequest("A", SEEDED.with_overrides(num_return_sequences=3))
    batch = generator.new_batch()
    (keep_rows,) = batch.add([keep])
    (drop_rows,) = batch.add([drop])  # joins before any step
    drain(batch, 2)
    batch.cancel(drop_rows[0])  # one row ...
    assert len(batch.live_rows) == 3
    batch.cancel(drop)  # ... then the rest of its request
    assert batch.live_rows == keep_rows and batch.batch_size == 4
    events = batch.step()
    assert [(e.row, e.piece, e.finished) for e in events[:3]] == [(r, "", True) for r in drop_rows]
    assert batch.batch_size == 1  # the cancelled rows left the KV cache
    drain(batch)
    assert [r.finish_reason for r in drop_rows] == ["cancelled"] * 3
    assert all(len(r.token_ids) == 2 for r in drop_rows)
    assert [r.token_ids for r in keep_rows] == alone(generator, "Hello world", GREEDY)
    batch.cancel(keep_rows[0])  # a finished row stays as it ended
    assert keep_rows[0].finish_reason == "length" and batch.step() == []
    other = generator.new_batch()
    (foreign,) = other.add([GenerationRequest("A", GREEDY)])
    batch.cancel(foreign)  # not this batch's rows: nothing happens
    assert other.num_live == 1 and foreign[0].finish_reason is None


def test_a_bad_request_changes_nothing(generator: Generator) -> None:
    batch = generator.new_batch()
    (rows,) = batch.add([GenerationRequest("Hello", GREEDY)])
    drain(batch, 4)
    too_long = GenerationRequest("Hi", GREEDY.with_overrides(max_new_tokens=200))
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        batch.add([GenerationRequest("A", GREEDY), too_long])
    with pytest.raises(ValueError, match="params must be GenerationParams"):
        batch.add([GenerationRequest("A", {"temperature": 0})])
    with pytest.raises(ValueError, match="2 requests but 1 tags"):
        batch.add([GenerationRequest("A", GREEDY)] * 2, tags=["x"])
    assert batch.batch_size == 1 and batch.add([]) == []
    drain(batch)
    assert [r.token_ids for r in rows] == alone(generator, "Hello", GREEDY)


def test_merge_pads_both_caches_on_the_left(generator: Generator) -> None:
    stepper = generator._stepper
    pad = generator.tokenizer.pad_token_id
    _, running = stepper.prefill([[5, 6, 7], [8]], pad)  # row 1: two columns of padding
    stepper.decode(running, np.array([9, 10]))
    _, new = stepper.prefill([[11, 12, 13, 14, 15, 16], [17, 18]], pad)
    merged = stepper.merge(running, [1], new, [1, 0, 1])
    # Kept row 1 of `running` had 2 leading padding columns: trimmed; then padded to 6.
    assert merged.attention_mask.tolist() == [
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 1],
        [1, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1],
    ]
    assert merged.next_positions.tolist() == [2, 2, 6, 2]
    for layer, value in enumerate(merged.presents):
        # Shared-layout buffers are longer than the past: compare the past positions.
        got = stepper.io.to_numpy(value)[:, :, :6]
        ran = stepper.io.to_numpy(running.presents[layer])[:, :, : running.past_length]
        fresh = stepper.io.to_numpy(new.presents[layer])[:, :, : new.past_length]
        assert np.array_equal(got[0, :, 4:], ran[1, :, 2:])
        assert not got[0, :, :4].any()  # the added padding is zeros, never garbage
        assert np.array_equal(got[1], fresh[1]) and np.array_equal(got[3], fresh[1])
        assert np.array_equal(got[2], fresh[0])


class NoPrivateAttributes:
    """A session as a future onnxruntime might expose it: public attributes only."""

    def __init__(self, session) -> None:
        self._session = session

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._session, name)


def test_public_io_fallback_generates_the_same(generator: Generator) -> None:
    session = generator._stepper.session
    assert type(generator._stepper.io.calls) is CLevelCalls
    assert type(make_io(NoPrivateAttributes(session), ["logits"], [], "cpu").calls) is PublicCalls
    public = Generator(generator.manifest, generator.tokenizer, session, generator.provider)
    public._stepper = CausalLMStepper.from_manifest(
        NoPrivateAttributes(session), generator.manifest
    )
    assert type(public._stepper.io.calls) is PublicCalls
    prompts = ["Hello", "The quick brown fox"]
    expected = generator.generate(prompts, SEEDED)
    got = public.generate(prompts, SEEDED)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]


def test_model_call_hook_reports_every_graph_run(generator: Generator) -> None:
    calls = []
    generator.on_model_call = lambda kind, batch, start, end: calls.append(
        (kind, batch, start, end)
    )
    try:
        params = GREEDY.with_overrides(max_new_tokens=5, num_return_sequences=2)
        completions = generator.generate(["Hello", "The quick brown fox"], params)
    finally:
        generator.on_model_call = None
    # One prefill of the two prompts; each prompt's two samples share it; then 4 decode steps
    # of the 4 rows (the 5th token is sampled from the 4th step's logits).
    assert [(kind, batch) for kind, batch, _, _ in calls] == [("prefill", 2)] + [("decode", 4)] * 4
    assert all(start <= end for _, _, start, end in calls)
    assert all(calls[i][3] <= calls[i + 1][2] for i in range(len(calls) - 1))
    assert all(len(c.token_ids) == 5 for c in completions)
    generator.generate("Hello", params)  # hook removed: nothing recorded
    assert len(calls) == 5


def test_the_reused_binding_keeps_no_cache_alive(generator: Generator) -> None:
    """The IO reuses one binding; after a run it must hold no input or output values, or
    the previous step's KV cache would stay in memory between steps and after the end."""
    io = generator._stepper.io
    assert type(io.calls) is CLevelCalls
    generator.generate("Hello", GREEDY.with_overrides(max_new_tokens=3))
    assert len(io._binding.get_outputs()) == 0
    session = generator._stepper.session
    public = Generator(generator.manifest, generator.tokenizer, session, generator.provider)
    public._stepper = CausalLMStepper.from_manifest(
        NoPrivateAttributes(session), generator.manifest
    )
    public.generate("Hello", GREEDY.with_overrides(max_new_tokens=3))
    assert len(public._stepper.io._binding.get_outputs()) == 0  # the public fallback too


def test_shared_buffers_are_written_in_place_and_grow_when_full(tiny_shared_bundle) -> None:
    generator = Generator.from_bundle(tiny_shared_bundle, threads=1)
    stepper, pad = generator._stepper, generator.tokenizer.pad_token_id
    assert stepper.shared
    prompts = [[5, 6, 7], [8]]
    _, roomy = stepper.prefill(prompts, pad, reserve=32)
    _, tight = stepper.prefill(prompts, pad, reserve=1)
    assert (roomy.capacity, tight.capacity) == (35, 4)
    assert stepper.prefill(prompts, pad, reserve=1000)[1].capacity == 128  # max_positions
    buffer = roomy.keep_alive[0]
    tokens = np.array([9, 10])
    capacities, tight_bindings = [], []  # kept alive: their ids stay distinct
    for step in range(12):
        logits = stepper.decode(roomy, tokens).copy()  # the cache's buffer: next step reuses it
        np.testing.assert_allclose(stepper.decode(tight, tokens), logits, atol=1e-5)
        capacities.append(tight.capacity)
        tight_bindings.append(tight.binding)
        if step == 0:
            binding = roomy.binding
        tokens = logits.argmax(-1)
    assert roomy.keep_alive[0] is buffer  # never reallocated: each step wrote in place
    assert roomy.binding is binding  # outputs and pasts bound once for all steps
    assert (
        len({id(b) for b in tight_bindings}) == 3
    )  # a new binding with each move to bigger buffers
    assert sorted(set(capacities)) == [4, 9, 19]  # when full: needed + old capacity
    past = roomy.past_length
    np.testing.assert_allclose(tight.keep_alive[0][:, :, :past], buffer[:, :, :past], atol=1e-6)


def test_a_batch_is_built_from_a_stepper_a_tokenizer_and_limits(generator: Generator) -> None:
    """DecodeBatch needs no Generator: the stepper protocol, the tokenizer and the limits."""
    from fst.runtime import BatchLimits
    from fst.runtime.stepper import Stepper

    assert isinstance(generator.stepper, Stepper)
    limits = BatchLimits(generator.max_positions, generator.eos_token_id)
    batch = DecodeBatch(generator.stepper, generator.tokenizer, limits)
    request = GenerationRequest("Hello", SEEDED)
    rows = batch.add([request])
    drain(batch)
    expected = generator.run([request])[0]
    assert [r.completion() for r in rows[0]] == expected
    short = DecodeBatch(generator.stepper, generator.tokenizer, BatchLimits(8, None))
    with pytest.raises(ValueError, match="exceeds the model's 8 positions"):
        short.add([request])
