"""One structured log for the bot: JSON lines in `data_dir`, rotated, with chat and user ids.

The original kept a log file per user and never closed them. Here every record goes to one
`RotatingFileHandler` (bounded size, a few backups) as a JSON object; per-user history is a
`grep '"user_id": 123'` away. Prompts and continuations are logged only at DEBUG.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from logging.handlers import RotatingFileHandler
from pathlib import Path

LOG_FILE = "fst-telegram.log"
MAX_BYTES = 10 * 2**20
BACKUP_COUNT = 5

# Attributes every LogRecord has; anything else came from `extra=` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class OneLineFormatter(logging.Formatter):
    """stderr says what happened in one line; the traceback goes to the log file only."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(vars(record))
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return super().format(record)


def setup_logging(data_dir: Path, level: str) -> Callable[[], None]:
    """JSON lines to `data_dir/fst-telegram.log` and plain lines to stderr; returns a closer.

    The file gets DEBUG and above when `level` is DEBUG, INFO and above otherwise
    (tracebacks of failures always land there); stderr gets `level` and above.
    """
    file_handler = RotatingFileHandler(
        Path(data_dir) / LOG_FILE, maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8"
    )
    file_handler.setFormatter(JsonLinesFormatter())
    file_handler.setLevel(logging.DEBUG if level == "DEBUG" else logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console.setLevel(level)

    root = logging.getLogger()
    previous_level = root.level
    root.setLevel(logging.DEBUG if level == "DEBUG" else logging.INFO)
    root.addHandler(file_handler)
    root.addHandler(console)

    def close() -> None:
        for handler in (file_handler, console):
            root.removeHandler(handler)
            handler.close()
        root.setLevel(previous_level)

    return close
