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
from engine.outage import LogBuffer, StoreHealth


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
    buf = LogBuffer(store, StoreHealth(60.0, lambda: False), EventBus())  # type: ignore[arg-type]
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
