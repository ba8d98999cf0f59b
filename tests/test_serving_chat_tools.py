"""Tool calls and structured output on /v1/chat/completions, through the official openai
client, on a real tiny ChatML bundle (random weights: every valid answer is the
constraint's doing).

The bundle's template here reads `tools` (names only, to fit the tiny model's 128
positions); templates that ignore tools get the generic prompt (tests/test_tools.py).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest
from fastapi.testclient import TestClient

from fst.core.bundle import check_bundle
from fst.core.chat_template import CHATML_TEMPLATE
from fst.serving.app import create_app
from fst.serving.settings import ServingSettings

pytestmark = pytest.mark.timeout(180)

TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t.function.name }}"
    "{% endfor %}<|im_end|>\n{% endif %}" + CHATML_TEMPLATE
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
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
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["a"],
            "additionalProperties": False,
        },
    },
}
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}
ASK = [{"role": "user", "content": "Weather?"}]


@pytest.fixture(scope="module")
def bundle(tiny_chatml_bundle: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tools_bundle") / "bundle"
    shutil.copytree(tiny_chatml_bundle, folder)
    manifest = check_bundle(folder)
    assert manifest.chat is not None
    chat = manifest.chat.model_copy(update={"template": TOOLS_TEMPLATE})
    manifest.model_copy(update={"chat": chat}).save(folder)
    return folder


@pytest.fixture(scope="module")
def client(bundle: Path) -> Iterator[TestClient]:
    app = create_app(ServingSettings(bundle=bundle, threads=1, model_name="tiny"))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield client


@pytest.fixture(scope="module")
def api(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_required_and_named_tool_calls_parse_into_tool_calls(api: openai.OpenAI, choice) -> None:
    answer = api.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER, ADD], tool_choice=choice, n=6, seed=1,
        temperature=1.0, max_completion_tokens=60, parallel_tool_calls=False,
    )  # fmt: skip
    for c in answer.choices:
        assert c.finish_reason == "tool_calls", c
        assert c.message.content is None
        (call,) = c.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        if isinstance(choice, dict):
            assert call.function.name == "add"
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, PARAMETERS[call.function.name])


def test_streamed_tool_calls_agree_with_the_whole_answer(api: openai.OpenAI) -> None:
    request = dict(
        model="tiny", messages=ASK, tools=[WEATHER, ADD], tool_choice="required", n=2, seed=4,
        temperature=1.0, max_completion_tokens=60, parallel_tool_calls=False,
    )  # fmt: skip
    whole = api.chat.completions.create(**request)
    calls: dict[int, dict] = {}
    finish = {}
    for chunk in api.chat.completions.create(**request, stream=True):
        for c in chunk.choices:
            for delta in c.delta.tool_calls or []:
                calls[c.index] = {"name": delta.function.name, "args": delta.function.arguments}
                assert delta.id.startswith("call_")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    for c in whole.choices:
        (call,) = c.message.tool_calls
        assert calls[c.index] == {"name": call.function.name, "args": call.function.arguments}
        assert finish[c.index] == c.finish_reason == "tool_calls"


def test_tool_results_go_back_through_the_template(api: openai.OpenAI) -> None:
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "add", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    ]  # fmt: skip
    answer = api.chat.completions.create(
        model="tiny", messages=messages, tools=[ADD], tool_choice="none", seed=1,
        max_completion_tokens=5,
    )  # fmt: skip
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].finish_reason in {"stop", "length"}


def test_chat_response_format_json_schema(api: openai.OpenAI) -> None:
    schema = PARAMETERS["get_weather"]
    answer = api.chat.completions.create(
        model="tiny", messages=ASK, n=4, seed=2, temperature=1.0, max_completion_tokens=60,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "weather", "schema": schema, "strict": True}},
    )  # fmt: skip
    for c in answer.choices:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.message.content), schema)


def test_tool_choice_and_response_format_together_are_a_400(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"messages": ASK, "tools": [ADD], "tool_choice": "required",
              "response_format": {"type": "json_object"}},
    )  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"


# ---- the real model (slow) ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_smollm2_calls_the_weather_tool_for_paris(smollm2_bundle) -> None:
    """SmolLM2's template ignores tools: the generic prompt describes them, and the named
    function's constraint makes the call parse; the model fills in the city."""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 40}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    settings = ServingSettings(bundle=smollm2_bundle("fp32"), model_name="smollm2")
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 600
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        api = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client)
        answer = api.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "What is the weather like in Paris?"}],
            tools=[weather], tool_choice="required", temperature=0, max_completion_tokens=60,
        )  # fmt: skip
    (choice,) = answer.choices
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert "Paris" in json.loads(call.function.arguments)["city"], call
