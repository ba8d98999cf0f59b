"""`create_app(settings)`: the FastAPI application, with the model loaded in its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from fst import __version__
from fst.serving.errors import install_error_handlers
from fst.serving.head import HeadAsGet
from fst.serving.metrics import MetricsMiddleware, ServingMetrics
from fst.serving.routes import chat, completions, ops, original, tokenizer
from fst.serving.settings import ServingSettings
from fst.serving.state import ServingState

DESCRIPTION = """Text generation from an fst bundle (ONNX Runtime, no torch).

* `POST /generated_texts/`: the original project's API.
* `POST /v1/completions`, `POST /v1/chat/completions` (models with a chat template),
  `GET /v1/models`: OpenAI-compatible (works with the `openai` client).
* `POST /tokenize` (a prompt or a conversation), `POST /detokenize`, `GET /tokenizer_info`:
  the model's tokenizer, as vLLM serves it (lm-eval's remote tokenizer).
* `/health`, `/ready`, `/version`, `/metrics`: operations.
"""


def create_app(settings: ServingSettings, generator: Any | None = None) -> FastAPI:
    """The app; `generator` (anything with the `fst.runtime.Generator` API) skips loading
    the bundle, for tests and embedding."""
    metrics = ServingMetrics()
    state = ServingState(settings, metrics, generator)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()  # loads in the background; /ready says when it is done
        try:
            yield
        finally:
            await state.stop()

    # /docs and /redoc with their scripts served from the package: they render offline.
    app = FastAPIOffline(
        title="Full Stack Transformer",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,
    )
    app.state.serving = state
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(HeadAsGet)  # outermost: the metrics count a HEAD as its GET
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(original.router)
    app.include_router(completions.router)
    app.include_router(chat.router)
    app.include_router(tokenizer.router)
    return app
