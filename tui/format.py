"""Short human formats for the dashboard's cells: durations, counts, rates, sizes."""

from __future__ import annotations

from engine import Status
from engine.cli.format import clock, duration, local_time  # noqa: F401  (one rendering for both faces)
from engine.humanize import printable  # noqa: F401  (stored text made safe: one rule for every face)

STATUS_ORDER = {
    Status.RUNNING: 0,
    Status.QUEUED: 1,
    Status.PAUSED: 2,
    Status.INTERRUPTED: 3,
    Status.FAILED: 4,
    Status.TIMED_OUT: 5,
    Status.CANCELLED: 6,
    Status.COMPLETED: 7,
}
"""Active and stopped work first: what a user may need to act on."""


def count(n: int | None) -> str:
    """``999``, ``1.2k``, ``12k``, ``3.4M``; ``?`` when unknown."""
    if n is None:
        return "?"
    if n < 1000:
        return str(n)
    if n < 10_000:
        return f"{n / 1000:.1f}k"
    if n < 1_000_000:
        return f"{n // 1000}k"
    return f"{n / 1_000_000:.1f}M"


def rate(r: float | None) -> str:
    """Items per second: ``12/s``, ``0.4/s``; ``-`` when unknown."""
    if not r:
        return "-"
    return f"{r:.0f}/s" if r >= 10 else f"{r:.1f}/s"


def size(n: int | None) -> str:
    """Bytes: ``512B``, ``12.3K``, ``4.5M``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"
