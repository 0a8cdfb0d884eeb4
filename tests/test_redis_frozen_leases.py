"""A Redis that stops answering (SIGSTOPped, its host suspended) for longer than a lease: its clock runs on, so
every lease has run out when it answers again, those of live workers too. The first process to look for orphans
then (a watcher, every 2 s) marked a running operation interrupted while the worker running it was renewing (an
outside hour, a 15 s freeze: "left running by ...: interrupted", the worker still at work). Leases are judged
again only once live workers have had the time to renew theirs, as after a restart."""

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


def _store(server: RedisServer) -> Any:
    return open_store(f"{server.url}?lease_ttl=0.5", namespace="fz")


async def test_a_lease_run_out_while_redis_was_frozen_is_not_an_orphan(redis_server: RedisServer) -> None:
    await redis_server.up_for(2)
    async with _store(redis_server) as worker, _store(redis_server) as watcher:
        op = queued_record()
        await worker.create(op)
        claimed = await worker.claim(WorkerInfo(host="elsewhere", pid=1), time.time(), 300.0)
        assert claimed is not None and claimed.status is Status.RUNNING
        await watcher.find_orphans()  # connected, a look done: the next one finds Redis frozen
        with redis_server.frozen():
            look = asyncio.ensure_future(watcher.find_orphans())  # waits for Redis, as a watcher's look does
            await asyncio.sleep(1.5)  # three leases long
        assert await look == [], "judged as Redis answered again, before any live worker could renew"
        await worker.heartbeat([op.id])  # the worker renews once Redis answers
        assert await watcher.find_orphans() == []
        assert (await watcher.get(op.id)).status is Status.RUNNING
        await asyncio.sleep(1.6)  # past the time given to renew: a lease that is still gone is an orphan's
        await worker.release(op.id)  # the worker dies: its lease goes
        found = await watcher.find_orphans()
        assert [o.id for o in found] == [op.id], found


async def test_a_worker_killed_while_redis_was_frozen_is_found_once_the_renewal_time_has_passed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    await redis_server.up_for(2)
    async with _store(redis_server) as worker, _store(redis_server) as watcher:
        op = queued_record()
        await worker.create(op)
        assert await worker.claim(WorkerInfo(host="elsewhere", pid=1), time.time(), 300.0) is not None
        await watcher.find_orphans()
        with redis_server.frozen():
            look = asyncio.ensure_future(watcher.find_orphans())
            await asyncio.sleep(1.5)
        assert await look == []
        end = time.monotonic() + 10  # nobody renews: found within the renewal time and a look
        while not (found := await watcher.find_orphans()) and time.monotonic() < end:
            await asyncio.sleep(0.2)
        assert [o.id for o in found] == [op.id], found
