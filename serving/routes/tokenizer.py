"""`/tokenize`, `/detokenize`, `/tokenizer_info`: the served model's tokenizer, remotely.

`/tokenize` takes a text `prompt` or a conversation (`messages`, as vLLM's does: the
Telegram bot counts a conversation's tokens with it).

Evaluation harnesses tokenize requests themselves and send token ids (lm-eval's
`tokenizer_backend=remote` reads these three endpoints, as vLLM serves them), so their
token counts, context windows and log-likelihood spans are the model's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fst.serving.chat_schemas import ChatMessage
from fst.serving.dependencies import StateDep, require_api_key
from fst.serving.errors import APIError
from fst.serving.generation import refuse_unencodable_text
from fst.serving.routes.chat import tokenize_conversation
from fst.serving.routes.openai_common import check_model

router = APIRouter(tags=["tokenizer"], dependencies=[Depends(require_api_key)])


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize: a text `prompt`, or a conversation (`messages`, rendered as a chat
    request renders it)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = Field(None, description="Text to tokenize.")
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, description="A conversation, with the assistant's turn opened."
    )
    add_special_tokens: bool = Field(
        True,
        description="For `prompt`: true: the ids /v1/completions feeds the model for this "
        "text (the model's BOS or document tokens added; special tokens written in the text "
        "stay text); false: the text's own tokens, special tokens written in it as their ids "
        "(as a Hugging Face tokenizer encodes, and as lm-eval expects).",
    )

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either `prompt` (text) or `messages` (a conversation)")
        return self


class TokenizeResponse(BaseModel):
    count: int = Field(description="How many tokens.")
    max_model_len: int = Field(description="The model's context, in tokens.")
    tokens: list[int]


class DetokenizeRequest(BaseModel):
    tokens: list[int] = Field(description="Token ids; special tokens are kept in the text.")


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    eos_token: str | None
    bos_token: str | None = None
    pad_token: str | None = None
    chat_template: str | None = None
    model_max_length: int


@router.post("/tokenize", response_model=TokenizeResponse, summary="Text or a conversation to ids")
async def tokenize(payload: TokenizeRequest, state: StateDep) -> TokenizeResponse:
    refuse_unencodable_text(payload)
    generator, _ = state.require_ready()
    check_model(payload.model, state.model_name)
    if payload.messages is not None:
        ids, context = await tokenize_conversation(payload.messages, state)
        return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=context)
    tokenizer = _tokenizer(generator)
    encode = generator.encode_prompt if payload.add_special_tokens else tokenizer.encode_markup
    try:
        ids = await asyncio.to_thread(encode, payload.prompt)
    except ValueError as exc:
        raise APIError(400, f"prompt: {exc}", param="prompt") from None
    return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=generator.max_positions)


@router.post("/detokenize", response_model=DetokenizeResponse, summary="Token ids to text")
async def detokenize(payload: DetokenizeRequest, state: StateDep) -> DetokenizeResponse:
    generator, _ = state.require_ready()
    tokenizer = _tokenizer(generator)
    bad = [t for t in payload.tokens if not 0 <= t < tokenizer.vocab_size]
    if bad:
        raise APIError(
            400,
            f"tokens: {bad[0]} is not in the vocabulary [0, {tokenizer.vocab_size})",
            param="tokens",
        )
    text = tokenizer.decode(payload.tokens, skip_special_tokens=False)
    return DetokenizeResponse(prompt=text)


@router.get("/tokenizer_info", response_model=TokenizerInfo, summary="The tokenizer's tokens")
async def tokenizer_info(state: StateDep) -> TokenizerInfo:
    """The special tokens as the model's Hugging Face tokenizer declares them (lm-eval starts
    each rolling window with the BOS, else the EOS): a BOS the model never gets added (a
    chat model's, whose template writes it) is still its declared BOS."""
    generator, _ = state.require_ready()
    tokenizer = _tokenizer(generator)
    chat = getattr(generator, "chat", None)
    declared = chat.special_tokens if chat is not None else {}

    def text(token: int | None, name: str) -> str | None:
        if token is None:
            return declared.get(name)
        return tokenizer.decode([token], skip_special_tokens=False)

    return TokenizerInfo(
        eos_token=tokenizer.eos_token,
        bos_token=text(tokenizer.bos_token_id, "bos_token"),
        pad_token=declared.get("pad_token") or text(tokenizer.pad_token_id, "pad_token"),
        chat_template=chat.template if chat is not None else None,
        model_max_length=generator.max_positions,
    )


def _tokenizer(generator: Any) -> Any:
    tokenizer = getattr(generator, "tokenizer", None)
    if tokenizer is None:
        raise APIError(501, "this server's generator exposes no tokenizer")
    return tokenizer
