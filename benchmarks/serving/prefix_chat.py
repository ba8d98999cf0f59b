"""Time to first token of a growing chat: fst-serve's prefix cache vs llama-server's
`cache_prompt`, each against its own cache off, in one run.

    python -m benchmarks.serving.prefix_chat --llama-server BIN --llamacpp-src DIR
    python -m benchmarks.serving.prefix_chat          # fst-serve alone (no llama-server)

Four servers on one model (GPT-2 small, random weights; fst's fp32 `--optimize` bundle and
llama.cpp's f32 GGUF, both from the same Hugging Face folder):

- fst-cache: `fst-serve --prefix_cache_mb 256`;
- fst-nocache: `fst-serve --prefix_cache_mb 0`;
- llama-cache: llama-server, `cache_prompt: true` in each request, `--cache-ram 256`;
- llama-nocache: llama-server, `cache_prompt: false` in each request, `--cache-ram 0`.

A conversation has `--turns` turns: turn 1 sends `--first-tokens` tokens of a corpus passage;
each later turn sends the whole history again (every earlier prompt and the server's own
greedy answer of `--answer-tokens` tokens, streamed with `ignore_eos`) plus a new user
message of `--user-tokens` tokens, so the prompt grows by about 100 tokens a turn. Each
configuration keeps its own history, as a chat client would; the prompt token counts the
servers report are compared (equal when the greedy answers agree). Every conversation uses
a different passage, so no two share a prefix.

Interleaving: at every turn each configuration sends its request in turn (the order rotating
by turn and conversation), the other servers paused with SIGSTOP so they take no CPU; after
an answer the server gets `SETTLE_S` to finish storing its cache before it is paused (a
user takes longer to type). TTFT is the client's: request sent to first streamed text, over
HTTP on 127.0.0.1. Reported per turn: the median over conversations of each
configuration's TTFT; per configuration, turn N / turn 1 of each conversation (their
median); and fst / llama-server per turn. The goal: turn N with the cache <= 1.3x turn 1.
Writes benchmarks/results/prefix-cache-chat-ttft-<model>-fst-vs-llama-server.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks import common
from benchmarks.latency import prefix_cache_chat
from benchmarks.latency.models import DEFAULT_CACHE, DEFAULT_CORPUS, DEFAULT_OUT
from benchmarks.serving import harness
from benchmarks.serving import llamacpp as serving_llamacpp

log = logging.getLogger("prefix_chat")
SCHEMA_VERSION = 1
GOAL = 1.3
CACHE_MB = 256
SETTLE_S = 0.3
N_CTX = 1024  # GPT-2's positions: the longest prompt plus its answer must fit
MODEL = "gpt2-small"
# name -> (engine, fst-serve flags or llama-server --cache-ram, per-request fields)
CONFIGS = {
    "fst-cache": ("fst", ["--prefix_cache_mb", str(CACHE_MB)], {}),
    "fst-nocache": ("fst", ["--prefix_cache_mb", "0"], {}),
    "llama-cache": ("llama-server", ["--cache-ram", str(CACHE_MB)], {"cache_prompt": True}),
    "llama-nocache": ("llama-server", ["--cache-ram", "0"], {"cache_prompt": False}),
}
GREEDY = {k: v for k, v in serving_llamacpp.GREEDY.items() if k != "cache_prompt"}


# --- the conversations ----------------------------------------------------------------------------


def messages(tokenizer_json: Path, corpus: Path, count: int, args: argparse.Namespace) -> list:
    """`count` conversations' user messages as text: the first of `--first-tokens` tokens,
    the others of `--user-tokens`, cut from disjoint stretches of the corpus."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    sizes = [args.first_tokens] + [args.user_tokens] * (args.turns - 1)
    stream: list[int] = []
    with corpus.open() as f:
        for line in f:
            stream += tokenizer.encode(json.loads(line)["body"]).ids
            if len(stream) >= count * sum(sizes):
                break
    if len(stream) < count * sum(sizes):
        raise SystemExit(f"{corpus}: fewer than {count * sum(sizes)} tokens")
    out, at = [], 0
    for _ in range(count):
        turns = []
        for size in sizes:
            turns.append(tokenizer.decode(stream[at : at + size]))
            at += size
        out.append(turns)
    return out


async def ask(base: str, prompt: str, config: str, args: argparse.Namespace) -> dict:
    sampling = {**GREEDY, **CONFIGS[config][2]}
    async with httpx.AsyncClient(
        base_url=base, timeout=600, headers=serving_llamacpp.HEADERS
    ) as client:
        return await harness.one_request(client, prompt, 0, args.answer_tokens, sampling)


def conversation(
    servers: dict, bases: dict, texts: list[str], index: int, args: argparse.Namespace
) -> dict[str, list[dict]]:
    """One chat on every configuration, turn by turn; config -> per-turn results."""
    names = list(servers)
    history = dict.fromkeys(names, "")
    out: dict[str, list[dict]] = {name: [] for name in names}
    for turn, text in enumerate(texts):
        shift = (index * len(texts) + turn) % len(names)
        for name in names[shift:] + names[:shift]:
            prompt = history[name] + text
            servers[name].send_signal(signal.SIGCONT)
            try:
                result = asyncio.run(ask(bases[name], prompt, name, args))
                time.sleep(SETTLE_S)
            finally:
                servers[name].send_signal(signal.SIGSTOP)
            history[name] = prompt + result["text"]
            out[name].append(
                {
                    "ttft_s": result["ttft_s"],
                    "prompt_tokens": result["prompt_tokens"],
                    "cached_tokens": result["cached_tokens"],
                    "completion_tokens": result["completion_tokens"],
                }
            )
    return out


# --- the servers ------------------------------------------------------------------------------


def llama_command(gguf: Path, port: int, cache_flags: list[str], args: argparse.Namespace):
    """One slot with GPT-2's whole context (one conversation at a time), the given host
    prompt cache; everything else llama-server's default."""
    threads = str(args.threads)
    return [
        str(args.llama_server.resolve()), "-m", str(gguf), "--host", "127.0.0.1",
        "--port", str(port), "-t", threads, "-tb", threads, "--parallel", "1",
        "-c", str(N_CTX), *cache_flags, "--no-webui", "--log-verbosity", "1",
    ]  # fmt: skip


def start(configs: list[str], bundle: Path, gguf: Path | None, args: argparse.Namespace):
    """Every configuration's server, started (not yet ready)."""
    servers: dict[str, subprocess.Popen] = {}
    bases: dict[str, str] = {}
    server_args = argparse.Namespace(threads=args.threads, concurrency=[1], max_batch_size=None)
    for name in configs:
        engine, flags, _ = CONFIGS[name]
        port = harness.free_port()
        bases[name] = f"http://127.0.0.1:{port}"
        if engine == "fst":
            servers[name] = harness.start_server(bundle, port, "continuous", server_args, flags)
        else:
            command = llama_command(gguf, port, flags, args)
            servers[name] = serving_llamacpp.start_llama_server(gguf, port, args, command)
    return servers, bases


def wait_all(servers: dict, bases: dict, args: argparse.Namespace) -> None:
    """Until every server is ready; then each is paused until its turn."""
    for name, server in servers.items():
        if CONFIGS[name][0] == "fst":
            harness.wait_ready(bases[name], server)
        else:
            log_path = serving_llamacpp.llama_log(args)
            harness.wait_ready(bases[name], server, "llama-server", "/health", log_path)
        server.send_signal(signal.SIGSTOP)


# --- the figures ------------------------------------------------------------------------------


def summarize(runs: list[dict[str, list[dict]]]) -> dict:
    """Per configuration: per-turn medians over conversations, and turn N / turn 1."""
    out = {}
    for name in runs[0]:
        convs = [run[name] for run in runs]
        turns = []
        for t in range(len(convs[0])):
            cached = [c[t]["cached_tokens"] for c in convs if c[t]["cached_tokens"] is not None]
            turns.append(
                {
                    "turn": t + 1,
                    "ttft_p50_ms": common.median(c[t]["ttft_s"] * 1000 for c in convs),
                    "prompt_tokens": common.median(c[t]["prompt_tokens"] for c in convs),
                    "cached_tokens": common.median(cached) if cached else None,
                }
            )
        ratios = [c[-1]["ttft_s"] / c[0]["ttft_s"] for c in convs]
        out[name] = {
            "turns": turns,
            "last_over_first": common.median(ratios),
            "last_over_first_per_conversation": ratios,
        }
    return out


def fst_over_llama(summary: dict) -> dict[str, list[float]]:
    """Per turn, fst's median TTFT / llama-server's, with and without the cache (below 1:
    fst is faster); empty without llama-server."""
    out = {}
    for arm in ("cache", "nocache"):
        ours, theirs = summary.get(f"fst-{arm}"), summary.get(f"llama-{arm}")
        if ours and theirs:
            out[arm] = [
                a["ttft_p50_ms"] / b["ttft_p50_ms"]
                for a, b in zip(ours["turns"], theirs["turns"], strict=True)
            ]
    return out


def prompt_tokens_equal(runs: list[dict[str, list[dict]]]) -> bool:
    """Whether every configuration saw the same prompt token count at every turn."""
    return all(
        len({tuple(t["prompt_tokens"] for t in turns) for turns in run.values()}) == 1
        for run in runs
    )


# --- report -------------------------------------------------------------------------------------


def render_markdown(report: dict) -> str:
    s, summary, ratios = report["settings"], report["summary"], report["fst_over_llama"]
    names = list(summary)
    lines = [
        "# Prefix cache: time to first token of a growing chat, fst-serve vs llama-server",
        "",
        f"Model: {s['model']} (random weights): fst's fp32 bundle (`--optimize`) and llama.cpp's "
        f"f32 GGUF (`convert_hf_to_gguf.py`), from the same Hugging Face folder. {s['turns']} "
        f"turns: turn 1 sends a {s['first_tokens']}-token passage; each later turn resends the "
        f"history (each server's own greedy {s['answer_tokens']}-token answer, `ignore_eos`) "
        f"plus a {s['user_tokens']}-token user message. {s['conversations']} conversations "
        "(different passages); at every turn each configuration asks in turn (order rotating), "
        "the other servers paused with SIGSTOP; TTFT = request to first streamed text over "
        "HTTP on 127.0.0.1, median over conversations per turn.",
        "",
        f"Configurations ({s['threads']} threads each): fst-cache `fst-serve --threads "
        f"{s['threads']} --prefix_cache_mb {CACHE_MB}`; fst-nocache `--prefix_cache_mb 0`; "
        f"llama-cache `llama-server -t {s['threads']} -tb {s['threads']} --parallel 1 -c "
        f"{N_CTX} --cache-ram {CACHE_MB}` with `cache_prompt: true` per request (its default); "
        "llama-nocache the same with `--cache-ram 0` and `cache_prompt: false`; llama-server "
        f"with OMP_WAIT_POLICY={s['llama_omp_wait']} (ONNX Runtime's threads spin by default "
        "too). Prompt token counts equal in every configuration at every turn: "
        f"{'yes' if report['prompt_tokens_equal'] else '**no**'}.",
        "",
        "## Turn N / turn 1 TTFT",
        "",
        f"Each conversation's own ratio, then their median; goal with the cache: <= {GOAL}×.",
        "",
        "| configuration | turn N / turn 1 | per conversation |",
        "|---|---:|---|",
    ]
    for name in names:
        g = summary[name]
        per = ", ".join(f"{x:.2f}" for x in g["last_over_first_per_conversation"])
        lines.append(f"| {name} | **{g['last_over_first']:.2f}×** | {per} |")
    lines += [
        "",
        "## Per turn: TTFT p50 in ms (cached prompt tokens)",
        "",
        "| turn | prompt tokens | "
        + " | ".join(names)
        + "".join(f" | fst / llama, {arm}" for arm in ratios)
        + " |",
        "|---:|---:|" + "---:|" * (len(names) + len(ratios)),
    ]
    for t in range(s["turns"]):
        cells = []
        for name in names:
            row = summary[name]["turns"][t]
            cached = "–" if row["cached_tokens"] is None else f"{row['cached_tokens']:.0f}"
            cells.append(f"{row['ttft_p50_ms']:.1f} ({cached})")
        cells += [f"{ratios[arm][t]:.2f}" for arm in ratios]
        prompt = summary[names[0]]["turns"][t]["prompt_tokens"]
        lines.append(f"| {t + 1} | {prompt:.0f} | " + " | ".join(cells) + " |")
    m = report["machine"]
    lines += [
        "",
        "fst / llama below 1: fst faster. Cached tokens: fst-serve's "
        "`usage.prompt_tokens_details.cached_tokens`, llama-server's `timings.cache_n`.",
        "",
        f"Machine: {m['cpu']['model']}, {m['cpu']['usable_cores']} usable cores, shared with "
        f"other jobs; load average before / after: {report['load_before']} / "
        f"{report['load_after']}.",
        "",
    ]
    return "\n".join(lines)


# --- the run ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="outside the repo")
    prefix_cache_chat.add_conversation_arguments(parser)
    parser.add_argument("--threads", type=int, default=2, help="each server's threads")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--name", default=None, help="output file stem")
    parser.add_argument("--render", type=Path, default=None, help="redraw a report's JSON")
    serving_llamacpp.add_llama_server_arguments(parser)
    args = parser.parse_args(argv)
    if args.turns < 2 or args.conversations < 1 or args.threads < 1:
        parser.error("--turns must be >= 2, --conversations and --threads >= 1")
    longest = args.first_tokens + (args.turns - 1) * (args.user_tokens + args.answer_tokens)
    if longest + args.answer_tokens > N_CTX - 32:  # 32: room for re-tokenised answers
        parser.error(
            f"the last turn needs about {longest + args.answer_tokens} tokens; GPT-2 has {N_CTX}"
        )
    if args.llama_server and not args.llama_server.is_file():
        parser.error(f"--llama-server {args.llama_server}: no such file")
    if args.name is None:
        args.name = f"prefix-cache-chat-ttft-{MODEL.replace('-', '')}-fst" + (
            "-vs-llama-server" if args.llama_server else "-serve"
        )
    return args


def prepare(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The fp32 bundle and (with llama-server) the f32 GGUF of one Hugging Face folder."""
    bundle = harness.prepare_bundle(MODEL, args.cache, rebuild=False, optimize=True)
    if not args.llama_server:
        return bundle, None
    from benchmarks.latency import engines_llamacpp
    from benchmarks.latency.models import DEFAULT_BPE, build_hf_folder

    hf = build_hf_folder(MODEL, args.cache, DEFAULT_BPE)
    ggufs = engines_llamacpp.convert(
        hf, args.cache / MODEL / "gguf", ["llama-f32"], args.llamacpp_src
    )
    return bundle, ggufs["llama-f32"]


def run(args: argparse.Namespace) -> dict:
    bundle, gguf = prepare(args)
    configs = [n for n in CONFIGS if gguf is not None or CONFIGS[n][0] == "fst"]
    if gguf is None:
        log.warning("llama-server not given (--llama-server or LLAMA_SERVER): fst-serve only")
    texts = messages(bundle / "tokenizer.json", args.corpus, args.conversations + 1, args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop the servers
    servers: dict[str, subprocess.Popen] = {}
    try:
        servers, bases = start(configs, bundle, gguf, args)
        wait_all(servers, bases, args)
        warm = argparse.Namespace(**{**vars(args), "turns": 2})
        conversation(servers, bases, texts.pop()[:2], 0, warm)  # first-request costs out
        load_before = common.load_average()
        runs = []
        for i in range(args.conversations):
            runs.append(conversation(servers, bases, texts.pop(), i, args))
            log.info(
                "conversation %d TTFT ms, turn 1 / turn %d: %s", i + 1, args.turns,
                {n: (round(r[0]["ttft_s"] * 1e3), round(r[-1]["ttft_s"] * 1e3))
                 for n, r in runs[-1].items()},
            )  # fmt: skip
        load_after = common.load_average()
    finally:
        for server in servers.values():
            if server.poll() is None:
                server.send_signal(signal.SIGCONT)
        for server in servers.values():
            harness.stop_server(server)
    summary = summarize(runs)
    return {
        "schema_version": SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "model": MODEL,
            "sampling": GREEDY,
            "configs": {n: CONFIGS[n] for n in configs},
            "settle_s": SETTLE_S,
            "bundle": str(bundle),
            "gguf": str(gguf) if gguf else None,
        },
        "summary": summary,
        "fst_over_llama": fst_over_llama(summary),
        "prompt_tokens_equal": prompt_tokens_equal(runs),
        "raw": runs,
        "load_before": load_before,
        "load_after": load_after,
        "machine": common.machine_description(),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text())
        report["summary"] = summarize(report["raw"])
        report["fst_over_llama"] = fst_over_llama(report["summary"])
        args.out, args.name = args.render.parent, args.render.stem
    else:
        report = run(args)
    markdown = render_markdown(report)
    common.write_report(args.out, args.name, report, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
