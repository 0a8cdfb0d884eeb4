"""The dashboard's formats: the status order, and the human formats every face shares (``engine.humanize``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine import Status
from engine.humanize import (  # noqa: F401  (one rendering for every face: a rate reads the same everywhere)
    abridged,
    clock,
    count,
    duration,
    elapsed,
    local_time,
    printable,
    rate,
    run_seconds,
    seconds_left,
    size,
)

if TYPE_CHECKING:  # the engine's models (pydantic): imported after the first frame
    from engine import Operation, Progress


def total_of(op: Operation, p: Progress) -> int | None:
    """The item total to show beside ``p.done``: the progress's own, else the operation's estimate (``--items``,
    the form's item estimate) until the count passes it. Past it the progress has no total, and none is shown
    ("6/?", as ``outlast ls`` shows it): the estimate made it "6/3"."""
    if p.total is not None:
        return p.total
    estimate = op.total_items
    return estimate if estimate is not None and p.done <= estimate else None


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
