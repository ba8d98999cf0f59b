"""Prefix caching: a prompt reuses the KV of the longest cached prefix, token-exact, and
generates exactly what it generates without the cache (greedy, both KV layouts)."""

from __future__ import annotations

import numpy as np
import pytest

from fst.core.generation_params import GenerationParams
from fst.runtime import GenerationRequest, Generator
from fst.runtime.prefix_cache import MIN_PREFIX_TOKENS, PrefixCache

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=8, ignore_eos=True)
BASE = "The history of the city begins with a small village by the river, where"


@pytest.fixture(scope="module", params=["concat", "shared"])
def pair(request) -> tuple[Generator, Generator]:
    """(without the cache, with it) on the same bundle; both KV layouts."""
    bundle = request.getfixturevalue(
        {"concat": "tiny_plain_bundle", "shared": "tiny_shared_bundle"}[request.param]
    )
    return (
        Generator.from_bundle(bundle, threads=1),
        Generator.from_bundle(bundle, threads=1, prefix_cache_bytes=1 << 24),
    )


def fake_past(length: int, value: float = 0.0) -> list[np.ndarray]:
    return [np.full((1, 2, length, 4), value, dtype=np.float32) for _ in range(4)]


# ---- the cache alone ------------------------------------------------------------------------


def test_lookup_finds_the_longest_common_prefix_of_any_entry() -> None:
    cache = PrefixCache(1 << 20)
    cache.store(list(range(10)), lambda: fake_past(10, 1.0))
    cache.store([0, 1, 2, 3, 4, 5, 99, 98], lambda: fake_past(8, 2.0))
    hit = cache.lookup([0, 1, 2, 3, 4, 5, 6, 7, 50])
    assert hit is not None and hit.length == 8  # a common prefix, not only a whole entry
    assert all(p.shape[2] == 8 and (p == 1.0).all() for p in hit.past)
    # The last prompt token always runs (its logits are needed): at most len - 1 reused.
    assert cache.lookup(list(range(10))).length == 9
    assert cache.lookup([7] * 10) is None
    assert cache.lookup(list(range(MIN_PREFIX_TOKENS))) is None  # too short to be worth it
    assert (cache.hits, cache.misses, cache.cached_tokens) == (2, 2, 17)


def test_memory_is_bounded_least_recently_used_first() -> None:
    entry_bytes = sum(p.nbytes for p in fake_past(10))
    cache = PrefixCache(3 * entry_bytes)
    for start in (0, 100, 200):
        cache.store(list(range(start, start + 10)), lambda: fake_past(10))
    assert cache.lookup(list(range(0, 11))) is not None  # 0.. is now the most recent
    cache.store(list(range(300, 310)), lambda: fake_past(10))
    assert len(cache) == 3 and cache.nbytes == 3 * entry_bytes
    assert cache.lookup(list(range(100, 111))) is None  # the least recently used went
    assert cache.lookup(list(range(0, 11))) is not None
    cache.store(list(range(400, 440)), lambda: fake_past(40))  # larger than the whole cache
    assert len(cache) == 3


def test_a_longer_sequence_replaces_its_prefix_and_a_covered_one_copies_nothing() -> None:
    cache = PrefixCache(1 << 20)
    cache.store(list(range(10)), lambda: fake_past(10))
    cache.store(list(range(20)), lambda: fake_past(20))
    assert len(cache) == 1 and cache.nbytes == sum(p.nbytes for p in fake_past(20))

    def must_not_copy() -> list[np.ndarray]:
        raise AssertionError("copied a sequence the cache already covers")

    cache.store(list(range(15)), must_not_copy)
    assert len(cache) == 1


# ---- through the runtime ----------------------------------------------------------------------


def test_greedy_results_are_identical_with_and_without_the_cache(pair) -> None:
    plain, cached = pair
    prompts = [
        BASE,
        BASE + " the people",
        "Something else entirely",
        BASE + " the people built a bridge of stone and wood",
        BASE,
    ]
    for prompt in prompts:
        (want,), (got,) = plain.generate(prompt, GREEDY), cached.generate(prompt, GREEDY)
        assert got.token_ids == want.token_ids and got.text == want.text
    # Every prompt after the first that starts with BASE reused at least BASE's tokens.
    got = cached.generate(BASE + " and then", GREEDY)[0]
    assert got.cached_tokens >= len(plain.encode_prompt(BASE))
    assert plain.generate(BASE, GREEDY)[0].cached_tokens == 0


def test_a_conversation_reuses_its_history_turn_after_turn(pair) -> None:
    plain, cached = pair
    history, previous_prompt_tokens = BASE, 0
    for turn in range(4):
        (want,), (got,) = plain.generate(history, GREEDY), cached.generate(history, GREEDY)
        assert got.token_ids == want.token_ids
        if turn:  # the previous prompt and (all but the last of) its answer were cached
            assert got.cached_tokens >= previous_prompt_tokens
        previous_prompt_tokens = got.prompt_tokens
        history += got.text + " and then"


def test_hits_and_misses_in_one_batch_joining_a_running_one(pair) -> None:
    plain, cached = pair
    cached.generate(BASE, GREEDY)  # cached: BASE and its answer
    running = GenerationRequest("A different opening line", GREEDY)
    joining = [
        GenerationRequest(BASE + " a second", GREEDY),
        GenerationRequest("Nothing shared here at all", GREEDY),
        GenerationRequest(
            BASE + " a third", GenerationParams(**{**GREEDY.__dict__, "num_return_sequences": 2})
        ),
    ]
    batch = cached.new_batch()
    (running_rows,) = batch.add([running])
    batch.step()
    batch.step()
    joined = batch.add(joining)
    while batch.num_live:
        batch.step()
    assert [r.token_ids for r in running_rows] == [
        c.token_ids for c in plain.generate(running.prompt, GREEDY)
    ]
    for request, rows in zip(joining, joined, strict=True):
        want = plain.run([request])[0]
        assert [r.token_ids for r in rows] == [c.token_ids for c in want]
    assert [rows[0].cached_tokens > 0 for rows in joined] == [True, False, True]


def test_a_cancelled_row_leaves_a_valid_prefix(pair) -> None:
    plain, cached = pair
    prompt = BASE + " a cancelled one"
    batch = cached.new_batch()
    (rows,) = batch.add([GenerationRequest(prompt, GREEDY)])
    for _ in range(3):
        batch.step()
    batch.cancel(rows)
    batch.step()
    follow = prompt + "".join(rows[0].text) + " more"
    (want,), (got,) = plain.generate(follow, GREEDY), cached.generate(follow, GREEDY)
    assert got.token_ids == want.token_ids
    assert got.cached_tokens >= len(plain.encode_prompt(prompt)) + 1  # with what it generated
