"""OpenAI-compatible request and response models for /v1/chat/completions.

Same field names, defaults and shapes as OpenAI's chat completions API, so its Python client
parses our answers. Messages are text: a string, or a list of text parts, which are joined
with newlines before the chat template sees them (as vLLM does for string templates).
`top_k`, `repetition_penalty`, `min_tokens` and `ignore_eos` are extras, as in
/v1/completions. Unknown fields are ignored (as OpenAI-style servers do).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fst.serving.openai_schemas import StreamOptions, Usage


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"] = Field(
        description="Who wrote it; tool messages are not supported."
    )
    content: str | list[TextPart] = Field(
        description="The text, or a list of text parts (joined with newlines)."
    )
    name: str | None = Field(None, description="Accepted, not passed to the template.")

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        """One clear message instead of pydantic's one per member of the union."""
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in value
        ):
            return value
        raise ValueError(
            "must be a string or a list of text parts {'type': 'text', 'text': ...} "
            "(images, audio and files are not supported)"
        )

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": "my-model",
                    "messages": [
                        {"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": "What is the capital of France?"},
                    ],
                    "max_completion_tokens": 64,
                    "temperature": 0.7,
                    "stream": False,
                }
            ]
        },
    )

    model: str | None = Field(
        None, description="The served model id (see GET /v1/models); optional."
    )
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(
        None,
        ge=1,
        description="Most tokens to generate per choice; default: what the context has left "
        "(at most the server's limit).",
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Deprecated name of max_completion_tokens (used if that is unset)."
    )
    temperature: float | None = Field(
        1.0, ge=0.0, description="Sampling temperature; 0 means greedy."
    )
    top_p: float | None = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    n: int | None = Field(1, ge=1, description="Choices to generate.")
    stream: bool | None = Field(False, description="Send server-sent events as text is made.")
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(
        None, description="Up to 8 strings; generation stops before the first one found."
    )
    seed: int | None = Field(
        None, ge=0, description="Seed for sampling: same seed, same request, same text."
    )
    presence_penalty: float | None = Field(
        0.0, description="In [-2, 2]: subtracted once from every token already generated."
    )
    frequency_penalty: float | None = Field(
        0.0, description="In [-2, 2]: subtracted per occurrence of a token already generated."
    )
    user: str | None = Field(None, description="End-user id (accepted, not stored).")
    logprobs: bool | None = Field(None, description="Not supported: must be false or null.")
    top_logprobs: int | None = Field(None, description="Not supported: must be null.")
    logit_bias: dict[str, float] | None = Field(None, description="Not supported: must be empty.")
    tools: list[Any] | None = Field(None, description="Not supported: must be null.")
    response_format: dict[str, Any] | None = Field(
        None, description="Only {'type': 'text'} is supported."
    )
    # Extras beyond OpenAI's API.
    top_k: int | None = Field(0, ge=0, description="Extra: sample among the k best; 0 is off.")
    repetition_penalty: float | None = Field(
        1.0, gt=0.0, description="Extra: penalty for repeated tokens (CTRL-style); 1 is off."
    )
    min_tokens: int | None = Field(0, ge=0, description="Extra: generate at least this many.")
    ignore_eos: bool | None = Field(
        False, description="Extra: do not stop at end-of-text or end-of-turn tokens."
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = Field(None, description="Always null: log-probabilities are not returned.")
    finish_reason: Literal["stop", "length"] = Field(
        description="'stop': end of turn or a stop string; 'length': the token limit reached."
    )


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
