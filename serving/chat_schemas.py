"""OpenAI-compatible request and response models for /v1/chat/completions.

Same field names, defaults and shapes as OpenAI's chat completions API, so its Python client
parses our answers. Messages are text: a string, or a list of text parts, which are joined
with newlines before the chat template sees them (as vLLM does for string templates).
`top_k`, `repetition_penalty`, `min_tokens` and `ignore_eos` are extras, as in
/v1/completions. Unknown fields are ignored (as OpenAI-style servers do). Types are strict,
as OpenAI's: `"max_tokens": "4"`, `true` for a number or `"yes"` for a boolean is a 400.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

from fst.runtime.logprobs import MAX_TOP_LOGPROBS
from fst.serving.openai_schemas import GenerationFields, Usage
from fst.serving.tools import ToolCall, ToolChoice, ToolDefinition


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"] = Field(
        description="Who wrote it; 'tool': a function's result, answering `tool_call_id`."
    )
    content: str | list[TextPart] | None = Field(
        None, description="The text, or a list of text parts (joined with newlines)."
    )
    name: str | None = Field(None, description="Accepted, not passed to the template.")
    tool_calls: list[ToolCall] | None = Field(
        None, description="An assistant's function calls (as a previous answer gave them)."
    )
    tool_call_id: str | None = Field(None, description="The call a tool message answers.")

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        """One clear message instead of pydantic's one per member of the union."""
        if value is None or isinstance(value, str):
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
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(part.text for part in self.content)

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates (and transformers) take it."""
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class ChatCompletionRequest(GenerationFields):
    model_config = ConfigDict(  # extra="ignore", strict: GenerationFields'
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
    n: int | None = Field(1, ge=1, description="Choices to generate.")
    logprobs: bool | None = Field(
        None,
        description="Return each generated token's log-probability: the model's own "
        "(log-softmax of the raw logits, before temperature, top-k, top-p and penalties, "
        "as vLLM does). Streamed answers carry them in each choice's last chunk.",
    )
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="With logprobs: also this many most likely tokens at each position.",
    )
    tools: list[ToolDefinition] | None = Field(
        None, description="Functions the model may call (serving/tools.py)."
    )
    tool_choice: ToolChoice | None = Field(
        None,
        description="'none', 'auto' (default with tools), 'required', or "
        "{'type': 'function', 'function': {'name': ...}}; the last two constrain the output "
        "to calls whose arguments match the function's parameters.",
    )
    parallel_tool_calls: bool | None = Field(
        True, description="Allow several calls in one answer (false: at most one)."
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _calls_only_when_made(self, handler: Any) -> dict[str, Any]:
        """As OpenAI answers: `tool_calls` appears only on a message that makes calls."""
        data = handler(self)
        if data.get("tool_calls") is None:
            data.pop("tool_calls", None)
        return data


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = Field(description="the token's UTF-8 bytes")


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobEntry] | None = Field(
        description="one entry per generated token, in order"
    )


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = Field(
        None, description="With `logprobs: true`: the generated tokens' log-probabilities."
    )
    finish_reason: Literal["stop", "length", "tool_calls", "grammar_dead_end"] = Field(
        description="'stop': end of turn, a stop string, or the structured output complete; "
        "'length': the token limit reached; 'tool_calls': the answer calls functions; "
        "'grammar_dead_end': the output constraint allowed no next token."
    )


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
