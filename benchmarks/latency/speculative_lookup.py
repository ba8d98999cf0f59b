"""Prompt lookup decoding: batch-1 greedy decode time with and without drafts.

    python -m benchmarks.latency.speculative_lookup                # GPT-2 small, --optimize --logits all
    python -m benchmarks.latency.speculative_lookup --model tiny   # a smoke run

Drafts need a graph with every position's logits, so the bundle is exported with
`--optimize --logits all` (cached beside the serving bundle). Each prompt (corpus passages,
and the same passages repeated twice: text that quotes itself) is generated greedily
(`--max-tokens`, ignore_eos) with `speculative_tokens` 0 and `--draft`, alternating which
goes first, on one Generator; reported per prompt kind: median ms per generated token of
each, their ratio, and the graph runs per token with drafts. The tokens are checked equal.
Writes benchmarks/results/speculative_lookup.{json,md}.
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
from benchmarks.latency.models import (
    DEFAULT_BPE,
    DEFAULT_CACHE,
    DEFAULT_CORPUS,
    DEFAULT_OUT,
    MODELS,
)
from fst.core.generation_params import GenerationParams  # noqa: E402
from fst.runtime import Generator  # noqa: E402

log = logging.getLogger("speculative_lookup")


def prepare_bundle(model: str, cache: Path) -> Path:
    folder = cache / model / "bundle-optimize-logits-all"
    if not (folder / "fst_bundle.json").is_file():
        from benchmarks.latency.models import build_hf_folder
        from fst.export.exporter import export_bundle

        hf = build_hf_folder(model, cache, DEFAULT_BPE)
        export_bundle(
            folder, model_path=str(hf), optimize=True, logits="all", force=True, progress=False
        )
    return folder


def prompts(corpus: Path, count: int, chars: int) -> dict[str, list[str]]:
    texts = []
    with corpus.open() as f:
        for line in f:
            body = json.loads(line)["body"].strip()
            if len(body) >= chars:
                texts.append(body[:chars])
            if len(texts) == count:
                break
    return {"plain": texts, "repeated": [t + " " + t for t in texts]}


def timed(generator: Generator, prompt: str, params: GenerationParams) -> tuple[float, list, int]:
    runs = []
    generator.on_model_call = lambda *_: runs.append(1)
    start = time.perf_counter()
    (completion,) = generator.generate(prompt, params)
    return time.perf_counter() - start, completion.token_ids, len(runs)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-small")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--draft", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-chars", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    bundle = prepare_bundle(args.model, args.cache)
    plain = Generator.from_bundle(bundle, threads=args.threads, huge_pages=True)
    params = GenerationParams(temperature=0.0, max_new_tokens=args.max_tokens, ignore_eos=True)
    load_before = common.load_average()
    rows = {}
    for kind, texts in prompts(args.corpus, args.prompts, args.prompt_chars).items():
        off, on, runs = [], [], []
        for i, text in enumerate(texts):
            results = {}
            for draft in (0, args.draft) if i % 2 == 0 else (args.draft, 0):
                plain.speculative_tokens = draft
                results[draft] = timed(plain, text, params)
            assert results[0][1] == results[args.draft][1], "drafts changed the tokens"
            off.append(results[0][0] / args.max_tokens * 1000)
            on.append(results[args.draft][0] / args.max_tokens * 1000)
            runs.append(results[args.draft][2] / args.max_tokens)
        rows[kind] = {
            "off_ms_per_token": common.median(off),
            "on_ms_per_token": common.median(on),
            "ratio": common.median(on) / common.median(off),
            "runs_per_token": common.median(runs),
            "raw": {"off": off, "on": on, "runs_per_token": runs},
        }
        log.info("%s: %s", kind, {k: v for k, v in rows[kind].items() if k != "raw"})
    report = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
        "load_before": load_before,
        "load_after": common.load_average(),
        "machine": common.machine_description(),
    }
    lines = [
        "# Prompt lookup decoding (speculative, no draft model)",
        "",
        f"Model: {args.model} (random weights), fp32 bundle exported with --optimize --logits "
        f"all; batch 1, greedy, {args.max_tokens} tokens (ignore_eos), drafts of up to "
        f"{args.draft} tokens; {args.prompts} corpus passages of {args.prompt_chars} characters "
        "('plain') and the same passages written twice ('repeated'); each prompt run with "
        "and without drafts back to back, alternating the order; medians. Tokens checked equal.",
        "",
        "| prompts | ms/token without | ms/token with drafts | with / without | graph runs per token |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, r in rows.items():
        lines.append(
            f"| {kind} | {r['off_ms_per_token']:.1f} | {r['on_ms_per_token']:.1f} "
            f"| {r['ratio']:.2f} | {r['runs_per_token']:.2f} |"
        )
    lines += [
        "",
        f"Machine: {report['machine']['cpu']['model']}, {report['machine']['cpu']['usable_cores']} "
        f"usable cores, shared; load average before / after: {load_before} / {report['load_after']}.",
        "",
    ]
    common.write_report(args.out, "speculative_lookup", report, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
