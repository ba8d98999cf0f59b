"""run.py's report: the Markdown tables and the chart, from the JSON it writes.

Reads only the report dict, so `run.py --render-only` can redraw an old run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from benchmarks import common
from benchmarks.latency.spec import Workload

log = logging.getLogger("latency")


LABELS = {
    "hf": "Hugging Face `generate`, PyTorch eager fp32",
    "fst-fp32": "fst runtime, fp32 bundle",
    "fst-int8": "fst runtime, int8 bundle",
    "ct2-fp32": "CTranslate2 fp32",
    "ct2-int8": "CTranslate2 int8",
    "fst-int4": "fst runtime, int4 bundle",
    "llama-f32": "llama.cpp f32 GGUF",
    "llama-q8_0": "llama.cpp Q8_0 GGUF",
    "llama-q4_0": "llama.cpp Q4_0 GGUF",
    "llama-q4_1": "llama.cpp, the model's own Q4_1 GGUF",
}


def render_markdown(report: dict) -> str:
    w = Workload(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in report["workload"].items()}
    )
    floors, machine = report["floors"], report["machine"]
    lines = [
        "# Latency benchmark",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine['cpu']['model']}, {machine['cpu']['usable_cores']} cores "
        f"({', '.join(machine['cpu']['flags'])}), {machine['ram_gb']} GB RAM; "
        f"load average {machine['load_average']} at start, {report['load_average_end']} at end.  ",
        f"Measured floors: read bandwidth {floors['bandwidth_gbs']:.1f} GB/s (best of "
        + ", ".join(f"{k} {v:.1f}" for k, v in bandwidth_methods(floors).items())
        + f"; {floors.get('array_mb', '?')} MB buffer), "
        f"matmul {floors['matmul_gflops']:.0f} GFLOP/s fp32 ({floors['threads']} threads).  ",
        f"Workload: batch 1, exactly {w.new_tokens} sampled tokens (top-k 50, top-p 0.95, "
        f"temperature 0.8, repetition penalty 1.2), {report['threads']} threads, each engine in "
        f"its own process, {report['rounds']} interleaved rounds; medians (min–max).",
        "",
        "The machine is shared and noisy: absolute figures move between runs; compare the "
        "ratios, which come from one interleaved run.",
    ]
    for name, m in report["models"].items():
        lines += ["", *model_table(name, m, w)]
    return "\n".join(lines) + "\n"


def bandwidth_methods(floors: dict) -> dict[str, float]:
    """GB/s per method (reports before floor.py called them kernels)."""
    return floors.get("bandwidth_gbs_by_method") or floors.get("bandwidth_gbs_by_kernel", {})


def model_table(name: str, m: dict, w: Workload) -> list[str]:
    p0 = w.prompt_lengths[0]
    past = " / ".join(str(n) for n in w.past_lengths)
    ttfts = " | ".join(f"TTFT {n}-token prompt ms" for n in w.prompt_lengths)
    floors = m["floor_decode_ms"]
    lines = [
        f"## {name} ({m['params'] / 1e6:.1f} M parameters)",
        "",
        f"Bandwidth floor of one batch-1 decode step: {floors['fp32']:.1f} ms fp32 "
        f"({m['weight_params'] * 4 / 1e6:.0f} MB), {floors['int8']:.1f} ms if every weight "
        f"were int8, {floors.get('int4', float('nan')):.1f} ms if int4. "
        + "".join(f"{p}: {note}. " for p, note in m.get("floor_notes", {}).items())
        + "Compute floor of the time to first token (prefill FLOPs / measured matmul speed): "
        + ", ".join(f"{v:.0f} ms ({n} tokens)" for n, v in m["floor_ttft_ms"].items())
        + ".",
        "",
        f"| engine | decode ms/token | {ttfts} | peak RSS MB | batch-{w.batch} tokens/s "
        f"| decode ms/token at past {past} | vs HF | vs CT2 | vs llama.cpp | vs floor |",
        "|---|---|" + "---|" * len(w.prompt_lengths) + "---|---|---|---|---|---|---|",
    ]
    for engine, d in m["engines"].items():
        s, r = d["summary"], m["ratios"][engine]
        dec = s[f"b1_p{p0}.decode_ms"]
        cells = [
            LABELS.get(engine, engine),
            f"{dec['median']:.1f} ({dec['min']:.1f}–{dec['max']:.1f})",
            *(common.fmt(s[f"b1_p{n}.ttft_ms"]["median"], 0) for n in w.prompt_lengths),
            common.fmt(s["peak_rss_mb"]["median"], 0),
            common.fmt(s.get(f"b{w.batch}.tokens_per_s", {}).get("median")),
            " / ".join(common.fmt(s[f"past_{n}.decode_ms"]["median"]) for n in w.past_lengths),
            common.fmt(r["decode_vs_hf"], 2),
            common.fmt(r["decode_vs_ct2"], 2),
            common.fmt(r.get("decode_vs_llama"), 2),
            common.fmt(r["decode_vs_floor"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| goal | this run (medians) | met | least-disturbed rounds | met | target |",
        "|---|---|---|---|---|---|",
    ]
    mark = {True: "yes", False: "**no**", None: "–"}
    for g, b in zip(m["goals"], m["goals_best_rounds"], strict=True):
        sign = "≤" if g["at_most"] else "≥"
        lines.append(
            f"| {g['goal']} | {common.fmt(g['value'], 3)} | {mark[g['met']]} "
            f"| {common.fmt(b['value'], 3)} | {mark[b['met']]} | {sign} {g['target']} |"
        )
    lines.append(
        "\nLeast-disturbed rounds: each engine's fastest time (highest tokens/s) over the "
        "rounds, a second view of the goals when the machine is loaded."
    )
    drift = m["drift"]
    lines += [
        "",
        f"Drift: {drift['engine']} re-run at the end took {common.fmt(drift['rerun'])} ms/token "
        f"vs the rounds' median {common.fmt(drift['rounds_median'])} "
        f"(×{common.fmt(drift['ratio'], 2)}).",
    ]
    for engine, d in m["engines"].items():
        if len(d.get("runtime_sources", [])) > 1:
            lines.append(
                f"**Warning**: the runtime's code changed during the run; {engine}'s rounds "
                f"measured {len(d['runtime_sources'])} versions ({', '.join(d['runtime_sources'])})."
            )
    for engine in ("fst-fp32", "fst-int8", "fst-int4"):
        s = m["engines"].get(engine, {}).get("summary", {})
        if f"b1_p{p0}.stepper_ms" in s:
            lines.append(
                f"{engine}: a decode step spends {s[f'b1_p{p0}.stepper_ms']['median']:.2f} ms in "
                f"the stepper (input binding + ONNX Runtime + logits copy); "
                f"{s[f'b1_p{p0}.python_overhead_share']['median']:.1%} of the decode phase is "
                "spent outside it (sampling, detokenising, bookkeeping)."
            )
        parity = m["artifacts"].get(engine, {}).get("parity")
        gate = m["artifacts"].get(engine, {}).get("gate")
        if gate:
            lines.append(f"{engine}: export gate {gate}.")
        if parity:
            lines.append(
                f"{engine} export parity vs PyTorch: top-1 agreement "
                f"{parity['top1_agreement']:.3f} over {parity['checked_positions']} positions, "
                f"max |Δlogit| {parity['max_abs_diff']:.3g}."
            )
    for pair, g in m["greedy_agreement"].items():
        lines.append(
            f"Greedy {w.new_tokens} tokens, {pair}: {g['equal_fraction']:.0%} equal, "
            f"first difference at {g['first_difference']}."
        )
    return lines


def render_chart(report: dict, path: Path) -> bool:
    """Decode ms/token per engine (with floors) and its growth with the past length."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no chart (pip install matplotlib)")
        return False
    w = Workload(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in report["workload"].items()}
    )
    models = report["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4 * len(models)), squeeze=False)
    for (name, m), (bars, growth) in zip(models.items(), axes, strict=True):
        engines = list(m["engines"])
        key = f"b1_p{w.prompt_lengths[0]}.decode_ms"
        s = [m["engines"][e]["summary"][key] for e in engines]
        err = [[x["median"] - x["min"] for x in s], [x["max"] - x["median"] for x in s]]
        bars.bar(engines, [x["median"] for x in s], yerr=err, capsize=4, color="tab:blue")
        for precision, style in (("fp32", "--"), ("int8", ":"), ("int4", "-.")):
            bars.axhline(
                m["floor_decode_ms"].get(precision, float("nan")),
                ls=style,
                color="tab:red",
                label=f"{precision} bandwidth floor",
            )
        # One disturbed round must not flatten the other bars: cap at 1.5x the slowest median.
        bars.set_ylim(0, 1.5 * max(x["median"] for x in s))
        bars.set_title(f"{name}: decode ms/token, batch 1 (lower is better)")
        bars.legend()
        for e in engines:
            ys = [
                m["engines"][e]["summary"][f"past_{n}.decode_ms"]["median"] for n in w.past_lengths
            ]
            growth.plot(w.past_lengths, ys, marker="o", label=e)
        growth.set_xlabel("past length (tokens)")
        growth.set_ylabel("decode ms/token")
        growth.set_title(f"{name}: decode cost as the KV cache grows")
        growth.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return True


# --- CLI --------------------------------------------------------------------------------------
