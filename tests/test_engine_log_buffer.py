"""The engine's log buffer: a flush of one operation returns only after its records are in the store.

An attempt flushes its own records and settles right after. On Redis a log write that reaches the
store after the settle is refused with the attempt's lease, so a record that a concurrent flush-all
had taken, and was still writing, could be lost: the likely way a resume's "resuming from checkpoint"
line went missing once in a loaded CI run (test_redis_store's pause and resume test).
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine.events import EventBus
from engine.models import LogRecord
from engine.outage import LOG_BATCH, LogBuffer, StoreHealth


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
