"""Request and response models of the original API and the operational endpoints.

Field descriptions and examples are what Swagger (/docs) shows. The OpenAI-compatible
models live in `openai_schemas.py`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fst.core.generation_params import (
    MAX_REPETITION_PENALTY,
    MAX_TEMPERATURE,
    MIN_REPETITION_PENALTY,
    MIN_TEMPERATURE,
    ORIGINAL_API_DEFAULTS,
)

_D = ORIGINAL_API_DEFAULTS


class GeneratedTextsRequest(BaseModel):
    """The original project's request, same fields and defaults (its clients keep working).

    Types are strict: a number sent as a string, or a boolean for a number, is a 400.
    """

    model_config = ConfigDict(
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "body": "Man is a rope, tied between beast and",
                    "meta": "Thus Spoke Zarathustra",
                    "max_number_of_generated_tokens": 32,
                    "temperature": 0.7,
                    "top_k": 50,
                    "top_p": 1.0,
                    "repetition_penalty": 5.0,
                    "num_return_sequences": 2,
                }
            ]
        },
    )

    body: str = Field(description="The text to continue (the document body).")
    meta: str | None = Field(
        None,
        description="Document meta (title, tags…) for bundles trained with the document "
        "format; a plain language-model bundle refuses it (400).",
    )
    max_number_of_generated_tokens: int = Field(
        _D["max_number_of_generated_tokens"],
        ge=1,
        description="Most tokens to generate per text (also limited by the server and the "
        "model's context).",
    )
    temperature: float = Field(
        _D["temperature"],
        ge=0.0,
        le=MAX_TEMPERATURE,
        description=f"Sampling temperature: 0 means greedy (the original API required > 0), "
        f"otherwise in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}].",
    )
    top_k: int = Field(
        _D["top_k"], ge=0, description="Sample among the k most likely tokens; 0 turns it off."
    )
    top_p: float = Field(
        _D["top_p"],
        gt=0.0,
        le=1.0,
        description="Nucleus sampling: the smallest set of tokens whose probability reaches "
        "top_p; 1 turns it off.",
    )
    repetition_penalty: float = Field(
        _D["repetition_penalty"],
        ge=MIN_REPETITION_PENALTY,
        le=MAX_REPETITION_PENALTY,
        description="Penalty for tokens already present (CTRL-style); 1 turns it off.",
    )
    num_return_sequences: int = Field(
        _D["num_return_sequences"], ge=1, description="How many texts to generate."
    )


class GeneratedTextsResponse(BaseModel):
    texts: list[str] = Field(
        description="The generated continuations (without the prompt).",
        examples=[[" the overman: a rope over an abyss."]],
    )


class HealthResponse(BaseModel):
    status: Literal["ok", "failed"] = Field(
        "ok", description="'ok': the process works; 'failed': the model could not be loaded."
    )
    detail: str | None = Field(None, description="Why loading failed, if it did.")


class ReadyResponse(BaseModel):
    status: Literal["loading", "ready", "stopping", "failed"] = Field(
        description="'ready' once the model is loaded and warmed up."
    )
    detail: str | None = Field(None, description="Why the server is not ready, if it says.")


class VersionResponse(BaseModel):
    version: str = Field(description="The fst package version.")
    model: str = Field(description="The model id clients pass to /v1/completions.")
    provider: str | None = Field(None, description="The ONNX Runtime execution provider.")
    bundle: dict[str, Any] | None = Field(
        None,
        description="Summary of the bundle manifest (architecture, variant, training "
        "step, parity figures); null while loading.",
    )
