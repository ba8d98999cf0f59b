"""Tool calling (serving/tools.py): plans, the calls' grammar on a random model, parsing,
streaming, and the conversation a template without tool support receives.

Reference: `jsonschema` for every constrained call's arguments, `parse_tool_calls` on the
whole text for what the stream sends piece by piece.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest

from fst.core.chat_template import CHATML_TEMPLATE
from fst.core.generation_params import GenerationParams
from fst.runtime import GenerationRequest, Generator
from fst.serving.errors import APIError
from fst.serving.tools import (
    CALL_OPEN,
    NamedToolChoice,
    ToolDefinition,
    ToolStream,
    parse_tool_calls,
    plan_tools,
    tool_messages,
)

pytestmark = pytest.mark.timeout(180)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                           "b": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}  # fmt: skip
TOOLS = [ToolDefinition.model_validate(t) for t in (WEATHER, ADD)]
SCHEMAS = {t.function.name: t.function.parameters for t in TOOLS}


def test_plans_follow_tool_choice() -> None:
    assert not plan_tools(TOOLS, "none").active
    assert not plan_tools(None, None).active
    auto = plan_tools(TOOLS, None)
    assert auto.active and auto.constraint is None
    required = plan_tools(TOOLS, "required")
    assert required.constraint is not None and required.constraint.kind == "grammar"
    named = plan_tools(TOOLS, NamedToolChoice.model_validate({"function": {"name": "add"}}))
    assert named.constraint is not None and named.tools == TOOLS


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        (TOOLS, NamedToolChoice.model_validate({"function": {"name": "nope"}}), "tool_choice"),
        (None, "required", "tool_choice"),
        ([TOOLS[0], TOOLS[0]], "auto", "tools"),
        ([ToolDefinition.model_validate({"function": {"name": "f", "parameters": {"not": {}}}})],
         "auto", "tools[0].function.parameters"),
    ],
)  # fmt: skip
def test_bad_tool_requests_are_400s_naming_the_field(tools, choice, param) -> None:
    with pytest.raises(APIError) as info:
        plan_tools(tools, choice)
    assert info.value.status == 400 and info.value.param == param


@pytest.fixture(scope="module")
def generator(tiny_plain_bundle: Path) -> Generator:
    return Generator.from_bundle(tiny_plain_bundle, threads=1)


@pytest.mark.parametrize("named", [None, "add"])
def test_constrained_calls_always_parse_and_validate(generator: Generator, named) -> None:
    choice = NamedToolChoice.model_validate({"function": {"name": named}}) if named else "required"
    plan = plan_tools(TOOLS, choice, parallel=False)  # a random model would add calls forever
    params = GenerationParams(max_new_tokens=110, num_return_sequences=12, seed=3,
                              temperature=1.0, top_k=0)  # fmt: skip
    (completions,) = generator.run([GenerationRequest("Call:", params, constraint=plan.constraint)])
    for c in completions:
        assert c.finish_reason == "stop", c
        content, calls = parse_tool_calls(c.text)
        assert content is None and len(calls) == 1, c.text
        for call in calls:
            assert call.function.name in ({named} if named else set(SCHEMAS))
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_parse_tool_calls() -> None:
    text = 'Let me check.\n<tool_call>[{"name": "add", "arguments": {"a": 1, "b": 2}}]</tool_call>'
    content, (call,) = parse_tool_calls(text)
    assert content == "Let me check."
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 1, "b": 2}
    assert call.id.startswith("call_") and call.type == "function"
    one = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}</tool_call>')
    assert one[0] is None and one[1][0].function.arguments == "{}"
    for plain in ["no call here", "<tool_call>not json</tool_call>", '<tool_call>[{"x": 1}]']:
        assert parse_tool_calls(plain) == (plain, [])


@pytest.mark.parametrize(
    "text",
    [
        "Plain answer, no tools.",
        'Sure. <tool_call>[{"name": "add", "arguments": {"a": 1, "b": 2}}]</tool_call>',
        '<tool_call>[{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}]',
        "Angle < brackets <tool but no call",
        "ends with a partial <tool_ca",
    ],
)
def test_streamed_pieces_agree_with_the_whole_answer(text: str) -> None:
    rng = random.Random(0)
    for _ in range(20):
        stream, sent = ToolStream(), ""
        i = 0
        while i < len(text):
            j = min(len(text), i + rng.randint(1, 6))
            sent += stream.push(text[i:j])
            i = j
        rest, calls = stream.finish(text)
        content, expected = parse_tool_calls(text)
        assert sent + rest == (content or "")
        assert [c.function for c in calls] == [c.function for c in expected]
        if not expected:
            assert CALL_OPEN not in sent or sent + rest == text


def test_a_template_without_tools_gets_them_in_the_system_message() -> None:
    plan = plan_tools(TOOLS, "auto")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'},
    ]  # fmt: skip
    rendered, tools = tool_messages(messages, plan, CHATML_TEMPLATE)
    assert tools is None
    assert (
        rendered[0]["content"].startswith("Be brief.\n\n")
        and "get_weather" in rendered[0]["content"]
    )
    assert rendered[2] == {
        "role": "assistant",
        "content": '<tool_call>[{"name": "get_weather", "arguments": {"city": "Oslo"}}]</tool_call>',
    }
    assert rendered[3] == {"role": "tool", "content": '{"temp": 3}'}  # as given
    reads_tools = "{% if tools %}{{ tools | tojson }}{% endif %}" + CHATML_TEMPLATE
    same, passed = tool_messages(messages, plan, reads_tools)
    assert same == messages and [t["function"]["name"] for t in passed] == ["get_weather", "add"]
    none_plan = plan_tools(TOOLS, "none")
    assert tool_messages(messages[:2], none_plan, CHATML_TEMPLATE) == (messages[:2], None)
