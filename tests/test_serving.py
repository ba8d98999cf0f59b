"""fst-serve in-process: both APIs, streaming format, validation, auth, operations, CLI.

The app runs with FastAPI's TestClient (lifespan included) around `FakeGenerator`
(tests/serving_fakes.py), whose output is a known function of the prompt, so every text
is checked against the generator called directly. The fake has the runtime's step-level
API, so these tests run the default continuous batching (`serve` asserts which path ran);
`BOTH_PATHS` runs a test with request-level batching too. The real model is exercised in
test_serving_bundle.py, a real uvicorn in test_serving_live.py.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serving_fakes import FakeGenerator, fake_token

from fst import __version__
from fst.core.generation_params import ORIGINAL_API_DEFAULTS, GenerationParams
from fst.serving.app import create_app
from fst.serving.cli import main as serve_main
from fst.serving.settings import ServingSettings


def wait_ready(client: TestClient, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/ready").json()
        time.sleep(0.02)


@contextlib.contextmanager
def serve(generator: Any | None = None, **settings: Any) -> Iterator[TestClient]:
    """The app around `generator` (a step-level fake by default), ready; asserts the
    batching path the server chose."""
    generator = generator or FakeGenerator()
    app = create_app(ServingSettings(**settings), generator=generator)
    request_level = settings.get("batching") == "request"
    with TestClient(app) as client:
        wait_ready(client)
        assert app.state.serving.scheduler.mode == ("request" if request_level else "continuous")
        yield client


def expected_text(prompt_ids: list[int], seq_index: int, tokens: int) -> str:
    return bytes(fake_token(prompt_ids, seq_index, t) for t in range(tokens)).decode()


def sse_events(text: str) -> list[Any]:
    """Parse a server-sent-events body; every event must be a single `data:` line."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: ") and "\n" not in block, block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# -- the original API --------------------------------------------------------------------------
def test_original_api_defaults_and_texts() -> None:
    fake = FakeGenerator()
    with serve(fake) as client:
        r = client.post("/generated_texts/", json={"body": "Hello", "num_return_sequences": 2})
    assert r.status_code == 200
    ids = list(b"Hello")
    # Default max_number_of_generated_tokens is the original's 128.
    assert r.json() == {"texts": [expected_text(ids, 0, 128), expected_text(ids, 1, 128)]}
    params = fake.requests[-1].params
    assert params == GenerationParams(
        max_new_tokens=ORIGINAL_API_DEFAULTS["max_number_of_generated_tokens"],
        num_return_sequences=2,
        temperature=ORIGINAL_API_DEFAULTS["temperature"],
        top_k=ORIGINAL_API_DEFAULTS["top_k"],
        top_p=ORIGINAL_API_DEFAULTS["top_p"],
        repetition_penalty=ORIGINAL_API_DEFAULTS["repetition_penalty"],
    )


def test_original_api_document_prompt_and_greedy_temperature() -> None:
    fake = FakeGenerator(document_format=True)
    with serve(fake) as client:
        body = {"body": "Hi", "meta": "T", "max_number_of_generated_tokens": 5, "temperature": 0}
        r = client.post("/generated_texts/", json=body)
    assert r.status_code == 200, r.text
    assert fake.requests[-1].prompt == {"body": "Hi", "meta": "T"}
    assert fake.requests[-1].params.temperature == 0.0
    assert r.json()["texts"] == [
        expected_text(fake.encode_prompt({"body": "Hi", "meta": "T"}), 0, 5)
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("repetition_penalty", 0.0),
        ("num_return_sequences", 0),
        ("max_number_of_generated_tokens", 0),
        ("body", None),
    ],
)
def test_original_api_rejects_out_of_range(field: str, value: Any) -> None:
    with serve() as client:
        r = client.post("/generated_texts/", json={"body": "Hello", field: value})
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", field]]


def test_original_api_refusals_name_the_field() -> None:
    with serve(FakeGenerator(max_positions=64), max_new_tokens_limit=100) as client:
        post = lambda **kw: client.post("/generated_texts/", json={"body": "Hello", **kw})  # noqa: E731
        too_long = post(max_number_of_generated_tokens=60)
        over_limit = post(max_number_of_generated_tokens=101)
        meta = post(meta="a title", max_number_of_generated_tokens=4)
        malformed = client.post(
            "/generated_texts/", content=b'{"body": ', headers={"content-type": "application/json"}
        )
    assert too_long.status_code == 400
    assert "5 tokens" in too_long.json()["detail"] and "context of 64" in too_long.json()["detail"]
    assert over_limit.status_code == 400
    assert over_limit.json()["detail"].startswith("max_number_of_generated_tokens: at most 100")
    assert meta.status_code == 400 and meta.json()["detail"].startswith("meta:")
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["type"] == "json_invalid"


# -- OpenAI-compatible API ---------------------------------------------------------------------
BOTH_PATHS = pytest.mark.parametrize("batching", ["continuous", "request"])


@BOTH_PATHS
def test_completions_choices_indices_and_usage(batching: str) -> None:
    fake = FakeGenerator()
    with serve(fake, model_name="tiny", batching=batching) as client:
        body = {"model": "tiny", "prompt": ["Hello", "abc"], "n": 2, "max_tokens": 6, "seed": 3}
        r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "text_completion" and out["model"] == "tiny"
    assert out["id"].startswith("cmpl-")
    prompts = [list(b"Hello"), list(b"abc")]
    assert out["choices"] == [
        {
            "text": expected_text(prompts[p], s, 6),
            "index": 2 * p + s,
            "logprobs": None,
            "finish_reason": "length",
        }
        for p in range(2)
        for s in range(2)
    ]
    assert out["usage"] == {
        "prompt_tokens": 8,
        "completion_tokens": 24,
        "total_tokens": 32,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    # Both prompts ran in one batch, with the OpenAI defaults mapped onto GenerationParams.
    assert fake.batches[-1] == 4
    assert fake.requests[-1].params == GenerationParams(
        max_new_tokens=6,
        num_return_sequences=2,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
        seed=3,
    )


def test_completions_stop_echo_and_extras() -> None:
    fake = FakeGenerator()
    ids = list(b"Hello")
    full = expected_text(ids, 0, 20)
    stop = full[7:9]
    with serve(fake) as client:
        r = client.post(
            "/v1/completions",
            json={
                "prompt": "Hello",
                "max_tokens": 20,
                "stop": stop,
                "echo": True,
                "top_k": 5,
                "repetition_penalty": 1.3,
                "min_tokens": 2,
                "ignore_eos": True,
                "temperature": None,
            },
        )
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert choice["text"] == "Hello" + full[: full.index(stop)]
    assert choice["finish_reason"] == "stop"
    params = fake.requests[-1].params
    assert (params.top_k, params.repetition_penalty, params.min_new_tokens, params.ignore_eos) == (
        5,
        1.3,
        2,
        True,
    )
    assert params.temperature == 1.0  # null means the default
    assert params.stop == (stop,)


@BOTH_PATHS
def test_completions_stream_format_matches_non_streamed(batching: str) -> None:
    with serve(FakeGenerator(), batching=batching) as client:
        body = {"prompt": ["Hello", "xy"], "n": 2, "max_tokens": 7}
        plain = client.post("/v1/completions", json=body).json()
        r = client.post(
            "/v1/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "text_completion" for c in chunks)
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        assert choice["logprobs"] is None
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"] is not None:
            assert choice["text"] == "" and choice["index"] not in finish
            finish[choice["index"]] = choice["finish_reason"]
    assert texts == {c["index"]: c["text"] for c in plain["choices"]}
    assert finish == {c["index"]: c["finish_reason"] for c in plain["choices"]}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_completions_stream_holds_back_stop_strings() -> None:
    ids = list(b"Hello")
    full = expected_text(ids, 0, 30)
    stop = full[10:13]
    with serve() as client:
        r = client.post(
            "/v1/completions",
            json={"prompt": "Hello", "max_tokens": 30, "stop": [stop], "stream": True},
        )
    chunks = sse_events(r.text)[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks) == full[: full.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 513}, "max_tokens"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [[1], "a"]}, "prompt"),
        ({"prompt": [True]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"stop": ["a"] * 9}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"seed": -1}, "seed"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"echo": True, "logprobs": 1}, "echo"),  # a bundle without every position's logits
        ({"suffix": "x"}, "suffix"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"best_of": 3}, "best_of"),
        ({"meta": "title"}, "meta"),
        ({"min_tokens": 9, "max_tokens": 4}, "min_tokens"),
        ({"prompt": "x" * 500}, "max_tokens"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_completions_validation_errors_are_openai_shaped(body: dict[str, Any], param: str) -> None:
    with serve() as client:
        r = client.post("/v1/completions", json={"prompt": "Hello", **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert param in error["message"]


def test_completions_malformed_json_unknown_model_and_body_limit() -> None:
    with serve(model_name="tiny", max_body_bytes=2048) as client:
        malformed = client.post(
            "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
        no_body = client.post("/v1/completions")
        wrong_model = client.post("/v1/completions", json={"model": "gpt-4", "prompt": "a"})
        too_big = client.post("/v1/completions", json={"prompt": "a" * 4096})
        models = client.get("/v1/models").json()
        card = client.get("/v1/models/tiny")
        missing_card = client.get("/v1/models/other")
    assert malformed.status_code == 400
    assert malformed.json()["error"]["message"].startswith("malformed JSON body")
    assert no_body.status_code == 400
    assert wrong_model.status_code == 404
    assert wrong_model.json()["error"]["code"] == "model_not_found"
    assert too_big.status_code == 413
    assert [m["id"] for m in models["data"]] == ["tiny"] and models["object"] == "list"
    assert card.json()["id"] == "tiny" and missing_card.status_code == 404


def post_raw(client: TestClient, path: str, body: bytes) -> Any:
    return client.post(path, content=body, headers={"content-type": "application/json"})


def test_lone_surrogates_are_refused_naming_the_field(caplog: pytest.LogCaptureFixture) -> None:
    """`"\\ud800"` is valid JSON but no UTF-8 text: 400 naming the field, nothing logged as
    an error (it used to be a 500 and a traceback wherever such a string was encoded)."""
    with serve(FakeGenerator(document_format=True)) as client:
        model = post_raw(client, "/v1/completions", b'{"prompt": "a", "model": "x\\ud800"}')
        stop = post_raw(client, "/v1/completions", b'{"prompt": "a", "stop": ["\\udfff"]}')
        meta = post_raw(client, "/generated_texts/", b'{"body": "a", "meta": "\\ud800"}')
        echoed = post_raw(client, "/generated_texts/", b'{"body": "a", "top_k": "\\ud800"}')
    assert model.status_code == 400 and model.json()["error"]["param"] == "model"
    assert (
        "model: contains a lone UTF-16 surrogate ('\\ud800' at character 1)"
        in model.json()["error"]["message"]
    )
    assert stop.status_code == 400 and stop.json()["error"]["param"] == "stop"
    assert meta.status_code == 400 and meta.json()["detail"].startswith("meta: contains a lone")
    # A validation error quoting such a string still answers (ASCII-escaped JSON).
    assert echoed.status_code == 422 and echoed.json()["detail"][0]["loc"] == ["body", "top_k"]
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


# -- auth, operations, metrics -----------------------------------------------------------------
def test_api_key_required_except_for_probes() -> None:
    with serve(api_key="s3cret") as client:
        bearer = {"Authorization": "Bearer s3cret"}
        wrong = {"Authorization": "Bearer nope"}
        v1 = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
        v1_wrong = client.post("/v1/completions", json={"prompt": "a"}, headers=wrong)
        original = client.post("/generated_texts/", json={"body": "a"})
        ok_v1 = client.post(
            "/v1/completions", json={"prompt": "a", "max_tokens": 2}, headers=bearer
        )
        ok_original = client.post(
            "/generated_texts/",
            json={"body": "a", "max_number_of_generated_tokens": 2},
            headers=bearer,
        )
        version = client.get("/version")
        open_paths = [client.get(p).status_code for p in ("/health", "/ready", "/metrics")]
    assert v1.status_code == 401 and v1.json()["error"]["code"] == "invalid_api_key"
    assert v1.headers["www-authenticate"] == "Bearer"
    assert v1_wrong.status_code == 401
    assert original.status_code == 401 and "API key" in original.json()["detail"]
    assert version.status_code == 401
    assert ok_v1.status_code == 200 and ok_original.status_code == 200
    assert open_paths == [200, 200, 200]


def test_ready_is_503_until_warmed_up_and_version_summarises_the_bundle() -> None:
    release = threading.Event()
    fake = FakeGenerator(hold_warmup=release)
    app = create_app(ServingSettings(), generator=fake)
    with TestClient(app) as client:
        loading = client.get("/ready")
        health = client.get("/health")
        refused = client.post("/v1/completions", json={"prompt": "a"})
        release.set()
        wait_ready(client)
        version = client.get("/version").json()
    assert loading.status_code == 503 and loading.json()["status"] == "loading"
    assert loading.headers["retry-after"] == "5"
    assert health.status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert version["version"] == __version__
    assert version["provider"] == "FakeExecutionProvider"
    assert version["bundle"] == fake.manifest.summary()


def test_failed_load_makes_health_and_ready_fail(tmp_path) -> None:
    app = create_app(ServingSettings(bundle=tmp_path))  # not a bundle
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/ready").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ready = client.get("/ready")
        health = client.get("/health")
    assert ready.status_code == 503 and ready.json()["status"] == "failed"
    assert "fst_bundle.json" in ready.json()["detail"]
    # The body agrees with the status (it said "ok"); fst-serve itself exits instead.
    assert health.status_code == 503 and health.json() == ready.json()


def metric_values(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


@BOTH_PATHS
def test_metrics_count_requests_tokens_and_batches(batching: str) -> None:
    with serve(FakeGenerator(), batching=batching) as client:
        client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3, "n": 2})
        client.post("/v1/completions", json={"prompt": "Hello", "temperature": -1})
        client.post("/generated_texts/", json={"body": "Hi", "max_number_of_generated_tokens": 4})
        values = metric_values(client.get("/metrics").text)
    assert values['fst_http_requests_total{route="/v1/completions",status="200"}'] == 1
    assert values['fst_http_requests_total{route="/v1/completions",status="400"}'] == 1
    assert values['fst_http_requests_total{route="/generated_texts/",status="200"}'] == 1
    assert values["fst_generated_tokens_total"] == 3 * 2 + 4
    assert values["fst_prompt_tokens_total"] == 5 + 2
    if batching == "request":  # one observation per batch
        assert values["fst_batch_size_sequences_count"] == 2
        assert values["fst_batch_size_sequences_sum"] == 3
    else:  # one per decoding step: 3 steps of 2 rows, 4 steps of 1
        assert values["fst_batch_size_sequences_count"] == 3 + 4
        assert values["fst_batch_size_sequences_sum"] == 3 * 2 + 4
    assert values["fst_time_to_first_token_seconds_count"] == 2
    assert values["fst_queue_depth"] == 0
    assert 'fst_http_request_duration_seconds_count{route="/v1/completions"}' in values


def test_metrics_count_a_request_with_n_samples_once() -> None:
    """Regression: with continuous batching, a job whose n rows all end in the same step
    was finished once per row (tokens, prompt tokens and TTFT counted n times)."""
    with serve() as client:
        r = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 10, "n": 8})
        values = metric_values(client.get("/metrics").text)
    assert r.json()["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 80,
        "total_tokens": 85,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert values["fst_generated_tokens_total"] == 80
    assert values["fst_prompt_tokens_total"] == 5
    assert values["fst_time_to_first_token_seconds_count"] == 1


def test_timeout_gives_504() -> None:
    with serve(FakeGenerator(step_s=0.05), request_timeout_s=0.3) as client:
        r = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 200})
        original = client.post(
            "/generated_texts/", json={"body": "a", "max_number_of_generated_tokens": 200}
        )
        # The worker counts a cancelled job when its batch step notices, just after the 504.
        deadline = time.monotonic() + 5
        while (
            'fst_cancelled_requests_total{reason="timeout"} 2.0' not in client.get("/metrics").text
        ):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
    assert original.status_code == 504


@BOTH_PATHS
def test_one_failing_request_does_not_fail_its_batch(batching: str) -> None:
    fake = FakeGenerator(fail_on="boom", step_s=0.01)
    # The batch starts the moment both requests wait (2 = max_batch_size), not after a
    # fixed window; the 1 s bound only matters if a thread needs that long to post.
    with serve(fake, max_batch_size=2, batch_wait_ms=1000, batching=batching) as client:
        results: dict[str, Any] = {}

        def call(prompt: str) -> None:
            results[prompt] = client.post(
                "/v1/completions", json={"prompt": prompt, "max_tokens": 3}
            )

        threads = [threading.Thread(target=call, args=(p,)) for p in ("boom", "fine")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert results["boom"].status_code == 500
    assert results["boom"].json() == {
        "error": {
            "message": "generation failed",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert results["fine"].status_code == 200
    assert results["fine"].json()["choices"][0]["text"] == expected_text(list(b"fine"), 0, 3)
    assert 2 in fake.batches  # they did share a batch first


def test_openapi_documents_fields_with_examples() -> None:
    with serve() as client:
        spec = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert docs.status_code == 200
    schemas = spec["components"]["schemas"]
    for name in ("GeneratedTextsRequest", "CompletionRequest"):
        assert schemas[name]["examples"]
        described = [f for f, s in schemas[name]["properties"].items() if s.get("description")]
        assert len(described) >= 6, name
    assert "/v1/completions" in spec["paths"] and "/generated_texts/" in spec["paths"]


# -- settings and CLI --------------------------------------------------------------------------
def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FST_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("FST_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    monkeypatch.setenv("FST_API_KEY", "k")
    monkeypatch.setenv("FST_LOG_LEVEL", "DEBUG")
    settings = ServingSettings(bundle="/some/where/my-model")
    assert settings.max_batch_size == 8
    assert settings.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k"
    assert settings.log_level == "debug"
    assert settings.served_model_name() == "my-model"
    assert "k" not in repr(settings.api_key)


def test_huge_pages_and_prefix_cache_settings_reach_the_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fst.runtime import Generator
    from fst.serving.metrics import ServingMetrics
    from fst.serving.state import ServingState

    seen = []
    monkeypatch.setattr(Generator, "from_bundle", lambda *a, **kw: seen.append(kw))
    assert ServingSettings().huge_pages  # on by default
    monkeypatch.setenv("FST_HUGE_PAGES", "0")
    monkeypatch.setenv("FST_PREFIX_CACHE_MB", "0")  # off
    settings = ServingSettings(bundle="/b")
    ServingState(settings, ServingMetrics())._load_generator()
    ServingState(
        ServingSettings(bundle="/b", prefix_cache_mb=3), ServingMetrics()
    )._load_generator()
    common = {"providers": None, "threads": None, "huge_pages": False, "speculative_tokens": 0}
    assert seen == [
        {**common, "prefix_cache_bytes": 0},
        {**common, "prefix_cache_bytes": 3 << 20},
    ]


def test_cli_refuses_bad_input_with_one_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("FST_BUNDLE", raising=False)
    for spelling in ("--max_batch_size", "--max-batch-size"):  # kebab: the old, hidden alias
        assert serve_main(["--bundle", str(tmp_path), spelling, "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("fst-serve: error: --max_batch_size:") and "\n" not in err
    assert serve_main(["--bundle", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not an fst bundle" in err and "\n" not in err
    assert serve_main([]) == 2
    assert "--bundle" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        serve_main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "FST_MAX_BATCH_SIZE" in help_text and "--no_warmup" in help_text
    assert "--max-batch-size" not in help_text and "--no-warmup" not in help_text  # hidden


def test_cli_flags_are_snake_case_and_the_kebab_spellings_still_work(monkeypatch) -> None:
    from fst.serving.cli import load_settings

    monkeypatch.setenv("FST_QUEUE_SIZE", "7")
    snake = load_settings(["--huge_pages", "--no_warmup", "--limit_concurrency", "9"])
    kebab = load_settings(["--huge-pages", "--no-warmup", "--limit-concurrency", "9"])
    assert snake == kebab
    assert (snake.warmup, snake.limit_concurrency, snake.queue_size) == (False, 9, 7)  # env read
    assert not load_settings(["--no-huge-pages"]).huge_pages
    assert load_settings(["--queue_size", "3"]).queue_size == 3  # a flag wins over FST_...


def test_the_fake_and_the_runtime_satisfy_the_served_generator_protocol(
    tiny_plain_bundle,
) -> None:
    from fst.runtime import Generator
    from fst.serving.generator_protocol import ServedGenerator, StepBatch

    fake = FakeGenerator()
    real = Generator.from_bundle(tiny_plain_bundle, threads=1)
    for generator in (fake, real):
        assert isinstance(generator, ServedGenerator)
        assert isinstance(generator.new_batch(), StepBatch)
    assert not isinstance(object(), ServedGenerator)


@pytest.mark.parametrize(
    ("settings", "wait_s"),
    [
        ({}, 0.0),
        ({"batching": "request"}, 0.005),
        ({"batch_wait_ms": 20}, 0.02),
        ({"batching": "request", "batch_wait_ms": 0}, 0.0),
    ],
)
def test_only_request_batching_waits_for_company_by_default(
    settings: dict[str, Any], wait_s: float
) -> None:
    """Continuous batching admits a request reaching an idle server at once (later ones join
    at the next token); request batching, whose batch runs to its end, waits 5 ms."""
    with serve(**settings) as client:
        assert client.app.state.serving.scheduler.batch_wait_s == pytest.approx(wait_s)


@pytest.mark.parametrize(("budget", "admissions"), [(150, [1, 1, 1, 1]), (0, [4])])
@pytest.mark.parametrize("route", ["/v1/completions", "/generated_texts/"])
def test_routes_count_prompt_tokens_against_the_prefill_budget(
    route: str, budget: int, admissions: list[int]
) -> None:
    """Four 100-token prompts wait together (1 s for company); with a 150-token budget each
    joins the batch at its own step, without one all four are prefilled at once."""
    fake = FakeGenerator(step_s=0.01)
    with serve(fake, max_batch_size=4, batch_wait_ms=1000, max_prefill_tokens=budget) as client:
        prompts = [str(i) * 100 for i in range(4)]
        bodies = [
            {"prompt": p, "max_tokens": 4}
            if route.startswith("/v1")
            else {"body": p, "max_number_of_generated_tokens": 4}
            for p in prompts
        ]
        threads = [
            threading.Thread(target=client.post, args=(route,), kwargs={"json": b}) for b in bodies
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert fake.batches[1:] == admissions  # after the warm-up's run
