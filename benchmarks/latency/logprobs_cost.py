"""What log-probabilities cost a request: decode and time to first token, interleaved.

    python -m benchmarks.latency.logprobs_cost BUNDLE --rounds 6   # a GPT-2 small bundle

Three sides of one batch-1 greedy request on one bundle, in one process, in rotated
order each round: `plain` (no logprobs: the path every other request takes), `logprobs`
(each generated token's logprob and top 5) and `echo` (the same plus every prompt token's,
an extra prefill of the prompt that returns every position's logits: needs a bundle
exported with `--logits all`). Reports medians over rounds of the decode step (ms/token)
and of `add` (prefill, plus scoring for `echo`: the time to first token), and their ratios
to `plain`. Writes benchmarks/results/NAME.{json,md} (`--out-name`, default
logprobs-cost-gpt2small-fst: name it after the bundle's model).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks import common

PROMPT = "The free spirit is the one who has grown tired of the old gods and their " * 4
SIDES = {"plain": (None, None), "logprobs": (5, None), "echo": (5, 5)}


def run_side(generator, side: str, new_tokens: int) -> tuple[float, float]:
    """(median decode step ms, add ms) of one request."""
    from fst.runtime import GenerationParams, GenerationRequest

    logprobs, prompt_logprobs = SIDES[side]
    params = GenerationParams(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    options = {} if side == "plain" else {"logprobs": logprobs, "prompt_logprobs": prompt_logprobs}
    request = GenerationRequest(PROMPT, params, **options)  # plain: any fst version runs it
    batch = generator.new_batch()
    start = time.perf_counter()
    batch.add([request])
    batch.step()  # the first token comes from the prefill's logits
    first = time.perf_counter() - start
    steps = []
    while batch.num_live:
        start = time.perf_counter()
        batch.step()
        steps.append(time.perf_counter() - start)
    return common.median(steps) * 1e3, first * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0]
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--tokens", type=int, default=32, help="tokens generated per request")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    p.add_argument("--out-name", default="logprobs-cost-gpt2small-fst")
    p.add_argument(
        "--sides",
        default=",".join(SIDES),
        help="which sides (`plain` alone runs on an fst without logprobs: a baseline)",
    )
    args = p.parse_args(argv)

    from fst.runtime import Generator

    generator = Generator.from_bundle(args.bundle, threads=args.threads, huge_pages=True)
    scores = getattr(generator, "scores_prompts", False)
    sides = [s for s in args.sides.split(",") if s != "echo" or scores]
    machine = common.machine_description()
    for side in sides:  # warm-up
        run_side(generator, side, 4)
    decode: dict[str, list[float]] = {s: [] for s in sides}
    first: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(args.rounds):
        for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
            step_ms, first_ms = run_side(generator, side, args.tokens)
            decode[side].append(step_ms)
            first[side].append(first_ms)
    summary = {
        side: {
            "decode_ms": common.summarize(decode[side]),
            "first_token_ms": common.summarize(first[side]),
            "decode_ratio_to_plain": common.ratio(
                common.median(decode[side]), common.median(decode.get("plain") or [0])
            ),
            "first_token_ratio_to_plain": common.ratio(
                common.median(first[side]), common.median(first.get("plain") or [0])
            ),
        }
        for side in sides
    }
    prompt_tokens = len(generator.encode_prompt(PROMPT))
    report = {
        "command": "python -m benchmarks.latency.logprobs_cost " + " ".join(argv or sys.argv[1:]),
        "machine": machine,
        "load_average_end": common.load_average(),
        "runtime_source": str(Path(sys.modules["fst"].__file__).parent),
        "bundle": {
            "path": str(args.bundle),
            "graph": generator.manifest.graph.model_dump(include={"kv_layout", "logits", "dtype"}),
            "vocab_size": generator.vocab_size,
        },
        "prompt_tokens": prompt_tokens,
        "new_tokens": args.tokens,
        "rounds": args.rounds,
        "threads": args.threads,
        "sides": summary,
    }
    common.write_report(args.out_dir, args.out_name, report, _markdown(report))
    print(_markdown(report))
    return 0


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# What logprobs cost a request",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu']['model']}, {m['cpu']['logical_cores']} cores, load average "
        f"{m['load_average']} at start, {report['load_average_end']} at end.  ",
        f"Bundle: {report['bundle']['graph']}, vocabulary {report['bundle']['vocab_size']}; "
        f"batch 1, greedy, {report['prompt_tokens']}-token prompt, {report['new_tokens']} new "
        f"tokens, {report['threads']} threads, {report['rounds']} interleaved rounds; medians "
        "(min–max).",
        "",
        "| side | decode ms/token | vs plain | first token ms (prefill + scoring) | vs plain |",
        "|---|---|---|---|---|",
    ]
    for side, s in report["sides"].items():
        d, f = s["decode_ms"], s["first_token_ms"]
        lines.append(
            f"| {side} | {d['median']:.2f} ({d['min']:.2f}–{d['max']:.2f}) | "
            f"{common.fmt(s['decode_ratio_to_plain'], 3)} | {f['median']:.1f} ({f['min']:.1f}–"
            f"{f['max']:.1f}) | {common.fmt(s['first_token_ratio_to_plain'], 3)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
