"""A stage-by-stage progress display for the export (load, export, optimize, ... write).

The long steps (tracing, fusions, verification) report no inner progress, so each stage
shows a spinner and its running time; finished stages stay on screen with their duration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Stages:
    def __init__(self, names: list[str], enabled: bool = True) -> None:
        self.names = names
        self.timings: dict[str, float] = {}
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            from rich.table import Column

            self._progress = Progress(
                SpinnerColumn(finished_text="[green]✓"),
                TimeElapsedColumn(table_column=Column(min_width=7, no_wrap=True)),
                TextColumn("{task.description}", table_column=Column(overflow="fold")),
                console=Console(stderr=True),
            )

    def __enter__(self) -> Stages:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        number = f"[{self.names.index(name) + 1}/{len(self.names)}]"
        description = f"{number} {name}" + (f": {detail}" if detail else "")
        task = None
        if self._progress is not None:
            task = self._progress.add_task(description, total=1)
        start = time.perf_counter()
        log.info("%s ...", description)
        yield
        self.timings[name] = time.perf_counter() - start
        log.info("%s done in %.1f s", description, self.timings[name])
        if task is not None:
            self._progress.update(task, completed=1)

    def note(self, text: str) -> None:
        """A line of results (fusion counts, parity) printed between the stages."""
        log.info("%s", text)
        if self._progress is not None:
            self._progress.console.print(f"    {text}")
