"""A queued operation whose record Redis lost (evicted under a maxmemory policy other than noeviction, or
deleted by hand) while its id stayed in the queue: a claim dropped the id from the queue without a word,
and it stayed counted queued for good; one the checkpoint mirror held was never restored from it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from engine import Engine, OperationSpec, Status, load_settings, open_store
from engine.models import WorkerInfo
from engine.store.redis import RedisStore
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis
W = WorkerInfo(host="test", pid=1)


async def claim_all(store: RedisStore) -> list[str]:
    claimed = []
    while (op := await store.claim(W, time.time(), 300.0)) is not None:
        claimed.append(op.id)
    return claimed


@pytest.mark.parametrize("with_mirror", [False, True], ids=["no mirror", "mirror"])
async def test_a_queued_operation_whose_record_was_evicted_is_said_and_restored_from_the_mirror(
    redis_server: RedisServer, state_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, with_mirror: bool
) -> None:
    mirror = tmp_path / "mirror" if with_mirror else None
    url = f"{redis_server.url}?lease_ttl=0.5"
    settings = load_settings(state_dir=state_dir, plugins=["tests.ops_for_tests"])
    async with Engine(
        store=open_store(url, namespace="t", checkpoint_mirror=mirror), settings=settings, run_queue=False
    ) as e:
        ids = [(await e.submit(OperationSpec(type="ledger", params={"items": 1}))).id for _ in range(3)]
    lost = ids[1]
    assert redis_server.client().delete(f"t:op:{lost}") == 1  # as allkeys-lru evicts a cold record
    retry = "0000000000zzz"  # a retry waiting out its backoff, whose record went the same way
    redis_server.client().zadd("t:dq:1", {retry: 0})
    await redis_server.up_for(2)  # orphans are looked for once Redis has been up a lease
    store: RedisStore = open_store(url, namespace="t", checkpoint_mirror=mirror)  # type: ignore[assignment]
    async with store:
        assert sorted(await claim_all(store)) == sorted(i for i in ids if i != lost)
        with caplog.at_level(logging.WARNING, "outlast"):
            assert await store.find_orphans() == []
        said = [r.getMessage() for r in caplog.records if lost in r.getMessage()]
        assert len(said) == 1, said
        assert any(
            retry in r.getMessage() and "no checkpoint mirror holds it" in r.getMessage() for r in caplog.records
        )
        if with_mirror:
            assert "restored from the checkpoint mirror" in said[0]
            assert (await store.counts()).get(Status.QUEUED) == 1
            assert await claim_all(store) == [lost]
        else:
            assert "no checkpoint mirror holds it" in said[0]
            assert Status.QUEUED not in await store.counts()  # no ghost counted queued for ever
        for op_id in ids:
            if op_id != lost or with_mirror:
                await store.release(op_id)


async def test_queued_operations_whose_queue_key_was_evicted_are_queued_again(
    redis_server: RedisServer, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The queue key itself evicted (allkeys-random, volatile policies on a key given a TTL, or deleted by
    hand): its operations stayed listed queued, and no worker ever took them."""
    url = f"{redis_server.url}?lease_ttl=0.5"
    settings = load_settings(state_dir=state_dir, plugins=["tests.ops_for_tests"])
    async with Engine(
        store=open_store(url, namespace="t", checkpoint_mirror=None), settings=settings, run_queue=False
    ) as e:
        ids = [(await e.submit(OperationSpec(type="ledger", priority=p))).id for p in ("normal", "high", "normal")]  # type: ignore[arg-type]
    assert redis_server.client().delete("t:q:1") == 1
    await redis_server.up_for(2)
    store: RedisStore = open_store(url, namespace="t", checkpoint_mirror=None)  # type: ignore[assignment]
    async with store:
        with caplog.at_level(logging.WARNING, "outlast"):
            assert await store.find_orphans() == []
        assert any("2 queued operations no queue held" in r.getMessage() for r in caplog.records)
        assert await claim_all(store) == [ids[1], ids[0], ids[2]]
        for op_id in ids:
            await store.release(op_id)
