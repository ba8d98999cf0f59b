"""Reliability: a bounded chaos run of fst-serve, fst-generate, fst-export, fst-train and
fst-telegram, on 127.0.0.1 only.

    python -m benchmarks.reliability.run                     # every probe, ~7 min on 2 shared cores
    python -m benchmarks.reliability.run --quick             # ~3 min: smaller, no kill probes
    python -m benchmarks.reliability.run --soak-minutes 30   # the long soak alone, with a PNG

A tiny GPT-2 is built from its config (random weights, nothing downloaded) and exported once
into `--cache` (outside the repository, shared with the other benchmarks). Each probe does
what an operator or an unlucky day would do and records what it saw, one row per figure:

- soak: C clients, R requests each, streamed and not; all 200? server fds and RSS after;
- overload: many simultaneous requests against a small queue: only 200 or 429 with
  Retry-After, no 5xx, and /ready answers after;
- bad HTTP: garbage, 200 KB of headers, a Content-Length that lies, a lone UTF-16 surrogate;
- signals: SIGTERM with live streams: exit code, time, streams finished, no process left;
- corrupt bundles: fst-generate and fst-serve on broken copies: exit code, one line;
- killed export: SIGKILL mid-export, then the next export leaves no staging folder;
- killed training: SIGKILL mid-training: workers gone at once, checkpoint loadable, resume;
- faulty Bot API: the bot, against a fake Bot API answering 5xx / HTML / dropped
  connections and the real fst-serve, still delivers every reply;
- extreme parameters, poisoned batch, mass cancellation, bundle swapped while serving,
  symlinked outputs, disk full (RLIMIT_FSIZE), huge document: see probes.py.

Writes benchmarks/results/reliability-probes-fst-serve-gpt2tiny.{json,md} (the long soak:
reliability-soak-fst-serve-gpt2tiny.{json,md,png}).
Exit status 0 when every probe passed, 1 otherwise. Figures were taken on a shared 2-core
machine: times are loose upper bounds, pass/fail is what counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from benchmarks import common
from benchmarks.latency.models import DEFAULT_BPE, DEFAULT_CACHE, DEFAULT_OUT
from benchmarks.reliability import probes
from benchmarks.reliability.harness import (
    PROMPT,
    REPO,
    Report,
    Server,
    alive,
    children_of,
    completion,
    completion_body,
    exit_status,
    fd_count,
    group_members,
    one_line,
    rss_mb,
    run_warmup,
)
from benchmarks.reliability.soak import STEM as SOAK_STEM
from benchmarks.reliability.soak import long_soak, soak_markdown

log = logging.getLogger("reliability")
SCHEMA_VERSION = 1
STEM = "reliability-probes-fst-serve-gpt2tiny"  # results/STEM.{json,md}


# --- soak and overload ---------------------------------------------------------------------


def soak(report: Report, server: Server, clients: int, requests: int) -> None:
    """Two equal rounds: the first fills the allocator's arenas and the batch buffers, so a
    leak shows as growth during the second."""

    async def run(offset: int) -> list[int]:
        limits = httpx.Limits(max_connections=clients + 2)
        async with httpx.AsyncClient(base_url=server.base, timeout=120, limits=limits) as client:

            async def loop(c: int) -> list[int]:
                return [
                    await completion(client, offset + c * requests + r, 16, stream=r % 2 == 0)
                    for r in range(requests)
                ]

            return [s for per in await asyncio.gather(*map(loop, range(clients))) for s in per]

    asyncio.run(run_warmup(server.base, clients))
    pid = server.proc.pid
    fds, rss = fd_count(pid), rss_mb(pid)
    start = time.monotonic()
    statuses = asyncio.run(run(0))
    rss_half = rss_mb(pid)
    statuses += asyncio.run(run(clients * requests))
    seconds = time.monotonic() - start
    time.sleep(1.0)  # let closed connections go
    fds_after, rss_after = fd_count(pid), rss_mb(pid)
    ok = statuses.count(200)
    report.add(
        "soak",
        f"{len(statuses)} requests from {clients} clients in {seconds:.0f} s: {ok} x 200",
        ok == len(statuses),
    )
    report.add("soak", f"server fds {fds} -> {fds_after}", fds_after <= fds + 2)
    report.add(
        "soak",
        f"server RSS {rss:.0f} MB before, {rss_half:.0f} after round 1, {rss_after:.0f} after "
        "round 2 (fails as a leak if round 2 adds > 10% + 10 MB)",
        rss_after <= rss_half * 1.1 + 10,
    )


def overload(report: Report, server: Server, count: int) -> None:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=server.base, timeout=300, limits=limits) as client:
            bodies = [completion_body(i, 24, stream=False) for i in range(count)]
            return await asyncio.gather(
                *(client.post("/v1/completions", json=b) for b in bodies), return_exceptions=True
            )

    start = time.monotonic()
    answers = asyncio.run(run())
    seconds = time.monotonic() - start
    errors = [a for a in answers if isinstance(a, BaseException)]
    responses = [a for a in answers if not isinstance(a, BaseException)]
    by_status: dict[int, int] = {}
    for r in responses:
        by_status[r.status_code] = by_status.get(r.status_code, 0) + 1
    rejected = [r for r in responses if r.status_code == 429]
    with_retry_after = sum(1 for r in rejected if r.headers.get("retry-after", "").isdigit())
    figure = ", ".join(f"{n} x {s}" for s, n in sorted(by_status.items()))
    report.add(
        "overload",
        f"{count} simultaneous requests: {figure}; {len(errors)} connection errors; "
        f"{seconds:.1f} s to drain",
        not errors and set(by_status) <= {200, 429} and by_status.get(200, 0) > 0,
    )
    report.add(
        "overload",
        f"{with_retry_after} of {len(rejected)} 429s carry Retry-After",
        with_retry_after == len(rejected) and len(rejected) > 0,
    )
    ready = httpx.get(f"{server.base}/ready", timeout=10).status_code
    report.add("overload", f"/ready after the burst: {ready}", ready == 200)


# --- bad HTTP ------------------------------------------------------------------------------


def raw_exchange(port: int, data: bytes, half_close: bool = False, timeout: float = 10) -> str:
    """'HTTP <status>', 'closed' (no answer) or 'timeout' for raw bytes sent to the server."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            answer = s.recv(200)
        except TimeoutError:
            return "timeout"
        except OSError:
            return "closed"
    if not answer:
        return "closed"
    first = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = first.split()
    return f"HTTP {parts[1]}" if len(parts) > 1 and parts[1].isdigit() else f"answered {first!r}"


def refused_cleanly(outcome: str) -> bool:
    return outcome == "closed" or (outcome.startswith("HTTP 4"))


def bad_http(report: Report, server: Server) -> None:
    port = server.port
    garbage = raw_exchange(port, b"\x00\xff\xfe GARBAGE \r\n\r\n")
    report.add("bad HTTP", f"garbage bytes -> {garbage}", refused_cleanly(garbage))
    huge = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    outcome = raw_exchange(port, huge)
    report.add("bad HTTP", f"200 KB of headers -> {outcome}", refused_cleanly(outcome))
    body = b'{"prompt": "hi", "max_tokens": 2}'
    lying = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + body
    )
    start = time.monotonic()
    outcome = raw_exchange(port, lying, half_close=True)
    report.add(
        "bad HTTP",
        f"Content-Length 1000 with a {len(body)}-byte body, then EOF -> {outcome} "
        f"in {time.monotonic() - start:.1f} s",
        refused_cleanly(outcome),
    )
    for path, field in (("/v1/completions", "prompt"), ("/generated_texts/", "body")):
        payload = f'{{"{field}": "ab\\ud800cd", "max_tokens": 2}}'.encode()
        response = httpx.post(
            f"{server.base}{path}",
            content=payload,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        report.add(
            "bad HTTP",
            f"lone surrogate in {path} {field} -> {response.status_code}",
            response.status_code == 400,
        )
    health = httpx.get(f"{server.base}/health", timeout=10).status_code
    report.add("bad HTTP", f"/health afterwards: {health}", health == 200)


# --- signals -------------------------------------------------------------------------------


def sigterm_with_live_streams(report: Report, bundle: Path, streams: int) -> None:
    grace = 20
    server = Server(bundle, "--shutdown-timeout-s", str(grace))
    try:
        if not server.wait_ready():
            report.add("signals", "fst-serve did not become ready", False)
            return
        outcome = asyncio.run(_streams_through_sigterm(server, streams))
    finally:
        server.stop()
    done, ready_status, seconds, rc = outcome
    report.add(
        "signals",
        f"SIGTERM with {streams} live streams: {exit_status(rc)} after {seconds:.1f} s",
        rc == 0 and seconds <= grace + 5,
    )
    report.add("signals", f"{done} of {streams} streams ended with [DONE]", done == streams)
    report.add("signals", f"/ready while stopping: {ready_status}", ready_status == "503")
    left = group_members(server.proc.pid)
    report.add("signals", f"processes left in its group: {len(left)}", not left)


async def _streams_through_sigterm(server: Server, streams: int) -> tuple[int, str, float, int]:
    started = asyncio.Event()
    live = 0

    async def stream(client: httpx.AsyncClient, i: int) -> bool:
        nonlocal live
        body = completion_body(i, 400, stream=True)
        last = ""
        try:
            async with client.stream("POST", "/v1/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        if not last:
                            live += 1
                            if live == streams:
                                started.set()
                        last = line
        except httpx.HTTPError:
            return False
        return last == "data: [DONE]"

    async with httpx.AsyncClient(base_url=server.base, timeout=120) as client:
        tasks = [asyncio.create_task(stream(client, i)) for i in range(streams)]
        await asyncio.wait_for(started.wait(), 60)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        try:
            async with httpx.AsyncClient(timeout=3) as other:
                ready = str((await other.get(f"{server.base}/ready")).status_code)
        except httpx.HTTPError as e:
            ready = f"no answer ({type(e).__name__})"
        results = await asyncio.gather(*tasks)
    rc = await asyncio.to_thread(server.proc.wait, 60)
    return sum(results), ready, time.monotonic() - start, rc


# --- corrupt bundles -----------------------------------------------------------------------


def _corruptions(bundle: Path) -> dict[str, tuple[str, Callable[[Path], None]]]:
    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    return {
        "truncated model.onnx": ("model.onnx", lambda b: truncate(b / "model.onnx")),
        "empty model.onnx": ("model.onnx", lambda b: (b / "model.onnx").write_bytes(b"")),
        "missing tokenizer.json": ("tokenizer.json", lambda b: (b / "tokenizer.json").unlink()),
        "corrupt tokenizer.json": (
            "tokenizer.json",
            lambda b: (b / "tokenizer.json").write_text('{"version": '),
        ),
        "bad manifest": ("fst_bundle.json", lambda b: (b / "fst_bundle.json").write_text("{")),
        "one byte changed (--verify)": ("model.onnx", lambda b: flip(b / "model.onnx")),
    }


def corrupt_bundles(report: Report, bundle: Path, work: Path, quick: bool) -> None:
    cases = _corruptions(bundle)
    folders = {}
    for i, (case, (_, breaks)) in enumerate(cases.items()):
        folder = work / f"broken-{i}"
        shutil.copytree(bundle, folder)
        breaks(folder)
        folders[case] = folder

    def generate(case: str) -> tuple[str, subprocess.CompletedProcess]:
        command = [sys.executable, "-m", "fst.runtime.cli", "--bundle", str(folders[case]), "Hi"]
        command += ["--max_new_tokens", "2", "--threads", "1"]
        if "verify" in case:
            command.append("--verify")
        return case, subprocess.run(command, capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(3) as pool:
        for case, done in pool.map(generate, cases):
            name = cases[case][0]
            passed = done.returncode == 2 and one_line(done.stderr) and name in done.stderr
            first = (done.stderr.strip().splitlines() or [""])[-1]
            first = first.replace(str(folders[case]), "<bundle>")[:100]
            report.add(
                "corrupt bundle",
                f"fst-generate, {case}: exit {done.returncode}, "
                f"{len(done.stderr.splitlines())} stderr lines ({first!r})",
                passed,
            )
    serve_cases = list(cases)[:3] if quick else [c for c in cases if "verify" not in c]

    def serve(case: str) -> tuple[str, int | None, float, str]:
        server = Server(folders[case])
        start = time.monotonic()
        try:
            rc = server.proc.wait(30)
        except subprocess.TimeoutExpired:
            rc = None  # still up after 30 s
        seconds = time.monotonic() - start
        server.stop()
        return case, rc, seconds, server.stderr_text()

    with ThreadPoolExecutor(3) as pool:
        for case, rc, seconds, stderr in pool.map(serve, serve_cases):
            figure = (
                "still running after 30 s"
                if rc is None
                else f"{exit_status(rc)} in {seconds:.1f} s"
            )
            report.add(
                "corrupt bundle",
                f"fst-serve, {case}: {figure}, traceback: {'Traceback' in stderr}",
                rc not in (None, 0) and "Traceback" not in stderr,
            )


# --- killed export and training ------------------------------------------------------------


def killed_export(report: Report, hf_folder: Path, work: Path) -> None:
    output = work / "export" / "bundle"
    output.parent.mkdir(parents=True)
    command = ["fst-export", "--model_path", str(hf_folder), "--output", str(output), "--quiet"]
    command += ["--log_file", str(work / "export.log")]

    def staging() -> list[Path]:
        return sorted(output.parent.glob("bundle.tmp-*"))

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not staging() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # let it write into the folder
    proc.kill()
    proc.wait()
    left = len(staging())
    report.add("killed export", f"staging folders after SIGKILL: {left}", left >= 1)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    left = len(staging())
    report.add(
        "killed export",
        f"next fst-export: exit {done.returncode}, staging folders left: {left}",
        done.returncode == 0 and left == 0 and (output / "fst_bundle.json").is_file(),
    )


TINY_TRAIN = [
    "--model_overrides=n_layer=1,n_embd=32,n_head=2,n_positions=64", "--tokenizer=bpe",
    "--bpe_vocab_size=300", "--batch_size=2", "--max_body_len=24", "--max_meta_len=4",
    "--val_check_interval=5", "--limit_val_batches=2", "--num_threads=1",
    "--log_every_n_steps=1", "--num_workers=2",
]  # fmt: skip


def killed_training(report: Report, work: Path) -> None:
    docs = work / "docs"
    docs.mkdir()
    lines = (REPO / "data/documents/nietzsche/train.documents").read_text().splitlines()[:40]
    (docs / "train.documents").write_text("\n".join(lines[:30]) + "\n")
    (docs / "valid.documents").write_text("\n".join(lines[30:]) + "\n")
    root = work / "experiments"
    base = [
        "fst-train", f"--train_file={docs / 'train.documents'}",
        f"--valid_file={docs / 'valid.documents'}", f"--experiments_root={root}", *TINY_TRAIN,
    ]  # fmt: skip
    proc = subprocess.Popen(
        [*base, "--max_steps=100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = root / "docs_v0" / "models" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # mid-epoch, possibly mid-save
    workers = children_of(proc.pid)
    proc.kill()
    proc.wait()
    time.sleep(1.0)
    survivors = [w for w in workers if alive(w)]
    report.add(
        "killed training",
        f"SIGKILL mid-training: {len(survivors)} of {len(workers)} DataLoader workers alive 1 s later",
        not survivors and workers,
    )
    for w in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w, signal.SIGKILL)
    from fst.core.constants import CHECKPOINT_KEY
    from fst.training.checkpoint import read_checkpoint  # torch: only now

    try:
        step = int(read_checkpoint(last)[CHECKPOINT_KEY]["global_step"])
    except Exception as e:
        report.add("killed training", f"last.ckpt not loadable: {e}", False)
        return
    report.add("killed training", f"last.ckpt loadable (global step {step})", True)
    done = subprocess.run(
        [*base, f"--resume_from={last}", f"--max_steps={step + 5}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    folders = sorted(p.name for p in root.iterdir())
    resumed = read_checkpoint(last)[CHECKPOINT_KEY]["global_step"] if last.is_file() else None
    report.add(
        "killed training",
        f"--resume_from: exit {done.returncode}, global step {step} -> {resumed}, "
        f"folders {folders}",
        done.returncode == 0 and resumed == step + 5 and folders == ["docs_v0"],
    )


# --- faulty Bot API ------------------------------------------------------------------------


def faulty_bot(report: Report, server: Server, work: Path, messages: int) -> None:
    from benchmarks.fake_telegram import FakeTelegram
    from fst.serving.telegram.bot import TelegramBot
    from fst.serving.telegram.settings import BotSettings

    faults = [
        ("sendMessage", {"status": 500}),
        ("sendMessage", {"status": 502, "html": True}),
        ("sendMessage", {"drop": True}),
        ("editMessageText", {"status": 500}),
        ("editMessageText", {"drop": True}),
        ("editMessageText", {"status": 503, "times": 2}),
    ]
    token = "123456:RELIABILITY"

    async def run() -> tuple[int, int]:
        tg = FakeTelegram(token)
        await tg.start()
        settings = BotSettings(
            telegram_api_token=token,
            text_generator_service_url=server.base,
            telegram_api_server=tg.url,
            data_dir=work / "bot",
            request_timeout=60.0,
            edit_interval=0.2,
            polling_timeout=1,
            shutdown_grace=1.0,
        )
        bot = TelegramBot(settings)
        task = asyncio.create_task(bot.run_polling(handle_signals=False))
        delivered = injected = 0
        try:
            for i in range(messages):
                chat = 1000 + i
                method, fault = faults[i % len(faults)]
                tg.fail_next(method, **fault)
                injected += fault.get("times", 1)
                after = len(tg.calls)
                tg.push_message(chat, f"{PROMPT} {i}")
                with contextlib.suppress(TimeoutError):
                    await tg.wait_for(
                        lambda c, chat=chat: (
                            c.method in ("sendMessage", "editMessageText")
                            and c.chat_id == chat
                            and c.fault is None
                            and any(d.startswith("repeat:") for d in c.callback_data)
                        ),
                        timeout=60,
                        after=after,
                    )
                    delivered += 1
                tg._failures.clear()
        finally:
            await asyncio.wait_for(bot.stop(), 10)
            await asyncio.wait_for(task, 20)
            await tg.close()
        return delivered, injected

    delivered, injected = asyncio.run(run())
    report.add(
        "faulty Bot API",
        f"{delivered} of {messages} replies delivered with their Repeat button "
        f"({injected} faults injected: 5xx, HTML 502, dropped connections)",
        delivered == messages,
    )


# --- main ----------------------------------------------------------------------------------


def prepare(cache: Path) -> tuple[Path, Path]:
    """(HF folder, --optimize bundle) of the tiny model, built once into `cache`."""
    from benchmarks.latency.models import build_hf_folder
    from benchmarks.serving.harness import prepare_bundle

    hf = build_hf_folder("tiny", cache, DEFAULT_BPE)
    return hf, prepare_bundle("tiny", cache, rebuild=False, optimize=True)


@contextlib.contextmanager
def probe(report: Report, name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    except Exception as e:  # a broken probe is a failed row, and the others still run
        log.exception("probe %s failed", name)
        report.crashed(name, e)
    log.info("probe %s took %.0f s", name, time.monotonic() - start)


def run_probes(args: argparse.Namespace, hf: Path, bundle: Path, work: Path) -> Report:
    report = Report()
    quick = args.quick
    server = Server(bundle, "--queue-size", "16", "--max-batch-size", "4")
    try:
        if not server.wait_ready():
            report.add("setup", f"fst-serve did not start: {server.stderr_text()[-300:]}", False)
            return report
        with probe(report, "soak"):
            soak(report, server, clients=4 if quick else 8, requests=3 if quick else 25)
        with probe(report, "overload"):
            overload(report, server, count=80 if quick else 200)
        with probe(report, "bad HTTP"):
            bad_http(report, server)
        with probe(report, "faulty Bot API"):
            faulty_bot(report, server, work, messages=6 if quick else 12)
        with probe(report, "extreme parameters"):
            probes.extreme_parameters(report, server)
        with probe(report, "poisoned batch"):
            probes.poisoned_batch(report, server)
        with probe(report, "mass cancellation"):
            probes.mass_cancellation(report, server, streams=12 if quick else 16)
    finally:
        server.stop()
    with probe(report, "bundle swapped"):
        probes.bundle_swapped(report, bundle, work)
    with probe(report, "symlinked output"):
        probes.symlinked_outputs(report, hf, work, quick)
    with probe(report, "disk full"):
        probes.disk_full(report, hf, work)
    with probe(report, "huge document"):
        probes.huge_document(report, work, megabytes=5 if quick else 20, train_args=TINY_TRAIN)
    with probe(report, "signals"):
        sigterm_with_live_streams(report, bundle, streams=4 if quick else 8)
    with probe(report, "corrupt bundle"):
        corrupt_bundles(report, bundle, work, quick)
    if not quick:
        with probe(report, "killed export"):
            killed_export(report, hf, work)
        with probe(report, "killed training"):
            killed_training(report, work)
    return report


def markdown(report: Report, meta: dict[str, Any]) -> str:
    passed = sum(r.passed for r in report.rows)
    lines = [
        "# Reliability (benchmarks/reliability/run.py)",
        "",
        f"`{meta['command']}`: {passed} of {len(report.rows)} checks passed, "
        f"{meta['seconds']:.0f} s, load average {meta['load_average']}. Tiny GPT-2 "
        "(2 layers, 64 wide, random weights, --optimize bundle), fst-serve with 1 thread, "
        "queue 16, batch 4, on 127.0.0.1; a shared 2-core machine, so times are loose.",
        "",
        "| probe | figure | result |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r.probe} | {r.figure.replace('|', '/')} | {'pass' if r.passed else '**FAIL**'} |"
        for r in report.rows
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="~3 min: smaller, no kill probes")
    parser.add_argument(
        "--soak-minutes", type=float, default=None, help="only the long soak, this long"
    )
    parser.add_argument("--soak-clients", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    log.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    started = time.monotonic()
    hf, bundle = prepare(args.cache)
    meta: dict[str, Any] = {
        "command": "python -m benchmarks.reliability.run " + " ".join(argv or sys.argv[1:]),
        "machine": common.machine_description(),
    }
    with tempfile.TemporaryDirectory(prefix="fst-reliability-") as tmp:
        work = Path(tmp)
        if args.soak_minutes is not None:
            server = Server(bundle, "--queue-size", "64", "--max-batch-size", "8")
            try:
                if not server.wait_ready():
                    raise SystemExit(f"fst-serve did not start: {server.stderr_text()[-300:]}")
                result = long_soak(server, args.soak_minutes, args.soak_clients, args.out)
            finally:
                server.stop()
            meta.update(seconds=time.monotonic() - started, load_average=common.load_average())
            report = {"schema_version": SCHEMA_VERSION, **meta, "soak": result}
            common.write_report(args.out, SOAK_STEM, report, soak_markdown(result, meta))
            print((args.out / f"{SOAK_STEM}.md").read_text())
            return 0 if result["non_200"] == 0 and not result["leak_suspected"] else 1
        rows = run_probes(args, hf, bundle, work)
    meta.update(seconds=time.monotonic() - started, load_average=common.load_average())
    report = {"schema_version": SCHEMA_VERSION, **meta, "rows": [asdict(r) for r in rows.rows]}
    common.write_report(args.out, STEM, report, markdown(rows, meta))
    print((args.out / f"{STEM}.md").read_text())
    return 0 if all(r.passed for r in rows.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
