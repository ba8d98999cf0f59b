"""Token-level continuous batching: requests join the running batch between decoding steps.

With request-level batching a request that arrives while a batch decodes waits for the
whole batch to finish. Here the scheduler admits it at the next step: its prompts are
prefilled on their own, and their KV cache is merged into the running one (both
left-padded to a common past length, which the attention mask hides), so it decodes
alongside the sequences already running; finished and cancelled sequences leave the
batch as in the runtime (compaction once a quarter of the rows are done).

Each sequence runs exactly the runtime's per-token logic (`SequenceSampler`, `TextStream`,
the same EOS / stop / length rules, the same seeded generator per sample), so its text
depends only on its prompt, params and seed, never on its neighbours in the batch.

The engine drives the runtime's `CausalLMStepper` (the generator's `_stepper`: the runtime
has no public step-level API yet) and copies the cache through numpy to merge it, as the
stepper's own `select` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from fst.runtime import Completion
from fst.runtime.kv_cache import KVCache
from fst.runtime.streaming import TextStream
from fst.sampling import SequenceSampler, sequence_rng

# Drop finished rows once this fraction of the batch has finished (as the runtime does).
COMPACT_FRACTION = 0.25


@dataclass
class Row:
    """One sample of one prompt of one job, decoding in a row of the batch."""

    owner: Any  # the scheduler's Job
    request: int  # which of the job's prompts
    index: int  # which sample of that prompt
    prompt: Any
    prompt_tokens: int
    params: Any
    sampler: SequenceSampler
    stream: TextStream
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    def advance(self, token: int, eos_id: int | None) -> str:
        """Record a token; finish the row if it ends here; return the text that is final."""
        self.token_ids.append(token)
        self.sampler.observe(token)
        piece = self.stream.push(token)
        if self.stream.stopped or (token == eos_id and not self.params.ignore_eos):
            self.finish_reason = "stop"
        elif len(self.token_ids) >= self.params.max_new_tokens:
            self.finish_reason = "length"
        if self.finish_reason is not None:
            piece += self.stream.finish()
        return piece

    def cancel(self) -> None:
        self.finish_reason = "cancelled"
        self.stream.finish()  # the text keeps what was generated

    def completion(self) -> Completion:
        return Completion(
            prompt=self.prompt,
            text=self.stream.text,
            token_ids=self.token_ids,
            finish_reason=self.finish_reason or "cancelled",
            prompt_tokens=self.prompt_tokens,
            index=self.index,
        )


def supports_continuous(generator: Any) -> bool:
    """True for the runtime's Generator (a stepper and a tokenizer), False for stand-ins."""
    return hasattr(generator, "_stepper") and hasattr(generator, "tokenizer")


class ContinuousEngine:
    """The running batch: `admit` new requests, `step` one token for every row."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self.stepper = generator._stepper
        self.pad_id = generator.tokenizer.pad_token_id
        self.eos_id = generator.eos_token_id
        self.rows: list[Row] = []
        self.cache: KVCache | None = None
        self.logits: np.ndarray | None = None  # [rows, vocab]: each row's next-token logits

    @property
    def live_rows(self) -> list[Row]:
        return [row for row in self.rows if row.finish_reason is None]

    @property
    def idle(self) -> bool:
        return not self.rows

    def reset(self) -> None:
        self.rows, self.cache, self.logits = [], None, None

    def admit(self, jobs: list[Any]) -> list[Row]:
        """Prefill the jobs' prompts and add their samples to the batch; returns the new rows.

        Raises (before changing the batch) on a prompt the model cannot take.
        """
        entries = [(job, i, r) for job in jobs for i, r in enumerate(job.requests)]
        prompt_ids = [self._encode(r) for _, _, r in entries]
        logits, cache = self.stepper.prefill(prompt_ids, self.pad_id)
        rows, source = [], []
        for e, ((job, i, request), ids) in enumerate(zip(entries, prompt_ids, strict=True)):
            rows += self._rows(job, i, request, ids)
            source += [e] * request.params.num_return_sequences
        if len(source) != len(entries):  # samples of one prompt share its prefill
            logits, cache = logits[source], self.stepper.select(cache, source)
        live = [r for r, row in enumerate(self.rows) if row.finish_reason is None]
        if not live:
            self.rows, self.cache, self.logits = rows, cache, logits
        else:
            assert self.cache is not None and self.logits is not None
            self.cache = merge_caches(self.cache, live, cache, self.stepper)
            self.logits = np.concatenate([self.logits[live], logits])
            self.rows = [self.rows[r] for r in live] + rows
        return rows

    def _encode(self, request: Any) -> list[int]:
        ids = self.generator.encode_prompt(request.prompt)
        limit = self.generator.max_positions
        if len(ids) + request.params.max_new_tokens > limit:
            raise ValueError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({request.params.max_new_tokens}) "
                f"exceeds the model's {limit} positions"
            )
        return ids

    def _rows(self, job: Any, i: int, request: Any, ids: list[int]) -> list[Row]:
        params = request.params
        seed = params.seed if params.seed is not None else np.random.SeedSequence().entropy
        eos = [] if self.eos_id is None else [self.eos_id]
        vocab = self.generator.vocab_size
        decode = self.generator.tokenizer.decode
        return [
            Row(
                owner=job,
                request=i,
                index=k,
                prompt=request.prompt,
                prompt_tokens=len(ids),
                params=params,
                sampler=SequenceSampler(params, ids, eos, sequence_rng(seed, k), vocab),
                stream=TextStream(decode, params.stop),
            )
            for k in range(params.num_return_sequences)
        ]

    def step(self, is_cancelled: Any) -> list[Row]:
        """Choose a token for every live row and decode them; returns the rows that ended.

        `is_cancelled(row)` is asked once per live row; `on_piece` happens through each
        row's owner (`owner.deliver`).
        """
        assert self.cache is not None and self.logits is not None
        ended = []
        tokens = np.full(len(self.rows), self.pad_id, dtype=np.int64)
        for r, row in enumerate(self.rows):
            if row.finish_reason is not None:
                continue
            if is_cancelled(row):
                row.cancel()
            else:
                tokens[r] = token = row.sampler.choose(self.logits[r], len(row.token_ids))
                piece = row.advance(token, self.eos_id)
                if piece:
                    row.owner.deliver("piece", (row.request, row.index, piece))
            if row.finish_reason is not None:
                ended.append(row)
        live = [r for r, row in enumerate(self.rows) if row.finish_reason is None]
        if not live:
            self.reset()
            return ended
        if len(self.rows) - len(live) >= max(1, COMPACT_FRACTION * len(self.rows)):
            self.cache = self.stepper.select(self.cache, live)
            self.rows, tokens = [self.rows[r] for r in live], tokens[live]
        self.logits = self.stepper.decode(self.cache, tokens)
        return ended


def merge_caches(running: KVCache, keep: list[int], new: KVCache, stepper: Any) -> KVCache:
    """Rows `keep` of `running` followed by every row of `new`, in one cache.

    Both are left-padded to a common past length (zeros under a 0 mask), after trimming
    the columns that are padding in every kept row, as `select` does.
    """
    mask_a = running.attention_mask[keep]
    start = int(np.argmax(mask_a.any(axis=0)))
    mask_a = mask_a[:, start:]
    mask_b = new.attention_mask
    rows_a, past_a = mask_a.shape
    rows_b, past_b = mask_b.shape
    past = max(past_a, past_b)
    mask = np.zeros((rows_a + rows_b, past), dtype=np.int64)
    mask[:rows_a, past - past_a :] = mask_a
    mask[rows_a:, past - past_b :] = mask_b
    arrays = []
    for a, b in zip(running.presents, new.presents, strict=True):
        a_np, b_np = a.numpy(), b.numpy()
        heads, dim = a_np.shape[1], a_np.shape[3]
        out = np.zeros((rows_a + rows_b, heads, past, dim), dtype=a_np.dtype)
        out[:rows_a, :, past - past_a :, :] = a_np[keep][:, :, start:, :]
        out[rows_a:, :, past - past_b :, :] = b_np
        arrays.append(out)
    device = getattr(stepper, "_cache_device_type", "cpu")
    presents = [ort.OrtValue.ortvalue_from_numpy(x, device)._ortvalue for x in arrays]
    next_positions = np.concatenate([running.next_positions[keep], new.next_positions])
    return KVCache(presents, mask, next_positions, keep_alive=arrays)
