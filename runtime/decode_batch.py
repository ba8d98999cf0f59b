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

A request with a `constraint` (structured output) gets one grammar matcher per row,
compiled once for the request when it is added: the sampler masks what the grammar does not
allow, and the row ends with "stop" once the text is complete, or with "grammar_dead_end"
if the grammar ever allows no token (its neighbours go on).

The model runs lazily: `step` first feeds the previous step's tokens (dropping finished
rows once a quarter of the batch has finished, as copying the cache costs about as much as
a few decode steps of those rows), then samples. So the text of a step is returned as soon
as it is sampled, and an `add` between steps joins a batch whose logits are up to date.

Failures end the rows they belong to, never their neighbours: a row whose sampling raises
finishes with finish_reason "error" (`row.error` holds the exception). When the model run
of a step fails, each live row is run alone once: the rows that fail alone end with
"error", the others go on together (a failure no row reproduces alone is raised).

Two optional speed-ups leave every token unchanged: with a `PrefixCache` (prefix_cache.py)
a prompt that starts like a sequence seen before prefills only its new tokens on top of
that sequence's stored KV, and a row stores its KV when it ends or is cancelled; with
`speculative_tokens`, a greedy row decoding alone drafts tokens by prompt lookup
(prompt_lookup.py) and checks them in one run of a graph with every position's logits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from fst.core.generation_params import GenerationParams
from fst.core.tokenization import DocumentTokenizer
from fst.runtime.constraints import Constraint, GrammarMasks
from fst.runtime.logprobs import (
    MAX_TOP_LOGPROBS,
    TokenLogprob,
    log_softmax,
    prompt_logprobs,
    token_logprob,
)
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
    and `finish_reason` (None while decoding, then "stop" | "length" | "cancelled" |
    "grammar_dead_end" | "error", with the exception in `error`); `logprobs` (one per
    generated token) and `prompt_logprobs` (one per prompt token) are lists only when the
    request asked for them, else None.
    """

    __slots__ = ("request", "tag", "index", "prompt_tokens", "token_ids", "finish_reason")
    __slots__ += ("error", "logprobs", "prompt_ids", "prompt_logprobs", "cached_tokens")
    __slots__ += ("_sampler", "_stream", "_eos")

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
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.logprobs: list[TokenLogprob] | None = None if request.logprobs is None else []
        self.prompt_ids = prompt_ids
        self.prompt_logprobs: list[TokenLogprob | None] | None = None
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
            logprobs=self.logprobs,
            prompt_token_ids=self.prompt_ids if self.prompt_logprobs is not None else None,
            prompt_logprobs=self.prompt_logprobs,
            cached_tokens=self.cached_tokens,
        )

    def _choose(self, logits: np.ndarray) -> int | None:
        """Sample this step's token, None when a grammar allows none (the sampler edits
        `logits` in place, so a requested logprob is taken from the raw logits first)."""
        if self.logprobs is None:
            return self._sampler.choose(logits, len(self.token_ids))
        logprobs = log_softmax(logits)
        token = self._sampler.choose(logits, len(self.token_ids))
        if token is not None:
            self.logprobs.append(token_logprob(logprobs, token, self.request.logprobs or 0))
        return token

    def _advance(self, token: int) -> str:
        """Record a sampled token; finish the row if it ends here; return the final text."""
        params = self.request.params
        self.token_ids.append(token)
        self._sampler.observe(token)
        piece = self._stream.push(token)
        grammar = self._sampler.grammar
        complete = grammar is not None and grammar.stopped  # the constrained text is done
        if self._stream.stopped or (token in self._eos and not params.ignore_eos) or complete:
            self.finish_reason = "stop"
        elif len(self.token_ids) >= params.max_new_tokens:
            self.finish_reason = "length"
        if self.finish_reason is not None:
            piece += self._stream.finish()
        return piece

    def _dead_end(self) -> str:
        """The grammar allows no next token: end this row (and only it)."""
        self.finish_reason = "grammar_dead_end"
        return self._stream.finish()

    def _fed_ids(self) -> list[int]:
        """The tokens in this row's KV cache: the prompt and every generated token but the
        last (sampled, not yet fed)."""
        return self.prompt_ids + self.token_ids[:-1]

    def _cancel(self) -> None:
        self.finish_reason = "cancelled"
        self._stream.finish()  # the text keeps what was generated; nothing more is streamed

    def _fail(self, error: BaseException) -> None:
        self.finish_reason, self.error = "error", error

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
    bundle's). `scorer(ids)` gives the logits of every position of one prompt [S, V], for
    requests that ask for `prompt_logprobs`; None: such requests are refused.
    """

    def __init__(
        self,
        stepper: Stepper,
        tokenizer: DocumentTokenizer,
        limits: BatchLimits,
        scorer: Callable[[list[int]], np.ndarray] | None = None,
        prefix_cache: PrefixCache | None = None,
        speculative_tokens: int = 0,
    ) -> None:
        self._stepper = stepper
        self._scorer = scorer
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
        self._grammar_masks: GrammarMasks | None = None  # built by the first constraint
        self._rows: list[Row] = []  # the sequence in each row of the cache
        self._cache: Any = None  # the stepper's cache
        self._logits: np.ndarray | None = None  # [rows, V], ready to sample from
        self._pending: np.ndarray | None = None  # [rows] tokens sampled, not yet fed
        self._cancelled: list[Row] = []  # cancelled or failed since the last step, to report
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
        scores = [self._score(r, ids) for r, ids in zip(requests, prompt_ids, strict=True)]
        per_request = [
            self._new_rows(r, tag, ids)
            for r, tag, ids in zip(requests, tags, prompt_ids, strict=True)
        ]
        for rows, score in zip(per_request, scores, strict=True):
            for row in rows:
                row.prompt_logprobs = score
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
        for name in ("logprobs", "prompt_logprobs"):
            top = getattr(request, name)
            if top is not None and not (isinstance(top, int) and 0 <= top <= MAX_TOP_LOGPROBS):
                raise ValueError(f"request {i}: {name} must be in [0, {MAX_TOP_LOGPROBS}] or None")
        constraint = getattr(request, "constraint", None)
        if constraint is not None and not isinstance(constraint, Constraint):
            raise ValueError(f"request {i}: constraint must be a Constraint or None")
        return self._encode_request(request)

    def _score(
        self, request: GenerationRequest, ids: list[int]
    ) -> list[TokenLogprob | None] | None:
        """The prompt's logprobs when the request asks for them (one extra prefill)."""
        if request.prompt_logprobs is None:
            return None
        if self._scorer is None:
            raise ValueError(
                "prompt logprobs need the logits of every position: re-export the bundle "
                "with fst-export --logits all"
            )
        return prompt_logprobs(self._scorer(ids), ids, request.prompt_logprobs)

    def _grammars(self, request: GenerationRequest) -> list[Any]:
        """One matcher per sample of a constrained request (None each otherwise)."""
        n = request.params.num_return_sequences
        constraint = getattr(request, "constraint", None)
        if constraint is None:
            return [None] * n
        if self._grammar_masks is None:
            self._grammar_masks = GrammarMasks(self._tokenizer, self._vocab_size, self._end_ids)
        return self._grammar_masks.rows(constraint, n)

    def _new_rows(self, request: GenerationRequest, tag: Any, ids: list[int]) -> list[Row]:
        params = request.params
        seed = params.seed if params.seed is not None else np.random.SeedSequence().entropy
        eos = list(self._end_ids)
        grammars = self._grammars(request)
        return [
            Row(
                request,
                tag,
                k,
                ids,
                SequenceSampler(
                    params, ids, eos, sequence_rng(seed, k), self._vocab_size, grammars[k]
                ),
                TextStream(self._tokenizer.decode, params.stop),
                frozenset(self._end_ids),
            )
            for k in range(params.num_return_sequences)
        ]

    # ---- decoding -----------------------------------------------------------------------

    def step(self) -> list[StepEvent]:
        """One token for every live row; returns the rows that got final text or ended.

        Rows cancelled since the last step (or failed in its model run) are reported first
        (finished, no piece).
        """
        # A lone greedy row may draft by prompt lookup: its pending token and the draft go
        # in one run (it feeds the pending token itself, so this comes before the feed).
        if self._draft and self._pending is not None and self._num_live == 1:
            row = next(r for r in self._rows if r.finish_reason is None)
            if row.request.params.greedy and not self._cancelled:
                done = self._speculative_step(row)
                if done is not None:
                    return done
        events: list[StepEvent] = []
        self._feed_pending()
        if self._cancelled:
            events, self._cancelled = [StepEvent(r, "", True) for r in self._cancelled], []
        if not self._rows:
            return events
        assert self._logits is not None
        tokens = np.full(len(self._rows), self._pad_id, dtype=np.int64)
        live = 0
        for i, row in enumerate(self._rows):
            if row.finish_reason is not None:
                continue
            try:
                token = row._choose(self._logits[i])
                if token is None:  # the grammar allows nothing: this row ends, nobody else
                    events.append(StepEvent(row, row._dead_end(), True))
                    continue
                tokens[i] = token
                piece = row._advance(token)
            except Exception as exc:  # this row's sampling or text: it ends, nobody else
                row._fail(exc)
                events.append(StepEvent(row, "", True))
                continue
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
        context = np.asarray(row.prompt_ids + row.token_ids, dtype=np.int64)
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
        try:
            self._logits = self._stepper.decode(self._cache, self._pending)
        except Exception:
            if self._num_live < 2 or not self._fail_rows_that_fail_alone():
                raise
            if not self._num_live:
                self._clear()
                return
            self._logits = self._stepper.decode(self._cache, self._pending)
        self._pending = None

    def _fail_rows_that_fail_alone(self) -> bool:
        """After a failed model run: run each live row alone (results discarded); the rows
        that fail end with "error" and leave the batch. False when none failed alone."""
        assert self._cache is not None and self._pending is not None
        live = [i for i, row in enumerate(self._rows) if row.finish_reason is None]
        ok = []
        for i in live:
            try:
                self._stepper.decode(self._stepper.select(self._cache, [i]), self._pending[[i]])
                ok.append(i)
            except Exception as exc:
                self._rows[i]._fail(exc)
                self._cancelled.append(self._rows[i])
        if len(ok) == len(live):
            return False
        self._num_live = len(ok)
        if ok:
            self._cache = self._stepper.select(self._cache, ok)
            self._rows, self._pending = [self._rows[i] for i in ok], self._pending[ok]
        return True

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
