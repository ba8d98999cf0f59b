"""benchmarks/serving/load.py's comparison with llama-server: options, figures and report, without
llama.cpp (the servers themselves only run in the benchmark)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from benchmarks.serving import harness
from benchmarks.serving import llamacpp as serving_llamacpp
from benchmarks.serving import load as serving_load


def test_formats_name_the_results_by_what_they_compare(monkeypatch) -> None:
    monkeypatch.delenv("LLAMA_SERVER", raising=False)
    args = serving_load.parse_args(["--formats", "int8", "int4"])
    assert args.name == "serving-fst-vs-llama-server-gpt2small"
    assert args.threads == 2  # both servers get the same threads
    assert args.llama_server is None  # the run then warns and measures fst-serve alone
    assert serving_load.parse_args([]).name == (
        "serving-load-fst-gpt2small-continuous-vs-request-batching"
    )
    variants = ["--variant", "cap16=--max_batch_size 16", "--variant", "memory_only="]
    assert (
        serving_load.parse_args(variants).name == "serving-load-fst-gpt2small-cap16-vs-memory-only"
    )


def test_llama_server_comes_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    program = tmp_path / "llama-server"
    program.write_text("")
    monkeypatch.setenv("LLAMA_SERVER", str(program))
    assert serving_load.parse_args(["--formats", "fp32"]).llama_server == program


@pytest.mark.parametrize(
    "argv",
    [
        ["--formats", "int8", "--rounds", "0"],
        ["--formats", "int8", "--variant", "a="],
        ["--formats", "int8", "--llama-server", "/nonexistent/llama-server"],
        ["--formats", "int16"],
    ],
)
def test_bad_comparison_options_exit_with_a_message(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        serving_load.parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_llama_server_gets_a_slot_per_client_and_no_prompt_cache(tmp_path: Path) -> None:
    args = serving_load.parse_args(["--formats", "int8", "--concurrency", "1", "4", "16"])
    command = serving_llamacpp.llama_command(tmp_path / "ls", tmp_path / "m.gguf", 8080, args)
    flag = {command[i]: command[i + 1] for i in range(1, len(command) - 1)}
    assert flag["--parallel"] == "16"
    assert flag["-t"] == flag["-tb"] == "2"
    per_slot = int(flag["-c"]) // 16
    assert per_slot >= args.prompt_chars // 2 + args.max_tokens  # a prompt and its tokens fit
    assert "--no-cache-prompt" in command and flag["--cache-ram"] == "0"
    assert "--cont-batching" in command


def _level(c: int, tps: float, ttft: float, tpot: float, prompts: dict) -> dict:
    return {
        "concurrency": c,
        "requests": 4,
        "tokens_per_s": tps,
        "ttft_s": {"p50": ttft, "p95": 2 * ttft},
        "tpot_s": {"p50": tpot, "p95": 2 * tpot},
        "itl_s": {"p50": tpot, "p95": 3 * tpot},
        "prompt_tokens": prompts,
    }


def test_medians_over_rounds_and_fst_over_llama_ratios() -> None:
    prompts = {0: 35, 1: 36}
    fst = [
        [_level(1, 100.0, 0.02, 0.010, prompts), _level(4, 300.0, 0.05, 0.012, prompts)],
        [_level(1, 120.0, 0.04, 0.012, prompts), _level(4, 500.0, 0.07, 0.016, prompts)],
        [_level(1, 110.0, 0.03, 0.011, prompts), _level(4, 400.0, 0.06, 0.014, prompts)],
    ]
    llama = [
        [_level(1, 50.0, 0.06, 0.020, prompts), _level(4, 200.0, 0.12, 0.028, prompts)],
        [_level(1, 55.0, 0.06, 0.022, prompts), _level(4, 200.0, 0.12, 0.028, prompts)],
    ]
    levels = serving_llamacpp.median_levels(fst)
    assert levels[0]["tokens_per_s"] == {"median": 110.0, "min": 100.0, "max": 120.0}
    assert levels[1]["ttft_p95_s"]["median"] == pytest.approx(0.12)
    formats = {
        "int8": {
            "engines": {
                "fst": {"levels": levels},
                "llama-server": {"levels": serving_llamacpp.median_levels(llama)},
            }
        },
        "int4": {"engines": {"fst": {"levels": levels}}},  # llama-server skipped: no rows
    }
    rows = serving_llamacpp.ratio_rows(formats)
    assert [(r["format"], r["concurrency"]) for r in rows] == [("int8", 1), ("int8", 4)]
    assert rows[0]["tokens_per_s"] == pytest.approx(110.0 / 52.5)
    assert rows[0]["ttft_p50_s"] == pytest.approx(0.03 / 0.06)
    assert rows[1]["tokens_per_s"] == pytest.approx(2.0)
    assert rows[1]["tpot_p95_s"] == pytest.approx(0.028 / 0.056)
    assert rows[1]["itl_p95_s"] == pytest.approx(0.042 / 0.084)
    assert serving_llamacpp.prompt_tokens_equal({"fst": fst, "llama-server": llama}) is True
    other = [[_level(1, 1.0, 1.0, 1.0, {0: 35, 1: 37})]]
    assert serving_llamacpp.prompt_tokens_equal({"fst": fst, "llama-server": other}) is False
    assert serving_llamacpp.prompt_tokens_equal({"fst": fst}) is None


def test_report_shows_the_ratio_table(monkeypatch) -> None:
    monkeypatch.delenv("LLAMA_SERVER", raising=False)
    prompts = {0: 35}
    ours = serving_llamacpp.median_levels([[_level(16, 400.0, 0.1, 0.03, prompts)]])
    theirs = serving_llamacpp.median_levels([[_level(16, 100.0, 0.2, 0.06, prompts)]])
    formats = {
        "int4": {
            "engines": {
                "fst": {"levels": ours, "peak_rss_mb": 300.0},
                "llama-server": {"levels": theirs, "peak_rss_mb": 200.0},
            },
            "prompt_tokens_equal": True,
            "load_before": [1.0, 1.0, 1.0],
            "load_after": [2.0, 1.0, 1.0],
        }
    }
    report = {
        "settings": {
            "model": "gpt2-small",
            "formats": ["int4"],
            "concurrency": [16],
            "rounds": 1,
            "max_tokens": 32,
            "prompt_chars": 160,
            "threads": 2,
            "fst_flags": serving_llamacpp.FST_FLAGS,
            "llama_omp_wait_policy": "ACTIVE",
        },  # fmt: skip
        "formats": formats,
        "ratios": serving_llamacpp.ratio_rows(formats),
        "machine": {"cpu": {"model": "a CPU", "usable_cores": 2}, "load_average": [2.0, 1, 1]},
    }
    text = serving_llamacpp.render_markdown(report)
    assert "| int4 | 16 | **4.00** | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 |" in text
    assert "fst 300.0 MB, llama-server 200.0 MB" in text
    assert "Q4_0 GGUF" in text and "[1.0, 1.0, 1.0] / [2.0, 1.0, 1.0]" in text
    json.dumps(report)  # the JSON side of the report


def test_a_streamed_request_reports_its_token_counts_and_time_per_token() -> None:
    """One request against a fake server streaming like llama-server and fst-serve do."""
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(json.loads(request.content))
        seen["connection"] = request.headers.get("connection")
        chunks = [{"choices": [{"text": t}]} for t in (" a", " b", " c")]
        chunks.append({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    async def go() -> dict:
        transport = httpx.MockTransport(handler)
        async with httpx.AsyncClient(
            base_url="http://x", transport=transport, headers=serving_llamacpp.HEADERS
        ) as client:
            return await harness.one_request(client, "hi", 0, 3, serving_llamacpp.GREEDY)

    result = asyncio.run(go())
    assert result["prompt_tokens"] == 7 and result["completion_tokens"] == 3
    assert result["tpot_s"] is not None and 0 <= result["tpot_s"] <= result["latency_s"]
    assert len(result["gaps_s"]) == 2  # three streamed tokens
    assert seen["temperature"] == 0.0 and seen["top_k"] == 1 and seen["ignore_eos"] is True
    assert seen["cache_prompt"] is False and seen["max_tokens"] == 3
    assert seen["connection"] == "close"
