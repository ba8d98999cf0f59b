"""The experiment folder: `<experiments_root>/<experiment_name>_v<N>/` and its logging.

    description.json   all arguments, package and library versions
    tokenizer.json     the training tokenizer (also inside every checkpoint)
    generated.txt      samples written after each validation
    logs/              debug.log, info.log, errors.log; tensorboard/ event files
    models/            best-*.ckpt (lowest Perplexity/valid), last.ckpt; interrupted.ckpt after
                       Ctrl+C or a crash

Torch-free (the TensorBoard logger and checkpoint callback are built by the trainer code).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fst.core.documents import write_text_atomic

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that do not propagate to the root logger (Lightning installs its own console
# handler on them); the file handlers are attached to them too.
_NON_PROPAGATING = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")


class _NoTraceback(logging.Formatter):
    """Console lines stay one line: tracebacks go to the log files only."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(
            logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        )


@dataclass(frozen=True)
class Experiment:
    name: str
    version: int
    dir: Path

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def models_dir(self) -> Path:
        return self.dir / "models"

    @property
    def samples_file(self) -> Path:
        return self.dir / "generated.txt"

    @property
    def description_file(self) -> Path:
        return self.dir / "description.json"

    def write_description(self, description: dict[str, Any]) -> Path:
        text = json.dumps(description, ensure_ascii=False, indent=2, default=str) + "\n"
        write_text_atomic(self.description_file, text)
        return self.description_file


def open_experiment(path: str | Path) -> Experiment:
    """An existing experiment folder (e.g. the one rank 0 created, for the other ranks)."""
    folder = Path(path)
    name, _, version = folder.name.rpartition("_v")
    if not folder.is_dir() or not version.isdigit():
        raise FileNotFoundError(f"{folder}: not an experiment folder (<name>_v<N>)")
    return Experiment(name=name, version=int(version), dir=folder)


def create_experiment(experiments_root: str | Path, name: str) -> Experiment:
    """Create the next free `<name>_v<N>` folder (N from 0).

    `mkdir` without exist_ok is atomic, so two runs started together never share a folder.
    """
    root = Path(experiments_root)
    root.mkdir(parents=True, exist_ok=True)
    version = 0
    while True:
        folder = root / f"{name}_v{version}"
        try:
            folder.mkdir()
        except FileExistsError:
            version += 1
            continue
        break
    experiment = Experiment(name=name, version=version, dir=folder)
    experiment.logs_dir.mkdir()
    experiment.models_dir.mkdir()
    return experiment


@contextmanager
def experiment_logging(logs_dir: Path, console: bool = True) -> Iterator[None]:
    """Log to logs/{debug,info,errors}.log (+ fst INFO lines on stdout) while the block runs.

    Handlers are removed and closed on exit, so several runs in one process do not stack
    handlers or leak file descriptors.
    """
    formatter = logging.Formatter(LOG_FORMAT)
    file_handlers: list[logging.Handler] = []
    for file_name, level in (
        ("debug.log", logging.DEBUG),
        ("info.log", logging.INFO),
        ("errors.log", logging.ERROR),
    ):
        handler = logging.FileHandler(logs_dir / file_name, encoding="utf-8")
        handler.setLevel(level)
        handler.setFormatter(formatter)
        file_handlers.append(handler)
    root = logging.getLogger()
    attached: list[tuple[logging.Logger, logging.Handler]] = []
    for handler in file_handlers:
        attached.append((root, handler))
        for name in _NON_PROPAGATING:
            other = logging.getLogger(name)
            if not other.propagate:
                attached.append((other, handler))
    if console:
        stream = logging.StreamHandler(sys.stdout)  # stderr is for errors only
        stream.setLevel(logging.INFO)
        stream.setFormatter(_NoTraceback("%(levelname)s %(name)s: %(message)s"))
        stream.addFilter(lambda record: record.name.split(".")[0] == "fst")
        attached.append((root, stream))
    old_level = root.level
    root.setLevel(logging.DEBUG)
    for logger, handler in attached:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, handler in attached:
            logger.removeHandler(handler)
        for handler in {id(h): h for _, h in attached}.values():
            handler.close()
        root.setLevel(old_level)
