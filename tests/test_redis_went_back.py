"""Redis restarted from a snapshot taken earlier (an RDB file minutes old; a failover to a replica behind):
the store goes back in time, and the generation mark, in the snapshot too, does not tell. An operation
that completed since was queued or running again there, and ran again. With a checkpoint mirror, which
is written after Redis accepts a record, the newer record is found there and written back instead."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from engine import Status, open_store
from engine.models import WorkerInfo
from tests.fixtures_engine import queued_record
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis
W = WorkerInfo(host="test", pid=1)


def _restart_from_snapshot(server: RedisServer) -> None:
    server.kill()  # SIGKILL: what was written after the snapshot is lost
    server.start()  # loads dump.rdb from its directory


def _store(server: RedisServer, mirror: Path) -> Any:
    return open_store(f"{server.url}?lease_ttl=0.5", namespace="wb", checkpoint_mirror=mirror)


async def _completed_after_a_snapshot(server: RedisServer, mirror: Path, snapshot: Status) -> tuple[Any, Any]:
    """An operation claimed and completed, with a snapshot taken while it was ``snapshot`` (queued or
    running); then Redis restarted from that snapshot. The operation and its claimed record."""
    async with _store(server, mirror) as store:
        op = queued_record()
        await store.create(op)
        if snapshot is Status.QUEUED:
            server.client().save()
        claimed = await store.claim(W, time.time(), 300.0)
        assert claimed is not None
        if snapshot is Status.RUNNING:
            server.client().save()
        await store.transition(op.id, Status.COMPLETED, epoch=claimed.epoch, result={"sum": 1})
    _restart_from_snapshot(server)
    return op, claimed


async def test_an_operation_completed_after_the_snapshot_is_not_claimed_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    op, claimed = await _completed_after_a_snapshot(redis_server, mirror, Status.QUEUED)
    async with _store(redis_server, mirror) as store:
        assert (await store.get(op.id)).status is Status.QUEUED  # what Redis went back to
        assert await store.claim(W, time.time(), 300.0) is None  # was claimed, and run again
        back = await store.get(op.id)
        assert (back.status, back.result, back.epoch) == (Status.COMPLETED, {"sum": 1}, claimed.epoch)
        assert await store.counts() == {Status.COMPLETED: 1}
        assert await store.queue_depth() == {p: 0 for p in await store.queue_depth()}
        assert not redis_server.client().exists(store.keys.lease(op.id))


async def test_an_operation_running_in_the_snapshot_and_completed_since_is_not_resumed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    op, _ = await _completed_after_a_snapshot(redis_server, mirror, Status.RUNNING)
    redis_server.client().delete(f"wb:lease:{op.id}")  # its lease expired meanwhile
    await redis_server.up_for(2)
    async with _store(redis_server, mirror) as store:
        assert (await store.get(op.id)).status is Status.RUNNING
        assert await store.find_orphans() == []  # was an orphan: interrupted, resumed, run again
        back = await store.get(op.id)
        assert (back.status, back.result) == (Status.COMPLETED, {"sum": 1})
        assert await store.counts() == {Status.COMPLETED: 1}


async def test_an_orphan_the_mirror_knows_no_newer_record_of_is_resumed_as_before(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with _store(redis_server, tmp_path / "mirror") as worker:  # its worker, gone after the claim
        op = queued_record()
        await worker.create(op)
        claimed = await worker.claim(W, time.time(), 300.0)
        assert claimed is not None
        redis_server.client().delete(worker.keys.lease(op.id))
    await redis_server.up_for(2)
    async with _store(redis_server, tmp_path / "mirror") as store:
        assert [o.id for o in await store.find_orphans()] == [op.id]
