"""The torch-free generator: an fst bundle, ONNX Runtime and our own sampling loop.

Public API (the server, the bot, the CLI and the benchmarks code against it)::

    gen = Generator.from_bundle("bundle/", providers=None, threads=None)
    gen.generate(prompt_or_prompts, params=None, **overrides) -> list[Completion]
    gen.stream(prompt, params=None, **overrides) -> Iterator[str]
    gen.run(requests, on_piece=None, is_cancelled=None) -> list[list[Completion]]

A prompt is a string, an `fst.documents.Document` or a mapping {"body": ..., "meta": ...};
documents are encoded as in training (meta only for bundles trained with the document
format). `generate` returns completions prompt-major: [p0 s0, p0 s1, ..., p1 s0, ...].

`run` decodes every sequence of every request in one batch: the prompts are prefilled once
each (left-padded), their KV cache rows are repeated for `num_return_sequences`, then each
row samples with its own params, seeded generator and stop strings, so a sample depends on
its seed and prompt only. Finished rows are dropped from the batch when enough of them
accumulate. A `Completion.token_ids` holds the generated ids (the EOS included when one
ended it); `text` is their decoding cut before the first stop string.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union

import numpy as np

from fst.bundle import BundleManifest
from fst.documents import Document
from fst.generation_params import GenerationParams
from fst.runtime.kv_cache import CausalLMStepper
from fst.runtime.session import create_session
from fst.runtime.streaming import TextStream
from fst.sampling import SequenceSampler, sequence_rng
from fst.tokenization import DocumentTokenizer

log = logging.getLogger(__name__)

Prompt = Union[str, Document, Mapping[str, Any]]
# Drop finished rows from the batch once this fraction of it has finished (copying the
# cache once costs about as much as a few decode steps of the finished rows).
COMPACT_FRACTION = 0.25


@dataclass
class Completion:
    prompt: Prompt
    text: str
    token_ids: list[int]  # generated ids only
    finish_reason: str  # "stop" (EOS or a stop string) | "length" | "cancelled"
    prompt_tokens: int
    index: int  # which of this prompt's samples


@dataclass
class GenerationRequest:
    prompt: Prompt
    params: GenerationParams


class _Sequence:
    """One sample being generated: its sampler, its text and how it finished."""

    def __init__(self, request: int, index: int, sampler: SequenceSampler, stream: TextStream):
        self.request = request
        self.index = index
        self.sampler = sampler
        self.stream = stream
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None


class Generator:
    """Generates text from an fst bundle with ONNX Runtime; no torch needed."""

    def __init__(
        self,
        manifest: BundleManifest,
        tokenizer: DocumentTokenizer,
        session: Any,
        provider: str,
    ) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.provider = provider
        self.max_positions = manifest.architecture.max_positions
        self.vocab_size = manifest.architecture.vocab_size
        self.eos_token_id = manifest.tokenizer.eos_token_id
        self.default_params = _default_params(manifest.generation_defaults)
        self._stepper = CausalLMStepper(session, manifest)

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        **session_kwargs: Any,
    ) -> Generator:
        """Load a bundle folder written by `fst-export`."""
        path = Path(path)
        manifest = BundleManifest.load(path)
        tokenizer = load_tokenizer(path, manifest)
        session, provider = create_session(
            path / manifest.graph.file, providers=providers, threads=threads, **session_kwargs
        )
        return cls(manifest, tokenizer, session, provider)

    # ---- prompts ------------------------------------------------------------------------

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Prompt ids as the model saw documents in training; ValueError on a bad prompt."""
        return self.tokenizer.encode_for_inference(self._as_document(prompt))

    def _as_document(self, prompt: Prompt) -> Document | str:
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, Mapping):
            unknown = sorted(set(prompt) - {"body", "meta"})
            if unknown or "body" not in prompt:
                raise ValueError(
                    f"a document prompt needs 'body' and optionally 'meta', got keys {sorted(prompt)}"
                )
            prompt = Document(prompt["body"], prompt.get("meta"))
        if not isinstance(prompt, Document):
            raise ValueError(f"a prompt is a string or a document, got {type(prompt).__name__}")
        if not isinstance(prompt.body, str) or not isinstance(prompt.meta, (str, type(None))):
            raise ValueError("a document's body must be a string and its meta a string or null")
        if prompt.meta and not self.tokenizer.document_format:
            raise ValueError(
                "this bundle is a plain language model (not trained on documents): "
                "a prompt cannot have a meta"
            )
        return prompt

    # ---- generation ---------------------------------------------------------------------

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: GenerationParams | None = None,
        **overrides: Any,
    ) -> list[Completion]:
        """Completions of one or several prompts, prompt-major (all samples of prompt 0 first)."""
        if isinstance(prompts, (str, Document, Mapping)):
            prompts = [prompts]
        params = self._params(params, overrides)
        results = self.run([GenerationRequest(p, params) for p in prompts])
        return [c for per_prompt in results for c in per_prompt]

    def stream(
        self, prompt: Prompt, params: GenerationParams | None = None, **overrides: Any
    ) -> Iterator[str]:
        """Text pieces of one completion as they become final; they join to its text."""
        params = self._params(params, overrides)
        if params.num_return_sequences != 1:
            raise ValueError("stream: num_return_sequences must be 1")
        decoding = _Decoding(self, [GenerationRequest(prompt, params)], None)  # validates now
        return (piece for _, _, piece in decoding.events())

    def run(
        self,
        requests: Sequence[GenerationRequest],
        on_piece: Callable[[int, int, str], None] | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> list[list[Completion]]:
        """Decode all requests in one batch; returns each request's samples.

        `on_piece(request_idx, seq_idx, text)` gets text as it becomes final (never a stop
        string, never half a character). `is_cancelled(request_idx)` is polled every step;
        a cancelled request's sequences stop with finish_reason "cancelled".
        """
        decoding = _Decoding(self, requests, is_cancelled)
        for event in decoding.events():
            if on_piece is not None:
                on_piece(*event)
        return decoding.completions()

    def _params(
        self, params: GenerationParams | None, overrides: dict[str, Any]
    ) -> GenerationParams:
        params = params if params is not None else self.default_params
        return params.with_overrides(**overrides) if overrides else params


class _Decoding:
    """One `run`: validates and encodes at construction, then decodes as `events()` is read."""

    def __init__(
        self,
        generator: Generator,
        requests: Sequence[GenerationRequest],
        is_cancelled: Callable[[int], bool] | None,
    ) -> None:
        self.generator = generator
        self.requests = list(requests)
        self.is_cancelled = is_cancelled
        self.prompt_ids = [self._encode(i, r) for i, r in enumerate(self.requests)]
        self.sequences = [seq for i, r in enumerate(self.requests) for seq in self._sequences(i, r)]

    def _encode(self, i: int, request: GenerationRequest) -> list[int]:
        if not isinstance(request.params, GenerationParams):
            raise ValueError(f"request {i}: params must be GenerationParams")
        ids = self.generator.encode_prompt(request.prompt)
        limit = self.generator.max_positions
        if len(ids) + request.params.max_new_tokens > limit:
            raise ValueError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({request.params.max_new_tokens}) "
                f"exceeds the model's {limit} positions"
            )
        return ids

    def _sequences(self, i: int, request: GenerationRequest) -> list[_Sequence]:
        params = request.params
        seed = params.seed if params.seed is not None else np.random.SeedSequence().entropy
        eos = [] if self.generator.eos_token_id is None else [self.generator.eos_token_id]
        tokenizer = self.generator.tokenizer
        return [
            _Sequence(
                i,
                k,
                SequenceSampler(
                    params,
                    self.prompt_ids[i],
                    eos,
                    sequence_rng(seed, k),
                    self.generator.vocab_size,
                ),
                TextStream(tokenizer.decode, params.stop),
            )
            for k in range(params.num_return_sequences)
        ]

    def events(self) -> Iterator[tuple[int, int, str]]:
        """Decode to the end, yielding (request_idx, seq_idx, piece) as text becomes final."""
        if not self.requests:
            return
        stepper = self.generator._stepper
        pad = self.generator.tokenizer.pad_token_id
        logits, cache = stepper.prefill(self.prompt_ids, pad)
        rows = np.array([s.request for s in self.sequences])
        if rows.size != len(self.requests):  # samples of one prompt share its prefill
            logits, cache = logits[rows], stepper.select(cache, rows)
        batch = list(self.sequences)  # the sequence in each row of the cache
        while True:
            self._poll_cancelled(batch)
            tokens = np.full(len(batch), pad, dtype=np.int64)
            for row, seq in enumerate(batch):
                if seq.finish_reason is None:
                    tokens[row] = token = seq.sampler.choose(logits[row], len(seq.token_ids))
                    piece = self._advance(seq, token)
                    if piece:
                        yield seq.request, seq.index, piece
            live = [row for row, seq in enumerate(batch) if seq.finish_reason is None]
            if not live:
                return
            if len(batch) - len(live) >= max(1, COMPACT_FRACTION * len(batch)):
                batch, tokens = [batch[r] for r in live], tokens[live]
                cache = stepper.select(cache, live)
            logits = stepper.decode(cache, tokens)

    def _advance(self, seq: _Sequence, token: int) -> str:
        """Record a sampled token; finish the sequence if it ends here; return final text."""
        params = self.requests[seq.request].params
        seq.token_ids.append(token)
        seq.sampler.observe(token)
        piece = seq.stream.push(token)
        if seq.stream.stopped or (token == self.generator.eos_token_id and not params.ignore_eos):
            seq.finish_reason = "stop"
        elif len(seq.token_ids) >= params.max_new_tokens:
            seq.finish_reason = "length"
        if seq.finish_reason is not None:
            piece += seq.stream.finish()
        return piece

    def _poll_cancelled(self, batch: list[_Sequence]) -> None:
        if self.is_cancelled is None:
            return
        live = {seq.request for seq in batch if seq.finish_reason is None}
        for request in live:
            if self.is_cancelled(request):
                for seq in batch:
                    if seq.request == request and seq.finish_reason is None:
                        seq.finish_reason = "cancelled"
                        seq.stream.finish()  # the text keeps what was generated

    def completions(self) -> list[list[Completion]]:
        out: list[list[Completion]] = [[] for _ in self.requests]
        for seq in self.sequences:
            out[seq.request].append(
                Completion(
                    prompt=self.requests[seq.request].prompt,
                    text=seq.stream.text,
                    token_ids=seq.token_ids,
                    finish_reason=seq.finish_reason or "cancelled",
                    prompt_tokens=len(self.prompt_ids[seq.request]),
                    index=seq.index,
                )
            )
        return out


def load_tokenizer(folder: Path, manifest: BundleManifest) -> DocumentTokenizer:
    """The bundle's tokenizer with the document settings it was trained with."""
    import tokenizers

    info = manifest.tokenizer
    raw = tokenizers.Tokenizer.from_file(str(folder / info.file))
    settings: dict[str, Any] = {"document_format": info.document_format}
    if info.eos_token_id is not None:
        settings["eos_token"] = raw.id_to_token(info.eos_token_id)
    if info.max_meta_len is not None:
        settings["max_meta_len"] = info.max_meta_len
    # Without a body limit (plain LM), only the model's positions limit the prompt.
    settings["max_body_len"] = info.max_body_len or manifest.architecture.max_positions
    tokenizer = DocumentTokenizer(raw, **settings)
    if info.eos_token_id is not None and tokenizer.eos_token_id != info.eos_token_id:
        raise ValueError(
            f"{folder}: tokenizer EOS id {tokenizer.eos_token_id} != manifest {info.eos_token_id}"
        )
    return tokenizer


def _default_params(defaults: Mapping[str, Any]) -> GenerationParams:
    """GenerationParams with the bundle's defaults (unknown keys are logged and ignored)."""
    known = {f.name for f in fields(GenerationParams)}
    unknown = sorted(set(defaults) - known)
    if unknown:
        log.warning("bundle generation_defaults: ignoring unknown keys %s", unknown)
    return GenerationParams(**{k: v for k, v in defaults.items() if k in known})
