"""What the OpenAI-compatible routes share: the model check, the documented errors, a
token's text for logprobs, and the frame of a server-sent-event stream.

An error after a stream has started is sent as an OpenAI error object (the official client
raises it), a client that leaves cancels its generation, and `data: [DONE]` always ends
the stream: one place for the three, so completions and chat cannot drift apart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from fastapi.responses import StreamingResponse

from fst.serving.errors import APIError, openai_error
from fst.serving.generation import job_error
from fst.serving.jobs import Job
from fst.serving.openai_schemas import ErrorResponse

logger = logging.getLogger(__name__)


def error_responses(bad_request: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a generation route; `bad_request` says what a 400 is."""
    return {
        code: {"model": ErrorResponse, "description": text}
        for code, text in {
            400: bad_request,
            401: "Missing or wrong API key (when the server has one)",
            404: "Unknown model",
            429: "Queue full; retry after the Retry-After header's seconds",
            503: "Model still loading, or the server is shutting down",
            504: "Generation did not finish within the request timeout",
        }.items()
    }


def check_model(model: str | None, served: str) -> None:
    if model is not None and model != served:
        shown = model if len(model) <= 100 else f"{model[:100]}…"  # never echo 64 KB back
        raise APIError(
            404,
            f"model: the model '{shown}' does not exist; this server serves '{served}'",
            param="model",
            code="model_not_found",
        )


def token_text(tokenizer: Any) -> Callable[[int], str]:
    """A token's text as the logprobs show it (special tokens included)."""
    if tokenizer is None:
        return str
    return lambda token: tokenizer.decode([token], skip_special_tokens=False)


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


def event_stream(job: Job, chunks: AsyncIterator[str]) -> StreamingResponse:
    """`chunks` (a route's SSE lines for `job`) as a response in OpenAI's stream frame."""
    return StreamingResponse(
        _framed(job, chunks),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _framed(job: Job, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk
    except APIError as exc:
        yield sse(openai_error(exc.status, exc.message, exc.param, exc.code))
    except Exception as exc:
        error = job_error(job, exc)
        if error.status == 500:
            logger.exception("streamed generation failed")
        yield sse(openai_error(error.status, error.message))
    finally:
        if job.result is None:  # the client left (or the stream failed): stop generating
            job.cancel("disconnect")
    yield "data: [DONE]\n\n"
