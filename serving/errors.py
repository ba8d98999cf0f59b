"""Errors as JSON: OpenAI's shape under /v1, FastAPI's `{"detail": ...}` elsewhere.

Every error a client can cause is a 4xx whose message names the field; anything unexpected
is logged with its traceback and answered with a bare 500 (no internals leak).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

# OpenAI's error `type` for each status we send.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout",
}


class ErrorResponse(JSONResponse):
    """JSON that always encodes: an error may quote a client's invalid text (a lone
    surrogate), which UTF-8 cannot hold, so such a body falls back to ASCII escapes."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


class APIError(Exception):
    """A refusal with a status, a message naming the field, and optional headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The body OpenAI sends (and its client parses) for an error."""
    return {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def _is_openai_route(request: Request) -> bool:
    path = request.url.path
    return path == "/v1" or path.startswith("/v1/")


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    """`("temperature: Input should be greater than or equal to 0", "temperature")`."""
    messages, first_param = [], None
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        if error.get("type") == "json_invalid":
            messages.append(f"malformed JSON body: {error.get('ctx', {}).get('error', 'invalid')}")
            continue
        param = ".".join(loc) or None
        first_param = first_param or param
        text = str(error.get("msg", "invalid value"))
        if param is None and error.get("type") == "missing":
            text = "a JSON request body is required"
        messages.append(f"{param}: {text}" if param else text)
    return "; ".join(messages) or "invalid request", first_param


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    if _is_openai_route(request):
        body = openai_error(exc.status, exc.message, exc.param, exc.code)
    else:
        body = {"detail": exc.message}
    return ErrorResponse(body, status_code=exc.status, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if not _is_openai_route(request):  # FastAPI's own 422 body
        return ErrorResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)
    message, param = _describe_validation(exc)
    return ErrorResponse(openai_error(400, message, param), status_code=400)


async def _http_error(request: Request, exc: Exception) -> Any:
    assert isinstance(exc, StarletteHTTPException)
    if not _is_openai_route(request):
        return await http_exception_handler(request, exc)
    body = openai_error(exc.status_code, str(exc.detail))
    return ErrorResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    message = "internal server error"
    if _is_openai_route(request):
        return ErrorResponse(openai_error(500, message), status_code=500)
    return ErrorResponse({"detail": message}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
