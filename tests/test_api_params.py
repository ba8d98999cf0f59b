"""One request → GenerationParams mapping per API: the request's values over the bundle's
generation_defaults over the API's defaults, and back to a request body (the bot's)."""

from __future__ import annotations

import pytest

from fst.core.generation_params import ORIGINAL_API_DEFAULTS, GenerationParams
from fst.serving.api_params import COMPLETIONS, ORIGINAL
from fst.serving.errors import APIError
from fst.serving.openai_schemas import CompletionRequest
from fst.serving.schemas import GeneratedTextsRequest

BUNDLE = {"temperature": 0.1, "top_k": 7, "max_new_tokens": 20, "stop": ["\n"], "unknown": 1}


def test_request_over_bundle_over_api_defaults() -> None:
    request = CompletionRequest(prompt="x", temperature=0.5, top_p=None)
    params = COMPLETIONS.to_params(request, BUNDLE)
    assert params.temperature == 0.5  # the request's
    assert (params.top_k, params.max_new_tokens, params.stop) == (7, 20, ("\n",))  # the bundle's
    assert (params.top_p, params.repetition_penalty) == (1.0, 1.0)  # OpenAI's (null = unset)
    assert COMPLETIONS.to_params(CompletionRequest(prompt="x"), {}) == GenerationParams(
        max_new_tokens=16, temperature=1.0, top_k=0, top_p=1.0
    )


def test_original_api_defaults_and_bundle_defaults_it_does_not_expose() -> None:
    params = ORIGINAL.to_params(GeneratedTextsRequest(body="x"), {"stop": ["."]})
    assert params.max_new_tokens == ORIGINAL_API_DEFAULTS["max_number_of_generated_tokens"]
    assert params.repetition_penalty == ORIGINAL_API_DEFAULTS["repetition_penalty"]
    assert params.stop == (".",)
    request = GeneratedTextsRequest(body="x", top_k=3)
    assert ORIGINAL.to_params(request, BUNDLE).top_k == 3
    assert ORIGINAL.to_params(request, BUNDLE).temperature == 0.1


def test_errors_name_the_apis_field_and_fixed_values_win() -> None:
    with pytest.raises(APIError) as error:
        COMPLETIONS.to_params(CompletionRequest(prompt="x", min_tokens=9, max_tokens=4), {})
    assert error.value.param == "min_tokens" and "max_tokens" in error.value.message
    request = CompletionRequest(prompt="x", max_tokens=0, echo=True)
    assert COMPLETIONS.to_params(request, BUNDLE, max_new_tokens=1).max_new_tokens == 1


def test_to_body_asks_the_api_for_the_same_params() -> None:
    params = GenerationParams(max_new_tokens=9, temperature=0.3, top_k=4, stop=["x"], seed=5)
    body = COMPLETIONS.to_body(params)
    assert COMPLETIONS.to_params(CompletionRequest(prompt="p", **body), BUNDLE) == params
    original = GenerationParams(max_new_tokens=9, temperature=0.3, top_k=4, top_p=0.9)
    body = ORIGINAL.to_body(original)
    assert ORIGINAL.to_params(GeneratedTextsRequest(body="p", **body), {}) == original
