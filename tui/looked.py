"""The first look's records as the first frame reads them, before the engine's models are imported.

The first frame lists the running and newest queued records read without an engine (``model.FirstLook``).
Validating them into ``engine.Operation`` needs pydantic and the engine's models: 100 ms of imports, a
third of what the dashboard added to a bare Textual app's start. A ``LookedOperation`` reads the stored
record (a complete JSON dump of an Operation) as the screen reads an Operation: the same attribute names
and values, the statuses and priorities as the engine's enums, slim as ``model.slim`` keeps records. Right
after the first frame the model validates every one into an Operation (``OperationsModel.validate_looked``),
before the engine starts, and the engine's own reads replace them after that: what is shown once loaded is
the engine's records, as before. No pydantic and no Textual here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from engine import SETTLED, Priority, Status

from .format import run_seconds, seconds_left

if TYPE_CHECKING:
    from engine import Operation

FIELDS = (
    *("id", "handle", "type", "name", "priority", "profile", "status", "status_message", "created_at"),
    *("queued_at", "started_at", "finished_at", "updated_at", "attempt", "retries", "progress", "total_items"),
    *("effective_timeout", "timeout_basis", "deadline", "extensions", "error", "item_failures", "worker"),
    "checkpoint_seq",
)
"""The fields of a stored record the dashboard's screen reads: a record without one of them is left to the
engine (an older or newer schema: the first look then shows nothing rather than guess)."""
PROGRESS = ("done", "total", "failed", "skipped", "step", "message", "rate", "eta", "metrics", "updated_at")


class LookedProgress:
    """``engine.Progress`` as stored (JSON), read as the screen reads it."""

    __slots__ = (*PROGRESS, "ran")

    def __init__(self, stored: dict[str, Any]) -> None:
        for name in PROGRESS:
            setattr(self, name, stored[name])
        self.ran = stored.get("ran")  # absent from records stored before it existed

    @property
    def percent(self) -> float | None:
        """As ``engine.Progress.percent``."""
        total, done = cast("int | None", self.total), cast(int, self.done)  # type: ignore[attr-defined]
        if not total:
            return 100.0 if total == 0 else None
        return min(100.0, 100.0 * done / total)


class LookedWorker:
    """``engine.WorkerInfo`` as stored, as the screen shows it (``host:pid``)."""

    __slots__ = ("host", "pid")

    def __init__(self, stored: dict[str, Any]) -> None:
        self.host, self.pid = stored["host"], stored["pid"]

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


class LookedOperation:
    """One stored record, read for the first frame (see the module doc); ``record`` is the JSON object."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        for name in FIELDS:
            setattr(self, name, record[name])
        self.status = Status(record["status"])
        self.priority = Priority(record["priority"])
        self.progress = LookedProgress(record["progress"])
        self.worker = LookedWorker(record["worker"]) if record["worker"] else None
        # Slim, as model.slim keeps every record: the detail pane reads the whole one when selected.
        self.params: dict[str, Any] = {}
        self.result: Any = None
        self.tags: dict[str, str] = {}
        self.profile_overrides: dict[str, Any] = {}
        threshold = (record["profile"] or {}).get("failure_threshold")
        self.profile: dict[str, Any] = {} if threshold is None else {"failure_threshold": threshold}

    @property
    def label(self) -> str:
        """As ``engine.Operation.label``."""
        return cast(str, self.name or self.type)  # type: ignore[attr-defined]

    def elapsed_at(self, now: float) -> float | None:
        """As ``engine.Operation.elapsed_at``: this attempt's run time."""
        started, finished = cast("float | None", self.started_at), cast("float | None", self.finished_at)  # type: ignore[attr-defined]
        if self.status is Status.QUEUED:
            return None
        p = self.progress
        return run_seconds(started, finished, self.status in SETTLED, p.ran, p.updated_at, now)  # type: ignore[attr-defined]

    def seconds_left(self, now: float) -> float | None:
        """As ``engine.Operation.seconds_left``."""
        if self.status is not Status.RUNNING:
            return None
        return seconds_left(self.deadline, self.progress.updated_at, now)  # type: ignore[attr-defined]


def looked(record: dict[str, Any]) -> Operation:
    """``record`` read for the first frame, typed as what it stands in for; KeyError, ValueError or
    TypeError when it does not read as a stored operation."""
    if not isinstance(record.get("progress"), dict) or not isinstance(record.get("worker") or {}, dict):
        raise TypeError("not a stored operation")
    return cast("Operation", LookedOperation(record))
