"""Structured output: a request's text constrained to a JSON schema, a regex or a grammar.

A `Constraint` is what a request asks for, compiled into an llguidance grammar and checked
once, at the edge (a bad schema is a one-line `ConstraintError` before anything runs). It
does not depend on the model. `GrammarMasks` binds constraints to one model's tokenizer
(built once per tokenizer: ~1-2 s on a busy 2-core machine) and makes the per-row `RowGrammar`: the first row of a
request compiles the grammar (~1-5 ms), its other samples copy that matcher.

Per token, `RowGrammar.mask(row)` sets every token the grammar does not allow next to -inf
in the row of logits (the end-of-text tokens are allowed exactly when the grammar accepts
what came so far) and `consume(token)` advances it. llguidance is the engine under
llama.cpp's and vLLM's guidance backends; benchmarks/latency/structured_libraries.py is why it was
chosen (results in benchmarks/results/structured-output-libraries-gpt2-smollm2-vocabularies.md). It is imported only
when a constraint is used, so requests without one cost nothing and need no llguidance.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

NEG_INF = np.float32(-np.inf)
# Byte value → the additive bias of its 8 tokens (bit i set: token i allowed, bias 0, else
# -inf). A gather of this table turns llguidance's bitmask into a bias without branches:
# a boolean-mask write costs 10x more when allowed and refused tokens interleave.
_BYTE_BIAS = np.where(
    np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little") == 1,
    np.float32(0.0),
    NEG_INF,
).astype(np.float32)

# JSON is generated compactly, with the separators json.dumps writes by default: free
# whitespace lets a model pad forever, and models have seen this spelling most.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


class ConstraintError(ValueError):
    """A schema, regex or grammar that cannot be compiled; the message is one line."""


@dataclass(frozen=True)
class Constraint:
    """What generated text must match: `kind` ("json_schema" | "regex" | "grammar") and
    the checked llguidance grammar (model-independent)."""

    kind: str
    grammar: str

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | bool) -> Constraint:
        """A JSON Schema (draft 2020-12 keywords llguidance implements; an unimplemented
        keyword is an error, never silently ignored)."""
        ll = _llguidance()
        try:
            grammar = ll.LLMatcher.grammar_from_json_schema(
                json.dumps(schema), defaults=JSON_OPTIONS
            )
        except (ValueError, TypeError) as exc:
            raise ConstraintError(f"not a valid JSON schema: {_one_line(str(exc))}") from None
        return cls("json_schema", _checked(grammar, "schema"))

    @classmethod
    def json_object(cls) -> Constraint:
        """Any JSON object (OpenAI's `response_format: {"type": "json_object"}`)."""
        return cls.json_schema(ANY_JSON_OBJECT)

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        """The whole text matches `pattern` (Rust regex syntax, no look-around)."""
        return cls("regex", _checked(_llguidance().LLMatcher.grammar_from_regex(pattern), "regex"))

    @classmethod
    def grammar_text(cls, text: str) -> Constraint:
        """A Lark grammar (llguidance's dialect, `start:` rule) or a GBNF one (`root ::=`)."""
        ll = _llguidance()
        try:
            grammar = ll.grammar_from("grammar", text)
        except ValueError as exc:
            raise ConstraintError(_one_line(str(exc))) from None
        return cls("grammar", _checked(grammar, "grammar"))


def _checked(grammar: str, what: str) -> str:
    is_error, messages = _llguidance().LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ConstraintError(f"the {what} does not compile: {_one_line(messages[0])}")
    return grammar


def _one_line(message: str) -> str:
    """llguidance's first line, plus its regex parser's `error:` line when there is one."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    detail = [line for line in lines[1:] if line.startswith("error:")]
    return " ".join(lines[:1] + detail)


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise ConstraintError(
            "structured output needs the llguidance package (pip install "
            "'full-stack-transformer[serve]')"
        ) from None
    return llguidance


# --------------------------------------------------------------------------------------------
# Per model and per row
# --------------------------------------------------------------------------------------------


class GrammarMasks:
    """Constraints bound to one model: its tokenizer, vocabulary size and end tokens."""

    def __init__(self, tokenizer: Any, vocab_size: int, end_token_ids: Sequence[int]) -> None:
        """`tokenizer`: the model's `DocumentTokenizer` (anything with `to_json()`)."""
        self.vocab_size = vocab_size
        self.end_token_ids = tuple(sorted(set(int(t) for t in end_token_ids)))
        self._tokenizer = _ll_tokenizer(tokenizer, vocab_size, self.end_token_ids)
        self._scratch = _Scratch(vocab_size)  # rows are masked one at a time

    def rows(self, constraint: Constraint, n: int) -> list[RowGrammar]:
        """`n` matchers of one request: compiled once, copied for the other samples."""
        ll = _llguidance()
        first = ll.LLMatcher(self._tokenizer, constraint.grammar, log_level=0)
        if first.is_error():
            raise ConstraintError(f"the {constraint.kind}: {_one_line(first.get_error())}")
        matchers = [first] + [first.deep_copy() for _ in range(n - 1)]
        return [RowGrammar(m, self._scratch, self.end_token_ids) for m in matchers]


@lru_cache(maxsize=4)
def _ll_tokenizer(tokenizer: Any, vocab_size: int, end_token_ids: tuple[int, ...]) -> Any:
    """llguidance's view of a tokenizer (its token trie): built once per model (cached by
    the tokenizer object: its JSON alone takes ~0.1 s to write)."""
    ll = _llguidance()
    json_text = tokenizer.to_json()
    return ll.LLTokenizer(json_text, n_vocab=vocab_size, eos_token=list(end_token_ids))


class _Scratch:
    """The buffers a mask is computed in: the bitmask and its [V] bias."""

    def __init__(self, vocab_size: int) -> None:
        words = (vocab_size + 31) // 32
        self.bits = np.zeros(words, dtype=np.int32)
        self.bytes = self.bits.view(np.uint8)
        self.bias8 = np.empty((words * 4, 8), dtype=np.float32)
        self.bias = self.bias8.reshape(-1)[:vocab_size]


class RowGrammar:
    """One sequence's matcher: masks its logits and follows its tokens.

    `mask(row)` returns False when no token at all is allowed (a dead end: the matcher
    failed, or other processors removed every token the grammar allows).
    """

    def __init__(self, matcher: Any, scratch: _Scratch, end_token_ids: Sequence[int]) -> None:
        self._matcher = matcher
        self._end = list(end_token_ids)
        self._scratch = scratch

    @property
    def stopped(self) -> bool:
        """The text is complete: the grammar accepts it and no token may extend it."""
        return self._matcher.is_stopped()

    @property
    def error(self) -> str:
        return self._matcher.get_error()

    def mask(self, row: np.ndarray) -> bool:
        matcher = self._matcher
        if matcher.is_error():
            return False
        scratch = self._scratch
        matcher.unsafe_compute_mask_ptr(scratch.bits.ctypes.data, scratch.bits.nbytes)
        np.take(_BYTE_BIAS, scratch.bytes, axis=0, out=scratch.bias8)
        end_bias = 0.0 if matcher.is_accepting() else NEG_INF
        for end in self._end:  # EOS exactly when the grammar accepts
            scratch.bias[end] = end_bias
        row += scratch.bias
        return bool(row.max() > NEG_INF)

    def consume(self, token: int) -> bool:
        """Advance by the chosen token; False when the grammar refuses it."""
        return bool(self._matcher.consume_token(token))
