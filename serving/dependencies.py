"""FastAPI dependencies: the shared state and the optional API key."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fst.serving.errors import APIError
from fst.serving.state import ServingState

_bearer = HTTPBearer(
    auto_error=False, description="The key given to fst-serve with --api_key or FST_API_KEY."
)


# Both dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in its thread pool, two thread hops per request for a dictionary lookup.
async def get_state(request: Request) -> ServingState:
    return request.app.state.serving


StateDep = Annotated[ServingState, Depends(get_state)]


async def require_api_key(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When an API key is configured, the request must carry it as a Bearer token."""
    expected = state.settings.api_key
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise APIError(
            401,
            "invalid or missing API key: send the header 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
