"""Time to first token of a growing chat, with and without the prefix cache.

    python benchmarks/prefix_cache_chat.py                 # GPT-2 small, --optimize bundle
    python benchmarks/prefix_cache_chat.py --model tiny    # a smoke run

A conversation of `--turns` turns: each turn's prompt is the whole history (the previous
prompt, the model's answer of `--answer-tokens` tokens, and a new user message of
`--user-tokens` tokens from the corpus), so the prompt grows by about 100 tokens a turn.
TTFT is measured in-process on the runtime's own loop (`DecodeBatch.add` + the first
`step`: the prefill and the first sampled token), which is what the server's TTFT adds its
HTTP and queueing costs to. Both arms run on one Generator (one ONNX Runtime session): the
cache is switched on and off between conversations, alternating which goes first, each
conversation on a different corpus passage (so conversations never share a prefix).
Reported per turn: the median TTFT of each arm and their ratio; the goal is turn N with
the cache <= 1.3x turn 1. Writes benchmarks/results/prefix_cache_chat.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from latency_models import DEFAULT_CACHE, DEFAULT_CORPUS, DEFAULT_OUT, MODELS  # noqa: E402
from serving_load import prepare_bundle  # noqa: E402

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


def conversation(
    generator: Generator, source: list[int], args: argparse.Namespace
) -> list[dict[str, float]]:
    """One chat: per turn, TTFT (s), prompt tokens and cached tokens."""
    decode = generator.tokenizer.decode
    params = GenerationParams(temperature=0.0, max_new_tokens=args.answer_tokens, ignore_eos=True)
    history, offset, turns = "", 0, []
    for _ in range(args.turns):
        first = args.first_tokens if not history else args.user_tokens
        history += decode(source[offset : offset + first])
        offset += first
        batch = generator.new_batch()
        start = time.perf_counter()
        (rows,) = batch.add([GenerationRequest(history, params)])
        batch.step()
        ttft = time.perf_counter() - start
        while batch.num_live:
            batch.step()
        row = rows[0]
        turns.append(
            {"ttft_s": ttft, "prompt_tokens": row.prompt_tokens, "cached_tokens": row.cached_tokens}
        )
        history += row.text
    return turns


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
        f"(in-process), median of {s['conversations']} conversations per arm, the arms "
        "alternating on one session.",
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
        f"Turn {s['turns']} / turn 1 TTFT: **{g['with_cache']:.2f}×** with the cache, "
        f"{g['without_cache']:.2f}× without (goal with the cache: <= {GOAL}×, "
        f"{'met' if g['met'] else 'NOT met'}).",
        "",
        f"Machine: {report['machine']['cpu']['model']}, "
        f"{report['machine']['cpu']['usable_cores']} usable cores, shared with other jobs; "
        f"load average before / after: {report['load_before']} / {report['load_after']}.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-small")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="outside the repo")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--first-tokens", type=int, default=60)
    parser.add_argument("--user-tokens", type=int, default=70)
    parser.add_argument("--answer-tokens", type=int, default=30)
    parser.add_argument("--conversations", type=int, default=3, help="per arm")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--name", default="prefix_cache_chat", help="output file stem")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    bundle = prepare_bundle(args.model, args.cache, rebuild=False, optimize=True)
    generator = Generator.from_bundle(bundle, threads=args.threads, huge_pages=True)
    cache = PrefixCache(1 << 30)
    each = args.first_tokens + (args.turns - 1) * args.user_tokens
    sources = corpus_tokens(generator, args.corpus, 2 * args.conversations + 1, each)
    load_before = common.load_average()
    generator.prefix_cache = None
    conversation(generator, sources.pop(), args)  # warm-up: first-run costs out of the figures
    arms: dict[str, list[list[dict]]] = {"with": [], "without": []}
    for i in range(args.conversations):
        order = ["with", "without"] if i % 2 == 0 else ["without", "with"]
        for arm in order:
            generator.prefix_cache = cache if arm == "with" else None
            cache.clear()
            arms[arm].append(conversation(generator, sources.pop(), args))
            log.info(
                "conversation %d %s cache: %s",
                i,
                arm,
                [round(t["ttft_s"] * 1000) for t in arms[arm][-1]],
            )
    turns = []
    for t in range(args.turns):
        with_ms = common.median(c[t]["ttft_s"] * 1000 for c in arms["with"])
        without_ms = common.median(c[t]["ttft_s"] * 1000 for c in arms["without"])
        turns.append(
            {
                "turn": t + 1,
                "prompt_tokens": int(common.median(c[t]["prompt_tokens"] for c in arms["with"])),
                "cached_tokens": int(common.median(c[t]["cached_tokens"] for c in arms["with"])),
                "with_ms": with_ms,
                "without_ms": without_ms,
                "with_over_without": with_ms / without_ms,
            }
        )
    with_ratio = turns[-1]["with_ms"] / turns[0]["with_ms"]
    report = {
        "schema_version": SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "num_layers": generator.manifest.architecture.num_layers,
        "kv_layout": generator.manifest.graph.kv_layout,
        "turns": turns,
        "goal": {
            "with_cache": with_ratio,
            "without_cache": turns[-1]["without_ms"] / turns[0]["without_ms"],
            "met": with_ratio <= GOAL,
        },
        "raw": arms,
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
