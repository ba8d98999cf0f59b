"""Per-chat settings kept across restarts, in one SQLite file (stdlib `sqlite3`).

SQLite rather than a JSON file: each change is one small transaction (no rewrite of every
chat's settings, no lost update when two chats change settings at once), and a crash mid-write
leaves the previous state intact. Calls are synchronous on the event loop: a primary-key
lookup or a one-row upsert takes well under a millisecond, and settings change rarely.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from fst.serving.telegram.chat_settings import ChatSettings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chat_settings (
    chat_id INTEGER PRIMARY KEY,
    overrides TEXT NOT NULL,
    updated_at REAL NOT NULL
)
"""


class SettingsStore:
    """`get`/`put`/`reset` the settings of a chat; a chat never seen gets the defaults."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:
            self._db.execute(_SCHEMA)

    def get(self, chat_id: int) -> ChatSettings:
        row = self._db.execute(
            "SELECT overrides FROM chat_settings WHERE chat_id = ?", (chat_id,)
        ).fetchone()
        if row is None:
            return ChatSettings()
        return ChatSettings.from_overrides(json.loads(row[0]))

    def put(self, chat_id: int, settings: ChatSettings) -> None:
        overrides = settings.overrides()
        if not overrides:
            self.reset(chat_id)
            return
        with self._db:
            self._db.execute(
                "INSERT INTO chat_settings (chat_id, overrides, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(chat_id) DO UPDATE SET overrides = excluded.overrides, "
                "updated_at = excluded.updated_at",
                (chat_id, json.dumps(overrides, ensure_ascii=False), time.time()),
            )

    def reset(self, chat_id: int) -> None:
        with self._db:
            self._db.execute("DELETE FROM chat_settings WHERE chat_id = ?", (chat_id,))

    def close(self) -> None:
        self._db.close()
