"""Control characters out of what the server writes: error details, WebSocket messages, log lines."""

from __future__ import annotations

import re

_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """``text`` with control characters written as escapes (``\\x1b``): a stored string in a log line
    cannot move the cursor, retitle the terminal or forge another line."""

    def one(m: re.Match[str]) -> str:
        ch = m.group()
        return ch if keep_newlines and ch == "\n" else ch.encode("unicode_escape").decode("ascii")

    return _CONTROLS.sub(one, text)
