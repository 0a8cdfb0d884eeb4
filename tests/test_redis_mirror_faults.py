"""The checkpoint mirror against a real redis-server: a failed write written back once it works again, a
mirror of another store never read into this one, removals that hold, a record file holding another
operation, handles never reused after Redis was emptied."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from engine import Engine, OperationSpec, Settings, Status, load_settings, open_store
from engine.models import Operation, StoreError
from engine.store import mirror as mirror_module
from engine.store.redis import RedisStore
from engine.store.redis.keys import STORE_FIELD
from tests.fixtures_disk import dead_pid, leave_temps
from tests.fixtures_engine import queued_record
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def settings(state_dir: Path) -> Settings:
    return load_settings(state_dir=state_dir, plugins=["tests.ops_for_tests"], grace_period=2.0)


def store_for(server: RedisServer, mirror: Path, db: int = 0, host: str = "127.0.0.1") -> RedisStore:
    url = f"redis://{host}:{server.port}/{db}"
    return open_store(url, namespace="t", checkpoint_mirror=mirror)  # type: ignore[return-value]


def mirrored(mirror: Path, op_id: str) -> Operation | None:
    path = mirror / "t" / "ops" / f"{op_id}.json"
    return Operation.model_validate_json(path.read_bytes()) if path.exists() else None


async def run_one(engine: Engine, items: int = 3) -> Operation:
    op = await engine.submit(OperationSpec(type="ledger", params={"items": items}))
    return await engine.wait(op.id, timeout=30)


async def listed(
    server: RedisServer, mirror: Path, settings: Settings, db: int = 0, host: str = "127.0.0.1"
) -> dict[str, Operation]:
    """What a new process finds (it restores from the mirror if Redis was emptied)."""
    async with Engine(store=store_for(server, mirror, db, host), settings=settings, run_queue=False) as engine:
        return {o.id: o for o in await engine.list()}


@pytest.mark.parametrize("written_back_by", ["the same process", "the next process"])
async def test_a_mirror_write_that_failed_is_written_again_once_the_mirror_works(
    redis_server: RedisServer,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    written_back_by: str,
) -> None:
    """F1: the mirror's disk full while an operation ran and completed: its record there stayed `queued`
    for ever (only a write that works was written), so a Redis lost later ran the completed operation
    again. Now what Redis holds is written back once the mirror works again, by this process or (marked in
    Redis) by whichever process writes next."""
    mirror = tmp_path / "mirror"
    real = mirror_module.atomic_write
    full = [False]

    def disk(path: Path, data: bytes, sync_dir: bool = True, **options: Any) -> bool:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, sync_dir, **options)

    monkeypatch.setattr(mirror_module, "atomic_write", disk)
    async with Engine(store=store_for(redis_server, mirror), settings=settings, run_queue=False) as engine:
        op = await engine.submit(OperationSpec(type="ledger", params={"items": 3}))
    full[0] = True
    async with Engine(store=store_for(redis_server, mirror), settings=settings) as worker:
        with caplog.at_level(logging.WARNING, "outlast"):
            final = await worker.wait(op.id, timeout=30)
        assert final.status is Status.COMPLETED
        assert mirrored(mirror, op.id).status is Status.QUEUED  # type: ignore[union-attr]
        assert "No space left" in caplog.text
        full[0] = False
        if written_back_by == "the same process":
            await worker.submit(OperationSpec(type="ledger", params={"items": 1}, priority="low"))
    if written_back_by == "the next process":
        async with Engine(store=store_for(redis_server, mirror), settings=settings, run_queue=False) as engine:
            await engine.submit(OperationSpec(type="ledger", params={"items": 1}))
    back = mirrored(mirror, op.id)
    assert back is not None and back.status is Status.COMPLETED
    redis_server.client().flushall()
    assert (await listed(redis_server, mirror, settings))[op.id].status is Status.COMPLETED


async def test_a_store_that_has_its_mark_is_not_restored_into_nor_from_another_stores_mirror(
    redis_server: RedisServer, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """F3: two Redis databases with one config (one mirror): every process that opened db 1 copied db 0's
    queued operations into it, and a worker on each ran them twice. Now a store is restored into only
    when it was emptied, and only from a mirror written for it: another store's is not used, said once;
    an empty store is not opened with it (only the user knows whether it is that store moved)."""
    mirror = tmp_path / "mirror"
    async with Engine(store=store_for(redis_server, mirror, 1), settings=settings, run_queue=False) as engine:
        own = (await engine.submit(OperationSpec(type="ledger", params={"items": 1}))).id  # db 1 in use first
    shutil.rmtree(mirror)  # db 1's mirror configured elsewhere before; now the user's config names this one
    async with Engine(store=store_for(redis_server, mirror, 0), settings=settings, run_queue=False) as engine:
        theirs = (await engine.submit(OperationSpec(type="ledger", params={"items": 1}))).id
    with caplog.at_level(logging.WARNING, "outlast"):
        assert set(await listed(redis_server, mirror, settings, 1)) == {own}
    said = [r.getMessage() for r in caplog.records if "checkpoint mirror" in r.getMessage()]
    assert len(said) == 1 and "the mirror of another store" in said[0], said
    assert mirrored(mirror, own) is None  # nor written by db 1
    # A database never used, sharing the mirror: not restored into (the mirror names db 0's URL), nor marked.
    with pytest.raises(StoreError, match=r"is the mirror of another store \(redis://localhost:\d+/0, not .*/2\)"):
        await listed(redis_server, mirror, settings, 2)
    assert redis.Redis(port=redis_server.port, db=2).dbsize() == 0
    # db 0 emptied (a restart without persistence): restored from its own mirror, its URL spelt otherwise.
    redis_server.client().flushdb()
    assert set(await listed(redis_server, mirror, settings, 0, host="localhost")) == {theirs}


async def test_a_removal_holds_when_the_mirror_cannot_be_written(
    redis_server: RedisServer, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F4: `rm` with a read-only mirror said "removed" (the mirror's failure swallowed) and the next command
    restored the operation from the record left there. Now the removal is refused in one line, nothing
    removed; once the mirror can be written it removes for good (after a Redis loss too)."""
    mirror = tmp_path / "mirror"
    ops_dir = str(mirror / "t" / "ops")
    real_unlink = os.unlink

    def read_only(path: object, *a: object, **kw: object) -> None:
        if str(path).startswith(ops_dir):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_unlink(path, *a, **kw)  # type: ignore[arg-type]

    async with Engine(store=store_for(redis_server, mirror), settings=settings) as engine:
        op = await run_one(engine)
        monkeypatch.setattr(os, "unlink", read_only)
        with pytest.raises(StoreError, match="not removed"):
            await engine.remove(op.id)
        monkeypatch.setattr(os, "unlink", real_unlink)
        assert (await engine.get(op.id)).status is Status.COMPLETED
    assert op.id in await listed(redis_server, mirror, settings)
    async with Engine(store=store_for(redis_server, mirror), settings=settings, run_queue=False) as engine:
        await engine.remove(op.id)
    assert op.id not in await listed(redis_server, mirror, settings)
    redis_server.client().flushall()
    assert op.id not in await listed(redis_server, mirror, settings)


async def test_a_removal_between_a_status_change_and_its_mirror_write_holds(
    redis_server: RedisServer, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F6: the worker writes an operation's record to the mirror after Redis took its `completed`; a prompt
    `rm` (another process) landed between, so the late write left the record in the mirror, which brought
    the operation back. Now the writer sees Redis no longer holds it and takes the file out again."""
    mirror = tmp_path / "mirror"
    worker, remover = store_for(redis_server, mirror), store_for(redis_server, mirror)
    await worker.open()
    await remover.open()
    try:
        op = queued_record("ledger")
        await worker.create(op)
        real_save = worker.mirror.save_record  # type: ignore[union-attr]

        async def late(record: Operation) -> None:
            if record.status is Status.CANCELLED:
                await remover.delete(record.id, expect=frozenset({Status.CANCELLED}))
            await real_save(record)

        monkeypatch.setattr(worker.mirror, "save_record", late)
        await worker.transition(op.id, Status.CANCELLED, finished_at=time.time())
        assert mirrored(mirror, op.id) is None
    finally:
        await worker.close()
        await remover.close()
    redis_server.client().flushall()
    assert op.id not in await listed(redis_server, mirror, settings)


async def test_a_mirror_record_file_holding_another_operation_is_skipped_and_said(
    redis_server: RedisServer, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """F5: `A.json` holding B's record was restored as B (no warning, "restored 2" for 1), and every later
    command said "restored 1" again. Now it is skipped with a warning naming it, and the count is right."""
    mirror = tmp_path / "mirror"
    async with Engine(store=store_for(redis_server, mirror), settings=settings) as engine:
        a, b = (await run_one(engine)).id, (await run_one(engine)).id
    ops = mirror / "t" / "ops"
    shutil.copyfile(ops / f"{b}.json", ops / f"{a}.json")
    redis_server.client().flushall()
    with caplog.at_level(logging.WARNING, "outlast"):
        assert set(await listed(redis_server, mirror, settings)) == {b}
    text = caplog.text
    assert text.count(f"{a}.json is not a valid operation record (holds operation {b})") == 1
    assert "restored 1 operation from" in text and "restored 2" not in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "outlast"):
        assert set(await listed(redis_server, mirror, settings)) == {b}
    assert "restored" not in caplog.text


async def test_handles_are_never_reused_after_redis_was_emptied(
    redis_server: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    """F2: after a FLUSHALL the handle counter started again from the mirror's records: a removed
    operation's handle went to a new one, and a process that created one before noticing the flush gave
    handle 1 to it while the restore gave 1 to an old one too. Now the mirror keeps the highest handle
    removed, the restore moves the counter past every one, and a create first notices the flush."""
    mirror = tmp_path / "mirror"
    long_lived = store_for(redis_server, mirror)
    await long_lived.open()
    try:
        async with Engine(store=store_for(redis_server, mirror), settings=settings) as engine:
            first, second, third = [await run_one(engine) for _ in range(3)]
            await engine.remove(third.id)
        assert (first.handle, second.handle, third.handle) == (1, 2, 3)
        redis_server.client().flushall()
        new = queued_record("ledger")
        handle = await long_lived.create(new)  # before any orphan round noticed the flush
        assert handle == 4
        assert await long_lived.resolve("1") == first.id and await long_lived.resolve("2") == second.id
        assert await long_lived.resolve("4") == new.id
    finally:
        await long_lived.close()
    redis_server.client().flushall()
    async with Engine(store=store_for(redis_server, mirror), settings=settings, run_queue=False) as engine:
        newest = await engine.submit(OperationSpec(type="ledger", params={"items": 1}))
        assert newest.handle == 5


async def test_a_store_that_lost_its_id_takes_its_own_mirrors_id(
    redis_server: RedisServer, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store holding its mark but no id (an older Outlast restored it from the mirror and never named it,
    or the id field was lost) took its own mirror, whose store.json names this very URL, for another
    store's: warned ("another store (redis://h:p/0), not redis://h:p/0"), not written any more, and a
    Redis emptied later was restored without the operations made since. Now the store takes the mirror's
    id, and its handle counter (lost too) is moved past every handle the mirror knows."""
    mirror = tmp_path / "mirror"
    async with Engine(store=store_for(redis_server, mirror), settings=settings, run_queue=False) as engine:
        ops = [await engine.submit(OperationSpec(type="ledger", params={"items": 1})) for _ in range(3)]
        await engine.cancel(ops[2].id)
        await engine.remove(ops[2].id)
    assert [o.handle for o in ops] == [1, 2, 3]
    meta = store_for(redis_server, mirror).keys.meta
    client = redis_server.client()
    client.hdel(meta, STORE_FIELD, "handles")  # what an older Outlast left
    with caplog.at_level(logging.WARNING, "outlast"):
        async with Engine(store=store_for(redis_server, mirror), settings=settings, run_queue=False) as engine:
            new = await engine.submit(OperationSpec(type="ledger", params={"items": 1}))
    assert "another store" not in caplog.text, caplog.text
    assert new.handle == 4  # never a handle given before (3 was removed)
    assert mirrored(mirror, new.id) is not None
    client.flushall()
    assert set(await listed(redis_server, mirror, settings)) == {ops[0].id, ops[1].id, new.id}
    # Another id on this URL: the mirror is not used, and the warning tells the two apart by their ids.
    client.hset(meta, STORE_FIELD, "0123456789abcdef")
    caplog.clear()
    with caplog.at_level(logging.WARNING, "outlast"):
        await listed(redis_server, mirror, settings)
    said = [r.getMessage() for r in caplog.records if "another store" in r.getMessage()]
    assert len(said) == 1 and "(store id " in said[0] and "), not of store id 0123456789abcdef:" in said[0], said
    assert "redis://" not in said[0]


async def test_a_mirror_read_that_fails_is_the_stores_error_not_a_chain_cut(
    redis_server: RedisServer, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis emptied, the checkpoints left only in the mirror, and the mirror's reads failing for a while
    (an I/O error, not damage): each file that failed was skipped as unreadable, the chain read as broken,
    and the resume began from the start, discarding the mirror's checkpoints for good. Now the load is the
    store's error (retried, nothing discarded) and, once the reads work, resumes from the newest."""
    mirror = tmp_path / "mirror"
    async with Engine(store=store_for(redis_server, mirror), settings=settings) as engine:
        op = await engine.submit(OperationSpec(type="ledger", params={"items": 6, "explicit_every": 2}))
        assert (await engine.wait(op.id, timeout=30)).status is Status.COMPLETED
    redis_server.client().flushall()
    real = mirror_module.open_regular

    def failing(path: Path, flags: int, *a: object, **k: object) -> int:
        if str(path).endswith(".delta.json"):
            raise OSError(errno.EIO, "Input/output error")
        return real(path, flags, *a, **k)  # type: ignore[arg-type]

    store = store_for(redis_server, mirror)
    await store.open()
    try:
        newest = max(cp.seq for cp in await store.checkpoints(op.id))
        monkeypatch.setattr(mirror_module, "open_regular", failing)
        with pytest.raises(StoreError, match="Input/output error"):
            await store.load_checkpoint(op.id)
        monkeypatch.setattr(mirror_module, "open_regular", real)
        found = await store.load_checkpoint(op.id)
        assert found is not None and found[0].seq == newest, found
    finally:
        await store.close()


async def test_a_half_written_checkpoint_a_killed_writer_left_is_removed_by_the_next_write(
    redis_server: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    """A process killed inside ``atomic_write`` leaves its temp file (``.NAME.PID.NS.tmp``, a checkpoint's size)
    beside the mirror's checkpoints, and nothing removed it: one per kill, for ever. The next checkpoint written
    there removes those whose writer is gone and that are a minute old; a live writer's, or a fresh one, stays."""
    mirror = tmp_path / "mirror"
    gone = dead_pid()
    async with Engine(store=store_for(redis_server, mirror), settings=settings, run_queue=False) as engine:
        op = await engine.submit(OperationSpec(type="ledger", params={"items": 3, "explicit_every": 1}))
    d = mirror / "t" / "checkpoints" / op.id
    d.mkdir(parents=True)
    left = {
        "dead, old": d / f".0000000001.ckpt.json.{gone}.1.tmp",
        "dead, fresh": d / f".0000000001.ckpt.json.{gone}.2.tmp",
        "alive, old": d / f".0000000001.ckpt.json.{os.getpid()}.3.tmp",
        "not ours": d / f".notes.txt.{gone}.tmp",
    }
    leave_temps(left)
    async with Engine(store=store_for(redis_server, mirror), settings=settings) as worker:
        assert (await worker.wait(op.id, timeout=30)).status is Status.COMPLETED
    kept = {what for what, path in left.items() if path.exists()}
    assert kept == {"dead, fresh", "alive, old", "not ours"}, kept
    assert any(n.endswith(".ckpt.json") for n in os.listdir(d))


async def test_half_written_records_and_marks_a_killed_writer_left_are_removed_by_the_restore(
    redis_server: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    """The same litter beside the mirror's records (``ops/.ID.json.PID.NS.tmp``) and its mark (``store.json``)
    stayed for ever: a restore (Redis emptied), which lists the records anyway, removes those whose writer is
    gone and that are a minute old; the rest stays."""
    mirror = tmp_path / "mirror"
    gone = dead_pid()
    async with Engine(store=store_for(redis_server, mirror), settings=settings, run_queue=False) as engine:
        op = await engine.submit(OperationSpec(type="ledger", params={"items": 1}))
    root, ops = mirror / "t", mirror / "t" / "ops"
    left = {
        "record, dead, old": ops / f".{op.id}.json.{gone}.1.tmp",
        "record, dead, fresh": ops / f".{op.id}.json.{gone}.2.tmp",
        "record, alive, old": ops / f".{op.id}.json.{os.getpid()}.3.tmp",
        "mark, dead, old": root / f".store.json.{gone}.4.tmp",
        "not ours, dead, old": root / f".notes.txt.{gone}.5.tmp",
    }
    leave_temps(left)
    redis_server.client().flushall()
    assert (await listed(redis_server, mirror, settings))[op.id].status is Status.QUEUED  # restored
    kept = {what for what, path in left.items() if path.exists()}
    assert kept == {"record, dead, fresh", "record, alive, old", "not ours, dead, old"}, kept


async def test_a_mirror_set_for_a_local_store_is_said_to_change_nothing(
    settings: Settings, redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``checkpoint_mirror`` in the config with a local store: ignored in silence, and its user counted on
    copies never written. An engine on the state dir says so once; one on Redis, which writes the mirror, not."""
    mirror = tmp_path / "mirror"
    settings = settings.model_copy(update={"checkpoint_mirror": mirror})
    said = "changes nothing here: it mirrors a Redis store's records and checkpoints"
    with caplog.at_level(logging.WARNING, logger="outlast"):
        async with Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False):
            pass
        assert [r.getMessage() for r in caplog.records if said in r.getMessage()] == [
            f"checkpoint_mirror {mirror} {said}, and this store is the state dir {settings.state_dir}, whose files"
            " are the durable copy"
        ]
        caplog.clear()
        async with Engine(store=store_for(redis_server, mirror), settings=settings) as e:
            op = await e.submit(OperationSpec(type="ledger", params={"items": 3}))
            assert (await e.wait(op.id, timeout=30)).status is Status.COMPLETED
        assert not [r for r in caplog.records if said in r.getMessage()]
    assert mirrored(mirror, op.id) is not None
