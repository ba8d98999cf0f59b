"""What both generation APIs share: params, prompts, the context check, queuing, waiting.

Each helper turns a problem into an `APIError` whose message names the API's own field,
so `/generated_texts/` and `/v1/completions` refuse the same things the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from fst.core.generation_params import GenerationParams
from fst.runtime import GenerationRequest
from fst.serving.errors import APIError
from fst.serving.jobs import (
    GenerationTimeoutError,
    Job,
    QueueFullError,
    SchedulerClosedError,
)
from fst.serving.state import ServingState

logger = logging.getLogger(__name__)


def refuse_unencodable_text(payload: BaseModel) -> None:
    """400 for a string field holding a lone UTF-16 surrogate.

    JSON may escape one (`"ab\\ud800cd"` is valid JSON and Python keeps it), but it is not
    Unicode text: UTF-8 cannot encode it, so the tokenizer, the logs and our own error
    messages would fail on it. Checked first, so nothing downstream sees such a string.
    """
    for field, value in payload:
        for text in _strings(value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                char = ascii(text[exc.start])  # '\\ud800': safe to print and to log
                raise APIError(
                    400,
                    f"{field}: contains a lone UTF-16 surrogate ({char} at character "
                    f"{exc.start}), which is not valid Unicode text; send UTF-8 text",
                    param=field,
                ) from None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, BaseModel):
        for _, item in value:
            yield from _strings(item)


def check_limit(value: int, limit: int, param: str, what: str) -> None:
    if value > limit:
        raise APIError(
            400, f"{param}: at most {limit} {what} per request, got {value}", param=param
        )


def make_params(names: Mapping[str, str], **values: Any) -> GenerationParams:
    """GenerationParams from API values; `names` maps our field names to the API's."""
    try:
        return GenerationParams(**values)
    except ValueError as exc:
        message = str(exc)
        field = message.split(" ", 1)[0].rstrip(":")
        for ours, theirs in names.items():
            message = message.replace(ours, theirs)
        raise APIError(400, message, param=names.get(field, field)) from None


def make_prompt(text: str, meta: str | None, generator: Any) -> Any:
    """A document for document-format bundles, the text itself for plain language models."""
    if generator.manifest.tokenizer.document_format:
        return {"body": text, "meta": meta}
    if meta:  # as the runtime: an empty meta is no meta
        raise APIError(
            400,
            "meta: this model is a plain language model (not trained with the document "
            "format), so it takes no meta; send the prompt alone",
            param="meta",
        )
    return text


async def check_fits_context(
    generator: Any, prompts: Sequence[Any], max_new_tokens: int, param: str
) -> list[int]:
    """Refuse (400) a prompt that, with `max_new_tokens` more, overflows the model's context;
    returns the prompts' lengths in tokens."""
    try:
        lengths = await asyncio.to_thread(
            lambda: [len(generator.encode_prompt(p)) for p in prompts]
        )
    except ValueError as exc:
        raise APIError(400, f"prompt: {exc}", param="prompt") from None
    check_lengths_fit(lengths, generator.max_positions, max_new_tokens, param)
    return lengths


def check_lengths_fit(
    lengths: Sequence[int], context: int, max_new_tokens: int, param: str
) -> None:
    """The check of `check_fits_context` on prompt lengths already known (a route that
    encoded its prompt need not encode it again)."""
    for i, length in enumerate(lengths):
        where = f"prompt {i}" if len(lengths) > 1 else "prompt"
        if length == 0:
            raise APIError(400, f"{where} is empty: give at least one token", param="prompt")
        if length + max_new_tokens > context:
            raise APIError(
                400,
                f"{where} has {length} tokens and {param} is {max_new_tokens}: together "
                f"{length + max_new_tokens}, beyond the model's context of {context} tokens; "
                f"shorten the prompt or lower {param}",
                param=param,
            )


def submit(
    state: ServingState,
    prompts: Sequence[Any],
    params: GenerationParams,
    prompt_tokens: int | None = None,
    **options: Any,
) -> Job:
    """Queue one generation request per prompt; `prompt_tokens`: their lengths' sum, which
    the scheduler's prefill budget counts; `options` are GenerationRequest's others
    (`logprobs`, `prompt_logprobs`, `constraint`)."""
    _, scheduler = state.require_ready()
    requests = [GenerationRequest(prompt=p, params=params, **options) for p in prompts]
    try:
        return scheduler.submit(
            requests, timeout_s=state.settings.request_timeout_s, prompt_tokens=prompt_tokens
        )
    except QueueFullError as exc:
        raise APIError(
            429,
            f"{exc}; retry in {exc.retry_after_s} s",
            code="queue_full",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None
    except SchedulerClosedError as exc:
        raise APIError(503, str(exc)) from None


def job_error(job: Job, exc: BaseException | None = None) -> APIError:
    """The APIError for a job that did not complete: timed out, shut down, or failed."""
    if isinstance(exc, GenerationTimeoutError) or job.cancel_reason == "timeout":
        return APIError(504, "generation timed out; ask for fewer tokens or retry later")
    if isinstance(exc, SchedulerClosedError) or job.cancel_reason == "shutdown":
        return APIError(503, "the server is shutting down")
    if job.cancel_reason == "disconnect":
        return APIError(499, "the client closed the request")
    return APIError(500, "generation failed")


async def wait_for_job(job: Job, request: Request) -> list[list[Any]]:
    """Wait for a job's completions; cancel it if the client goes away meanwhile."""
    waiter = asyncio.ensure_future(job.wait())
    watcher = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            job.cancel("disconnect")
            logger.info("client left; generation cancelled")
            raise job_error(job)
        try:
            results = waiter.result()
        except Exception as exc:
            raise job_error(job, exc) from None
        if job.cancel_reason is not None:
            raise job_error(job)
        return results
    finally:
        for task in (waiter, watcher):
            task.cancel()


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so only that can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
