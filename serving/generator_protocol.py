"""What the server needs of a generator, as a `typing.Protocol`.

`fst.runtime.Generator` satisfies it; so does tests/serving_fakes.py's fake. The server
never reaches past it: the scheduler decodes through `new_batch()` (the runtime's
`DecodeBatch`, with either batching mode), the routes render conversations with `chat`
and check prompts with `encode_prompt` and `max_positions`, the lifespan warms up with
`generate` and, where the generator has one, sets its `on_model_call` hook (metrics); /version and the logs read `manifest` and `provider`.
Optional, read with getattr: `tokenizer` (/tokenize, /detokenize, /tokenizer_info and the
logprobs' token texts) and `scores_prompts` (whether `echo` with `logprobs` can be served).
(serving/protocol.py is another kind of protocol: uvicorn's HTTP one.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from fst.core.bundle import BundleManifest, ChatInfo


class StepRow(Protocol):
    """One sample decoding in a batch (fst.runtime.Row)."""

    tag: Any
    index: int
    finish_reason: str | None
    error: BaseException | None  # why the row ended when finish_reason is "error"

    def completion(self) -> Any: ...


class StepEventLike(Protocol):
    row: StepRow
    piece: str
    finished: bool


@runtime_checkable
class StepBatch(Protocol):
    """The step-level decode loop (fst.runtime.DecodeBatch)."""

    @property
    def live_rows(self) -> Sequence[StepRow]: ...

    def add(
        self, requests: Sequence[Any], tags: Sequence[Any] | None = None
    ) -> list[list[StepRow]]:
        """Start requests (ValueError before anything changes); their rows per request."""
        ...

    def step(self) -> Sequence[StepEventLike]:
        """One token for every live row; the rows that got final text or ended."""
        ...

    def cancel(self, target: Any) -> None: ...


@runtime_checkable
class ServedGenerator(Protocol):
    """The generator contract of fst-serve."""

    manifest: BundleManifest
    provider: str
    max_positions: int
    chat: ChatInfo | None  # the chat template (/v1/chat/completions); None: not a chat model

    def encode_prompt(self, prompt: Any) -> list[int]:
        """Prompt ids; ValueError for a prompt the model cannot take."""
        ...

    def generate(self, prompts: Any, params: Any = None, **overrides: Any) -> list[Any]:
        """Completions of prompts (the warm-up)."""
        ...

    def new_batch(self) -> StepBatch:
        """An empty batch to add requests to and step."""
        ...
