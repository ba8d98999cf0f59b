"""`POST /v1/completions` and `GET /v1/models`: OpenAI-compatible, for its client and tools.

With `stream: true` the answer is server-sent events in OpenAI's chunk format: one chunk
per text piece, then one chunk per choice carrying its `finish_reason`, optionally a
usage chunk, and `data: [DONE]` (the frame, errors included: routes/openai_common.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request

from fst.runtime.logprobs import TokenLogprob
from fst.serving.api_params import COMPLETIONS
from fst.serving.dependencies import StateDep, require_api_key
from fst.serving.errors import APIError
from fst.serving.generation import (
    check_fits_context,
    check_limit,
    job_error,
    make_prompt,
    refuse_unencodable_text,
    submit,
    wait_for_job,
)
from fst.serving.jobs import Job
from fst.serving.openai_schemas import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    Usage,
)
from fst.serving.routes.openai_common import (
    check_model,
    error_responses,
    event_stream,
    sse,
    token_text,
)
from fst.serving.state import ServingState
from fst.serving.structured import request_constraint

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1", tags=["OpenAI-compatible API"], dependencies=[Depends(require_api_key)]
)

_FINISH = {"stop": "stop", "length": "length", "grammar_dead_end": "grammar_dead_end"}
_ERRORS = error_responses(
    "A parameter out of range or unsupported, a prompt beyond the context, or a "
    "schema, regex or grammar that does not compile"
)


@dataclass(frozen=True)
class _Head:
    """What every response and chunk of one completion repeats."""

    id: str
    created: int
    model: str
    n: int
    echo: list[str] | None  # the prompts' texts, with `echo`
    echo_only: bool  # max_tokens 0: the choice is the prompt alone
    logprobs: bool  # a logprobs object per choice
    token_text: Callable[[int], str]

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
        return sse(body)


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
    check_model(model_id, state.model_name)
    return _card(state)


@router.post(
    "/completions",
    response_model=CompletionResponse,
    summary="Create a completion (OpenAI-compatible)",
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def create_completion(payload: CompletionRequest, request: Request, state: StateDep) -> Any:
    """Continue one prompt or several; `stream: true` for server-sent events.

    `response_format` (or `guided_regex` / `guided_grammar`) constrains every choice."""
    refuse_unencodable_text(payload)
    generator, _ = state.require_ready()
    check_model(payload.model, state.model_name)
    _refuse_unsupported(payload)
    constraint = await request_constraint(payload)
    inputs = _prompt_list(payload.prompt)
    echo_only = payload.max_tokens == 0
    if echo_only and not payload.echo:
        raise APIError(
            400, "max_tokens: 0 needs echo: true (score the prompt only)", param="max_tokens"
        )
    fixed = {"max_new_tokens": 1} if echo_only else {}  # its one token is dropped
    params = COMPLETIONS.to_params(payload, generator.manifest.generation_defaults, **fixed)
    n = params.num_return_sequences
    check_limit(params.max_new_tokens, state.settings.max_new_tokens_limit, "max_tokens", "tokens")
    check_limit(
        n * len(inputs), state.settings.max_sequences_per_request, "n", "sequences (n × prompts)"
    )
    score_prompts = bool(payload.echo) and payload.logprobs is not None
    if score_prompts and not getattr(generator, "scores_prompts", False):
        raise APIError(
            400,
            "echo: with logprobs, the prompt's log-probabilities need a bundle exported with "
            "fst-export --logits all (this one returns the last position only); drop echo or "
            "logprobs, or serve such a bundle",
            param="echo",
        )
    prompts = [_prompt(p, payload.meta, generator) for p in inputs]
    lengths = await check_fits_context(generator, prompts, params.max_new_tokens, "max_tokens")
    logger.debug("completion prompts=%r", [str(p)[:200] for p in inputs])
    job = submit(
        state,
        prompts,
        params,
        prompt_tokens=sum(lengths),
        logprobs=payload.logprobs,
        prompt_logprobs=payload.logprobs if score_prompts else None,
        constraint=constraint,
    )
    tokenizer = getattr(generator, "tokenizer", None)
    head = _Head(
        id=f"cmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=state.model_name,
        n=n,
        echo=[_echo_text(p, tokenizer) for p in inputs] if payload.echo else None,
        echo_only=echo_only,
        logprobs=payload.logprobs is not None,
        token_text=token_text(tokenizer),
    )
    if payload.stream:
        include_usage = bool(payload.stream_options and payload.stream_options.include_usage)
        return event_stream(job, _stream(job, head, include_usage))
    results = await wait_for_job(job, request)
    choices, usage = _choices_and_usage(head, results)
    return CompletionResponse(
        id=head.id, created=head.created, model=head.model, choices=choices, usage=usage
    )


def _prompt_list(prompt: str | list[str] | list[int] | list[list[int]]) -> list[Any]:
    """One entry per prompt: a string or a list of token ids."""
    if isinstance(prompt, str) or isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


def _prompt(value: str | list[int], meta: str | None, generator: Any) -> Any:
    if isinstance(value, str):
        return make_prompt(value, meta, generator)
    if meta:
        raise APIError(
            400, "meta: token-id prompts take no meta (the ids are the prompt)", param="meta"
        )
    return value


def _echo_text(value: str | list[int], tokenizer: Any) -> str:
    return value if isinstance(value, str) else tokenizer.decode(value, skip_special_tokens=False)


def _or(value: Any, default: Any) -> Any:
    """OpenAI clients may send null for 'use the default'."""
    return default if value is None else value


def _refuse_unsupported(payload: CompletionRequest) -> None:
    refusals = {
        "suffix": payload.suffix is not None,
        "best_of": payload.best_of is not None and payload.best_of != _or(payload.n, 1),
        "logit_bias": bool(payload.logit_bias),
    }
    for param, refused in refusals.items():
        if refused:
            raise APIError(400, f"{param}: not supported by this server; leave it out", param=param)


def _choices_and_usage(
    head: _Head, results: list[list[Any]]
) -> tuple[list[CompletionChoice], Usage]:
    choices, prompt_tokens, completion_tokens, cached_tokens = [], 0, 0, 0
    for p, completions in enumerate(results):
        prompt_tokens += completions[0].prompt_tokens if completions else 0
        cached_tokens += getattr(completions[0], "cached_tokens", 0) if completions else 0
        for s, completion in enumerate(completions):
            echo = head.echo[p] if head.echo else ""
            text = echo if head.echo_only else echo + completion.text
            finish = "length" if head.echo_only else _FINISH.get(completion.finish_reason, "stop")
            logprobs = _logprobs(head, completion) if head.logprobs else None
            index = p * head.n + s
            choices.append(
                CompletionChoice(text=text, index=index, logprobs=logprobs, finish_reason=finish)
            )
            completion_tokens += 0 if head.echo_only else len(completion.token_ids)
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
    )
    return choices, usage


def _logprobs(head: _Head, completion: Any) -> CompletionLogprobs:
    """OpenAI's logprobs object of a choice: its echoed prompt's tokens, then the generated
    ones; `text_offset` is where each starts in the choice's text."""
    entries: list[tuple[int, TokenLogprob | None]] = []
    if head.echo:
        entries += zip(completion.prompt_token_ids, completion.prompt_logprobs, strict=True)
    if not head.echo_only:
        entries += zip(completion.token_ids, completion.logprobs, strict=True)
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    offset = 0
    for token, entry in entries:
        text = head.token_text(token)
        out.tokens.append(text)
        out.text_offset.append(offset)
        offset += len(text)
        if entry is None:  # the first prompt token: nothing before it to predict it
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        top = {head.token_text(t): lp for t, lp in entry.top}
        top.setdefault(text, entry.logprob)  # the chosen token is always there (as vLLM)
        out.token_logprobs.append(entry.logprob)
        out.top_logprobs.append(top)
    return out


def _choice(
    text: str, index: int, finish_reason: str | None, logprobs: CompletionLogprobs | None = None
) -> dict[str, Any]:
    return {
        "text": text,
        "index": index,
        "logprobs": logprobs.model_dump() if logprobs is not None else None,
        "finish_reason": finish_reason,
    }


async def _stream(job: Job, head: _Head, include_usage: bool) -> AsyncIterator[str]:
    """Text chunks as they come. With logprobs, each choice's last chunk (the one with its
    finish_reason) carries the logprobs object of its whole text, echo included: the
    prompt's are known only once it is scored, and a piece of text is not always whole
    tokens."""
    if head.echo:
        for p, text in enumerate(head.echo):
            for s in range(head.n):
                yield head.chunk([_choice(text, p * head.n + s, None)])
    async for p, s, piece in job.pieces():
        if not head.echo_only:
            yield head.chunk([_choice(piece, p * head.n + s, None)])
    if job.cancel_reason is not None:
        raise job_error(job)
    assert job.result is not None
    choices, usage = _choices_and_usage(head, job.result)
    for choice in choices:
        yield head.chunk([_choice("", choice.index, choice.finish_reason, choice.logprobs)])
    if include_usage:
        yield head.chunk([], usage=usage.model_dump())
