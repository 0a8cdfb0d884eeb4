"""Redis restarted from a snapshot taken earlier (an RDB file minutes old; a failover to a replica behind):
the store goes back in time, and the generation mark, in the snapshot too, does not tell. An operation
that completed since was queued or running again there, and ran again. With a checkpoint mirror, which
is written after Redis accepts a record, the newer record is found there and written back instead."""

from __future__ import annotations

import asyncio
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


async def _up_for(server: RedisServer, seconds: int) -> None:
    """Until Redis has been up ``seconds``: the look for orphans trusts no missing lease before its
    lease time has passed since Redis started (live workers have not renewed theirs yet)."""
    while int(server.client().info("server")["uptime_in_seconds"]) < seconds:
        await asyncio.sleep(0.2)


def _restart_from_snapshot(server: RedisServer) -> None:
    server.kill()  # SIGKILL: what was written after the snapshot is lost
    server.start()  # loads dump.rdb from its directory


def _store(server: RedisServer, mirror: Path) -> Any:
    return open_store(f"{server.url}?lease_ttl=0.5", namespace="wb", checkpoint_mirror=mirror)


async def test_an_operation_completed_after_the_snapshot_is_not_claimed_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    async with _store(redis_server, mirror) as store:
        op = queued_record()
        await store.create(op)
        redis_server.client().save()  # the snapshot: queued
        claimed = await store.claim(W, time.time(), 300.0)
        assert claimed is not None
        await store.transition(op.id, Status.COMPLETED, epoch=claimed.epoch, result={"sum": 1})
    _restart_from_snapshot(redis_server)
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
    async with _store(redis_server, mirror) as store:
        op = queued_record()
        await store.create(op)
        claimed = await store.claim(W, time.time(), 300.0)
        assert claimed is not None
        redis_server.client().save()  # the snapshot: running
        await store.transition(op.id, Status.COMPLETED, epoch=claimed.epoch, result={"sum": 1})
    _restart_from_snapshot(redis_server)
    redis_server.client().delete(f"wb:lease:{op.id}")  # its lease expired meanwhile
    await _up_for(redis_server, 2)
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
    await _up_for(redis_server, 2)
    async with _store(redis_server, tmp_path / "mirror") as store:
        assert [o.id for o in await store.find_orphans()] == [op.id]
