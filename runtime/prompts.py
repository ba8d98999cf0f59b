"""Prompts to token ids, as the model saw documents in training, and what a model can take.

`BatchLimits` is what bounds a sequence (the model's positions, the token that ends it);
`PromptEncoder` turns a prompt into ids and refuses, with a ValueError that says why, a
prompt that is not text, a meta for a plain language model, or a request whose prompt and
`max_new_tokens` do not fit the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fst.core.documents import Document
from fst.core.generation_params import GenerationParams
from fst.core.tokenization import DocumentTokenizer
from fst.runtime.requests import ChatPrompt, GenerationRequest, Prompt


@dataclass(frozen=True)
class BatchLimits:
    """What bounds a sequence: prompt + new tokens within `max_positions`; a row ends at
    `eos_token_id` (None: the model has no EOS) or any of `stop_token_ids` (a chat model's
    end-of-turn tokens) unless its params ignore them."""

    max_positions: int
    eos_token_id: int | None
    stop_token_ids: tuple[int, ...] = ()

    @property
    def end_token_ids(self) -> tuple[int, ...]:
        """Every token that ends a row: the EOS first, then the other stop tokens."""
        ids = () if self.eos_token_id is None else (self.eos_token_id,)
        return ids + tuple(t for t in self.stop_token_ids if t not in ids)


class PromptEncoder:
    """Prompt ids for one tokenizer and model; ValueError for what the model cannot take."""

    def __init__(self, tokenizer: DocumentTokenizer, max_positions: int) -> None:
        self.tokenizer = tokenizer
        self.max_positions = max_positions

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Prompt ids as the model saw documents in training; ValueError on a bad prompt.

        Token ids are taken as they are (evaluation harnesses tokenize themselves)."""
        if is_token_ids(prompt):
            return self._check_ids(prompt)
        if isinstance(prompt, ChatPrompt):
            _check_encodable(prompt.text)
            return self.tokenizer.encode_markup(prompt.text)
        document = self._as_document(prompt)
        texts = [document] if isinstance(document, str) else [document.body, document.meta or ""]
        for text in texts:
            _check_encodable(text)
        return self.tokenizer.encode_for_inference(document)

    def encode_request(self, request: GenerationRequest) -> list[int]:
        """Prompt ids of a request; ValueError if the model cannot take it (too long)."""
        if not isinstance(getattr(request, "params", None), GenerationParams):
            raise ValueError("params must be GenerationParams")
        ids = self.encode_prompt(request.prompt)
        if len(ids) + request.params.max_new_tokens > self.max_positions:
            raise ValueError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({request.params.max_new_tokens}) "
                f"exceeds the model's {self.max_positions} positions"
            )
        return ids

    def _check_ids(self, ids: Any) -> list[int]:
        vocab = self.tokenizer.vocab_size
        bad = next((t for t in ids if isinstance(t, bool) or not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"token id {bad!r} is not in the vocabulary [0, {vocab})")
        return [int(t) for t in ids]

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
            raise ValueError(
                f"a prompt is a string, a document or token ids, got {type(prompt).__name__}"
            )
        if not isinstance(prompt.body, str) or not isinstance(prompt.meta, (str, type(None))):
            raise ValueError("a document's body must be a string and its meta a string or null")
        if prompt.meta and not self.tokenizer.document_format:
            raise ValueError(
                "this bundle is a plain language model (not trained on documents): "
                "a prompt cannot have a meta"
            )
        return prompt


def is_token_ids(prompt: Any) -> bool:
    """A list (or tuple) of ints: a prompt already tokenized."""
    return isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt)


def _check_encodable(text: str) -> None:
    """ValueError for text that is not Unicode (a lone surrogate, e.g. from undecodable
    command-line bytes), which `tokenizers` would reject with a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"the prompt is not valid text: {text[e.start]!r} at character {e.start} "
            "(a lone surrogate or undecodable byte)"
        ) from None
