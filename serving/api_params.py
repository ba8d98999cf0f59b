"""One request → GenerationParams mapping per API, and back (vLLM's `to_sampling_params`).

Each API is one `ApiParams`: which of its fields is which `GenerationParams` field, and its
own defaults. A value comes from the request when the client sent it (not null), else
from the bundle's `generation_defaults`, else from the API's default. Adding a sampling
option is one entry in the API's table: the routes, the error messages (which name the
API's field) and the Telegram bot's request bodies follow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

from fst.core.generation_params import ORIGINAL_API_DEFAULTS, GenerationParams


@dataclass(frozen=True)
class ApiParams:
    """How one API names the generation parameters and what it defaults them to."""

    names: Mapping[str, str]  # GenerationParams field -> the API's field
    defaults: Mapping[str, Any]  # GenerationParams field -> the API's default (None: ours)

    def to_params(
        self, payload: BaseModel, bundle_defaults: Mapping[str, Any], **fixed: Any
    ) -> GenerationParams:
        """The request's values over the bundle's defaults over the API's; `fixed` values
        (set by the route, e.g. for `max_tokens: 0`) over all. A bundle default of a field
        the API does not expose applies too. 400 naming the API's field."""
        sent = payload.model_fields_set
        known = {f.name for f in fields(GenerationParams)}
        values = {k: v for k, v in bundle_defaults.items() if k in known}
        for ours, theirs in self.names.items():
            value = getattr(payload, theirs) if theirs in sent else None
            if value is None:
                value = bundle_defaults.get(ours, self.defaults.get(ours))
            if value is not None:
                values[ours] = value
        values.update(fixed)
        # Imported here: the Telegram bot uses this module's `to_body` without the server.
        from fst.serving.generation import make_params

        return make_params(self.names, **values)

    def to_body(self, params: GenerationParams) -> dict[str, Any]:
        """The request fields that ask this API for `params` (the Telegram bot's client)."""
        body = {theirs: getattr(params, ours) for ours, theirs in self.names.items()}
        body["stop"] = list(params.stop) if "stop" in body else None
        return {k: v for k, v in body.items() if v is not None}


_OPENAI_NAMES = {
    "max_new_tokens": "max_tokens",
    "min_new_tokens": "min_tokens",
    "num_return_sequences": "n",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "stop": "stop",
    "seed": "seed",
    "ignore_eos": "ignore_eos",
}
# OpenAI's defaults; the extras (top_k, repetition_penalty, ...) off.
_OPENAI_DEFAULTS = {
    "max_new_tokens": 16,
    "min_new_tokens": 0,
    "num_return_sequences": 1,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "ignore_eos": False,
}
COMPLETIONS = ApiParams(names=_OPENAI_NAMES, defaults=_OPENAI_DEFAULTS)
# /v1/chat/completions: the same fields; its route fixes max_new_tokens itself (from
# max_completion_tokens, max_tokens or the context left), so no default here.
CHAT = ApiParams(
    names=_OPENAI_NAMES,
    defaults={k: v for k, v in _OPENAI_DEFAULTS.items() if k != "max_new_tokens"},
)

_ORIGINAL_NAMES = {
    "max_new_tokens": "max_number_of_generated_tokens",
    "num_return_sequences": "num_return_sequences",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
}
ORIGINAL = ApiParams(
    names=_ORIGINAL_NAMES,
    defaults={ours: ORIGINAL_API_DEFAULTS[theirs] for ours, theirs in _ORIGINAL_NAMES.items()},
)
