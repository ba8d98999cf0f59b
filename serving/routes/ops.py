"""Operations: /health (alive), /ready (serving), /version, /metrics.

/health, /ready and /metrics stay open when an API key is set (probes and Prometheus
scrapers carry no tokens; none of them shows a prompt); /version needs the key.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from fst import __version__
from fst.serving.dependencies import StateDep, require_api_key
from fst.serving.schemas import HealthResponse, ReadyResponse, VersionResponse

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    response_model=HealthResponse,
    summary="Liveness: 200 while the process works (also while loading), 503 if loading failed",
)
async def health(state: StateDep) -> Response:
    if state.status == "failed":  # fst-serve exits on it; an embedding app may not
        body = HealthResponse(status="failed", detail=state.load_error)
        return JSONResponse(body.model_dump(), status_code=503)
    return JSONResponse(HealthResponse().model_dump())


@router.get(
    "/ready",
    response_model=ReadyResponse,
    summary="Readiness: 200 once the model is loaded and warmed up; 503 while loading, "
    "when loading failed, and while shutting down ('stopping')",
    responses={503: {"model": ReadyResponse, "description": "Not ready (yet)"}},
)
async def ready(state: StateDep) -> Response:
    body = ReadyResponse(status=state.status, detail=state.load_error)
    headers = {"Retry-After": "5"} if state.status == "loading" else None
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503, headers=headers)


@router.get(
    "/version",
    response_model=VersionResponse,
    summary="Package version and bundle summary",
    dependencies=[Depends(require_api_key)],
)
async def version(state: StateDep) -> VersionResponse:
    generator = state.generator if state.ready else None
    return VersionResponse(
        version=__version__,
        model=state.model_name,
        provider=getattr(generator, "provider", None),
        bundle=generator.manifest.summary() if generator is not None else None,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
