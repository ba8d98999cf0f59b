"""Per-chat settings and conversations kept across restarts, in one SQLite file (stdlib
`sqlite3`).

SQLite rather than a JSON file: each change is one small transaction (no rewrite of every
chat's settings, no lost update when two chats change settings at once), and a crash mid-write
leaves the previous state intact. Calls are synchronous on the event loop: a primary-key
lookup or a one-row upsert takes well under a millisecond, and settings change rarely.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from fst.runtime.chat import drop_oldest_turn
from fst.serving.telegram.chat_settings import ChatSettings

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chat_settings (
    chat_id INTEGER PRIMARY KEY,
    overrides TEXT NOT NULL,
    updated_at REAL NOT NULL
)
"""
_HISTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS chat_history (
    chat_id INTEGER PRIMARY KEY,
    system TEXT,
    turns TEXT NOT NULL,
    updated_at REAL NOT NULL
)
"""
# Most messages kept per chat, whatever the model's context: the oldest turns go first.
MAX_STORED_MESSAGES = 200


@dataclass(frozen=True)
class Conversation:
    """A chat's conversation with a chat model: its system message and its turns
    ({"role": "user" | "assistant", "content": ...}, oldest first)."""

    system: str | None = None
    turns: tuple[dict[str, str], ...] = ()

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.turns]


class SettingsStore:
    """`get`/`put` the settings and `conversation`/`put_conversation` the conversation of a
    chat, `reset` both; a chat never seen gets the defaults and no conversation."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:
            self._db.execute(_SCHEMA)
            self._db.execute(_HISTORY_SCHEMA)

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
        """Back to the default settings, and the conversation forgotten."""
        with self._db:
            self._db.execute("DELETE FROM chat_settings WHERE chat_id = ?", (chat_id,))
            self._db.execute("DELETE FROM chat_history WHERE chat_id = ?", (chat_id,))

    def conversation(self, chat_id: int) -> Conversation:
        row = self._db.execute(
            "SELECT system, turns FROM chat_history WHERE chat_id = ?", (chat_id,)
        ).fetchone()
        if row is None:
            return Conversation()
        try:
            turns = json.loads(row[1])
            if not all(
                isinstance(t, dict) and t.get("role") in ("user", "assistant")
                and isinstance(t.get("content"), str)
                for t in turns
            ):  # fmt: skip
                raise ValueError("not a list of user and assistant messages")
        except (ValueError, TypeError) as e:
            log.warning("dropping the stored conversation of chat %s: %s", chat_id, e)
            turns = []
        return Conversation(row[0], tuple(turns))

    def put_conversation(self, chat_id: int, conversation: Conversation) -> None:
        turns: list[dict[str, str]] | None = list(conversation.turns)
        while turns is not None and len(turns) > MAX_STORED_MESSAGES:
            turns = drop_oldest_turn(turns)
        with self._db:
            self._db.execute(
                "INSERT INTO chat_history (chat_id, system, turns, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(chat_id) DO UPDATE SET "
                "system = excluded.system, turns = excluded.turns, "
                "updated_at = excluded.updated_at",
                (
                    chat_id,
                    conversation.system,
                    json.dumps(turns or [], ensure_ascii=False),
                    time.time(),
                ),
            )

    def close(self) -> None:
        self._db.close()
