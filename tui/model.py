"""The dashboard's model: the operation records it shows, kept fresh through the engine's public API.

No Textual here: the App owns the screen and calls these methods from its timers and workers.
Built for 10,000 operations with 100 of them reporting progress:

- records live in one dict (``ops``); the full list is read once in pages, then only active
  operations are polled every second (plus those the engine's events name), and everything is
  read again rarely, to see what other processes finished or removed;
- the model only marks what changed (``structure_dirty``: rows come or go or move; ``repaint``:
  a value in a row changed), so the screen is redrawn at its own frame rate, never per event.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Iterable

from engine import (
    ACTIVE,
    CheckpointSaved,
    Engine,
    Event,
    Operation,
    OutlastError,
    Priority,
    Status,
    StatusChanged,
    TimeoutExtended,
)
from engine.resources import ResourceSample

STOPPED_POLL = 10.0
"""Seconds between reads of paused and interrupted operations (another process may cancel them)."""
FULL_RELOAD = 300.0
"""Seconds between reads of every operation (records deleted or changed behind our back)."""
PAGE = 2000
"""Records read at a time in a full reload (one page in memory, the event loop free between pages)."""
HISTORY = 300
"""Resource samples kept for the sparklines."""


class OperationsModel:
    """Every operation record the dashboard shows, and what changed since the screen last looked."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ops: dict[str, Operation] = {}
        self.active: set[str] = set()
        """Queued or running: polled every second."""
        self.refetch: set[str] = set()
        """Named by an event or an action: read again by id at the next frame."""
        self.checkpointed: set[str] = set()
        """Operations with a checkpoint saved since the screen last looked."""
        self.structure_dirty = False
        self.repaint = False
        self.store_ok = True
        self.errors: deque[str] = deque(maxlen=20)
        """One line per store failure that began (not one per failed poll), for the screen to show."""
        self.history: deque[ResourceSample] = deque(maxlen=HISTORY)
        self.last_full = time.monotonic()
        self.last_stopped = 0.0

    # ---- records -----------------------------------------------------------------------------

    def keep(self, op: Operation) -> None:
        """Keep a record (unless an older read than the one held), without what the table never shows."""
        old = self.ops.get(op.id)
        if old is not None and op.updated_at < old.updated_at:
            return
        op = slim(op)
        if old is None or old.status is not op.status or old.priority is not op.priority or old.name != op.name:
            self.structure_dirty = True
        self.ops[op.id] = op
        self.repaint = True
        if op.status in ACTIVE:
            self.active.add(op.id)

    def on_event(self, event: Event) -> None:
        """Called by the engine's bus, in the loop: only remember what changed."""
        if isinstance(event, StatusChanged | TimeoutExtended):
            self.refetch.add(event.operation_id)
        elif isinstance(event, CheckpointSaved):
            self.checkpointed.add(event.operation_id)

    def counts(self) -> dict[Status, int]:
        counts: dict[Status, int] = {}
        for op in self.ops.values():
            counts[op.status] = counts.get(op.status, 0) + 1
        return counts

    def queue_depth(self) -> dict[Priority, int]:
        depth = dict.fromkeys(Priority, 0)
        for op_id in self.active:
            op = self.ops.get(op_id)
            if op is not None and op.status is Status.QUEUED:
                depth[op.priority] += 1
        return depth

    def recent(self, n: int) -> list[Operation]:
        """The ``n`` operations updated last."""
        return sorted(self.ops.values(), key=lambda o: o.updated_at, reverse=True)[:n]

    # ---- reading the store -------------------------------------------------------------------

    def failed(self, e: Exception) -> None:
        """The store failed: one line when it begins, the status line says so until it is back."""
        if self.store_ok:
            self.errors.append(f"store: {e}")
        self.store_ok = False

    async def reload_all(self) -> bool:
        """Every operation, in pages; records gone from the store are dropped. False if the store failed."""
        seen: set[str] = set()
        gc.disable()  # reading 10,000 records would set off full collections, ~80 ms each
        try:
            complete = await self._read_pages(seen)
        finally:
            # A million long-lived objects: frozen, the collector no longer scans them (nor the imports),
            # so a full collection in the steady state costs ~10 ms instead of ~80 (the slowest key presses).
            gc.freeze()
            gc.enable()
        if not complete:
            return False
        self.store_ok = True
        self.last_full = time.monotonic()
        for gone in set(self.ops) - seen - self.active:
            del self.ops[gone]
            self.structure_dirty = True
        return True

    async def _read_pages(self, seen: set[str]) -> bool:
        offset = 0
        while True:
            try:
                page = await self.engine.list(limit=PAGE, offset=offset)
            except Exception as e:
                self.failed(e)
                return False
            for op in page:
                self.keep(op)
                seen.add(op.id)
            if len(page) < PAGE:
                return True
            offset += PAGE

    async def poll(self) -> None:
        """Active operations; stopped ones every STOPPED_POLL; everything every FULL_RELOAD seconds.
        What leaves the active set is read by id, so its final state is shown."""
        now = time.monotonic()
        if now - self.last_full > FULL_RELOAD:
            await self.reload_all()
            return
        try:
            active = await self.engine.list(statuses=list(ACTIVE))
            if now - self.last_stopped > STOPPED_POLL:
                self.last_stopped = now
                for op in await self.engine.list(statuses=[Status.PAUSED, Status.INTERRUPTED]):
                    self.keep(op)
        except Exception as e:
            self.failed(e)
            return
        self.store_ok = True
        now_active = {op.id for op in active}
        for op in active:
            self.keep(op)
        await self.fetch((self.active - now_active) | self.refetch)
        self.active = now_active

    async def fetch(self, ids: Iterable[str]) -> None:
        """Read these records again by id; one that is gone from the store leaves the table."""
        for op_id in list(ids):
            self.refetch.discard(op_id)
            try:
                self.keep(await self.engine.get(op_id))
            except OutlastError:
                if self.ops.pop(op_id, None) is not None:
                    self.structure_dirty = True
            except Exception as e:
                self.failed(e)


def slim(op: Operation) -> Operation:
    """The record without params, result and most of the profile: 10,000 of them held in memory
    cost half as much. The detail pane reads the full record of the selected operation."""
    if not (op.params or op.result is not None or len(op.profile) > 1 or op.profile_overrides or op.tags):
        return op
    threshold = op.profile.get("failure_threshold")
    op = op.model_copy()
    op.params, op.result, op.profile_overrides, op.tags = {}, None, {}, {}
    op.profile = {} if threshold is None else {"failure_threshold": threshold}
    return op
