"""What a caller gives the runtime and what it gets back, defined once and exported by
`fst.runtime`: a prompt, a request (prompt + params) and a completion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from fst.core.documents import Document
from fst.core.generation_params import GenerationParams
from fst.runtime.constraints import Constraint
from fst.runtime.logprobs import TokenLogprob


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation rendered by the model's chat template (fst.runtime.chat): tokenized as
    `apply_chat_template(..., tokenize=True)` and vLLM's chat API do, its special-token
    strings read as those tokens (a message's text too) and no BOS added, since the
    template writes its own when the model wants one."""

    text: str


# A string, a Document, a mapping {"body": ..., "meta": ...} (see fst.runtime.prompts), a
# rendered conversation, or token ids (taken as they are).
Prompt = Union[str, Document, Mapping[str, Any], ChatPrompt, Sequence[int]]


@dataclass
class GenerationRequest:
    """A prompt, how to continue it, and which log-probabilities to report.

    `logprobs`: for each generated token its logprob and the `logprobs` most likely
    tokens; `prompt_logprobs`: the same for every prompt token (needs a bundle exported
    with `--logits all`). None: not reported (nothing is computed).
    """

    prompt: Prompt
    params: GenerationParams
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    constraint: Constraint | None = None  # structured output: what the text must match


@dataclass
class Completion:
    prompt: Prompt
    text: str
    token_ids: list[int]  # generated ids only
    # "stop" (EOS, a stop string, or the constraint's text complete) | "length" | "cancelled"
    # | "grammar_dead_end" (the constraint allowed no next token)
    finish_reason: str
    prompt_tokens: int
    index: int  # which of this prompt's samples
    logprobs: list[TokenLogprob] | None = None  # one per token_ids, when asked
    prompt_token_ids: list[int] | None = None  # with prompt_logprobs
    prompt_logprobs: list[TokenLogprob | None] | None = None  # first is None (no context)
    # Prompt tokens whose KV came from the prefix cache (not prefilled): OpenAI's
    # usage.prompt_tokens_details.cached_tokens.
    cached_tokens: int = 0
