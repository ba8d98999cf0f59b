"""Time to first token of a growing chat, with and without the prefix cache.

    python -m benchmarks.latency.prefix_cache_chat                # GPT-2 small, --optimize bundle
    python -m benchmarks.latency.prefix_cache_chat --model tiny   # a smoke run

A conversation of `--turns` turns: each turn's prompt is the whole history (the previous
prompt, the model's answer of `--answer-tokens` tokens, and a new user message of
`--user-tokens` tokens from the corpus), so the prompt grows by about 100 tokens a turn.
TTFT is measured in-process on the runtime's own loop (`DecodeBatch.add` + the first
`step`: the prefill and the first sampled token), which is what the server's TTFT adds its
HTTP and queueing costs to. Both arms run on one Generator (one ONNX Runtime session): at
every turn the same prompt is timed without and with the cache back to back (the order
alternating by turn; on a shared machine the load moves between minutes, not between
two calls), then the answer is generated with the cache on; each conversation uses a
different corpus passage (so conversations never share a prefix).
Reported per turn: the median TTFT of each arm and their ratio; the goal is turn N with
the cache <= 1.3x turn 1. Writes
benchmarks/results/prefix-cache-chat-ttft-<model>-fst.{json,md} (`--name`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from benchmarks import common
from benchmarks.latency.models import DEFAULT_CACHE, DEFAULT_CORPUS, DEFAULT_OUT, MODELS
from benchmarks.serving.harness import prepare_bundle
from fst.core.generation_params import GenerationParams  # noqa: E402
from fst.runtime import GenerationRequest, Generator  # noqa: E402
from fst.runtime.prefix_cache import PrefixCache  # noqa: E402

log = logging.getLogger("prefix_cache_chat")
SCHEMA_VERSION = 1
GOAL = 1.3


def corpus_tokens(generator: Generator, corpus: Path, count: int, each: int) -> list[list[int]]:
    """`count` disjoint passages of `each` tokens from the corpus, one per conversation."""
    stream: list[int] = []
    with corpus.open() as f:
        for line in f:
            stream += generator.tokenizer.encode_for_inference(json.loads(line)["body"])
            if len(stream) >= count * each:
                return [stream[i * each : (i + 1) * each] for i in range(count)]
    raise SystemExit(f"{corpus}: fewer than {count * each} tokens")


def first_token_s(generator: Generator, request: GenerationRequest, cache: PrefixCache | None):
    """TTFT of `request` (add + first step) with `cache` on or off; returns it and the batch."""
    generator.prefix_cache = cache
    batch = generator.new_batch()
    start = time.perf_counter()
    (rows,) = batch.add([request])
    batch.step()
    return time.perf_counter() - start, batch, rows[0]


def conversation(
    generator: Generator, cache: PrefixCache, source: list[int], args: argparse.Namespace
) -> list[dict[str, float]]:
    """One chat: per turn, TTFT without and with the cache, measured back to back (the
    order alternating by turn), then the answer generated with the cache on (so it is
    stored for the next turn, as a server does)."""
    decode = generator.tokenizer.decode
    params = GenerationParams(temperature=0.0, max_new_tokens=args.answer_tokens, ignore_eos=True)
    cache.clear()
    history, offset, turns = "", 0, []
    for turn in range(args.turns):
        first = args.first_tokens if not history else args.user_tokens
        history += decode(source[offset : offset + first])
        offset += first
        request = GenerationRequest(history, params)
        times = {}
        for arm in ("without", "with") if turn % 2 == 0 else ("with", "without"):
            ttft, batch, row = first_token_s(generator, request, cache if arm == "with" else None)
            times[arm] = ttft
            if arm == "with":
                kept_batch, kept_row = batch, row
        while kept_batch.num_live:  # the answer, stored in the cache when the row ends
            kept_batch.step()
        turns.append(
            {
                "without_s": times["without"],
                "with_s": times["with"],
                "prompt_tokens": kept_row.prompt_tokens,
                "cached_tokens": kept_row.cached_tokens,
            }
        )
        history += kept_row.text
    return turns


def goal_of(runs: list[list[dict]]) -> dict:
    """Turn N / turn 1 TTFT of each conversation (the two turns are minutes apart on a
    loaded host, so each conversation's own ratio, then their median)."""
    with_cache = [c[-1]["with_s"] / c[0]["with_s"] for c in runs]
    without = [c[-1]["without_s"] / c[0]["without_s"] for c in runs]
    median = common.median(with_cache)
    return {
        "with_cache": median,
        "without_cache": common.median(without),
        "per_conversation_with_cache": with_cache,
        "per_conversation_without_cache": without,
        "met": median <= GOAL,
    }


def render_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Prefix cache: time to first token of a growing chat",
        "",
        f"Model: {s['model']} ({report['num_layers']} layers, random weights), fp32 bundle "
        f"exported with --optimize (kv_layout {report['kv_layout']}); {s['threads'] or 'default'} "
        f"ONNX Runtime threads. {s['turns']} turns; turn 1 has a {s['first_tokens']}-token "
        f"prompt, each later turn adds the {s['answer_tokens']}-token greedy answer and a "
        f"{s['user_tokens']}-token user message. TTFT = `DecodeBatch.add` + first `step` "
        f"(in-process), median of {s['conversations']} conversations; at every turn the "
        "same prompt is timed without and with the cache back to back (order alternating "
        "by turn) on one session, then the answer is generated with the cache on.",
        "",
        "| turn | prompt tokens | cached tokens | TTFT without cache (ms) | TTFT with cache (ms) "
        "| with / without |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for t in report["turns"]:
        lines.append(
            f"| {t['turn']} | {t['prompt_tokens']} | {t['cached_tokens']} "
            f"| {t['without_ms']:.1f} | {t['with_ms']:.1f} | {t['with_over_without']:.2f} |"
        )
    g = report["goal"]
    lines += [
        "",
        f"Turn {s['turns']} / turn 1 TTFT, each conversation's own ratio (median): "
        f"**{g['with_cache']:.2f}×** with the cache "
        f"({', '.join(f'{x:.2f}' for x in g['per_conversation_with_cache'])}), "
        f"{g['without_cache']:.2f}× without "
        f"({', '.join(f'{x:.2f}' for x in g['per_conversation_without_cache'])}); goal with "
        f"the cache: <= {GOAL}×, {'met' if g['met'] else 'NOT met'}. The table's medians "
        "per turn mix conversations run at different loads.",
        "",
        f"Machine: {report['machine']['cpu']['model']}, "
        f"{report['machine']['cpu']['usable_cores']} usable cores, shared with other jobs; "
        f"load average before / after: {report['load_before']} / {report['load_after']}.",
        "",
    ]
    return "\n".join(lines)


def add_conversation_arguments(parser: argparse.ArgumentParser) -> None:
    """The growing chat's shape, shared with the HTTP benchmark against llama-server."""
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--first-tokens", type=int, default=100)
    parser.add_argument("--user-tokens", type=int, default=70)
    parser.add_argument("--answer-tokens", type=int, default=24)
    parser.add_argument("--conversations", type=int, default=3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-small")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="outside the repo")
    add_conversation_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--name", default=None, help="output file stem (default: prefix-cache-chat-ttft-MODEL-fst)"
    )
    parser.add_argument("--render", type=Path, default=None, help="redraw a report's JSON")
    args = parser.parse_args(argv)
    if args.name is None:
        args.name = f"prefix-cache-chat-ttft-{args.model.replace('-', '')}-fst"
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.render:  # recompute the goal from a report's raw figures and redraw it
        report = json.loads(args.render.read_text())
        report["goal"] = goal_of(report["raw"])
        markdown = render_markdown(report)
        common.write_report(args.render.parent, args.render.stem, report, markdown)
        print(markdown)
        return 0
    bundle = prepare_bundle(args.model, args.cache, rebuild=False, optimize=True)
    generator = Generator.from_bundle(bundle, threads=args.threads, huge_pages=True)
    cache = PrefixCache(1 << 30)
    each = args.first_tokens + (args.turns - 1) * args.user_tokens
    sources = corpus_tokens(generator, args.corpus, args.conversations + 1, each)
    load_before = common.load_average()
    warm = argparse.Namespace(**{**vars(args), "turns": 2})
    conversation(generator, cache, sources.pop(), warm)  # first-run costs out of the figures
    runs = []
    for i in range(args.conversations):
        runs.append(conversation(generator, cache, sources.pop(), args))
        log.info(
            "conversation %d TTFT ms without / with: %s", i,
            [(round(t["without_s"] * 1000), round(t["with_s"] * 1000)) for t in runs[-1]],
        )  # fmt: skip
    turns = []
    for t in range(args.turns):
        with_ms = common.median(c[t]["with_s"] * 1000 for c in runs)
        without_ms = common.median(c[t]["without_s"] * 1000 for c in runs)
        turns.append(
            {
                "turn": t + 1,
                "prompt_tokens": int(common.median(c[t]["prompt_tokens"] for c in runs)),
                "cached_tokens": int(common.median(c[t]["cached_tokens"] for c in runs)),
                "with_ms": with_ms,
                "without_ms": without_ms,
                "with_over_without": with_ms / without_ms,
            }
        )
    goal = goal_of(runs)
    report = {
        "schema_version": SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "num_layers": generator.manifest.architecture.num_layers,
        "kv_layout": generator.manifest.graph.kv_layout,
        "turns": turns,
        "goal": goal,
        "raw": runs,
        "load_before": load_before,
        "load_after": common.load_average(),
        "machine": common.machine_description(),
    }
    markdown = render_markdown(report)
    common.write_report(args.out, args.name, report, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
