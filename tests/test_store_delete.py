"""Store.delete: an operation and all it owns go, in one fenced step, only while it is settled.

Against both stores (the local one, and a real redis-server with a checkpoint mirror): what a delete
removes; a resume or claim that lands between a caller's read and its delete makes the delete refuse
and remove nothing; and deletes racing resumes from another store instance never leave half an
operation behind.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from engine.models import (
    SETTLED,
    Checkpoint,
    Conflict,
    LogRecord,
    NotFound,
    Operation,
    Status,
    WorkerInfo,
    new_id,
)
from engine.store import LocalStore, Store
from engine.store.base import ItemDelta
from engine.store.redis import RedisStore

W = WorkerInfo(host="test", pid=1)
RESUMABLE = frozenset({Status.FAILED})

StoreFactory = Callable[[], Store]


@pytest.fixture(params=["local", "redis"])
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opened stores over the same data, as separate processes would have them (each its own connection)."""
    opened: list[Store] = []
    if request.param == "local":

        def make() -> Store:
            return LocalStore(tmp_path / "state")
    else:
        server = request.getfixturevalue("redis_server")

        def make() -> Store:
            return RedisStore(server.url, namespace="t", checkpoint_mirror=tmp_path / "mirror")

    def factory() -> Store:
        store = make()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


async def settled_op(store: Store, status: Status = Status.FAILED) -> Operation:
    """An operation that ran (a checkpoint with an item failure, log records) and settled as ``status``."""
    now = time.time()
    op = Operation(id=new_id(), type="demo", created_at=now, queued_at=now, updated_at=now)
    await store.create(op)
    claimed = await store.claim(W, time.time(), 0.0, op_id=op.id)
    assert claimed is not None
    cp = Checkpoint(operation_id=op.id, seq=1, epoch=claimed.epoch, created_at=now, state={"n": 1})
    await store.save_checkpoint(cp, ItemDelta(done=["a"], failed={"b": "boom"}), keep=3)
    await store.append_logs(op.id, [LogRecord(ts=now, level="info", message=f"line {i}") for i in range(3)])
    if status is Status.INTERRUPTED:
        await store.release(op.id)  # an interrupted operation is one whose holder is gone
    return await store.transition(op.id, status, epoch=claimed.epoch, finished_at=now, error="boom")


async def assert_intact(store: Store, op_id: str) -> None:
    """The operation and everything it owns are still there."""
    await store.get(op_id)
    assert [c.seq for c in await store.checkpoints(op_id)] == [1]
    assert await store.load_checkpoint(op_id) is not None
    assert [f.key for f in await store.item_failures(op_id)] == ["b"]
    assert len((await store.read_logs(op_id))[0]) == 3


async def assert_gone(store: Store, op_id: str) -> None:
    with pytest.raises(NotFound):
        await store.get(op_id)
    with pytest.raises(NotFound):
        await store.resolve(op_id)
    assert op_id not in {o.id for o in await store.list_operations()}
    assert await store.checkpoints(op_id) == []
    assert await store.load_checkpoint(op_id) is None
    assert await store.item_failures(op_id) == []
    assert (await store.read_logs(op_id))[0] == []


@pytest.mark.parametrize("status", sorted(s.value for s in SETTLED))
async def test_delete_removes_a_settled_operation_and_all_it_owns(new_store: StoreFactory, status: str) -> None:
    store = new_store()
    await store.open()
    op = await settled_op(store, Status(status))
    keep = await settled_op(store)
    await store.delete(op.id, expect=SETTLED)
    await assert_gone(store, op.id)
    await assert_intact(store, keep.id)
    assert sum((await store.counts()).values()) == 1
    with pytest.raises(NotFound):
        await store.delete(op.id, expect=SETTLED)
    # Another process opening the store (Redis: restoring from the mirror) finds no trace of it either.
    other = new_store()
    await other.open()
    await assert_gone(other, op.id)


async def test_delete_refuses_an_operation_not_in_the_expected_statuses(new_store: StoreFactory) -> None:
    store = new_store()
    await store.open()
    op = await settled_op(store, Status.COMPLETED)
    with pytest.raises(Conflict, match="completed"):
        await store.delete(op.id, expect=frozenset({Status.FAILED, Status.CANCELLED}))
    await assert_intact(store, op.id)


async def test_a_resume_and_claim_between_the_read_and_the_delete_make_the_delete_lose(
    new_store: StoreFactory,
) -> None:
    """The caller read the operation settled; another process resumed and claimed it meanwhile: the
    delete refuses (Conflict) and the running attempt keeps its record, checkpoints and logs."""
    deleter, resumer = new_store(), new_store()
    await deleter.open()
    await resumer.open()
    op = await settled_op(deleter)
    seen = await deleter.get(op.id)
    assert seen.status in SETTLED

    await resumer.transition(op.id, Status.QUEUED, expect=RESUMABLE)
    with pytest.raises(Conflict, match="queued"):
        await deleter.delete(op.id, expect=SETTLED)
    running = await resumer.claim(W, time.time(), 0.0, op_id=op.id)
    assert running is not None
    with pytest.raises(Conflict, match="running"):
        await deleter.delete(op.id, expect=SETTLED)

    await assert_intact(deleter, op.id)
    assert (await deleter.get(op.id)).status is Status.RUNNING
    # The attempt goes on writing, and settles as usual.
    cp = Checkpoint(operation_id=op.id, seq=2, epoch=running.epoch, created_at=time.time())
    await resumer.save_checkpoint(cp, ItemDelta(done=["b"]), keep=3)
    await resumer.transition(op.id, Status.COMPLETED, epoch=running.epoch)
    assert (await deleter.get(op.id)).status is Status.COMPLETED
    await deleter.delete(op.id, expect=SETTLED)
    await assert_gone(resumer, op.id)


async def test_deletes_racing_resumes_leave_whole_operations_or_nothing(new_store: StoreFactory) -> None:
    """Per operation, a delete and a resume from two store instances at once: exactly one wins, and the
    loser changes nothing (the resumed operation keeps all it owns; the deleted one is gone whole)."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    deleter, resumer = new_store(), new_store()
    await deleter.open()
    await resumer.open()
    ops = [await settled_op(deleter) for _ in range(8)]

    async def delete(op_id: str) -> str:
        await asyncio.sleep(rng.random() * 0.05)
        try:
            await deleter.delete(op_id, expect=SETTLED)
        except Conflict:
            return "lost"
        return "deleted"

    async def resume(op_id: str) -> str:
        await asyncio.sleep(rng.random() * 0.05)
        try:
            await resumer.transition(op_id, Status.QUEUED, expect=RESUMABLE)
        except NotFound:
            return "lost"
        return "resumed"

    outcomes = await asyncio.gather(*(asyncio.gather(delete(o.id), resume(o.id)) for o in ops))
    for op, (deleted, resumed) in zip(ops, outcomes, strict=True):
        assert {deleted, resumed} in ({"deleted", "lost"}, {"lost", "resumed"}), f"seed {seed}: {op.id}"
        if deleted == "deleted":
            await assert_gone(resumer, op.id)
        else:
            assert (await deleter.get(op.id)).status is Status.QUEUED, f"seed {seed}"
            await assert_intact(deleter, op.id)
