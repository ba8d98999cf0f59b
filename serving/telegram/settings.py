"""The bot's own settings, validated once with messages that name the flag.

`fst-telegram`'s flags are generated from these fields (`fst.core.cli_settings`); the
secrets can also come from variables, which the process list does not show.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from fst.core.cli_settings import SettingsError, option

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # what Telegram accepts as secret_token
# The shape aiogram's validate_token checks; not imported from there because importing aiogram
# takes seconds, and `fst-telegram` with a typo should answer at once.
_TOKEN = re.compile(r"^[0-9]+:\S+$")


def default_data_dir() -> Path:
    """The bot's state (chat settings, logs) under the user's data folder, never the current
    one: $XDG_DATA_HOME/fst-telegram, else ~/.local/share/fst-telegram."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "fst-telegram"


TOKEN_ENV = "FST_TELEGRAM_API_TOKEN"
API_KEY_ENV = "FST_TELEGRAM_SERVICE_API_KEY"
WEBHOOK_SECRET_ENV = "FST_TELEGRAM_WEBHOOK_SECRET"
_WEBHOOK = "webhook (long polling when --webhook_url is absent)"


@dataclass(frozen=True)
class BotSettings:
    """Everything fst-telegram can be told; each field is a flag (`fst.core.cli_settings`)."""

    telegram_api_token: str = option(env=TOKEN_ENV, secret=True, help="bot token from @BotFather")
    text_generator_service_url: str = option(
        metavar="URL", help="base URL of fst-serve, e.g. http://127.0.0.1:9228"
    )
    text_generator_service_api_key: str | None = option(
        None, env=API_KEY_ENV, secret=True, help="sent as 'Authorization: Bearer KEY'"
    )
    telegram_api_server: str | None = option(
        None,
        metavar="URL",
        shown_default="api.telegram.org",
        help="base URL of a self-hosted Bot API server",
    )
    data_dir: Path = option(
        default_factory=default_data_dir,
        shown_default="$XDG_DATA_HOME/fst-telegram or ~/.local/share/fst-telegram",
        help="where chat settings (SQLite) and the JSON-lines log live",
    )
    request_timeout: float = option(60.0, help="seconds one generation may take")
    edit_interval: float = option(
        1.0, help="minimum seconds between edits of a streamed reply in one chat"
    )
    repeat_cache_size: int = option(10_000, help="texts remembered for the Repeat button")
    polling_timeout: int = option(10, help="seconds one long-polling request waits for updates")
    shutdown_grace: float = option(
        5.0, help="seconds running replies may take to finish when the bot stops"
    )
    drop_pending_updates: bool = option(False, help="ignore messages sent while the bot was down")
    webhook_url: str | None = option(
        None,
        group=_WEBHOOK,
        metavar="URL",
        help="public HTTPS URL Telegram posts updates to",
    )
    webhook_host: str = option(
        "127.0.0.1", group=_WEBHOOK, help="address the webhook server listens on"
    )
    webhook_port: int = option(8080, group=_WEBHOOK, help="port the webhook server listens on")
    webhook_secret: str | None = option(
        None,
        group=_WEBHOOK,
        env=WEBHOOK_SECRET_ENV,
        secret=True,
        shown_default="random",
        help="secret Telegram sends with each webhook call",
    )
    log_level: str = option(
        "INFO",
        parse=str.upper,
        metavar="{" + ",".join(LOG_LEVELS) + "}",
        help="stderr log level; DEBUG also logs texts to the log file",
    )

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
