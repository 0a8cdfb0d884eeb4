"""Fixtures for engine tests: settings with the test plugin, and an engine factory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, Event, Operation, Settings, Status, load_settings, open_store
from engine.models import WorkerInfo, new_id
from engine.store import Store


@pytest.fixture
def settings(state_dir: Path) -> Settings:
    return load_settings(state_dir=state_dir, plugins=["tests.ops_for_tests"], grace_period=2.0)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    async with Engine(store=open_store(settings.state_dir), settings=settings) as e:
        yield e


def make_engine(settings: Settings, **kw: Any) -> Engine:
    return Engine(store=open_store(settings.state_dir), settings=settings, **kw)


def collect(engine: Engine, kinds: tuple[type[Event], ...] = (Event,)) -> list[Event]:
    """Events of the given kinds, appended as they are published."""
    out: list[Event] = []
    engine.subscribe(lambda ev: out.append(ev) if isinstance(ev, kinds) else None)
    return out


async def until(pred: Callable[[], Any], timeout: float = 20.0, every: float = 0.02) -> Any:
    """Poll ``pred`` (sync or async) until truthy; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


async def paused_and_resumed(engine: Engine, op_id: str, done: int) -> Operation:
    """Pause ``op_id`` once it has ``done`` items done (asserting it ends paused), resume it, and wait for its
    final record."""
    await until(lambda: (live := engine.live(op_id)) is not None and live.done >= done)
    await engine.pause(op_id)
    assert (await engine.wait(op_id, timeout=20)).status is Status.PAUSED
    await engine.resume(op_id)
    return await engine.wait(op_id, timeout=20)


def queued_record(type_: str = "demo") -> Operation:
    """A queued operation's record, for a test that writes it to a store itself."""
    now = time.time()
    return Operation(id=new_id(), type=type_, status=Status.QUEUED, created_at=now, queued_at=now, updated_at=now)


async def retry_waiting(store: Store, old: bool, backoff_s: float) -> tuple[str, float]:
    """An operation that ran once and waits in the queue as a retry queued now (T, returned with its id;
    claims pass their own ``now``): ``not_before`` T + ``backoff_s``, ``backoff_from`` T as the engine writes
    them (``old``: not written, as by an older version). The retry-clock tests write it
    with this process's clock, and under a clock set off."""
    T = time.time()
    backoff = {} if old else {"backoff_from": T}
    op = Operation(id=new_id(), type="demo", created_at=T - 10, queued_at=T - 10, updated_at=T - 10)
    await store.create(op)
    claimed = await store.claim(WorkerInfo(host="test", pid=1), T - 5, 300.0, op_id=op.id)
    assert claimed is not None
    await store.transition(
        op.id,
        Status.QUEUED,
        epoch=claimed.epoch,
        expect=frozenset({Status.RUNNING}),
        not_before=T + backoff_s,
        queued_at=T,
        **backoff,
    )
    await store.release(op.id, claimed.epoch)
    return op.id, T
