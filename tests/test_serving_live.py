"""fst-serve on a real uvicorn (127.0.0.1, free port): the official openai client, batching
under concurrency, disconnects freeing capacity, back-pressure, and SIGTERM.

The generator is the fake from serving_fakes.py (slowed down per step where a test needs
requests to overlap); the real model runs in test_serving_bundle.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from serving_fakes import FakeGenerator, fake_token, running_server

from fst.serving.app import create_app
from fst.serving.settings import ServingSettings


def expected_text(prompt: str, seq_index: int, tokens: int) -> str:
    ids = list(prompt.encode())
    return bytes(fake_token(ids, seq_index, t) for t in range(tokens)).decode()


def metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.rsplit(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_official_openai_client_works_unchanged() -> None:
    app = create_app(ServingSettings(model_name="tiny", api_key="k3y"), generator=FakeGenerator())
    with running_server(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="k3y", max_retries=0, timeout=20)
        completion = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, n=2)
        chunks = list(
            client.completions.create(
                model="tiny",
                prompt="Hello",
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        models = client.models.list()
        extra = client.completions.create(
            model="tiny",
            prompt="Hi",
            max_tokens=3,
            extra_body={"top_k": 2, "repetition_penalty": 1.2},
        )
        with pytest.raises(openai.BadRequestError) as bad:
            client.completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=-1)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="other", prompt="Hello", max_tokens=5)

    assert [c.text for c in completion.choices] == [expected_text("Hello", s, 5) for s in (0, 1)]
    assert [c.finish_reason for c in completion.choices] == ["length", "length"]
    assert completion.usage.prompt_tokens == 5 and completion.usage.completion_tokens == 10
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected_text("Hello", 0, 5)
    assert chunks[-1].usage.completion_tokens == 5
    assert [m.id for m in models.data] == ["tiny"]
    assert extra.choices[0].text == expected_text("Hi", 0, 3)
    assert "temperature" in bad.value.message


def test_concurrent_requests_are_all_answered_and_batched() -> None:
    fake = FakeGenerator(step_s=0.01)
    # The first batch starts once all 16 wait (= max_batch_size), at most 1 s after the first.
    settings = ServingSettings(max_batch_size=16, batch_wait_ms=1000)
    app = create_app(settings, generator=fake)
    with running_server(app) as base:
        assert app.state.serving.scheduler.mode == "continuous"

        async def drive() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                calls = [
                    client.post("/v1/completions", json={"prompt": f"p{i}", "max_tokens": 8})
                    for i in range(16)
                ]
                return await asyncio.gather(*calls)

        responses = asyncio.run(drive())
        steps = metric(base, "fst_batch_size_sequences_count")
        ones = metric(base, 'fst_batch_size_sequences_bucket{le="1.0"}')
    assert [r.status_code for r in responses] == [200] * 16
    assert [r.json()["choices"][0]["text"] for r in responses] == [
        expected_text(f"p{i}", 0, 8) for i in range(16)
    ]
    joins = fake.batches[1:]  # after the warm-up's run: each admission to the batch
    assert sum(joins) == 16 and len(joins) < 16  # 16 sequences joined in fewer admissions
    assert ones < steps  # some decoding step held more than one sequence


def test_stream_disconnect_cancels_generation_and_frees_the_slot() -> None:
    fake = FakeGenerator(step_s=0.02)
    settings = ServingSettings(max_batch_size=1, batch_wait_ms=0)
    with running_server(create_app(settings, generator=fake)) as base:
        body = {"prompt": "long", "max_tokens": 400, "stream": True}  # 8 s if left running
        with (
            httpx.Client(base_url=base, timeout=10) as client,
            client.stream("POST", "/v1/completions", json=body) as stream,
        ):
            first = next(stream.iter_lines())
            assert first.startswith("data: ")
        # The client has closed the connection mid-stream.
        wait_until(lambda: fake.cancelled_sequences == 1, timeout=5)
        started = time.monotonic()
        quick = httpx.post(
            f"{base}/v1/completions", json={"prompt": "next", "max_tokens": 3}, timeout=10
        )
        elapsed = time.monotonic() - started
        cancelled = metric(base, 'fst_cancelled_requests_total{reason="disconnect"}')
    assert quick.status_code == 200 and elapsed < 3
    assert cancelled == 1


def test_non_streamed_disconnect_cancels_generation() -> None:
    fake = FakeGenerator(step_s=0.02)
    with running_server(create_app(ServingSettings(), generator=fake)) as base:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{base}/generated_texts/",
                json={"body": "long", "max_number_of_generated_tokens": 400},
                timeout=0.5,
            )
        wait_until(lambda: fake.cancelled_sequences == 1, timeout=5)
        wait_until(
            lambda: (
                metric(base, 'fst_http_requests_total{route="/generated_texts/",status="499"}') == 1
            )
        )


def test_full_queue_answers_429_with_retry_after() -> None:
    fake = FakeGenerator(step_s=0.02)
    settings = ServingSettings(max_batch_size=1, queue_size=1, batch_wait_ms=0)
    with running_server(create_app(settings, generator=fake)) as base:

        async def drive() -> httpx.Response:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                long = {"prompt": "long", "max_tokens": 200}
                running = asyncio.create_task(client.post("/v1/completions", json=long))
                await asyncio.to_thread(
                    wait_until, lambda: metric(base, "fst_running_sequences") == 1
                )
                queued = asyncio.create_task(client.post("/v1/completions", json=long))
                await asyncio.to_thread(wait_until, lambda: metric(base, "fst_queue_depth") == 1)
                refused = await client.post(
                    "/v1/completions", json={"prompt": "x", "max_tokens": 2}
                )
                for task in (running, queued):  # leave: the server cancels both
                    task.cancel()
                await asyncio.gather(running, queued, return_exceptions=True)
                return refused

        refused = asyncio.run(drive())
        wait_until(lambda: metric(base, "fst_queue_depth") == 0 and fake.cancelled_sequences >= 1)
        rejected = metric(base, 'fst_rejected_requests_total{reason="queue_full"}')
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"
    assert rejected == 1


@contextlib.contextmanager
def fake_server_process(step_s: float, *flags: str, **popen: Any) -> Iterator[tuple[Any, str]]:
    """`serving_fakes.py` in a subprocess: the fake served as fst-serve serves a bundle
    (build_server + cli.run, signals handled in its main thread); yields (process, base)."""
    script = Path(__file__).with_name("serving_fakes.py")
    path = os.pathsep.join(p for p in (str(script.parent), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(step_s), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        **popen,
    )
    try:
        base = f"http://127.0.0.1:{int(proc.stdout.readline())}"
        wait_until(lambda: _ready(base), timeout=20)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stream_in_thread(base: str, body: dict[str, Any]) -> tuple[threading.Thread, list[str], Any]:
    """Read a completion stream in a thread; returns it, the lines so far, an event set at
    the first line."""
    lines: list[str] = []
    first = threading.Event()

    def read() -> None:
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=20) as r:
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    first.set()

    reader = threading.Thread(target=read)
    reader.start()
    return reader, lines, first


def test_sigterm_drains_while_listening_then_exits_0() -> None:
    """SIGTERM: /ready turns 503 "stopping" (the socket stays open), new work is refused,
    the running stream finishes whole, and the exit status is 0 (it was 143)."""
    with fake_server_process(0.02) as (proc, base):
        body = {"prompt": "go", "max_tokens": 100, "stream": True}  # about 2 s
        reader, lines, first_piece = stream_in_thread(base, body)
        assert first_piece.wait(10)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _get(f"{base}/ready").status_code == 503, timeout=5)
        ready = _get(f"{base}/ready")
        refused = httpx.post(f"{base}/v1/completions", json={"prompt": "x"}, timeout=5)
        reader.join(20)
        code = proc.wait(20)
        log = proc.stderr.read()
    assert ready.json() == {"status": "stopping", "detail": None}
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
    assert code == 0, log
    assert lines[-1] == "data: [DONE]"
    assert '"finish_reason":"length"' in lines[-2]
    assert "scheduler stopped" in log and "Traceback" not in log


def test_streams_running_past_the_shutdown_timeout_end_with_an_error_and_done() -> None:
    """Regression: uvicorn's graceful timeout used to cut such streams mid-body (no error
    event, no [DONE], a traceback each). Now the scheduler ends them first."""
    with fake_server_process(0.02, "--shutdown-timeout-s", "0.3") as (proc, base):
        body = {"prompt": "go", "max_tokens": 500, "n": 2, "stream": True}  # 10 s if left
        streams = [stream_in_thread(base, body) for _ in range(2)]
        for _, _, first_piece in streams:
            assert first_piece.wait(10)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        elapsed = time.monotonic() - started
        for reader, _, _ in streams:
            reader.join(5)
        log = proc.stderr.read()
    assert code == 0, log
    assert elapsed < 5
    for _, lines, _ in streams:
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2][len("data: ") :])["error"]
        assert error["type"] == "service_unavailable"
        assert error["message"] == "the server is shutting down"
    assert "Traceback" not in log and "Exception in ASGI application" not in log


def test_a_second_sigterm_ends_running_generations_at_once() -> None:
    with fake_server_process(0.02, "--shutdown-timeout-s", "60") as (proc, base):
        reader, _, first_piece = stream_in_thread(
            base, {"prompt": "go", "max_tokens": 500, "stream": True}
        )
        assert first_piece.wait(10)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _get(f"{base}/ready").status_code == 503, timeout=5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # the drain would wait ~10 s for this stream
        code = proc.wait(20)
        elapsed = time.monotonic() - started
        reader.join(5)
    assert code == 0 and elapsed < 5


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=2)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
