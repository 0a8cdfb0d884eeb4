"""An index key of the Redis store evicted (under a maxmemory policy other than noeviction, which every
process warns of) or deleted by hand while the records stay: ``ids`` and ``all`` went under allkeys-lru
in a run of six operations, and the one that had completed was listed nowhere and ``outlast show ID``
said no operation matches it, though Redis held its record, with nothing said. The next look for
orphans finds the counts of the indexes disagree, indexes every operation again as its record says, and
says so in one line."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from engine import Engine, Settings, Status, load_settings, open_store
from engine.models import WorkerInfo
from engine.store.redis import RedisStore
from engine.store.redis.keys import Keys
from tests.fixtures_engine import queued_record
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


EVICTED = [("all", "ids"), ("st:completed",), ("all", "ids", "st:queued")]
"""The index keys gone, one namespace each (what allkeys-lru took in that run first)."""


def store_for(server: RedisServer, ns: str) -> RedisStore:
    url = f"{server.url}?lease_ttl=1"  # a look for orphans trusts no lease before one TTL of uptime
    return open_store(url, namespace=ns, checkpoint_mirror=None)  # type: ignore[return-value]


async def test_operations_an_evicted_index_lost_are_indexed_again_and_said(
    redis_server: RedisServer, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    made: dict[str, tuple[str, str]] = {}
    for k, evicted in enumerate(EVICTED):
        ns = f"t{k}"
        writer = store_for(redis_server, ns)
        await writer.open()
        try:
            done, waiting = queued_record("ledger"), queued_record("ledger")
            for op in (done, waiting):
                await writer.create(op)
            held = await writer.claim(WorkerInfo(host="a", pid=1), time.time(), 300.0, op_id=done.id)
            assert held is not None
            await writer.transition(done.id, Status.COMPLETED, epoch=held.epoch, finished_at=time.time())
        finally:
            await writer.close()
        redis_server.client().delete(*(f"{Keys(ns).prefix}{key}" for key in evicted))
        made[ns] = (done.id, waiting.id)
    await redis_server.up_for(2)
    settings: Settings = load_settings(state_dir=state_dir, plugins=["tests.ops_for_tests"])
    for ns, (done_id, waiting_id) in made.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="outlast"):
            async with Engine(store=store_for(redis_server, ns), settings=settings, run_queue=False) as engine:
                listed = {o.id: o.status for o in await engine.list()}
                assert listed == {done_id: Status.COMPLETED, waiting_id: Status.QUEUED}, ns
                assert await engine.store.resolve(done_id) == done_id  # `outlast show ID`
                counts = await engine.store.counts()
                assert (counts[Status.COMPLETED], counts[Status.QUEUED]) == (1, 1), ns
        said = [r.getMessage() for r in caplog.records if "missing from the store's indexes" in r.getMessage()]
        assert len(said) == 1, (ns, said)
