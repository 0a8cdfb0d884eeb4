"""Following operations until they settle: in this process (events) or in another one (polling the store).

A *view* turns what is seen into output: the rich panel on a terminal, one plain line per
progress report in a pipe, JSON lines for machines, or nothing (``--quiet``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..engine import Engine, StoreUnwritable, store_failure
from ..errors import NotFound, StoreFailed, StoreRefused
from ..models import (
    ACTIVE,
    SETTLED,
    Conflict,
    Event,
    LogEmitted,
    LogRecord,
    Operation,
    Status,
    TimeoutExtended,
)
from ..outage import record_bytes
from . import format as fmt
from .common import Mode, say_unmarked

if TYPE_CHECKING:
    from ..config import Settings

T = TypeVar("T")

PIPE_EVERY = 1.0
"""Seconds between progress lines in a pipe (when the operation moved), whatever its type."""
LOCAL_TICK = 0.15
REMOTE_POLL = 0.5
LOCAL_READ_WAIT = 0.5
"""Seconds the view of an operation this engine runs waits for its record before it shows what the engine
knows (the record before, with live progress): a store that did not answer held every line, the one
saying a Ctrl-C was heard included, for up to 40 s."""


class _Reader:
    """``engine.get(op_id)`` in a task of its own, never cancelled: ``read(wait)`` is its record once it
    has one within ``wait`` seconds, else None (the read goes on, and a later call takes its result)."""

    def __init__(self, engine: Engine, op_id: str) -> None:
        self._engine = engine
        self._op_id = op_id
        self._task: asyncio.Future[Operation] | None = None

    async def read(self, wait: float | None) -> Operation | None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._engine.get(self._op_id))
        await asyncio.wait({self._task}, timeout=wait)
        if not self._task.done():
            return None
        task, self._task = self._task, None
        return task.result()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task.add_done_callback(lambda t: t.cancelled() or t.exception())  # never "not retrieved"


ORPHANS_EVERY = 2.0
"""Seconds between looks for orphans while following work that runs elsewhere (as every engine's
supervisor looks): the process running it may die, and a follower that never looked showed it running,
frozen, for ever."""


async def rest_of_log(engine: Engine, op_id: str, offset: int, emit: Callable[[list[LogRecord]], None]) -> int:
    """Read and ``emit`` an operation's log from ``offset`` to its end; the offset there. A read takes a page
    (``READ_MAX``): a follower that stopped at the read after the settled status printed a page, and a log
    longer than that (a command's, 64 MB) lost the rest, its last lines included, exit 0."""
    while True:
        records, after = await engine.store.read_logs(op_id, offset)
        if after == offset:
            return offset
        emit(records)
        offset = after


def _each(fn: Callable[[LogRecord], None], records: list[LogRecord]) -> None:
    for rec in records:
        fn(rec)


class OrphanLook:
    """``await look()`` in a follower's loop: every ``ORPHANS_EVERY`` seconds, ``engine.recover()`` marks
    operations whose process is gone interrupted (a Redis store queues them again). ``reading``: the
    follower only reads (``watch``, ``logs -f``): a store that refuses that write (a full disk, a read-only
    Redis) is said once, and followed as stored until it takes writes; it ended the watch (exit 8)."""

    def __init__(self, engine: Engine, reading: bool = False) -> None:
        self.engine = engine
        self.reading = reading
        self.said = False
        self.due = time.monotonic() + ORPHANS_EVERY

    async def __call__(self) -> None:
        now = time.monotonic()
        if now >= self.due:
            self.due = now + ORPHANS_EVERY
            try:
                await self.engine.recover()
            except (StoreRefused, StoreFailed) as e:
                if not self.reading:
                    raise
                if not self.said:
                    self.said = True
                    say_unmarked(e)


NO_WORKER_NOTE = 3.0
"""Seconds an operation followed elsewhere waits queued and due, while nothing at all runs on its store,
before the follower says that no worker seems to be running (an idle worker looks at the queue every
0.5 s, so it would have claimed it): over SSH, a watch of work nobody will start waited in silence."""


class NoWorkerLook:
    """``await look(op)`` in a follower's loop: the line to say, once, when ``op`` has stayed queued and due
    for ``NO_WORKER_NOTE`` seconds with no operation running on the store (so no worker is busy, and none
    idle claimed it), else None. The store keeps no list of idle workers: this is what it can tell."""

    def __init__(self, engine: Engine, prefix: str) -> None:
        self.engine = engine
        self.prefix = prefix
        self.since: float | None = None
        self.said = False

    async def __call__(self, op: Operation) -> str | None:
        if self.said or op.status is not Status.QUEUED or not op.retry_due(time.time()):
            self.since = None
            return None
        if (await self.engine.store.counts()).get(Status.RUNNING, 0):
            self.since = None  # a worker is busy: the operation waits for a slot
            return None
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if now - self.since < NO_WORKER_NOTE:
            return None
        self.said = True
        return (
            f"{op.id} is queued and no worker seems to be running on this store (nothing claimed it in"
            f" {NO_WORKER_NOTE:g} s); start one with: {self.prefix} worker (still waiting)"
        )


class StoppedLook:
    """``look(op)`` in a follower's loop: the line to say, once a stop, when the process on this host that runs
    ``op`` is stopped (Ctrl-Z, SIGSTOP): the watch went silent, nothing saying why, while nothing ran."""

    def __init__(self) -> None:
        self.said = False
        self.due = 0.0

    def __call__(self, op: Operation) -> str | None:
        now = time.monotonic()
        if op.status is not Status.RUNNING or op.worker is None:
            self.said = False
            return None
        if now < self.due:
            return None
        self.due = now + 1.0
        w = op.worker
        note = fmt.stopped_note(w.host, w.pid, w.boot, w.start)
        if note is None or self.said:
            self.said = note is not None
            return None
        self.said = True
        return f"{op.id} is running in {w}, which is {note}"


class WatchStopped(Exception):
    """The user stopped watching (Ctrl-C) an operation that runs elsewhere."""


class WatchedGone(NotFound):
    """A watched operation left the store (``outlast clean``, ``rm``) before its end was seen: ``op_id``,
    and the status it was last seen in (None: never read)."""

    def __init__(self, op_id: str, last: Status | None = None) -> None:
        super().__init__(f"{op_id} is gone from the store")
        self.op_id = op_id
        self.last = last


SIGNAL_GRACE = 1.0
"""Seconds a watcher's loop has, after a stop signal, to end by itself (it notices between two reads)."""


async def unless_signalled(engine: Engine, work: Coroutine[Any, Any, T]) -> T:
    """``work``, or WatchStopped once a stop signal came and ``work`` has not ended by itself within
    ``SIGNAL_GRACE``: a read waiting on a store that does not answer (a frozen Redis retries each call for
    30 s) held a watcher's Ctrl-C up to 40 s, and a watcher has nothing of its own to stop or save."""
    task = asyncio.ensure_future(work)
    signalled = asyncio.ensure_future(engine.signalled.wait())
    try:
        await asyncio.wait({task, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=SIGNAL_GRACE)
        if task.done():
            return task.result()
        task.cancel()  # its views and readers close on the way out (the terminal as it was)
        await asyncio.wait({task}, timeout=SIGNAL_GRACE)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # never "not retrieved"
        fmt.echo("outlast: stopped watching without waiting for the store, which has not answered", err=True)
        raise WatchStopped()
    finally:
        signalled.cancel()


class View(Protocol):
    stopping: bool

    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...
    def update(self, op: Operation) -> None: ...
    def log(self, rec: LogRecord) -> None: ...
    def note(self, text: str) -> None: ...


def _moved(op: Operation) -> tuple[int, float]:
    """Where a plain view's line would show the operation: items done and the part of the next one (a backup's
    large file copied in chunks, its count still 0 of 1: no line was printed for all of its copy)."""
    return op.progress.done, op.progress.fraction


class PlainView:
    """One line per progress report or status change; log lines as they come. For pipes and log files."""

    def __init__(
        self, json_lines: bool = False, quiet: bool = False, logs: bool = True, log_limit: int | None = None
    ) -> None:
        """``logs=False``: status and progress lines only (the operation's own log, capped, has the rest).
        ``log_limit``: log lines are printed up to about these bytes (the operation's own log's limit)."""
        self.json_lines = json_lines
        self.quiet = quiet
        self.logs = logs
        self._log_left = log_limit
        """Bytes of log lines still printed (None: no limit)."""
        self.stopping = False
        self._status: Status | None = None
        self._last_line = 0.0
        self._last_done: tuple[int, float] | None = None

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, op: Operation) -> None:
        """A snapshot: printed on a status change, and while it runs every PIPE_EVERY seconds when it
        moved: the same cadence for every type (an index whose profile reports every 30 s printed a
        start and an end line in a pipe, the demo a line a second)."""
        if op.status != self._status:
            self._status = op.status
            self.emit(op)
            return
        if op.status is not Status.RUNNING:
            return
        if time.monotonic() - self._last_line >= PIPE_EVERY and _moved(op) != self._last_done:
            self.emit(op)

    def emit(self, op: Operation) -> None:
        self._last_line = time.monotonic()
        self._last_done = _moved(op)
        if self.quiet:
            return
        if self.json_lines:
            fmt.echo(fmt.dumps({"event": "operation", "operation": fmt.op_json(op)}))
        else:
            fmt.echo(fmt.progress_line(op))

    def log(self, rec: LogRecord) -> None:
        if self.quiet or not self.logs:
            return
        if self._log_left is not None:
            # As the stored log is capped: `outlast run ... >> job.log` printed every line of a handler that
            # logs without end (305 MB beside a stored log of 66 MB), the lines not stored among them.
            # Bytes as the log file counts them, not characters (NUL bytes print as four each).
            cost = record_bytes(rec)
            self._log_left -= cost
            if self._log_left < 0:
                if self._log_left + cost >= 0:
                    self.note(
                        "its log reached the log limit (log_limit): its lines from here on are not printed; the"
                        " operation's log keeps the last 1,000 (outlast logs)"
                    )
                return
        if self.json_lines:
            fmt.echo(fmt.dumps({"event": "log", "record": rec.model_dump(mode="json")}))
        else:
            fmt.echo(fmt.log_line(rec))

    def note(self, text: str) -> None:
        if not self.quiet and not self.json_lines:
            fmt.echo(f"{fmt.clock(time.time())} {text}")


def make_view(mode: Mode, hint: str, log_limit: int | None = None) -> View:
    if mode == "live":
        from .live import LiveView

        return LiveView(hint)
    return PlainView(quiet=mode in ("quiet", "json"), log_limit=log_limit)


async def follow(engine: Engine, op_id: str, view: View, local: bool, prefix: str = "outlast") -> Operation:
    """Show one operation until it settles and return its final record.

    ``local``: this engine runs it (events, and a retry waiting in the queue is run here
    again). Otherwise the store is polled; Ctrl-C (the engine draining) raises WatchStopped.
    StoreUnwritable when this engine gave up writing the operation's final status. ``prefix``: ``outlast``
    with the global options given, for the hints printed.
    """
    last: dict[str, Operation] = {}

    def on_event(ev: Event) -> None:
        if ev.operation_id != op_id:
            return
        if isinstance(ev, LogEmitted):
            view.log(ev.record)
        elif isinstance(ev, TimeoutExtended) and isinstance(view, PlainView) and not view.logs:
            view.note(ev.reason)  # else the log's line says it: printed twice, a second apart

    unsubscribe = engine.subscribe(on_event) if local else None
    offset = 0
    pausing_there = False  # a signal asked the worker that claimed it to pause it: followed until it has
    orphans = OrphanLook(engine, reading=not local)
    idle = NoWorkerLook(engine, prefix)
    halted = StoppedLook()
    reader = _Reader(engine, op_id)
    undo = functools.partial(view.__exit__, None, None, None)  # an exit that does not unwind: the terminal back
    try:
        with view:
            engine.before_exit_now.append(undo)
            while True:
                if local and op_id in engine.abandoned:
                    raise StoreUnwritable(engine.store_failed or "the store cannot be written")
                known = local and op_id in last
                try:
                    got = await reader.read(LOCAL_READ_WAIT if known else None)
                except NotFound:
                    raise WatchedGone(op_id, last[op_id].status if op_id in last else None) from None
                except Exception as e:
                    if not (known and store_failure(e)):
                        raise
                    got = None  # the engine says so once
                if got is None:  # the view goes on from what this engine knows
                    live = engine.live(op_id)
                    op = last[op_id] if live is None else last[op_id].model_copy(update={"progress": live})
                else:
                    op = got
                last[op_id] = op
                if (
                    local
                    and op.status is Status.RUNNING
                    and op.worker == engine.worker
                    and op_id not in engine.running_ids
                    and engine.health.failing
                ):
                    # Its attempt here has ended without a word to the store: its lease ran out while the store
                    # refused every write (a Redis turned read-only replica by a failover). The record says
                    # running by this process, and only a write the store refuses can change that: the run
                    # showed it running, for ever.
                    raise StoreUnwritable(engine.store_failed or "the store cannot be written")
                if local and op.status is Status.RUNNING and op.worker is not None and op.worker != engine.worker:
                    # A worker claimed the retry when it was due: follow it there (a signal stops watching).
                    local = False
                    if unsubscribe:
                        unsubscribe()
                        unsubscribe = None
                if engine.draining and not view.stopping and local and isinstance(view, PlainView):
                    view.note(f"{op_id} pausing at its next safe point with a checkpoint (signal again to force)")
                view.stopping = engine.draining and local  # watching never pauses what runs elsewhere
                if not local:
                    await orphans()
                    records, offset = await engine.store.read_logs(op_id, offset)
                    for rec in records:
                        view.log(rec)
                view.update(op)
                if not local and ((line := await idle(op)) is not None or (line := halted(op)) is not None):
                    if not isinstance(view, PlainView):
                        view.note(line)  # above the live panel, which owns the terminal
                    elif not view.quiet:
                        fmt.echo(line, err=True)  # stdout stays the operation's lines (or JSON)
                if op.status in SETTLED:
                    if not local:
                        await rest_of_log(engine, op_id, offset, lambda records: _each(view.log, records))
                    return op
                if not local and engine.draining and not pausing_there:
                    goes_on = "stays queued" if op.status is Status.QUEUED else "goes on running"  # not "running"
                    view.note(f"stopped watching; {op_id} {goes_on} ({prefix} watch {op_id} follows it again)")
                    raise WatchStopped()
                fmt.check_reader()
                if local and op.status is Status.QUEUED and engine.draining:
                    # A signal while a retry waits out its backoff (or for a slot): paused, as it would be
                    # running, so that it is left resumable (`outlast resume`), not queued for anyone; the
                    # next look sees it paused and ends the follow.
                    paused = await pause_queued(engine, op_id)
                    pausing_there = paused is not None and paused.status is Status.RUNNING
                elif local and op.status is Status.QUEUED and op.retry_due(time.time()):
                    # A retry after a transient error waits in the queue: run it here again when due.
                    try:
                        await engine.run_now(op_id)
                    except Conflict:
                        # Still queued: every store slot is in use (outlast slots); claimed when one frees.
                        if (await engine.get(op_id)).status is not Status.QUEUED:
                            local = False  # a worker took it: follow it there
                            if unsubscribe:
                                unsubscribe()
                                unsubscribe = None
                await asyncio.sleep(LOCAL_TICK if local else REMOTE_POLL)
    finally:
        reader.close()
        if unsubscribe:
            unsubscribe()
        with contextlib.suppress(ValueError):
            engine.before_exit_now.remove(undo)


async def pause_queued(engine: Engine, op_id: str) -> Operation | None:
    """Pause the queued ``op_id`` that this process was to run, on a signal: ``run`` promises that a signal
    pauses its operation, and a queued one that nobody paused waited for ever (a draining engine claims
    nothing). Its record after: paused; or running when a worker claimed it a moment before (that worker
    is asked to pause it, as ``outlast pause`` would); None when it settled meanwhile (cancelled, ...). Its status
    line says why, as a running one's does ("paused: Ctrl-C (SIGINT)"): "paused by user" was no one's doing."""
    try:
        return await engine.pause(op_id, reason=engine.shutdown_reason)
    except Conflict:
        return None


IDLE_NOTE = "no active operations: waiting for some (Ctrl-C stops watching)"
"""What a plain or JSON ``watch`` of all says on stderr while nothing is active."""


async def store_made(settings: Settings, mode: Mode) -> int | None:
    """``watch`` of all where no local store is (``common.no_store``; a fresh machine, before its first run):
    wait for one to be made, making none (a read makes no state dir), saying once that it waits, as
    ``watch_many`` says of an empty store. None once there is one; the exit code when a signal stopped it."""
    from ..engine import stop_signals
    from ..exitcodes import code_for_stopped_watch
    from .common import no_store

    if mode != "quiet":
        fmt.echo(IDLE_NOTE, err=True)
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[int] = loop.create_future()
    signals = stop_signals()

    def stop(sig: int) -> None:
        if not stopped.done():
            stopped.set_result(sig)

    for sig in signals:
        loop.add_signal_handler(sig, stop, sig)
    try:
        while no_store(settings) is not None:
            fmt.check_reader()
            done, _ = await asyncio.wait({stopped}, timeout=0.5)
            if done:
                return code_for_stopped_watch(stopped.result())
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return None


async def watch_many(engine: Engine, op_ids: list[str] | None, mode: Mode, idle_said: bool = False) -> list[Operation]:
    """Show several operations (all active ones when ``op_ids`` is None) until they settle or Ctrl-C.

    With ids, returns their final records; without, runs until Ctrl-C (WatchStopped). ``idle_said``: that
    nothing is active was said already (``store_made``).
    """
    seen: dict[str, Operation] = {}
    plain = PlainView(json_lines=mode == "json", quiet=mode == "quiet")
    live = None
    if mode == "live":
        from .live import LiveTable

        live = LiveTable()
    orphans = OrphanLook(engine, reading=True)
    with live if live is not None else contextlib.nullcontext():
        while True:
            await orphans()
            if op_ids is None:
                ops = await engine.list(statuses=sorted(ACTIVE))
                if ops:
                    idle_said = False
                elif not idle_said and not seen and live is None and mode != "quiet":
                    # Plain lines print nothing until something runs: a blank watch looked hung (stderr,
                    # once each time nothing is active; stdout stays the lines).
                    fmt.echo(IDLE_NOTE, err=True)
                    idle_said = True
                for op in ops:
                    seen[op.id] = op
                # Operations that settled since the last look are shown once more, settled.
                gone = [i for i, o in seen.items() if o.status in ACTIVE and i not in {x.id for x in ops}]
                for i in gone:
                    with contextlib.suppress(Exception):
                        seen[i] = await engine.get(i)
            else:
                for i in op_ids:
                    try:
                        seen[i] = await engine.get(i)
                    except NotFound:
                        if i in seen and seen[i].status in SETTLED:
                            continue  # removed once settled (a clean while the others ran): its end was seen
                        raise WatchedGone(i, seen[i].status if i in seen else None) from None
            current = sorted(seen.values(), key=lambda o: o.id)
            if live is not None:
                live.update(current if op_ids is not None else [o for o in current if o.status in ACTIVE])
            else:
                for op in current:
                    _plain_update(plain, op)
            if op_ids is not None and all(seen[i].status in SETTLED for i in op_ids):
                return [seen[i] for i in op_ids]
            if op_ids is None:
                seen = {i: o for i, o in seen.items() if o.status in ACTIVE}
            if engine.draining:
                raise WatchStopped()
            fmt.check_reader()
            await asyncio.sleep(REMOTE_POLL)


_plain_state: dict[str, tuple[Status, float, tuple[int, float]]] = {}


def _plain_update(view: PlainView, op: Operation) -> None:
    """Per-operation rate limiting for many operations through one plain view."""
    status, at, done = _plain_state.get(op.id, (None, 0.0, (-1, 0.0)))
    interval = float(op.profile.get("progress_report_interval", 5.0))
    now = time.monotonic()
    if op.status != status or (op.status is Status.RUNNING and now - at >= interval and _moved(op) != done):
        _plain_state[op.id] = (op.status, now, _moved(op))
        view.emit(op)
