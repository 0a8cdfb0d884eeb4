"""The engine's log buffer: a flush of one operation returns only after its records are in the store.

An attempt flushes its own records and settles right after. On Redis a log write that reaches the
store after the settle is refused with the attempt's lease, so a record that a concurrent flush-all
had taken, and was still writing, could be lost: the likely way a resume's "resuming from checkpoint"
line went missing once in a loaded CI run (test_redis_store's pause and resume test).
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.events import EventBus
from engine.models import LogRecord
from engine.outage import (
    LOG_BATCH,
    LOG_BUFFER_MAX,
    RECORD_COST,
    ROOM_LOW,
    SHORT_TAIL_BYTES,
    LogBuffer,
    StoreHealth,
    record_bytes,
)
from engine.text import clean


class SlowStore:
    """Just ``append_logs``: the first call waits until the test lets it go."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.release = asyncio.Event()
        self.calls = 0

    async def append_logs(self, op_id: str, records: list[LogRecord]) -> None:
        self.calls += 1
        if self.calls == 1:
            await self.release.wait()
        self.written += [r.message for r in records]


def record(message: str) -> LogRecord:
    return LogRecord(ts=1.0, level="info", message=message)


async def test_a_flush_waits_for_the_records_a_concurrent_flush_is_writing() -> None:
    store = SlowStore()
    buf = LogBuffer(store, StoreHealth(60.0, lambda: False), EventBus(), 2**30)  # type: ignore[arg-type]
    buf.append("op1", record("resuming from checkpoint 3"))
    everything = asyncio.create_task(buf.flush())  # the engine's clock: takes the record, writes slowly
    await asyncio.sleep(0)
    assert store.calls == 1 and store.written == []
    buf.append("op1", record("completed"))
    own: asyncio.Task[Any] = asyncio.create_task(buf.flush("op1"))  # the attempt, right before it settles
    await asyncio.sleep(0.05)
    assert not own.done(), "returned while an older record of the operation was still being written"
    store.release.set()
    await asyncio.wait_for(asyncio.gather(everything, own), 5)
    assert store.written == ["resuming from checkpoint 3", "completed"]  # both, in order


class Store:
    """Just ``append_logs``, recording each batch's size."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.messages: list[str] = []

    async def append_logs(self, op_id: str, records: list[LogRecord]) -> None:
        await asyncio.sleep(0)
        self.batches.append(len(records))
        self.messages += [r.message for r in records]


async def test_a_chatty_operation_is_written_in_batches_without_waiting_for_the_clock() -> None:
    """A command printing tens of thousands of lines a second held them all until the clock's next flush
    (170 MB): from LOG_BATCH records of one operation on, a flush of it starts by itself. Nothing is lost,
    duplicated or reordered, and a store that fails starts no such flush (the clock's retries do)."""
    store = Store()
    health = StoreHealth(60.0, lambda: True)
    buf = LogBuffer(store, health, EventBus(), 2**30)  # type: ignore[arg-type]
    n = 3 * LOG_BATCH + 7
    for i in range(n):
        buf.append("op1", record(str(i)))
        if i % 1000 == 0:
            await asyncio.sleep(0)  # the event loop turns now and then, as it does while a command runs
    assert store.batches and max(store.batches) < 2 * LOG_BATCH, store.batches
    await buf.flush()
    assert store.messages == [str(i) for i in range(n)]
    health.failed(OSError(28, "No space left on device"))
    for i in range(LOG_BATCH + 1):
        buf.append("op2", record(str(i)))
    await asyncio.sleep(0.01)
    assert sum(store.batches) == n, "a flush started while the store fails"


async def test_past_the_limit_the_tail_kept_is_bounded_in_characters_too() -> None:
    """A line without an end comes as pieces of a megabyte: the last 1,000 of them were 1 GB of tail (a
    200 MB line wrote 191 MB of log past a 64 MB limit). The tail keeps at most the limit's characters
    (1 MB when the limit is larger), and the end of a record longer than that."""
    store = Store()
    buf = LogBuffer(store, StoreHealth(60.0, lambda: False), EventBus(), 4096)  # type: ignore[arg-type]
    for i in range(40):
        buf.append("op1", record(f"{i:03d}" + "x" * 997))
    buf.append("op1", record("y" * 10_000 + "end"))
    buf.end("op1")
    await buf.flush()
    kept = sum(len(m) for m in store.messages if m[:1] in "0y")  # the records, not the two lines about them
    assert kept <= 4096 + 4096, kept  # what fit under the limit, and the tail
    said = [m for m in store.messages if "came past the log limit" in m]
    assert len(said) == 1 and said[0].startswith("38 log lines (45.9K)"), said
    assert store.messages[-1] == "y" * 4093 + "end"  # the end of the last record, within the tail's budget


class SmallDisk:
    """A store's logs on a disk of ``size`` bytes: ``log_room`` is what is free, less ``reserve``; a write that
    does not fit fails as a full disk does. Each write takes a while, as the store's thread does under load."""

    def __init__(self, size: int, reserve: int) -> None:
        self.size = size
        self.reserve = reserve
        self.used = 0
        self.messages: list[str] = []
        self.full = 0

    def log_room(self) -> int:
        return self.size - self.used - self.reserve

    async def append_logs(self, op_id: str, records: list[LogRecord]) -> None:
        await asyncio.sleep(0.02)
        cost = sum(len(r.model_dump_json(exclude={"operation_id"}).encode()) + 1 for r in records)  # as written
        if self.used + cost > self.size:
            self.full += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        self.used += cost
        self.messages += [r.message for r in records]


@pytest.mark.parametrize(
    "line",
    ["x" * 200, "\x1b[31m\x01\x02" * 30 + "\ufffd" * 20],
    ids=["text", "binary"],
)
async def test_the_records_a_flush_is_still_writing_count_against_the_room_on_the_disk(line: str) -> None:
    """A command printing long lines fast on a small disk: an early batch (LOG_BATCH lines, 1.3 MB) was still
    being written when the clock's flush looked at the disk, which did not show it yet. The budget was that
    much too high, and the disk filled before the cut: the log stopped, without its warning or its tail (a
    loaded soak run). Binary output counted as characters filled it too: a control character is six bytes
    written (``\u001b``). Now the lines are cut while the disk keeps its reserve, and the log says so."""
    disk = SmallDisk(size=5 << 20, reserve=1 << 20)
    health = StoreHealth(60.0, lambda: True)
    buf = LogBuffer(disk, health, EventBus(), 64 << 20)  # type: ignore[arg-type]
    clock: list[asyncio.Task[None]] = []
    for i in range(35_000):
        buf.append("op1", record(f"line {i} {line}"))
        if i % 500 == 0:
            await asyncio.sleep(0)  # the loop turns: an early flush starts, or goes on writing
        if i % 2_000 == 1_000:
            clock.append(asyncio.create_task(buf.flush()))  # the engine's clock, while a batch is in flight
    buf.end("op1")
    await asyncio.gather(*clock)
    await buf.flush()
    assert disk.full == 0, "the disk filled before the lines were cut"
    assert disk.used <= disk.size - disk.reserve + 2 * SHORT_TAIL_BYTES  # the kept tail goes in the reserve
    assert any("the state dir's file system is nearly full" in m for m in disk.messages)
    assert any("came past the point where the store's disk was nearly full" in m for m in disk.messages)
    assert disk.messages[-1].startswith("line 34999 ")


class CountedDisk(Store):
    """``Store`` with a disk of ``room`` bytes free, counting the looks at it."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room
        self.looks = 0

    def log_room(self) -> int:
        self.looks += 1
        return self.room


@pytest.mark.parametrize(("room", "every"), [(1 << 40, False), (ROOM_LOW - 1, True)], ids=["roomy", "nearly-full"])
async def test_the_disk_is_looked_at_before_every_write_only_while_its_room_is_low(room: int, every: bool) -> None:
    """Each operation settled flushes its log, and each flush looked at the disk: a system call on the event
    loop's thread per operation, which let go of the GIL and waited for the store's thread to give it back (about
    5% of a trivial operation's CPU). With room far from spent, once a ``ROOM_LOOK_EVERY``;
    nearly spent, before every write, as before."""
    disk = CountedDisk(room)
    buf = LogBuffer(disk, StoreHealth(60.0, lambda: True), EventBus(), 64 << 20)  # type: ignore[arg-type]
    for i in range(50):
        buf.append(f"op{i}", record("settled"))
        await buf.flush(f"op{i}")
    assert len(disk.messages) == 50
    assert disk.looks == 50 if every else disk.looks < 50, disk.looks


class DownStore(Store):
    """``Store`` that fails every write as a disk with an I/O error does until ``up``."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False

    async def append_logs(self, op_id: str, records: list[LogRecord]) -> None:
        if not self.up:
            raise OSError(errno.EIO, "Input/output error")
        await super().append_logs(op_id, records)


async def test_the_lines_dropped_while_the_store_fails_are_said_where_they_were() -> None:
    """Through an outage the newest LOG_BUFFER_MAX records are kept for the next write; the older ones were
    dropped without a word, and the log came back with a silent gap (a command printing 50,000 lines a second
    through a few seconds of failing disk). A line where they were says how many."""
    store = DownStore()
    buf = LogBuffer(store, StoreHealth(60.0, lambda: True), EventBus(), 2**30)  # type: ignore[arg-type]
    buf.append("op1", record("before"))
    n = 3 * LOG_BUFFER_MAX
    for i in range(n):
        buf.append("op1", record(str(i)))
        if i % LOG_BUFFER_MAX == 0:
            await buf.flush()  # the engine's clock, while the store fails
    await buf.flush()
    store.up = True
    await buf.flush()
    said = [m for m in store.messages if "log lines were not written here" in m]
    assert said == [
        f"{n + 1 - LOG_BUFFER_MAX:,} log lines were not written here: the store could not be written"
        f" meanwhile, and only the newest {LOG_BUFFER_MAX:,} were kept"
    ], store.messages[:3]
    assert store.messages == [said[0], *(str(i) for i in range(n - LOG_BUFFER_MAX, n))]


@given(st.text(max_size=60), st.sampled_from(["info", "warning"]))
def test_a_records_bytes_are_counted_as_its_line_in_the_log_file_takes_them(message: str, level: str) -> None:
    """``log_limit`` and the disk's room count what a record takes in the file (``record_bytes``): never less
    than its line there (the limit held as bytes of file), and not much more (a line the limit would take)."""
    rec = LogRecord(ts=1796679575.7194297, level=level, message=clean(message))  # type: ignore[arg-type]
    line = len(rec.model_dump_json(exclude={"operation_id"}).encode()) + 1
    assert line <= record_bytes(rec) <= line + RECORD_COST
