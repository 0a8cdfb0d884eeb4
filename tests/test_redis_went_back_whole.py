"""Redis restarted from an older snapshot: the snapshot holds the store's mark, so nothing looked emptied, and
every operation created after it was gone without a word (``ls`` listed 1 of 4, a worker's running ones "gone
from the store", ``show`` exit 3) though the checkpoint mirror held them all; the next submit took a handle one
of them had (an outside hour on Redis). A handle counter below a handle this process saw, or below a handle
of a record the mirror holds, is Redis gone back whole: what it lost is restored from the mirror."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from engine import Status, open_store
from engine.models import WorkerInfo
from tests.fixtures_engine import queued_record
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


def _store(server: RedisServer, mirror: Path | None) -> Any:
    return open_store(server.url, namespace="wb", checkpoint_mirror=mirror)


def _roll_back(server: RedisServer, snapshot: Path) -> None:
    """SIGKILL Redis (nothing saved since the snapshot) and start it again from ``snapshot``."""
    server.kill()
    shutil.copy(snapshot, server.dir / "dump.rdb")
    server.start()


async def test_a_redis_restarted_from_an_older_snapshot_gets_back_what_the_mirror_holds(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = tmp_path / "mirror"
    snapshot = tmp_path / "snap.rdb"
    async with _store(redis_server, mirror) as worker:
        first = queued_record()
        assert await worker.create(first) == 1
        redis_server.client().save()
        shutil.copy(redis_server.dir / "dump.rdb", snapshot)
        later = [queued_record() for _ in range(3)]
        for n, op in enumerate(later, 2):
            assert await worker.create(op) == n
        running = await worker.claim(WorkerInfo(host="h", pid=1), time.time(), 300.0, op_id=later[2].id)
        assert running is not None and running.status is Status.RUNNING

        _roll_back(redis_server, snapshot)
        async with _store(redis_server, None) as plain:  # what `ls` saw: the one of before the snapshot
            assert [op.id for op in await plain.list_operations()] == [first.id]
        with caplog.at_level(logging.WARNING, "outlast"):
            await worker.find_orphans()  # a worker's look every 2 s: the counter is below handle 4 it saw
        assert any("went back in time" in r.getMessage() for r in caplog.records), caplog.text
        ids = {op.id: op for op in await worker.list_operations()}
        assert set(ids) == {first.id, *(op.id for op in later)}, ids
        assert [ids[op.id].handle for op in later] == [2, 3, 4]
        assert ids[later[2].id].status is Status.RUNNING  # as the mirror had it: an orphan to resume
        assert await worker.create(queued_record()) == 5  # no handle given twice


async def test_a_process_that_saw_nothing_restores_what_a_write_finds_missing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A process started after the rollback (a CLI `cancel`): its write finds the record missing, and the
    mirror's record has a handle Redis never gave; restored, and the write is done."""
    mirror = tmp_path / "mirror"
    snapshot = tmp_path / "snap.rdb"
    async with _store(redis_server, mirror) as submitter:
        await submitter.create(queued_record())
        redis_server.client().save()
        shutil.copy(redis_server.dir / "dump.rdb", snapshot)
        lost = queued_record()
        assert await submitter.create(lost) == 2
    _roll_back(redis_server, snapshot)
    async with _store(redis_server, mirror) as cli:
        done = await cli.transition(lost.id, Status.CANCELLED, expect=frozenset({Status.QUEUED}))
        assert done.status is Status.CANCELLED and done.handle == 2


async def test_a_removed_operation_is_not_brought_back(redis_server: RedisServer, tmp_path: Path) -> None:
    """A removal takes the mirror's record out first: nothing of it is restored, and a refill of the mirror
    still takes out records of operations removed while it could not be written."""
    mirror = tmp_path / "mirror"
    async with _store(redis_server, mirror) as store:
        kept, removed = queued_record(), queued_record()
        await store.create(kept)
        await store.create(removed)
        await store.transition(removed.id, Status.CANCELLED, expect=frozenset({Status.QUEUED}))
        await store.delete(removed.id, expect=frozenset({Status.CANCELLED}))
        await store.find_orphans()
        assert [op.id for op in await store.list_operations()] == [kept.id]


async def test_a_handle_given_while_the_counter_is_read_is_not_redis_gone_back(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker submitting and running work at once: its look for orphans read the handle counter on one
    connection while a create on another was given the next handle, and that reply came first. The counter
    read was below the handle just seen: "went back in time", and every mirror record read to restore what
    was never lost (twice in 3,000 submits of one process here)."""
    async with _store(redis_server, tmp_path / "mirror") as worker:
        assert await worker.create(queued_record()) == 1
        call = worker.link.call

        async def create_meanwhile(fn: Any, what: str = "request", *a: Any, **kw: Any) -> Any:
            reply = await call(fn, what, *a, **kw)
            if what == "reading the store generation":  # its reply arrives after a create's
                worker.link.call = call
                assert await worker.create(queued_record()) == 2
            return reply

        worker.link.call = create_meanwhile
        with caplog.at_level(logging.WARNING, "outlast"):
            await worker.find_orphans()
        assert worker.link.call is call  # the read was made, and the create answered meanwhile
        assert not any("went back in time" in r.getMessage() for r in caplog.records), caplog.text
        assert len(await worker.list_operations()) == 2
