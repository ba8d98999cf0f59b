"""Tool calling for /v1/chat/completions: OpenAI's `tools` and `tool_choice`.

The model writes its calls in the Hermes format many open models were trained on (SmolLM2
and Qwen among them)::

    <tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>

- Prompt: a template that reads `tools` gets them (`ChatTemplate.render(tools=...)`); for
  one that ignores them (SmolLM2's), `TOOL_PROMPT` describes the tools and that format in
  the system message (appended to the conversation's own, or a new first message).
- `tool_choice`: "none" offers no tools; "auto" lets the model choose between text and
  calls; "required" and a named function constrain the output (runtime/constraints.py)
  to that format with each function's `parameters` schema, so the arguments always parse.
- Output: `parse_tool_calls` turns the text into OpenAI's `tool_calls` (id, type,
  function.name, function.arguments as a JSON string); `ToolStream` holds back streamed
  text from the moment a call may begin, so streamed and whole answers agree.
- History: `role: "tool"` results go to the template as they are (as transformers passes
  them); an assistant message's `tool_calls` is written back as the call text above for
  templates that know nothing of tools (it would vanish from the prompt otherwise).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fst.runtime.constraints import JSON_OPTIONS, Constraint, ConstraintError
from fst.serving.errors import APIError

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
TOOL_PROMPT = (
    "You may call functions to answer. The functions, as JSON schemas:\n<tools>\n{tools}\n"
    "</tools>\nTo call one or more of them, answer with only: "
    f'{CALL_OPEN}[{{"name": "function name", "arguments": {{...}}}}]{CALL_CLOSE}\n'
    "If no function is needed, answer normally."
)


# ---- OpenAI's shapes ------------------------------------------------------------------------


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="The arguments' JSON Schema.",
    )
    strict: bool | None = Field(None, description="Accepted: the schema is always enforced.")


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as a JSON string.")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


# ---- the request side ---------------------------------------------------------------------


@dataclass(frozen=True)
class ToolPlan:
    """What a request's `tools` + `tool_choice` mean for its prompt and output."""

    tools: list[ToolDefinition]  # offered to the model (none for "none")
    constraint: Constraint | None  # "required" / named: the calls' grammar

    @property
    def active(self) -> bool:
        return bool(self.tools)


def plan_tools(
    tools: Sequence[ToolDefinition] | None,
    tool_choice: ToolChoice | None,
    parallel: bool = True,
) -> ToolPlan:
    """The plan for a request; APIError 400 naming `tools` / `tool_choice` when they do not
    fit together or a function's `parameters` does not compile. `parallel` (OpenAI's
    `parallel_tool_calls`): False allows one call per answer."""
    tools = list(tools or [])
    choice = tool_choice if tool_choice is not None else ("auto" if tools else "none")
    if choice == "none":
        return ToolPlan([], None)
    if not tools:
        raise APIError(400, "tool_choice: needs `tools` to choose from", param="tool_choice")
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise APIError(400, "tools: function names must be unique", param="tools")
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise APIError(
                400,
                f"tool_choice: no function named {choice.function.name!r} in tools",
                param="tool_choice",
            )
        called = [t for t in tools if t.function.name == choice.function.name]
    else:
        called = tools
    constraint = _checked_constraint(called, parallel)
    return ToolPlan(tools, None if choice == "auto" else constraint)


def _checked_constraint(tools: Sequence[ToolDefinition], parallel: bool) -> Constraint:
    for i, tool in enumerate(tools):
        try:
            Constraint.json_schema(tool.function.parameters)
        except ConstraintError as exc:
            param = f"tools[{i}].function.parameters"
            raise APIError(400, f"{param}: {exc}", param=param) from None
    return Constraint.grammar_text(calls_grammar(tools, parallel))


def calls_grammar(tools: Sequence[ToolDefinition], parallel: bool = True) -> str:
    """Lark: the call tags around a non-empty JSON list of calls of `tools` (one call
    unless `parallel`)."""
    call_schemas = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool.function.name},
                "arguments": tool.function.parameters,
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    schema: dict[str, Any] = {"x-guidance": JSON_OPTIONS, "type": "array", "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    schema["items"] = {"anyOf": call_schemas}
    return (
        f"start: {json.dumps(CALL_OPEN)} calls {json.dumps(CALL_CLOSE)}\n"
        f"calls: %json {json.dumps(schema)}\n"
    )


def template_reads_tools(template_source: str) -> bool:
    """Whether a chat template renders `tools` itself (else the generic prompt is used)."""
    return "tools" in template_source


def tool_messages(
    messages: Sequence[Mapping[str, Any]], plan: ToolPlan, template_source: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The conversation and `tools` to render: as given to a template that handles tools;
    otherwise earlier calls as text and the tools in the system message."""
    tools = [t.model_dump(exclude_none=True) for t in plan.tools] or None
    if template_reads_tools(template_source):
        return [dict(m) for m in messages], tools
    out = [_as_text(m) for m in messages]
    if tools:
        listing = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
        prompt = TOOL_PROMPT.replace("{tools}", listing)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out, None


def _as_text(message: Mapping[str, Any]) -> dict[str, Any]:
    role, content = message["role"], message.get("content") or ""
    calls = message.get("tool_calls")
    if role == "assistant" and calls:
        listed = [
            {"name": c["function"]["name"], "arguments": _loads(c["function"]["arguments"])}
            for c in calls
        ]
        text = f"{CALL_OPEN}{json.dumps(listed, ensure_ascii=False)}{CALL_CLOSE}"
        content = f"{content}\n{text}" if content else text
    return {"role": role, "content": content}


def _loads(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


# ---- the answer side ------------------------------------------------------------------------


def parse_tool_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a generated answer: the text before the first call tag (trailing
    whitespace dropped; None if empty) and the calls in it; no calls (the whole text as content) when there is no tag
    or what follows it is not a list of {"name", "arguments"} objects."""
    start = text.find(CALL_OPEN)
    if start < 0:
        return text, []
    body = text[start + len(CALL_OPEN) :]
    end = body.find(CALL_CLOSE)
    body = body[:end] if end >= 0 else body
    try:
        parsed = json.loads(body)
    except ValueError:
        return text, []
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for item in items:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and isinstance(item.get("arguments", {}), dict)
        ):
            return text, []
        arguments = json.dumps(item.get("arguments", {}), ensure_ascii=False)
        function = FunctionCall(name=item["name"], arguments=arguments)
        calls.append(ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=function))
    return text[:start].rstrip() or None, calls


class ToolStream:
    """Streamed text of one choice while tools are offered: passes text through until a
    call tag may begin, then holds everything back for `parse_tool_calls` at the end."""

    def __init__(self) -> None:
        self._text = ""
        self._sent = 0

    def push(self, piece: str) -> str:
        """The part of the text so far that can be sent as content now."""
        self._text += piece
        start = self._text.find(CALL_OPEN)
        end = start if start >= 0 else len(self._text) - _partial_tag(self._text)
        safe = len(self._text[:end].rstrip())  # trailing whitespace waits: it may end content
        if safe <= self._sent:
            return ""
        out, self._sent = self._text[self._sent : safe], safe
        return out

    def finish(self, text: str) -> tuple[str, list[ToolCall]]:
        """Content not sent yet and the calls, once the choice's whole `text` is known."""
        content, calls = parse_tool_calls(text)
        if not calls:
            return text[self._sent :], []
        return (content or "")[self._sent :], calls


def _partial_tag(text: str) -> int:
    """How many of text's last characters could be the start of CALL_OPEN."""
    for size in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if CALL_OPEN.startswith(text[-size:]):
            return size
    return 0
