"""What a latency run means: each engine's medians, the ratios between engines, and the
issues' goals (targets in latency_spec.TARGETS), all from the one run's measurements.
"""

from __future__ import annotations

from typing import Any

from benchmarks import common
from benchmarks.latency import floor
from benchmarks.latency.models import Artifacts, prefill_gflop
from benchmarks.latency.spec import TARGETS, Workload

# Weight precision of each engine: its floor (bytes per weight) and its peers.
PRECISION = {"hf": "fp32", "fst-fp32": "fp32", "ct2-fp32": "fp32", "llama-f32": "fp32"}
PRECISION |= {"fst-int8": "int8", "ct2-int8": "int8", "llama-q8_0": "int8"}
PRECISION |= {"fst-int4": "int4", "llama-q4_0": "int4", "llama-q4_1": "int4"}
BYTES_PER_WEIGHT = {"fp32": 4, "int8": 1, "int4": 0.5}
CT2_PEER = {"fst-fp32": "ct2-fp32", "fst-int8": "ct2-int8"}
# llama.cpp at the same weight format: the first of these the run measured (a model made
# from a Q4_1 GGUF file has its own file as int4 peer when no Q4_0 was made).
LLAMA_PEERS = {
    "fst-fp32": ("llama-f32",),
    "fst-int8": ("llama-q8_0",),
    "fst-int4": ("llama-q4_0", "llama-q4_1"),
}


def llama_peer(med: dict, ours: str) -> str:
    peers = LLAMA_PEERS[ours]
    return next((p for p in peers if p in med), peers[0])


def summarize_model(art: Artifacts, raw: dict, floors: dict, w: Workload) -> dict:
    engines = {}
    for engine, reports in raw["rounds"].items():
        keys = reports[0]["metrics"].keys()
        engines[engine] = {
            "summary": {k: common.summarize(r["metrics"][k] for r in reports) for k in keys},
            "info": reports[0]["info"],
            "runtime_sources": sorted(
                {r["info"].get("runtime_source", "") for r in reports} - {""}
            ),
        }
    med = {e: {k: v["median"] for k, v in d["summary"].items()} for e, d in engines.items()}
    # The least-disturbed round of each engine (fastest time, highest throughput): on a
    # loaded machine a second view of the goals, closer to what the engines can do.
    best = {
        e: {k: v["max" if k.endswith("tokens_per_s") else "min"] for k, v in d["summary"].items()}
        for e, d in engines.items()
    }
    bandwidth = floors["bandwidth_gbs"] * 1e9
    measured = {p: art.weight_params * b / bandwidth * 1e3 for p, b in BYTES_PER_WEIGHT.items()}
    key = f"b1_p{w.prompt_lengths[0]}.decode_ms"
    fastest = {}  # precision -> (engine, its least-disturbed decode ms)
    for engine in best:
        precision, ms = PRECISION[engine], best[engine][key]
        if precision not in fastest or ms < fastest[precision][1]:
            fastest[precision] = (engine, ms)
    floor_ms, floor_notes = floor.cap_floors(measured, fastest)
    # Prefill is compute-bound: FLOPs over the measured matmul speed.
    ttft_floor_ms = {
        str(n): prefill_gflop(art, n) / floors["matmul_gflops"] * 1e3 for n in w.prompt_lengths
    }
    first = next(iter(raw["rounds"]))
    drift = {
        "engine": first,
        "metric": key,
        "rounds_median": med[first][key],
        "rerun": raw["drift_rerun"]["metrics"][key],
    }
    drift["ratio"] = common.ratio(drift["rerun"], drift["rounds_median"])
    return {
        "config": art.config,
        "params": art.params,
        "weight_params": art.weight_params,
        "floor_decode_ms": floor_ms,
        "floor_decode_ms_measured": measured,
        "floor_notes": floor_notes,
        "floor_ttft_ms": ttft_floor_ms,
        "artifacts": art.bundles,
        "engines": engines,
        "ratios": ratios(med, floor_ms, w),
        "goals": goals(med, floor_ms, w),
        "goals_best_rounds": goals(best, floor_ms, w),
        "greedy_agreement": greedy_agreement(raw["rounds"]),
        "drift": drift,
        "rounds": raw["rounds"],
    }


def _get(med: dict, engine: str, key: str) -> float | None:
    return med.get(engine, {}).get(key)


def ratios(med: dict, floor_ms: dict, w: Workload) -> dict[str, dict[str, float | None]]:
    """Each engine's decode and TTFT against HF, CTranslate2 and the bandwidth floor."""
    key = f"b1_p{w.prompt_lengths[0]}.decode_ms"
    out = {}
    for engine in med:
        precision = PRECISION[engine]
        ct2, llama = f"ct2-{precision}", llama_peer(med, f"fst-{precision}")
        row = {
            "decode_vs_hf": common.ratio(_get(med, engine, key), _get(med, "hf", key)),
            "decode_vs_ct2": common.ratio(_get(med, engine, key), _get(med, ct2, key)),
            "decode_vs_llama": common.ratio(_get(med, engine, key), _get(med, llama, key)),
            "decode_vs_floor": common.ratio(_get(med, engine, key), floor_ms.get(precision)),
            f"b{w.batch}_vs_ct2": common.ratio(
                _get(med, engine, f"b{w.batch}.tokens_per_s"),
                _get(med, ct2, f"b{w.batch}.tokens_per_s"),
            ),
        }
        for length in w.prompt_lengths:
            k = f"b1_p{length}.ttft_ms"
            row[f"ttft_p{length}_vs_ct2"] = common.ratio(_get(med, engine, k), _get(med, ct2, k))
        out[engine] = row
    return out


def goals(med: dict, floor_ms: dict, w: Workload) -> list[dict[str, Any]]:
    """The goals, each a ratio from this run; met is None when a side is missing."""
    rows: list[dict[str, Any]] = []

    def add(goal: str, value: float | None, target: float, at_most: bool = True) -> None:
        met = None if value is None else (value <= target if at_most else value >= target)
        rows.append(
            {"goal": goal, "value": value, "target": target, "at_most": at_most, "met": met}
        )

    def ttft_goals(ours: str, peer: str) -> None:
        for length in w.prompt_lengths:
            k = f"b1_p{length}.ttft_ms"
            add(
                f"{ours} TTFT ({length}-token prompt) / {peer}",
                common.ratio(_get(med, ours, k), _get(med, peer, k)),
                TARGETS["ttft_vs_peer"],
            )

    key = f"b1_p{w.prompt_lengths[0]}.decode_ms"
    # (goal, ours, theirs: an engine or a floor precision, target)
    for goal, ours, theirs, target in (
        ("fp32 decode / HF eager decode", "fst-fp32", "hf", "fp32_vs_hf"),
        ("fp32 decode / CTranslate2 fp32 decode", "fst-fp32", "ct2-fp32", "fp32_vs_ct2"),
        ("fp32 decode / fp32 bandwidth floor", "fst-fp32", "fp32", "fp32_vs_floor"),
        ("int8 decode / CTranslate2 int8 decode", "fst-int8", "ct2-int8", "int8_vs_ct2"),
        ("int8 decode / int8 bandwidth floor", "fst-int8", "int8", "int8_vs_floor"),
        ("int4 decode / int4 bandwidth floor", "fst-int4", "int4", "int4_vs_floor"),
    ):
        peer = floor_ms.get(theirs) if theirs in BYTES_PER_WEIGHT else _get(med, theirs, key)
        add(goal, common.ratio(_get(med, ours, key), peer), TARGETS[target])
    # llama.cpp at the same weight format.
    for n in (w.past_lengths[0], w.past_lengths[-1]):
        k = f"past_{n}.decode_ms"
        add(
            f"fp32 decode at past {n} / llama.cpp f32",
            common.ratio(_get(med, "fst-fp32", k), _get(med, "llama-f32", k)),
            TARGETS["fp32_past_vs_llama"],
        )
    for ours in ("fst-fp32", "fst-int8", "fst-int4"):
        peer = llama_peer(med, ours)
        add(
            f"{ours} decode / {peer}",
            common.ratio(_get(med, ours, key), _get(med, peer, key)),
            TARGETS[f"{ours}_vs_llama"],
        )
        ttft_goals(ours, peer)
    for ours, peer in CT2_PEER.items():
        ttft_goals(ours, peer)
    for ours, peer in CT2_PEER.items():
        k = f"b{w.batch}.tokens_per_s"
        add(
            f"{ours} batch-{w.batch} tokens/s / {peer}",
            common.ratio(_get(med, ours, k), _get(med, peer, k)),
            TARGETS["batch_tps_vs_ct2"],
            at_most=False,
        )
    for ours in CT2_PEER:
        share = _get(med, ours, f"b1_p{w.prompt_lengths[0]}.python_overhead_share")
        add(
            f"{ours} per-step Python overhead / decode step",
            share,
            TARGETS["python_overhead_share"],
        )
    add(
        "fst-int8 peak RSS MB (batch 1)",
        _get(med, "fst-int8", "peak_rss_mb"),
        TARGETS["int8_peak_rss_mb"],
    )
    return rows


def greedy_agreement(rounds: dict[str, list[dict]]) -> dict[str, Any]:
    """Greedy continuations vs HF's and vs our fp32 bundle's: fraction of equal tokens and
    the first differing position (None: identical). int8 vs fp32 is the quantisation check."""
    greedy = {e: reports[0]["greedy"] for e, reports in rounds.items()}
    out = {}
    for ref in ("hf", "fst-fp32"):
        for engine, tokens in greedy.items():
            if ref not in greedy or engine in (ref, "hf"):
                continue
            same = [a == b for a, b in zip(tokens, greedy[ref], strict=True)]
            out[f"{engine} vs {ref}"] = {
                "equal_fraction": sum(same) / len(same),
                "first_difference": same.index(False) if False in same else None,
            }
    return out
