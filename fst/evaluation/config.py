"""fst-eval's protocol settings: one frozen dataclass, validated once, torch-free.

`EvalConfig` is what `fst.evaluation.evaluate` measures with (a library caller builds it);
its fields carry their --help texts, and `fst.evaluation.cli.EvalArgs` adds the command line's
own options (what to evaluate, where to write) on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fst.core.cli_settings import comma_list, option
from fst.core.metrics import CONTEXT_WINDOW

SEQ_REP_N = 4
DECODINGS = ("greedy", "top-k", "top-p")
_PROTOCOL = "protocol (Welleck et al. 2019)"


class EvaluationError(ValueError):
    """The documents or settings cannot be evaluated as asked; the message says why."""


@dataclass(frozen=True)
class EvalConfig:
    """What to measure and how; validated once here with messages naming the field."""

    prefix_len: int = option(50, group=_PROTOCOL, help="prompt body tokens")
    continuation_len: int = option(
        100, group=_PROTOCOL, help="generated tokens per prefix (EOS masked)"
    )
    window: int = option(
        CONTEXT_WINDOW, group=_PROTOCOL, help="context window of the rep/wrep metrics"
    )
    max_prefixes: int | None = option(
        None,
        group=_PROTOCOL,
        shown_default="every 50-token block",
        help="use this many prefixes, evenly spaced",
    )
    batch_size: int = option(16, group=_PROTOCOL, help="sequences per forward")
    top_k: int = option(50, group=_PROTOCOL, help="k of top-k sampling")
    top_p: float = option(0.9, group=_PROTOCOL, help="p of top-p (nucleus) sampling")
    seed: int = option(0, group=_PROTOCOL, help="sampling seed")
    decodings: tuple[str, ...] = option(
        DECODINGS,
        group=_PROTOCOL,
        parse=comma_list,
        help="comma-separated subset of " + ",".join(DECODINGS),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "decodings", tuple(self.decodings))
        for name, low in (("prefix_len", 1), ("continuation_len", SEQ_REP_N), ("window", 1)):
            _check_int(name, getattr(self, name), low)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("top_k", self.top_k, 1)
        _check_int("seed", self.seed, 0)
        if self.max_prefixes is not None:
            _check_int("max_prefixes", self.max_prefixes, 1)
        if not 0.0 < self.top_p <= 1.0:
            raise EvaluationError(f"top_p must be in (0, 1], got {self.top_p}")
        unknown = sorted(set(self.decodings) - set(DECODINGS))
        if unknown:
            raise EvaluationError(f"decodings: unknown {unknown}; choose from {list(DECODINGS)}")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise EvaluationError(f"{name} must be an integer >= {low}, got {value!r}")
