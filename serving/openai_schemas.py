"""OpenAI-compatible request and response models for /v1/completions and /v1/models.

Same field names, defaults and shapes as OpenAI's legacy completions API, so its Python
client parses our answers. `top_k`, `repetition_penalty`, `min_tokens`, `ignore_eos` and
`meta` are extras, as in other open servers; so are `response_format` (OpenAI's chat
field, as vLLM takes it on completions), `guided_regex` and `guided_grammar` (vLLM's
names) for structured output (serving/structured.py). Unknown fields are ignored (as
OpenAI-style servers do), so tools that send more than we use keep working. Types are
strict, as OpenAI's: `"max_tokens": "4"`, `true` for a number or `"yes"` for a boolean is
a 400.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fst.core.generation_params import (
    MAX_REPETITION_PENALTY,
    MAX_TEMPERATURE,
    MIN_REPETITION_PENALTY,
    MIN_TEMPERATURE,
)


class StreamOptions(BaseModel):
    include_usage: bool = Field(
        False, description="Send a last chunk with `usage` (and empty `choices`) before [DONE]."
    )


class JsonSchemaFormat(BaseModel):
    """OpenAI's `response_format.json_schema`."""

    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(description="A name for the schema (letters, digits, _ and -).")
    description: str | None = Field(None, description="What the output is for.")
    schema_: dict[str, Any] | bool = Field(
        True, alias="schema", description="The JSON Schema the output must validate against."
    )
    strict: bool | None = Field(
        None, description="Accepted for compatibility: the schema is always enforced."
    )


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: free text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"] = Field(
        description="'text': no constraint; 'json_object': any JSON object; 'json_schema': "
        "JSON valid against `json_schema.schema`."
    )
    json_schema: JsonSchemaFormat | None = Field(
        None, description="The schema, when type is 'json_schema'."
    )


class StructuredOutputFields(BaseModel):
    """The structured-output fields both generation routes take (at most one per request)."""

    response_format: ResponseFormat | None = Field(
        None, description="Constrain the output to JSON (an object, or one matching a schema)."
    )
    guided_regex: str | None = Field(
        None, description="Extra: the whole output matches this regular expression."
    )
    guided_grammar: str | None = Field(
        None,
        description="Extra: the output matches this grammar (Lark, with a `start` rule, or "
        "GBNF, with a `root` rule).",
    )


class GenerationFields(StructuredOutputFields):
    """The request fields both generation APIs take, declared once (OpenAI's, then the
    extras other open servers have)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = Field(
        None, description="The served model id (see GET /v1/models); optional."
    )
    temperature: float | None = Field(
        1.0,
        ge=0.0,
        le=MAX_TEMPERATURE,
        description=f"Sampling temperature: 0 means greedy, otherwise in "
        f"[{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}].",
    )
    top_p: float | None = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stream: bool | None = Field(False, description="Send server-sent events as text is made.")
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(
        None, description="Up to 8 strings; generation stops before the first one found."
    )
    seed: int | None = Field(
        None, ge=0, description="Seed for sampling: same seed, same request, same text."
    )
    user: str | None = Field(None, description="End-user id (accepted, not stored).")
    presence_penalty: float | None = Field(
        0.0, description="In [-2, 2]: subtracted once from every token already generated."
    )
    frequency_penalty: float | None = Field(
        0.0, description="In [-2, 2]: subtracted per occurrence of a token already generated."
    )
    logit_bias: dict[str, float] | None = Field(None, description="Not supported: must be empty.")
    # Extras beyond OpenAI's API.
    top_k: int | None = Field(0, ge=0, description="Extra: sample among the k best; 0 is off.")
    repetition_penalty: float | None = Field(
        1.0,
        ge=MIN_REPETITION_PENALTY,
        le=MAX_REPETITION_PENALTY,
        description="Extra: penalty for repeated tokens (CTRL-style); 1 is off.",
    )
    min_tokens: int | None = Field(0, ge=0, description="Extra: generate at least this many.")
    ignore_eos: bool | None = Field(
        False, description="Extra: do not stop at end-of-text (or a chat model's end-of-turn)."
    )


class CompletionRequest(GenerationFields):
    model_config = ConfigDict(  # extra="ignore", strict: GenerationFields'
        json_schema_extra={
            "examples": [
                {
                    "model": "my-model",
                    "prompt": "The meaning of life is",
                    "max_tokens": 32,
                    "temperature": 0.7,
                    "top_p": 0.95,
                    "n": 1,
                    "stop": ["\n\n"],
                    "seed": 1,
                    "stream": False,
                }
            ]
        },
    )

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="A prompt, a list of prompts answered together, token ids (a list of "
        "integers, taken as they are) or a list of token-id prompts. For a document-format "
        "model, a text prompt is the document body."
    )
    max_tokens: int | None = Field(
        16,
        ge=0,
        description="Most tokens to generate per choice; 0 (with `echo`) scores the prompt only.",
    )
    n: int | None = Field(1, ge=1, description="Choices to generate for each prompt.")
    echo: bool | None = Field(False, description="Put the prompt before the generated text.")
    logprobs: int | None = Field(
        None,
        ge=0,
        le=20,
        description="Return the log-probability of each token and of the `logprobs` most "
        "likely tokens at its position (with `echo`, the prompt's tokens too; the first has "
        "null). The model's own log-probabilities: log-softmax of the raw logits, before "
        "temperature, top-k, top-p and penalties. Prompt tokens need a bundle exported with "
        "`fst-export --logits all`.",
    )
    suffix: str | None = Field(None, description="Not supported: must be null.")
    best_of: int | None = Field(None, description="Not supported beyond best_of = n.")
    meta: str | None = Field(
        None, description="Extra: document meta, for document-format models only."
    )

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt_shape(cls, value: Any) -> Any:
        if isinstance(value, str) or (isinstance(value, list) and value and _one_kind(value)):
            return value
        raise ValueError(
            "must be a string, a non-empty list of strings, a list of token ids or a "
            "non-empty list of token-id lists"
        )


def _one_kind(prompts: list[Any]) -> bool:
    """All strings, all token ids, or all lists of token ids (no mixing, no bools)."""

    def is_ids(value: Any) -> bool:
        return isinstance(value, list) and all(_is_id(t) for t in value)

    return (
        all(isinstance(p, str) for p in prompts)
        or all(_is_id(p) for p in prompts)
        or all(is_ids(p) for p in prompts)
    )


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs object: one entry per token of the choice's text."""

    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="null for the first prompt token")
    top_logprobs: list[dict[str, float] | None] = Field(
        description="the most likely tokens at each position and the chosen one"
    )
    text_offset: list[int] = Field(description="where each token starts in `text`")


class CompletionChoice(BaseModel):
    text: str
    index: int = Field(description="prompt index × n + choice index")
    logprobs: CompletionLogprobs | None = Field(None, description="With `logprobs` only.")
    finish_reason: Literal["stop", "length", "grammar_dead_end"] | None = Field(
        description="'stop': end of text, a stop string, or the structured output complete; "
        "'length': max_tokens reached; 'grammar_dead_end': the structured-output constraint "
        "allowed no next token; null in stream chunks before the last."
    )


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(
        0, description="prompt tokens whose KV came from the prefix cache (not recomputed)"
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "fst"
    max_model_len: int | None = Field(
        None, description="Extra (as vLLM's): the model's context in tokens; null while loading."
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
