"""Prompt lookup decoding: batch-1 greedy decode time with and without drafts.

    python -m benchmarks.latency.speculative_lookup                # GPT-2 small, --optimize --logits all
    python -m benchmarks.latency.speculative_lookup --model tiny   # a smoke run
    python -m benchmarks.latency.speculative_lookup --model smollm2-135m-instruct --gguf FILE \
        --max-tokens 96 --rounds 2   # the real chat model

Drafts need a graph with every position's logits, so the bundle is exported with
`--optimize --logits all` (cached beside the serving bundle). Each prompt (corpus passages,
and the same passages repeated twice: text that quotes itself; for a chat model, requests to
rewrite or copy-edit a passage, where the answer quotes its input, and open questions with
nothing to quote, where drafts are rarely accepted) is generated greedily
(`--max-tokens`, ignore_eos) with `speculative_tokens` 0 and `--draft`, alternating which
goes first, on one Generator; reported per prompt kind: median ms per generated token of
each, their ratio, and the graph runs per token with drafts. The tokens are checked equal.
Writes benchmarks/results/<--out-name>.{json,md}.
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


def prepare_bundle(model: str, cache: Path, gguf: Path | None = None) -> Path:
    folder = cache / model / "bundle-optimize-logits-all"
    if not (folder / "fst_bundle.json").is_file():
        from benchmarks.latency.models import build_hf_folder
        from fst.export.exporter import export_bundle

        hf = build_hf_folder(model, cache, DEFAULT_BPE, gguf)
        export_bundle(
            folder, model_path=str(hf), optimize=True, logits="all", force=True, progress=False
        )
    return folder


# Chat tasks: the answer quotes the passage (input-grounded), or has nothing to quote.
GROUNDED = {
    "rewrite": "Rewrite the following paragraph in plain modern English, keeping its meaning:",
    "copy-edit": "Copy the following paragraph exactly, fixing only its punctuation:",
}
OPEN_QUESTIONS = [
    "Write a short paragraph about the history of the bicycle.",
    "Give three tips for learning a new language, with one sentence each.",
    "Describe a sunrise over the sea for a child.",
    "Explain what a computer program is in a few sentences.",
]


def passages(corpus: Path, count: int, chars: int) -> list[str]:
    texts = []
    with corpus.open() as f:
        for line in f:
            body = json.loads(line)["body"].strip()
            if len(body) >= chars:
                texts.append(body[:chars].rsplit(" ", 1)[0])
            if len(texts) == count:
                break
    return texts


def prompts(generator: Generator, corpus: Path, count: int, chars: int) -> dict[str, list]:
    texts = passages(corpus, count, chars)
    chat = generator.manifest.chat
    if chat is None:
        return {"plain": texts, "repeated": [t + " " + t for t in texts]}
    from fst.runtime.chat import render_chat

    def ask(text: str) -> object:
        return render_chat(chat, [{"role": "user", "content": text}])

    kinds = {kind: [ask(f"{task}\n\n{t}") for t in texts] for kind, task in GROUNDED.items()}
    kinds["open question"] = [ask(q) for q in OPEN_QUESTIONS[:count]]
    return kinds


def model_description(args: argparse.Namespace) -> str:
    if args.gguf is not None:
        return f"{args.model} from {args.gguf.name} (dequantized to fp32)"
    return f"{args.model} (random weights)"


def prompt_description(chat: bool, args: argparse.Namespace) -> str:
    passages = f"{args.prompts} corpus passages of up to {args.prompt_chars} characters"
    if chat:
        tasks = "; ".join(f"{kind}: '{task}'" for kind, task in GROUNDED.items())
        return f"chat requests on {passages} ({tasks}) and {args.prompts} open questions"
    return f"{passages} ('plain') and the same passages written twice ('repeated')"


def timed(
    generator: Generator, prompt: object, params: GenerationParams
) -> tuple[float, list, int]:
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
    parser.add_argument(
        "--out-name",
        default=None,
        help="result file stem (default: speculative-lookup-MODEL, with -random unless --gguf)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each prompt and mode")
    parser.add_argument(
        "--gguf", type=Path, default=None, help="the GGUF file of --model smollm2-135m-instruct"
    )
    args = parser.parse_args(argv)
    if args.out_name is None:
        args.out_name = f"speculative-lookup-{args.model}" + ("" if args.gguf else "-random")
    bundle = prepare_bundle(args.model, args.cache, args.gguf)
    plain = Generator.from_bundle(bundle, threads=args.threads, huge_pages=True)
    chat = plain.manifest.chat is not None
    # A chat answer ends at its end-of-turn token; a document is continued for all tokens.
    params = GenerationParams(
        temperature=0.0, max_new_tokens=args.max_tokens, ignore_eos=not chat
    )  # fmt: skip
    load_before = common.load_average()
    rows = {}
    for kind, texts in prompts(plain, args.corpus, args.prompts, args.prompt_chars).items():
        off, on, runs, lengths = [], [], [], []
        for i, text in enumerate(texts * args.rounds):
            results = {}
            for draft in (0, args.draft) if i % 2 == 0 else (args.draft, 0):
                plain.speculative_tokens = draft
                results[draft] = timed(plain, text, params)
            assert results[0][1] == results[args.draft][1], "drafts changed the tokens"
            made = len(results[0][1])
            off.append(results[0][0] / made * 1000)
            on.append(results[args.draft][0] / made * 1000)
            runs.append(results[args.draft][2] / made)
            lengths.append(made)
        rows[kind] = {
            "off_ms_per_token": common.median(off),
            "on_ms_per_token": common.median(on),
            "ratio": common.median(on) / common.median(off),
            "speedup": common.median(off) / common.median(on),
            "runs_per_token": common.median(runs),
            "tokens": common.median(lengths),
            "raw": {"off": off, "on": on, "runs_per_token": runs, "tokens": lengths},
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
        f"Model: {model_description(args)}, fp32 bundle exported with --optimize --logits "
        f"all; batch 1, greedy, up to {args.max_tokens} tokens "
        + ("(a chat answer stops at its end of turn)" if chat else "(ignore_eos)")
        + f", drafts of up to {args.draft} tokens; {prompt_description(chat, args)}; each "
        f"prompt run with and without drafts back to back, alternating the order, "
        f"{args.rounds} round(s); medians. Tokens checked equal.",
        "",
        "| prompts | tokens | ms/token without | ms/token with drafts | with / without "
        "| tokens/s speed-up | graph runs per token |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, r in rows.items():
        lines.append(
            f"| {kind} | {r['tokens']:.0f} | {r['off_ms_per_token']:.1f} "
            f"| {r['on_ms_per_token']:.1f} | {r['ratio']:.2f} | {r['speedup']:.2f}x "
            f"| {r['runs_per_token']:.2f} |"
        )
    lines += [
        "",
        f"Machine: {report['machine']['cpu']['model']}, {report['machine']['cpu']['usable_cores']} "
        f"usable cores, shared; load average before / after: {load_before} / {report['load_after']}.",
        "",
    ]
    common.write_report(args.out, args.out_name, report, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
