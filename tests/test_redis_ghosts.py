"""An operation listed as running whose record Redis lost without being emptied (evicted by a maxmemory
policy such as allkeys-lru, or deleted by hand): it held a store slot for good, so with store slots set
every later claim found none free, and every listing counted it running."""

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


async def _ghost(server: RedisServer, mirror: Path | None = None) -> str:
    """A claimed operation whose record and lease Redis then lost, its worker gone too; Redis up long enough
    for the look for orphans to trust a missing lease."""
    worker: Any = open_store(f"{server.url}?lease_ttl=0.5", namespace="gh", checkpoint_mirror=mirror)
    async with worker:
        await worker.set_slots(1)
        op = queued_record()
        await worker.create(op)
        claimed = await worker.claim(W, time.time(), 300.0)
        assert claimed is not None and claimed.id == op.id
        server.client().delete(worker.keys.op(op.id), worker.keys.lease(op.id))
    await server.up_for(2)
    return op.id


def _observer(server: RedisServer, mirror: Path | None = None) -> Any:
    return open_store(f"{server.url}?lease_ttl=0.5", namespace="gh", checkpoint_mirror=mirror)


async def test_a_running_operation_whose_record_was_evicted_frees_its_store_slot(redis_server: RedisServer) -> None:
    await _ghost(redis_server)
    store = _observer(redis_server)
    async with store:
        waiting = queued_record()
        await store.create(waiting)
        assert await store.find_orphans() == []  # nothing to resume: no record anywhere
        assert await store.counts() == {Status.QUEUED: 1}  # was running 1 for ever
        taken = await store.claim(W, time.time(), 300.0)  # was None for ever: the slot held by the ghost
        assert taken is not None and taken.id == waiting.id


async def test_a_running_operation_whose_record_was_evicted_is_resumed_from_the_mirror(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    op_id = await _ghost(redis_server, tmp_path / "mirror")
    store = _observer(redis_server, tmp_path / "mirror")
    async with store:
        orphans = await store.find_orphans()  # was none: the mirror's record never looked at
        assert [o.id for o in orphans] == [op_id] and orphans[0].status is Status.RUNNING
        assert (await store.get(op_id)).handle == 1


async def test_an_evicted_record_the_mirror_has_settled_is_restored_as_settled_and_not_counted_running(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The mirror's record, not the stale index entry, says where it belongs: restored as completed, it was
    still listed (and counted against the slots) as running too."""
    op_id = await _ghost(redis_server, tmp_path / "mirror")
    store = _observer(redis_server, tmp_path / "mirror")
    async with store:
        mirrored = store.mirror.load_record_sync(op_id)
        settled = mirrored.model_copy(update={"status": Status.COMPLETED, "result": {"sum": 1}})
        await store.mirror.save_record(settled)  # settled in the mirror, as Redis had it before it lost it
        assert await store.find_orphans() == []
        assert await store.counts() == {Status.COMPLETED: 1}
        assert (await store.get(op_id)).result == {"sum": 1}
