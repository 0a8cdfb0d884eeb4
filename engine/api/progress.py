"""The progress hub: one place that turns engine events and store polls into WebSocket messages.

Operations this server's engine runs are seen at once through its events; operations run by
any other process sharing the store (``outlast worker``, ``outlast run``) are seen by reading
the store every ``poll`` seconds. One hub serves every WebSocket, so many clients cost one poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..autobot import seed_progress
from ..engine import Engine
from ..models import (
    ACTIVE,
    SETTLED,
    CheckpointSaved,
    Event,
    ItemFailed,
    LogEmitted,
    NotFound,
    Operation,
    ProgressReported,
    Status,
    StatusChanged,
    TimeoutExtended,
)
from .schemas import FinalMessage, ProgressOut, ProgressUpdate, StatusMessage

log = logging.getLogger("outlast.api")
Message = dict[str, Any]
_SEEN_MAX = 10_000
"""Settled operations remembered (the least recently seen are forgotten first); active ones are all kept:
what says that one settled, or was removed, is found by comparing them with the store."""
_QUEUED_RECENT = 1000
"""Queued operations read whole each poll. A longer queue is read by id (an index read) and only what joined
it, or came back to it, is read whole: its other records do not change while they wait."""
_READ_BY_ID = 100
"""At most this many records are read one by one in a poll; more (a batch submitted) as one listing."""
_SETTLED_PAGE = 200
"""Settled operations read at once by a poll's catch-up read (what started and ended between two polls),
after a first page of 20 (most polls find nothing new: one small read)."""
_SETTLED_MAX = 10_000
"""The most a catch-up read takes in one poll; more is said in the log, not dropped in silence."""
_CLOCK_SLACK = 5.0
"""Seconds the catch-up read looks back before the last poll: ``created_at`` comes from another process's
clock, and a record created just before the last poll may have been written just after it read."""
_OVERLAP = 20
"""Rows a catch-up page reads again before where the previous page ended, to find its last row again
(rows that left the listing since moved it back); as many again each time it is not found."""


def listing_key(op: Operation) -> tuple[float, str]:
    """Where ``op`` sorts in a listing (``Engine.list_operations``: newest first, this key descending).
    It never changes for a record, so it marks a place in the listing that rows coming and going do not move."""
    return (op.created_at, op.id)


@dataclass(eq=False)
class Subscriber:
    """One WebSocket: all operations (``op_id`` None) or one. Slow readers lose their oldest messages, and
    ``get`` says so where they were (a ``gap`` message): a burst of 20,000 log lines reached a client as its
    first 2 and last 2,000, nothing saying 17,998 were missing."""

    op_id: str | None
    queue: asyncio.Queue[Message] = field(default_factory=lambda: asyncio.Queue(2000))
    dropped: int = 0
    """Messages dropped since the last one taken: said first by the next ``get``."""

    def put(self, msg: Message) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
                self.dropped += 1
        self.queue.put_nowait(msg)

    async def get(self) -> Message:
        """The next message to send; a ``gap`` first when older ones were dropped meanwhile."""
        if self.dropped:
            n, self.dropped = self.dropped, 0
            where = f"GET /api/operations/{self.op_id}/logs pages the log; " if self.op_id else ""
            return {
                "type": "gap",
                "operation_id": self.op_id,
                "dropped": n,
                "detail": f"{n} messages were dropped: this client read them more slowly than they came; {where}"
                "GET /api/operations/ID has each operation as it is now",
                "timestamp": time.time(),
            }
        return await self.queue.get()

    def wants(self, op_id: str, kind: str) -> bool:
        if self.op_id is None:
            return kind not in ("log", "gone")  # logs only on one operation's stream
        return self.op_id == op_id


def progress_key(op: Operation) -> tuple[Any, ...]:
    """What the hub compares: the status first, the attempt last (a new attempt's progress may go down)."""
    p = op.progress
    return (op.status, p.done, p.total, p.failed, p.step, p.message, op.attempt)


def gone_message(op_id: str) -> Message:
    """For who follows one operation removed from the store: it will not settle any more (close 4404)."""
    return {
        "type": "error",
        "operation_id": op_id,
        "detail": f"operation {op_id} was removed",
        "timestamp": time.time(),
    }


def progress_message(op: Operation) -> Message:
    return ProgressUpdate(
        operation_id=op.id,
        status=op.status,
        progress=ProgressOut.of(op.progress, op.id, op.status),
        timestamp=time.time(),
        data=seed_progress(op.id, op.progress, op.status.value),
    ).model_dump(mode="json")


def final_message(op: Operation) -> Message:
    return FinalMessage(
        operation_id=op.id,
        status=op.status,
        result=op.result,
        error=op.error,
        message=op.status_message,
        resumable=op.status.resumable,
        progress=ProgressOut.of(op.progress, op.id, op.status),
        timestamp=time.time(),
    ).model_dump(mode="json")


def event_message(ev: Event) -> Message:
    """Lifecycle events other than status changes, as plain JSON messages."""
    name = {
        CheckpointSaved: "checkpoint_saved",
        TimeoutExtended: "timeout_extended",
        ItemFailed: "item_failed",
        LogEmitted: "log",
    }[type(ev)]
    body = ev.model_dump(mode="json")
    body["timestamp"] = body.pop("ts")
    if isinstance(ev, LogEmitted):
        body.update(body.pop("record"))
        body.pop("ts", None)
    return {"type": name, **body}


class ProgressHub:
    """Fans messages out to subscribers; knows the last status and progress it announced per operation."""

    def __init__(self, engine: Engine, poll: float = 0.5) -> None:
        self.engine = engine
        self.poll = poll
        self._subs: set[Subscriber] = set()
        self._seen: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._seen_cap = _SEEN_MAX
        self._events: asyncio.Queue[Event] = asyncio.Queue(10_000)
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._since = time.time()
        self._mark = self._since
        """When the last poll began its reads: the catch-up read goes back to it."""

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._unsubscribe = self.engine.subscribe(self._on_event)
        self._task = asyncio.create_task(self._run(), name="outlast-api-progress")

    async def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def add(self, sub: Subscriber) -> None:
        if not self._subs:
            self._seen.clear()
            self._since = self._mark = time.time()
        self._subs.add(sub)

    def remove(self, sub: Subscriber) -> None:
        self._subs.discard(sub)

    # ---- input -------------------------------------------------------------------------------------

    def _on_event(self, ev: Event) -> None:
        if not self._subs or isinstance(ev, ProgressReported):
            return  # progress is sampled by the poll (live for this engine's operations)
        if isinstance(ev, LogEmitted) and not any(s.op_id == ev.operation_id for s in self._subs):
            return
        if self._events.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._events.get_nowait()
        self._events.put_nowait(ev)

    async def _run(self) -> None:
        next_poll = 0.0
        loop = asyncio.get_running_loop()
        while True:
            timeout = max(0.0, next_poll - loop.time())
            try:
                ev = await asyncio.wait_for(self._events.get(), timeout)
            except TimeoutError:
                ev = None
            try:
                if ev is not None:
                    await self._handle_event(ev)
                elif self._subs:
                    await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("progress hub: update failed")
            if ev is None:
                next_poll = loop.time() + self.poll

    # ---- output ------------------------------------------------------------------------------------

    def _send(self, op_id: str, kind: str, msg: Message) -> None:
        for sub in list(self._subs):
            if sub.wants(op_id, kind):
                sub.put(msg)

    async def _handle_event(self, ev: Event) -> None:
        if isinstance(ev, StatusChanged):
            try:
                op = await self.engine.get(ev.operation_id)
            except NotFound:
                self._gone(ev.operation_id)
                return
            self._observe(op, previous=ev.previous, message=ev.message, status=ev.status)
        else:  # a log line only to who follows its operation: the all-operations stream has none
            self._send(ev.operation_id, "log" if isinstance(ev, LogEmitted) else "event", event_message(ev))

    def _gone(self, op_id: str) -> None:
        """``op_id`` is no longer in the store (removed): settled for its subscribers. Who follows it alone
        is told and its socket closed (it waited for a `final` that never came). The all-operations
        streams are told too when they last heard it active (settled and removed between two polls: its
        `final` can no longer be read, and without a word they would wait for it); then it is forgotten."""
        old = self._seen.pop(op_id, None)
        msg = gone_message(op_id)
        followed = old is not None and old[0] in ACTIVE
        for sub in list(self._subs):
            if sub.op_id == op_id or (sub.op_id is None and followed):
                sub.put(msg)

    def _remember(self, op_id: str, key: tuple[Any, ...]) -> None:
        """Hold ``key`` as what was last said about ``op_id``. Past ``_SEEN_MAX`` entries, the settled ones
        seen longest ago are forgotten, down to nine tenths, in one pass (so a pass comes once per thousand
        new entries at most); active ones are never forgotten, however many (a long queue)."""
        self._seen[op_id] = key
        self._seen.move_to_end(op_id)
        if len(self._seen) <= self._seen_cap:
            return
        excess = len(self._seen) - _SEEN_MAX * 9 // 10
        drop: list[str] = []
        for seen_id, seen_key in self._seen.items():
            if len(drop) >= excess:
                break
            if seen_key[0] not in ACTIVE:
                drop.append(seen_id)
        for seen_id in drop:
            del self._seen[seen_id]
        self._seen_cap = max(_SEEN_MAX, len(self._seen) + _SEEN_MAX // 10)

    def _observe(
        self,
        op: Operation,
        previous: Status | None = None,
        message: str | None = None,
        status: Status | None = None,
        fresh: bool = False,
    ) -> None:
        """Announce what changed about ``op`` since it was last seen."""
        old = self._seen.get(op.id)
        key = progress_key(op)
        self._remember(op.id, key)
        if old is None and fresh and op.status in SETTLED:
            return  # settled before anyone was watching: nothing to announce
        if old is not None and old[-1] != key[-1] and old[0] == op.status:
            # Another attempt since the last look (a takeover after a crash: interrupted, queued, running
            # again, all between two polls): its progress starts again from a checkpoint, lower than what
            # was said. Say the attempt changed before that progress, so that it does not just go back.
            msg = StatusMessage(
                operation_id=op.id,
                status=op.status,
                previous=old[0],
                message=f"attempt {op.attempt} started",
                timestamp=time.time(),
            )
            self._send(op.id, "status", msg.model_dump(mode="json"))
        settling = op.status in SETTLED and (old is None or old[0] != op.status)
        if settling and (old is None or old[1:] != key[1:]):
            # Its last progress (40 of 40, 100%) before it is said settled: a client that draws its bar from
            # progress_update alone (the seed's frontend) stopped at the last sample (90%, 97.5%).
            self._send(op.id, "progress", progress_message(op))
        if old is None or old[0] != op.status:
            msg = StatusMessage(
                operation_id=op.id,
                status=op.status,
                previous=old[0] if old is not None else previous,
                message=message if status is op.status else op.status_message,
                timestamp=time.time(),
            )
            self._send(op.id, "status", msg.model_dump(mode="json"))
        if op.status in SETTLED:
            if old is None or old[0] != op.status or old[-1] != key[-1]:
                self._send(op.id, "final", final_message(op))
        elif op.status is Status.RUNNING and old != key:
            self._send(op.id, "progress", progress_message(op))

    async def _settled_since(self, since: float) -> list[Operation]:
        """Settled operations created at ``since`` or later (and a few before), newest first, a page at a
        time: a fixed window of 20 sent `final` for 20 of a burst of 60 that started and ended between two
        polls.

        The pages follow a key, not a count (keyset paging over the offset the listing takes): each page
        starts a little before where the last one ended and keeps what sorts after its last row. Read by
        offset alone, a row that left the listing meanwhile (removed, resumed) moved every later one back,
        and the one at the page boundary was never read. One that joins the listing above the key is not
        read here, as with any keyset: it was active at this poll's first read, and its end is seen by the
        next poll."""
        found: list[Operation] = []
        last: tuple[float, str] | None = None
        offset = overlap = 0
        while len(found) < _SETTLED_MAX:
            size = _SETTLED_PAGE if found else 20
            start = max(0, offset - overlap)
            want = offset - start + size
            page = await self.engine.list_operations(statuses=list(SETTLED), limit=want, offset=start)
            if last is not None and start > 0 and (not page or listing_key(page[0]) < last):
                # More than `overlap` rows before the last one read left (an empty page: the listing is now
                # shorter than where it starts): look further back.
                overlap *= 2
                continue
            found += [op for op in page if last is None or listing_key(op) < last]
            if found:
                last = listing_key(found[-1])
            if len(page) < want or not page or page[-1].created_at < since:
                return found
            offset, overlap = start + len(page), _OVERLAP
        log.warning(
            "progress hub: more than %d operations settled since the last poll; the older ones get no final",
            _SETTLED_MAX,
        )
        return found

    async def _active(self) -> tuple[dict[str, Operation], set[str]]:
        """The active operations to compare with what was said, and the id of every active one.

        Every running one is read, and the queued ones if fewer than ``_QUEUED_RECENT``; a longer queue is
        read by id, and only its records not yet seen queued are read whole. The 1,000 newest active ones
        were read before: behind a queue of 1,000 newer ones, an operation was not followed at all (no
        progress, no `final`)."""
        ops = {op.id: op for op in await self.engine.list_operations(statuses=[Status.RUNNING])}
        queued = await self.engine.list_operations(statuses=[Status.QUEUED], limit=_QUEUED_RECENT)
        ops.update((op.id, op) for op in queued)  # read after: a takeover meanwhile is queued again
        ids = set(ops)
        if len(queued) < _QUEUED_RECENT:
            return ops, ids
        every = await self.engine.queued_priorities()
        ids.update(every)
        unread = [i for i in every if i not in ops and ((k := self._seen.get(i)) is None or k[0] is not Status.QUEUED)]
        if len(unread) > _READ_BY_ID:  # a batch of thousands submitted: one listing, not one read each
            wanted = set(unread)
            for op in await self.engine.list_operations(statuses=[Status.QUEUED]):
                if op.id in wanted:
                    ops[op.id] = op
        else:
            for op_id in unread:
                with contextlib.suppress(NotFound):  # left the queue and removed: not active, not said
                    ops[op_id] = await self.engine.get(op_id)
        return ops, ids

    async def _poll(self) -> None:
        seen: dict[str, Operation] = {}
        mark, self._mark = self._mark, time.time()
        if any(s.op_id is None for s in self._subs):
            seen, active = await self._active()
            for op in await self._settled_since(mark - _CLOCK_SLACK):  # started and ended between two polls
                seen.setdefault(op.id, op)
            gone = [i for i, k in self._seen.items() if k[0] in ACTIVE and i not in active and i not in seen]
        else:
            gone = []
        wanted = {s.op_id for s in self._subs if s.op_id is not None} | set(gone)
        removed: list[str] = []
        for op_id in wanted - set(seen):
            try:
                seen[op_id] = await self.engine.get(op_id)
            except NotFound:
                removed.append(op_id)
        # What was published while the store was read goes out first: an attempt's last log lines are
        # published before its final status is written, so a poll that read it settled sent `final` ahead
        # of them, and the one-operation socket closed on it with those lines unsent.
        # A status change among them was read again as it was handled: what the poll read is older.
        newer: set[str] = set()
        while not self._events.empty():
            ev = self._events.get_nowait()
            await self._handle_event(ev)
            if isinstance(ev, StatusChanged):
                newer.add(ev.operation_id)
        for op_id in removed:
            if op_id not in newer:
                self._gone(op_id)
        for op in seen.values():
            if op.id in newer:
                continue
            fresh = op.id not in self._seen and (op.finished_at or op.updated_at) < self._since
            self._observe(op, fresh=fresh)
