"""What run.py measures and what it must reach: the workload, its sampling and the targets.

Data only, declared once: the workers, the goals and the report read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    """What every worker measures (the benchmark's workload)."""

    new_tokens: int = 64
    prompt_lengths: tuple[int, ...] = (32, 512)  # batch 1: time to first token + decode
    batch: int = 8  # tokens/s with prefill included, prompts of prompt_lengths[0]
    past_lengths: tuple[int, ...] = (32, 256, 1000)  # decode cost as the KV cache grows
    past_new_tokens: int = 16
    repeats: int = 1  # measured calls per scenario inside one worker (after a short warm-up)


# The sampling settings: what a chat-style caller would ask for (every engine uses them).
SAMPLING = {"top_k": 50, "top_p": 0.95, "temperature": 0.8, "repetition_penalty": 1.2}


@dataclass
class Timing:
    """One generate call: seconds to the first new token, seconds in total, the new ids
    (what every engine returns; engines.py and engines_llamacpp.py share it from here)."""

    first_token_s: float
    total_s: float
    tokens: list[list[int]]


# The targets, declared once: decode, TTFT and overhead ratios are
# upper bounds, batch tokens/s ratios lower bounds; the report prints each with its target.
TARGETS: dict[str, float] = {
    "fp32_vs_hf": 0.45,
    "fp32_vs_ct2": 1.0,
    "fp32_vs_floor": 1.15,
    "int8_vs_ct2": 0.6,
    "int8_vs_floor": 1.5,
    "int4_vs_floor": 1.5,
    "fp32_past_vs_llama": 1.0,
    "fst-fp32_vs_llama": 1.0,
    "fst-int8_vs_llama": 0.75,
    "fst-int4_vs_llama": 0.9,
    "ttft_vs_peer": 1.0,
    "batch_tps_vs_ct2": 1.25,
    "python_overhead_share": 0.05,
    "int8_peak_rss_mb": 400,
}
