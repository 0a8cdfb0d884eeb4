"""The dashboard's model: the operation records it shows, kept fresh through the engine's public API.

No Textual here: the App owns the screen and calls these methods from its timers and workers.
Built for 10,000 operations with 100 of them reporting progress:

- records live in one dict (``ops``); the full list is read once in pages, then only active
  operations are polled every second (plus those the engine's events name), and everything is
  read again rarely, to see what other processes finished or removed;
- the model only marks what changed (``structure_dirty``: rows come or go or move, and ``moved``
  says which; ``repaint``: a value in a row changed), so the screen is redrawn at its own frame
  rate, never per event, and a status change moves one row instead of sorting 10,000 again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine import SETTLED, DamagedRecord, NotFound, OutlastError, Priority, Status, StoreError

if TYPE_CHECKING:  # the Engine, its models (pydantic) and its resource sampler (psutil): after the first frame
    from engine import Checkpoint, Engine, Event, LogRecord, Operation, OperationSpec, ResourceSample

STOPPED_POLL = 10.0
"""Seconds between reads of paused and interrupted operations (another process may cancel them)."""
QUEUED_RECENT = 100
"""Queued operations read when the store's counts move: the newest (what was just submitted, by any process).
A long queue is read whole every STOPPED_POLL: 1,250 waiting records read every second were most of a poll."""
WHOLE_ANYWAY = 60.0
"""Seconds after which the whole queue and the stopped operations are read even though the store's counts
(per status, and of the queue per priority) have not moved: what changes no count (a priority swapped
for another, moves that cancel out) shows within this."""
RACED = 60.0
"""Seconds a read may be older than the record held (by their ``updated_at``) and be taken for a slower read that a
fresher one overtook, and dropped. Older by more, it was written by a clock that went back (NTP, a worker on a
machine behind): kept, or every later write of that clock looked older, and an operation that completed stayed
"queued" on the screen for the hour the clock had gone back. A read that took longer shows the state before
until the next poll."""
FULL_RELOAD = 300.0
"""Seconds between reads of every operation (records deleted or changed behind our back)."""
PAGE = 2000
"""Records read at a time in a full reload (one page in memory, the event loop free between pages)."""
HISTORY = 300
"""Resource samples kept for the sparklines."""
LOG_TAIL = 500
"""Lines of the selected operation's log shown when it is selected."""
LOG_POLL_MAX = 2000
"""Lines of a log read at a poll at most: its newest, as many as the logs pane holds (the ones before would
be dropped by the pane as it wrote them). A command printing 50,000 lines a second had each poll read every
line since the last (4 MB at a time), a record of each written to the pane: keys took seconds to answer."""
TOTAL_AGAIN = 5.0
"""Seconds between two reads of a running operation whose total changed again (``OperationsModel._new_totals``)."""
CHECKPOINTS_SHARE = 0.1
"""The part of the dashboard's time the selected operation's checkpoints may take to read at its polls: each read
hashes every kept payload and its chain of item keys (five checkpoints of a 36 MB state took a second), so after
a read of ``CHECKPOINTS_COSTLY`` seconds or more the next waits ten times as long, the record unchanged."""
CHECKPOINTS_COSTLY = 0.2
"""Seconds a read of the selected operation's checkpoints takes before the next waits (a quicker one: at every
poll, as ever)."""
ALL_LOGS_OPS = 20
"""In the logs pane's all-operations mode: the running operations and this many last updated."""
ALL_LOGS_TAIL = 50
"""Lines of each operation's log shown when the all-operations mode starts."""

Sampler = Callable[[dict[str, list[int]]], "ResourceSample"]
FirstLook = Callable[[list[str], int], list[dict[str, Any]] | None]
"""``first_look(statuses, limit)``: stored records (JSON objects, newest first) read without an engine, as
``outlast ls`` reads them (``engine.store.quick.quick_list`` over the local store); None when only the
engine can answer. What the first frame shows while the engine starts behind it."""
FIRST_RUNNING = 1000
FIRST_QUEUED = 200
"""Records of the first look: every running one (up to this many) and the newest queued ones, what the
status sort puts on the first screen."""


@dataclass
class Side:
    """What the side panes show of the selected operation, read in one go."""

    op_id: str
    checkpoints: list[Checkpoint]
    logs: list[LogRecord] | None
    """New log lines (None: the log was not read)."""
    log_offset: int
    """Where the log was read up to: the next read starts there."""


class OperationsModel:
    """Every operation record the dashboard shows, and what changed since the screen last looked."""

    def __init__(self, engine: Engine | None = None) -> None:
        """``engine`` None: given later (``engine``), before anything is read through it; the first look
        needs none."""
        self._engine = engine
        self.ops: dict[str, Operation] = {}
        self.active: set[str] = set()
        """Queued or running: the running and the newest queued polled every second, the rest every STOPPED_POLL.
        Kept as records come, change and go (as ``_counts``), never rebuilt: a pass over 100,000 queued
        ones each second kept a core busy."""
        self.running: set[str] = set()
        """The running ones among them."""
        self._depth: dict[Priority, int] = dict.fromkeys(Priority, 0)
        """Queued operations held per priority."""
        self._queued: dict[str, Priority] = {}
        """The queued ones among them, with their priority (compared with the store's queue)."""
        self.refetch: set[str] = set()
        """Named by an event or an action: read again by id at the next frame."""
        self.unread: set[str] = set()
        """Named to be read again while the store failed: read at the next poll that reaches it."""
        self.checkpointed: set[str] = set()
        """Operations with a checkpoint saved since the screen last looked."""
        self.structure_dirty = False
        self._counts: dict[Status, int] = dict.fromkeys(Status, 0)
        self.moved: set[str] = set()
        """The operations whose rows came, went or may have moved since the table last looked."""
        self.repaint = False
        self.store_ok = True
        self.loading: int | None = None
        """While a full reload reads its pages: how many operations the store holds (the status line says
        how many of them are read; with 100,000 it counted "20,000 operations" up for seconds)."""
        self.answered = 0.0
        """When the store last answered a read of the model's (monotonic): a read made of many (the full
        reload's pages: 50 of them with 100,000 operations) is a store that answers, not one that waits."""
        self.store_slots: int | None = None
        """The store-wide slot count (``outlast slots``), read with the whole queue (None: not set)."""
        self.errors: deque[str] = deque(maxlen=20)
        """One line per store failure that began (not one per failed poll), for the screen to show."""
        self.history: deque[ResourceSample] = deque(maxlen=HISTORY)
        self.last_full = time.monotonic()
        self.last_stopped = 0.0
        self._counts_queued: dict[Status, int] | None = None
        """The store's counts per status when the newest queued were last read."""
        self._counts_whole: tuple[dict[Status, int], dict[Priority, int]] | None = None
        """The store's counts, and the queue's per priority, when the whole queue was last read."""
        self._last_whole = 0.0
        self._counts_ended: dict[Status, int] | None = None
        self._short_before = False
        """The last poll found the store counting fewer of a stopped or ended status than held."""
        """The store's counts when operations that ended unseen were last looked for."""
        self._total_read: dict[str, float] = {}
        """When each of this engine's running operations was last read for a new total (``_new_totals``)."""
        self._counts_running: dict[Status, int] | None = None
        """The store's counts per status when the running operations were last read."""
        self._last_running = 0.0
        self.started = False
        """The engine is started: the store can be read (the App sets it)."""
        self.full: Operation | None = None
        """The selected operation's whole record (``ops`` holds slim ones): params, result."""
        self._checkpoints: tuple[str, object, float, list[Checkpoint]] | None = None
        """The selected operation's checkpoints as last read: its id, what its record was then, when the next
        read is due (``CHECKPOINTS_SHARE``), the checkpoints."""
        self.looked: set[str] = set()
        """Records held from the first look (no engine): the engine's read of each replaces it, even unchanged."""

    @property
    def engine(self) -> Engine:
        """The engine the store is read through (the App builds it after the first frame)."""
        if self._engine is None:
            raise RuntimeError("the dashboard's engine is not built yet")
        return self._engine

    @engine.setter
    def engine(self, engine: Engine) -> None:
        self._engine = engine

    # ---- records -----------------------------------------------------------------------------

    def keep(self, op: Operation) -> None:
        """Keep a record (unless an older read than the one held), without what the table never shows."""
        old = self.ops.get(op.id)
        if self.looked and op.id in self.looked:
            self.looked.discard(op.id)  # what the engine reads (derived fields too) replaces the first look
        elif old is not None and (
            0 < old.updated_at - op.updated_at < RACED
            or (
                op.updated_at == old.updated_at
                and op.status is old.status
                and op.priority is old.priority
                and op.total_items == old.total_items  # a running one's, read live: its timeout moved with it
            )
        ):
            return  # an older read, or the one held (polled again): nothing to copy, nothing to show
        op = slim(op)
        if old is None or old.status is not op.status or old.priority is not op.priority or old.name != op.name:
            self.structure_dirty = True
            self.moved.add(op.id)
        if old is not None:
            self._forget(old)
        self._hold(op)
        self.repaint = True

    def on_event(self, event: Event) -> None:
        """Called by the engine's bus, in the loop: only remember what changed."""
        from engine import CheckpointSaved, StatusChanged, TimeoutExtended  # loaded by then: a dict lookup

        if isinstance(event, StatusChanged | TimeoutExtended):
            self.refetch.add(event.operation_id)
        elif isinstance(event, CheckpointSaved):
            self.checkpointed.add(event.operation_id)

    def counts(self) -> dict[Status, int]:
        """Operations held per status (kept as records come, change and go: no pass over 10,000)."""
        return {status: n for status, n in self._counts.items() if n}

    def _hold(self, op: Operation) -> None:
        """Hold ``op`` and count it (in ``_counts``, ``active``, ``running``, ``_depth``)."""
        self.ops[op.id] = op
        self._counts[op.status] += 1
        if op.status is Status.QUEUED:
            self.active.add(op.id)
            self._depth[op.priority] += 1
            self._queued[op.id] = op.priority
        elif op.status is Status.RUNNING:
            self.active.add(op.id)
            self.running.add(op.id)

    def _forget(self, op: Operation) -> None:
        """Take a held record out of the counts (the caller replaces or drops it)."""
        self._counts[op.status] -= 1
        if op.status is Status.QUEUED:
            self._depth[op.priority] -= 1
            del self._queued[op.id]
        self.active.discard(op.id)
        self.running.discard(op.id)

    def _drop(self, op_id: str) -> bool:
        """Forget one record (it left the store); False if it was not held."""
        op = self.ops.pop(op_id, None)
        if op is None:
            return False
        self._forget(op)
        self.moved.add(op_id)
        self.structure_dirty = True
        return True

    def queue_depth(self) -> dict[Priority, int]:
        """Queued operations held per priority."""
        return dict(self._depth)

    def recent(self, n: int) -> list[Operation]:
        """The ``n`` operations updated last (newest first)."""
        return heapq.nlargest(n, self.ops.values(), key=lambda o: o.updated_at)

    # ---- reading the store -------------------------------------------------------------------

    def failed(self, e: BaseException) -> None:
        """The store failed: one line when it begins, the status line says so until it is back."""
        if self.store_ok:
            self.errors.append(f"store: {e}")
        self.store_ok = False

    async def reload_all(self) -> bool:
        """Every operation, in pages; records gone from the store are dropped. False if the store failed."""
        seen: set[str] = set()
        try:  # read first: what changes during the pages is seen by the next poll's whole read
            key = (await self.engine.store.counts(), await self.engine.store.queue_depth())
        except Exception as e:
            self.failed(e)
            return False
        began = time.monotonic()
        self.loading = sum(key[0].values())
        gc.disable()  # reading 10,000 records would set off full collections, ~80 ms each
        try:
            complete = await self._read_pages(seen)
        finally:
            self.loading = None
            _freeze_held()
            gc.enable()
            _give_back_memory()
        if not complete:
            return False
        self.store_ok = True
        self.last_full = time.monotonic()
        # The whole queue was read with everything: the next poll need not read it again (with 100,000
        # queued, that second read cost as long as this one).
        self._counts_whole, self._last_whole = key, began
        for gone in set(self.ops) - seen - self.active:
            self._drop(gone)
        return True

    async def _read_pages(self, seen: set[str]) -> bool:
        offset = 0
        while True:
            try:
                page = await self.engine.list_operations(limit=PAGE, offset=offset)
            except Exception as e:
                self.failed(e)
                return False
            self.answered = time.monotonic()
            for op in page:
                self.keep(op)
                seen.add(op.id)
            if len(page) < PAGE:
                return True
            offset += PAGE

    async def poll(self) -> None:
        """Running operations every second; the newest queued when the store's counts moved (a submit, a
        claim, a cancel by any process moves them); every STOPPED_POLL the slot count, and the whole queue
        with the stopped ones when the counts or the queue per priority moved since they were last read
        (else every WHOLE_ANYWAY); everything every FULL_RELOAD seconds. Counting is one indexed query:
        reading 2,500 unchanged records every 10 s and 100 every second was most of the dashboard's CPU
        with 100 operations running. What leaves the active set is read by id, so its final state is shown."""
        now = time.monotonic()
        if now - self.last_full > FULL_RELOAD:
            await self.reload_all()
            return
        store = self.engine.store
        key, whole, queued, read_queued, active = None, False, [], False, []
        try:
            counts = await store.counts()  # first: what changes after it is read is seen at the next poll
            if now - self.last_stopped > STOPPED_POLL:
                self.last_stopped = now
                self.store_slots = await store.get_slots()
                key = (counts, await store.queue_depth())
                whole = key != self._counts_whole or now - self._last_whole > WHOLE_ANYWAY
                if whole:
                    for op in await self.engine.list_operations(statuses=[Status.PAUSED, Status.INTERRUPTED]):
                        self.keep(op)
            read_running = not self._all_ours(counts) or now - self._last_running > STOPPED_POLL
            if not read_running:
                self._new_totals(now)
            if read_running or counts != self._counts_running:
                active = await self.engine.list_operations(statuses=[Status.RUNNING])
                self._counts_running, self._last_running, read_running = counts, now, True
            queue: dict[str, Priority] | None = None
            if whole or counts != self._counts_queued:
                queued = await self.engine.list_operations(statuses=[Status.QUEUED], limit=QUEUED_RECENT)
                self._counts_queued, read_queued = counts, True
                if whole and len(queued) >= QUEUED_RECENT:
                    # A long queue: every id and priority, not every record (100,000 records read every
                    # ten seconds while a worker drained them kept the dashboard at half a core and 1 GB).
                    queue = await self.engine.queued_priorities()
        except Exception as e:
            self.failed(e)
            return
        self.store_ok = True
        if whole:
            self._counts_whole, self._last_whole = key, now
        active += queued
        seen = {op.id for op in active}
        for op in active:
            self.keep(op)
        # Not seen: gone from the active set, unless it is a queued one while the queue is not known whole,
        # or a running one not read.
        left = (self.running - seen) if read_running else set()
        if queue is not None:
            # What left the queue, and what came or moved in it (another priority), read by id; the rest
            # is as held. Set operations on the two id -> priority maps, in C: no pass in Python.
            left |= self._queued.keys() - queue.keys() - seen
            moved = {op_id for op_id, _ in queue.items() - self._queued.items()} - seen
            if len(moved) > PAGE:  # a new batch of thousands: read as a listing, not one by one
                try:
                    for op in await self.engine.list_operations(statuses=[Status.QUEUED]):
                        self.keep(op)
                except Exception as e:
                    self.failed(e)
                    return
            else:
                left |= moved
        elif read_queued and len(queued) < QUEUED_RECENT:  # a short queue is read whole
            left |= self.active - self.running - seen
        await self.fetch(left | self.refetch | self.unread)
        await self._read_unseen_ended(counts)

    async def _read_unseen_ended(self, counts: dict[Status, int]) -> None:
        """Operations that ended before any poll saw them (another process submitted and finished them
        within a second: ``outlast run`` of a quick job, a worker draining a queue) were listed only at the
        next full reload, minutes later. When the store counts more of an ended status than the dashboard
        holds, the newest of that status are read (as many as are missing)."""
        # Fewer of a stopped or ended status than held, two polls in a row (a status in flight between
        # the count and the reads is seen by the next): removed by another process (`outlast rm`,
        # `clean`), or the store emptied (its state dir deleted). Their rows stayed until the full reload,
        # minutes later, and a key on one said "no operation". Read everything: what is gone is dropped.
        short = self._short(counts)
        if short:
            # ``counts`` was read before this poll's reads: what ended since (read by id, its event named it)
            # is held as ended and not counted in it. While work runs here, every poll was short so, and the
            # dashboard read every record again each other second (and froze what it held each time:
            # ``reload_all``): counted again, after the reads, only what left the store is short.
            try:
                short = self._short(await self.engine.store.counts())
            except Exception as e:
                self.failed(e)
                return
        if short and self._short_before:
            self._short_before = False
            await self.reload_all()
            return
        self._short_before = short
        if counts == self._counts_ended:
            return
        self._counts_ended = counts
        for status in (Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT):
            missing = counts.get(status, 0) - self._counts[status]
            if missing > 0:
                try:
                    for op in await self.engine.list_operations(statuses=[status], limit=min(missing, PAGE)):
                        if op.id not in self.ops:
                            self.keep(op)
                except Exception as e:
                    self.failed(e)
                    return

    def _short(self, counts: dict[Status, int]) -> bool:
        """The store counts fewer of a stopped or ended status than held."""
        return any(self._counts[s] > counts.get(s, 0) for s in SETTLED)

    def _all_ours(self, counts: dict[Status, int]) -> bool:
        """Every operation the store counts as running is one this engine runs, held as running: its
        progress is read live, its status changes, extensions and checkpoints come as events, so its
        stored record need not be read every second (100 of them were a third of a poll)."""
        ours = self.engine.running_ids
        if counts.get(Status.RUNNING, 0) != len(ours):
            return False
        ops = self.ops
        return all((held := ops.get(i)) is not None and held.status is Status.RUNNING for i in ours)

    def _new_totals(self, now: float) -> None:
        """This engine's running operations whose handler reported a total their held record does not have
        are read again: the timeout, the deadline and how it was computed moved with it (a start said "LEFT
        9m58s" and "timeout 10m00s = ... 0 items", where ``outlast show`` said an hour, until the running
        records were next read, up to STOPPED_POLL later). Its first total at once; a total changed again
        (a handler that estimates it anew at each item) at most every TOTAL_AGAIN seconds, not one read a
        second for each such operation."""
        ops, engine, last = self.ops, self.engine, self._total_read
        self._total_read = read = {}  # of those running now only
        for op_id in engine.running_ids:
            if op_id in last:
                read[op_id] = last[op_id]
            held, live = ops.get(op_id), engine.live(op_id)
            if held is None or live is None or live.total is None or live.total == held.total_items:
                continue
            if held.total_items is None or now - read.get(op_id, 0.0) >= TOTAL_AGAIN:
                read[op_id] = now
                self.refetch.add(op_id)

    async def fetch(self, ids: Iterable[str]) -> None:
        """Read these records again by id; one the store says it no longer has (NotFound) leaves the table.
        Any other failure (the store unreachable, frozen, timing out: a StoreError is an OutlastError too)
        keeps every record as last read, the status line saying the store is out, and what was not read
        is read at the next poll: a running operation's row left the table while Redis was stopped."""
        ids = list(ids)
        for i, op_id in enumerate(ids):
            self.refetch.discard(op_id)
            self.unread.discard(op_id)
            try:
                self.keep(await self.engine.get(op_id))
            except NotFound:
                self._drop(op_id)
            except Exception as e:
                self.failed(e)
                self.unread.update(ids[i:])  # not one wait per id on a store that does not answer
                return

    def first_look(self, look: FirstLook) -> bool:
        """Before the engine has started: the running and the newest queued records, read without it,
        so the first frame lists them (``looked.LookedOperation``: no pydantic before that frame); they are
        validated right after it (``validate_looked``) and the engine's reads replace them. False (nothing
        kept) when the look cannot answer or a record does not read as a stored operation."""
        from .looked import looked

        records: list[dict[str, Any]] = []
        try:
            for status, limit in ((Status.RUNNING, FIRST_RUNNING), (Status.QUEUED, FIRST_QUEUED)):
                got = look([status.value], limit)
                if got is None:
                    return False  # only the engine can answer (an orphan to mark, a newer schema...)
                records += got
            ops = [looked(r) for r in records]
        except (OSError, KeyError, ValueError, TypeError):
            return False
        for op in ops:
            self.keep(op)
            self.looked.add(op.id)
        return bool(ops)

    def validate_looked(self) -> bool:
        """The first look's records validated into the engine's Operations (after the first frame: this
        imports pydantic and the engine's models), replacing them as they are held; if one does not validate,
        every record of the first look is dropped (the engine's reads list them). False then."""
        from engine import Operation

        from .looked import LookedOperation

        held: list[Any] = [op for op in self.ops.values() if isinstance(op, LookedOperation)]
        try:
            valid = [slim(Operation.model_validate(op.record)) for op in held]
        except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
            for op in held:
                self.looked.discard(op.id)
                self._drop(op.id)
            return False
        for old, new in zip(held, valid, strict=True):
            if self.ops.get(new.id) is old:  # not replaced meanwhile
                self._forget(new)  # held under the same id, status and priority: what it counts is the same
                self._hold(new)
        self.repaint = True
        return True

    async def first_read(self) -> None:
        """What the first screen shows (status sort: active work on top), before every record is read."""
        try:  # the newest queued, as the first look reads them: every record is read right after
            for op in await self.engine.list_operations(statuses=[Status.RUNNING]):
                self.keep(op)
            for op in await self.engine.list_operations(statuses=[Status.QUEUED], limit=FIRST_QUEUED):
                self.keep(op)
        except Exception as e:
            self.failed(e)

    # ---- the selected operation and the logs ----------------------------------------------------

    def full_of(self, op_id: str | None) -> Operation | None:
        """The whole record of ``op_id`` when it has been read."""
        return self.full if self.full is not None and self.full.id == op_id else None

    async def side(self, op_id: str, logs: bool, log_offset: int | None) -> Side:
        """The selected operation's checkpoints and log, and its whole record when its status changed
        since it was read. ``log_offset`` None: the log's tail (it was just selected); else the lines
        after that offset."""
        full = self.full
        held = self.ops.get(op_id)
        if full is None or full.id != op_id or (held is not None and full.status is not held.status):
            self.full = await self.engine.get(op_id)
        checkpoints = await self._checkpoints_of(op_id, held)
        records: list[LogRecord] | None = None
        offset = log_offset or 0
        if logs:
            if log_offset is None:
                records, offset = await self.engine.logs(op_id, 0, LOG_TAIL)
            else:
                records, offset = await self.engine.logs(op_id, log_offset, LOG_POLL_MAX)
        return Side(op_id, checkpoints, records, offset)

    async def _checkpoints_of(self, op_id: str, held: Operation | None) -> list[Checkpoint]:
        """``op_id``'s checkpoints: read again unless the last read of them was costly, is recent for its cost
        and the record has not changed since (a status, an attempt, a write of it)."""
        seen = (held.status, held.attempt, held.updated_at) if held is not None else None
        last = self._checkpoints
        now = time.monotonic()
        if last is not None and last[0] == op_id and seen is not None and last[1] == seen and now < last[2]:
            return last[3]
        try:
            checkpoints = await self.engine.checkpoints(op_id)
        except NotFound:  # removed meanwhile (an unknown id is NotFound, not []): its row leaves at the next look
            checkpoints = []
        took = time.monotonic() - now
        due = now + took + took / CHECKPOINTS_SHARE if took >= CHECKPOINTS_COSTLY else now
        self._checkpoints = (op_id, seen, due, checkpoints)
        return checkpoints

    async def all_logs(self, offsets: dict[str, int]) -> list[LogRecord]:
        """Every operation's new log lines, merged by time: those that run now and the last ones updated,
        whichever process runs them. ``offsets`` (each operation's offset read up to) is advanced; an
        operation read for the first time gives its last ALL_LOGS_TAIL lines."""
        records: list[LogRecord] = []
        # The running ones, not every queued one (a queue of 100,000 was 100,000 reads a second).
        for op_id in dict.fromkeys([*self.running, *(o.id for o in self.recent(ALL_LOGS_OPS))]):
            try:
                if op_id in offsets:
                    got, offsets[op_id] = await self.engine.logs(op_id, offsets[op_id], LOG_POLL_MAX)
                else:
                    got, offsets[op_id] = await self.engine.logs(op_id, 0, ALL_LOGS_TAIL)
            except NotFound:  # removed meanwhile
                continue
            for rec in got:
                rec.operation_id = op_id
            records += got
        return sorted(records, key=lambda r: r.ts)

    async def sample(self, sampler: Sampler) -> ResourceSample:
        """A resource sample (this process and the work it runs), kept for the sparklines. Taken on a thread: the
        memory of each process the work runs is read from /proc's ``smaps_rollup``, 16 ms for one of 3 GB, and the
        loop answers keys."""
        sample = await asyncio.to_thread(sampler, self.engine.child_pids())
        self.history.append(sample)
        return sample

    # ---- acting on operations ---------------------------------------------------------------------

    async def act(self, action: str, op_id: str, **kw: object) -> Operation:
        """``cancel``, ``pause``, ``resume`` (``checkpoint=SEQ``) or ``set_priority`` (``priority=P``)
        through the engine; the record it returns is kept, and read again at the next frame either way.
        A refusal raises (Conflict, NotFound): the caller says it."""
        try:
            op: Operation = await getattr(self.engine, action)(op_id, **kw)
        finally:
            self.refetch.add(op_id)
        self.keep(op)
        return op

    async def remove(self, op_id: str, status: Status | None = None) -> None:
        """Delete a settled operation through the engine (a refusal raises: Conflict, NotFound); it
        leaves the table at the next frame. ``status``: only while it is still as the question named it (one
        resumed and paused elsewhere meanwhile is resumable work the person did not agree to remove)."""
        await self.engine.remove(op_id, statuses=None if status is None else frozenset({status}))
        self.refetch.discard(op_id)
        self._drop(op_id)

    def reprioritise(self, op: Operation, up: bool) -> Priority:
        """The next priority up or down, shown at once: a second key press builds on this one."""
        new = op.priority.raised() if up else op.priority.lowered()
        self.keep(op.model_copy(update={"priority": new}))
        return new

    async def submit(self, spec: OperationSpec) -> Operation:
        op = await self.engine.submit(spec)
        self.keep(op)
        return op


def is_refusal(e: BaseException) -> bool:
    """An engine refusal (the operation is gone, or not in a status that allows it, or its record damaged): one
    warning line, not a store failure (a damaged record made the status line say "store unreachable")."""
    return isinstance(e, OutlastError) and (not isinstance(e, StoreError) or isinstance(e, DamagedRecord))


def _freeze_held() -> None:
    """Freeze what is held (``gc.freeze``) after collecting what is not. A million long-lived objects:
    frozen, the collector no longer scans them (nor the imports), so a full collection in the steady state
    costs ~10 ms instead of ~80 (the slowest key presses). But a frozen object is never collected: frozen as
    they were, the cyclic garbage of the reload's pages (made with the collector off) and what was alive then
    and died since (a finished task, the lines a pane let go) were kept for good, more at each reload.
    So what earlier freezes kept is unfrozen and collected first: one full collection per reload."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _give_back_memory() -> None:
    """Hand the heap's free memory back to the system after a full reload (glibc's ``malloc_trim``; nothing
    elsewhere): the records read and dropped, and the tables rebuilt as pages came, left it freed but held,
    100,000 operations kept the dashboard at 770 MB where 460 were in use."""
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        if sys.platform.startswith("linux"):
            import ctypes

            with contextlib.suppress(OSError, AttributeError):
                _TRIM = ctypes.CDLL(None).malloc_trim
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None
"""glibc's ``malloc_trim`` once looked up (False: none here)."""


def slim(op: Operation) -> Operation:
    """The record without params, result and most of the profile, its set of the fields given (and its
    progress's and worker's) one shared by every record held: 10,000 of them held in memory cost a quarter as
    much. The detail pane reads the full record of the selected operation."""
    if op.params or op.result is not None or len(op.profile) > 1 or op.profile_overrides or op.tags:
        threshold = op.profile.get("failure_threshold")
        op = op.model_copy()
        op.params, op.result, op.profile_overrides, op.tags = {}, None, {}, {}
        op.profile = {} if threshold is None else {"failure_threshold": threshold}
    _share_fields_set(op)
    _share_fields_set(op.progress)
    if op.worker is not None:  # who ran it: 0.7 KB more of every record that ran
        _share_fields_set(op.worker)
    return op


_ALL_GIVEN: dict[type, set[str]] = {}
"""Per model, the set of every field's name: what a record read from the store has given."""


def _share_fields_set(model: Any) -> None:
    """Where ``model`` was given every field (a record read from the store), its own set of their names
    (2.3 KB of the 5.5 KB a record held; its progress's 0.7 KB) replaced by one shared set: equal, so
    nothing reads otherwise; nothing held is assigned a field that is not in it. The first look's records
    (``looked``: no pydantic) have none."""
    given = getattr(model, "model_fields_set", None)
    if given is None:
        return
    every = _ALL_GIVEN.get(type(model))
    if every is None:
        every = _ALL_GIVEN[type(model)] = set(type(model).model_fields)
    if given == every:
        object.__setattr__(model, "__pydantic_fields_set__", every)
