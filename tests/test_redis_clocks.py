"""Workers whose clocks disagree, sharing one Redis store: the queues are scored in Redis's clock, so a
retry waits out its backoff whoever wrote it and whoever claims it, and aging does not favour the work of
a machine whose clock is behind. Scored in each writer's clock, one worker 10 minutes ahead of the others
(or behind) took every retry at once (due by its clock, or "the clock went back"), and the work queued by a
machine 10 minutes behind waited two priority levels less than the rest (aging 300 s).

Redis's own clock stepping back still lets a retry go at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest

from engine.models import Operation, Priority, Status, WorkerInfo, new_id
from engine.store.redis import RedisStore
from tests.fixtures_engine import retry_waiting
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis
W = WorkerInfo(host="test", pid=1)
BACKOFF = 1.0
AHEAD = 600.0
_real_time = time.time


@contextmanager
def clock(offset: float) -> Iterator[None]:
    """This process's wall clock ``offset`` seconds off, as a worker on another machine has it."""
    saved = time.time
    time.time = lambda: _real_time() + offset  # type: ignore[assignment]
    try:
        yield
    finally:
        time.time = saved  # type: ignore[assignment]


async def _open(server: RedisServer) -> RedisStore:
    store = RedisStore(server.url, namespace="ck", checkpoint_mirror=None)
    await store.open()
    return store


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    made = await _open(redis_server)
    yield made
    await made.close()


async def _retry_waiting(store: RedisStore, offset: float, old: bool = False) -> str:
    """A retry waiting (``retry_waiting``), written by a worker whose clock is ``offset`` off."""
    with clock(offset):
        op_id, _ = await retry_waiting(store, old, BACKOFF)
    return op_id


@pytest.mark.parametrize("old", [False, True], ids=["backoff_from", "no-backoff_from"])
@pytest.mark.parametrize("writer, claimer", [(AHEAD, 0.0), (0.0, AHEAD), (-AHEAD, 0.0), (0.0, -AHEAD)])
async def test_a_retry_waits_its_backoff_whichever_clock_wrote_and_claims_it(
    store: RedisStore, writer: float, claimer: float, old: bool
) -> None:
    start = time.monotonic()
    op_id = await _retry_waiting(store, writer, old)
    with clock(claimer):
        assert await store.claim(W, time.time(), 300.0) is None  # was taken at once, or after the 10 minutes
        assert await store.claim(W, time.time(), 300.0, types=frozenset({"demo"})) is None
        await asyncio.sleep(max(0.0, BACKOFF - (time.monotonic() - start)))
        # Due a second after the retry's write reached Redis, which a loaded machine can make later than
        # ``start`` by more than a tick: claim until then, 2 s at most (the 10-minute wait is the fault).
        taken = await store.claim(W, time.time(), 300.0)
        while taken is None and time.monotonic() - start < BACKOFF + 2.0:
            await asyncio.sleep(0.05)
            taken = await store.claim(W, time.time(), 300.0)
    assert taken is not None and taken.id == op_id and taken.status is Status.RUNNING


async def test_aging_counts_the_wait_in_redis_clock_not_the_submitters(store: RedisStore) -> None:
    """A normal operation queued by a machine 10 minutes behind, then a high one queued by one on time: the
    high one goes first (aging 300 s: 10 minutes were two levels)."""
    with clock(-AHEAD):
        T = time.time()
        behind = Operation(id=new_id(), type="demo", created_at=T, queued_at=T, updated_at=T)
        await store.create(behind)
    T = time.time()
    urgent = Operation(id=new_id(), type="demo", priority=Priority.HIGH, created_at=T, queued_at=T, updated_at=T)
    await store.create(urgent)
    first = await store.claim(W, time.time(), 300.0)
    assert first is not None and first.id == urgent.id


async def test_a_retry_goes_at_once_when_redis_clock_steps_back_during_its_backoff(
    store: RedisStore, redis_server: RedisServer
) -> None:
    """Its scores as Redis wrote them had its clock read an hour later then (libfaketime cannot run
    redis-server: its allocator's clock calls recurse): waiting for not_before would take the hour."""
    op_id = await _retry_waiting(store, 0.0)
    assert await store.claim(W, time.time(), 300.0) is None
    client, rank = redis_server.client(), Priority.NORMAL.rank
    for key in (store.keys.delayed(rank), store.keys.delayed_from(rank)):
        score = client.zscore(key, op_id)
        assert score is not None
        client.zadd(key, {op_id: score + 3600})
    taken = await store.claim(W, time.time(), 300.0)
    assert taken is not None and taken.id == op_id
