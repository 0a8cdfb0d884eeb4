"""A lease Redis dropped while, by its worker's own clock, it still held: a Redis restarted from its
append-only file keeps each key's absolute expiry time, so a lease whose time passed by Redis's clock while
it was down (the machine's clock stepped forward, a host paused as a whole, a late first heartbeat) came back
gone, and every running attempt was over: interrupted and run again since its last checkpoint. The heartbeat
now sets such a lease again, only while the record still shows that attempt; a lease run out by the worker's
own clock is never renewed (its operation may have been taken over)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from engine import Engine, Operation, OperationSpec, Settings, Status, load_settings, open_store
from engine.models import Checkpoint, LogRecord, StaleAttempt, WorkerInfo
from engine.store.base import ItemDelta
from engine.store.redis import RedisStore
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis
W = WorkerInfo(host="test", pid=1)


def store_for(server: RedisServer, lease_ttl: float) -> RedisStore:
    return open_store(server.url, namespace="t", checkpoint_mirror=None, lease_ttl=lease_ttl)  # type: ignore[return-value]


async def claimed(server: RedisServer, settings: Settings, worker: RedisStore) -> tuple[str, Operation]:
    """An operation submitted, then claimed by ``worker`` (opened): its id and the claimed record."""
    spec = OperationSpec(type="ledger", params={"items": 3})  # type: ignore[arg-type]
    async with Engine(store=store_for(server, worker.lease_ttl), settings=settings, run_queue=False) as engine:
        op_id = (await engine.submit(spec)).id
    op = await worker.claim(W, time.time(), 300.0, op_id=op_id)
    assert op is not None
    return op_id, op


def restart_past_the_lease(server: RedisServer, worker: RedisStore, op_id: str) -> None:
    """Redis's clock runs ahead of the worker's by most of a TTL: the lease's absolute expiry (kept in the
    append-only file) passes while Redis is down."""
    server.client().pexpire(worker.keys.lease(op_id), 300)
    server.stop()
    time.sleep(0.5)
    server.start()


@pytest.fixture
def settings(state_dir: Path) -> Settings:
    return load_settings(state_dir=state_dir, plugins=["tests.ops_for_tests"])


async def test_a_lease_redis_dropped_across_a_restart_is_set_again_while_the_worker_holds_it(
    redis_factory: object, settings: Settings
) -> None:
    server: RedisServer = redis_factory(persistence=True)  # type: ignore[operator]
    worker = store_for(server, 5.0)
    async with worker:
        op_id, op = await claimed(server, settings, worker)
        await worker.heartbeat([op_id])
        restart_past_the_lease(server, worker, op_id)
        assert not server.client().exists(worker.keys.lease(op_id))
        await worker.heartbeat([op_id])
        assert server.client().exists(worker.keys.lease(op_id))
        cp = Checkpoint(operation_id=op_id, seq=1, epoch=op.epoch, created_at=time.time())
        await worker.save_checkpoint(cp, ItemDelta(done=["0"]), keep=5)  # the attempt still writes
        assert (await worker.get(op_id)).status is Status.RUNNING
        assert (await worker.get(op_id)).epoch == op.epoch


@pytest.mark.parametrize("first", ["live progress", "checkpoint", "logs", "update"])
async def test_a_write_that_reaches_redis_before_the_heartbeat_does_not_end_the_attempt(
    redis_factory: object, settings: Settings, first: str
) -> None:
    """Live progress (a checkpoint, its item failures, a batch of log records, a record update) sent as
    Redis came back reached it before the heartbeat did: refused for its lease, it ended the attempt all the
    same. It is sent again once a heartbeat set the lease."""
    server: RedisServer = redis_factory(persistence=True)  # type: ignore[operator]
    worker = store_for(server, 5.0)
    async with worker:
        op_id, op = await claimed(server, settings, worker)
        restart_past_the_lease(server, worker, op_id)
        if first == "live progress":
            await worker.save_live([(op_id, op.epoch, {"total_items": 7})])
            assert (await worker.get(op_id)).total_items == 7
        elif first == "logs":
            await worker.append_logs(op_id, [LogRecord(ts=time.time(), level="info", message="after the restart")])
            assert [r.message for r in (await worker.read_logs(op_id))[0]] == ["after the restart"]
        elif first == "update":
            await worker.update(op_id, epoch=op.epoch, status_message="after the restart")
            assert (await worker.get(op_id)).status_message == "after the restart"
        else:
            cp = Checkpoint(operation_id=op_id, seq=1, epoch=op.epoch, created_at=time.time())
            await worker.save_checkpoint(cp, ItemDelta(done=["0"], failed={"2": "boom"}), keep=5)
            assert [f.key for f in await worker.item_failures(op_id)] == ["2"]
        assert server.client().exists(worker.keys.lease(op_id))
        await worker.heartbeat([op_id])
        cp = Checkpoint(operation_id=op_id, seq=2, epoch=op.epoch, created_at=time.time())
        await worker.save_checkpoint(cp, ItemDelta(done=["1"]), keep=5)
        assert (await worker.get(op_id)).status is Status.RUNNING


@pytest.mark.parametrize(
    ("to", "beside"),
    [(Status.COMPLETED, None), (Status.COMPLETED, "heartbeat"), (Status.FAILED, None), (Status.PAUSED, None)],
)
async def test_a_settle_that_reaches_redis_before_the_heartbeat_is_written_once(
    redis_factory: object, settings: Settings, to: Status, beside: str | None
) -> None:
    """The final status of an attempt sent as Redis came back, before the heartbeat (or beside it): refused
    for its lease, it was not written ("final status completed not written: ... its lease expired"), and the
    operation, left running without a lease, was taken for an orphan and run again. It is written now, once:
    one status event, and no lease set again after it (the operation is no longer running)."""
    server: RedisServer = redis_factory(persistence=True)  # type: ignore[operator]
    worker = store_for(server, 5.0)
    async with worker:
        op_id, op = await claimed(server, settings, worker)
        restart_past_the_lease(server, worker, op_id)
        events = server.client().pubsub()
        events.subscribe(f"{worker.keys.prefix}events")
        assert events.get_message(timeout=5) is not None  # subscribed: every event from here on is seen
        settle = worker.transition(op_id, to, epoch=op.epoch, expect=frozenset({Status.RUNNING}), finished_at=1.0)
        if beside == "heartbeat":
            done, _ = await asyncio.gather(settle, worker.heartbeat([op_id]))
        else:
            done = await settle
        assert (done.status, done.epoch) == (to, op.epoch)
        await worker.heartbeat([op_id])
        assert not server.client().exists(worker.keys.lease(op_id))
        assert (await worker.get(op_id)).status is to
        said = []
        while (m := events.get_message(timeout=0.2)) is not None:
            said.append(json.loads(m["data"]))
        assert [e["status"] for e in said if e.get("kind") == "status"] == [to.value]
        events.close()


@pytest.mark.parametrize(
    ("took", "said"),
    [
        ("interrupted", "is over: the operation is interrupted now"),
        ("claimed again", "was replaced by epoch 2"),
        ("another lease", "is over: its lease expired"),
    ],
)
async def test_a_write_sent_again_never_lands_over_an_attempt_that_took_the_operation_over(
    redis_factory: object, settings: Settings, took: str, said: str
) -> None:
    """Redis came back without the lease, and before this attempt's writes reached it the operation was
    interrupted as an orphan (then perhaps claimed again), or another lease is there: its final status and
    its checkpoint are refused, not sent again, and no lease of it is set again."""
    server: RedisServer = redis_factory(persistence=True)  # type: ignore[operator]
    worker, other = store_for(server, 5.0), store_for(server, 5.0)
    async with worker, other:
        op_id, op = await claimed(server, settings, worker)
        restart_past_the_lease(server, worker, op_id)
        lease = worker.keys.lease(op_id)
        if took == "another lease":
            server.client().set(lease, "another:1", px=60_000)
        else:
            running = frozenset({Status.RUNNING})
            await other.transition(op_id, Status.INTERRUPTED, epoch=op.epoch, expect=running, orphaned_epoch=op.epoch)
        if took == "claimed again":
            await other.transition(op_id, Status.QUEUED)
            assert await other.claim(W, time.time(), 300.0, op_id=op_id) is not None
        was, was_lease = await worker.get(op_id), server.client().get(lease)
        with pytest.raises(StaleAttempt, match=said):
            await worker.transition(op_id, Status.COMPLETED, epoch=op.epoch, expect=frozenset({Status.RUNNING}))
        cp = Checkpoint(operation_id=op_id, seq=1, epoch=op.epoch, created_at=time.time())
        with pytest.raises(StaleAttempt):
            await worker.save_checkpoint(cp, ItemDelta(done=["0"]), keep=5)
        await worker.heartbeat([op_id])
        after = await worker.get(op_id)
        assert (after.status, after.epoch, after.updated_at) == (was.status, was.epoch, was.updated_at)
        assert server.client().get(lease) == was_lease
        assert await worker.checkpoints(op_id) == []


async def test_a_lease_run_out_by_the_workers_own_clock_is_not_set_again(
    redis_server: RedisServer, settings: Settings
) -> None:
    worker = store_for(redis_server, 1.0)
    async with worker:
        op_id, op = await claimed(redis_server, settings, worker)
        time.sleep(1.2)  # stopped past its lease (SIGSTOP, cut off): nobody took it over yet
        await worker.heartbeat([op_id])
        assert not redis_server.client().exists(worker.keys.lease(op_id))
        cp = Checkpoint(operation_id=op_id, seq=1, epoch=op.epoch, created_at=time.time())
        with pytest.raises(StaleAttempt):
            await worker.save_checkpoint(cp, ItemDelta(done=["0"]), keep=5)
