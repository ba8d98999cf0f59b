"""`POST /v1/chat/completions` and `/tokenize`: the HTTP contract on the fake generator
(TestClient), the official openai client on a live server, and a real tiny ChatML bundle
against transformers (apply_chat_template's ids, PyTorch greedy decoding)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from serving_fakes import FakeGenerator, fake_token, running_server

from fst.core.bundle import ChatInfo
from fst.core.chat_template import CHATML_TEMPLATE
from fst.runtime import ChatPrompt
from fst.serving.app import create_app
from fst.serving.settings import ServingSettings

pytestmark = pytest.mark.timeout(120)

CHATML = ChatInfo(template=CHATML_TEMPLATE, template_source="test", stop_token_ids=[1])
# A template that refuses a conversation whose roles do not alternate, as Llama 2's does.
STRICT = ChatInfo(
    template=(
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
        "[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    ),
    template_source="test",
)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "you"}]},
]
RENDERED = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi\nyou<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@contextlib.contextmanager
def serve(generator: Any | None = None, **settings: Any) -> Iterator[TestClient]:
    generator = generator if generator is not None else FakeGenerator(chat=CHATML)
    app = create_app(ServingSettings(model_name="tiny", **settings), generator=generator)
    with TestClient(app) as client:
        for _ in range(500):
            if client.get("/ready").status_code == 200:
                break
            import time

            time.sleep(0.02)
        yield client


def expected_text(prompt: str, index: int, tokens: int) -> str:
    ids = list(prompt.encode())
    return bytes(fake_token(ids, index, t) for t in range(tokens)).decode()


def sse_events(text: str) -> list[Any]:
    events = []
    for block in text.split("\n\n"):
        if block:
            assert block.startswith("data: ") and "\n" not in block, block
            payload = block[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_chat_renders_the_template_and_answers_as_the_assistant() -> None:
    fake = FakeGenerator(chat=CHATML)
    with serve(fake) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": MESSAGES, "max_completion_tokens": 5, "n": 2},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    request = fake.requests[-1]
    assert request.prompt == ChatPrompt(RENDERED)  # text parts joined with a newline
    assert request.params.max_new_tokens == 5 and request.params.num_return_sequences == 2
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        assert choice["message"] == {
            "role": "assistant",
            "content": expected_text(RENDERED, choice["index"], 5),
        }
        assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    prompt_tokens = len(RENDERED.encode())
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 10,
        "total_tokens": prompt_tokens + 10,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_token_limit_defaults_to_the_rest_of_the_context_and_takes_either_name() -> None:
    fake = FakeGenerator(chat=CHATML, max_positions=200)
    rendered = len(RENDERED.encode())
    with serve(fake, max_new_tokens_limit=100) as client:
        plain = client.post("/v1/chat/completions", json={"messages": MESSAGES})
        assert plain.status_code == 200, plain.text
        assert fake.requests[-1].params.max_new_tokens == min(100, 200 - rendered)
        client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3})
        assert fake.requests[-1].params.max_new_tokens == 3
        both = {"messages": MESSAGES, "max_tokens": 3, "max_completion_tokens": 4}
        client.post("/v1/chat/completions", json=both)
        assert fake.requests[-1].params.max_new_tokens == 4
        sampling = {
            "messages": MESSAGES,
            "max_tokens": 2,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 3,
            "stop": "x",
            "presence_penalty": 0.5,
            "frequency_penalty": -0.25,
        }
        client.post("/v1/chat/completions", json=sampling)
        params = fake.requests[-1].params
        assert (params.temperature, params.top_p, params.seed, params.stop) == (
            0.5,
            0.9,
            3,
            ("x",),
        )
        assert (params.presence_penalty, params.frequency_penalty, params.top_k) == (0.5, -0.25, 0)


def test_completions_accept_presence_and_frequency_penalties() -> None:
    fake = FakeGenerator()
    with serve(fake) as client:
        r = client.post(
            "/v1/completions",
            json={"prompt": "Hi", "max_tokens": 2, "presence_penalty": 1, "frequency_penalty": 2},
        )
    assert r.status_code == 200, r.text
    params = fake.requests[-1].params
    assert (params.presence_penalty, params.frequency_penalty) == (1.0, 2.0)


def test_stream_sends_role_then_content_then_finish_then_usage() -> None:
    with serve() as client:
        body = {"messages": MESSAGES, "max_tokens": 4, "n": 2}
        plain = client.post("/v1/chat/completions", json=body).json()
        r = client.post(
            "/v1/chat/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    for index in (0, 1):
        mine = [
            c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index
        ]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert all(c["finish_reason"] is None for c in mine[:-1])
        assert mine[-1] == {
            "index": index,
            "delta": {},
            "logprobs": None,
            "finish_reason": "length",
        }
        text = "".join(c["delta"].get("content", "") for c in mine)
        assert text == plain["choices"][index]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content",
        ),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 17}, "n"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_completion_tokens": 513}, "max_completion_tokens"),
        ({"max_tokens": 513}, "max_tokens"),
        ({"max_completion_tokens": 500}, "max_completion_tokens"),  # beyond the context
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"stop": ["a"] * 9}, "stop"),
        ({"seed": -1}, "seed"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"not": {}}}}]},
            "tools[0].function.parameters",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"min_tokens": 9, "max_tokens": 4}, "min_tokens"),
        ({"messages": [{"role": "user", "content": "x" * 600}]}, "messages"),  # fills the context
    ],
)
def test_chat_validation_errors_are_openai_shaped(body: dict[str, Any], param: str) -> None:
    with serve() as client:
        r = client.post("/v1/chat/completions", json={"messages": MESSAGES, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param.split(".")[0] in error["message"]


def test_a_model_without_a_chat_template_or_a_refused_conversation_is_a_400() -> None:
    with serve(FakeGenerator(document_format=True)) as client:
        r = client.post("/v1/chat/completions", json={"messages": MESSAGES})
        tokenized = client.post("/tokenize", json={"messages": MESSAGES})
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("model", "no_chat_template")
    assert "no chat template" in error["message"]
    assert tokenized.status_code == 400 and "no chat template" in tokenized.json()["detail"]
    with serve(FakeGenerator(chat=STRICT)) as client:
        refused = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        )
        fine = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "a"}], "max_tokens": 2},
        )
        unknown = client.post("/v1/chat/completions", json={"model": "x", "messages": MESSAGES})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "messages"
    assert error["message"].startswith("messages: the chat template refused the conversation")
    assert "alternate" in error["message"] and "\n" not in error["message"]
    assert fine.status_code == 200, fine.text
    assert unknown.status_code == 404


def test_models_list_the_context_and_tokenize_counts_the_prompt() -> None:
    with serve(FakeGenerator(chat=CHATML, max_positions=300)) as client:
        models = client.get("/v1/models").json()
        tokenized = client.post("/tokenize", json={"messages": MESSAGES}).json()
    assert models["data"][0]["max_model_len"] == 300
    assert tokenized == {
        "count": len(RENDERED.encode()),
        "max_model_len": 300,
        "tokens": list(RENDERED.encode()),
    }


def test_official_openai_client_chats_plain_and_streamed() -> None:
    app = create_app(
        ServingSettings(model_name="tiny", api_key="k3y"), generator=FakeGenerator(chat=CHATML)
    )
    with running_server(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="k3y", max_retries=0, timeout=20)
        messages: Any = MESSAGES
        answer = client.chat.completions.create(
            model="tiny", messages=messages, max_completion_tokens=6, seed=1
        )
        stream = client.chat.completions.create(
            model="tiny",
            messages=messages,
            max_completion_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(
                model="tiny", messages=messages, max_completion_tokens=6, presence_penalty=3
            )
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected_text(RENDERED, 0, 6)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 6
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.total_tokens == answer.usage.total_tokens
    )
    assert "presence_penalty" in bad.value.message


# -- a real bundle: ids as transformers renders them, answers as PyTorch decodes ---------------


def test_real_chatml_bundle_matches_transformers(
    tiny_chatml_bundle: Path, tiny_chatml_model_dir: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "How are you?"},
    ]
    hf_tokenizer = AutoTokenizer.from_pretrained(tiny_chatml_model_dir)
    ids = hf_tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tiny_chatml_model_dir).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=8,
            eos_token_id=[hf_tokenizer.convert_tokens_to_ids("<|im_end|>")],
            pad_token_id=0,
        )
    new = out[0, len(ids) :].tolist()
    expected = hf_tokenizer.decode(new, skip_special_tokens=True)

    settings = ServingSettings(bundle=tiny_chatml_bundle, threads=1, model_name="tiny")
    with running_server(create_app(settings), ready_timeout=60) as base:
        import httpx

        tokenized = httpx.post(f"{base}/tokenize", json={"messages": conversation}, timeout=30)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="-", max_retries=0, timeout=30)
        answer = client.chat.completions.create(
            model="tiny",
            messages=conversation,
            max_tokens=8,
            temperature=0,  # type: ignore[arg-type]
        )
    assert tokenized.json()["tokens"] == ids  # the template's text, no BOS added
    assert answer.usage is not None and answer.usage.prompt_tokens == len(ids)
    assert answer.usage.completion_tokens == len(new)
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason == ("length" if len(new) == 8 else "stop")


def test_chat_logprobs_are_the_models_log_softmax(
    tiny_chatml_bundle: Path, tiny_chatml_model_dir: Path
) -> None:
    """`logprobs` / `top_logprobs` in OpenAI's chat shape, through the openai client, equal
    PyTorch's log-softmax of the raw logits at each generated position; a streamed answer
    carries the same values in its last chunk."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    conversation = [{"role": "user", "content": "Hello there"}]
    hf_tokenizer = AutoTokenizer.from_pretrained(tiny_chatml_model_dir)
    ids = hf_tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    settings = ServingSettings(bundle=tiny_chatml_bundle, threads=1, model_name="tiny")
    with running_server(create_app(settings), ready_timeout=120) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="-", max_retries=0, timeout=60)
        ask = {"model": "tiny", "messages": conversation, "max_tokens": 6, "temperature": 0}
        answer = client.chat.completions.create(**ask, logprobs=True, top_logprobs=3)
        chunks = list(client.chat.completions.create(**ask, logprobs=True, stream=True))
    content = answer.choices[0].logprobs.content
    assert 1 <= len(content) <= 6
    model = AutoModelForCausalLM.from_pretrained(tiny_chatml_model_dir).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=len(content),
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    generated = out.sequences[0, len(ids) :].tolist()
    for step, entry in enumerate(content):
        expected = torch.log_softmax(out.logits[step][0].double(), -1)
        assert entry.token == hf_tokenizer.decode([generated[step]])
        assert entry.logprob == pytest.approx(float(expected[generated[step]]), abs=1e-4)
        assert entry.logprob == entry.top_logprobs[0].logprob  # greedy: the best one
        assert len(entry.top_logprobs) == 3 and bytes(entry.bytes).decode() == entry.token
    streamed = [c for c in chunks if c.choices and c.choices[0].logprobs is not None]
    assert len(streamed) == 1  # the choice's last chunk, with finish_reason
    assert [e.logprob for e in streamed[0].choices[0].logprobs.content] == [
        e.logprob for e in content
    ]


def test_chat_counts_the_rendered_prompt_against_the_prefill_budget() -> None:
    """Three conversations of ~130 rendered tokens wait together; with a 200-token prefill
    budget each joins the batch at its own step."""
    fake = FakeGenerator(chat=CHATML, step_s=0.01)
    with serve(fake, max_batch_size=3, batch_wait_ms=1000, max_prefill_tokens=200) as client:
        bodies = [
            {"messages": [{"role": "user", "content": str(i) * 100}], "max_tokens": 4}
            for i in range(3)
        ]
        threads = [
            threading.Thread(target=client.post, args=("/v1/chat/completions",), kwargs={"json": b})
            for b in bodies
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert fake.batches[1:] == [1, 1, 1]  # after the warm-up's run
