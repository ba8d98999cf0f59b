"""Every GPT-2 size (and a SmolLM2-135M-shaped Llama), every export variant: export memory
and time, bundle size, load, decode.

    python -m benchmarks.sizes.bundles    # distilgpt2, gpt2, gpt2-medium
    python -m benchmarks.sizes.bundles --sizes gpt2-large gpt2-xl --variants fp32 int8 int4
    python -m benchmarks.sizes.bundles --quick    # tiny model, two variants: a smoke run
    python -m benchmarks.sizes.bundles --render   # tables and chart from the JSON

Models are GPT-2-shaped (`smollm2-135m`: Llama-shaped), built from configs with random weights (fixed seed, nothing is
downloaded) and saved as Hugging Face folders in a cache outside the repository. Per size
and variant, in child processes so every figure is that process's own:

- export: `fst-export` wall time and peak RSS (the child's ru_maxrss from wait4; this
  parent never imports torch, so it lends the child no memory), the peak of each stage
  (from the export log) and both as multiples of the fp32 weight bytes (the goal: <= 2.5x);
- bundle: size on disk; load time and peak RSS of `Generator.from_bundle` against the
  weight bytes plus the KV cache (the goal: <= 1.3x);
- decode: ms/token at batch 1 (32-token prompt, 64 new tokens, greedy), its ratio to the
  weight-read floor (bytes read per step / the measured read bandwidth), batch-8 tokens/s
  (prefill included).

CTranslate2 int8 runs the same decode workload from the same Hugging Face folder when it
is installed. A size whose exports would not fit in the free memory is skipped and says so.
Writes benchmarks/results/export-sizes-memory-decode-gpt2-family.{json,md,png} (the last run, on
the earlier AMD EPYC VM: export-sizes-memory-decode-gpt2-family-epyc.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.latency import floor

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "benchmarks" / "results"
STEM = "export-sizes-memory-decode-gpt2-family"  # results/STEM.{json,md,png}
DEFAULT_CACHE = Path(os.environ.get("FST_BENCH_CACHE", "/tmp/fst-bench")) / "sizes"
BPE = REPO / "fst" / "core" / "assets" / "gpt2_bpe"
CORPUS = REPO / "data" / "documents" / "nietzsche" / "train.documents"
SCHEMA_VERSION = 1

# The original project's sizes (GPT2Config overrides; vocab 50257, 1024 positions).
SIZES: dict[str, dict[str, int]] = {
    "distilgpt2": {"n_layer": 6},
    "gpt2": {},
    "gpt2-medium": {"n_layer": 24, "n_embd": 1024, "n_head": 16},
    "gpt2-large": {"n_layer": 36, "n_embd": 1280, "n_head": 20},
    "gpt2-xl": {"n_layer": 48, "n_embd": 1600, "n_head": 25},
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2},  # --quick
    # Llama-shaped: fst.training.model's `smollm2-135m` preset (SmolLM2-135M's shape: 30
    # layers, hidden 576, 9 heads, 3 KV heads, tied head) with GPT-2's 50257-token BPE.
    "smollm2-135m": {
        "preset": "smollm2-135m",
        "n_layer": 30,
        "n_embd": 576,
        "intermediate": 1536,
        "kv_dim": 192,
    },
}
LLAMA = {name for name, c in SIZES.items() if "preset" in c}
# fst-export flags per variant: "fp32" is the plain traced graph, the others fst-export's
# default optimized one ("optimize": fp32 weights).
VARIANTS: dict[str, list[str]] = {
    "fp32": ["--no_optimize"],
    "optimize": [],
    "int8": ["--quantize", "int8"],
    "int4": ["--quantize", "int4"],
    "fp16": ["--fp16"],
}
DECODE_VARIANTS = ("fp32", "optimize", "int8", "int4")  # fp16 is for GPUs: CPU decode is moot
EXPORT_GOAL = 2.5  # peak RSS / fp32 weight bytes
LOAD_GOAL = 1.3  # load peak RSS / (weight bytes + KV cache)
PROMPT, NEW_TOKENS, BATCH = 32, 64, 8
# An export needs about this many fp32 weight copies free (measured peak ~2x plus margin).
FREE_MEMORY_COPIES = 3.0

log = logging.getLogger("sizes")


# --- preparation -----------------------------------------------------------------------------


def hf_folder(name: str, cache: Path) -> Path:
    """A random-weight GPT-2 of this size with the GPT-2 tokenizer, built once (child process)."""
    folder = cache / name / "hf"
    stamp = {"config": SIZES[name], "seed": 0}
    marker = folder / "fst_bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return folder
    log.info("%s: building from config", name)
    code = (
        "import sys, json, torch, transformers\n"
        "torch.manual_seed(0)\n"
        "cfg = json.loads(sys.argv[2])\n"
        "m = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).eval()\n"
        "t = transformers.GPT2TokenizerFast(vocab=sys.argv[3] + '/vocab.json', "
        "merges=sys.argv[3] + '/merges.txt')\n"
        "m.save_pretrained(sys.argv[1]); t.save_pretrained(sys.argv[1])\n"
    )
    if name in LLAMA:  # the training stage's preset, vocabulary from the tokenizer
        code = (
            "import sys, json, torch, transformers\n"
            "from fst.training.model import PRESETS\n"
            "torch.manual_seed(0)\n"
            "cfg = dict(PRESETS[json.loads(sys.argv[2])['preset']])\n"
            "cfg.pop('model_type', None)\n"
            "cfg.update(vocab_size=50257, bos_token_id=50256, eos_token_id=50256)\n"
            "m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()\n"
            "t = transformers.GPT2TokenizerFast(vocab=sys.argv[3] + '/vocab.json', "
            "merges=sys.argv[3] + '/merges.txt')\n"
            "m.save_pretrained(sys.argv[1]); t.save_pretrained(sys.argv[1])\n"
        )
    cmd = [sys.executable, "-c", code, str(folder), json.dumps(SIZES[name]), str(BPE)]
    subprocess.run(cmd, check=True, capture_output=True)
    marker.write_text(json.dumps(stamp))
    return folder


def param_counts(name: str) -> dict[str, int]:
    """Parameters (tied head counted once) and those a decode step reads (all but wpe)."""
    c = {"n_layer": 12, "n_embd": 768, **SIZES[name]}
    if name in LLAMA:  # q, o: h x h; k, v: h x kv_dim; gate, up, down: h x I; two RMS norms
        h, layers = c["n_embd"], c["n_layer"]
        block = 2 * h * h + 2 * h * c["kv_dim"] + 3 * h * c["intermediate"] + 2 * h
        total = 50257 * h + layers * block + h  # tied head, rotary positions (no table)
        return {"params": total, "read_params": total}
    vocab, positions, h, layers = 50257, 1024, c["n_embd"], c["n_layer"]
    block = 12 * h * h + 13 * h  # attention 4h^2 + 4h, MLP 8h^2 + 5h, two layer norms 4h
    total = vocab * h + positions * h + layers * block + 2 * h
    return {"params": total, "read_params": total - positions * h}


def free_mb() -> float | None:
    return common.proc_mb("/proc/meminfo", "MemAvailable")


# --- children ---------------------------------------------------------------------------------


def run_measured(cmd: list[str], log_file: Path, timeout: float) -> dict[str, Any]:
    """Run `cmd`; its wall time, exit code and peak RSS (ru_maxrss of exactly this child)."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "exit_code": os.waitstatus_to_exitcode(status),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


STAGE_LINE = re.compile(
    r"\] (\w+)(?::[^\n]*)? done in ([\d.]+) s, RSS \d+ MB, peak RSS so far (\d+) MB"
)


def stage_peaks(export_log: Path) -> dict[str, float]:
    """The exporter's peak RSS (MB) by the end of each stage, from its debug log."""
    if not export_log.is_file():
        return {}
    return {m[1]: float(m[3]) for m in STAGE_LINE.finditer(export_log.read_text())}


def export_variant(name: str, variant: str, hf: Path, cache: Path, timeout: float) -> dict:
    bundle = cache / name / f"bundle-{variant}"
    export_log = cache / name / f"export-{variant}.log"
    cmd = [
        sys.executable, "-m", "fst.export.cli", "--model_path", str(hf), "--output", str(bundle),
        "--force", "--quiet", "--log_file", str(export_log), *VARIANTS[variant],
    ]  # fmt: skip
    result = run_measured(cmd, cache / name / f"export-{variant}.out", timeout)
    result["stages_peak_rss_mb"] = stage_peaks(export_log)
    result["bundle"] = str(bundle)
    if result["exit_code"] == 0:
        result["bundle_mb"] = round(
            sum(f.stat().st_size for f in bundle.iterdir() if f.is_file()) / 1e6, 1
        )
        manifest = json.loads((bundle / "fst_bundle.json").read_text())
        result["parity"] = manifest["parity"]
        result["graph"] = {k: manifest["graph"].get(k) for k in ("variant", "int8_weights", "int4")}
    else:
        tail = (cache / name / f"export-{variant}.out").read_text().strip().splitlines()[-3:]
        result["error"] = " | ".join(tail)
    return result


def worker_main(args: argparse.Namespace) -> int:
    """In a fresh process: load one engine, then decode at batch 1 and batch 8 (one JSON line)."""
    from benchmarks.latency.engines import CT2Engine, FSTEngine
    from benchmarks.latency.worker import decode_ms

    prompts = json.loads(Path(args.prompts).read_text())
    before = common.peak_rss_mb()  # interpreter, numpy, onnxruntime: not the bundle's
    start = time.perf_counter()
    if args.worker == "ct2-int8":
        engine = CT2Engine(args.path, args.threads, "int8")
    else:
        engine = FSTEngine(args.path, args.threads, args.worker.removeprefix("fst-"))
        engine.add_texts([(p["ids"], p["text"]) for p in [prompts["prompt"], *prompts["batch"]]])
    load_s = time.perf_counter() - start
    load_peak = common.peak_rss_mb()
    single = [prompts["prompt"]["ids"]]
    engine.run(single, 4, greedy=True)  # warm-up
    timings = [engine.run(single, NEW_TOKENS, greedy=True) for _ in range(args.repeats)]
    batch = [p["ids"] for p in prompts["batch"]]
    engine.run(batch, 4, greedy=True)
    batch_runs = [engine.run(batch, NEW_TOKENS, greedy=True) for _ in range(args.repeats)]
    for t in [*timings, *batch_runs]:
        if {len(x) for x in t.tokens} != {NEW_TOKENS}:
            raise RuntimeError(f"{args.worker}: did not get {NEW_TOKENS} tokens per sequence")
    report = {
        "load_s": round(load_s, 2),
        "load_peak_rss_mb": round(load_peak, 1),
        "before_load_rss_mb": round(before, 1),
        "decode_ms": common.median(decode_ms(t, NEW_TOKENS) for t in timings),
        "batch8_tokens_per_s": common.median(BATCH * NEW_TOKENS / t.total_s for t in batch_runs),
    }
    print(json.dumps(report))
    return 0


def run_decode(engine: str, path: str, prompts: Path, args: argparse.Namespace) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [
        sys.executable, "-m", __spec__.name, "--worker", engine, "--path", path,
        "--prompts", str(prompts), "--threads", str(args.threads), "--repeats", str(args.repeats),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=common.REPO
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": " | ".join(proc.stderr.strip().splitlines()[-3:])}
    return json.loads(lines[-1])


def convert_ct2(hf: Path, folder: Path) -> bool:
    """CTranslate2 int8 model from the same folder (child process); False if not installed."""
    if (folder / "model.bin").is_file():
        return True
    code = (
        "import sys, ctranslate2\n"
        "ctranslate2.converters.TransformersConverter(sys.argv[1]).convert("
        "sys.argv[2], quantization='int8', force=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(hf), str(folder)], capture_output=True)
    return proc.returncode == 0


# --- one size -----------------------------------------------------------------------------


def kv_cache_mb(name: str, positions: int) -> float:
    """fp32 KV cache of one sequence of `positions` tokens (the load check's allowance)."""
    c = {"n_layer": 12, "n_embd": 768, **SIZES[name]}
    width = c.get("kv_dim", c["n_embd"])  # grouped-query attention caches fewer heads
    return 2 * c["n_layer"] * positions * width * 4 / 1e6


def weight_mb(bundle: Path) -> float:
    return sum(f.stat().st_size for f in bundle.glob("model.onnx*")) / 1e6


def benchmark_size(
    name: str, args: argparse.Namespace, prompts: Path, floors: dict, on_variant=None
) -> dict:
    cache = args.cache_dir
    counts = param_counts(name)
    fp32_mb = counts["params"] * 4 / 1e6
    record: dict[str, Any] = {"name": name, "config": SIZES[name], **counts, "fp32_mb": fp32_mb}
    available = free_mb()
    if available is not None and available < FREE_MEMORY_COPIES * fp32_mb:
        record["skipped"] = f"{available:.0f} MB free < {FREE_MEMORY_COPIES} x {fp32_mb:.0f} MB"
        log.warning("%s: skipped (%s)", name, record["skipped"])
        return record
    hf = hf_folder(name, cache)
    kv = kv_cache_mb(name, PROMPT + NEW_TOKENS)
    record["variants"] = {}
    for variant in args.variants:
        log.info("%s %s: exporting (%.0f MB free)", name, variant, free_mb() or -1)
        result = export_variant(name, variant, hf, cache, args.timeout)
        result["export_peak_x_fp32"] = round(result["peak_rss_mb"] / fp32_mb, 2)
        excess = result["peak_rss_mb"] - args.export_baseline_mb
        result["export_excess_x_fp32"] = round(excess / fp32_mb, 2)
        log.info(
            "%s %s: export %.0f s, peak %.0f MB (%.2fx fp32 weights)%s",
            name, variant, result["wall_s"], result["peak_rss_mb"],
            result["export_peak_x_fp32"], "" if result["exit_code"] == 0 else " FAILED",
        )  # fmt: skip
        if result["exit_code"] == 0 and variant in DECODE_VARIANTS and not args.no_decode:
            bundle = Path(result["bundle"])
            decode = run_decode(f"fst-{variant}", str(bundle), prompts, args)
            weights = weight_mb(bundle)
            decode["weight_mb"] = round(weights, 1)
            if "load_peak_rss_mb" in decode:
                decode["load_x_weights_kv"] = round(decode["load_peak_rss_mb"] / (weights + kv), 2)
                excess = decode["load_peak_rss_mb"] - decode["before_load_rss_mb"]
                decode["load_excess_x_weights_kv"] = round(excess / (weights + kv), 2)
                floor = floor_ms(read_bytes(name, variant, weights), floors)
                decode["floor_ms"] = round(floor, 2)
                decode["decode_x_floor"] = round(decode["decode_ms"] / floor, 2)
            result["decode"] = decode
            log.info("%s %s: %s", name, variant, decode)
        record["variants"][variant] = result
        if on_variant is not None:
            on_variant(record)  # an interrupted run keeps every variant it measured
    if args.ct2:
        folder = cache / name / "ct2-int8"
        if convert_ct2(hf, folder):
            decode = run_decode("ct2-int8", str(folder), prompts, args)
            weights = (folder / "model.bin").stat().st_size / 1e6
            decode["weight_mb"] = round(weights, 1)
            if "decode_ms" in decode:
                floor = floor_ms(weights * 1e6, floors)
                decode["floor_ms"] = round(floor, 2)
                decode["decode_x_floor"] = round(decode["decode_ms"] / floor, 2)
                decode["load_x_weights_kv"] = round(decode["load_peak_rss_mb"] / (weights + kv), 2)
                excess = decode["load_peak_rss_mb"] - decode["before_load_rss_mb"]
                decode["load_excess_x_weights_kv"] = round(excess / (weights + kv), 2)
            record["ct2_int8"] = decode
            log.info("%s ct2-int8: %s", name, decode)
        else:
            record["ct2_int8"] = {"error": "ctranslate2 not installed or conversion failed"}
    return record


def read_bytes(name: str, variant: str, weights_mb: float) -> float:
    """Bytes a decode step reads: the weights less the position table (one row is read)."""
    c = {"n_embd": 768, **SIZES[name]}
    position_table = 0 if name in LLAMA else 1024 * c["n_embd"] * 4  # fp32 in every variant
    return weights_mb * 1e6 - position_table


def floor_ms(read: float, floors: dict) -> float:
    return read / (floors["bandwidth_gbs"] * 1e9) * 1e3


# --- report ---------------------------------------------------------------------------------


def render_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Every GPT-2 size: export memory, bundle, load, decode",
        "",
        f"`python -m benchmarks.sizes.bundles {' '.join(report['argv'])}` — {report['finished_at']}; "
        f"{m['cpu']['model']}, {report['threads']} threads, {m['ram_gb']} GB RAM; load average "
        f"at start {m['load_average']} (a shared machine: other jobs ran meanwhile). Random "
        f"weights from configs. Read bandwidth floor {report['floors']['bandwidth_gbs']:.1f} GB/s.",
        f"Goals: export peak RSS <= {EXPORT_GOAL}x fp32 weight bytes; load peak RSS <= "
        f"{LOAD_GOAL}x (bundle weights + fp32 KV cache of {PROMPT + NEW_TOKENS} tokens). "
        "fp32 is the plain graph (--no_optimize); optimize, int8, int4 and fp16 are the "
        "optimized one (fst-export's default).",
        "",
        f"An export process holds {report['export_baseline_rss_mb']:.0f} MB before any model "
        "(interpreter, torch, transformers, onnxruntime); a runtime process ~100-150 MB. "
        "'× fp32' is the whole peak over the fp32 weight bytes, 'excess ×' the peak above "
        "that baseline (the part that grows with the model).",
        "",
        "| size | params | variant | export s | export peak MB | × fp32 | excess × | bundle MB | "
        "load s | load peak MB | × (w+kv) | excess × | decode ms/tok | × floor | "
        "batch-8 tok/s | parity top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["sizes"]:
        if "skipped" in s:
            lines.append(f"| {s['name']} | {s['params'] / 1e6:.0f} M | skipped: {s['skipped']} |")
            continue
        if not s.get("variants"):
            continue
        for variant, v in s["variants"].items():
            d = v.get("decode", {})
            parity = v.get("parity", {})
            lines.append(
                f"| {s['name']} | {s['params'] / 1e6:.0f} M | {variant} | {v['wall_s']:.0f} | "
                f"{v['peak_rss_mb']:.0f} | {v['export_peak_x_fp32']:.2f} | "
                f"{common.fmt(v.get('export_excess_x_fp32'), 2)} | "
                f"{common.fmt(v.get('bundle_mb'), 0)} | {common.fmt(d.get('load_s'), 1)} | "
                f"{common.fmt(d.get('load_peak_rss_mb'), 0)} | "
                f"{common.fmt(d.get('load_x_weights_kv'), 2)} | "
                f"{common.fmt(d.get('load_excess_x_weights_kv'), 2)} | "
                f"{common.fmt(d.get('decode_ms'), 1)}"
                f" | {common.fmt(d.get('decode_x_floor'), 2)} | "
                f"{common.fmt(d.get('batch8_tokens_per_s'), 1)} | "
                f"{common.fmt(parity.get('top1_agreement'), 3)} |"
                + (f" FAILED: {v['error']}" if v.get("error") else "")
            )
        ct2 = s.get("ct2_int8")
        if ct2 and "decode_ms" in ct2:
            lines.append(
                f"| {s['name']} | {s['params'] / 1e6:.0f} M | CTranslate2 int8 | – | – | – | – | "
                f"{ct2['weight_mb']:.0f} | {ct2['load_s']:.1f} | {ct2['load_peak_rss_mb']:.0f} | "
                f"{ct2['load_x_weights_kv']:.2f} | {common.fmt(ct2.get('load_excess_x_weights_kv'), 2)} | "
                f"{ct2['decode_ms']:.1f} | "
                f"{ct2['decode_x_floor']:.2f} | {ct2['batch8_tokens_per_s']:.1f} | – |"
            )
    lines += ["", "Export peak RSS by the end of each stage (MB):", ""]
    for s in report["sizes"]:
        for variant, v in s.get("variants", {}).items():
            stages = ", ".join(f"{k} {p:.0f}" for k, p in v["stages_peak_rss_mb"].items())
            lines.append(f"- {s['name']} {variant}: {stages}")
    return "\n".join(lines) + "\n"


def render_chart(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    lines: dict[str, list[tuple[float, float]]] = {}
    for s in report["sizes"]:
        for variant, v in s.get("variants", {}).items():
            if "decode_ms" in v.get("decode", {}):
                lines.setdefault(f"fst {variant}", []).append(
                    (s["params"] / 1e6, v["decode"]["decode_ms"])
                )
        if "decode_ms" in s.get("ct2_int8", {}):
            lines.setdefault("CTranslate2 int8", []).append(
                (s["params"] / 1e6, s["ct2_int8"]["decode_ms"])
            )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in lines.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel("decode ms/token, batch 1")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("GPT-2 sizes: decode latency per engine and format")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(report: dict, out_dir: Path) -> None:
    common.write_report(out_dir, STEM, report, render_markdown(report))
    render_chart(report, out_dir / f"{STEM}.png")


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=None)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--threads", type=int, default=common.cpu_info()["usable_cores"] or 1)
    p.add_argument("--repeats", type=int, default=3, help="timed decode calls per engine")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    p.add_argument("--no-ct2", dest="ct2", action="store_false", help="skip CTranslate2")
    p.add_argument("--no-decode", action="store_true", help="export and size only")
    p.add_argument("--quick", action="store_true", help="tiny model, fp32 + int4: a smoke run")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results")
    p.add_argument("--merge", action="store_true", help="add to / replace sizes in the JSON")
    p.add_argument("--render", action="store_true", help="re-render from the JSON only")
    # worker mode
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--prompts", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or ["tiny"]
        args.variants = ["fp32", "int4"]
        args.repeats = 1
    args.sizes = args.sizes or ["distilgpt2", "gpt2", "gpt2-medium"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = args.out or (args.cache_dir / "quick" if args.quick else DEFAULT_OUT)
    if args.render:
        write(json.loads((out / f"{STEM}.json").read_text()), out)
        return 0
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    from benchmarks.latency.models import make_prompts
    from benchmarks.latency.spec import Workload

    workload = Workload(prompt_lengths=(PROMPT,), batch=BATCH, past_lengths=())
    tokenizer = hf_folder("tiny", args.cache_dir) / "tokenizer.json"  # GPT-2's BPE, any size
    prompts_data = make_prompts(tokenizer, CORPUS, workload)
    prompts = args.cache_dir / "prompts.json"
    prompts.write_text(
        json.dumps({"prompt": prompts_data["prompt"][str(PROMPT)], "batch": prompts_data["batch"]})
    )
    floors = floor.measure_floors(args.threads)
    # What an export process holds before any model: the interpreter and its libraries.
    baseline = run_measured(
        [sys.executable, "-c", "import fst.export.exporter, onnxruntime.quantization"],
        args.cache_dir / "baseline.out",
        600,
    )
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": common.machine_description(),
        "threads": args.threads,
        "floors": floors,
        "export_baseline_rss_mb": baseline["peak_rss_mb"],
        "workload": {"prompt": PROMPT, "new_tokens": NEW_TOKENS, "batch": BATCH},
        "sizes": [],
    }
    previous = out / f"{STEM}.json"
    if args.merge and previous.is_file():
        report["sizes"] = json.loads(previous.read_text())["sizes"]
    args.export_baseline_mb = baseline["peak_rss_mb"]

    def save(record: dict) -> None:
        report["sizes"] = [s for s in report["sizes"] if s["name"] != record["name"]] + [record]
        report["finished_at"] = _now()
        write(report, out)

    for name in args.sizes:
        save(benchmark_size(name, args, prompts, floors, on_variant=save))
    order = list(SIZES)
    report["sizes"].sort(key=lambda s: order.index(s["name"]))
    write(report, out)
    return 0


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())
