"""The reliability probes of bad parameters, failures and resources (benchmarks/reliability/run.py
runs them; everything on 127.0.0.1, bounded in count and time):

- extreme parameters: values a float32 cannot compute with and loosely typed fields are a
  400 naming the field, while victims in the same batch get their 200;
- poisoned batch: valid but adversarial requests (tiny temperature, huge penalty, top_p
  near 0, min_tokens) decoding beside victims: all 200, the running gauge back to 0;
- mass cancellation: many streams whose clients leave after the first chunk: the gauge
  returns to 0, the server answers after;
- bundle swapped while serving: the bundle folder replaced (as `fst-export --force` does)
  under live streams: they finish, new requests are served;
- symlinked outputs: fst-export to a dangling link and, with --force, through a link to a
  bundle: the link kept, the bundle at its target, nothing left beside it;
- disk full (RLIMIT_FSIZE, no tmpfs needed): fst-export fails with one line, leaves no
  staging folder and no output;
- huge document: fst-train on one single-line document of many MB: exits 0, peak RSS.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.reliability.harness import Report, Server, completion_body, one_line

EXTREME = [
    ("temperature", 1e-300),
    ("temperature", 1e-45),
    ("temperature", 1e39),
    ("repetition_penalty", 1e-300),
    ("max_tokens", "4"),
    ("max_tokens", True),
    ("stream", "yes"),
]
ADVERSARIAL = [
    {"temperature": 1e-4, "repetition_penalty": 1e4, "min_tokens": 6},
    {"temperature": 1e4, "top_p": 1e-300, "min_tokens": 6},
    {"temperature": 1e-4, "top_k": 1, "repetition_penalty": 1e-4},
    {"temperature": 2.0, "top_k": 0, "top_p": 1.0, "min_tokens": 8, "ignore_eos": True},
]


def script(name: str) -> str:
    """A console script of this Python's environment (on PATH or not)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def running_sequences(server: Server) -> float | None:
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("fst_running_sequences "):
            return float(line.split()[1])
    return None


def gauge_settles(server: Server, timeout_s: float = 20) -> float | None:
    """The running-sequences gauge once it reads 0 (or its last value after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    value = running_sequences(server)
    while value != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        value = running_sequences(server)
    return value


async def _post_all(server: Server, bodies: list[dict[str, Any]]) -> list[Any]:
    async with httpx.AsyncClient(base_url=server.base, timeout=120) as client:
        return await asyncio.gather(
            *(client.post("/v1/completions", json=b) for b in bodies), return_exceptions=True
        )


def extreme_parameters(report: Report, server: Server) -> None:
    victims = [completion_body(i, 12, stream=False) for i in range(4)]
    extremes = [
        {**completion_body(0, 8, stream=False), "min_tokens": 4, field: value}
        for field, value in EXTREME
    ]
    answers = asyncio.run(_post_all(server, victims + extremes))
    ok = sum(1 for a in answers[:4] if getattr(a, "status_code", None) == 200)
    report.add("extreme parameters", f"{ok} of 4 victims in the batch got 200", ok == 4)
    for (field, value), answer in zip(EXTREME, answers[4:], strict=True):
        status = getattr(answer, "status_code", None)
        param = answer.json().get("error", {}).get("param") if status == 400 else None
        report.add(
            "extreme parameters",
            f"{field}={value!r} -> {status} naming {param!r}",
            status == 400 and param == field,
        )
    settled = gauge_settles(server)
    report.add("extreme parameters", f"running sequences afterwards: {settled}", settled == 0)


def poisoned_batch(report: Report, server: Server) -> None:
    victims = [completion_body(i, 12, stream=False) for i in range(4)]
    poison = [
        {**completion_body(10 + i, 12, stream=False), **extra}
        for i, extra in enumerate(ADVERSARIAL)
    ]
    answers = asyncio.run(_post_all(server, poison + victims))
    statuses = [getattr(a, "status_code", type(a).__name__) for a in answers]
    report.add(
        "poisoned batch",
        f"{len(poison)} adversarial requests beside {len(victims)} victims: {statuses}",
        all(s == 200 for s in statuses),
    )
    settled = gauge_settles(server)
    report.add("poisoned batch", f"running sequences afterwards: {settled}", settled == 0)


def mass_cancellation(report: Report, server: Server, streams: int) -> None:
    async def leave_after_first_chunk(client: httpx.AsyncClient, i: int) -> bool:
        body = completion_body(i, 200, stream=True)
        async with client.stream("POST", "/v1/completions", json=body) as response:
            async for _ in response.aiter_bytes():
                return response.status_code == 200
        return False

    async def run() -> list[Any]:
        limits = httpx.Limits(max_connections=streams)
        async with httpx.AsyncClient(base_url=server.base, timeout=120, limits=limits) as client:
            return await asyncio.gather(
                *(leave_after_first_chunk(client, i) for i in range(streams)),
                return_exceptions=True,
            )

    started = sum(1 for r in asyncio.run(run()) if r is True)
    start = time.monotonic()
    settled = gauge_settles(server, timeout_s=30)
    seconds = time.monotonic() - start
    report.add(
        "mass cancellation",
        f"{started} of {streams} streams left after their first chunk; running sequences "
        f"{settled} {seconds:.1f} s later",
        settled == 0 and started > 0,
    )
    after = httpx.post(
        f"{server.base}/v1/completions", json=completion_body(0, 4, stream=False), timeout=60
    )
    report.add("mass cancellation", f"a request afterwards: {after.status_code}", after.is_success)


def bundle_swapped(report: Report, bundle: Path, work: Path) -> None:
    served = work / "swapped" / "bundle"
    shutil.copytree(bundle, served)
    server = Server(served)
    try:
        if not server.wait_ready():
            report.add("bundle swapped", "fst-serve did not become ready", False)
            return

        async def streams_and_swap() -> list[Any]:
            async with httpx.AsyncClient(base_url=server.base, timeout=120) as client:

                async def one(i: int) -> int:
                    body = completion_body(i, 48, stream=True)
                    async with client.stream("POST", "/v1/completions", json=body) as r:
                        text = b"".join([chunk async for chunk in r.aiter_bytes()])
                    return r.status_code if b"[DONE]" in text else -1

                tasks = [asyncio.ensure_future(one(i)) for i in range(4)]
                await asyncio.sleep(0.3)
                # What fst-export --force does: the new bundle renamed into place, the old
                # folder moved aside and removed.
                fresh = served.with_name("bundle.tmp-new")
                shutil.copytree(bundle, fresh)
                old = served.with_name("bundle.old-x")
                served.rename(old)
                fresh.rename(served)
                shutil.rmtree(old)
                return await asyncio.gather(*tasks, return_exceptions=True)

        results = asyncio.run(streams_and_swap())
        report.add(
            "bundle swapped",
            f"streams live while the folder was replaced: {results}",
            all(r == 200 for r in results),
        )
        after = httpx.post(
            f"{server.base}/v1/completions", json=completion_body(0, 4, stream=False), timeout=60
        )
        report.add("bundle swapped", f"a request afterwards: {after.status_code}", after.is_success)
    finally:
        server.stop()


def _export(hf: Path, output: Path, *extra: str, **popen: Any) -> subprocess.CompletedProcess:
    command = [
        script("fst-export"),
        "--model_path",
        str(hf),
        "--output",
        str(output),
        "--quiet",
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, **popen)


def symlinked_outputs(report: Report, hf: Path, work: Path, quick: bool) -> None:
    root = work / "links"
    (root / "bundles").mkdir(parents=True)
    link = root / "current"
    link.symlink_to(root / "bundles" / "v1")
    done = _export(hf, link)
    bundle_there = (root / "bundles" / "v1" / "fst_bundle.json").is_file()
    report.add(
        "symlinked output",
        f"--output a dangling link: exit {done.returncode}, bundle at its target: "
        f"{bundle_there}, link kept: {link.is_symlink()}",
        done.returncode == 0 and bundle_there and link.is_symlink(),
    )
    if quick:
        return
    done = _export(hf, link, "--force")
    beside = sorted(p.name for p in root.iterdir())
    inside = sorted(p.name for p in (root / "bundles" / "v1").iterdir())
    report.add(
        "symlinked output",
        f"--force through the link: exit {done.returncode}, beside it {beside}, "
        f"owner file in the bundle: {'.fst-export-owner' in inside}",
        done.returncode == 0
        and beside == ["bundles", "current"]
        and link.is_symlink()
        and ".fst-export-owner" not in inside,
    )


def disk_full(report: Report, hf: Path, work: Path) -> None:
    """Files may not grow past 64 KB (RLIMIT_FSIZE): the weights cannot be written."""
    output = work / "full" / "bundle"
    output.parent.mkdir(parents=True)
    limit = 64 * 1024

    def small_files() -> None:  # in the child: Python ignores SIGXFSZ, so writes get EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = _export(hf, output, preexec_fn=small_files)
    left = sorted(p.name for p in output.parent.iterdir())
    last = (done.stderr.strip().splitlines() or [""])[-1][:120]
    report.add(
        "disk full",
        f"fst-export with files limited to 64 KB: exit {done.returncode}, one line: "
        f"{one_line(done.stderr)} ({last!r}), left: {left}",
        done.returncode != 0
        and one_line(done.stderr)
        and "disk is full" in done.stderr
        and left == [],
    )


def huge_document(report: Report, work: Path, megabytes: int, train_args: list[str]) -> None:
    docs = work / "huge"
    docs.mkdir()
    words = ("the", "of", "and", "to", "in", "is", "that", "it", "was", "with")
    with (docs / "train.documents").open("w") as f:  # one single-line document
        f.write('{"body": "')
        chunk = " ".join(words * 10_000) + " "
        for _ in range(megabytes * 1_000_000 // len(chunk) + 1):
            f.write(chunk)
        f.write('end"}\n')
    (docs / "valid.documents").write_text('{"body": "the end of it"}\n')
    command = [
        script("fst-train"), f"--train_file={docs / 'train.documents'}",
        f"--valid_file={docs / 'valid.documents'}", f"--experiments_root={work / 'huge-exp'}",
        *[a for a in train_args if not a.startswith(("--tokenizer", "--bpe_vocab_size"))],
        "--tokenizer=gpt2", "--max_steps=2", "--num_workers=0",
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    peak_mb = usage.ru_maxrss / 1024
    report.add(
        "huge document",
        f"fst-train on one {megabytes} MB line: exit {proc.returncode} in "
        f"{time.monotonic() - start:.0f} s, peak RSS {peak_mb:.0f} MB (torch, Lightning "
        "and the model included)",
        proc.returncode == 0 and peak_mb < 1500 + 20 * megabytes,
    )
    if proc.returncode != 0:
        sys.stderr.write(stderr[-2000:])
