"""How many sequences may decode together: sized from memory and the measured step time.

A fixed cap (the former 16) leaves throughput on the table on a machine where a decode
step of 32 or 64 rows costs little more than one of 16, and makes clients beyond the cap
queue for a whole generation. `BatchSizer` instead admits sequences while

- the KV cache stays within `kv_budget_bytes`: a left-padded batch holds rows x its
  longest row (prompt + max_new_tokens, an upper bound taken before the prompt is even
  tokenised: a byte-level tokenizer never makes more tokens than the prompt has bytes);
- the predicted decode step stays within `max_step_s` (the inter-token latency every
  stream of the batch sees): step time is fitted as `a + c * rows` to recent steps
  (exponentially forgotten); before two batch sizes have been seen, the one observation
  is extrapolated through the origin (pessimistic), so the batch grows step by step and
  the fit corrects itself. The step time never limits the batch below `MIN_SEQUENCES`
  (the former fixed size): on a machine too slow for the target even at batch 1, fewer
  rows would only cut throughput (measured: a loaded host fell to batch 1, 2 tokens/s).

`max_sequences` (the settings' max_batch_size) stays a hard cap.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Weight of the past in the step-time fit, per observation (about the last 50 steps).
FORGET = 0.98
# The step-time limit never goes below this many rows (the batch size that was fixed before).
MIN_SEQUENCES = 16


class BatchSizer:
    """Admission limits of the scheduler's decode batch (see the module docstring)."""

    def __init__(
        self,
        max_sequences: int,
        max_step_s: float | None = None,
        kv_budget_bytes: int | None = None,
        kv_bytes_per_token: int | None = None,
        max_positions: int | None = None,
    ) -> None:
        self.max_sequences = max_sequences
        self.max_step_s = max_step_s
        self.kv_budget_bytes = kv_budget_bytes if kv_bytes_per_token else None
        self.kv_bytes_per_token = kv_bytes_per_token or 0
        self.max_positions = max_positions
        # Exponentially weighted sums for the least-squares fit of step = a + c * rows.
        self._w = self._b = self._t = self._bb = self._bt = 0.0

    # ---- step time ---------------------------------------------------------------------

    def observe_step(self, rows: int, seconds: float) -> None:
        """A decode step of `rows` sequences took `seconds`."""
        if rows < 1 or seconds <= 0:
            return
        f = FORGET
        self._w = f * self._w + 1
        self._b = f * self._b + rows
        self._t = f * self._t + seconds
        self._bb = f * self._bb + rows * rows
        self._bt = f * self._bt + rows * seconds

    def step_model(self) -> tuple[float, float] | None:
        """(a, c) of step = a + c * rows, or None before any step."""
        if self._w == 0:
            return None
        mean_b, mean_t = self._b / self._w, self._t / self._w
        var_b = self._bb / self._w - mean_b * mean_b
        if var_b > 0.25:  # at least two batch sizes seen: least squares
            slope = (self._bt / self._w - mean_b * mean_t) / var_b
            if slope > 0:
                intercept = max(mean_t - slope * mean_b, 0.0)
                return intercept, slope
        return 0.0, mean_t / mean_b  # one size: through the origin (pessimistic)

    def step_limit(self) -> int:
        """Most rows whose predicted step fits `max_step_s`, at least MIN_SEQUENCES (the hard
        cap before any step)."""
        model = self.step_model()
        if self.max_step_s is None or model is None:
            return self.max_sequences
        intercept, slope = model
        rows = int((self.max_step_s - intercept) / slope + 1e-6)  # not 39.9999 for 40
        return min(self.max_sequences, max(MIN_SEQUENCES, rows))

    # ---- memory ------------------------------------------------------------------------

    def fits(self, running: Iterable[int], new: Iterable[int]) -> bool:
        """Whether rows of these token bounds (prompt + max_new_tokens, running rows then
        new ones) fit the KV budget together (left-padded to the longest)."""
        if self.kv_budget_bytes is None:
            return True
        lengths = [*running, *new]
        if not lengths:
            return True
        return len(lengths) * max(lengths) * self.kv_bytes_per_token <= self.kv_budget_bytes

    def request_tokens(self, request: Any) -> list[int]:
        """Upper bounds of the tokens each sequence of a request holds at its end."""
        params = request.params
        prompt = request.prompt
        if isinstance(prompt, str):
            text = prompt
        else:
            body = getattr(prompt, "body", None)
            if body is None and isinstance(prompt, dict):
                body = prompt.get("body")
            meta = getattr(prompt, "meta", None)
            if meta is None and isinstance(prompt, dict):
                meta = prompt.get("meta")
            text = f"{body or ''}{meta or ''}" if isinstance(body, str) else None
        # A byte-level tokenizer never makes more tokens than bytes (+ a few special ones).
        bound = len(text.encode("utf-8", "replace")) + 8 if text is not None else None
        if bound is None or (self.max_positions and bound > self.max_positions):
            bound = self.max_positions or 0
        total = bound + params.max_new_tokens
        if self.max_positions:
            total = min(total, self.max_positions)
        return [total] * params.num_return_sequences


class MemoryGate:
    """The KV budget while the scheduler picks jobs: the running rows, then each job taken."""

    def __init__(self, sizer: BatchSizer, running: Iterable[Any]) -> None:
        self.sizer = sizer
        self._running = running  # requests of the running rows, counted on first use
        self._tokens: list[int] | None = None

    @property
    def tokens(self) -> list[int]:
        if self._tokens is None:  # most steps take no job: nothing to count then
            self._tokens = [self.sizer.request_tokens(r)[0] for r in self._running]
        return self._tokens

    def _job_tokens(self, job: Any) -> list[int]:
        return [n for request in job.requests for n in self.sizer.request_tokens(request)]

    def fits(self, job: Any) -> bool:
        return self.sizer.fits(self.tokens, self._job_tokens(job))

    def add(self, job: Any) -> None:
        self.tokens.extend(self._job_tokens(job))


def kv_bytes_per_token(generator: Any) -> int | None:
    """Bytes of KV cache one token takes in `generator`'s bundle (None: unknown)."""
    manifest = getattr(generator, "manifest", None)
    if manifest is None:
        return None
    arch = manifest.architecture
    dtype_bytes = 2 if manifest.graph.dtype == "float16" else 4
    return 2 * arch.num_layers * arch.kv_heads * arch.head_dim * dtype_bytes


def available_memory_mb(path: str = "/proc/meminfo") -> int:
    """MemAvailable in MiB (0 where /proc/meminfo is unreadable: no memory bound)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0
