"""The bot's own settings, validated once with messages that name the flag."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # what Telegram accepts as secret_token
# The shape aiogram's validate_token checks; not imported from there because importing aiogram
# takes seconds, and `fst-telegram` with a typo should answer at once.
_TOKEN = re.compile(r"^[0-9]+:\S+$")


class SettingsError(ValueError):
    """Bad configuration; the message names the flag."""


def default_data_dir() -> Path:
    """The bot's state (chat settings, logs) under the user's data folder, never the current
    one: $XDG_DATA_HOME/fst-telegram, else ~/.local/share/fst-telegram."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "fst-telegram"


@dataclass(frozen=True)
class BotSettings:
    telegram_api_token: str
    text_generator_service_url: str
    text_generator_service_api_key: str | None = None
    telegram_api_server: str | None = None  # None: api.telegram.org
    data_dir: Path = field(default_factory=default_data_dir)
    request_timeout: float = 60.0
    edit_interval: float = 1.0
    repeat_cache_size: int = 10_000
    polling_timeout: int = 10
    shutdown_grace: float = 5.0
    drop_pending_updates: bool = False
    webhook_url: str | None = None  # None: long polling
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8080
    webhook_secret: str | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not isinstance(self.telegram_api_token, str) or not _TOKEN.match(
            self.telegram_api_token
        ):
            raise SettingsError(
                "--telegram_api_token: not a bot token (expected '<digits>:<secret>' from @BotFather)"
            )
        _check_url("--text_generator_service_url", self.text_generator_service_url)
        if self.telegram_api_server is not None:
            _check_url("--telegram_api_server", self.telegram_api_server)
        if self.webhook_url is not None:
            _check_url("--webhook_url", self.webhook_url)
        if self.webhook_secret is not None and not _SECRET.match(self.webhook_secret):
            raise SettingsError("--webhook_secret: 1-256 characters from A-Z, a-z, 0-9, _ and -")
        _check_positive("--request_timeout", self.request_timeout)
        _check_positive("--polling_timeout", self.polling_timeout)
        if not self.edit_interval >= 0:
            raise SettingsError(f"--edit_interval must be >= 0, got {self.edit_interval}")
        if not self.shutdown_grace >= 0:
            raise SettingsError(f"--shutdown_grace must be >= 0, got {self.shutdown_grace}")
        if self.repeat_cache_size < 1:
            raise SettingsError(f"--repeat_cache_size must be >= 1, got {self.repeat_cache_size}")
        if not 1 <= self.webhook_port <= 65535:
            raise SettingsError(f"--webhook_port must be in [1, 65535], got {self.webhook_port}")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"--log_level must be one of {', '.join(LOG_LEVELS)}")
        object.__setattr__(self, "data_dir", Path(self.data_dir))

    @property
    def webhook_path(self) -> str:
        return urlparse(self.webhook_url or "").path or "/"

    def prepare_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SettingsError(
                f"--data_dir: cannot create {self.data_dir}: {e.strerror}"
            ) from None


def _check_url(flag: str, url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SettingsError(
            f"{flag}: expected an http(s) URL like http://127.0.0.1:9228, got {url!r}"
        )


def _check_positive(flag: str, value: float) -> None:
    if not value > 0:
        raise SettingsError(f"{flag} must be > 0, got {value}")
