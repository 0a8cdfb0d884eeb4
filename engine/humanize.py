"""Human formats shared by every face: stored text made safe, durations, times, rates, counts, sizes.

One module, so that a rate, a duration or an ETA reads the same in ``outlast ls``, the live panel and
the dashboard. No third-party import: the command line's ``--help`` and ``ls`` load this cheaply.

Names, messages, steps, errors and types are text that anyone able to submit an operation or write
the store chose. Raw, an escape sequence could retitle, clear or rewrite a terminal, and a newline or
carriage return fake a line; bidirectional overrides could make a line read other than it is.
Every face shows stored text through ``printable``: one rule, one function.
"""

from __future__ import annotations

import functools
import math
import re
import time

from .text import clean

_INVISIBLE = "\u061c\u180e\u200b\u200e\u200f\u2060-\u2064\u206a-\u206f\ufeff\ufff9-\ufffb"
"""Format characters no text needs shown raw: zero-width spaces and joiners of words (U+200B, U+2060, the
BOM U+FEFF), the bidirectional marks (LRM, RLM, ALM: they move the neutral characters around them, as the
overrides do, only less), invisible operators, deprecated format characters and interlinear annotations.
Raw, ``deploy`` and ``de\u200bploy`` read alike, and a terminal that gives such a character a column (many
draw U+FEFF or U+200B as a box) pushed the dashboard's borders out of line, as Textual counts none. The
zero-width non-joiner and joiner (U+200C, U+200D) stay: Persian and Indic words and emoji sequences need
them."""
UNSAFE = re.compile(  # C0 and C1 controls, line and paragraph separators, bidirectional overrides, the
    # invisible format characters above, and lone surrogates (a file name's bytes that are not UTF-8: a
    # terminal or pipe that takes UTF-8 only refuses them, and the command died with an internal error)
    rf"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069{_INVISIBLE}\ud800-\udfff]"
)
UNSAFE_IN_OUTPUT = re.compile(  # the same but newline and tab: for whole lines about to be written
    rf"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069{_INVISIBLE}\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape_char(m: re.Match[str]) -> str:
    """One unsafe character as its visible escape (``\\n``, ``\\x1b``, ``\\u202e``)."""
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


class _Escapes(dict[int, str]):
    """``str.translate``'s table of unsafe characters: each one's escape, made the first time it is met."""

    def __missing__(self, o: int) -> str:
        self[o] = escaped = _NAMED.get(chr(o)) or (f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        return escaped


_ESCAPES = _Escapes()
_UNSAFE_RUN = re.compile(f"(?:{UNSAFE.pattern})+")


def _escape_run(m: re.Match[str]) -> str:
    """A run of unsafe characters as their escapes, at C speed: a Python call for each character of a line of
    binary output (a megabyte of NULs) took a second, and ``outlast run`` held the command's output meanwhile."""
    return m.group().translate(_ESCAPES)


def printable(text: object, keep_newlines: bool = False) -> str:
    """``text`` safe to show on a terminal: every control character as a visible escape (``\\x1b``).

    Names, messages, steps and errors are stored text that anyone able to submit or write the store
    chose; raw, an escape sequence could retitle, clear or rewrite the terminal, a newline or carriage
    return fake a line. Every face (CLI, live panel, dashboard) shows stored text through this.
    """
    s = clean(str(text))  # a file name's bytes that are not UTF-8 as \\xNN: a terminal writes text only
    if keep_newlines:
        return "\n".join(_UNSAFE_RUN.sub(_escape_run, line) for line in s.split("\n"))
    return _UNSAFE_RUN.sub(_escape_run, s)


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """``printable`` for text that is already a string (server log lines, error details)."""
    return printable(text, keep_newlines)


def abridged(text: str, limit: int, rest: str = "") -> str:
    """``text``, or its first ``limit`` characters and how long it is (``rest`` says where the whole is): a
    handler may report or return megabytes, and one line of them buries a terminal, a screen or a record."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters{rest})"


def duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h03m``, ``3d04h``; ``-`` when unknown (or not a finite number).

    Elapsed time, ETA, time left and timeouts all read this way."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds >= 1e9:
        return ">30y"  # only garbage in a stored record gets here
    s = int(max(0.0, seconds) + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def elapsed(seconds: float | None, attempt: int) -> str:
    """An attempt's run time: ``48s``; ``48s in attempt 2`` once resumed or retried (it counts from that
    attempt's start, not the first's, and a bare 0s after a resume read as the whole run's time)."""
    text = duration(seconds)
    return text if attempt <= 1 else f"{text} in attempt {attempt}"


def run_seconds(
    started: float | None, finished: float | None, settled: bool, ran: float | None, ran_at: float | None, now: float
) -> float | None:
    """Seconds an attempt has run (None before it starts). ``ran``: its run time by the monotonic clock, stored
    with the wall time it was taken at (``ran_at``, a ``Progress``' ``ran`` and ``updated_at``). Counted from
    that, not from ``started`` alone, so a step of the wall clock (NTP, a VM restored) during the run does not
    make a 10 s run "completed after 2d00h": a settled attempt ran ``ran``; a running one ``ran`` plus the wall
    time since, never less (a clock stepped back stops it, not turns it back). A ``ran`` taken before
    ``started`` is an earlier attempt's; without one (older records) it is the wall time since ``started``."""
    if started is None:
        return None
    if ran is not None and ran_at is not None and ran_at >= started:
        return ran if settled else ran + max(0.0, now - ran_at)
    end = finished if settled and finished else now
    return max(0.0, end - started)


def seconds_left(deadline: float | None, ran_at: float | None, now: float) -> float | None:
    """Seconds before a running attempt's ``deadline`` (wall time, written with ``ran_at``): what was left when
    it was written less the wall time since, never more than that (a clock stepped back by three days said
    "time left 3d00h" until the next write)."""
    if deadline is None:
        return None
    if ran_at is None:
        return deadline - now
    return deadline - ran_at - max(0.0, now - ran_at)


def local_time(ts: float | None) -> time.struct_time | None:
    """``ts`` in local time; None when unknown or beyond what the platform's clock can show (a stored
    record's garbage must not crash a listing)."""
    if ts is None:
        return None
    try:
        return time.localtime(ts)
    except (OverflowError, ValueError, OSError):
        return None


def clock(ts: float | None) -> str:
    """``HH:MM:SS`` in local time; ``-`` when unknown."""
    try:
        second = math.floor(ts) if ts is not None and math.isfinite(ts) else None
    except (OverflowError, ValueError):  # an int too large for a float
        second = None
    return "-" if second is None else _clock_at(second)


@functools.lru_cache(maxsize=64)
def _clock_at(second: int) -> str:
    """``clock`` of a whole second, remembered: a followed command prints one per log line, and
    ``time.localtime`` reads the zone file's status on every call (measured: a small gain)."""
    lt = local_time(second)
    return "-" if lt is None else time.strftime("%H:%M:%S", lt)


def when(ts: float | None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in local time; ``-`` when unknown."""
    lt = local_time(ts)
    return "-" if lt is None else time.strftime("%Y-%m-%d %H:%M:%S", lt)


def ago(ts: float | None, now: float | None = None) -> str:
    """``3m05s ago``; ``-`` when unknown."""
    return "-" if ts is None else duration((now or time.time()) - ts) + " ago"


def count(n: int | None) -> str:
    """``999``, ``1.2k``, ``12k``, ``3.4M``, ``123M``, ``1.2G``, ``1.0T``: three figures at most (the dashboard's
    ITEMS column holds "done/total" in 11 cells: "123.5M/987." lost its total); ``?`` when unknown."""
    if n is None:
        return "?"
    if n < 1000:
        return str(n)
    for unit, scale in (("k", 10**3), ("M", 10**6), ("G", 10**9), ("T", 10**12)):
        if n < scale * 1000 or unit == "T":
            return f"{n / scale:.1f}{unit}" if n < scale * 10 else f"{n // scale}{unit}"
    return str(n)  # not reached: T takes the rest


_RATE_UNITS = (("/s", 1.0), ("/min", 60.0), ("/h", 3600.0))


def rate(per_second: float | None) -> str:
    """Items per second, in the largest unit that shows at least one: ``1.2k/s``, ``12/s``, ``2.5/s``,
    ``24/min`` (0.4 a second), ``36/h``; two significant digits, at most 7 characters (the dashboard's
    column); ``-`` when unknown, zero or not finite."""
    if not per_second or not math.isfinite(per_second) or per_second < 0:
        return "-"
    for unit, scale in _RATE_UNITS:
        value = per_second * scale
        if value >= 1 or unit == "/h":
            break
    if value >= 999.5:
        return f"{count(round(value))}{unit}"
    return f"{value:.0f}{unit}" if value >= 9.95 else f"{value:.1f}{unit}"


def size(n: int | None) -> str:
    """Bytes: ``512B``, ``12.3K``, ``4.5M``; ``-`` when unknown."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"
