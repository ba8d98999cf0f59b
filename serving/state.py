"""The server's life cycle: load the bundle, warm up, schedule, and stop cleanly.

Loading runs in a background task started by the app's lifespan, so /health answers at
once and /ready turns 200 only when the model has produced its first tokens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fst.serving.batch_sizing import BatchSizer, available_memory_mb, kv_bytes_per_token
from fst.serving.errors import APIError
from fst.serving.generator_protocol import ServedGenerator
from fst.serving.metrics import ServingMetrics
from fst.serving.scheduler import Scheduler
from fst.serving.settings import ServingSettings

logger = logging.getLogger(__name__)

RETRY_AFTER_LOADING_S = "5"


def one_line(exc: BaseException) -> str:
    """`Type: message` on one line (ONNX Runtime's and others' messages span several)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


class ServingState:
    """What the routes share: settings, metrics, the generator and its scheduler."""

    def __init__(
        self,
        settings: ServingSettings,
        metrics: ServingMetrics,
        generator: ServedGenerator | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model_name = settings.served_model_name()
        self.created = int(time.time())
        self.generator: ServedGenerator | None = generator
        self.scheduler: Scheduler | None = None
        self.status = "loading"  # loading -> ready -> stopping; or failed
        self.load_error: str | None = None
        self._loading: asyncio.Task[None] | None = None
        self._draining: asyncio.Future[None] | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    async def start(self) -> None:
        self._loading = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            if self.generator is None:
                self.generator = await asyncio.to_thread(self._load_generator)
            if self.settings.warmup:
                await asyncio.to_thread(self._warm_up, self.generator)
            if hasattr(self.generator, "on_model_call"):  # after warm-up: real traffic only
                self.generator.on_model_call = self.metrics.observe_model_call
            self.scheduler = Scheduler(
                self.generator,
                max_batch_size=self.settings.max_batch_size,
                queue_size=self.settings.queue_size,
                batch_wait_s=self.settings.batch_wait_s(),
                max_prefill_tokens=self.settings.max_prefill_tokens,
                metrics=self.metrics,
                mode=self.settings.batching,
                sizer=self._batch_sizer(self.generator),
            )
            self.scheduler.start()
        except Exception as exc:
            self.status, self.load_error = "failed", one_line(exc)
            logger.debug("loading failed", exc_info=True)
            logger.error("could not load the model: %s", self.load_error)
            return
        if self.status == "loading":  # not if a shutdown began meanwhile
            self.status = "ready"
        logger.info(
            "model %r ready (provider %s, %s batching of up to %d sequences, queue %d)",
            self.model_name,
            getattr(self.generator, "provider", "?"),
            self.scheduler.mode,
            self.settings.max_batch_size,
            self.settings.queue_size,
        )

    def _batch_sizer(self, generator: ServedGenerator) -> BatchSizer:
        """Admission limits from the settings and the bundle's KV size per token."""
        settings = self.settings
        budget_mb = settings.kv_cache_mb or available_memory_mb() // 4
        manifest = getattr(generator, "manifest", None)
        return BatchSizer(
            settings.max_batch_size,
            max_step_s=settings.max_step_ms / 1000 or None,
            kv_budget_bytes=budget_mb << 20 if budget_mb else None,
            kv_bytes_per_token=kv_bytes_per_token(generator),
            max_positions=manifest.architecture.max_positions if manifest else None,
        )

    def _load_generator(self) -> ServedGenerator:
        from fst.runtime import Generator  # imported here so the app module stays light

        if self.settings.bundle is None:
            raise ValueError("bundle: no bundle folder given (--bundle or FST_BUNDLE)")
        logger.info("loading bundle %s", self.settings.bundle)
        return Generator.from_bundle(
            self.settings.bundle,
            providers=self.settings.providers,
            threads=self.settings.threads,
            huge_pages=self.settings.huge_pages,
            prefix_cache_bytes=self.settings.prefix_cache_mb << 20,
            speculative_tokens=self.settings.speculative_tokens,
        )

    def _warm_up(self, generator: ServedGenerator) -> None:
        """One tiny batched generation, so the first client does not pay for session set-up."""
        document = generator.manifest.tokenizer.document_format
        prompt: Any = {"body": "Hello", "meta": None} if document else "Hello"
        generator.generate([prompt], max_new_tokens=2, num_return_sequences=2, temperature=0.0)

    async def drain(self) -> None:
        """Refuse new work (503) and cancel queued work, give running generations the
        shutdown grace, then end them (their clients get an error), and join the worker.

        The server calls it on SIGTERM while still listening, the lifespan again on exit
        (then it only waits for the first call).
        """
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain())
        await asyncio.shield(self._draining)

    async def _drain(self) -> None:
        if self.status != "failed":
            self.status = "stopping"
        if self._loading is not None and not self._loading.done():
            await asyncio.wait([self._loading])
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.stop, self.settings.shutdown_timeout_s)
            logger.info("scheduler stopped")

    async def stop(self) -> None:
        """The lifespan's end: drain (if the server has not already)."""
        await self.drain()

    def abort(self) -> None:
        """End running generations now (a second SIGTERM / Ctrl-C)."""
        if self.scheduler is not None:
            self.scheduler.abort()

    def require_ready(self) -> tuple[ServedGenerator, Scheduler]:
        """The generator and scheduler, or a 503 telling the client when to come back."""
        if self.status == "ready" and self.generator is not None and self.scheduler is not None:
            return self.generator, self.scheduler
        if self.status == "loading":
            raise APIError(
                503, "the model is still loading", headers={"Retry-After": RETRY_AFTER_LOADING_S}
            )
        if self.status == "stopping":
            raise APIError(503, "the server is shutting down")
        raise APIError(503, "the model failed to load; see the server log")
