"""`POST /v1/chat/completions` (OpenAI-compatible), and the conversations of `POST /tokenize`.

The conversation is rendered by the bundle's chat template with the assistant's turn
opened (`fst.runtime.chat`), tokenized as the template wrote it (its own BOS, if any; none
added), and generated through the same scheduler as /v1/completions, so both share the
continuous batch. Rows end at the model's end-of-turn tokens. A bundle without a chat
template (a document model) answers 400. With `stream: true` the answer is OpenAI's
`chat.completion.chunk` events: a `delta.role` chunk per choice, `delta.content` pieces,
a chunk per choice with its `finish_reason`, optionally a usage chunk, and `data: [DONE]`.

Structured output (`response_format`, `guided_regex`, `guided_grammar`) and tool calling
(`tools`, `tool_choice`: serving/tools.py) constrain and parse the answer: a choice that
calls functions has `message.tool_calls` and `finish_reason: "tool_calls"`, streamed as
`delta.tool_calls` once the answer is complete (text before the call streams as it comes).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request

from fst.core.chat_template import ChatTemplateError
from fst.runtime.chat import NotAChatModel, render_chat
from fst.runtime.requests import ChatPrompt
from fst.serving.api_params import CHAT
from fst.serving.chat_schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChoiceLogprobs,
    TokenLogprobEntry,
    TopLogprob,
)
from fst.serving.dependencies import StateDep, require_api_key
from fst.serving.errors import APIError
from fst.serving.generation import (
    check_lengths_fit,
    check_limit,
    job_error,
    refuse_unencodable_text,
    submit,
    wait_for_job,
)
from fst.serving.generator_protocol import ServedGenerator
from fst.serving.jobs import Job
from fst.serving.openai_schemas import PromptTokensDetails, Usage
from fst.serving.routes.openai_common import (
    check_model,
    error_responses,
    event_stream,
    sse,
    token_text,
)
from fst.serving.state import ServingState
from fst.serving.structured import request_constraint
from fst.serving.tools import ToolPlan, ToolStream, parse_tool_calls, plan_tools, tool_messages

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1", tags=["OpenAI-compatible API"], dependencies=[Depends(require_api_key)]
)

_ERRORS = error_responses(
    "A parameter out of range or unsupported, a conversation the chat template "
    "refuses or beyond the context, or a model without a chat template"
)


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    summary="Create a chat completion (OpenAI-compatible)",
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def create_chat_completion(
    payload: ChatCompletionRequest, request: Request, state: StateDep
) -> Any:
    """Answer a conversation as its assistant; `stream: true` for server-sent events."""
    refuse_unencodable_text(payload)
    generator, _ = state.require_ready()
    check_model(payload.model, state.model_name)
    _refuse_unsupported(payload)
    plan = plan_tools(payload.tools, payload.tool_choice, payload.parallel_tool_calls is not False)
    constraint = await request_constraint(payload)
    if plan.constraint is not None:
        if constraint is not None:
            raise APIError(
                400,
                "tool_choice: 'required' or a named function already constrains the answer; "
                "leave out response_format / guided_regex / guided_grammar",
                param="tool_choice",
            )
        constraint = plan.constraint
    prompt = _render(generator, payload.messages, plan)
    length = await _prompt_length(generator, prompt)
    _, max_tokens = _max_tokens(payload, generator, length, state)
    defaults = generator.manifest.generation_defaults
    params = CHAT.to_params(payload, defaults, max_new_tokens=max_tokens)
    n = params.num_return_sequences
    check_limit(n, state.settings.max_sequences_per_request, "n", "sequences")
    logger.debug("chat prompt=%r", prompt.text[-400:])
    logprobs = (payload.top_logprobs or 0) if payload.logprobs else None
    job = submit(
        state, [prompt], params, prompt_tokens=length, constraint=constraint, logprobs=logprobs
    )
    head = _Head(
        f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), state.model_name, n,
        token_text(getattr(generator, "tokenizer", None)) if logprobs is not None else None,
    )  # fmt: skip
    if payload.stream:
        include_usage = bool(payload.stream_options and payload.stream_options.include_usage)
        return event_stream(job, _stream(job, head, include_usage, plan))
    results = await wait_for_job(job, request)
    choices, usage = _choices_and_usage(results, plan, head.token_text)
    return ChatCompletionResponse(
        id=head.id, created=head.created, model=head.model, choices=choices, usage=usage
    )


async def tokenize_conversation(messages: list[ChatMessage], state: Any) -> tuple[list[int], int]:
    """vLLM's /tokenize for `messages` (routes/tokenizer.py serves it): the prompt a chat
    request would use, so a client (the Telegram bot) can drop old turns before the
    conversation outgrows the context. Returns the ids and the model's context."""
    generator, _ = state.require_ready()
    prompt = _render(generator, messages)
    return await _encode(generator, prompt), generator.max_positions


def _refuse_unsupported(payload: ChatCompletionRequest) -> None:
    if payload.top_logprobs is not None and not payload.logprobs:
        raise APIError(
            400, "top_logprobs: needs logprobs set to true (as OpenAI's)", param="top_logprobs"
        )
    refusals = {"logit_bias": bool(payload.logit_bias)}
    for param, refused in refusals.items():
        if refused:
            raise APIError(400, f"{param}: not supported by this server; leave it out", param=param)


def _render(
    generator: ServedGenerator, messages: list[ChatMessage], plan: ToolPlan | None = None
) -> ChatPrompt:
    conversation = [m.for_template() for m in messages]
    tools = None
    if generator.chat is not None:  # tools, tool calls and results as the template takes them
        conversation, tools = tool_messages(conversation, plan or ToolPlan([], None),
                                            generator.chat.template)  # fmt: skip
    try:
        return render_chat(generator.chat, conversation, tools)
    except NotAChatModel as exc:
        raise APIError(400, f"model: {exc}", param="model", code="no_chat_template") from None
    except ChatTemplateError as exc:
        raise APIError(400, f"messages: {exc}", param="messages") from None


async def _encode(generator: ServedGenerator, prompt: ChatPrompt) -> list[int]:
    try:
        return await asyncio.to_thread(generator.encode_prompt, prompt)
    except ValueError as exc:
        raise APIError(400, f"messages: {exc}", param="messages") from None


async def _prompt_length(generator: ServedGenerator, prompt: ChatPrompt) -> int:
    length = len(await _encode(generator, prompt))
    if length == 0:
        raise APIError(400, "messages: the conversation renders to no tokens", param="messages")
    return length


def _max_tokens(
    payload: ChatCompletionRequest, generator: ServedGenerator, length: int, state: ServingState
) -> tuple[str, int]:
    """The API's name for the token limit and its value: the one asked for (checked against
    the server's limit and the context), else what the context has left, up to the limit."""
    limit = state.settings.max_new_tokens_limit
    if payload.max_completion_tokens is not None or payload.max_tokens is None:
        param, asked = "max_completion_tokens", payload.max_completion_tokens
    else:
        param, asked = "max_tokens", payload.max_tokens
    if asked is None:
        room = generator.max_positions - length
        if room < 1:
            raise APIError(
                400,
                f"messages: the conversation has {length} tokens and the model's context is "
                f"{generator.max_positions} tokens: no room for an answer; shorten it",
                param="messages",
            )
        return param, min(limit, room)
    check_limit(asked, limit, param, "tokens")
    check_lengths_fit([length], generator.max_positions, asked, param)  # encoded once
    return param, asked


def _choices_and_usage(
    results: list[list[Any]], plan: ToolPlan, token_text: Callable[[int], str] | None = None
) -> tuple[list[ChatChoice], Usage]:
    completions = results[0]
    choices = [_choice(c, plan, token_text) for c in completions]
    prompt_tokens = completions[0].prompt_tokens if completions else 0
    completion_tokens = sum(len(c.token_ids) for c in completions)
    cached = getattr(completions[0], "cached_tokens", 0) if completions else 0
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )
    return choices, usage


_FINISH = {"length": "length", "grammar_dead_end": "grammar_dead_end"}


def _choice(
    completion: Any, plan: ToolPlan, token_text: Callable[[int], str] | None = None
) -> ChatChoice:
    finish = _FINISH.get(completion.finish_reason, "stop")
    logprobs = _logprobs(completion, token_text) if token_text is not None else None
    if plan.active:
        content, calls = parse_tool_calls(completion.text)
        if calls:
            message = AssistantMessage(content=content, tool_calls=calls)
            return ChatChoice(
                index=completion.index, message=message, logprobs=logprobs,
                finish_reason="tool_calls",
            )  # fmt: skip
    message = AssistantMessage(content=completion.text)
    return ChatChoice(
        index=completion.index, message=message, logprobs=logprobs, finish_reason=finish
    )


def _logprobs(completion: Any, token_text: Callable[[int], str]) -> ChoiceLogprobs:
    """OpenAI's chat logprobs: one entry per generated token, with its top alternatives."""

    def top(token: int, logprob: float) -> TopLogprob:
        text = token_text(token)
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

    content = [
        TokenLogprobEntry(
            **top(entry.token_id, entry.logprob).model_dump(),
            top_logprobs=[top(t, lp) for t, lp in entry.top],
        )
        for entry in completion.logprobs or []
    ]
    return ChoiceLogprobs(content=content)


@dataclass(frozen=True)
class _Head:
    """What every chunk of one chat completion repeats."""

    id: str
    created: int
    model: str
    n: int
    token_text: Callable[[int], str] | None = None  # set when the request asked for logprobs

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return sse(body)


def _held_deltas(held: ToolStream, text: str) -> list[dict[str, Any]]:
    """What a choice's ToolStream held back: the rest of its content, then its calls."""
    rest, calls = held.finish(text)
    deltas: list[dict[str, Any]] = [{"content": rest}] if rest else []
    for i, call in enumerate(calls):
        deltas.append({"tool_calls": [{"index": i, **call.model_dump()}]})
    return deltas


def _delta(
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    logprobs: ChoiceLogprobs | None = None,
) -> dict[str, Any]:
    return {
        "index": index,
        "delta": delta,
        "logprobs": logprobs.model_dump() if logprobs is not None else None,
        "finish_reason": finish_reason,
    }


async def _stream(job: Job, head: _Head, include_usage: bool, plan: ToolPlan) -> AsyncIterator[str]:
    held = [ToolStream() for _ in range(head.n)] if plan.active else None
    for s in range(head.n):
        yield head.chunk([_delta(s, {"role": "assistant", "content": ""})])
    async for _, s, piece in job.pieces():
        if held is not None:
            piece = held[s].push(piece)
        if piece:
            yield head.chunk([_delta(s, {"content": piece})])
    if job.cancel_reason is not None:
        raise job_error(job)
    assert job.result is not None
    choices, usage = _choices_and_usage(job.result, plan, head.token_text)
    for choice, completion in zip(choices, job.result[0], strict=True):
        if held is not None:
            for delta in _held_deltas(held[choice.index], completion.text):
                yield head.chunk([_delta(choice.index, delta)])
        last = _delta(choice.index, {}, choice.finish_reason, choice.logprobs)
        yield head.chunk([last])
    if include_usage:
        yield head.chunk([], usage=usage.model_dump())
