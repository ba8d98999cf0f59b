"""A stage-by-stage progress display for the export (load, export, optimize, ... verify).

The long steps (tracing, fusions, verification) report no inner progress, so on a terminal
each stage shows a spinner and its running time (rich, on stderr); finished stages stay on
screen with their duration. Without a terminal (CI logs, pipes) each finished stage is one
plain line on stdout, so stderr carries nothing but an error.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fst.export import memory

log = logging.getLogger(__name__)


class Stages:
    def __init__(self, names: list[str], enabled: bool = True) -> None:
        self.names = names
        self.enabled = enabled
        self.timings: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float | None] = {}  # the process's peak by each stage's end
        self._live = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            from rich.table import Column

            self._live = Progress(
                SpinnerColumn(finished_text="[green]✓"),
                TimeElapsedColumn(table_column=Column(min_width=7, no_wrap=True)),
                TextColumn("{task.description}", table_column=Column(overflow="fold")),
                console=Console(stderr=True),
            )

    def __enter__(self) -> Stages:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        number = f"[{self.names.index(name) + 1}/{len(self.names)}]"
        description = f"{number} {name}" + (f": {detail}" if detail else "")
        task = self._live.add_task(description, total=1) if self._live is not None else None
        log.info("%s ...", description)
        memory.release_memory()
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            if task is not None:
                self._live.remove_task(task)  # the error line says what went wrong
            raise
        self.timings[name] = elapsed = time.perf_counter() - start
        self.peak_rss_mb[name] = peak = memory.peak_rss_mb()
        log.info(
            "%s done in %.1f s, RSS %s MB, peak RSS so far %s MB",
            description, elapsed, _mb(memory.rss_mb()), _mb(peak),
        )  # fmt: skip
        if task is not None:
            self._live.update(task, completed=1)
        elif self.enabled:
            print(f"{description} ({elapsed:.1f} s)", flush=True)

    def note(self, text: str) -> None:
        """A line of results (fusion counts, parity) shown under the stages."""
        log.info("%s", text)
        if self._live is not None:
            self._live.console.print(f"    {text}")
        elif self.enabled:
            print(f"    {text}", flush=True)


def _mb(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"
