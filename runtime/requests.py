"""What a caller gives the runtime and what it gets back, defined once and exported by
`fst.runtime`: a prompt, a request (prompt + params) and a completion."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from fst.core.documents import Document
from fst.core.generation_params import GenerationParams

# A string, a Document, or a mapping {"body": ..., "meta": ...} (see fst.runtime.prompts).
Prompt = Union[str, Document, Mapping[str, Any]]


@dataclass
class GenerationRequest:
    prompt: Prompt
    params: GenerationParams


@dataclass
class Completion:
    prompt: Prompt
    text: str
    token_ids: list[int]  # generated ids only
    finish_reason: str  # "stop" (EOS or a stop string) | "length" | "cancelled"
    prompt_tokens: int
    index: int  # which of this prompt's samples
    # Prompt tokens whose KV came from the prefix cache (not prefilled): OpenAI's
    # usage.prompt_tokens_details.cached_tokens.
    cached_tokens: int = 0
