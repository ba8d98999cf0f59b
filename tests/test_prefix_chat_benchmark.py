"""The growing-chat TTFT comparison (benchmarks/serving/prefix_chat.py): its figures from
raw per-turn results, its llama-server command line, its argument checks, and the cached
token counts it reads from either server's stream. No server is started."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from benchmarks.serving import harness, prefix_chat


def _turns(ttfts: list[float], prompts: list[int], cached: list[int | None]) -> list[dict]:
    return [
        {"ttft_s": t, "prompt_tokens": p, "cached_tokens": c, "completion_tokens": 4}
        for t, p, c in zip(ttfts, prompts, cached, strict=True)
    ]


def _runs() -> list[dict[str, list[dict]]]:
    prompts = [100, 194, 288]
    return [
        {
            "fst-cache": _turns([0.2, 0.2, 0.3], prompts, [0, 123, 217]),
            "fst-nocache": _turns([0.2, 0.4, 0.6], prompts, [0, 0, 0]),
            "llama-cache": _turns([0.4, 0.2, 0.2], prompts, [0, 123, 217]),
            "llama-nocache": _turns([0.4, 0.8, 1.2], prompts, [0, 0, 0]),
        },
        {
            "fst-cache": _turns([0.1, 0.1, 0.1], prompts, [0, 123, 217]),
            "fst-nocache": _turns([0.1, 0.3, 0.5], prompts, [0, 0, 0]),
            "llama-cache": _turns([0.2, 0.1, 0.1], prompts, [0, 123, 217]),
            "llama-nocache": _turns([0.2, 0.6, 1.0], prompts, [0, 0, 0]),
        },
        {
            "fst-cache": _turns([0.3, 0.3, 0.6], prompts, [0, 123, 217]),
            "fst-nocache": _turns([0.3, 0.5, 0.9], prompts, [0, 0, 0]),
            "llama-cache": _turns([0.6, 0.3, 0.3], prompts, [0, 123, 217]),
            "llama-nocache": _turns([0.6, 1.0, 1.5], prompts, [0, 0, 0]),
        },
    ]


def test_per_turn_medians_ratios_and_the_report() -> None:
    runs = _runs()
    summary = prefix_chat.summarize(runs)
    fst = summary["fst-cache"]
    assert fst["turns"][2]["ttft_p50_ms"] == pytest.approx(300.0)  # median of 300, 100, 600
    assert fst["turns"][2]["cached_tokens"] == 217
    # each conversation's own turn 3 / turn 1 (1.5, 1.0, 2.0), then their median
    assert fst["last_over_first_per_conversation"] == pytest.approx([1.5, 1.0, 2.0])
    assert fst["last_over_first"] == pytest.approx(1.5)
    assert summary["llama-nocache"]["last_over_first"] == pytest.approx(3.0)
    ratios = prefix_chat.fst_over_llama(summary)
    assert ratios["cache"] == pytest.approx([0.5, 1.0, 1.5])  # 200/400, 200/200, 300/200
    assert ratios["nocache"][0] == pytest.approx(0.5)
    assert prefix_chat.prompt_tokens_equal(runs)
    runs[1]["llama-cache"][2]["prompt_tokens"] = 289
    assert not prefix_chat.prompt_tokens_equal(runs)
    report = {
        "settings": {
            "model": "gpt2-small",
            "turns": 3,
            "first_tokens": 100,
            "user_tokens": 70,
            "answer_tokens": 24,
            "conversations": 3,
            "threads": 2,
            "llama_omp_wait": "ACTIVE",
        },  # fmt: skip
        "summary": summary,
        "fst_over_llama": ratios,
        "prompt_tokens_equal": False,
        "load_before": [4.0, 4.0, 4.0],
        "load_after": [5.0, 4.0, 4.0],
        "machine": {"cpu": {"model": "a CPU", "usable_cores": 2}},
    }
    text = prefix_chat.render_markdown(report)
    assert "| fst-cache | **1.50×** | 1.50, 1.00, 2.00 |" in text
    assert "| 3 | 288 | 300.0 (217) | 600.0 (0) | 200.0 (217) | 1200.0 (0) | 1.50 | 0.50 |" in text
    assert "at every turn: **no**" in text
    json.dumps(report)


def test_fst_alone_has_no_ratio_columns() -> None:
    runs = [{k: v for k, v in run.items() if k.startswith("fst")} for run in _runs()]
    assert prefix_chat.fst_over_llama(prefix_chat.summarize(runs)) == {}


def test_llama_server_gets_one_slot_the_whole_context_and_the_cache_flags(
    tmp_path: Path,
) -> None:
    program = tmp_path / "llama-server"
    program.write_text("")
    args = prefix_chat.parse_args(["--llama-server", str(program)])
    assert args.name == "prefix-cache-chat-ttft-gpt2small-fst-vs-llama-server"
    flags = prefix_chat.CONFIGS["llama-cache"][1]
    command = prefix_chat.llama_command(tmp_path / "m.gguf", 8080, flags, args)
    joined = " ".join(command)
    assert "--parallel 1" in joined and "-c 1024" in joined and "--cache-ram 256" in joined
    assert "-t 2 -tb 2" in joined
    assert prefix_chat.CONFIGS["llama-nocache"][2] == {"cache_prompt": False}


@pytest.mark.parametrize(
    "argv",
    [
        ["--turns", "12"],  # 12 turns of ~94 tokens do not fit GPT-2's 1024 positions
        ["--conversations", "0"],
        ["--llama-server", "/no/such/llama-server"],
    ],
)
def test_bad_arguments_are_one_line_errors(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        prefix_chat.parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("final", "cached"),
    [
        ({"usage": {"prompt_tokens": 9, "completion_tokens": 2,
                    "prompt_tokens_details": {"cached_tokens": 5}}}, 5),  # fst-serve
        ({"usage": {"prompt_tokens": 9, "completion_tokens": 2},
          "timings": {"cache_n": 7, "prompt_n": 2}}, 7),  # llama-server
        ({"usage": {"prompt_tokens": 9, "completion_tokens": 2}}, None),
    ],
)  # fmt: skip
def test_a_streamed_answer_reports_its_text_and_cached_tokens(final: dict, cached) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        chunks = [{"choices": [{"text": t}]} for t in (" a", "b")]
        chunks.append({"choices": [], **final})
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    async def go() -> dict:
        async with httpx.AsyncClient(
            base_url="http://x", transport=httpx.MockTransport(handler)
        ) as client:
            return await harness.one_request(client, "hi", 0, 2, prefix_chat.GREEDY)

    result = asyncio.run(go())
    assert result["text"] == " ab"
    assert result["cached_tokens"] == cached
    assert result["prompt_tokens"] == 9
