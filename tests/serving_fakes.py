"""A fake Generator for the server's plumbing tests, and a real-uvicorn harness.

The fake implements the `fst.runtime.Generator` interface the server uses (manifest,
provider, max_positions, encode_prompt, generate, run, and the step-level `new_batch` that
the default continuous batching drives) with a character-level "model": each generated
character is a pure function of the prompt, the sequence index and the step, so a
request's text never depends on what shares its batch. It records every batch (each
`run` call or `add` to a running batch), can be made slow per step, and can hold its
warm-up until a test releases it. It satisfies `fst.serving.generator_protocol.ServedGenerator`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fst.core.bundle import BundleManifest, ChatInfo
from fst.core.generation_params import GenerationParams
from fst.runtime import ChatPrompt, GenerationRequest


def fake_manifest(document_format: bool, max_positions: int) -> BundleManifest:
    return BundleManifest.model_validate(
        {
            "created_at": "2024-01-01T00:00:00Z",
            "architecture": {
                "model_type": "fake",
                "num_layers": 1,
                "num_heads": 1,
                "head_dim": 4,
                "hidden_size": 4,
                "vocab_size": 256,
                "max_positions": max_positions,
            },
            "graph": {"opset": 17, "inputs": [], "outputs": []},
            "tokenizer": {
                "document_format": document_format,
                "eos_token_id": None,
                "pad_token_id": None,
            },
            "training": {"source": "fake", "global_step": 7},
            "versions": {},
            "files": {},
            "parity": {
                "max_abs_diff": 0.0,
                "logit_scale": 1.0,
                "top1_agreement": 1.0,
                "checked_positions": 1,
                "passed": True,
            },
        }
    )


@dataclass
class FakeCompletion:
    prompt: Any
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    index: int


class FakeGenerator:
    provider = "FakeExecutionProvider"

    def __init__(
        self,
        document_format: bool = False,
        max_positions: int = 512,
        step_s: float = 0.0,
        hold_warmup: threading.Event | None = None,
        fail_on: str | None = None,
        chat: ChatInfo | None = None,
    ) -> None:
        self.manifest = fake_manifest(document_format, max_positions)
        self.chat = chat  # a chat template: /v1/chat/completions renders with it
        self.max_positions = max_positions
        self.step_s = step_s
        self.hold_warmup = hold_warmup
        self.fail_on = fail_on  # a prompt body that makes run() raise
        self.batches: list[int] = []  # sequences per run() call
        self.requests: list[Any] = []  # every GenerationRequest run
        self.cancelled_sequences = 0
        self.lock = threading.Lock()

    # -- the Generator interface ---------------------------------------------------------------
    def encode_prompt(self, prompt: Any) -> list[int]:
        if isinstance(prompt, ChatPrompt):
            return list(prompt.text.encode())
        if isinstance(prompt, Mapping):
            body, meta = prompt["body"], prompt.get("meta")
            meta_ids = list(meta.encode()) + [1] if meta is not None else []
            return meta_ids + [2] + list(body.encode())
        return list(prompt.encode())

    def generate(
        self, prompts: Any, params: GenerationParams | None = None, **overrides: Any
    ) -> list[FakeCompletion]:
        if self.hold_warmup is not None:
            self.hold_warmup.wait(10)
        params = (params or GenerationParams()).with_overrides(**overrides)
        prompts = [prompts] if isinstance(prompts, (str, Mapping)) else list(prompts)
        results = self.run([GenerationRequest(prompt=p, params=params) for p in prompts])
        return [c for per_prompt in results for c in per_prompt]

    def run(
        self,
        requests: Sequence[Any],
        on_piece: Callable[[int, int, str], None] | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> list[list[FakeCompletion]]:
        with self.lock:
            self.batches.append(sum(r.params.num_return_sequences for r in requests))
            self.requests.extend(requests)
        if self.fail_on is not None and any(self._body(r.prompt) == self.fail_on for r in requests):
            raise RuntimeError("fake failure")
        seqs = [
            _Seq(ri, si, self.encode_prompt(r.prompt), r.params)
            for ri, r in enumerate(requests)
            for si in range(r.params.num_return_sequences)
        ]
        while any(not s.finish for s in seqs):
            if self.step_s:
                time.sleep(self.step_s)
            for s in seqs:
                if s.finish:
                    continue
                if is_cancelled is not None and is_cancelled(s.request):
                    s.finish = "cancelled"
                    with self.lock:
                        self.cancelled_sequences += 1
                else:
                    s.step()
                if on_piece is not None:
                    piece = s.take_final_text()
                    if piece:
                        on_piece(s.request, s.index, piece)
        return [
            [
                FakeCompletion(r.prompt, s.text, s.tokens, s.finish, len(s.prompt_ids), s.index)
                for s in seqs
                if s.request == ri
            ]
            for ri, r in enumerate(requests)
        ]

    def new_batch(self) -> FakeBatch:
        """The step-level API (`fst.runtime.DecodeBatch`'s add / step / cancel)."""
        return FakeBatch(self)

    @staticmethod
    def _body(prompt: Any) -> str:
        return prompt["body"] if isinstance(prompt, Mapping) else prompt


class FakeRow:
    """One sample decoding in a FakeBatch (the attributes the scheduler reads of a Row)."""

    def __init__(self, request: Any, tag: Any, index: int, seq: _Seq) -> None:
        self.request, self.tag, self.index, self.seq = request, tag, index, seq
        self.error: BaseException | None = None

    @property
    def finish_reason(self) -> str | None:
        return self.seq.finish

    def completion(self) -> FakeCompletion:
        s = self.seq
        finish = s.finish or "cancelled"
        return FakeCompletion(
            self.request.prompt, s.text, s.tokens, finish, len(s.prompt_ids), s.index
        )


class FakeBatch:
    """`DecodeBatch` over the fake model: rows join with `add`, `step` decodes one token
    each, `cancel` ends a row, reported finished by the next step (as the runtime does)."""

    def __init__(self, fake: FakeGenerator) -> None:
        self.fake = fake
        self.rows: list[FakeRow] = []
        self._cancelled: list[FakeRow] = []

    @property
    def live_rows(self) -> list[FakeRow]:
        return [row for row in self.rows if row.finish_reason is None]

    def add(self, requests: Sequence[Any], tags: Sequence[Any]) -> list[list[FakeRow]]:
        fake = self.fake
        with fake.lock:
            fake.batches.append(sum(r.params.num_return_sequences for r in requests))
            fake.requests.extend(requests)
        if fake.fail_on is not None and any(fake._body(r.prompt) == fake.fail_on for r in requests):
            raise RuntimeError("fake failure")
        per_request = [
            [
                FakeRow(r, tag, k, _Seq(i, k, fake.encode_prompt(r.prompt), r.params))
                for k in range(r.params.num_return_sequences)
            ]
            for i, (r, tag) in enumerate(zip(requests, tags, strict=True))
        ]
        self.rows = self.live_rows + [row for rows in per_request for row in rows]
        return per_request

    def cancel(self, row: FakeRow) -> None:
        if row.seq.finish is None:
            row.seq.finish = "cancelled"
            self._cancelled.append(row)
            with self.fake.lock:
                self.fake.cancelled_sequences += 1

    def step(self) -> list[Any]:
        events, self._cancelled = [_Event(r, "", True) for r in self._cancelled], []
        if self.fake.step_s:
            time.sleep(self.fake.step_s)
        for row in self.live_rows:
            row.seq.step()
            piece = row.seq.take_final_text()
            if row.seq.finish or piece:
                events.append(_Event(row, piece, row.seq.finish is not None))
        self.rows = self.live_rows
        return events


@dataclass
class _Event:
    row: FakeRow
    piece: str
    finished: bool


def fake_token(prompt_ids: list[int], seq_index: int, step: int) -> int:
    """The fake model: a letter or a space, fixed by the prompt, sequence and step."""
    value = (sum(prompt_ids) + 7 * step + 3 * seq_index) % 27
    return 32 if value == 26 else 97 + value


class _Seq:
    def __init__(self, request: int, index: int, prompt_ids: list[int], params: Any) -> None:
        self.request, self.index, self.prompt_ids, self.params = request, index, prompt_ids, params
        self._base = sum(prompt_ids)  # fake_token's sum, once (prompts may be long)
        self.tokens: list[int] = []
        self.text = ""
        self.finish: str | None = None
        self.sent = 0

    def step(self) -> None:
        value = (self._base + 7 * len(self.tokens) + 3 * self.index) % 27  # = fake_token
        self.tokens.append(32 if value == 26 else 97 + value)
        self.text = bytes(self.tokens).decode()
        for stop in self.params.stop:
            if stop in self.text:
                self.text = self.text[: self.text.index(stop)]
                self.finish = "stop"
                return
        if len(self.tokens) >= self.params.max_new_tokens:
            self.finish = "length"

    def take_final_text(self) -> str:
        """Text that can no longer change: hold back what could start a stop string."""
        hold = 0 if self.finish else max((len(s) - 1 for s in self.params.stop), default=0)
        end = max(self.sent, len(self.text) - hold)
        piece, self.sent = self.text[self.sent : end], end
        return piece


# -- a real uvicorn on 127.0.0.1 ---------------------------------------------------------------
@contextlib.contextmanager
def running_server(app: Any, ready_timeout: float = 15.0) -> Iterator[str]:
    """Serve `app` as fst-serve does (`build_server`: its limits, deadlines and drain) on a
    free port in a thread; yield its base URL; always stop."""
    import httpx

    from fst.serving.server import build_server

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = build_server(app, app.state.serving.settings)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("server did not become ready")
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def _serve_fake_main() -> None:
    """`python serving_fakes.py STEP_S [fst-serve flags]`: serve a slow fake as fst-serve
    does, on a free port (for the signal tests); prints the port, then serves in the main
    thread (so it handles signals) and exits with fst-serve's exit status."""
    import logging
    import sys

    from fst.serving.app import create_app
    from fst.serving.cli import load_settings, run
    from fst.serving.server import build_server

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    settings = load_settings(sys.argv[2:])
    app = create_app(settings, generator=FakeGenerator(step_s=float(sys.argv[1])))
    sys.exit(run(build_server(app, settings), sockets=[sock]))


if __name__ == "__main__":
    _serve_fake_main()
