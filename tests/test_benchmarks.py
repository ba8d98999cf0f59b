"""The benchmark harnesses: their helpers, their goal arithmetic, and a smoke run end to end.

The helpers are checked against hand-computed values, and both scripts run end to end on a
tiny model (latency: HF + our fp32 bundle, one round, ~25 s on an idle 2-core machine;
training: one short fit per loss, ~10 s) so they do not rot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import common
from benchmarks.latency import goals as latency_goals
from benchmarks.latency import models as latency_models
from benchmarks.latency import run as latency
from benchmarks.latency.spec import Workload

REPO = Path(__file__).resolve().parents[1]


def test_summarize_median_min_max() -> None:
    assert common.summarize([3.0, 1.0, 2.0, 10.0]) == {
        "median": 2.5,
        "min": 1.0,
        "max": 10.0,
        "n": 4,
    }
    with pytest.raises(ValueError):
        common.summarize([])


def test_ratio_is_none_when_a_side_is_missing() -> None:
    assert common.ratio(1.0, 4.0) == 0.25
    assert common.ratio(None, 4.0) is None
    assert common.ratio(1.0, None) is None


def test_cpu_info_reads_model_and_kernel_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Fancy CPU 9000\nflags\t\t: fpu sse4_2 avx2 fma avx512f\n\n"
        "processor\t: 1\nmodel name\t: Fancy CPU 9000\nflags\t\t: fpu sse4_2 avx2 fma avx512f\n"
    )
    info = common.cpu_info(str(cpuinfo))
    assert info["model"] == "Fancy CPU 9000"
    assert info["flags"] == ["sse4_2", "avx2", "fma", "avx512f"]  # in INTERESTING_FLAGS order


def test_peak_rss_sees_a_large_allocation() -> None:
    before = common.peak_rss_mb()
    # 200 MB above the peak so far, written so it is resident: earlier tests in this process
    # may have freed memory, leaving the resident size well under the peak.
    resident = common.proc_mb("/proc/self/status", "VmRSS") or before
    block = np.ones(int((before - resident + 200) * 1024 * 1024) // 8)
    assert common.peak_rss_mb() >= before + 150
    del block


def test_write_atomic_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.md"
    common.write_atomic(target, "one")
    common.write_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["report.md"]  # no temp file left


def test_prompts_are_exact_token_windows(tmp_path: Path, gpt2_bpe_dir: Path, nietzsche_dir: Path):
    from tokenizers import ByteLevelBPETokenizer, Tokenizer

    raw = ByteLevelBPETokenizer(str(gpt2_bpe_dir / "vocab.json"), str(gpt2_bpe_dir / "merges.txt"))
    raw.save(str(tmp_path / "tokenizer.json"))
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    w = Workload(prompt_lengths=(32, 100), batch=3, past_lengths=(20, 300))
    prompts = latency_models.make_prompts(
        tmp_path / "tokenizer.json", nietzsche_dir / "train.documents", w
    )

    every = [*prompts["prompt"].values(), *prompts["batch"], *prompts["past"].values()]
    for p in every:  # the text our runtime gets encodes to the ids HF and CTranslate2 get
        assert tokenizer.encode(p["text"]).ids == p["ids"]
    assert [len(prompts["prompt"][str(n)]["ids"]) for n in (32, 100)] == [32, 100]
    assert [len(prompts["past"][str(n)]["ids"]) for n in (20, 300)] == [20, 300]
    rows = [tuple(p["ids"]) for p in prompts["batch"]]
    assert len(rows) == 3 and len(set(rows)) == 3 and {len(r) for r in rows} == {32}


def test_goals_from_medians() -> None:
    w = Workload()
    med = {
        "hf": {"b1_p32.decode_ms": 50.0},
        "fst-fp32": {
            "b1_p32.decode_ms": 20.0,
            "b1_p32.ttft_ms": 90.0,
            "b1_p512.ttft_ms": 700.0,
            "b8.tokens_per_s": 150.0,
            "b1_p32.python_overhead_share": 0.03,
        },
        "ct2-fp32": {
            "b1_p32.decode_ms": 18.0,
            "b1_p32.ttft_ms": 100.0,
            "b1_p512.ttft_ms": 600.0,
            "b8.tokens_per_s": 100.0,
        },
        "fst-int8": {"b1_p32.decode_ms": 9.0, "peak_rss_mb": 420.0},
    }
    goals = {g["goal"]: g for g in latency_goals.goals(med, {"fp32": 16.0, "int8": 4.0}, w)}

    def check(goal: str, value: float | None, met: bool | None) -> None:
        if value is None:
            assert goals[goal]["value"] is None
        else:
            assert goals[goal]["value"] == pytest.approx(value)
        assert goals[goal]["met"] is met

    check("fp32 decode / HF eager decode", 0.4, True)
    check("fp32 decode / CTranslate2 fp32 decode", 20 / 18, False)
    check("fp32 decode / fp32 bandwidth floor", 1.25, False)
    check("int8 decode / CTranslate2 int8 decode", None, None)  # CTranslate2 int8 absent
    check("int8 decode / int8 bandwidth floor", 2.25, False)
    check("fst-fp32 TTFT (32-token prompt) / ct2-fp32", 0.9, True)
    check("fst-fp32 TTFT (512-token prompt) / ct2-fp32", 700 / 600, False)
    check("fst-fp32 batch-8 tokens/s / ct2-fp32", 1.5, True)  # an "at least" goal
    check("fst-fp32 per-step Python overhead / decode step", 0.03, True)
    check("fst-int8 peak RSS MB (batch 1)", 420.0, False)


def test_prefill_flops_of_gpt2_small() -> None:
    # GPT-2 small: 124.44 M parameters, 0.79 M of them position embeddings.
    art = latency_models.Artifacts(
        name="gpt2-small",
        config={},
        params=124_439_808,
        weight_params=124_439_808 - 1024 * 768,
        dims={"n_layer": 12, "n_embd": 768, "vocab_size": 50257},
    )
    blocks = 124_439_808 - 1024 * 768 - 50257 * 768  # 84.9 M in the transformer blocks
    expected = (2 * blocks * 32 + 2 * 12 * 32**2 * 768 + 2 * 50257 * 768) / 1e9
    assert latency_models.prefill_gflop(art, 32) == pytest.approx(expected)
    assert 5.4 < expected < 5.6


def test_cli_rejects_an_unknown_model() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.latency.run", "--models", "gpt5"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "--models: unknown model 'gpt5'" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr


def test_latency_quick_run_end_to_end(tmp_path: Path) -> None:
    """Tiny model, HF and our fp32 bundle, one round: every stage of the script runs."""
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.latency.run", "--quick", "--engines", "hf,fst-fp32"]
    cmd += ["--rounds", "1", "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # The default name says what was measured: the models, then the engines.
    report = json.loads((out / "latency-tiny-hf-fst-fp32.json").read_text())
    assert report["schema_version"] == latency.SCHEMA_VERSION
    assert report["floors"]["bandwidth_gbs"] > 0 and report["floors"]["matmul_gflops"] > 0
    model = report["models"]["tiny"]
    assert set(model["engines"]) == {"hf", "fst-fp32"}
    w = Workload(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in report["workload"].items()}
    )
    keys = {f"b1_p{n}.{m}" for n in w.prompt_lengths for m in ("ttft_ms", "decode_ms")}
    keys |= {f"b{w.batch}.tokens_per_s", "peak_rss_mb", "peak_rss_mb_all", "load_s"}
    keys |= {f"past_{n}.decode_ms" for n in w.past_lengths}
    for engine in ("hf", "fst-fp32"):
        summary = model["engines"][engine]["summary"]
        assert keys <= set(summary)
        assert all(s["n"] == 1 and s["min"] <= s["median"] <= s["max"] for s in summary.values())
        assert summary["b1_p32.decode_ms"]["median"] > 0
    # Our runtime reports how its decode phase splits; the share is a fraction.
    assert (
        0 <= model["engines"]["fst-fp32"]["summary"]["b1_p32.python_overhead_share"]["median"] < 1
    )
    # Same weights, greedy: our fp32 bundle continues exactly like Hugging Face.
    assert model["greedy_agreement"]["fst-fp32 vs hf"]["equal_fraction"] == 1.0
    assert model["ratios"]["fst-fp32"]["decode_vs_hf"] > 0
    assert {g["goal"] for g in model["goals"]} >= {"fp32 decode / HF eager decode"}
    assert "| fst runtime, fp32 bundle |" in (out / "latency-tiny-hf-fst-fp32.md").read_text()
    pytest.importorskip("matplotlib")
    assert (out / "latency-tiny-hf-fst-fp32.png").stat().st_size > 1000


def test_training_quick_run_end_to_end(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.quality.unlikelihood_cost", "--quick"]
    cmd += ["--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "unlikelihood-cost-training-step-gpt2.json").read_text())
    tiny = report["presets"]["tiny"]
    lm, ul = tiny["tokens_per_s"]["lm"]["median"], tiny["tokens_per_s"]["lm+ul"]["median"]
    assert lm > 0 and ul > 0
    assert tiny["ul_overhead"] == pytest.approx(lm / ul)
    assert "| tiny |" in (tmp_path / "unlikelihood-cost-training-step-gpt2.md").read_text()


def test_kv_layout_benchmark_runs_end_to_end(tmp_path) -> None:
    """benchmarks/latency/kv_layout.py on a tiny model: four --optimize exports, one round."""
    from benchmarks.latency import kv_layout

    out = tmp_path / "results"
    args = ["--model", "tiny", "--rounds", "1", "--steps", "2", "--past", "8",
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out)]  # fmt: skip
    assert kv_layout.main(args) == 0
    report = json.loads((out / "kv-layout-decode-tiny-fst.json").read_text())
    for variant in ("fp32", "int8"):
        row = report["results"][variant]["8"]
        assert row["shared"]["n"] == row["concat"]["n"] == 1
        assert row["ratio"] == pytest.approx(row["shared"]["median"] / row["concat"]["median"])
    layouts = {
        json.loads((p / "fst_bundle.json").read_text())["graph"]["kv_layout"]
        for p in (tmp_path / "cache" / "tiny").glob("kv-*")
    }
    assert layouts == {"shared", "concat"}
    assert "| int8 | 8 |" in (out / "kv-layout-decode-tiny-fst.md").read_text()


def test_export_time_benchmark_runs_end_to_end(tmp_path) -> None:
    """benchmarks/sizes/export_time.py on a tiny model: plain and optimized exports, one round."""
    from benchmarks.sizes import export_time

    out = tmp_path / "results"
    args = ["--models", "tiny", "--rounds", "1", "--steps", "2", "--past", "8",
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out)]  # fmt: skip
    assert export_time.main(args) == 0
    row = json.loads((out / f"{export_time.STEM}.json").read_text())["results"]["tiny"]
    assert row["export_s"]["plain"]["n"] == row["export_s"]["optimized"]["n"] == 1
    ratio = row["export_s"]["optimized"]["median"] / row["export_s"]["plain"]["median"]
    assert row["export_ratio"] == pytest.approx(ratio)
    assert row["kv_layout"] == {"plain": "concat", "optimized": "shared"}
    graphs = {
        p.name: json.loads((p / "fst_bundle.json").read_text())["graph"]["optimized"]
        for p in (tmp_path / "cache" / "tiny").glob("export-time-*")
    }
    assert graphs == {"export-time-plain": False, "export-time-optimized": True}
    assert "| tiny |" in (out / f"{export_time.STEM}.md").read_text()
    # Decode only: the bundles above are reused, nothing is exported or timed.
    manifests = sorted((tmp_path / "cache" / "tiny").glob("export-time-*/fst_bundle.json"))
    written = [m.stat().st_mtime_ns for m in manifests]
    args += ["--export-rounds", "0", "--decode-rounds", "2", "--out-name", "decode"]
    assert export_time.main(args) == 0
    assert [m.stat().st_mtime_ns for m in manifests] == written
    row = json.loads((out / "decode.json").read_text())["results"]["tiny"]
    assert row["export_s"] == {"plain": None, "optimized": None} and row["export_ratio"] is None
    assert row["decode_ms"]["plain"]["n"] == row["decode_ms"]["optimized"]["n"] == 2


def test_huge_pages_benchmark_runs_end_to_end(tmp_path) -> None:
    """benchmarks/latency/huge_pages.py on a tiny model: two exports, one round of worker processes."""
    from benchmarks.latency import huge_pages

    out = tmp_path / "results"
    args = ["--model", "tiny", "--rounds", "1", "--steps", "2", "--past", "8",
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out)]  # fmt: skip
    assert huge_pages.main(args) == 0
    report = json.loads((out / "huge-pages-decode-tiny-fst.json").read_text())
    for variant in ("fp32", "int8"):
        row = report["results"][variant]
        assert row["huge"]["n"] == row["4k"]["n"] == 1
        assert row["ratio"] == pytest.approx(row["huge"]["median"] / row["4k"]["median"])
        assert set(row["anon_huge_mb"]) == {"4k", "huge"}
    assert "| int8 |" in (out / "huge-pages-decode-tiny-fst.md").read_text()


def test_floor_is_never_above_the_fastest_engine() -> None:
    from benchmarks.latency import floor

    measured = {"fp32": 14.6, "int8": 3.6, "int4": 1.8}
    capped, notes = floor.cap_floors(
        measured, {"fp32": ("llama-f32", 10.9), "int8": ("fst-int8", 3.9)}
    )
    assert capped == {"fp32": 10.9, "int8": 3.6, "int4": 1.8}  # int8: 3.9 ms is above 3.6
    assert list(notes) == ["fp32"] and "llama-f32" in notes["fp32"]


def test_c_stream_reads_a_buffer() -> None:
    from benchmarks.latency import floor

    gbs = floor.c_stream_gbs(size_mb=16, threads=1, repeats=1)
    if not gbs:
        pytest.skip("no C compiler with OpenMP here")
    assert gbs["c_stream"] > 0.1  # GB/s; any real machine reads 16 MB faster than this


def test_ort_floor_chain_has_no_two_equal_matrices() -> None:
    """ONNX Runtime shares equal initializers: a chain of equal matrices reads one pair from
    the cache and reports several times the machine's bandwidth (it once said 153 GB/s)."""
    import hashlib

    from onnx import numpy_helper

    from benchmarks.latency import floor

    model = floor.matmul_chain(size_mb=64)
    digests = [
        hashlib.sha256(numpy_helper.to_array(w).tobytes()).hexdigest()
        for w in model.graph.initializer
    ]
    assert len(digests) >= 4
    assert len(set(digests)) == len(digests)
    total = sum(numpy_helper.to_array(w).nbytes for w in model.graph.initializer)
    assert 0.8 * 64 * 2**20 <= total <= 64 * 2**20  # the size asked for, far above an L3


def test_goals_against_llamacpp() -> None:
    w = Workload()
    med = {
        "fst-fp32": {"b1_p32.decode_ms": 11.0, "past_32.decode_ms": 10.0, "b1_p32.ttft_ms": 40},
        "llama-f32": {"b1_p32.decode_ms": 10.0, "past_32.decode_ms": 10.5, "b1_p32.ttft_ms": 50},
        "fst-int4": {"b1_p32.decode_ms": 2.0},
        "llama-q4_0": {"b1_p32.decode_ms": 4.0},
    }
    goals = {
        g["goal"]: g for g in latency_goals.goals(med, {"fp32": 9.0, "int8": 3.0, "int4": 1.5}, w)
    }
    assert goals["fst-fp32 decode / llama-f32"]["value"] == pytest.approx(1.1)
    assert goals["fst-fp32 decode / llama-f32"]["met"] is False
    assert goals["fp32 decode at past 32 / llama.cpp f32"]["met"] is True
    assert goals["fp32 decode at past 1000 / llama.cpp f32"]["met"] is None  # not measured
    assert goals["fst-fp32 TTFT (32-token prompt) / llama-f32"]["value"] == pytest.approx(0.8)
    assert goals["fst-int4 decode / llama-q4_0"]["value"] == pytest.approx(0.5)
    assert goals["int4 decode / int4 bandwidth floor"]["value"] == pytest.approx(2 / 1.5)
    assert goals["fst-int8 decode / llama-q8_0"]["met"] is None


def test_llamacpp_engines_need_a_converter(tmp_path: Path) -> None:
    from benchmarks.latency import engines_llamacpp

    with pytest.raises(ValueError, match="--llamacpp-src"):
        engines_llamacpp.find_converter(None)
    with pytest.raises(ValueError, match="no convert_hf_to_gguf.py"):
        engines_llamacpp.find_converter(tmp_path)
    assert engines_llamacpp.convert(tmp_path, tmp_path / "g", ["hf", "fst-fp32"], None) == {}


def test_exporter_quantizations_include_int8() -> None:
    assert "int8" in latency_models.exporter_quantizations()


@pytest.mark.parametrize("name", ["distilgpt2", "smollm2-135m"])
def test_sizes_parameter_counts_match_the_models_it_builds(name: str) -> None:
    import transformers

    from benchmarks.sizes import bundles as sizes
    from fst.training.model import PRESETS

    if name in sizes.LLAMA:
        config = dict(PRESETS[sizes.SIZES[name]["preset"]], vocab_size=50257)
        config.pop("model_type")
        with torch_device_meta():
            model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
        kv_heads, head_dim = config["num_key_value_heads"], config["head_dim"]
        assert sizes.SIZES[name]["kv_dim"] == kv_heads * head_dim
        assert sizes.SIZES[name]["intermediate"] == config["intermediate_size"]
    else:
        with torch_device_meta():
            model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**sizes.SIZES[name]))
    # parameters() counts a tied head once, as param_counts does.
    assert sizes.param_counts(name)["params"] == sum(p.numel() for p in model.parameters())


def torch_device_meta():
    import torch

    return torch.device("meta")


def test_burst_report_reads_the_prefill_counter_and_takes_medians() -> None:
    from benchmarks.serving import burst

    metrics = (
        'fst_model_call_duration_seconds_count{kind="decode"} 40.0\n'
        'fst_model_call_duration_seconds_count{kind="prefill"} 4.0\n'
    )
    assert burst._counter(metrics, 'fst_model_call_duration_seconds_count{kind="prefill"}') == 4
    assert burst._counter(metrics, "absent") == 0
    rounds = [
        {"ttft_p50_s": t, "ttft_p95_s": 2 * t, "tokens_per_s": 100 * t, "requests_per_prefill": 16}
        for t in (1.0, 3.0, 2.0)
    ]
    report = {
        "settings": {
            "bundle": "b", "requests": 64, "max_tokens": 32, "rounds": 3, "prompt_chars": 160,
            "threads": 2, "variants": {"no-limit": ["--max_prefill_tokens", "0"], "budget": []},
        },
        "bundle_variant": "int4",
        "variants": {"no-limit": rounds, "budget": rounds},
        "load_before": [0, 0, 0],
        "load_after": [0, 0, 0],
        "machine": {"cpu": {"model": "cpu", "usable_cores": 2}},
    }  # fmt: skip
    text = burst.render_markdown(report)
    assert "| no-limit | `--max_prefill_tokens 0` | 2.00 (1.00, 3.00, 2.00) |" in text
    assert "| budget | `(defaults)` |" in text and "| 200 (100, 300, 200) | 16.0 |" in text
