"""Speculative decoding by prompt lookup: drafts from the context, checked in one run of a
`--logits all` graph, give exactly plain greedy's tokens in fewer graph runs."""

from __future__ import annotations

import numpy as np
import pytest

from fst.core.generation_params import GenerationParams
from fst.runtime import GenerationRequest, Generator
from fst.runtime.prompt_lookup import propose

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=24, ignore_eos=True)
PROMPTS = [
    "the cat sat on the mat and the cat sat on the",
    "a b c d a b c d a b",
    "Hello world, hello world, hello",
    "One two three. One two three. One two",
    "def f(x): return x + 1\ndef g(x): return x +",
    "Nothing here repeats at all",
    "to be or not to be, that is the question: to be",
    "x",
]


def test_the_draft_follows_the_latest_longest_match() -> None:
    context = np.array([1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3])
    assert propose(context, 2) == [7, 8]  # "2 3" last seen before 7 8 (3-gram "5 2 3" unseen)
    assert propose(np.array([4, 1, 2, 3, 4, 1, 2]), 3) == [3, 4, 1]  # the 2-gram "1 2"
    assert propose(np.array([1, 2, 3, 4]), 3) == []  # nothing repeats
    assert propose(np.array([5]), 3) == []
    assert propose(np.array([7, 7, 7]), 4) == [7]  # never past the end of the context


@pytest.fixture(scope="module", params=[False, True], ids=["concat", "shared"])
def all_logits_bundle(request, tmp_path_factory, tiny_hf_model_dir):
    from fst.export.exporter import export_bundle

    output = tmp_path_factory.mktemp("tiny_all_logits") / "bundle"
    export_bundle(
        output, model_path=str(tiny_hf_model_dir), optimize=request.param, logits="all",
        progress=False,
    )  # fmt: skip
    return output


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_speculative_greedy_equals_plain_greedy_in_fewer_runs(all_logits_bundle, penalty) -> None:
    plain = Generator.from_bundle(all_logits_bundle, threads=1)
    fast = Generator.from_bundle(all_logits_bundle, threads=1, speculative_tokens=4)
    runs = {"plain": 0, "fast": 0}
    plain.on_model_call = lambda *_: runs.__setitem__("plain", runs["plain"] + 1)
    fast.on_model_call = lambda *_: runs.__setitem__("fast", runs["fast"] + 1)
    params = GenerationParams(**{**GREEDY.__dict__, "repetition_penalty": penalty})
    for prompt in PROMPTS:
        (want,), (got,) = plain.generate(prompt, params), fast.generate(prompt, params)
        assert got.token_ids == want.token_ids, prompt
        assert got.text == want.text and got.finish_reason == want.finish_reason
    assert runs["fast"] < runs["plain"]  # drafts were accepted somewhere


def test_stops_end_and_streams_match_plain_greedy(all_logits_bundle) -> None:
    plain = Generator.from_bundle(all_logits_bundle, threads=1)
    fast = Generator.from_bundle(all_logits_bundle, threads=1, speculative_tokens=5)
    prompt = PROMPTS[0]
    (reference,) = plain.generate(prompt, GREEDY)
    stop = reference.text[len(reference.text) // 2 :][:3]
    params = GenerationParams(**{**GREEDY.__dict__, "stop": (stop,), "max_new_tokens": 13})
    (want,), (got,) = plain.generate(prompt, params), fast.generate(prompt, params)
    assert (got.text, got.token_ids, got.finish_reason) == (
        want.text, want.token_ids, want.finish_reason,
    )  # fmt: skip
    assert "".join(fast.stream(prompt, params)) == want.text


def test_a_batch_of_several_rows_and_sampled_rows_decode_as_before(all_logits_bundle) -> None:
    plain = Generator.from_bundle(all_logits_bundle, threads=1)
    fast = Generator.from_bundle(all_logits_bundle, threads=1, speculative_tokens=4)
    sampled = GenerationParams(temperature=0.9, top_k=0, max_new_tokens=12, seed=3, ignore_eos=True)
    requests = [GenerationRequest(PROMPTS[1], GREEDY), GenerationRequest(PROMPTS[2], sampled)]
    want = plain.run(requests)
    got = fast.run(requests)
    assert [[c.token_ids for c in r] for r in got] == [[c.token_ids for c in r] for r in want]
    # A lone greedy row that outlives a short neighbour switches to drafts mid-way.
    short = GenerationRequest(
        PROMPTS[0], GenerationParams(**{**GREEDY.__dict__, "max_new_tokens": 2})
    )
    mixed = [GenerationRequest(PROMPTS[1], GREEDY), short]
    assert [[c.token_ids for c in r] for r in fast.run(mixed)] == [
        [c.token_ids for c in r] for r in plain.run(mixed)
    ]


def test_last_position_graphs_decode_plainly(tiny_shared_bundle) -> None:
    fast = Generator.from_bundle(tiny_shared_bundle, threads=1, speculative_tokens=4)
    assert fast.new_batch()._draft == 0  # no logits for the draft's positions
    plain = Generator.from_bundle(tiny_shared_bundle, threads=1)
    assert (
        fast.generate(PROMPTS[1], GREEDY)[0].token_ids
        == plain.generate(PROMPTS[1], GREEDY)[0].token_ids
    )
