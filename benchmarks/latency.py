"""Latency of our runtime against Hugging Face `generate`, CTranslate2 and llama.cpp.

    python benchmarks/latency.py                 # GPT-2 small + distilgpt2-sized, 6 rounds
    python benchmarks/latency.py --quick         # tiny model, 2 rounds: a smoke run

Models are built from configs with random weights (fixed seed; nothing is downloaded),
saved as Hugging Face folders in a cache outside the repository, exported to fp32 and int8
bundles with our exporter (int4 too when `fst-export --quantize` offers it), converted for
CTranslate2 when it is installed and to GGUF for llama.cpp when its bindings and converter are
there (engines_llamacpp.py). The bandwidth floor comes from floor.py.

Each engine runs in its own process (`latency.py --worker ENGINE ...`, printing one JSON
line), in interleaved rounds (A B C A B C ...); the first engine runs once more at the end
to show how much the machine drifted. Figures are medians over rounds with min/max. On a
shared machine absolute figures move by tens of percent: compare ratios from one run.
Writes benchmarks/results/latency.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import engines_llamacpp  # noqa: E402
import floor  # noqa: E402
from latency_report import LABELS, bandwidth_methods, model_table, render_chart, render_markdown  # noqa: E402,F401
from latency_spec import TARGETS, Workload  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BPE = REPO / "fst" / "core" / "assets" / "gpt2_bpe"
DEFAULT_CORPUS = REPO / "data" / "documents" / "nietzsche" / "train.documents"
DEFAULT_OUT = REPO / "benchmarks" / "results"
DEFAULT_CACHE = Path(os.environ.get("FST_BENCH_CACHE", "/tmp/fst-bench"))
SCHEMA_VERSION = 1

# GPT2Config overrides; everything else is GPT-2's default (vocab 50257, 1024 positions).
# {"preset": name}: fst's Llama-shaped training preset of that name (fst.training.model.PRESETS).
MODELS: dict[str, dict[str, Any]] = {
    "gpt2-small": {},
    "distilgpt2": {"n_layer": 6},
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64},
    "smollm2-135m": {"preset": "smollm2-135m"},
}
# SmolLM2's vocabulary size: its random-weight stand-in gets GPT-2's BPE cut to this many
# tokens (the first 49152 ids and the merges that make them; nothing is downloaded).
SMOLLM2_VOCAB = 49152
ENGINES = (
    *("hf", "fst-fp32", "fst-int8", "fst-int4", "ct2-fp32", "ct2-int8"),
    *engines_llamacpp.VARIANTS,
)
# Weight precision of each engine: its floor (bytes per weight) and its peers.
PRECISION = {"hf": "fp32", "fst-fp32": "fp32", "ct2-fp32": "fp32", "llama-f32": "fp32"}
PRECISION |= {"fst-int8": "int8", "ct2-int8": "int8", "llama-q8_0": "int8"}
PRECISION |= {"fst-int4": "int4", "llama-q4_0": "int4"}
BYTES_PER_WEIGHT = {"fp32": 4, "int8": 1, "int4": 0.5}
CT2_PEER = {"fst-fp32": "ct2-fp32", "fst-int8": "ct2-int8"}
LLAMA_PEER = {"fst-fp32": "llama-f32", "fst-int8": "llama-q8_0", "fst-int4": "llama-q4_0"}
WORKER_TIMEOUT_S = 3600
WARMUP_TOKENS = 4  # the warm-up call of each scenario: prefill + a few decode steps

log = logging.getLogger("latency")


@dataclass
class Artifacts:
    """Where one model's engines load from, and what its weights weigh."""

    name: str
    config: dict[str, Any]
    params: int
    weight_params: int  # read once per decode step: all but the position embeddings
    dims: dict[str, int]  # n_layer, n_embd, vocab_size: for the prefill FLOP count
    paths: dict[str, str] = field(default_factory=dict)  # engine -> folder
    bundles: dict[str, Any] = field(default_factory=dict)  # engine -> manifest summary


# --- preparation (main process; torch allowed here) --------------------------------------


def build_hf_folder(name: str, cache: Path, bpe_dir: Path) -> Path:
    """A random-weight GPT-2 saved as a Hugging Face folder with the GPT-2 tokenizer."""
    folder = cache / name / "hf"
    stamp = {"config": MODELS[name], "seed": 0, "tokenizer": 2}
    marker = folder / "fst_bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return folder
    import torch
    import transformers

    log.info("building %s from config", name)
    torch.manual_seed(0)
    if "preset" in MODELS[name]:
        from fst.training.model import PRESETS

        settings = dict(PRESETS[MODELS[name]["preset"]])
        config = transformers.AutoConfig.for_model(
            settings.pop("model_type"), **settings, vocab_size=SMOLLM2_VOCAB,
            bos_token_id=SMOLLM2_VOCAB - 1, eos_token_id=SMOLLM2_VOCAB - 1,
        )  # fmt: skip
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        folder.mkdir(parents=True, exist_ok=True)
        write_cut_bpe(bpe_dir, folder / "tokenizer.json", SMOLLM2_VOCAB)
    else:
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**MODELS[name])).eval()
        tokenizer = transformers.GPT2TokenizerFast(
            vocab=str(bpe_dir / "vocab.json"), merges=str(bpe_dir / "merges.txt")
        )
        tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    marker.write_text(json.dumps(stamp))
    return folder


def write_cut_bpe(bpe_dir: Path, path: Path, size: int) -> None:
    """GPT-2's byte-level BPE keeping ids < size (GPT-2's ids follow its merge order), with
    <|endoftext|> as id 0's stand-in special token; a tokenizer.json at `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = json.loads((bpe_dir / "vocab.json").read_text())
    kept = {token: i for token, i in vocab.items() if i < size - 1}
    lines = (bpe_dir / "merges.txt").read_text().splitlines()[1:]
    merges = [tuple(m.split()) for m in lines if "".join(m.split()) in kept][: size - 257]
    tokenizer = Tokenizer(models.BPE(vocab=kept, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|endoftext|>"])  # id size - 1
    tokenizer.save(str(path))
    # Its BOS/EOS, as a model folder declares them (CTranslate2's converter needs them).
    config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    (path.parent / "tokenizer_config.json").write_text(json.dumps(config))


def count_params(folder: Path) -> tuple[int, int, dict[str, int]]:
    """All parameters (tied ones once), those a decode step reads (all but wpe), dims."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    total = sum(p.numel() for p in model.parameters())
    c = model.config
    dims = {"n_layer": c.num_hidden_layers, "n_embd": c.hidden_size, "vocab_size": c.vocab_size}
    positions = getattr(getattr(model, "transformer", None), "wpe", None)  # GPT-2 only
    return total, total - (positions.weight.numel() if positions is not None else 0), dims


def prefill_gflop(art: Artifacts, length: int) -> float:
    """FLOPs of a batch-1 prefill with logits for the last position only.

    2 per weight per token for the blocks, causal attention scores and mixing
    (2 × 2 × L²/2 × d per layer), and the LM head once.
    """
    d, layers, vocab = art.dims["n_embd"], art.dims["n_layer"], art.dims["vocab_size"]
    blocks = art.weight_params - vocab * d  # minus the tied embedding / LM head
    return (2 * blocks * length + 2 * layers * length**2 * d + 2 * vocab * d) / 1e9


def export_bundles(hf: Path, name: str, cache: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Our fp32 and int8 bundles, re-exported when the options or the exporter changed."""
    variants = [("fst-fp32", None), ("fst-int8", "int8"), ("fst-int4", "int4")]
    wanted = [(e, q) for e, q in variants if e in args.engines]
    if not wanted:
        return {}
    from fst.core.bundle import BundleManifest
    from fst.export.exporter import ExportError, export_bundle

    out = {}
    for engine, quantize in wanted:
        folder = cache / name / f"bundle-{engine.removeprefix('fst-')}"
        options = {"optimize": args.optimize, "quantize": quantize, "logits": args.logits}
        stamp = {
            **options,
            "exporter_source": source_digest(Path(export_bundle.__code__.co_filename).parent),
        }
        marker = folder / "fst_bench_export.json"
        fresh = marker.is_file() and json.loads(marker.read_text()) == stamp
        if not fresh or args.rebuild:
            log.info("exporting %s %s", name, engine)
            try:
                export_bundle(folder, model_path=str(hf), force=True, progress=False, **options)
            except ExportError as e:
                # int4's gate refuses random weights of some shapes (nearly flat logits, so
                # top-1 flips; a trained model passes): measure the other engines anyway.
                log.warning("skipping %s for %s: %s", engine, name, e)
                continue
            marker.write_text(json.dumps(stamp))
        BundleManifest.load(folder)  # fails loudly on a broken bundle
        out[engine] = folder
    return out


def exporter_quantizations() -> list[str]:
    """The `fst-export --quantize` choices of the installed exporter (int4 arrives with the
    model-sizes work: checked at run time, so the benchmark picks it up once it is there)."""
    from fst.export.cli import build_parser

    for action in build_parser()._actions:
        if "--quantize" in action.option_strings:
            return list(action.choices or [])
    return []


def source_digest(folder: Path) -> str:
    """Digest of a package's *.py: a bundle exported by older exporter code is stale."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def convert_ct2(hf: Path, name: str, cache: Path, engines: list[str]) -> dict[str, Path]:
    """CTranslate2 models (fp32 and int8 weights) converted from the same HF folder."""
    out = {}
    for engine, quantization in (("ct2-fp32", None), ("ct2-int8", "int8")):
        if engine not in engines:
            continue
        folder = cache / name / engine
        if not (folder / "model.bin").is_file():
            import ctranslate2

            log.info("converting %s for %s", name, engine)
            converter = ctranslate2.converters.TransformersConverter(str(hf))
            converter.convert(str(folder), quantization=quantization, force=True)
        out[engine] = folder
    return out


def prepare(name: str, args: argparse.Namespace) -> Artifacts:
    cache = args.cache_dir
    hf = build_hf_folder(name, cache, args.bpe_dir)
    total, read, dims = count_params(hf)
    art = Artifacts(name=name, config=MODELS[name], params=total, weight_params=read, dims=dims)
    art.paths["hf"] = str(hf)
    for engine, folder in {
        **export_bundles(hf, name, cache, args),
        **convert_ct2(hf, name, cache, args.engines),
        **engines_llamacpp.convert(hf, cache / name / "gguf", args.engines, args.llamacpp_src),
    }.items():
        art.paths[engine] = str(folder)
        art.bundles[engine] = bundle_summary(engine, folder)
    return art


def bundle_summary(engine: str, folder: Path) -> dict[str, Any]:
    files = [folder] if folder.is_file() else [f for f in folder.iterdir() if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    summary: dict[str, Any] = {"size_mb": round(size / 1e6, 1)}
    if engine.startswith("fst-"):
        from fst.core.bundle import BundleManifest

        manifest = BundleManifest.load(folder)
        summary["graph"] = manifest.graph.model_dump(exclude={"inputs", "outputs"})
        summary["parity"] = manifest.parity.model_dump()
    return summary


def make_prompts(tokenizer_json: Path, corpus: Path, workload: Workload) -> dict[str, Any]:
    """Prompts cut from real text, as token ids plus a text that encodes to exactly them.

    HF and CTranslate2 get the ids, our runtime (which takes text) gets the text; every
    engine therefore sees the same tokens. Rows of the batch differ but have equal lengths,
    so no engine pads.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    bodies = [json.loads(line)["body"] for line in corpus.read_text().splitlines() if line]
    ids = tokenizer.encode("\n\n".join(bodies)).ids

    def window(start: int, n: int) -> dict[str, Any]:
        for s in range(start, min(start + 500, len(ids) - n)):
            text = tokenizer.decode(ids[s : s + n])
            if tokenizer.encode(text).ids == ids[s : s + n]:
                return {"ids": ids[s : s + n], "text": text}
        raise ValueError(f"{corpus}: no {n}-token window near token {start} survives re-encoding")

    first = workload.prompt_lengths[0]
    return {
        "prompt": {str(n): window(0, n) for n in workload.prompt_lengths},
        "batch": [window(2000 + 300 * i, first) for i in range(workload.batch)],
        "past": {str(n): window(6000, n) for n in workload.past_lengths},
    }


# --- workers --------------------------------------------------------------------------------


def run_worker(engine: str, path: str, prompts_file: Path, args: argparse.Namespace) -> dict:
    """One engine measured in a fresh process; returns its JSON report."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    # Idle threads sleep (passive) or spin, alike for both runtimes (see --wait).
    env["OMP_WAIT_POLICY"] = "PASSIVE" if args.wait == "passive" else "ACTIVE"  # llama.cpp
    env["FST_BENCH_ORT_SPINNING"] = "0" if args.wait == "passive" else "1"  # ours
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        engine,
        "--path",
        path,
        "--prompts",
        str(prompts_file),
        "--threads",
        str(args.threads),
        "--workload",
        json.dumps(asdict(args.workload)),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"worker {engine} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def measure(
    engine: Any, prompts: list[dict], new_tokens: int, repeats: int
) -> tuple[list[Any], list[dict[str, float]]]:
    """A short warm-up call, then `repeats` timed calls; every sequence must get exactly
    `new_tokens` tokens. Returns the timings and, for engines that time their own steps
    (ours), their stats."""
    ids = [p["ids"] for p in prompts]
    engine.run(ids, WARMUP_TOKENS)  # same shapes: allocators and kernels warmed up
    runs, stats = [], []
    for _ in range(repeats):
        timing = engine.run(ids, new_tokens)
        lengths = {len(t) for t in timing.tokens}
        if lengths != {new_tokens} or len(timing.tokens) != len(ids):
            raise RuntimeError(f"{engine.name}: asked for {new_tokens} tokens, got {lengths}")
        runs.append(timing)
        if hasattr(engine, "last_stats"):
            stats.append(engine.last_stats())
    return runs, stats


def decode_ms(t: Any, new_tokens: int) -> float:
    """Milliseconds per token after the first one (the first carries the prefill)."""
    return (t.total_s - t.first_token_s) / (new_tokens - 1) * 1e3


def worker_main(args: argparse.Namespace) -> int:
    from engines import make_engine

    w = Workload(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.workload.items()})
    prompts = json.loads(Path(args.prompts).read_text())
    start = time.perf_counter()
    engine = make_engine(args.worker, args.path, args.threads)
    metrics: dict[str, float] = {"load_s": time.perf_counter() - start}
    if hasattr(engine, "add_texts"):  # our runtime takes text: give it the exact prompts
        every = [*prompts["prompt"].values(), *prompts["batch"], *prompts["past"].values()]
        engine.add_texts([(p["ids"], p["text"]) for p in every])
    n, p0 = w.new_tokens, w.prompt_lengths[0]

    # Batch 1 first, then its peak RSS: what a single-user server holds.
    for length in w.prompt_lengths:
        runs, stats = measure(engine, [prompts["prompt"][str(length)]], n, w.repeats)
        metrics[f"b1_p{length}.ttft_ms"] = common.median(t.first_token_s * 1e3 for t in runs)
        metrics[f"b1_p{length}.decode_ms"] = common.median(decode_ms(t, n) for t in runs)
        for key in stats[0] if stats else ():
            metrics[f"b1_p{length}.{key}"] = common.median(s[key] for s in stats)
        if length == p0:
            metrics["peak_rss_mb"] = common.peak_rss_mb()

    if getattr(engine, "max_batch", w.batch) >= w.batch:  # llama.cpp's bindings: batch 1
        runs, _ = measure(engine, prompts["batch"], n, w.repeats)
        metrics[f"b{w.batch}.tokens_per_s"] = common.median(w.batch * n / t.total_s for t in runs)

    for length in w.past_lengths:
        runs, _ = measure(engine, [prompts["past"][str(length)]], w.past_new_tokens, w.repeats)
        metrics[f"past_{length}.decode_ms"] = common.median(
            decode_ms(t, w.past_new_tokens) for t in runs
        )
    metrics["peak_rss_mb_all"] = common.peak_rss_mb()

    greedy = engine.run([prompts["prompt"][str(p0)]["ids"]], n, greedy=True).tokens[0]
    report = {"engine": args.worker, "metrics": metrics, "greedy": greedy, "info": engine.info()}
    print(json.dumps(report))
    return 0


# --- orchestration ----------------------------------------------------------------------------


def benchmark_model(art: Artifacts, prompts_file: Path, args: argparse.Namespace) -> dict:
    """Interleaved rounds over the engines, then the drift re-run of the first engine."""
    engines = [e for e in args.engines if e in art.paths]
    rounds: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(args.rounds):
        for engine in engines:
            log.info("%s round %d/%d: %s", art.name, r + 1, args.rounds, engine)
            report = run_worker(engine, art.paths[engine], prompts_file, args)
            rounds[engine].append(report)
            log.debug("%s: %s", engine, {k: round(v, 2) for k, v in report["metrics"].items()})
    first = engines[0]
    log.info("%s drift re-run: %s", art.name, first)
    rerun = run_worker(first, art.paths[first], prompts_file, args)
    return {"rounds": rounds, "drift_rerun": rerun}


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
        ct2, llama = f"ct2-{precision}", LLAMA_PEER[f"fst-{precision}"]
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
    """The issue's goals, each a ratio from this run; met is None when a side is missing."""
    rows: list[dict[str, Any]] = []

    def add(goal: str, value: float | None, target: float, at_most: bool = True) -> None:
        met = None if value is None else (value <= target if at_most else value >= target)
        rows.append(
            {"goal": goal, "value": value, "target": target, "at_most": at_most, "met": met}
        )

    key = f"b1_p{w.prompt_lengths[0]}.decode_ms"
    fp32, int8 = _get(med, "fst-fp32", key), _get(med, "fst-int8", key)
    add(
        "fp32 decode / HF eager decode",
        common.ratio(fp32, _get(med, "hf", key)),
        TARGETS["fp32_vs_hf"],
    )
    add(
        "fp32 decode / CTranslate2 fp32 decode",
        common.ratio(fp32, _get(med, "ct2-fp32", key)),
        TARGETS["fp32_vs_ct2"],
    )
    add(
        "fp32 decode / fp32 bandwidth floor",
        common.ratio(fp32, floor_ms["fp32"]),
        TARGETS["fp32_vs_floor"],
    )
    add(
        "int8 decode / CTranslate2 int8 decode",
        common.ratio(int8, _get(med, "ct2-int8", key)),
        TARGETS["int8_vs_ct2"],
    )
    add(
        "int8 decode / int8 bandwidth floor",
        common.ratio(int8, floor_ms["int8"]),
        TARGETS["int8_vs_floor"],
    )
    int4 = _get(med, "fst-int4", key)
    add(
        "int4 decode / int4 bandwidth floor",
        common.ratio(int4, floor_ms.get("int4")),
        TARGETS["int4_vs_floor"],
    )
    # Issue 16: llama.cpp at the same weight format.
    for n in (w.past_lengths[0], w.past_lengths[-1]):
        k = f"past_{n}.decode_ms"
        add(
            f"fp32 decode at past {n} / llama.cpp f32",
            common.ratio(_get(med, "fst-fp32", k), _get(med, "llama-f32", k)),
            TARGETS["fp32_past_vs_llama"],
        )
    for ours in ("fst-fp32", "fst-int8", "fst-int4"):
        peer = LLAMA_PEER[ours]
        add(
            f"{ours} decode / {peer}",
            common.ratio(_get(med, ours, key), _get(med, peer, key)),
            TARGETS[f"{ours}_vs_llama"],
        )
        for length in w.prompt_lengths:
            k = f"b1_p{length}.ttft_ms"
            add(
                f"{ours} TTFT ({length}-token prompt) / {peer}",
                common.ratio(_get(med, ours, k), _get(med, peer, k)),
                TARGETS["ttft_vs_peer"],
            )
    for ours, peer in CT2_PEER.items():
        for length in w.prompt_lengths:
            k = f"b1_p{length}.ttft_ms"
            add(
                f"{ours} TTFT ({length}-token prompt) / {peer}",
                common.ratio(_get(med, ours, k), _get(med, peer, k)),
                TARGETS["ttft_vs_peer"],
            )
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


# --- reporting ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Compare our runtime with HF generate and CTranslate2 (batch-1 latency, "
        "time to first token, batch-8 throughput, memory), engines in separate processes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--models",
        default="gpt2-small,distilgpt2",
        help=f"comma-separated, from {', '.join(MODELS)}",
    )
    p.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="comma-separated; ct2-* are skipped when ctranslate2 is not installed, llama-* "
        "without llama-cpp-python or --llamacpp-src, fst-int4 when fst-export has no int4",
    )
    p.add_argument(
        "--llamacpp-src",
        type=Path,
        default=os.environ.get("LLAMACPP_SRC") or None,
        help="llama.cpp source tree with convert_hf_to_gguf.py and gguf-py (env LLAMACPP_SRC)",
    )
    p.add_argument(
        "--wait",
        choices=("passive", "spin"),
        default="passive",
        help="idle intra-op threads sleep or spin: llama.cpp's OMP_WAIT_POLICY and ONNX "
        "Runtime's session.intra_op.allow_spinning (spinning costs 1.6-4.6x on a loaded host)",
    )
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds (>= 1)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every engine")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed calls per scenario inside a worker, after one warm-up call",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: tiny model, 2 rounds, short prompts"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help="models and bundles (outside the repository; env FST_BENCH_CACHE)",
    )
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where results go")
    p.add_argument("--out-name", default="latency", help="results file names: NAME.{json,md,png}")
    p.add_argument("--bpe-dir", type=Path, default=DEFAULT_BPE, help="GPT-2 vocab.json/merges.txt")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="JSON-lines prompt text")
    p.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export with ONNX Runtime transformer fusions",
    )
    p.add_argument(
        "--logits",
        choices=("all", "last"),
        default="last",
        help="exported graph's logits (last: only the last position)",
    )
    p.add_argument("--rebuild", action="store_true", help="re-export bundles even if up to date")
    p.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only rewrite the Markdown and chart of an earlier NAME.json",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    # Worker mode (internal): measure one engine and print one JSON line.
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--prompts", help=argparse.SUPPRESS)
    p.add_argument("--workload", type=json.loads, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    if args.quick:
        args.models = "tiny" if args.models == p.get_default("models") else args.models
        args.rounds = 2 if args.rounds == p.get_default("rounds") else args.rounds
        args.workload = Workload(
            new_tokens=16, prompt_lengths=(32, 64), past_lengths=(32, 128), past_new_tokens=8
        )
    else:
        args.workload = Workload()
    args.workload = Workload(**{**asdict(args.workload), "repeats": args.repeats})
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for model in args.models:
        if model not in MODELS:
            p.error(f"--models: unknown model {model!r} (choose from {', '.join(MODELS)})")
    for engine in args.engines:
        if engine not in ENGINES:
            p.error(f"--engines: unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    if args.rounds < 1 or args.threads < 1 or args.repeats < 1:
        p.error("--rounds, --threads and --repeats must be >= 1")
    if not (args.bpe_dir / "vocab.json").is_file():
        p.error(f"--bpe-dir {args.bpe_dir}: no vocab.json there")
    if not args.corpus.is_file():
        p.error(f"--corpus {args.corpus}: no such file")
    if any(e.startswith("ct2") for e in args.engines):
        import importlib.util

        if importlib.util.find_spec("ctranslate2") is None:
            log.warning("ctranslate2 not installed: skipping ct2-* (pip install ctranslate2)")
            args.engines = [e for e in args.engines if not e.startswith("ct2")]
    return skip_unavailable(args)


def skip_unavailable(args: argparse.Namespace) -> argparse.Namespace:
    """Drop (with a warning) the llama.cpp engines without their tools, fst-int4 without
    exporter support."""
    if any(e.startswith("llama-") for e in args.engines):
        why = engines_llamacpp.available()
        if why is None and args.llamacpp_src is None:
            why = "no --llamacpp-src / LLAMACPP_SRC (where convert_hf_to_gguf.py is)"
        if why is not None:
            log.warning("skipping llama-*: %s", why)
            args.engines = [e for e in args.engines if not e.startswith("llama-")]
    if "fst-int4" in args.engines and "int4" not in exporter_quantizations():
        log.warning("skipping fst-int4: this fst-export has no --quantize int4")
        args.engines.remove("fst-int4")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.render:
        return render_only(args.render)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return run(args, argv)
    except Exception as e:  # one clear line; the traceback only with -v
        log.debug("failed", exc_info=True)
        print(f"latency.py: {e}", file=sys.stderr)
        return 1


def render_only(path: Path) -> int:
    """Rewrite NAME.md and NAME.png beside an earlier NAME.json (no measurement)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"latency.py: --render {path}: {e}", file=sys.stderr)
        return 2
    common.write_atomic(path.with_suffix(".md"), render_markdown(report))
    render_chart(report, path.with_suffix(".png"))
    return 0


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    machine = common.machine_description()
    size_mb = 256 if args.quick else 1024
    floors_start = floor.measure_floors(args.threads, size_mb=size_mb)
    log.info(
        "bandwidth %.1f GB/s, matmul %.0f GFLOP/s",
        floors_start["bandwidth_gbs"],
        floors_start["matmul_gflops"],
    )
    raw = {}
    for name in args.models:
        art = prepare(name, args)
        prompts = make_prompts(Path(art.paths["hf"]) / "tokenizer.json", args.corpus, args.workload)
        prompts_file = args.cache_dir / name / "prompts.json"
        common.write_atomic(prompts_file, json.dumps(prompts))
        raw[name] = (art, benchmark_model(art, prompts_file, args))
    # Floors measured at both ends; the best one counts (a lower floor is the harder goal).
    floors_end = floor.measure_floors(args.threads, size_mb=size_mb)
    floors = max(floors_start, floors_end, key=lambda f: f["bandwidth_gbs"])
    floors = {
        **floors,
        "matmul_gflops": max(floors_start["matmul_gflops"], floors_end["matmul_gflops"]),
        "start": floors_start,
        "end": floors_end,
    }
    models = {
        name: summarize_model(art, r, floors, args.workload) for name, (art, r) in raw.items()
    }
    report = {
        "schema_version": SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(
            ["python benchmarks/latency.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine,
        "load_average_end": common.load_average(),
        "floors": floors,
        "threads": args.threads,
        "rounds": args.rounds,
        "workload": asdict(args.workload),
        "export": {"optimize": args.optimize, "logits": args.logits},
        "models": models,
    }
    out = args.out_dir
    name = args.out_name
    common.write_atomic(out / f"{name}.json", json.dumps(report, indent=1) + "\n")
    common.write_atomic(out / f"{name}.md", render_markdown(report))
    render_chart(report, out / f"{name}.png")
    log.info("wrote %s", out / f"{name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
