"""OpenAI-compatible request and response models for /v1/completions and /v1/models.

Same field names, defaults and shapes as OpenAI's legacy completions API, so its Python
client parses our answers. `top_k`, `repetition_penalty`, `min_tokens`, `ignore_eos` and
`meta` are extras, as in other open servers. Unknown fields are ignored (as OpenAI-style
servers do), so tools that send more than we use keep working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StreamOptions(BaseModel):
    include_usage: bool = Field(
        False, description="Send a last chunk with `usage` (and empty `choices`) before [DONE]."
    )


class CompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
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

    model: str | None = Field(
        None, description="The served model id (see GET /v1/models); optional."
    )
    prompt: str | list[str] = Field(
        description="A prompt, or a list of prompts answered together (token-id prompts are "
        "not supported). For a document-format model, the prompt is the document body."
    )
    max_tokens: int | None = Field(16, ge=1, description="Most tokens to generate per choice.")
    temperature: float | None = Field(
        1.0, ge=0.0, description="Sampling temperature; 0 means greedy."
    )
    top_p: float | None = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    n: int | None = Field(1, ge=1, description="Choices to generate for each prompt.")
    stream: bool | None = Field(False, description="Send server-sent events as text is made.")
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(
        None, description="Up to 8 strings; generation stops before the first one found."
    )
    seed: int | None = Field(
        None, ge=0, description="Seed for sampling: same seed, same request, same text."
    )
    echo: bool | None = Field(False, description="Put the prompt before the generated text.")
    user: str | None = Field(None, description="End-user id (accepted, not stored).")
    logprobs: int | None = Field(None, description="Not supported: must be null.")
    suffix: str | None = Field(None, description="Not supported: must be null.")
    best_of: int | None = Field(None, description="Not supported beyond best_of = n.")
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
        1.0, gt=0.0, description="Extra: penalty for repeated tokens (CTRL-style); 1 is off."
    )
    min_tokens: int | None = Field(0, ge=0, description="Extra: generate at least this many.")
    ignore_eos: bool | None = Field(False, description="Extra: do not stop at end-of-text.")
    meta: str | None = Field(
        None, description="Extra: document meta, for document-format models only."
    )

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompts_only(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
            return value
        raise ValueError(
            "must be a string or a non-empty list of strings (token-id prompts are not supported)"
        )


class CompletionChoice(BaseModel):
    text: str
    index: int = Field(description="prompt index × n + choice index")
    logprobs: None = Field(None, description="Always null: log-probabilities are not returned.")
    finish_reason: Literal["stop", "length"] | None = Field(
        description="'stop': end of text or a stop string; 'length': max_tokens reached; "
        "null in stream chunks before the last."
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


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
