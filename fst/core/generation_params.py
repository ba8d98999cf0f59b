"""Generation parameters: one definition and one set of defaults for the CLI, server and bot.

Torch-free. Validation happens once, here, with messages that name the field and its range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# Hard limits a caller can rely on (the server may set lower ones).
MAX_NUM_RETURN_SEQUENCES = 64
MAX_STOP_SEQUENCES = 8
# Ranges the sampler computes in float32 without overflow to NaN: temperature is 0 (greedy)
# or in [MIN_TEMPERATURE, MAX_TEMPERATURE]; a float32 0, subnormal or infinity is refused.
MIN_TEMPERATURE = 1e-4
MAX_TEMPERATURE = 1e4
MIN_REPETITION_PENALTY = 1e-4
MAX_REPETITION_PENALTY = 1e4


@dataclass(frozen=True)
class GenerationParams:
    """How to continue a prompt.

    temperature 0 means greedy; top_k 0, top_p 1, repetition_penalty 1 and the OpenAI-style
    presence_penalty / frequency_penalty 0 switch those filters off. Each sequence samples from its own generator seeded from `seed` (and its
    index), so a sample never depends on what else shares the batch.
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    num_return_sequences: int = 1
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        _check_int("max_new_tokens", self.max_new_tokens, low=1)
        _check_int("min_new_tokens", self.min_new_tokens, low=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens "
                f"({self.max_new_tokens})"
            )
        _check_int("num_return_sequences", self.num_return_sequences, 1, MAX_NUM_RETURN_SEQUENCES)
        if self.temperature != 0:
            _check_number(
                "temperature", self.temperature, MIN_TEMPERATURE, MAX_TEMPERATURE, zero=True
            )
        _check_int("top_k", self.top_k, low=0)
        _check_number("top_p", self.top_p, low=0.0, high=1.0, low_inclusive=False)
        _check_number(
            "repetition_penalty",
            self.repetition_penalty,
            MIN_REPETITION_PENALTY,
            MAX_REPETITION_PENALTY,
        )
        _check_number("presence_penalty", self.presence_penalty, low=-2.0, high=2.0)
        _check_number("frequency_penalty", self.frequency_penalty, low=-2.0, high=2.0)
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise ValueError(
                f"stop: at most {MAX_STOP_SEQUENCES} stop strings, got {len(self.stop)}"
            )
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise ValueError("stop: every stop sequence must be a non-empty string")
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=2**63 - 1)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def with_overrides(self, **overrides: Any) -> GenerationParams:
        """A copy with some fields replaced; unknown names raise a clear ValueError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown generation parameter(s): {', '.join(unknown)}")
        return replace(self, **overrides)

    def hf_generation_kwargs(
        self, *, eos_token_id: int | None, pad_token_id: int | None
    ) -> dict[str, Any]:
        """The keyword arguments of a Hugging Face `GenerationConfig` that decodes like this.

        The one translation (training samples, fst-eval, sequence-level UL use it). Greedy
        passes no sampling settings (HF warns about unused ones); sampling passes all three
        filters, since HF's own defaults (top_k 50) are not ours. `stop`, `seed`, `ignore_eos`
        and the presence / frequency penalties have no GenerationConfig field (HF fills a missing EOS from the model's
        own config): callers that need them stop, seed or mask EOS themselves.
        """
        kwargs: dict[str, Any] = {
            "do_sample": not self.greedy,
            "max_new_tokens": self.max_new_tokens,
            "num_return_sequences": self.num_return_sequences,
            "repetition_penalty": self.repetition_penalty,
            "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id if pad_token_id is not None else eos_token_id,
        }
        if self.min_new_tokens:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if not self.greedy:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


# Defaults of the original project's `/generated_texts/` endpoint, kept for its clients.
ORIGINAL_API_DEFAULTS = {
    "max_number_of_generated_tokens": 128,
    "temperature": 0.7,
    "top_k": 50,
    "top_p": 1.0,
    "repetition_penalty": 5.0,
    "num_return_sequences": 1,
}


def _check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(
            f"{name} must be in [{low}, {high if high is not None else '∞'}], got {value}"
        )


def _check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    zero: bool = False,
) -> None:
    """`zero`: 0 is also accepted (and said so in the message)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and value > high
    if too_low or too_high:
        bracket = "[" if low_inclusive else "("
        either = "0 or " if zero else ""
        raise ValueError(
            f"{name} must be {either}in {bracket}{low}, {high if high is not None else '∞'}], "
            f"got {value}"
        )


# Parameters used for the samples written to generated.txt during training (the original's).
TRAINING_SAMPLE_PARAMS = GenerationParams(
    max_new_tokens=64, num_return_sequences=4, temperature=0.7, top_k=0, top_p=1.0, seed=0
)
