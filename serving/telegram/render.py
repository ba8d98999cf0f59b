"""The reply's HTML: the user's text in bold, then the continuation, within Telegram's limit
(a chat model's answer: the answer alone).

Telegram refuses messages longer than 4096 characters after entity parsing, counted in UTF-16
code units. We bound the HTML *source* instead (tags and `&lt;` escapes included), which is
never shorter than the parsed text, so the reply always fits. Trimming happens on the raw
text before escaping, so an escape like `&amp;` or the closing `</b>` is never cut.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

MESSAGE_LIMIT = 4096
ELLIPSIS = "…"
# When the prompt itself is huge, keep at least this share of the message for the continuation.
CONTINUATION_SHARE = 4  # a quarter: 1024 of 4096


def telegram_length(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units (an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class Rendered:
    html: str
    trimmed: bool  # True when the continuation was cut to fit


def render_reply(
    prompt: str, continuation: str, note_html: str = "", limit: int = MESSAGE_LIMIT
) -> Rendered:
    """`<b>prompt</b>continuation` + `note_html` (already HTML), at most `limit` long."""
    head = _bold(prompt)
    body = html.escape(continuation)
    if telegram_length(head + body + note_html) <= limit:
        return Rendered(head + body + note_html, trimmed=False)

    room_for_rest = min(limit // CONTINUATION_SHARE, telegram_length(body + note_html) + 1)
    head = _bold_tail(prompt, limit - room_for_rest)
    room = limit - telegram_length(head) - telegram_length(note_html)
    kept, trimmed = _prefix_within(continuation, room)
    return Rendered(head + kept + note_html, trimmed=trimmed)


def _bold(text: str) -> str:
    """`<b>text</b>`; nothing for no text (a chat model's answer has no prompt before it)."""
    return f"<b>{html.escape(text)}</b>" if text else ""


def _bold_tail(prompt: str, budget: int) -> str:
    """The prompt in bold, or `…` + its longest tail that fits `budget`."""
    if telegram_length(_bold(prompt)) <= budget:
        return _bold(prompt)
    low, high = 0, len(prompt)  # binary search on the number of characters kept
    while low < high:
        mid = (low + high + 1) // 2
        if telegram_length(_bold(ELLIPSIS + prompt[len(prompt) - mid :])) <= budget:
            low = mid
        else:
            high = mid - 1
    return _bold(ELLIPSIS + prompt[len(prompt) - low :])


def _prefix_within(text: str, room: int) -> tuple[str, bool]:
    """Escaped `text`, or its longest prefix + `…`, within `room`; and whether it was cut."""
    escaped = html.escape(text)
    if telegram_length(escaped) <= room:
        return escaped, False
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if telegram_length(html.escape(text[:mid] + ELLIPSIS)) <= room:
            low = mid
        else:
            high = mid - 1
    return html.escape(text[:low] + ELLIPSIS), True
