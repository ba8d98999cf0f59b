"""fst-serve against llama-server under the same closed-loop load (load.py --formats).

Optional, never needed by the tests or CI: it needs a llama.cpp build's `llama-server` (and
`llama-quantize` beside it for Q4_0) and its source tree's `convert_hf_to_gguf.py`
(benchmarks/README.md). Without `--llama-server` / `LLAMA_SERVER` it warns and measures
fst-serve alone.

The same Hugging Face folder (GPT-2 small, random weights) becomes fst's fp32 / int8 / int4
bundles (latency_models.export_bundles) and llama.cpp's f32 / Q8_0 / Q4_0 GGUFs
(engines_llamacpp.convert). For each format both servers are up at once; every round runs
every concurrency level on each server in turn (the order alternating), the idle one paused
with SIGSTOP so it takes no CPU. Both get the same texts (the prompt token counts each
reports are compared), greedy decoding, `ignore_eos`, the same `max_tokens`; neither reuses
a cached prompt (fst: `--prefix_cache_mb 0`; llama-server: `--no-cache-prompt`,
`--cache-ram 0` and `cache_prompt: false` per request), since the prompts repeat between
levels and rounds.

llama-server's OpenMP threads spin at barriers (`OMP_WAIT_POLICY=ACTIVE`, `--llama-omp-wait`),
as ONNX Runtime's intra-op threads do by default in fst-serve: both sides wait the same way.
Each request opens its own connection, on both servers (llama-server dropped a kept-alive
connection after a streamed answer here). Peak RSS is each server process's VmHWM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common
from benchmarks.serving import harness

log = logging.getLogger("serving_load")

# --formats name -> (fst bundle engine, llama.cpp GGUF engine, GGUF type shown)
FORMATS = {
    "fp32": ("fst-fp32", "llama-f32", "f32"),
    "int8": ("fst-int8", "llama-q8_0", "Q8_0"),
    "int4": ("fst-int4", "llama-q4_0", "Q4_0"),
}
ENGINES = ("fst", "llama-server")
# Greedy on both sides. top_k 1 as well as temperature 0: llama-server runs its whole sampler
# chain even at temperature 0 (top-p, min-p over the full vocabulary unless top-k cut it
# first); fst-serve treats either as greedy. Penalties off.
GREEDY = {
    "temperature": 0.0,
    "top_k": 1,
    "repetition_penalty": 1.0,  # fst's name
    "repeat_penalty": 1.0,  # llama-server's name (each server ignores the other's)
    "cache_prompt": False,  # llama-server: no KV reuse between requests
}
# llama-server drops a kept-alive connection after a streamed answer (the next request on it
# fails: "Server disconnected"), so each request opens its own, on both servers alike.
HEADERS = {"Connection": "close"}
# Figures compared per level: (key, how to read one round's level dict).
METRICS = {
    "tokens_per_s": lambda lv: lv["tokens_per_s"],
    "ttft_p50_s": lambda lv: lv["ttft_s"]["p50"],
    "ttft_p95_s": lambda lv: lv["ttft_s"]["p95"],
    "itl_p50_s": lambda lv: lv["itl_s"]["p50"] if lv["itl_s"] else None,
    "itl_p95_s": lambda lv: lv["itl_s"]["p95"] if lv["itl_s"] else None,
    "tpot_p50_s": lambda lv: lv["tpot_s"]["p50"] if lv["tpot_s"] else None,
    "tpot_p95_s": lambda lv: lv["tpot_s"]["p95"] if lv["tpot_s"] else None,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--formats", nargs="+", choices=list(FORMATS), default=None,
        help="compare fst-serve on these bundle formats with llama-server on the matching "
        "GGUF (fp32: f32, int8: Q8_0, int4: Q4_0) instead of batching modes",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (--formats)")
    add_llama_server_arguments(parser)


def add_llama_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Where llama-server and llama.cpp's converter are, and how its threads wait: the
    options of every benchmark that runs llama-server beside fst-serve."""
    parser.add_argument(
        "--llama-server", type=Path, default=_env_path("LLAMA_SERVER"),
        help="llama.cpp's llama-server program (env LLAMA_SERVER); llama-quantize and the "
        "shared libraries are looked for beside it. Without it only fst-serve is measured",
    )  # fmt: skip
    parser.add_argument(
        "--llamacpp-src", type=Path, default=_env_path("LLAMACPP_SRC"),
        help="llama.cpp source tree with convert_hf_to_gguf.py (env LLAMACPP_SRC)",
    )  # fmt: skip
    parser.add_argument(
        "--llama-omp-wait", choices=["ACTIVE", "PASSIVE"], default="ACTIVE",
        help="llama-server's OMP_WAIT_POLICY (ACTIVE: spinning threads, like ONNX Runtime's "
        "default in fst-serve)",
    )  # fmt: skip


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Errors for the comparison's options; the default output name says what it measures."""
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.formats and args.variant:
        parser.error("--formats and --variant are different comparisons: choose one")
    if args.formats and args.threads is None:
        args.threads = 2  # both servers get the same threads
    if args.formats and args.llama_server and not args.llama_server.is_file():
        parser.error(f"--llama-server {args.llama_server}: no such file")
    if args.name is None:
        stem = args.model.replace("-", "")
        if args.formats:
            args.name = f"serving-fst-vs-llama-server-{stem}"
        else:
            sides = [v.partition("=")[0] for v in args.variant] or args.batching
            compared = "-vs-".join(sides) + ("" if args.variant else "-batching")
            args.name = f"serving-load-fst-{stem}-{compared}".replace("_", "-")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


# --- preparation ------------------------------------------------------------------------------


def prepare(args: argparse.Namespace, with_llama: bool) -> dict[str, dict[str, Path]]:
    """format -> {"fst": bundle, "llama-server": GGUF} from one Hugging Face folder."""
    from benchmarks.latency import engines_llamacpp
    from benchmarks.latency.models import DEFAULT_BPE, build_hf_folder, export_bundles
    from fst.export.options import DEFAULT_LOGITS

    hf = build_hf_folder(args.model, args.cache, DEFAULT_BPE)
    engines = [FORMATS[f][0] for f in args.formats]
    options = argparse.Namespace(
        engines=engines, optimize=args.optimize, logits=DEFAULT_LOGITS, rebuild=args.rebuild
    )
    bundles = export_bundles(hf, args.model, args.cache, options)
    ggufs: dict[str, Path] = {}
    if with_llama:
        quantize = args.llama_server.resolve().parent / "llama-quantize"
        ggufs = engines_llamacpp.convert(
            hf, args.cache / args.model / "gguf", [FORMATS[f][1] for f in args.formats],
            args.llamacpp_src, quantize_bin=quantize if quantize.is_file() else None,
        )  # fmt: skip
    out = {}
    for fmt in args.formats:
        fst_engine, llama_engine, _ = FORMATS[fmt]
        out[fmt] = {"fst": bundles[fst_engine]}
        if with_llama:
            out[fmt]["llama-server"] = ggufs[llama_engine]
    return out


# --- llama-server -------------------------------------------------------------------------------


def llama_command(program: Path, gguf: Path, port: int, args: argparse.Namespace) -> list[str]:
    """Continuous batching with one slot per client of the highest level, each slot's context
    big enough for a prompt and its tokens, and no prompt cache."""
    slots = max(args.concurrency)
    per_slot = 256 * -(-(args.prompt_chars // 2 + args.max_tokens + 16) // 256)
    threads = str(args.threads or 2)
    return [
        str(program), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "-t", threads, "-tb", threads, "--parallel", str(slots), "--cont-batching",
        "-c", str(slots * per_slot), "--no-cache-prompt", "--cache-reuse", "0",
        "--cache-ram", "0", "--no-webui", "--log-verbosity", "1",
    ]  # fmt: skip


def start_llama_server(
    gguf: Path, port: int, args: argparse.Namespace, command: list[str] | None = None
) -> subprocess.Popen:
    """llama-server with its shared libraries and OpenMP wait policy; `command`: another
    command line than `llama_command`'s (the same program first)."""
    program = args.llama_server.resolve()
    env = dict(os.environ, OMP_WAIT_POLICY=args.llama_omp_wait)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(program.parent), os.environ.get("LD_LIBRARY_PATH")) if p
    )
    command = command or llama_command(program, gguf, port, args)
    log.info("starting %s (its log: %s)", " ".join(command), llama_log(args))
    with llama_log(args).open("a") as out:  # the child keeps its own descriptor
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def llama_log(args: argparse.Namespace) -> Path:
    """Where llama-server's own log goes (it prints a line per slot event)."""
    args.cache.mkdir(parents=True, exist_ok=True)
    return args.cache / "llama-server.log"


def peak_rss_mb(pid: int) -> float | None:
    """The process's own peak resident memory (VmHWM), not its parent's."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


# --- the run ------------------------------------------------------------------------------------


def run_format(paths: dict[str, Path], args: argparse.Namespace) -> dict:
    """Both servers of one format up at once; rounds × levels, each on each server in turn
    (order alternating), the idle one paused. Every process started here is stopped."""
    servers: dict[str, subprocess.Popen] = {}
    bases: dict[str, str] = {}
    rounds: dict[str, list[list[dict]]] = {name: [] for name in paths}
    peaks: dict[str, float | None] = {}
    load_before = common.load_average()
    try:
        for name, path in paths.items():
            port = harness.free_port()
            bases[name] = f"http://127.0.0.1:{port}"
            if name == "fst":
                servers[name] = harness.start_server(path, port, "continuous", args, FST_FLAGS)
            else:
                servers[name] = start_llama_server(path, port, args)
        for name, server in servers.items():
            if name == "fst":
                harness.wait_ready(bases[name], server)
            else:
                harness.wait_ready(bases[name], server, "llama-server", "/health", llama_log(args))
            warm = harness.make_prompts(args.corpus, 2, args.prompt_chars)
            asyncio.run(harness.run_level(bases[name], warm, 2, 4, GREEDY, HEADERS))
            server.send_signal(signal.SIGSTOP)
        names = list(servers)
        step = 0
        for r in range(args.rounds):
            for name in names:
                rounds[name].append([])
            for c in args.concurrency:
                for name in names if step % 2 == 0 else names[::-1]:
                    servers[name].send_signal(signal.SIGCONT)
                    prompts = harness.make_prompts(
                        args.corpus, args.requests or 4 + 2 * c, args.prompt_chars
                    )
                    raw = asyncio.run(
                        harness.run_level(bases[name], prompts, c, args.max_tokens, GREEDY, HEADERS)
                    )
                    servers[name].send_signal(signal.SIGSTOP)
                    level = harness.summarize_level(c, raw, (0.0, 0.0))
                    rounds[name][r].append(level)
                    log.info(
                        "round %d %s c=%d: %.1f tokens/s, TTFT p50 %.3fs",
                        r + 1, name, c, level["tokens_per_s"], level["ttft_s"]["p50"],
                    )  # fmt: skip
                step += 1
        peaks = {name: peak_rss_mb(server.pid) for name, server in servers.items()}
    finally:
        for server in servers.values():
            if server.poll() is None:
                server.send_signal(signal.SIGCONT)
        for server in servers.values():
            harness.stop_server(server)
    return {
        "paths": {name: str(path) for name, path in paths.items()},
        "engines": {
            name: {
                "levels": median_levels(rounds[name]),
                "rounds": rounds[name],
                "peak_rss_mb": peaks.get(name),
            }
            for name in paths
        },
        "prompt_tokens_equal": prompt_tokens_equal(rounds),
        "load_before": load_before,
        "load_after": common.load_average(),
    }


# fst-serve: the same threads as llama-server, no prefix cache (llama-server's is off too).
FST_FLAGS = ["--prefix_cache_mb", "0"]


def median_levels(rounds: list[list[dict]]) -> list[dict]:
    """Per concurrency level: the median over rounds of each metric, with its min and max."""
    out = []
    for i, first in enumerate(rounds[0]):
        level = {"concurrency": first["concurrency"], "requests": first["requests"]}
        for key, read in METRICS.items():
            values = [v for v in (read(rnd[i]) for rnd in rounds) if v is not None]
            level[key] = (
                {"median": statistics.median(values), "min": min(values), "max": max(values)}
                if values
                else None
            )
        out.append(level)
    return out


def prompt_tokens_equal(rounds: dict[str, list[list[dict]]]) -> bool | None:
    """Whether every server counted the same prompt tokens for every prompt (None: one
    server only, or a server reported no counts)."""
    counts = {}
    for name, rnds in rounds.items():
        seen: dict[int, int | None] = {}
        for rnd in rnds:
            for level in rnd:
                seen.update(level["prompt_tokens"])
        counts[name] = seen
    if len(counts) < 2 or any(None in c.values() for c in counts.values()):
        return None
    first, *others = counts.values()
    return all(other == first for other in others)


def ratio_rows(formats: dict[str, dict]) -> list[dict]:
    """fst / llama-server for each format and level, from the medians over rounds: tokens/s
    above 1 and latencies below 1 mean fst is faster. Formats measured without
    llama-server have no rows."""
    rows = []
    for fmt, result in formats.items():
        engines = result["engines"]
        if "llama-server" not in engines:
            continue
        for ours, theirs in zip(
            engines["fst"]["levels"], engines["llama-server"]["levels"], strict=True
        ):
            row: dict = {"format": fmt, "concurrency": ours["concurrency"]}
            for key in METRICS:
                a, b = ours[key], theirs[key]
                row[key] = a["median"] / b["median"] if a and b and b["median"] else None
            rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict:
    with_llama = args.llama_server is not None
    if not with_llama:
        log.warning(
            "llama-server not given (--llama-server or LLAMA_SERVER): measuring fst-serve only"
        )
    prepared = prepare(args, with_llama)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so run_format stops its servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    formats = {fmt: run_format(paths, args) for fmt, paths in prepared.items()}
    return {
        "schema_version": harness.SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "model": args.model,
            "formats": args.formats,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "requests_per_level": args.requests,
            "max_tokens": args.max_tokens,
            "prompt_chars": args.prompt_chars,
            "threads": args.threads or 2,
            "sampling": GREEDY,
            "fst_flags": FST_FLAGS,
            "llama_server": str(args.llama_server) if with_llama else None,
            "llama_omp_wait_policy": args.llama_omp_wait,
        },
        "formats": formats,
        "ratios": ratio_rows(formats),
        "machine": common.machine_description(),
    }


# --- report -------------------------------------------------------------------------------------


def _fmt(value: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    if not value:
        return "–"
    return f"{value['median'] * scale:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def render_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"# fst-serve vs llama-server: {s['model']} (random weights), streaming load",
        "",
        f"Same Hugging Face folder: fst bundles (fp32 / int8 / int4) against llama.cpp GGUFs "
        f"(f32 / Q8_0 / Q4_0). Closed-loop clients at concurrency "
        f"{', '.join(map(str, s['concurrency']))}; every request streams {s['max_tokens']} tokens "
        f"(ignore_eos, greedy) after a prompt of {s['prompt_chars']} characters, the same text "
        f"to both servers; {s['threads']} threads each; no prompt cache on either side. "
        f"{s['rounds']} rounds, levels interleaved, the idle server paused with SIGSTOP; "
        "figures are medians over rounds. Inter-token: the gaps between streamed tokens, "
        "p50 / p95 over all gaps of the level (stalls show in p95); TPOT: a request's mean "
        "time per token after the first, p50 / p95 over the level's requests.",
        "",
        f"fst-serve flags: `--threads {s['threads']} {' '.join(s['fst_flags'])}`; llama-server: "
        f"`-t {s['threads']} -tb {s['threads']} --parallel {max(s['concurrency'])} "
        f"--cont-batching --no-cache-prompt --cache-ram 0`, OMP_WAIT_POLICY="
        f"{s['llama_omp_wait_policy']} (ONNX Runtime's threads spin by default too).",
        "",
        "Weights: fst int8 is the exporter's `--quantize int8`, fst int4 its default int4 "
        "scheme (benchmarks/latency/int4_bundle.py); f32 and Q8_0 come from `convert_hf_to_gguf.py`, "
        "Q4_0 from `llama-quantize`'s default recipe (which keeps the tied embedding / LM "
        "head in Q6_K). llama-server's KV cache is its default (f16), flash attention 'auto'.",
    ]
    if report["ratios"]:
        lines += [
            "",
            "## fst / llama-server",
            "",
            "tokens/s above 1 and latencies below 1: fst faster.",
            "",
            "| format | concurrency | tokens/s | TTFT p50 | TTFT p95 | inter-token p50 "
            "| inter-token p95 | TPOT p50 | TPOT p95 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in report["ratios"]:
            lines.append(
                f"| {row['format']} | {row['concurrency']} | **{_ratio(row['tokens_per_s'])}** "
                f"| {_ratio(row['ttft_p50_s'])} | {_ratio(row['ttft_p95_s'])} "
                f"| {_ratio(row['itl_p50_s'])} | {_ratio(row['itl_p95_s'])} "
                f"| {_ratio(row['tpot_p50_s'])} | {_ratio(row['tpot_p95_s'])} |"
            )
    for fmt, result in report["formats"].items():
        gguf = FORMATS[fmt][2]
        equal = result["prompt_tokens_equal"]
        lines += [
            "",
            f"## {fmt} bundle vs {gguf} GGUF",
            "",
            "| server | concurrency | tokens/s (min–max) | TTFT p50 / p95 (ms) "
            "| inter-token p50 / p95 (ms) | TPOT p50 / p95 (ms) |",
            "|---|---:|---|---|---|---|",
        ]
        for name, engine in result["engines"].items():
            for lv in engine["levels"]:
                tps = lv["tokens_per_s"]
                lines.append(
                    f"| {name} | {lv['concurrency']} | {tps['median']:.1f} "
                    f"({tps['min']:.1f}–{tps['max']:.1f}) "
                    f"| {_fmt(lv['ttft_p50_s'], 1e3)} / {_fmt(lv['ttft_p95_s'], 1e3)} "
                    f"| {_fmt(lv['itl_p50_s'], 1e3)} / {_fmt(lv['itl_p95_s'], 1e3)} "
                    f"| {_fmt(lv['tpot_p50_s'], 1e3)} / {_fmt(lv['tpot_p95_s'], 1e3)} |"
                )
        peaks = ", ".join(
            f"{name} {engine['peak_rss_mb']} MB" for name, engine in result["engines"].items()
        )
        lines += [
            "",
            f"Peak RSS (VmHWM): {peaks}. Prompt token counts equal on both servers: "
            f"{'–' if equal is None else 'yes' if equal else '**no**'}. "
            f"Load average before/after: {result['load_before']} / {result['load_after']}.",
        ]
    m = report["machine"]
    lines += [
        "",
        f"Machine: {m['cpu']['model']}, {m['cpu']['usable_cores']} usable cores, shared with "
        f"other jobs (load average at the end {m['load_average']}): compare the ratios of one "
        "run, not absolute figures between runs.",
        "",
    ]
    return "\n".join(lines)
