"""fst-telegram: run the Telegram bot in front of a generation server.

fst-telegram --telegram_api_token=123:ABC --text_generator_service_url=http://127.0.0.1:9228
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fst.serving.telegram.settings import LOG_LEVELS, BotSettings, SettingsError

log = logging.getLogger("fst.telegram")

TOKEN_ENV = "FST_TELEGRAM_API_TOKEN"
API_KEY_ENV = "FST_TELEGRAM_SERVICE_API_KEY"
WEBHOOK_SECRET_ENV = "FST_TELEGRAM_WEBHOOK_SECRET"


def build_parser() -> argparse.ArgumentParser:
    d = BotSettings.__dataclass_fields__
    p = argparse.ArgumentParser(
        prog="fst-telegram",
        description="A Telegram bot that continues users' texts with an fst-serve server.",
    )
    p.add_argument(
        "--telegram_api_token",
        default=os.environ.get(TOKEN_ENV),
        help=f"bot token from @BotFather (or env {TOKEN_ENV})",
    )
    p.add_argument(
        "--text_generator_service_url",
        required=True,
        help="base URL of fst-serve, e.g. http://127.0.0.1:9228",
    )
    p.add_argument(
        "--text_generator_service_api_key",
        default=os.environ.get(API_KEY_ENV),
        help=f"sent as 'Authorization: Bearer KEY' (or env {API_KEY_ENV})",
    )
    p.add_argument(
        "--telegram_api_server",
        default=None,
        help="base URL of a self-hosted Bot API server (default: api.telegram.org)",
    )
    p.add_argument(
        "--data_dir",
        type=Path,
        default=None,
        help="where chat settings (SQLite) and the JSON-lines log live "
        "(default: $XDG_DATA_HOME/fst-telegram or ~/.local/share/fst-telegram)",
    )
    p.add_argument(
        "--request_timeout",
        type=float,
        default=d["request_timeout"].default,
        help="seconds one generation may take (default: %(default)s)",
    )
    p.add_argument(
        "--edit_interval",
        type=float,
        default=d["edit_interval"].default,
        help="minimum seconds between edits of a streamed reply in one chat (default: %(default)s)",
    )
    p.add_argument(
        "--repeat_cache_size",
        type=int,
        default=d["repeat_cache_size"].default,
        help="texts remembered for the Repeat button (default: %(default)s)",
    )
    p.add_argument(
        "--drop_pending_updates",
        action="store_true",
        help="ignore messages sent while the bot was down",
    )
    p.add_argument(
        "--webhook_url",
        default=None,
        help="public HTTPS URL Telegram posts updates to; long polling when absent",
    )
    p.add_argument(
        "--webhook_host",
        default=d["webhook_host"].default,
        help="address the webhook server listens on (default: %(default)s)",
    )
    p.add_argument(
        "--webhook_port",
        type=int,
        default=d["webhook_port"].default,
        help="port the webhook server listens on (default: %(default)s)",
    )
    p.add_argument(
        "--webhook_secret",
        default=os.environ.get(WEBHOOK_SECRET_ENV),
        help=f"secret Telegram sends with each webhook call (or env {WEBHOOK_SECRET_ENV}; "
        "random when absent)",
    )
    p.add_argument(
        "--log_level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="stderr log level; DEBUG also logs texts to the log file (default: %(default)s)",
    )
    return p


def settings_from_args(args: argparse.Namespace) -> BotSettings:
    if not args.telegram_api_token:
        raise SettingsError(f"--telegram_api_token (or env {TOKEN_ENV}) is required")
    given = {k: v for k, v in vars(args).items() if not (k == "data_dir" and v is None)}
    return BotSettings(**given)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        settings.prepare_data_dir()
    except SettingsError as e:
        print(f"fst-telegram: {e}", file=sys.stderr)
        return 2

    from fst.serving.telegram.logs import setup_logging

    close_logs = setup_logging(settings.data_dir, settings.log_level)
    try:
        asyncio.run(_run(settings))
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # one line on stderr; the traceback is in the log file
        log.error(
            "fst-telegram stopped: %s: %s",
            type(e).__name__,
            e,
            exc_info=True,
            extra={"event": "fatal"},
        )
        return 1
    finally:
        close_logs()
    return 0


async def _run(settings: BotSettings) -> None:
    from fst.serving.telegram.bot import TelegramBot

    bot = TelegramBot(settings)
    await (bot.run_webhook() if settings.webhook_url else bot.run_polling())


if __name__ == "__main__":
    sys.exit(main())
