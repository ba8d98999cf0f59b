"""fst-telegram: run the Telegram bot in front of a generation server.

fst-telegram --telegram_api_token=123:ABC --text_generator_service_url=http://127.0.0.1:9228
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from fst.core.cli_settings import build_parser as _build_parser
from fst.core.cli_settings import fail, parse_settings
from fst.serving.telegram.settings import (  # noqa: F401  (re-exported: tests use them)
    API_KEY_ENV,
    TOKEN_ENV,
    WEBHOOK_SECRET_ENV,
    BotSettings,
)

log = logging.getLogger("fst.telegram")

PROG = "fst-telegram"
DESCRIPTION = "A Telegram bot that continues users' texts with an fst-serve server."


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(BotSettings, prog=PROG, description=DESCRIPTION)


def parse_args(argv: Sequence[str] | None = None) -> BotSettings:
    """The validated settings; raises SettingsError naming the flag."""
    return parse_settings(BotSettings, argv, prog=PROG, description=DESCRIPTION)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_args(argv)
        settings.prepare_data_dir()
    except ValueError as e:
        return fail(PROG, e)

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
