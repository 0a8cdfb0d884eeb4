"""The dashboard's formats: the status order, and the human formats every face shares (``engine.humanize``)."""

from __future__ import annotations

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
