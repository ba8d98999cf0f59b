"""The per-token decode loop, in one place: a batch of sequences that requests join and leave.

Public API (`Generator.run/generate/stream` and the server's continuous batching use it)::

    batch = generator.new_batch()     # DecodeBatch(stepper, tokenizer, limits)
    rows = batch.add(requests, tags=None)            # list[list[Row]], one list per request
    while batch.num_live:                            # == len(batch.live_rows)
        for event in batch.step():                   # list[StepEvent]
            event.row, event.piece, event.finished
    batch.cancel(row_or_request)                     # a Row, a request, or some rows
    row.completion()                                 # -> Completion

`add` validates every request first (ValueError before anything changes), prefills the new
prompts together (left-padded), repeats each prompt's cache row for its
`num_return_sequences`, and merges those rows into the running batch: requests may join
between any two steps. `step` chooses one token for every live row (its own params, seeded
generator and repetition history), detokenises incrementally, applies stop strings, EOS and
the length limit, and returns the text that became final plus the rows that ended. A
sample therefore depends on its prompt, params and seed only, never on its neighbours.

The model runs lazily: `step` first feeds the previous step's tokens (dropping finished
rows once a quarter of the batch has finished, as copying the cache costs about as much as
a few decode steps of those rows), then samples. So the text of a step is returned as soon
as it is sampled, and an `add` between steps joins a batch whose logits are up to date.

Two optional speed-ups leave every token unchanged: with a `PrefixCache` (prefix_cache.py)
a prompt that starts like a sequence seen before prefills only its new tokens on top of
that sequence's stored KV, and a row stores its KV when it ends or is cancelled; with
`speculative_tokens`, a greedy row decoding alone drafts tokens by prompt lookup
(prompt_lookup.py) and checks them in one run of a graph with every position's logits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from fst.core.generation_params import GenerationParams
from fst.core.tokenization import DocumentTokenizer
from fst.runtime.prefix_cache import PrefixCache, PrefixHit
from fst.runtime.prompt_lookup import propose
from fst.runtime.prompts import BatchLimits, PromptEncoder
from fst.runtime.requests import Completion, GenerationRequest
from fst.runtime.sampling import SequenceSampler, sequence_rng
from fst.runtime.stepper import Stepper
from fst.runtime.streaming import TextStream

log = logging.getLogger(__name__)

# Drop finished rows from the batch once this fraction of it has finished (copying the
# cache once costs about as much as a few decode steps of the finished rows).
COMPACT_FRACTION = 0.25


class Row:
    """One sample of one request, decoding in a row of the batch.

    Read-only for callers: `request`, `tag` (whatever the caller passed to `add`), `index`
    (which of the request's samples), `prompt_tokens`, `token_ids` (generated so far, the
    EOS included when one ended it), `text` (final text so far, cut before a stop string)
    and `finish_reason` (None while decoding, then "stop" | "length" | "cancelled").
    """

    __slots__ = ("request", "tag", "index", "prompt_tokens", "token_ids", "finish_reason")
    __slots__ += ("cached_tokens", "_prompt_ids", "_sampler", "_stream", "_eos")

    def __init__(
        self,
        request: GenerationRequest,
        tag: Any,
        index: int,
        prompt_ids: list[int],
        sampler: SequenceSampler,
        stream: TextStream,
        end_token_ids: frozenset[int],
    ) -> None:
        self.request = request
        self.tag = tag
        self.index = index
        self.prompt_tokens = len(prompt_ids)
        self.cached_tokens = 0  # prompt tokens whose KV came from the prefix cache
        self._prompt_ids = prompt_ids
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self._sampler = sampler
        self._stream = stream
        self._eos = end_token_ids

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return self._stream.text

    def completion(self) -> Completion:
        return Completion(
            prompt=self.request.prompt,
            text=self._stream.text,
            token_ids=self.token_ids,
            finish_reason=self.finish_reason or "cancelled",
            prompt_tokens=self.prompt_tokens,
            index=self.index,
            cached_tokens=self.cached_tokens,
        )

    def _advance(self, token: int) -> str:
        """Record a sampled token; finish the row if it ends here; return the final text."""
        params = self.request.params
        self.token_ids.append(token)
        self._sampler.observe(token)
        piece = self._stream.push(token)
        if self._stream.stopped or (token in self._eos and not params.ignore_eos):
            self.finish_reason = "stop"
        elif len(self.token_ids) >= params.max_new_tokens:
            self.finish_reason = "length"
        if self.finish_reason is not None:
            piece += self._stream.finish()
        return piece

    def _fed_ids(self) -> list[int]:
        """The tokens in this row's KV cache: the prompt and every generated token but the
        last (sampled, not yet fed)."""
        return self._prompt_ids + self.token_ids[:-1]

    def _cancel(self) -> None:
        self.finish_reason = "cancelled"
        self._stream.finish()  # the text keeps what was generated; nothing more is streamed

    def __repr__(self) -> str:
        state = f"tokens={len(self.token_ids)}, finish_reason={self.finish_reason!r}"
        return f"Row(tag={self.tag!r}, index={self.index}, {state})"


class StepEvent(NamedTuple):
    """What a step did to one row: text that became final, and whether the row ended.

    (A NamedTuple: a step makes one per row, and a frozen dataclass costs several times more.)
    """

    row: Row
    piece: str  # "" when nothing became final (e.g. half a character, a possible stop)
    finished: bool  # the row ended (row.finish_reason says how); reported exactly once


class DecodeBatch:
    """Sequences decoding together; see the module docstring. Not thread-safe: one owner.

    `stepper` runs the model, `tokenizer` encodes prompts and decodes pieces, `limits` say
    how long a sequence may get and which token ends it (`Generator.new_batch` passes the
    bundle's).
    """

    def __init__(
        self,
        stepper: Stepper,
        tokenizer: DocumentTokenizer,
        limits: BatchLimits,
        prefix_cache: PrefixCache | None = None,
        speculative_tokens: int = 0,
    ) -> None:
        self._stepper = stepper
        # Prompt-lookup drafts of up to this many tokens for a lone greedy row, checked in
        # one run; needs a graph with every position's logits (see _speculative_step).
        self._draft = speculative_tokens if getattr(stepper, "all_logits", False) else 0
        # Prefix caching needs a stepper that prefills after a known past (CausalLMStepper).
        self._prefix_cache = prefix_cache if hasattr(stepper, "prefill_after") else None
        self._tokenizer = tokenizer
        self._encode_request = PromptEncoder(tokenizer, limits.max_positions).encode_request
        self._pad_id = tokenizer.pad_token_id
        self._end_ids = limits.end_token_ids
        self._vocab_size = stepper.vocab_size
        self._rows: list[Row] = []  # the sequence in each row of the cache
        self._cache: Any = None  # the stepper's cache
        self._logits: np.ndarray | None = None  # [rows, V], ready to sample from
        self._pending: np.ndarray | None = None  # [rows] tokens sampled, not yet fed
        self._cancelled: list[Row] = []  # cancelled since the last step, to report
        self._num_live = 0  # rows of `_rows` still decoding

    @property
    def live_rows(self) -> list[Row]:
        """The rows still decoding (in batch order)."""
        return [row for row in self._rows if row.finish_reason is None]

    @property
    def num_live(self) -> int:
        """len(live_rows), without building the list."""
        return self._num_live

    @property
    def batch_size(self) -> int:
        """Rows in the KV cache: live ones plus finished ones not dropped yet."""
        return len(self._rows)

    # ---- joining ------------------------------------------------------------------------

    def add(
        self, requests: Sequence[GenerationRequest], tags: Sequence[Any] | None = None
    ) -> list[list[Row]]:
        """Start `requests` (with `tags[i]` as each row's tag, default the request's index);
        returns their rows, one list per request.

        Raises ValueError, before anything changes, for a request the model cannot take.
        """
        requests = list(requests)
        tags = list(range(len(requests))) if tags is None else list(tags)
        if len(tags) != len(requests):
            raise ValueError(f"add: {len(requests)} requests but {len(tags)} tags")
        prompt_ids = [self._encode(i, r) for i, r in enumerate(requests)]
        if not requests:
            return []
        per_request = [
            self._new_rows(r, tag, ids)
            for r, tag, ids in zip(requests, tags, prompt_ids, strict=True)
        ]
        self._feed_pending()
        reserve = max(r.params.max_new_tokens for r in requests)
        if self._prefix_cache is not None:
            hits = [self._prefix_cache.lookup(ids) for ids in prompt_ids]
            if any(hits):
                self._add_with_hits(per_request, prompt_ids, hits, reserve)
                return per_request
        logits, cache = self._stepper.prefill(prompt_ids, self._pad_id, reserve=reserve)
        source = np.array([i for i, rows in enumerate(per_request) for _ in rows])
        new_rows = [row for rows in per_request for row in rows]
        live = [i for i, row in enumerate(self._rows) if row.finish_reason is None]
        if live:  # join the running batch (its finished rows leave it now)
            assert self._cache is not None and self._logits is not None
            self._cache = self._stepper.merge(self._cache, live, cache, source)
            self._logits = np.concatenate([self._logits[live], logits[source]])
            self._rows = [self._rows[i] for i in live] + new_rows
        else:
            if source.size != len(requests):  # samples of one prompt share its prefill
                logits, cache = logits[source], self._stepper.select(cache, source)
            self._rows, self._cache, self._logits = new_rows, cache, logits
        self._num_live = len(self._rows)  # finished rows left with the merge
        return per_request

    def _add_with_hits(
        self,
        per_request: list[list[Row]],
        prompt_ids: list[list[int]],
        hits: list[PrefixHit | None],
        reserve: int,
    ) -> None:
        """`add` when some prompts start with a cached prefix: each of those prefills only
        the rest of its prompt on top of the cached KV; the others prefill together."""
        stepper: Any = self._stepper
        misses = [i for i, hit in enumerate(hits) if hit is None]
        if misses:
            miss_prompts = [prompt_ids[i] for i in misses]
            miss_logits, miss_cache = stepper.prefill(miss_prompts, self._pad_id, reserve=reserve)
        parts: list[tuple[Any, list[int]]] = []  # (cache, its rows), in the new rows' order
        logits = []
        for i, (rows, hit) in enumerate(zip(per_request, hits, strict=True)):
            if hit is None:
                cache, first = miss_cache, misses.index(i)
            else:
                rest = prompt_ids[i][hit.length :]
                part_logits, cache = stepper.prefill_after(hit.past, rest, reserve=reserve)
                first = 0
                for row in rows:
                    row.cached_tokens = hit.length
            chosen = [first] * len(rows)
            logits.append((part_logits if hit is not None else miss_logits)[chosen])
            if parts and parts[-1][0] is cache:  # neighbours from one prefill: one part
                parts[-1][1].extend(chosen)
            else:
                parts.append((cache, chosen))
        new_rows = [row for rows in per_request for row in rows]
        live = [i for i, row in enumerate(self._rows) if row.finish_reason is None]
        if live:
            assert self._cache is not None and self._logits is not None
            parts.insert(0, (self._cache, live))
            logits.insert(0, self._logits[live])
        if len(parts) == 1 and parts[0][1] == list(range(parts[0][0].batch_size)):
            cache = parts[0][0]  # one prompt alone: its cache as it is
        else:
            cache = stepper.combine(parts)
        self._rows = [self._rows[i] for i in live] + new_rows
        self._cache, self._logits = cache, np.concatenate(logits)
        self._num_live = len(self._rows)

    def _remember(self, index: int, row: Row) -> None:
        """Keep the KV of a row that ends (its prompt and generated tokens) for prompts
        that start the same way (a conversation's next turn)."""
        if self._prefix_cache is None or row.index != 0 or self._cache is None:
            return
        ids = row._fed_ids()
        stepper: Any = self._stepper
        cache = self._cache
        try:
            self._prefix_cache.store(ids, lambda: stepper.row_past(cache, index, len(ids)))
        except Exception:  # a cache is an optimisation: never fail the batch for it
            log.warning("prefix cache: could not store a finished row", exc_info=True)

    def _encode(self, i: int, request: GenerationRequest) -> list[int]:
        if not isinstance(getattr(request, "params", None), GenerationParams):
            raise ValueError(f"request {i}: params must be GenerationParams")
        return self._encode_request(request)

    def _new_rows(self, request: GenerationRequest, tag: Any, ids: list[int]) -> list[Row]:
        params = request.params
        seed = params.seed if params.seed is not None else np.random.SeedSequence().entropy
        eos = list(self._end_ids)
        return [
            Row(
                request,
                tag,
                k,
                ids,
                SequenceSampler(params, ids, eos, sequence_rng(seed, k), self._vocab_size),
                TextStream(self._tokenizer.decode, params.stop),
                frozenset(self._end_ids),
            )
            for k in range(params.num_return_sequences)
        ]

    # ---- decoding -----------------------------------------------------------------------

    def step(self) -> list[StepEvent]:
        """One token for every live row; returns the rows that got final text or ended.

        Rows cancelled since the last step are reported first (finished, no piece).
        """
        events: list[StepEvent] = []
        if self._cancelled:
            events, self._cancelled = [StepEvent(r, "", True) for r in self._cancelled], []
        if self._draft and self._pending is not None and self._num_live == 1:
            row = next(r for r in self._rows if r.finish_reason is None)
            if row.request.params.greedy:
                done = self._speculative_step(row)
                if done is not None:
                    return events + done
        self._feed_pending()
        if not self._rows:
            return events
        assert self._logits is not None
        tokens = np.full(len(self._rows), self._pad_id, dtype=np.int64)
        live = 0
        for i, row in enumerate(self._rows):
            if row.finish_reason is not None:
                continue
            tokens[i] = token = row._sampler.choose(self._logits[i], len(row.token_ids))
            piece = row._advance(token)
            if row.finish_reason is None:
                live += 1
                if piece:
                    events.append(StepEvent(row, piece, False))
            else:
                events.append(StepEvent(row, piece, True))
                self._remember(i, row)
        self._num_live = live
        if live:
            self._pending = tokens
        else:
            self._clear()
        return events

    def _speculative_step(self, row: Row) -> list[StepEvent] | None:
        """Prompt lookup decoding for one greedy row: feed the pending token and a draft of
        what followed its context's last n-gram earlier, in one run; keep the tokens the
        model itself picks (the sampler, from each position's logits) while they agree with
        the draft, and drop the rest from the cache. The text is exactly plain greedy's.
        None when there is no draft (the caller takes the plain step)."""
        context = np.asarray(row._prompt_ids + row.token_ids, dtype=np.int64)
        room = row.request.params.max_new_tokens - len(row.token_ids)
        draft = propose(context, min(self._draft, room - 1)) if room > 1 else []
        if not draft:
            return None
        stepper: Any = self._stepper
        if len(self._rows) > 1:  # finished rows leave first: the draft needs one row
            live = [i for i, r in enumerate(self._rows) if r is row]
            self._cache = stepper.select(self._cache, live)
            self._rows = [row]
        start = self._cache.past_length
        logits = stepper.extend(self._cache, [int(self._pending[0])] + draft)
        pieces, kept = [], 0
        for position in range(len(draft) + 1):
            token = row._sampler.choose(logits[position], len(row.token_ids))
            pieces.append(row._advance(token))
            kept = position + 1  # the fed tokens up to here are in the cache
            if row.finish_reason is not None or position == len(draft) or token != draft[position]:
                break
        stepper.truncate(self._cache, start + kept)
        self._pending = np.array([token], dtype=np.int64)
        piece = "".join(pieces)
        if row.finish_reason is None:
            return [StepEvent(row, piece, False)] if piece else []
        self._remember(0, row)
        self._num_live = 0
        self._clear()
        return [StepEvent(row, piece, True)]

    def _feed_pending(self) -> None:
        """Run the model on the tokens sampled last step, so every row has fresh logits."""
        if self._pending is None:
            return
        assert self._cache is not None
        if not self._num_live:
            self._clear()
            return
        if len(self._rows) - self._num_live >= max(1, COMPACT_FRACTION * len(self._rows)):
            live = [i for i, row in enumerate(self._rows) if row.finish_reason is None]
            self._cache = self._stepper.select(self._cache, live)
            self._rows, self._pending = [self._rows[i] for i in live], self._pending[live]
        # If the model fails, the batch is left as it was (the cache advances on success).
        self._logits = self._stepper.decode(self._cache, self._pending)
        self._pending = None

    def _clear(self) -> None:
        self._rows, self._cache, self._logits, self._pending = [], None, None, None
        self._num_live = 0

    # ---- leaving early ------------------------------------------------------------------

    def cancel(self, target: Row | GenerationRequest | Iterable[Row]) -> None:
        """Stop a row, every row of a request (the object given to `add`), or some rows.

        Their text keeps what was generated; they leave the batch with the next step,
        which reports them as finished with finish_reason "cancelled".
        """
        if isinstance(target, Row):
            targets: Iterable[Row] = [target]
        elif isinstance(target, GenerationRequest):
            targets = [row for row in self._rows if row.request is target]
        else:
            targets = target
        for row in targets:
            if row.finish_reason is None and row in self._rows:  # live and ours
                self._remember(self._rows.index(row), row)
                row._cancel()
                self._cancelled.append(row)
                self._num_live -= 1
