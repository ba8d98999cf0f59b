"""What a caller gives the runtime and what it gets back, defined once and exported by
`fst.runtime`: a prompt, a request (prompt + params) and a completion."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from fst.core.documents import Document
from fst.core.generation_params import GenerationParams


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation rendered by the model's chat template (fst.runtime.chat): tokenized as
    `apply_chat_template(..., tokenize=True)` and vLLM's chat API do, its special-token
    strings read as those tokens (a message's text too) and no BOS added, since the
    template writes its own when the model wants one."""

    text: str


# A string, a Document, a mapping {"body": ..., "meta": ...} (see fst.runtime.prompts) or a
# rendered conversation.
Prompt = Union[str, Document, Mapping[str, Any], ChatPrompt]


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
