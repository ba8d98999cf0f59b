"""Sampling values the server cannot compute with, and loosely typed fields, are refused
naming the field, on /v1/completions and /v1/chat/completions (OpenAI-shaped 400) and the
original API (422), and the schema states the accepted ranges."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serving_fakes import FakeGenerator

from fst.core.bundle import ChatInfo
from fst.core.chat_template import CHATML_TEMPLATE
from fst.core.generation_params import MAX_TEMPERATURE, MIN_REPETITION_PENALTY
from fst.serving.app import create_app
from fst.serving.settings import ServingSettings

EXTREME = [
    ("temperature", 1e-300),  # 0 in float32: logits / 0
    ("temperature", 1e-45),  # subnormal in float32
    ("temperature", 1e39),  # inf in float32
    ("repetition_penalty", 1e-300),  # 0 in float32: a division by zero
    ("repetition_penalty", 1e39),
]
LOOSE = [
    ("max_tokens", "4"),
    ("max_tokens", True),
    ("max_tokens", 4.5),
    ("stream", "yes"),
    ("stream", 1),
    ("n", "2"),
    ("temperature", "0.5"),
    ("seed", "1"),
    ("top_k", False),
]


@contextlib.contextmanager
def serve() -> Iterator[TestClient]:
    chat = ChatInfo(template=CHATML_TEMPLATE, template_source="test", stop_token_ids=[1])
    app = create_app(ServingSettings(), generator=FakeGenerator(chat=chat))
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield client


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with serve() as client:
        yield client


@pytest.mark.parametrize(("field", "value"), EXTREME + LOOSE)
def test_completions_refuse_naming_the_field(client: TestClient, field: str, value: Any) -> None:
    body = {"prompt": "Hello", "max_tokens": 4, "min_tokens": 2, field: value}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
    assert field in r.json()["error"]["message"]


@pytest.mark.parametrize(("field", "value"), EXTREME + LOOSE)
def test_chat_completions_refuse_naming_the_field(
    client: TestClient, field: str, value: Any
) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    body = {"messages": messages, "max_tokens": 4, "min_tokens": 2, field: value}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
    assert field in r.json()["error"]["message"]


ORIGINAL = {"max_tokens": "max_number_of_generated_tokens", "n": "num_return_sequences"}


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, v) for f, v in EXTREME + LOOSE if f not in ("stream", "seed")],
)
def test_original_api_refuses_naming_the_field(client: TestClient, field: str, value: Any) -> None:
    field = ORIGINAL.get(field, field)
    r = client.post("/generated_texts/", json={"body": "Hello", field: value})
    assert r.status_code in (400, 422), r.text
    detail = r.json()["detail"]
    where = detail if isinstance(detail, str) else [e["loc"] for e in detail]
    assert field in str(where)


def test_a_batch_with_extreme_requests_still_serves_the_others(client: TestClient) -> None:
    good = {"prompt": "Hello", "max_tokens": 4, "temperature": 1e-4, "repetition_penalty": 1e4}
    assert client.post("/v1/completions", json=good).status_code == 200
    ints = {"prompt": "Hello", "max_tokens": 4, "temperature": 1, "top_p": 1}
    assert client.post("/v1/completions", json=ints).status_code == 200


def test_the_schema_states_the_ranges(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    props = schema["CompletionRequest"]["properties"]
    temperature = props["temperature"]["anyOf"][0]
    assert temperature["maximum"] == MAX_TEMPERATURE and temperature["minimum"] == 0
    assert "0 means greedy" in props["temperature"]["description"]
    penalty = props["repetition_penalty"]["anyOf"][0]
    assert penalty["minimum"] == MIN_REPETITION_PENALTY
    original = schema["GeneratedTextsRequest"]["properties"]
    assert original["temperature"]["maximum"] == MAX_TEMPERATURE
