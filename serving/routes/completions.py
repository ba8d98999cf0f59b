"""`POST /v1/completions` and `GET /v1/models`: OpenAI-compatible, for its client and tools.

With `stream: true` the answer is server-sent events in OpenAI's chunk format: one chunk
per text piece, then one chunk per choice carrying its `finish_reason`, optionally a
usage chunk, and `data: [DONE]`. An error after the stream has started is sent as an
OpenAI error object (the official client raises it), followed by `data: [DONE]`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from fst.serving.dependencies import StateDep, require_api_key
from fst.serving.errors import APIError, openai_error
from fst.serving.generation import (
    check_fits_context,
    check_limit,
    job_error,
    make_params,
    make_prompt,
    refuse_unencodable_text,
    submit,
    wait_for_job,
)
from fst.serving.jobs import Job
from fst.serving.openai_schemas import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
)
from fst.serving.state import ServingState

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1", tags=["OpenAI-compatible API"], dependencies=[Depends(require_api_key)]
)

_NAMES = {
    "max_new_tokens": "max_tokens",
    "num_return_sequences": "n",
    "min_new_tokens": "min_tokens",
}
_FINISH = {"stop": "stop", "length": "length"}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "A parameter out of range or unsupported, or a prompt beyond the context",
        401: "Missing or wrong API key (when the server has one)",
        404: "Unknown model",
        429: "Queue full; retry after the Retry-After header's seconds",
        503: "Model still loading, or the server is shutting down",
        504: "Generation did not finish within the request timeout",
    }.items()
}


@dataclass(frozen=True)
class _Head:
    """What every response and chunk of one completion repeats."""

    id: str
    created: int
    model: str
    n: int
    echo: list[str] | None

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return _sse(body)


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _card(state: ServingState) -> ModelCard:
    context = state.generator.max_positions if state.generator is not None else None
    return ModelCard(id=state.model_name, created=state.created, max_model_len=context)


@router.get("/models", response_model=ModelList, summary="List the served model")
async def list_models(state: StateDep) -> ModelList:
    return ModelList(data=[_card(state)])


@router.get(
    "/models/{model_id}", response_model=ModelCard, summary="Describe a model", responses=_ERRORS
)
async def get_model(model_id: str, state: StateDep) -> ModelCard:
    _check_model(model_id, state.model_name)
    return _card(state)


@router.post(
    "/completions",
    response_model=CompletionResponse,
    summary="Create a completion (OpenAI-compatible)",
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def create_completion(payload: CompletionRequest, request: Request, state: StateDep) -> Any:
    """Continue one prompt or several; `stream: true` for server-sent events."""
    refuse_unencodable_text(payload)
    generator, _ = state.require_ready()
    _check_model(payload.model, state.model_name)
    _refuse_unsupported(payload)
    texts = [payload.prompt] if isinstance(payload.prompt, str) else list(payload.prompt)
    n = _or(payload.n, 1)
    max_tokens = _or(payload.max_tokens, 16)
    check_limit(max_tokens, state.settings.max_new_tokens_limit, "max_tokens", "tokens")
    check_limit(
        n * len(texts), state.settings.max_sequences_per_request, "n", "sequences (n × prompts)"
    )
    params = make_params(
        _NAMES,
        max_new_tokens=max_tokens,
        min_new_tokens=_or(payload.min_tokens, 0),
        num_return_sequences=n,
        temperature=_or(payload.temperature, 1.0),
        top_p=_or(payload.top_p, 1.0),
        top_k=_or(payload.top_k, 0),
        repetition_penalty=_or(payload.repetition_penalty, 1.0),
        presence_penalty=_or(payload.presence_penalty, 0.0),
        frequency_penalty=_or(payload.frequency_penalty, 0.0),
        stop=[payload.stop] if isinstance(payload.stop, str) else (payload.stop or []),
        seed=payload.seed,
        ignore_eos=bool(payload.ignore_eos),
    )
    prompts = [make_prompt(text, payload.meta, generator) for text in texts]
    await check_fits_context(generator, prompts, max_tokens, "max_tokens")
    logger.debug("completion prompts=%r", [t[:200] for t in texts])
    job = submit(state, prompts, params)
    head = _Head(
        id=f"cmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=state.model_name,
        n=n,
        echo=texts if payload.echo else None,
    )
    if payload.stream:
        include_usage = bool(payload.stream_options and payload.stream_options.include_usage)
        return StreamingResponse(
            _stream(job, head, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    results = await wait_for_job(job, request)
    choices, usage = _choices_and_usage(head, results)
    return CompletionResponse(
        id=head.id, created=head.created, model=head.model, choices=choices, usage=usage
    )


def _or(value: Any, default: Any) -> Any:
    """OpenAI clients may send null for 'use the default'."""
    return default if value is None else value


def _check_model(model: str | None, served: str) -> None:
    if model is not None and model != served:
        raise APIError(
            404,
            f"model: the model '{model}' does not exist; this server serves '{served}'",
            param="model",
            code="model_not_found",
        )


def _refuse_unsupported(payload: CompletionRequest) -> None:
    refusals = {
        "suffix": payload.suffix is not None,
        "logprobs": payload.logprobs is not None,
        "best_of": payload.best_of is not None and payload.best_of != _or(payload.n, 1),
        "logit_bias": bool(payload.logit_bias),
    }
    for param, refused in refusals.items():
        if refused:
            raise APIError(400, f"{param}: not supported by this server; leave it out", param=param)


def _choices_and_usage(
    head: _Head, results: list[list[Any]]
) -> tuple[list[CompletionChoice], Usage]:
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for p, completions in enumerate(results):
        prompt_tokens += completions[0].prompt_tokens if completions else 0
        for s, completion in enumerate(completions):
            text = head.echo[p] + completion.text if head.echo else completion.text
            finish = _FINISH.get(completion.finish_reason, "stop")
            choices.append(CompletionChoice(text=text, index=p * head.n + s, finish_reason=finish))
            completion_tokens += len(completion.token_ids)
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
    return choices, usage


def _choice(text: str, index: int, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}


async def _stream(job: Job, head: _Head, include_usage: bool) -> AsyncIterator[str]:
    try:
        for p, text in enumerate(head.echo or []):
            for s in range(head.n):
                yield head.chunk([_choice(text, p * head.n + s, None)])
        async for p, s, piece in job.pieces():
            yield head.chunk([_choice(piece, p * head.n + s, None)])
        if job.cancel_reason is not None:
            raise job_error(job)
        assert job.result is not None
        choices, usage = _choices_and_usage(head, job.result)
        for choice in choices:
            yield head.chunk([_choice("", choice.index, choice.finish_reason)])
        if include_usage:
            yield head.chunk([], usage=usage.model_dump())
    except APIError as exc:
        yield _sse(openai_error(exc.status, exc.message, exc.param, exc.code))
    except Exception as exc:
        error = job_error(job, exc)
        if error.status == 500:
            logger.exception("streamed generation failed")
        yield _sse(openai_error(error.status, error.message))
    finally:
        if job.result is None:  # the client left (or the stream failed): stop generating
            job.cancel("disconnect")
    yield "data: [DONE]\n\n"
