"""The long soak of fst-serve (run.py --soak-minutes): clients for N minutes, the
server's RSS, fds and latency sampled over time, a PNG of them."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.reliability.harness import Server, completion, fd_count, rss_mb, run_warmup

STEM = "reliability-soak-fst-serve-gpt2tiny"  # results/STEM.{json,md,png}

log = logging.getLogger("reliability")


def long_soak(server: Server, minutes: float, clients: int, out: Path) -> dict[str, Any]:
    """Clients in a closed loop for `minutes`; the server's RSS and fds every 5 s."""
    samples: list[dict[str, float]] = []
    statuses: list[int] = []
    end = time.monotonic() + minutes * 60
    pid = server.proc.pid

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.base, timeout=120) as client:

            async def loop(c: int) -> None:
                i = c
                while time.monotonic() < end:
                    statuses.append(await completion(client, i, 16, stream=i % 2 == 0))
                    i += clients

            async def sample() -> None:
                start = time.monotonic()
                while time.monotonic() < end:
                    samples.append(
                        {
                            "minute": (time.monotonic() - start) / 60,
                            "rss_mb": rss_mb(pid) or 0.0,
                            "fds": fd_count(pid) or 0,
                            "requests": len(statuses),
                        }
                    )
                    await asyncio.sleep(5)

            await asyncio.gather(sample(), *map(loop, range(clients)))

    asyncio.run(run_warmup(server.base, clients))
    asyncio.run(run())
    _plot(samples, out / f"{STEM}.png", minutes, clients)
    half = [s for s in samples if s["minute"] >= minutes / 2] or samples
    # A leak shows as growth in the second half (the first fills caches and pools) or as
    # more fds than the clients' connections explain.
    rss_growth = samples[-1]["rss_mb"] - half[0]["rss_mb"]
    fds_extra = samples[-1]["fds"] - samples[0]["fds"] - clients
    return {
        "leak_suspected": rss_growth > 0.1 * half[0]["rss_mb"] + 10 or fds_extra > 2,
        "minutes": minutes,
        "clients": clients,
        "requests": len(statuses),
        "non_200": len([s for s in statuses if s != 200]),
        "rss_mb_first": samples[0]["rss_mb"],
        "rss_mb_half": half[0]["rss_mb"],
        "rss_mb_last": samples[-1]["rss_mb"],
        "fds_first": samples[0]["fds"],
        "fds_max": max(s["fds"] for s in samples),
        "fds_last": samples[-1]["fds"],
        "samples": samples,
    }


def _plot(samples: list[dict[str, float]], path: Path, minutes: float, clients: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["minute"] for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(x, [s["rss_mb"] for s in samples])
    top.set_ylabel("fst-serve RSS (MB)")
    top.set_title(f"fst-serve soak: {clients} clients, {minutes:g} min (tiny model)")
    bottom.plot(x, [s["fds"] for s in samples], color="tab:orange")
    bottom.set_ylabel("open file descriptors")
    bottom.set_xlabel("minutes")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def soak_markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    return (
        "# Long soak (benchmarks/reliability/run.py --soak-minutes)\n\n"
        f"`{meta['command']}`: {result['clients']} clients for {result['minutes']:g} min, "
        f"{result['requests']} requests, {result['non_200']} not 200. fst-serve RSS "
        f"{result['rss_mb_first']:.0f} MB at the start, {result['rss_mb_half']:.0f} MB at half "
        f"time, {result['rss_mb_last']:.0f} MB at the end; open fds {result['fds_first']} -> "
        f"{result['fds_last']} (max {result['fds_max']}; {result['clients']} are the clients' "
        f"connections). Leak suspected: {result['leak_suspected']} (RSS grew more than 10% + "
        f"10 MB over the second half, or fds beyond the clients' + 2). Load average "
        f"{meta['load_average']}."
        f"\n\n![RSS and fds over time]({STEM}.png)\n"
    )
