"""The torch-free generator: an fst bundle, ONNX Runtime and our own sampling loop.

Public API (the server, the bot, the CLI and the benchmarks code against it)::

    gen = Generator.from_bundle("bundle/", providers=None, threads=None)
    gen.generate(prompt_or_prompts, params=None, **overrides) -> list[Completion]
    gen.stream(prompt, params=None, **overrides) -> Iterator[str]
    gen.run(requests, on_piece=None, is_cancelled=None) -> list[list[Completion]]
    gen.new_batch() -> DecodeBatch        # step-level API, see decode_batch.py
    gen.encode_prompt(prompt) -> list[int]; gen.encode_request(request) -> list[int]

A prompt is a string, an `fst.core.documents.Document`, a mapping {"body": ..., "meta": ...}
or a `ChatPrompt` (a conversation rendered by `fst.runtime.chat.render_chat`) or a list of
token ids (taken as they are); documents are encoded as in training (meta only for bundles
trained with the document format). `generate` returns completions prompt-major: [p0 s0,
p0 s1, ..., p1 s0, ...].

`run` decodes every sequence of every request in one batch: the prompts are prefilled once
each (left-padded), their KV cache rows are repeated for `num_return_sequences`, then each
row samples with its own params, seeded generator and stop strings, so a sample depends on
its seed and prompt only. Finished rows are dropped from the batch when enough of them
accumulate. A `Completion.token_ids` holds the generated ids (the EOS included when one
ended it); `text` is their decoding cut before the first stop string. The per-token loop
itself is `DecodeBatch` (decode_batch.py), which the server's continuous batching shares.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from fst.core.bundle import BundleError, BundleManifest, check_bundle
from fst.core.contract import GraphContract
from fst.core.documents import Document
from fst.core.generation_params import GenerationParams
from fst.core.tokenization import DocumentTokenizer
from fst.runtime.decode_batch import DecodeBatch, Row
from fst.runtime.kv_cache import make_stepper
from fst.runtime.prefix_cache import PrefixCache
from fst.runtime.prompts import BatchLimits, PromptEncoder, is_token_ids
from fst.runtime.requests import ChatPrompt, Completion, GenerationRequest, Prompt
from fst.runtime.scoring import prefill_logits
from fst.runtime.session import create_session
from fst.runtime.stepper import ModelCallHook, Stepper

log = logging.getLogger(__name__)

__all__ = ["Generator", "load_tokenizer"]


class Generator:
    """Generates text from an fst bundle with ONNX Runtime; no torch needed."""

    def __init__(
        self,
        manifest: BundleManifest,
        tokenizer: DocumentTokenizer,
        session: Any,
        provider: str,
        prefix_cache_bytes: int = 0,
        speculative_tokens: int = 0,
    ) -> None:
        self.manifest = manifest
        # Prompt lookup drafts for lone greedy rows ("all"-logits graphs only; 0: off).
        self.speculative_tokens = speculative_tokens
        self.tokenizer = tokenizer
        self.provider = provider
        self.max_positions = manifest.architecture.max_positions
        self.vocab_size = manifest.architecture.vocab_size
        self.eos_token_id = manifest.tokenizer.eos_token_id
        self.default_params = _default_params(manifest.generation_defaults)
        self.chat = manifest.chat  # None: not a chat model
        stop_ids = tuple(self.chat.stop_token_ids) if self.chat is not None else ()
        self.limits = BatchLimits(self.max_positions, self.eos_token_id, stop_ids)
        self._prompts = PromptEncoder(tokenizer, self.max_positions)
        self._stepper = make_stepper(session, manifest)
        self._session = session
        self._contract = GraphContract.from_manifest(manifest)
        # Prompts that start like an earlier sequence reuse its KV (prefix_cache.py); only
        # steppers that can prefill after a known past take part (not the GPU layout's).
        self.prefix_cache: PrefixCache | None = None
        if prefix_cache_bytes > 0 and hasattr(self._stepper, "prefill_after"):
            self.prefix_cache = PrefixCache(prefix_cache_bytes)

    @property
    def scores_prompts(self) -> bool:
        """Whether requests may ask for prompt logprobs: the graph returns every position's
        logits (`fst-export --logits all`) on the CPU layouts `prefill_logits` drives."""
        return self._contract.logits == "all" and self._contract.kv_layout != "shared_right"

    def prompt_logits(self, ids: list[int]) -> np.ndarray:
        """The logits of every position of one prompt [S, V]: one prefill of its own, so
        the decode graph keeps computing the last position only."""
        batch = np.asarray([ids], dtype=np.int64)
        return prefill_logits(self._session, self._contract, batch, np.ones_like(batch))[0]

    @property
    def stepper(self) -> Stepper:
        """The bundle's graph as a stepper (prefill / decode / select / merge)."""
        return self._stepper

    @property
    def on_model_call(self) -> ModelCallHook | None:
        """Observer of every ONNX Runtime run: `hook(kind, batch_size, start, end)` with kind
        "prefill" or "decode" and `time.perf_counter()` seconds (input binding, the run and
        the logits copy). For benchmarks and metrics; None (the default) costs nothing."""
        return self._stepper.on_model_call

    @on_model_call.setter
    def on_model_call(self, hook: ModelCallHook | None) -> None:
        self._stepper.on_model_call = hook

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        verify: bool = False,
        prefix_cache_bytes: int = 0,
        speculative_tokens: int = 0,
        **session_kwargs: Any,
    ) -> Generator:
        """Load a bundle folder written by `fst-export`.

        A missing, empty or truncated file raises `fst.core.bundle.BundleError` naming it (sizes
        are always checked); `verify=True` also compares every file's sha256 with the
        manifest's (about a second per GB). `prefix_cache_bytes` > 0 keeps the KV of
        finished sequences, up to that many bytes, for prompts that start the same way (a
        chat's next turn; see prefix_cache.py). `speculative_tokens` > 0 drafts up to that
        many tokens by prompt lookup for a greedy request decoding alone and checks them in
        one run (bundles exported with --logits all; the text is plain greedy's; see
        decode_batch.py). `providers=None` picks ONNX Runtime's best (TensorRT → CUDA → CPU),
        or the CPU for a "shared" KV layout bundle. `session_kwargs` go to `create_session`
        (e.g. `huge_pages=True`: the session's weights into 2 MiB pages; off by default).
        """
        path = Path(path)
        manifest = check_bundle(path, hashes=verify)
        tokenizer = load_tokenizer(path, manifest)
        if providers is None and manifest.graph.kv_layout == "shared":
            # fst-export's default layout keeps its KV buffers in host memory (kv_cache.py):
            # the CPU provider even where onnxruntime-gpu would pick CUDA.
            providers = ["cpu"]
        session, provider = create_session(
            path / manifest.graph.file, providers=providers, threads=threads, **session_kwargs
        )
        return cls(manifest, tokenizer, session, provider, prefix_cache_bytes, speculative_tokens)

    # ---- prompts ------------------------------------------------------------------------

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Prompt ids as the model saw documents in training; ValueError on a bad prompt."""
        return self._prompts.encode_prompt(prompt)

    def encode_request(self, request: GenerationRequest) -> list[int]:
        """Prompt ids of a request; ValueError if the model cannot take it (too long)."""
        return self._prompts.encode_request(request)

    # ---- generation ---------------------------------------------------------------------

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: GenerationParams | None = None,
        **overrides: Any,
    ) -> list[Completion]:
        """Completions of one or several prompts, prompt-major (all samples of prompt 0 first)."""
        if isinstance(prompts, (str, Document, Mapping, ChatPrompt)) or is_token_ids(prompts):
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
        request = GenerationRequest(prompt, params)
        self.encode_request(request)  # validates now; prefills when first read
        return _pieces(self.new_batch(), request)

    def run(
        self,
        requests: Sequence[GenerationRequest],
        on_piece: Callable[[int, int, str], None] | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> list[list[Completion]]:
        """Decode all requests in one batch; returns each request's samples.

        `on_piece(request_idx, seq_idx, text)` gets text as it becomes final (never a stop
        string, never half a character). `is_cancelled(request_idx)` is polled every step;
        a cancelled request's sequences stop with finish_reason "cancelled". A row that
        fails (its sampling or its model run alone) raises its error here.
        """
        batch = self.new_batch()
        rows = batch.add(requests)  # row.tag is the request's index
        while batch.num_live:
            if is_cancelled is not None:
                _cancel_requests(batch, rows, is_cancelled)
            for row, piece, _ in batch.step():
                if row.error is not None:
                    raise row.error
                if on_piece is not None and piece:
                    on_piece(row.tag, row.index, piece)
        return [[row.completion() for row in per_request] for per_request in rows]

    def new_batch(self) -> DecodeBatch:
        """An empty batch to add requests to and step: the runtime's per-token loop."""
        return DecodeBatch(
            self._stepper,
            self.tokenizer,
            self.limits,
            scorer=self.prompt_logits if self.scores_prompts else None,
            prefix_cache=self.prefix_cache,
            speculative_tokens=self.speculative_tokens,
        )

    def _params(
        self, params: GenerationParams | None, overrides: dict[str, Any]
    ) -> GenerationParams:
        params = params if params is not None else self.default_params
        return params.with_overrides(**overrides) if overrides else params


def _pieces(batch: DecodeBatch, request: GenerationRequest) -> Iterator[str]:
    """The text pieces of `request`, decoded alone in `batch`."""
    batch.add([request])
    while batch.num_live:
        for event in batch.step():
            if event.row.error is not None:
                raise event.row.error
            if event.piece:
                yield event.piece


def _cancel_requests(
    batch: DecodeBatch, rows: list[list[Row]], is_cancelled: Callable[[int], bool]
) -> None:
    """Cancel the rows of each request `i` still decoding for which `is_cancelled(i)`."""
    for i, per_request in enumerate(rows):
        if any(not row.finished for row in per_request) and is_cancelled(i):
            batch.cancel(per_request)


def load_tokenizer(folder: Path, manifest: BundleManifest) -> DocumentTokenizer:
    """The bundle's tokenizer with the document settings it was trained with."""
    import tokenizers

    info = manifest.tokenizer
    file = folder / info.file
    try:
        raw = tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for every kind of failure
        raise BundleError(f"{file}: not a readable tokenizer ({e}); re-export the bundle") from e
    settings: dict[str, Any] = {"document_format": info.document_format}
    if info.eos_token_id is not None:
        settings["eos_token"] = raw.id_to_token(info.eos_token_id)
    if info.bos_token_id is not None:
        settings["bos_token"] = raw.id_to_token(info.bos_token_id)
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
