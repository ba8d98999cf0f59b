"""fst's CUDA path beside Hugging Face `generate` on the same GPU (UNTESTED ON GPU so far).

    python -m benchmarks.gpu.run             # on a CUDA machine: GPT-2 small + gpt2-xl shape, <= 6 min
    python -m benchmarks.gpu.run --dry-run   # tiny model, CPU only: checks this script (~1 min)

Needs onnxruntime-gpu (CUDAExecutionProvider) and a CUDA torch; benchmarks/gpu/transfer.md
says how it reaches the device machine, which has no registry. For each model (random
weights from a config, seeded; GPT-2 BPE from the package):

1. export: `--optimize --fp16 --kv_layout shared_right` (GroupQueryAttention over right-padded
   KV buffers that stay on the device; the exporter's own CPU parity check runs too);
2. parity on CUDA: fst (CUDA EP) against PyTorch fp16 on CUDA, prompts of three lengths in
   one right-padded batch, both fed PyTorch's greedy tokens: max |diff| and top-1 agreement;
3. timings, engines interleaved round by round: decode ms/token (median over steps and
   rounds) at each batch size and time to first token (prefill of a `--prompt-len` prompt)
   for fst, Hugging Face `generate` eager (no compile) and Hugging Face `generate` with a
   static cache (which auto-compiles the decode step with torch.compile, mode
   reduce-overhead; its compile/warm-up runs are not timed);
4. floors: weight bytes / measured device copy bandwidth = the HBM weight-read floor of a
   batch-1 decode step; the goals are checked against these figures.

A wall-clock budget (`--budget-s`) keeps the run inside one device call: the xl-shaped
model's depth is chosen to fit what is left (`--xl-layers auto`), and skipped phases are
named in the report. JSON + Markdown are written after every model, so a run cut short
still leaves its figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import common

log = logging.getLogger("gpu")
RESULTS = Path(__file__).resolve().parents[1] / "results"
GOALS = {
    "small_b1_vs_hf_eager": 0.3,  # fst decode ms/token <= 0.3x HF eager, GPT-2 small, batch 1
    "small_b64_tps_vs_hf_static": 1.5,  # fst tokens/s >= 1.5x HF static cache, batch 64
    "xl_b1_vs_floor": 2.0,  # fst decode <= 2x the HBM weight-read floor, gpt2-xl, batch 1
}
SMALL = {"n_layer": 12, "n_head": 12, "n_embd": 768}
XL = {"n_layer": 48, "n_head": 25, "n_embd": 1600}
TINY = {"n_layer": 2, "n_head": 2, "n_embd": 64}
PARITY_LENGTHS = (32, 17, 5)  # one right-padded batch: rows of three lengths
PARITY_STEPS = 8
MIN_TOP1 = 0.8  # the exporter's fp16 gate


@dataclass
class Settings:
    batches: list[int]
    prompt_len: int
    new_tokens: int
    rounds: int
    budget_s: float
    xl_layers: str
    models: list[str]
    dry_run: bool
    compile_batches: list[int]
    work_dir: Path
    out_dir: Path
    name: str

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise ValueError("--batches must be positive integers, e.g. 1,8,64")
        if self.prompt_len < max(PARITY_LENGTHS) or self.prompt_len > 512:
            raise ValueError(f"--prompt-len must be in [{max(PARITY_LENGTHS)}, 512]")
        if self.new_tokens < 4:
            raise ValueError("--new-tokens must be >= 4 (decode steps are timed after the first)")
        if self.rounds < 1 or self.budget_s <= 0:
            raise ValueError("--rounds must be >= 1 and --budget-s > 0")
        if self.xl_layers != "auto" and not (self.xl_layers.isdigit() and int(self.xl_layers) > 0):
            raise ValueError("--xl-layers must be 'auto' or a positive integer")
        unknown = set(self.models) - {"small", "xl"}
        if unknown or not self.models:
            raise ValueError(f"--models takes small and/or xl, got {','.join(self.models)}")


def parse_args(argv: list[str] | None) -> Settings:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--batches", type=ints, default=[1, 8, 64], help="decode batch sizes")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (TTFT, decode)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per engine")
    p.add_argument("--budget-s", type=float, default=300.0, help="wall-clock budget")
    p.add_argument("--xl-layers", default="auto", help="layers of the xl-shaped model (48 = xl)")
    p.add_argument("--models", default="small,xl", help="small and/or xl")
    p.add_argument(
        "--compile-batches", type=ints, default=[64],
        help="GPT-2 small batch sizes for HF static cache + torch.compile (each compiles)",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="tiny model on the CPU (no GPU)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/fst-gpu-bench"))
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--name", default="gpu", help="report file stem")
    a = p.parse_args(argv)
    return Settings(
        batches=a.batches,
        prompt_len=a.prompt_len,
        new_tokens=a.new_tokens,
        rounds=a.rounds,
        budget_s=a.budget_s,
        xl_layers=a.xl_layers,
        models=[m.strip() for m in a.models.split(",") if m.strip()],
        dry_run=a.dry_run,
        compile_batches=a.compile_batches,
        work_dir=a.work_dir,
        out_dir=a.out_dir,
        name=a.name,
    )


# ---- environment --------------------------------------------------------------------------


def environment(dry_run: bool) -> dict[str, Any]:
    """torch first: its CUDA libraries (cudart, cuBLAS, cuDNN) are then loaded for ONNX
    Runtime's CUDA provider too; `preload_dlls` finds the nvidia-* wheels otherwise."""
    import torch  # noqa: I001 (before onnxruntime, on purpose)
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls") and not dry_run:
        try:
            ort.preload_dlls()
        except Exception as exc:  # a missing optional library: the session will say more
            log.warning("onnxruntime.preload_dlls: %s", exc)
    providers = ort.get_available_providers()
    if not dry_run:
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device (use --dry-run on a CPU machine)")
        if "CUDAExecutionProvider" not in providers:
            raise RuntimeError(
                f"onnxruntime {ort.__version__} from {Path(ort.__file__).parent} has no "
                f"CUDAExecutionProvider (providers: {', '.join(providers)}): install "
                "onnxruntime-gpu (benchmarks/gpu/transfer.md)"
            )
    info = {
        "onnxruntime": ort.__version__,
        "onnxruntime_path": str(Path(ort.__file__).parent),
        "providers": providers,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "machine": common.machine_description(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
        }
    return info


def copy_bandwidth_gbs(device: str) -> float:
    """Device copy bandwidth counting bytes read + written (best of 10 after a warm-up)."""
    import torch

    size = 2**30 if device == "cuda" else 2**26
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(11):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size / best / 1e9


# ---- models and bundles ------------------------------------------------------------------


def build_model(work: Path, name: str, shape: dict[str, int], device: str) -> Path:
    """A seeded random GPT-2 of `shape` saved as a Hugging Face folder (with the GPT-2 BPE)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from fst.core.tokenization import GPT2_BPE_DIR

    folder = work / name / "hf"
    tokenizer = GPT2TokenizerFast(
        vocab=str(GPT2_BPE_DIR / "vocab.json"), merges=str(GPT2_BPE_DIR / "merges.txt")
    )
    torch.manual_seed(0)
    if len(tokenizer) != 50257:
        raise RuntimeError(f"the GPT-2 BPE did not load ({len(tokenizer)} tokens)")
    config = GPT2Config(**shape, vocab_size=len(tokenizer), n_positions=1024)
    with torch.device(device):  # random init on the GPU: seconds instead of a minute for xl
        model = GPT2LMHeadModel(config)
    model.to("cpu").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def export(work: Path, name: str, model_dir: Path) -> tuple[Path, dict[str, Any]]:
    from fst.export.exporter import export_bundle

    output = work / name / "bundle-fp16-shared_right"
    start = time.perf_counter()
    manifest = export_bundle(
        output,
        model_path=str(model_dir),
        optimize=True,
        fp16=True,
        kv_layout="shared_right",
        force=True,
        progress=True,
    )
    seconds = time.perf_counter() - start
    return output, {"export_s": seconds, "cpu_parity": manifest.parity.model_dump()}


def weight_bytes(bundle: Path) -> int:
    """Bytes of the graph's initializers (what a decode step reads once per token)."""
    import onnx

    from fst.core.bundle import BundleManifest

    manifest = BundleManifest.load(bundle)
    model = onnx.load(str(bundle / manifest.graph.file), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next(e.value for e in t.external_data if e.key == "length"))
        else:
            total += len(t.raw_data) or t.ByteSize()
    return total


# ---- engines --------------------------------------------------------------------------------


class FstEngine:
    """fst's stepper on the bundle: the KV cache stays on the device between steps."""

    def __init__(self, bundle: Path, provider: str) -> None:
        from fst.core.bundle import BundleManifest
        from fst.core.constants import BUNDLE_MODEL
        from fst.runtime.kv_cache import make_stepper
        from fst.runtime.session import create_session

        manifest = BundleManifest.load(bundle)
        session, self.provider = create_session(bundle / BUNDLE_MODEL, providers=[provider])
        self.stepper = make_stepper(session, manifest)

    def run(self, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        """Greedy; returns TTFT (prefill) seconds, per-step decode seconds and the tokens."""
        import numpy as np

        start = time.perf_counter()
        logits, cache = self.stepper.prefill(prompts, pad_id=0, reserve=new_tokens)
        tokens = logits.argmax(-1)
        ttft = time.perf_counter() - start
        steps, out = [], [tokens]
        for _ in range(new_tokens - 1):
            start = time.perf_counter()
            logits = self.stepper.decode(cache, tokens)
            tokens = logits.argmax(-1)
            steps.append(time.perf_counter() - start)
            out.append(tokens)
        return {"ttft_s": ttft, "step_s": steps, "tokens": np.stack(out, 1)}


class _TokenClock:
    """A logits processor that notes the time at each generated token (after a sync)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.times = cuda, []

    def __call__(self, input_ids, scores):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        return scores


class HFEngine:
    """Hugging Face `generate`, greedy, on the same device; "static" = static cache, whose
    decode step transformers compiles with torch.compile (mode reduce-overhead)."""

    def __init__(self, model, cache: str, device: str) -> None:
        self.model, self.cache, self.cuda = model, cache, device == "cuda"
        self.device = device

    def run(self, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        import torch
        from transformers import LogitsProcessorList

        ids = torch.tensor(prompts, device=self.device)
        clock = _TokenClock(self.cuda)
        kwargs: dict[str, Any] = {}
        if self.cache == "static":
            kwargs["cache_implementation"] = "static"
            if not self.cuda:
                kwargs["disable_compile"] = True  # --dry-run: no inductor on a CPU check
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=0,
                logits_processor=LogitsProcessorList([clock]),
                **kwargs,
            )
        times = clock.times
        steps = [b - a for a, b in zip(times, times[1:], strict=False)]
        return {"ttft_s": times[0] - start, "step_s": steps, "tokens": out[:, ids.shape[1] :]}


def cuda_parity(engine: FstEngine, model, device: str) -> dict[str, Any]:
    """fst against PyTorch on the same device: one right-padded batch of three prompt
    lengths, both sides fed PyTorch's greedy tokens, each PyTorch row run alone."""
    import numpy as np
    import torch
    from transformers import DynamicCache

    from fst.export.hf_cache import cache_kwargs, returned_cache

    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 50000, n).tolist() for n in PARITY_LENGTHS]
    stepper = engine.stepper
    logits, cache = stepper.prefill(prompts, pad_id=0, reserve=PARITY_STEPS)
    caches = [DynamicCache() for _ in prompts]
    inputs: list[list[int]] = prompts
    diffs, agree, checked = [], 0, 0
    for step in range(PARITY_STEPS):
        reference = []
        with torch.inference_mode():
            for row, tokens in enumerate(inputs):
                out = model(
                    input_ids=torch.tensor([tokens], device=device),
                    **cache_kwargs(caches[row]),
                    use_cache=True,
                )
                caches[row] = returned_cache(out)
                reference.append(out.logits[0, -1].float().cpu().numpy())
        reference = np.stack(reference)
        diffs.append(float(np.abs(logits - reference).max()))
        agree += int((logits.argmax(-1) == reference.argmax(-1)).sum())
        checked += len(prompts)
        tokens = reference.argmax(-1)
        if step + 1 < PARITY_STEPS:
            logits = stepper.decode(cache, tokens)
        inputs = [[int(t)] for t in tokens]
    top1 = agree / checked
    return {
        "max_abs_diff": max(diffs),
        "top1_agreement": top1,
        "checked_positions": checked,
        "passed": bool(np.isfinite(diffs).all()) and top1 >= MIN_TOP1,
        "prompt_lengths": list(PARITY_LENGTHS),
    }


def load_hf(model_dir: Path, device: str):
    import torch
    from transformers import GPT2LMHeadModel

    dtype = torch.float16 if device == "cuda" else torch.float32
    return GPT2LMHeadModel.from_pretrained(model_dir, dtype=dtype).to(device).eval()


# ---- measurement ----------------------------------------------------------------------------


def measure(
    engines: dict[str, Any],
    batches: list[int],
    settings: Settings,
    compile_batches: list[int],
    deadline: float = float("inf"),
) -> dict[str, Any]:
    """Every engine at every batch size, engines interleaved within each round; the first
    run of each (engine, batch) is a warm-up (for the static cache: the compile). Batch
    sizes not started by `deadline` are left out."""
    import numpy as np

    rng = np.random.default_rng(0)
    results: dict[str, dict[int, dict[str, list[float]]]] = {}
    errors: dict[str, str] = {}
    for batch in batches:
        if time.perf_counter() > deadline:
            break
        prompts = rng.integers(0, 50000, (batch, settings.prompt_len)).tolist()
        active = {n: e for n, e in engines.items() if n != "hf_static" or batch in compile_batches}
        for name, engine in list(active.items()):
            start = time.perf_counter()
            try:
                engine.run(prompts, settings.new_tokens)  # warm-up / compile
            except Exception as exc:  # one engine failing must not lose the others' figures
                log.exception("%s at batch %d", name, batch)
                errors[f"{name}@{batch}"] = f"{type(exc).__name__}: {exc}"[:500]
                del active[name]
                continue
            results.setdefault(name, {})[batch] = {
                "ttft_s": [],
                "step_s": [],
                "warmup_s": [time.perf_counter() - start],
            }
        for _ in range(settings.rounds):
            for name, engine in active.items():
                run = engine.run(prompts, settings.new_tokens)
                results[name][batch]["ttft_s"].append(run["ttft_s"])
                results[name][batch]["step_s"].extend(run["step_s"])
    table: dict[str, Any] = {}
    for name, by_batch in results.items():
        table[name] = {}
        for batch, r in by_batch.items():
            decode_ms = common.median(r["step_s"]) * 1e3
            table[name][str(batch)] = {
                "decode_ms_per_step": decode_ms,
                "tokens_per_s": batch / decode_ms * 1e3,
                "ttft_ms": common.median(r["ttft_s"]) * 1e3,
                "warmup_s": r["warmup_s"][0],
                "steps_timed": len(r["step_s"]),
            }
    if errors:
        table["errors"] = errors
    return table


def bench_model(
    label: str, shape: dict[str, int], settings: Settings, device: str, deadline: float
) -> dict[str, Any]:
    import torch

    provider = "cuda" if device == "cuda" else "cpu"
    t0 = time.perf_counter()
    model_dir = build_model(settings.work_dir, label, shape, device)
    build_s = time.perf_counter() - t0
    bundle, export_info = export(settings.work_dir, label, model_dir)
    result: dict[str, Any] = {"shape": shape, "build_s": build_s, **export_info}
    result["weight_bytes"] = weight_bytes(bundle)
    engine = FstEngine(bundle, provider)
    result["fst_provider"] = engine.provider
    model = load_hf(model_dir, device)
    try:
        parity = cuda_parity(engine, model, device)
    except Exception as exc:  # say so, and still time the engines
        log.exception("parity")
        parity = {"passed": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    result["cuda_parity" if device == "cuda" else "parity"] = parity
    engines = {
        "fst": engine,
        "hf_eager": HFEngine(model, "dynamic", device),
        "hf_static": HFEngine(model, "static", device),
    }
    batches = list(settings.batches)
    if time.perf_counter() > deadline:
        result["skipped"] = "timings: over budget after export"
        return result
    # xl: no static-cache engine (each batch size is one more compile; its goal is the floor).
    compile_batches = settings.compile_batches if label == "small" else []
    result["timings"] = measure(engines, batches, settings, compile_batches, deadline)
    failed = result["timings"].get("errors", {})
    skipped = [
        b
        for b in batches
        if str(b) not in result["timings"].get("fst", {}) and f"fst@{b}" not in failed
    ]
    if skipped:
        result["skipped"] = f"batches {skipped}: over budget"
    del engines, model, engine
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def xl_layers(
    settings: Settings, small: dict[str, Any] | None, left_s: float
) -> tuple[int | None, str]:
    """The xl-shaped model's depth: 48 unless `auto` and the time left would not fit it
    (estimated from GPT-2 small's build + export seconds, scaled by parameter count); None
    when not even 6 layers fit (skipped rather than cut off mid-run)."""
    if settings.xl_layers != "auto":
        return int(settings.xl_layers), "asked for"
    if small is None:
        return 48, "no GPT-2 small run to estimate from"
    per_param = (small["build_s"] + small["export_s"]) / _params(SMALL)
    for layers in (48, 36, 24, 12, 6):
        estimate = per_param * _params({**XL, "n_layer": layers}) * 1.3 + 45  # + timings
        if estimate < left_s:
            return layers, f"estimated {estimate:.0f} s of {left_s:.0f} s left"
    return None, f"not even 6 layers fit the {left_s:.0f} s left (estimated from GPT-2 small)"


def _params(shape: dict[str, int]) -> int:
    d = shape["n_embd"]
    return 50257 * d + shape["n_layer"] * 12 * d * d


def goals(models: dict[str, Any], bandwidth_gbs: float) -> dict[str, Any]:
    """The goals, where the figures exist (None = not measured)."""

    def cell(model: str, engine: str, batch: int, key: str) -> float | None:
        try:
            return models[model]["timings"][engine][str(batch)][key]
        except KeyError:
            return None

    b1 = common.ratio(
        cell("small", "fst", 1, "decode_ms_per_step"),
        cell("small", "hf_eager", 1, "decode_ms_per_step"),
    )
    b64 = common.ratio(
        cell("small", "fst", 64, "tokens_per_s"), cell("small", "hf_static", 64, "tokens_per_s")
    )
    xl_floor = None
    if "xl" in models and "weight_bytes" in models["xl"]:
        floor_ms = models["xl"]["weight_bytes"] / (bandwidth_gbs / 2 * 1e9) * 1e3  # reads only
        xl_floor = common.ratio(cell("xl", "fst", 1, "decode_ms_per_step"), floor_ms)
        models["xl"]["floor_ms_per_step"] = floor_ms
    return {
        "small_b1_vs_hf_eager": {"value": b1, "goal": f"<= {GOALS['small_b1_vs_hf_eager']}"},
        "small_b64_tps_vs_hf_static": {
            "value": b64,
            "goal": f">= {GOALS['small_b64_tps_vs_hf_static']}",
        },
        "xl_b1_vs_floor": {"value": xl_floor, "goal": f"<= {GOALS['xl_b1_vs_floor']}"},
        "met": {
            "small_b1_vs_hf_eager": b1 is not None and b1 <= GOALS["small_b1_vs_hf_eager"],
            "small_b64_tps_vs_hf_static": b64 is not None
            and b64 >= GOALS["small_b64_tps_vs_hf_static"],
            "xl_b1_vs_floor": xl_floor is not None and xl_floor <= GOALS["xl_b1_vs_floor"],
        },
    }


# ---- report ---------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    env, lines = report["environment"], []
    gpu = env.get("gpu", {}).get("name", "no GPU (dry run)")
    lines += [
        f"# GPU benchmark ({'DRY RUN, CPU only: not GPU figures' if report['dry_run'] else gpu})",
        "",
        f"`{report['command']}`; onnxruntime {env['onnxruntime']} ({', '.join(env['providers'])}),"
        f" torch {env['torch']} (CUDA {env['torch_cuda']}); device copy bandwidth "
        f"{report['copy_bandwidth_gbs']:.0f} GB/s (read + write); prompt "
        f"{report['settings']['prompt_len']} tokens, {report['settings']['new_tokens']} new "
        f"tokens, {report['settings']['rounds']} rounds; medians. "
        f"{'Complete.' if report['complete'] else 'INCOMPLETE (cut short).'}",
        "",
    ]
    for label, m in report["models"].items():
        parity = m.get("cuda_parity") or m.get("parity") or {}
        lines += [
            f"## {label}: {m['shape']['n_layer']} layers x {m['shape']['n_embd']} "
            f"({m['weight_bytes'] / 2**20:.0f} MiB of fp16 weights)",
            "",
            f"Export {m['export_s']:.0f} s; parity on the device: max |diff| "
            f"{parity.get('max_abs_diff', float('nan')):.3g}, top-1 "
            f"{parity.get('top1_agreement', float('nan')):.3f} over "
            f"{parity.get('checked_positions', 0)} positions "
            f"({'passed' if parity.get('passed') else 'FAILED'}); fst provider "
            f"{m['fst_provider']}."
            + (f" Floor {m['floor_ms_per_step']:.2f} ms/step." if "floor_ms_per_step" in m else ""),
            "",
            "| engine | batch | decode ms/step | tokens/s | TTFT ms | warm-up s |",
            "|---|---|---|---|---|---|",
        ]
        for engine, by_batch in m.get("timings", {}).items():
            if engine == "errors":
                continue
            for batch, r in by_batch.items():
                lines.append(
                    f"| {engine} | {batch} | {r['decode_ms_per_step']:.2f} | "
                    f"{r['tokens_per_s']:.0f} | {r['ttft_ms']:.1f} | {r['warmup_s']:.1f} |"
                )
        if "skipped" in m:
            lines.append(f"\nSkipped: {m['skipped']}")
        for where, error in m.get("timings", {}).get("errors", {}).items():
            lines.append(f"\nFAILED {where}: {error}")
        lines.append("")
    g = report.get("goals", {})
    if g:
        lines += ["## Goals", "", "| goal | value | target | met |", "|---|---|---|---|"]
        for key in GOALS:
            lines.append(
                f"| {key} | {common.fmt(g[key]['value'], 2)} | {g[key]['goal']} | "
                f"{'yes' if g['met'][key] else 'no'} |"
            )
    for note in report["notes"]:
        lines.append(f"\n- {note}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        settings = parse_args(argv)
        env = environment(settings.dry_run)
    except (ValueError, RuntimeError) as exc:
        print(f"{__spec__.name}: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    deadline = started + settings.budget_s
    device = "cpu" if settings.dry_run else "cuda"
    report: dict[str, Any] = {
        "command": "python -m benchmarks.gpu.run "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "dry_run": settings.dry_run,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "environment": env,
        "copy_bandwidth_gbs": copy_bandwidth_gbs(device),
        "models": {},
        "notes": [
            "hf_eager: generate with the model's default attention (sdpa) and a dynamic "
            "cache, no compile; hf_static: cache_implementation='static', whose decode step "
            "transformers compiles (torch.compile, mode reduce-overhead); fst: the "
            "shared_right fp16 bundle, KV cache on the device, greedy on the host",
            "decode ms/step: median over every timed step of every round; TTFT: prefill of "
            "the prompt up to the first token's logits on the host",
        ],
        "complete": False,
    }
    save = lambda: common.write_report(settings.out_dir, settings.name, report, markdown(report))  # noqa: E731
    small = None
    for label in settings.models:
        left = deadline - time.perf_counter()
        if settings.dry_run:
            shape = TINY
        elif label == "small":
            shape = SMALL
        else:
            layers, why = xl_layers(settings, small, left)
            if layers is None:
                report["notes"].append(f"xl-shaped model skipped: {why}")
                continue
            shape = {**XL, "n_layer": layers}
            report["notes"].append(f"xl-shaped model: {layers} of 48 layers ({why})")
        if left < 30:
            report["notes"].append(f"{label}: skipped, {left:.0f} s of budget left")
            continue
        log.info("== %s %s (%.0f s left)", label, shape, left)
        try:
            report["models"][label] = bench_model(label, shape, settings, device, deadline)
        except Exception as exc:  # e.g. an export failure: keep what the other model gives
            log.exception(label)
            report["notes"].append(f"{label} FAILED: {type(exc).__name__}: {exc}"[:800])
            continue
        if label == "small":
            small = report["models"][label]
        report["goals"] = goals(report["models"], report["copy_bandwidth_gbs"])
        save()
    report["complete"] = all(m in report["models"] for m in settings.models)
    report["wall_s"] = time.perf_counter() - started
    report["goals"] = goals(report["models"], report["copy_bandwidth_gbs"])
    save()
    print(markdown(report))
    print(json.dumps(report["goals"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
