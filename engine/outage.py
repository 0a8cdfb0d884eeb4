"""Writing through a store outage: which write channels fail and since when (said once, not per write),
and the operation logs, buffered in memory until the store takes them.

Running work never sees a store error: the engine keeps going in memory and retries, and stops its
attempts as interrupted only when an outage outlasts ``store_outage_limit``. The store's lock held by a stopped
process (``StoreHeld``) is no outage: that process's pause, which no clock counts.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import sqlite3
import time
from collections import defaultdict, deque
from collections.abc import Callable

from .errors import StoreFailed, StoreHeld, StoreLost, StoreMoved
from .events import EventBus
from .humanize import size as human_size
from .models import Conflict, InvalidInput, LogEmitted, LogRecord, StaleAttempt, StoreError
from .shortage import ran_short
from .store import Store

log = logging.getLogger("outlast.engine")

STORE_STUCK = 3.0
"""Seconds a store call has waited after which a way out that cannot wait for it counts the store as not
answering (exit 8, not the code of the signal that asked to leave)."""

LOG_BUFFER_MAX = 10_000
"""Log records kept per operation while the store cannot take them (the newest)."""

LOG_BATCH = 5_000
"""Log records of one operation after which a flush starts without waiting for the clock's: a command
printing 50,000 lines a second held 170 MB of records between two of its flushes."""


class StoreUnwritable(StoreError):
    """This engine gave up writing to its store: the attempts it ran stay ``running`` under its lock
    until the process exits, and the next engine to open the store finds them interrupted."""


def store_failure(e: BaseException) -> bool:
    """An error of the store itself (disk full, read-only, I/O, connection), not of the request."""
    if isinstance(e, (StaleAttempt, Conflict, InvalidInput, LookupError)):
        return False
    # MemoryError: no memory to read or write the record (SQLite's SQLITE_NOMEM, under ``ulimit -v``): retried as
    # any outage, then left interrupted. It escaped as "final status not written", a traceback, the operation
    # left running and the command's exit 70.
    return (
        isinstance(e, (OSError, sqlite3.Error, StoreError, MemoryError)) or type(e).__module__.split(".")[0] == "redis"
    )


def why(e: BaseException) -> str:
    """The store error in a few words: "No space left on device", "database or disk is full"."""
    if isinstance(e, StoreFailed):
        text = e.why
    else:
        text = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__
        if isinstance(e, MemoryError) and not str(e):  # a bare MemoryError said it in no words
            text = "out of memory"
    line = next((ln for ln in text.splitlines() if ln.strip()), type(e).__name__)
    if len(line) <= WHY_CHARS:
        return line
    # Cut at a word, and said to be cut: "... Redis may st" read as the whole of a garbled reason.
    window = line[: WHY_CHARS - 3]
    return (window.rsplit(" ", 1)[0].rstrip(" ,;:") or window) + "..."


WHY_CHARS = 240
"""The longest reason said: a Redis outcome-unknown error, with the address and the write it was, runs to 200."""


class StoreHealth:
    """Which store channels ("database", "logs") fail to write, since when, and why.

    The first failure of an outage is said in one line, the rest are not (nor a new outage within a
    minute of the last one ending: a store that flaps says so twice a minute at most)."""

    def __init__(self, outage_limit: float, busy: Callable[[], bool]) -> None:
        self.outage_limit = outage_limit
        self._busy = busy
        """Whether work is running (the first line says what happens to it)."""
        self._failing: dict[str, float] = {}
        self._began = 0.0
        self._said_down = False
        self._said_up = float("-inf")
        self.why = ""
        """Why the current (or last) outage began, in a few words."""
        self.lost = False
        """The current (or last) outage began with the store's file deleted (StoreLost): the running
        operations' records went with it, so a stopped one cannot be resumed."""
        self.moved_to: str | None = None
        """Where the store's file went when the outage is its state dir renamed (StoreMoved): the running
        operations are resumable there, not at the path this process was given."""
        self.held = False
        """The last failure was the store's write lock held by a stopped process of this host (StoreHeld): the
        outage clock does not run while so. Stopped as interrupted, healthy work that could write nothing
        meanwhile anyway (not even its stop) ended interrupted once that process went on."""

    @property
    def since(self) -> float | None:
        """When the longest-failing channel began failing (monotonic); None while every write works."""
        return min(self._failing.values()) if self._failing else None

    @property
    def failing(self) -> bool:
        return bool(self._failing)

    def over_limit(self, now: float) -> bool:
        """The outage has lasted ``store_outage_limit`` (not counting time the store was ``held``): running work
        stops as interrupted."""
        since = self.since
        return since is not None and not self.held and now - since >= self.outage_limit

    def failed(self, e: BaseException, channel: str = "database") -> None:
        """A write on ``channel`` failed with a store error."""
        held = isinstance(e, StoreHeld)
        if self.held and not held:  # the holder went on (or ended), and the store fails otherwise: counted from now
            for failing in self._failing:
                self._failing[failing] = time.monotonic()
        self.held = held
        if not self._failing:
            self._began = time.monotonic()
            self.why = why(e)
            self.lost = isinstance(e, StoreLost)
            self.moved_to = e.to if isinstance(e, StoreMoved) else None
            if not self._said_down and time.monotonic() - self._said_up >= 60.0:
                self._said_down = True
                if self._busy() and self.lost:
                    what = (
                        f"running work goes on in memory for {self.outage_limit:g}s in case it is put back, then"
                        " stops; its record went with it, so it cannot be resumed, only run again"
                    )
                elif self._busy() and held:
                    what = "running work waits for it in memory, and goes on when that process does (or ends)"
                elif self._busy():
                    what = (
                        "running work goes on in memory, and stops as interrupted (resumable) unless the store"
                        f" is back within {self.outage_limit:g}s"
                    )
                else:
                    what = "nothing is running; retrying"
                log.error("the store cannot be written (%s): %s", self.why, what)
        elif isinstance(e, StoreMoved) and self.moved_to is None:  # begun by a log's directory gone with it
            self.moved_to, self.why = e.to, why(e)
        elif isinstance(e, StoreLost) and not self.lost:
            # Begun by another failure (a log file's directory gone first under ``rm -rf``): what was said
            # ("resumable") is no longer so, and the last line of a run goes by ``lost``.
            self.lost = True
            self.why = why(e)
            if self._said_down and self._busy():
                log.error(
                    "%s: running work cannot be resumed now, only run again (its record went with the file)",
                    self.why,
                )
        self._failing.setdefault(channel, time.monotonic())

    def ok(self, channel: str = "database") -> None:
        """A write on ``channel`` succeeded: when no channel fails any more, the outage is over (one line)."""
        if channel == "database":
            self.held = False
        if self._failing.pop(channel, None) is not None and not self._failing and self._said_down:
            self._said_down = False
            self._said_up = time.monotonic()
            log.warning("the store can be written again after %.1fs: work goes on", self._said_up - self._began)

    def give_up(self, stopping: bool) -> bool:
        """Stop retrying a final status: the outage outlasted its limit, or the engine is ``stopping``."""
        return self.since is not None and (stopping or self.over_limit(time.monotonic()))


LOG_TAIL = 1_000
"""Records past an attempt's log limit still kept: the last ones, written when the attempt ends..."""

TAIL_BYTES = 1 << 20
"""...as many as fit in this many characters (or the limit, when smaller): a command's lines may each be
a megabyte long (a line without an end, cut in pieces)."""

SHORT_TAIL_BYTES = 64 << 10
"""...or this many, when the lines were cut because the store's disk was nearly full."""

RECORD_COST = 72
"""Bytes a log record costs beyond its message (its JSON: time, level, names; 68 for a warning), counted
toward the limit."""


class _Overflow:
    """An attempt's records past its log limit: counted, and the last ``LOG_TAIL`` kept, their messages within
    ``budget`` bytes of log file (the last characters of a record longer than that on its own). ``past``: what
    they came past ("the log limit (64MB, log_limit)"), for the line that says so when the attempt ends."""

    def __init__(self, budget: int, past: str, why: str = "") -> None:
        self.past = past
        self.why = why
        """Why nothing of them can be written (``LogBuffer._cannot_grow``)."""
        self.records = 0
        self.size = 0
        """Bytes of their messages in the log file (``record_bytes``, less ``RECORD_COST``)."""
        self.tail: deque[tuple[LogRecord, int]] = deque()
        """The last records, each with its bytes."""
        self.tail_size = 0
        self.budget = budget

    def keep(self, record: LogRecord) -> None:
        cost = record_bytes(record) - RECORD_COST  # the message's (and fields') bytes
        self.records += 1
        self.size += cost
        if self.budget <= 0:  # counted only: nothing of them can be written
            return
        if cost > self.budget:  # its last characters: a byte each in printable ASCII (2 escaped), else 6 at most
            m = record.message
            for chars in (self.budget, self.budget // 2) if m.isascii() and m.isprintable() else (self.budget // 6,):
                record = record.model_copy(update={"message": m[-chars:] if chars > 0 else ""})
                cost = record_bytes(record) - RECORD_COST
                if cost <= self.budget:
                    break
        self.tail.append((record, cost))
        self.tail_size += cost
        while len(self.tail) > LOG_TAIL or self.tail_size > self.budget:
            self.tail_size -= self.tail.popleft()[1]

    def records_kept(self) -> list[LogRecord]:
        """The tail's records, oldest first."""
        return [r for r, _ in self.tail]


_NO_GROWTH = "the size its log file could grow to"


def _not_written(op_id: str, lines: int, why: str) -> None:
    log.error(
        "operation %s: %s log lines were not written: its log file could not grow (%s: a file size limit, ulimit -f?)",
        op_id,
        f"{lines:,}",
        why,
    )


def record_bytes(record: LogRecord) -> int:
    """The bytes ``record`` takes in a log file, about (its time, level and names as ``RECORD_COST``), cheaply:
    a message of printable ASCII is its length and its escaped quotes and backslashes (``isascii`` is a flag,
    ``isprintable`` one pass in C); any other as JSON writes it (UTF-8, a control character as ``\u001b``), its
    fields as six bytes a character of their text. Counted as characters, ``log_limit`` was no bound on the
    file: a command printing NUL bytes (``head -c 200M /dev/zero``, six bytes a character) wrote a log of 400 MB
    under the limit of 64 MB, and binary on a small disk up to six times the room it was given."""
    m = record.message
    if m.isascii() and m.isprintable():
        n = len(m)
        if "\\" in m or '"' in m:
            n += m.count("\\") + m.count('"')
    else:
        n = len(json.dumps(m, ensure_ascii=False).encode("utf-8", "surrogatepass")) - 2
    if record.fields:
        n += 6 * len(repr(record.fields))
    return n + RECORD_COST


def _cost(records: list[LogRecord]) -> int:
    """At most the bytes ``records`` take in a log file (``record_bytes``)."""
    return sum(map(record_bytes, records))


def _lost_line(lost: int, ts: float) -> LogRecord:
    """The line that stands where ``lost`` records were dropped while the store could not be written."""
    return LogRecord(
        ts=ts,
        level="warning",
        message=f"{lost:,} log lines were not written here: the store could not be written meanwhile, and only the"
        f" newest {LOG_BUFFER_MAX:,} were kept",
    )


ROOM_LOOK_EVERY = 0.5
"""Seconds between looks at the free space of the logs' disk while the budget is far from spent."""

ROOM_LOW = 64 << 20
"""Bytes of the logs' budget under which the disk is looked at before every write: another process may fill
the disk between looks, and the store's reserve (1 MB to 64 MB, ``log_room``) is what must stay free."""


class LogBuffer:
    """Operation log records, kept in memory and written in batches on the engine's clock (and
    announced at once on the bus, when anyone listens).

    An attempt's records are written up to ``limit`` bytes; past it they are counted, and the last
    ``LOG_TAIL`` are written when the attempt ends (``end``), after a line saying how much was left out:
    a command that prints without end fills neither the disk nor Redis's memory. Item failures are
    listed by the store apart from the log, whatever the limit."""

    def __init__(self, store: Store, health: StoreHealth, bus: EventBus, limit: int) -> None:
        self._store = store
        self._health = health
        self._bus = bus
        self._limit = limit
        self._size: dict[str, int] = {}
        """Bytes of records written (or buffered) for each running attempt."""
        self._over: dict[str, _Overflow] = {}
        self._buf: dict[str, list[LogRecord]] = defaultdict(list)
        self._writing: dict[str, asyncio.Event] = {}
        """Operations whose records a flush is writing now: another flush of them waits for it."""
        self._early: dict[str, asyncio.Task[None]] = {}
        """Flushes started before the clock's because an operation's buffer reached LOG_BATCH."""
        self._room: Callable[[], int | None] | None = getattr(store, "log_room", None)
        """Bytes the logs may still take on the store's disk (a local store's), looked at before a write
        (``_look_due``)."""
        self._looked = float("-inf")
        """When the disk's room was last looked at (monotonic)."""
        self._budget: int | None = None
        """Bytes of records the logs may still take (the room at the last look, less the records accepted
        since and those buffered then); None: no limit known (a store with no disk, or not looked yet)."""
        self._short = False
        """Whether the store's disk has no room left for logs (``_budget`` spent): a running attempt's
        lines are counted from then on, as past its limit."""
        self._in_flight = 0
        """Bytes of records a flush has taken and is writing now: not in the buffer, nor yet in the room a
        look at the disk sees."""
        self._lost: dict[str, int] = {}
        """Records of each operation dropped while the store failed (beyond the newest ``LOG_BUFFER_MAX``),
        said by a line where they were at its next write: the log had a gap of 400,000 lines, silent."""

    def append(self, op_id: str, record: LogRecord) -> None:
        if self._over_limit(op_id, record):
            if self._bus.has_subscribers:  # those watching live still see every line
                record.operation_id = op_id
                self._bus.publish(LogEmitted(operation_id=op_id, record=record))
            return
        buf = self._buf[op_id]
        buf.append(record)
        if len(buf) >= LOG_BATCH and op_id not in self._early and not self._health.failing:
            try:
                task = asyncio.get_running_loop().create_task(self.flush(op_id))
            except RuntimeError:  # appended from outside the event loop: the clock's flush writes it
                pass
            else:
                self._early[op_id] = task
                task.add_done_callback(lambda _t: self._early.pop(op_id, None))
        if self._bus.has_subscribers:
            record.operation_id = op_id
            self._bus.publish(LogEmitted(operation_id=op_id, record=record))

    def _over_limit(self, op_id: str, record: LogRecord) -> bool:
        """Whether ``record`` is past the attempt's limit (then it is counted, and kept in the tail)."""
        over = self._over.get(op_id)
        if over is None:
            cost = record_bytes(record)  # bytes, not characters: the limit is the file's
            size = self._size.get(op_id, 0) + cost
            if self._budget is not None and not self._short:
                self._budget -= cost  # counted here, not looked at per line: free space is a syscall
                self._short = self._budget < 0
            if size <= self._limit and not self._short:
                self._size[op_id] = size
                return False
            if self._short:  # a small tail: the space kept is the store's, for its checkpoints and statuses
                over = _Overflow(min(self._limit, SHORT_TAIL_BYTES), "the point where the store's disk was nearly full")
                why = "the state dir's file system is nearly full (the space left is kept for the store's records)"
            else:
                over = _Overflow(min(self._limit, TAIL_BYTES), f"the log limit ({human_size(self._limit)}, log_limit)")
                why = f"this attempt's log reached its limit ({human_size(self._limit)}, log_limit)"
            self._over[op_id] = over
            self._buf[op_id].append(
                LogRecord(
                    ts=record.ts,
                    level="warning",
                    message=f"{why}: the lines from here on are counted, not written, but for the last"
                    f" {LOG_TAIL:,} (at most {human_size(over.budget)}), written when the attempt ends",
                )
            )
        over.keep(record)
        return True

    def _cannot_grow(self, op_id: str, recs: list[LogRecord], e: OSError) -> None:
        """``op_id``'s log file cannot grow (EFBIG: the process's file size limit, ``ulimit -f``): its lines from
        here on are counted, not written, and said on this process's error output, as the file cannot take the
        line that would say so. They were kept for a store that would come back ("the store cannot be written
        ... stops as interrupted"), which neither happened: 70% of a command's output was dropped, its last
        lines with it, and nothing said so."""
        over = self._over.get(op_id)
        pending = [*recs, *self._buf.pop(op_id, ())]  # those buffered meanwhile too: none can be written now
        if over is None or over.past != _NO_GROWTH:
            if op_id not in self._size and over is None:  # its attempt has ended: these were its last lines
                _not_written(op_id, len(pending), why(e))
                return
            log.error(
                "operation %s: its log file cannot grow (%s: a file size limit, ulimit -f?): its lines from here"
                " on are not written",
                op_id,
                why(e),
            )
            self._over[op_id] = over = _Overflow(0, _NO_GROWTH, why(e))
        for record in pending:
            over.keep(record)

    def end(self, op_id: str) -> None:
        """The attempt of ``op_id`` ends: what went past its limit is said, and its last lines buffered."""
        self._size.pop(op_id, None)
        over = self._over.pop(op_id, None)
        if over is None:
            return
        if over.past == _NO_GROWTH:  # no line of it can be written: said where it can be
            for record in self._buf.pop(op_id, ()):
                over.keep(record)
            _not_written(op_id, over.records, over.why)
            return
        buf = self._buf[op_id]
        buf.append(
            LogRecord(
                ts=over.tail[0][0].ts if over.tail else time.time(),
                level="warning",
                message=f"{over.records:,} log lines ({human_size(over.size)}) came past {over.past}: the last"
                f" {len(over.tail):,} follow, the rest were not written",
            )
        )
        buf.extend(over.records_kept())

    def _look_due(self) -> bool:
        """Whether the disk's room is to be looked at before this write: each time while the budget is near
        spent (``ROOM_LOW``) or unknown, else once every ``ROOM_LOOK_EVERY`` seconds; the records accepted
        between looks are taken from the budget as they come (``_over_limit``). A look is a system call on
        the event loop's thread, which lets go of the GIL and waits to get it back from the store's thread:
        one for every operation settled: trivial operations at concurrency 3 took about 5% more CPU with it."""
        if self._room is None:
            return False
        now = time.monotonic()
        if self._budget is None or self._budget < ROOM_LOW or now - self._looked >= ROOM_LOOK_EVERY:
            self._looked = now
            return True
        return False

    async def flush(self, op_id: str | None = None) -> None:
        """Write what is buffered (of one operation, or all); kept for the next flush while the store fails.

        Returns only once every record of the operation buffered before the call is written (or kept,
        while the store fails), those a concurrent flush took included: an attempt settles right after
        flushing its own, and on Redis a record that reaches the store after the settle is refused with
        the attempt's lease (the likely way a resume's "resuming from checkpoint" line went missing once
        in a loaded CI run)."""
        if self._look_due() and self._room is not None and (room := self._room()) is not None:
            # What a flush is still writing counts too: a command's early batch (LOG_BATCH long lines, 1.3 MB)
            # still being written when the clock's flush looked left the budget that much too high, and the
            # disk filled before the cut, its warning line with it (a loaded soak run).
            buffered = sum(_cost(recs) for recs in self._buf.values())
            self._budget = room - buffered - self._in_flight
            self._short = self._budget < 0
        for i in [op_id] if op_id else list(self._buf):
            while (busy := self._writing.get(i)) is not None:
                await busy.wait()  # its older records go first, in order
            recs = self._buf.pop(i, None)
            if not recs:
                continue
            self._writing[i] = done = asyncio.Event()
            cost = _cost(recs) if self._room is not None else 0
            self._in_flight += cost
            lost = self._lost.get(i, 0)
            try:
                await self._store.append_logs(i, [_lost_line(lost, recs[0].ts), *recs] if lost else recs)
                self._lost.pop(i, None)
                self._health.ok("logs")
            except Exception as e:
                if isinstance(e, OSError) and e.errno == errno.EFBIG:
                    self._cannot_grow(i, recs, e)
                    continue
                short = ran_short(e) is not None  # no thread or descriptor to write with: not the store's fault
                if not short and not store_failure(e):
                    log.error("%s: writing %d log records failed: %s", i, len(recs), e)
                    continue
                if not short:
                    self._health.failed(e, "logs")
                # Kept for the next flush (the newest, when the outage is long: the others counted, and said
                # where they were, at the next write).
                kept = self._buf[i]
                kept[:0] = recs
                if (dropped := len(kept) - LOG_BUFFER_MAX) > 0:
                    del kept[:dropped]
                    self._lost[i] = lost + dropped
            finally:
                self._in_flight -= cost
                del self._writing[i]
                done.set()
