"""AutoBot's framework on Outlast: its names, field names and call styles, so code written for it runs.

- ``OperationContext`` also answers the seed's ``OperationExecutionContext`` methods:
  ``should_resume()``, ``get_resume_data()`` (an ``OperationCheckpoint``), ``await update_progress(...)``
  and ``await save_checkpoint(intermediate_results, next_step)`` (``SeedContextMethods``).
- ``seed_progress(op)`` and ``seed_checkpoint(cp)``: a record's progress and a checkpoint under the
  seed's field names (``OperationProgress`` and ``OperationCheckpoint``), for the API and ``show --json``.

Nothing here imports the context or the engine: the context inherits the methods.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
from collections.abc import Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from .text import NotJSON

T = TypeVar("T")
_getframe = sys._getframe

if TYPE_CHECKING:
    from .context import OperationLog, ResumePoint
    from .models import Checkpoint, Operation, Progress
    from .store.base import Store


@dataclass
class OperationCheckpoint:
    """The seed's checkpoint: what ``ctx.get_resume_data()`` returns when a run resumes."""

    operation_id: str
    checkpoint_id: str
    timestamp: datetime | None
    progress_percentage: float
    processed_items: int
    total_items: int
    intermediate_results: dict[str, Any] = field(default_factory=dict)
    context_data: dict[str, Any] = field(default_factory=dict)
    next_step: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


class SeedContextMethods:
    """The seed's ``OperationExecutionContext`` methods, on top of ``OperationContext``'s own."""

    _said_not_json = False
    """A value saved as its str was said in the log (once per attempt)."""

    if TYPE_CHECKING:
        log: OperationLog
        id: str
        total: int | None
        state: dict[str, Any]
        resume_data: dict[str, Any] | None

        @property
        def resuming(self) -> bool: ...

        def progress(
            self,
            done: int | None = None,
            total: int | None = None,
            step: str | None = None,
            message: str | None = None,
            **metrics: Any,
        ) -> None: ...

        def checkpoint(
            self, next_step: str | None = None, *, now: bool = False, **context_data: Any
        ) -> Coroutine[Any, Any, None]: ...

        def seed_style(self) -> ResumePoint | None: ...

        def add_metrics(self, metrics: dict[str, Any]) -> None: ...

    def should_resume(self) -> bool:
        """True when this run continues from a checkpoint (``ctx.resuming``)."""
        self.seed_style()
        return self.resuming

    def get_resume_data(self) -> OperationCheckpoint | None:
        """The checkpoint this run resumes from: a copy of it, as it was saved. ``intermediate_results`` is the
        checkpoint's state, not the live ``ctx.state`` (which later saves change, so that it no longer
        agreed with ``next_step``), and changing it changes nothing the engine holds."""
        point = self.seed_style()
        data = self.resume_data
        if data is None:
            return None
        state = point.state if point is not None else self.state  # None: ``ctx.items`` came first
        done = int(data.get("processed_items") or 0)
        total = self.total or 0
        ts = data.get("created_at")
        return OperationCheckpoint(
            operation_id=self.id,
            checkpoint_id=str(data.get("seq") or 0),
            timestamp=datetime.fromtimestamp(ts, UTC) if ts else None,
            progress_percentage=min(100.0, 100.0 * done / total) if total else 0.0,
            processed_items=done,
            total_items=total,
            intermediate_results=copy.deepcopy(state),
            context_data=copy.deepcopy(dict(data.get("context_data") or {})),
            next_step=data.get("next_step") or "",
            metadata=dict(data.get("metadata") or {}),
        )

    def update_progress(
        self,
        current_step: str,
        processed_items: int,
        total_items: int | None = None,
        performance_metrics: dict[str, Any] | None = None,
        status_message: str | None = None,
    ) -> Coroutine[Any, Any, None]:
        """The seed's progress call: ``ctx.progress`` with its argument order (a stop raises here).

        Reported when called: awaiting it only lets the event loop turn. Called without ``await`` (a slip
        the seed's async methods invite), nothing was reported and the operation completed at "0/0 items"."""
        self.seed_style()
        self.add_metrics(performance_metrics or {})  # any names: not as **kwargs of progress()
        try:
            self.progress(processed_items, total=total_items, step=current_step, message=status_message)
        except ValueError as e:  # named as the caller named them
            said = (
                str(e)
                .replace("ctx.progress(done=...)", "processed_items")
                .replace("ctx.progress(total=...)", "total_items")
            )
            raise ValueError(said) from None
        return Pending(_turn(), None, None, self)

    def save_checkpoint(
        self, intermediate_results: dict[str, Any], next_step: str | None = None, **context_data: Any
    ) -> Coroutine[Any, Any, None]:
        """``_save_checkpoint``, said in the log when it is called without ``await`` (it never runs then)."""
        return Pending(
            self._save_checkpoint(intermediate_results, next_step, **context_data),
            "ctx.save_checkpoint()",
            _getframe(1),
            self,
        )

    async def _save_checkpoint(
        self, intermediate_results: dict[str, Any], next_step: str | None = None, **context_data: Any
    ) -> None:
        """The seed's checkpoint call: ``intermediate_results`` go into ``ctx.state``, then a checkpoint.

        Merged, not replacing it: tasks of one handler that save their own keys at once (``asyncio.gather``
        of workers, tests/test_engine_gathered.py) keep each other's; a key a later save leaves out stays.

        A value JSON cannot hold (a ``Path``, a ``datetime``: the seed's own checkpoint carries a datetime,
        so its JSON checkpoints wrote such values as strings) is saved as its ``str``, said once in the
        log, instead of failing the operation as ``ctx.checkpoint`` does for code written for Outlast."""
        self.seed_style()
        if intermediate_results is not None and not isinstance(intermediate_results, Mapping):
            # A list of the files done: "dictionary update sequence element #0 has length 7; 2 is required".
            raise TypeError(
                f"save_checkpoint(intermediate_results=...) takes a dict (its keys go into ctx.state), not a"
                f" {type(intermediate_results).__name__}: save_checkpoint({{'done_files': files}}) keeps a list"
            )
        self.state.update(intermediate_results or {})
        try:
            await self.checkpoint(next_step, **context_data)
        except NotJSON as e:
            if e.too_deep:  # nested past the limit: no string stands for that
                raise
            try:
                as_json = json.loads(json.dumps([self.state, context_data], default=str))
            except ValueError:  # a cycle: no string for it either
                raise e from None
            if not self._said_not_json:
                self._said_not_json = True
                self.log.warning(f"{str(e).split(';')[0].removeprefix('checkpoint not saved: ')}: saved as its str")
            self.state.update(as_json[0])
            await self.checkpoint(next_step, **as_json[1])


def _turn() -> Generator[None, None, None]:
    """One turn of the event loop (``asyncio.sleep(0)``, without importing asyncio: ``outlast ls --json`` uses
    this module's seed fields)."""
    yield


class Pending(Coroutine[Any, Any, T]):
    """A coroutine of the handler API that says in the operation's log when it is dropped without ever being
    awaited (``ctx.save_checkpoint(...)`` without ``await``: no checkpoint was taken, and nothing said so but a
    RuntimeWarning on the worker's stderr). ``what`` None: dropped in silence (its work was done when called)."""

    __slots__ = ("_coro", "_log", "_started", "_what", "_where")

    def __init__(
        self, coro: Coroutine[Any, Any, T] | Generator[Any, Any, T], what: str | None, frame: Any, owner: Any
    ) -> None:
        self._coro = coro
        self._what = what
        self._where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}" if frame is not None else ""
        self._log = owner
        self._started = False

    def __await__(self) -> Generator[Any, None, T]:
        self._started = True
        coro = self._coro
        return coro.__await__() if hasattr(coro, "__await__") else coro  # type: ignore[return-value]

    def send(self, value: Any) -> Any:
        self._started = True
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        self._started = True
        return self._coro.throw(*args)

    def close(self) -> None:
        self._started = True
        self._coro.close()

    def __del__(self) -> None:
        if not self._started:
            self._coro.close()  # not "coroutine ... was never awaited" on stderr: said here
            if self._what is not None:
                with contextlib.suppress(Exception):
                    owner = self._log  # the context: said once per call site and attempt
                    said = owner.__dict__.setdefault("_said_unawaited", set())
                    if (self._what, self._where) not in said:
                        said.add((self._what, self._where))
                        owner.log.warning(
                            f"{self._what} was called without await (at {self._where}): it never ran, nothing was saved"
                        )


# ---- the seed's field names for records and checkpoints --------------------------------------------


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 in UTC (the seed's datetimes), or None; None too past what a datetime holds (the
    year 9999): a total of 10^15 items at 10 a second has an ETA a million years on, and ``ls --json``, ``show
    --json`` and the HTTP API failed on it ("year 3193234 is out of range", an internal error)."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return None


def seed_progress(op_id: str, p: Progress, status: str | None = None) -> dict[str, Any]:
    """Progress as the seed's ``OperationProgress``: ``progress_percentage``, ``status_message``, ...

    ``estimated_completion`` is ISO 8601 (when the rate gives an ETA); ``detailed_status`` carries what
    the seed has no field for (failed and skipped items, the rate, the operation's status).
    """
    # From when the ETA was measured: a record read twice gives the same answer (no "now" in it). Only of running
    # work: a paused or failed one (its last ETA stored) was said to complete at a time it never would.
    measured = p.eta if status in (None, "running") else None
    eta = None if measured is None or p.updated_at is None else p.updated_at + measured
    return {
        "operation_id": op_id,
        "current_step": p.step or "",
        "progress_percentage": round(p.percent or 0.0, 2),
        "processed_items": p.done,
        "total_items": p.total if p.total is not None else 0,
        "estimated_completion": iso(eta),
        "performance_metrics": {**p.metrics, **({"items_per_second": round(p.rate, 3)} if p.rate else {})},
        "status_message": p.message or p.step or "",  # a handler that gives no message: its step
        "detailed_status": {
            "status": status,
            "failed_items": p.failed,
            "skipped_items": p.skipped,
            "eta_seconds": None if measured is None else round(measured, 1),
            "updated_at": iso(p.updated_at),
        },
    }


def seed_operation(op: Operation) -> dict[str, Any]:
    """The seed's names for a record's progress, to sit beside Outlast's own fields."""
    return seed_progress(op.id, op.progress, op.status.value)


def seed_checkpoint(cp: Checkpoint, full: bool = False) -> dict[str, Any]:
    """A checkpoint under the seed's names: ``checkpoint_id`` (the seq), ``timestamp`` (ISO 8601),
    ``intermediate_results`` (``state``). A listing leaves ``intermediate_results``, ``context_data`` and
    ``metadata`` out (null; ``full`` false): they are read one checkpoint at a time."""
    return {
        "checkpoint_id": str(cp.seq),
        "timestamp": iso(cp.created_at),
        "progress_percentage": cp.progress_percentage,
        "processed_items": cp.processed_items,
        "total_items": cp.total_items,
        "intermediate_results": cp.state if full else None,
        "context_data": cp.context_data if full else None,
        "next_step": cp.next_step,
        "metadata": cp.metadata if full else None,  # not read by a listing: null, not an empty "none"
        "full": full,
    }


def checkpoint_listing(cp: Checkpoint) -> dict[str, Any]:
    """A listed checkpoint as JSON: Outlast's fields and the seed's, without the state it does not hold."""
    return {**cp.model_dump(mode="json"), "state": None, **seed_checkpoint(cp)}


async def checkpoints_in_full(store: Store, cps: list[Checkpoint]) -> list[dict[str, Any]]:
    """``cps`` (a listing) with each valid one's state and context_data read back (``checkpoints --full``);
    one that cannot be read is listed as it was (``full`` false)."""
    out = []
    for cp in cps:
        found = await store.load_checkpoint(cp.operation_id, cp.seq) if cp.valid else None
        if found is not None and found[0].seq == cp.seq:
            out.append({**found[0].model_dump(mode="json"), **seed_checkpoint(found[0], full=True)})
        else:
            out.append(checkpoint_listing(cp))
    return out
