"""Structured output for the HTTP routes: request fields → a checked runtime `Constraint`.

One call per route, before anything is queued::

    constraint = await request_constraint(payload)   # None when nothing is asked

`payload` is any model with `StructuredOutputFields` (OpenAI's `response_format`, and
vLLM's `guided_regex` / `guided_grammar` extras). A schema, regex or grammar that does not
compile, or more than one of them, is a 400 naming the field; compiling runs off the event
loop (a large schema can take a while).
"""

from __future__ import annotations

import asyncio

from fst.runtime.constraints import Constraint, ConstraintError
from fst.serving.errors import APIError
from fst.serving.openai_schemas import ResponseFormat, StructuredOutputFields


async def request_constraint(payload: StructuredOutputFields) -> Constraint | None:
    """The constraint a request asks for, or None; APIError 400 naming the field."""
    asked = {
        "response_format": _wants_json(payload.response_format),
        "guided_regex": payload.guided_regex is not None,
        "guided_grammar": payload.guided_grammar is not None,
    }
    fields = [name for name, given in asked.items() if given]
    if len(fields) > 1:
        raise APIError(
            400, f"{', '.join(fields)}: give at most one output constraint", param=fields[1]
        )
    if not fields:
        return None
    return await asyncio.to_thread(_compile, payload, fields[0])


def _wants_json(response_format: ResponseFormat | None) -> bool:
    return response_format is not None and response_format.type != "text"


def _compile(payload: StructuredOutputFields, field: str) -> Constraint:
    param = field
    try:
        if field == "guided_regex":
            assert payload.guided_regex is not None
            return Constraint.regex(payload.guided_regex)
        if field == "guided_grammar":
            assert payload.guided_grammar is not None
            return Constraint.grammar_text(payload.guided_grammar)
        response_format = payload.response_format
        assert response_format is not None
        if response_format.type == "json_object":
            return Constraint.json_object()
        param = "response_format.json_schema"
        if response_format.json_schema is None:
            raise ConstraintError("required when response_format.type is 'json_schema'")
        param = "response_format.json_schema.schema"
        return Constraint.json_schema(response_format.json_schema.schema_)
    except ConstraintError as exc:
        raise APIError(400, f"{param}: {exc}", param=param) from None
