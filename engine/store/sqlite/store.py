"""The embedded store: one SQLite database (WAL, synchronous=FULL) in a 0700 state directory.

All SQLite calls run on one thread per store (never on the event loop). Several
processes share one state directory: writes take SQLite's write lock with
BEGIN IMMEDIATE, and a running operation is also held by an flock on
``locks/ID.lock`` that the kernel releases when its process dies, so any
engine can tell an orphan from a live operation.

The parts, each a class derived from ``core.SqliteCore`` (the connection, its thread, the locks
held): ``records`` (operations, the queue, claims), ``liveness`` (holding and orphans),
``checkpoints`` (checkpoints, item deltas and failures), ``logs`` (control requests and logs);
``schema`` is the tables, public for tools.
"""

from __future__ import annotations

from .checkpoints import CheckpointsMixin
from .liveness import LivenessMixin
from .logs import ControlLogsMixin
from .records import RecordsMixin


class LocalStore(RecordsMixin, LivenessMixin, CheckpointsMixin, ControlLogsMixin):
    """The default store (see module doc): ``LocalStore(state_dir)``, opened by the engine or ``async with``."""

    async def __aenter__(self) -> LocalStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
