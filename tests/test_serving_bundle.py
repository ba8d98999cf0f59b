"""fst-serve on a real tiny bundle (ONNX Runtime): answers equal the runtime's own, batched
greedy equals unbatched, and the `fst-serve` command serves and stops on SIGTERM.

The reference is `fst.runtime.Generator` called directly on the same bundle; the server
must add nothing and lose nothing (texts, token counts, seeded samples, stop strings).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from serving_fakes import running_server

from fst.core.generation_params import GenerationParams
from fst.runtime import GenerationRequest, Generator
from fst.serving.app import create_app
from fst.serving.metrics import ServingMetrics
from fst.serving.scheduler import Scheduler
from fst.serving.settings import ServingSettings

# Timeouts catch hangs: well above a loaded machine's times (bundles are exported in fixtures).
pytestmark = pytest.mark.timeout(600)

GREEDY_PLAIN = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def reference(tiny_plain_bundle: Path) -> Generator:
    return Generator.from_bundle(tiny_plain_bundle, threads=1)


@pytest.fixture(scope="module")
def client(tiny_plain_bundle: Path) -> TestClient:
    app = create_app(ServingSettings(bundle=tiny_plain_bundle, threads=1, model_name="tiny"))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while (ready := client.get("/ready")).status_code != 200:
            assert ready.json()["status"] == "loading"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert app.state.serving.scheduler.mode == "continuous"  # the default path
        yield client


def test_original_api_matches_the_runtime(client: TestClient, reference: Generator) -> None:
    body = {"body": "Hello world", "max_number_of_generated_tokens": 8, "temperature": 0}
    r = client.post("/generated_texts/", json=body)
    (expected,) = reference.generate(
        "Hello world", max_new_tokens=8, temperature=0.0, top_k=50, top_p=1.0,
        repetition_penalty=5.0,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json() == {"texts": [expected.text]}


def test_completions_match_seeded_samples_and_token_counts(
    client: TestClient, reference: Generator
) -> None:
    prompts = ["Hello world", "The quick brown fox"]
    r = client.post(
        "/v1/completions",
        json={"model": "tiny", "prompt": prompts, "n": 2, "max_tokens": 6, "temperature": 0.9,
              "seed": 5},
    )  # fmt: skip
    expected = reference.generate(
        prompts, max_new_tokens=6, num_return_sequences=2, temperature=0.9, top_k=0, top_p=1.0,
        repetition_penalty=1.0, seed=5,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    out = r.json()
    assert [c["text"] for c in out["choices"]] == [c.text for c in expected]
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    prompt_tokens = sum(len(reference.encode_prompt(p)) for p in prompts)
    completion_tokens = sum(len(c.token_ids) for c in expected)
    assert out["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_stream_equals_non_streamed_with_a_stop_string(
    client: TestClient, reference: Generator
) -> None:
    (greedy,) = reference.generate("Hello world", max_new_tokens=12, **GREEDY_PLAIN)
    stop = greedy.text[len(greedy.text) // 2 :][:3]
    assert stop, greedy.text
    body = {"prompt": "Hello world", "max_tokens": 12, "temperature": 0, "stop": [stop]}
    plain = client.post("/v1/completions", json=body).json()
    streamed = client.post("/v1/completions", json={**body, "stream": True}).text
    chunks = [json.loads(b[6:]) for b in streamed.split("\n\n") if b and b != "data: [DONE]"]
    assert streamed.endswith("data: [DONE]\n\n")
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == plain["choices"][0]["text"] == greedy.text[: greedy.text.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert plain["choices"][0]["finish_reason"] == "stop"


def test_context_meta_and_version(client: TestClient, reference: Generator) -> None:
    prompt = "word " * 60
    length = len(reference.encode_prompt(prompt))
    too_long = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 129 - length})
    fits = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 128 - length})
    meta = client.post("/generated_texts/", json={"body": "Hi", "meta": "a title"})
    version = client.get("/version").json()
    assert too_long.status_code == 400
    assert f"{length} tokens" in too_long.json()["error"]["message"]
    assert "context of 128" in too_long.json()["error"]["message"]
    assert fits.status_code == 200
    assert meta.status_code == 400 and meta.json()["detail"].startswith("meta:")
    assert version["bundle"] == reference.manifest.summary()
    assert version["provider"] == reference.provider


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", b'{"prompt": "ab\\ud800cd", "max_tokens": 2}', "prompt"),
        ("/v1/completions", b'{"prompt": ["ok", "ab\\ud800cd"], "max_tokens": 2}', "prompt"),
        ("/generated_texts/", b'{"body": "ab\\ud800cd"}', "body"),
    ],
)
def test_lone_surrogate_in_a_prompt_is_a_400_naming_the_field(
    client: TestClient, path: str, body: bytes, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the real tokenizer raised TypeError on it, answered 500 + tracebacks."""
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"] if path.startswith("/v1") else r.json()["detail"]
    assert message.startswith(f"{field}: contains a lone UTF-16 surrogate ('\\ud800'")
    assert [rec for rec in caplog.records if rec.levelname == "ERROR"] == []


def bucket_le_1_and_count(metrics: str) -> tuple[float, float]:
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line[:1] != "#")
    return (
        float(values['fst_batch_size_sequences_bucket{le="1.0"}']),
        float(values["fst_batch_size_sequences_count"]),
    )


@pytest.mark.parametrize("batching", ["continuous", "request"])
def test_batched_greedy_equals_unbatched(
    tiny_plain_bundle: Path, reference: Generator, batching: str
) -> None:
    prompts = ["Hello", "The quick brown fox jumps over", "A", "Once upon a time, there was a"]
    expected = [reference.generate(p, max_new_tokens=10, **GREEDY_PLAIN)[0].text for p in prompts]
    # The batch starts once all four wait (= max_batch_size), at most 1 s after the first.
    settings = ServingSettings(
        bundle=tiny_plain_bundle, threads=1, max_batch_size=4, batch_wait_ms=1000,
        batching=batching,
    )  # fmt: skip
    with running_server(create_app(settings), ready_timeout=60) as base:

        async def drive() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                body = {"max_tokens": 10, "temperature": 0}
                return await asyncio.gather(
                    *(http.post("/v1/completions", json={**body, "prompt": p}) for p in prompts)
                )

        responses = asyncio.run(drive())
        metrics = httpx.get(f"{base}/metrics").text
    assert [r.json()["choices"][0]["text"] for r in responses] == expected
    ones, count = bucket_le_1_and_count(metrics)
    assert ones < count  # some batch (request) or decoding step (continuous) held several
    # The runtime's model-call hook: one prefill per batch or join, one decode per step.
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line[:1] != "#")
    prefills = float(values['fst_model_call_duration_seconds_count{kind="prefill"}'])
    decodes = float(values['fst_model_call_duration_seconds_count{kind="decode"}'])
    assert 1 <= prefills <= 4 and 9 <= decodes <= 4 * 9
    if batching == "request":
        assert prefills == 1 and decodes == 9  # 10 tokens: 1 from the prefill, 9 steps
        assert "fst_batch_size_requests_sum 4.0" in metrics
        assert "fst_batch_size_requests_count 1.0" in metrics  # all four in one batch


def test_continuous_batching_joins_running_batch_and_cancels(
    reference: Generator, tiny_plain_bundle: Path
) -> None:
    """Jobs join and leave a running batch, and each text equals its unbatched reference."""
    generator = Generator.from_bundle(tiny_plain_bundle, threads=1)
    metrics = ServingMetrics()
    sched = Scheduler(
        generator, max_batch_size=4, queue_size=8, batch_wait_s=0, metrics=metrics,
        mode="continuous",
    )  # fmt: skip
    long = GenerationParams(max_new_tokens=100, ignore_eos=True, **GREEDY_PLAIN)
    short = GenerationParams(max_new_tokens=5, num_return_sequences=2, temperature=0.9, seed=3)

    async def main() -> tuple[list, list, list]:
        sched.start()
        first = sched.submit([GenerationRequest("Hello world", long)], timeout_s=60)
        async for _ in first.pieces():
            break  # `first` is decoding: the next jobs join its batch
        gone = sched.submit([GenerationRequest("never", long)], timeout_s=60)
        gone.cancel("disconnect")
        second = sched.submit([GenerationRequest("The fox", short)], timeout_s=60)
        second_result = await second.wait()
        first_result = await first.wait()
        last = sched.submit([GenerationRequest("Bye", long)], timeout_s=60)
        async for _ in last.pieces():
            break
        await asyncio.to_thread(sched.stop, 0.0)  # no grace: cancel what runs
        return first_result, second_result, await last.wait()

    first, second, last = asyncio.run(main())
    assert first[0][0].text == reference.generate("Hello world", long)[0].text
    assert [c.text for c in second[0]] == [c.text for c in reference.generate("The fox", short)]
    assert first[0][0].finish_reason == "length" and len(first[0][0].token_ids) == 100
    assert last[0][0].finish_reason == "cancelled"
    assert len(last[0][0].token_ids) < 100
    # Some steps decoded 3 rows: `first` and the two samples of `second` together.
    samples = metrics.batch_size.collect()[0].samples
    (at_most_two,) = [s.value for s in samples if s.labels.get("le") == "2.0"]
    (steps,) = [s.value for s in samples if s.name.endswith("_count")]
    assert at_most_two < steps
    assert metrics.cancelled.labels(reason="disconnect")._value.get() == 1
    assert metrics.cancelled.labels(reason="shutdown")._value.get() == 1


def test_fst_serve_command_serves_and_stops_on_sigterm(
    tiny_plain_bundle: Path, reference: Generator
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "fst.serving.cli", "--bundle", str(tiny_plain_bundle),
               "--port", str(port), "--threads", "1", "--api-key", "k"]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        r = httpx.post(
            f"{base}/generated_texts/",
            json={"body": "Hello", "max_number_of_generated_tokens": 5, "temperature": 0},
            headers={"Authorization": "Bearer k"},
            timeout=30,
        )
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (expected,) = reference.generate(
        "Hello", max_new_tokens=5, temperature=0.0, top_k=50, top_p=1.0, repetition_penalty=5.0
    )
    assert r.json() == {"texts": [expected.text]}
    assert code == 0  # a clean SIGTERM (uvicorn alone re-raises it: 143)
    assert "scheduler stopped" in log
    assert "Hello" not in log  # prompts are not logged at INFO


def _damage(bundle: Path, tmp_path: Path, how: str) -> Path:
    damaged = tmp_path / "bundle"
    shutil.copytree(bundle, damaged)
    model, tokenizer = damaged / "model.onnx", damaged / "tokenizer.json"
    if how == "empty model":
        model.write_bytes(b"")
    elif how == "truncated model":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif how == "missing tokenizer":
        tokenizer.unlink()
    elif how == "corrupt tokenizer":
        tokenizer.write_text('{"version": "1.0", "model": ')
    return damaged


@pytest.mark.parametrize(
    ("how", "file"),
    [
        ("empty model", "model.onnx"),
        ("truncated model", "model.onnx"),
        ("missing tokenizer", "tokenizer.json"),
        ("corrupt tokenizer", "tokenizer.json"),
    ],
)
def test_fst_serve_on_a_broken_bundle_fails_fast_with_one_line(
    tiny_plain_bundle: Path, tmp_path: Path, how: str, file: str
) -> None:
    """Regression: it stayed up with /health 503 and the body {"status": "ok"}. The cheap
    checks fail before listening; a model ONNX Runtime cannot load stops the server."""
    damaged = _damage(tiny_plain_bundle, tmp_path, how)
    command = [sys.executable, "-m", "fst.serving.cli", "--bundle", str(damaged), "--port", "0",
               "--threads", "1", "--log_level", "warning"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr
    assert last.startswith("fst-serve: error: --bundle: ") and file in last, result.stderr
    assert "Traceback" not in result.stderr


def test_fst_serve_verify_refuses_a_file_changed_after_export(
    tiny_plain_bundle: Path, tmp_path: Path
) -> None:
    """Same size, other bytes: only the sha256 check (--verify) can see it."""
    damaged = tmp_path / "bundle"
    shutil.copytree(tiny_plain_bundle, damaged)
    tokenizer = damaged / "tokenizer.json"
    text = tokenizer.read_text()
    tokenizer.write_text(text.replace('"version"', '"Version"', 1))
    command = [sys.executable, "-m", "fst.serving.cli", "--bundle", str(damaged), "--port", "0",
               "--threads", "1", "--log-level", "warning", "--verify"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "tokenizer.json: sha256" in last and "differs from the manifest" in last, last


def test_fst_serve_on_a_taken_port_exits_3_with_one_line(tiny_plain_bundle: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        command = [sys.executable, "-m", "fst.serving.cli", "--bundle", str(tiny_plain_bundle),
                   "--port", str(taken.getsockname()[1]), "--log-level", "warning"]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 3, result.stderr
    assert "address already in use" in result.stderr and "Traceback" not in result.stderr


def test_document_bundle_prompts_are_documents(tiny_document_bundle: Path) -> None:
    """Document-format bundle: body + meta are encoded as in training, on both APIs."""
    reference = Generator.from_bundle(tiny_document_bundle, threads=1)
    greedy = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}
    app = create_app(ServingSettings(bundle=tiny_document_bundle, threads=1))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        original = client.post(
            "/generated_texts/",
            json={"body": "The cat", "meta": "cats", "max_number_of_generated_tokens": 6,
                  "temperature": 0, "repetition_penalty": 1.0, "top_k": 0},
        )  # fmt: skip
        v1 = client.post(
            "/v1/completions",
            json={"prompt": ["The dog", "A mat"], "meta": "dogs", "max_tokens": 6,
                  "temperature": 0},
        )  # fmt: skip
        no_meta = client.post(
            "/v1/completions", json={"prompt": "The dog", "max_tokens": 6, "temperature": 0}
        )
        summary = client.get("/version").json()["bundle"]
        bad_meta = client.post(
            "/generated_texts/",
            content=b'{"body": "The cat", "meta": "ca\\udc00ts"}',
            headers={"content-type": "application/json"},
        )
    assert bad_meta.status_code == 400, bad_meta.text  # was a 500 from the tokenizer
    assert bad_meta.json()["detail"].startswith("meta: contains a lone UTF-16 surrogate")
    doc = {"body": "The cat", "meta": "cats"}
    assert original.json()["texts"] == [reference.generate(doc, max_new_tokens=6, **greedy)[0].text]
    docs = [{"body": "The dog", "meta": "dogs"}, {"body": "A mat", "meta": "dogs"}]
    assert [c["text"] for c in v1.json()["choices"]] == [
        c.text for c in reference.generate(docs, max_new_tokens=6, **greedy)
    ]
    assert v1.json()["usage"]["prompt_tokens"] == sum(len(reference.encode_prompt(d)) for d in docs)
    bare = {"body": "The dog", "meta": None}
    assert no_meta.json()["choices"][0]["text"] == (
        reference.generate(bare, max_new_tokens=6, **greedy)[0].text
    )
    assert summary["document_format"] is True


def test_a_follow_up_reports_cached_prompt_tokens_and_the_same_text(
    client: TestClient, reference: Generator
) -> None:
    first = "In the beginning the river ran through the valley and the people of the town"
    body = {"model": "tiny", "max_tokens": 6, "temperature": 0.0}
    one = client.post("/v1/completions", json={**body, "prompt": first}).json()
    follow = first + one["choices"][0]["text"] + " and later"
    two = client.post("/v1/completions", json={**body, "prompt": follow}).json()
    (expected,) = reference.generate(follow, max_new_tokens=6, **GREEDY_PLAIN)
    assert two["choices"][0]["text"] == expected.text
    cached = two["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert len(reference.encode_prompt(first)) <= cached < two["usage"]["prompt_tokens"]
    metrics = client.get("/metrics").text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line.startswith("fst_prefix_cache")
    }
    assert values['fst_prefix_cache_lookups_total{result="hit"}'] >= 1
    assert values['fst_prefix_cache_lookups_total{result="miss"}'] >= 1
    assert values["fst_prefix_cache_cached_tokens_total"] >= cached
