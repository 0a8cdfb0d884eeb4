"""Stored text made safe for any face that shows it (terminal, dashboard, server log, plain text).

Names, messages, steps, errors and types are text that anyone able to submit an operation or write
the store chose. Raw, an escape sequence could retitle, clear or rewrite a terminal, and a newline or
carriage return fake a line; bidirectional overrides could make a line read other than it is.
Every face shows stored text through ``printable``: one rule, one function.
"""

from __future__ import annotations

import re

UNSAFE = re.compile(  # C0 and C1 controls, line and paragraph separators, bidirectional overrides
    r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
UNSAFE_IN_OUTPUT = re.compile(  # the same but newline and tab: for whole lines about to be written
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape_char(m: re.Match[str]) -> str:
    """One unsafe character as its visible escape (``\\n``, ``\\x1b``, ``\\u202e``)."""
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def printable(text: object, keep_newlines: bool = False) -> str:
    """``text`` safe to show on a terminal: every control character as a visible escape (``\\x1b``).

    Names, messages, steps and errors are stored text that anyone able to submit or write the store
    chose; raw, an escape sequence could retitle, clear or rewrite the terminal, a newline or carriage
    return fake a line. Every face (CLI, live panel, dashboard) shows stored text through this.
    """
    s = str(text)
    if keep_newlines:
        return "\n".join(UNSAFE.sub(escape_char, line) for line in s.split("\n"))
    return UNSAFE.sub(escape_char, s)


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """``printable`` for text that is already a string (server log lines, error details)."""
    return printable(text, keep_newlines)
