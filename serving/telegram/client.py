"""The one HTTP client the bot uses to reach the generation server (`fst-serve`).

httpx rather than aiohttp (which aiogram already pulls in): the rest of the project (server
tests, benchmarks) speaks httpx, its `Timeout` separates connect from read, and
`Response.aiter_lines()` makes reading server-sent events a plain loop.

The bot streams from the OpenAI-compatible `POST /v1/completions` (`stream: true`), so a
reply can grow while the model writes. A server without that route (the original project's,
answering 404) is served through `POST /generated_texts/` instead, in one piece.
A chat model (one whose bundle has a chat template: `POST /tokenize` accepts a conversation)
is talked to through `POST /v1/chat/completions`; `/tokenize` also tells how many tokens a
conversation takes, so the bot can drop old turns before it outgrows the context.
Every failure becomes a `GenerationError` whose `user_message` is safe to show in a chat.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx

from fst.serving.api_params import CHAT, COMPLETIONS, ORIGINAL
from fst.serving.telegram.chat_settings import ChatSettings

log = logging.getLogger(__name__)

COMPLETIONS_PATH = "/v1/completions"
CHAT_PATH = "/v1/chat/completions"
TOKENIZE_PATH = "/tokenize"
ORIGINAL_PATH = "/generated_texts/"


class GenerationError(Exception):
    """A generation failed. `user_message` is polite and safe to show; `detail` is for logs."""

    def __init__(self, user_message: str, detail: str) -> None:
        super().__init__(detail)
        self.user_message = user_message
        self.detail = detail


UNREACHABLE = "Sorry, the text generator is not reachable right now. Please try again later."
TOO_SLOW = (
    "Sorry, the text generator took too long. Please try again, maybe with a smaller /length."
)
BUSY = "The text generator is busy right now. Please try again in a few seconds."
FAILED = "Sorry, the text generator failed on this text. Please try again."
MISCONFIGURED = (
    "Sorry, the bot is not allowed to use its text generator. Its admin has to fix this."
)


class _CompletionsMissing(Exception):
    """The server has no /v1/completions route."""


class GenerationClient:
    """Shared by every chat; one connection pool, closed once with `aclose()`."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            # `read` bounds the wait for each streamed chunk; _stream_completions bounds the total.
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        self._has_completions = True
        self._chat: bool | None = None  # unknown until the server is asked

    async def aclose(self) -> None:
        await self._http.aclose()

    async def is_chat_model(self) -> bool:
        """Whether the served model converses (it has a chat template); asked once."""
        if self._chat is None:
            count = await self.count_tokens([{"role": "user", "content": "Hi"}])
            self._chat = count is not None
        return self._chat

    async def count_tokens(self, messages: list[dict[str, str]]) -> tuple[int, int] | None:
        """The conversation's prompt tokens and the model's context (`POST /tokenize`);
        None when the server cannot tell (no chat template, or no such route)."""
        try:
            response = await self._http.post(TOKENIZE_PATH, json={"messages": messages})
            if response.status_code in (400, 404, 422):
                return None
            if response.status_code != 200:
                raise _status_error(response)
            body = response.json()
            return int(body["count"]), int(body["max_model_len"])
        except httpx.HTTPError as e:
            raise _transport_error(e) from e
        except (ValueError, KeyError, TypeError) as e:
            raise GenerationError(FAILED, repr(e)) from e

    async def stream_chat(
        self, messages: list[dict[str, str]], settings: ChatSettings
    ) -> AsyncIterator[str]:
        """Yield the assistant's answer to `messages` piece by piece (raises GenerationError)."""
        body: dict[str, Any] = {
            **CHAT.to_body(settings.params),
            "messages": messages,
            "n": 1,
            "stream": True,
        }
        try:
            async with self._http.stream("POST", CHAT_PATH, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _status_error(response)
                async for chunk in self._events(response):
                    choices = chunk["choices"]
                    text = (choices[0]["delta"].get("content") or "") if choices else ""
                    if text:
                        yield text
        except httpx.HTTPError as e:
            raise _transport_error(e) from e
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise GenerationError(FAILED, repr(e)) from e

    async def _events(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        """The JSON chunks of a server-sent-events answer, up to `[DONE]`, within the
        client's timeout in all; an error event raises GenerationError."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        async for line in response.aiter_lines():
            if asyncio.get_running_loop().time() > deadline:
                raise GenerationError(TOO_SLOW, f"stream exceeded {self.timeout} s")
            if not line.startswith("data:"):
                continue  # blank separators, comments, `event:` lines
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise GenerationError(FAILED, f"error event: {chunk['error']!r}")
            yield chunk
        raise GenerationError(FAILED, "stream ended without [DONE]")

    async def stream(self, prompt: str, settings: ChatSettings) -> AsyncIterator[str]:
        """Yield the continuation of `prompt` piece by piece (raises GenerationError)."""
        try:
            if self._has_completions:
                try:
                    # aclosing: when our caller stops early, the HTTP stream closes now (and the
                    # server stops generating), not whenever the generator is garbage-collected.
                    async with aclosing(self._stream_completions(prompt, settings)) as pieces:
                        async for piece in pieces:
                            yield piece
                    return
                except _CompletionsMissing:
                    log.warning(
                        "%s%s answered 404; using %s",
                        self._http.base_url,
                        COMPLETIONS_PATH,
                        ORIGINAL_PATH,
                    )
                    self._has_completions = False
            yield await self._generated_texts(prompt, settings)
        except httpx.HTTPError as e:
            raise _transport_error(e) from e
        except (ValueError, KeyError, IndexError, TypeError) as e:
            # Transport errors mid-stream and malformed answers alike.
            raise GenerationError(FAILED, repr(e)) from e

    async def _stream_completions(self, prompt: str, settings: ChatSettings) -> AsyncIterator[str]:
        body: dict[str, Any] = {
            **COMPLETIONS.to_body(settings.params),
            "prompt": prompt,
            "n": 1,
            "stream": True,
        }
        if settings.meta is not None:
            body["meta"] = settings.meta
        async with self._http.stream("POST", COMPLETIONS_PATH, json=body) as response:
            if response.status_code == 404:
                raise _CompletionsMissing
            if response.status_code != 200:
                await response.aread()
                raise _status_error(response)
            async for chunk in self._events(response):
                text = chunk["choices"][0].get("text") or ""
                if text:
                    yield text

    async def _generated_texts(self, prompt: str, settings: ChatSettings) -> str:
        body = {
            **ORIGINAL.to_body(settings.params),
            "body": prompt,
            "meta": settings.meta,
            "num_return_sequences": 1,
        }
        response = await self._http.post(ORIGINAL_PATH, json=body)
        if response.status_code != 200:
            raise _status_error(response)
        texts = response.json()["texts"]
        if not isinstance(texts, list) or not texts or not isinstance(texts[0], str):
            raise ValueError(f"unexpected answer: {str(texts)[:200]}")
        return texts[0]


def _transport_error(error: httpx.HTTPError) -> GenerationError:
    """A connection that failed, timed out or broke off mid-stream."""
    if isinstance(error, httpx.ConnectTimeout | httpx.ConnectError):
        return GenerationError(UNREACHABLE, repr(error))
    if isinstance(error, httpx.TimeoutException):
        return GenerationError(TOO_SLOW, repr(error))
    return GenerationError(FAILED, repr(error))


def _status_error(response: httpx.Response) -> GenerationError:
    """Map a non-200 answer to what the user can do about it."""
    status = response.status_code
    message = _server_message(response)
    detail = f"HTTP {status} from {response.request.url}: {message}"
    if status in (401, 403):
        return GenerationError(MISCONFIGURED, detail)
    if status in (429, 503):
        return GenerationError(BUSY, detail)
    if 400 <= status < 500 and message:
        return GenerationError(
            f"The text generator could not use this request: {message}. Check /settings or /reset.",
            detail,
        )
    return GenerationError(FAILED, detail)


def _server_message(response: httpx.Response) -> str:
    """The error text of an OpenAI-style (`error.message`) or FastAPI-style (`detail`) body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    message: Any = ""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message", "")
        elif "detail" in body:
            message = body["detail"]
        else:
            message = error or body.get("message", "")
    if isinstance(message, list):  # FastAPI validation errors
        message = "; ".join(
            str(m.get("msg", m)) if isinstance(m, dict) else str(m) for m in message
        )
    return str(message)[:300]
