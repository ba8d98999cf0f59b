"""`POST /generated_texts/`: the original project's API, kept for its clients."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request

from fst.serving.api_params import ORIGINAL
from fst.serving.dependencies import StateDep, require_api_key
from fst.serving.generation import (
    check_fits_context,
    check_limit,
    make_prompt,
    refuse_unencodable_text,
    submit,
    wait_for_job,
)
from fst.serving.schemas import GeneratedTextsRequest, GeneratedTextsResponse

logger = logging.getLogger(__name__)

router = APIRouter(tags=["original API"], dependencies=[Depends(require_api_key)])

_ERRORS = {
    400: {"description": "A parameter out of range, or a prompt beyond the model's context"},
    401: {"description": "Missing or wrong API key (when the server has one)"},
    429: {"description": "Queue full; retry after the Retry-After header's seconds"},
    503: {"description": "Model still loading, or the server is shutting down"},
    504: {"description": "Generation did not finish within the request timeout"},
}


@router.post(
    "/generated_texts/",
    response_model=GeneratedTextsResponse,
    summary="Continue a text (the original API)",
    responses=_ERRORS,
)
async def generated_texts(
    payload: GeneratedTextsRequest, request: Request, state: StateDep
) -> GeneratedTextsResponse:
    """Generate `num_return_sequences` continuations of `body` (with `meta` for
    document-format models). Same fields and defaults as the original project; temperature
    0 is allowed and means greedy."""
    refuse_unencodable_text(payload)
    settings = state.settings
    generator, _ = state.require_ready()
    params = ORIGINAL.to_params(payload, generator.manifest.generation_defaults)
    check_limit(
        params.max_new_tokens,
        settings.max_new_tokens_limit,
        "max_number_of_generated_tokens",
        "tokens",
    )
    check_limit(
        params.num_return_sequences,
        settings.max_sequences_per_request,
        "num_return_sequences",
        "sequences",
    )
    prompt = make_prompt(payload.body, payload.meta, generator)
    lengths = await check_fits_context(
        generator, [prompt], params.max_new_tokens, "max_number_of_generated_tokens"
    )
    logger.debug("generated_texts prompt=%r meta=%r", payload.body[:200], payload.meta)
    job = submit(state, [prompt], params, prompt_tokens=sum(lengths))
    (completions,) = await wait_for_job(job, request)
    return GeneratedTextsResponse(texts=[c.text for c in completions])
