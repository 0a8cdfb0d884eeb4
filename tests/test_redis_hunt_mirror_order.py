"""Two processes writing one operation's record into the checkpoint mirror in the other order than Redis
took their writes: a worker stopped (SIGSTOP, a suspended VM, a slow disk) between Redis taking its
``paused`` and its mirror write, while the operation was resumed and run to its end elsewhere, wrote its
``paused`` over the mirror's ``completed`` when it woke (and so did a client's late resume, or a submit's
record written after a worker had run the operation to its end). A Redis lost later was restored from that: the
completed operation came back paused, and ran again once resumed. The writer now reads the record back
from Redis after its mirror write and writes the newer one Redis holds over its own; a submit's record is
written only where the mirror has none (a submit's every round trip counts)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine import Engine, Settings, Status, load_settings, open_store
from engine.models import Operation, WorkerInfo
from engine.store.redis import RedisStore
from tests.fixtures_engine import queued_record
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


def store_for(server: RedisServer, mirror: Path) -> RedisStore:
    return open_store(server.url, namespace="t", checkpoint_mirror=mirror)  # type: ignore[return-value]


def mirrored(mirror: Path, op_id: str) -> Operation:
    return Operation.model_validate_json((mirror / "t" / "ops" / f"{op_id}.json").read_bytes())


@pytest.mark.parametrize("late", ["paused", "resumed", "created"])
async def test_a_late_mirror_write_leaves_the_newer_record_there(
    redis_server: RedisServer, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, late: str
) -> None:
    """``paused``: the worker's own settle; ``resumed``: a client's resume of it (``queued``); ``created``: the
    submit's own record, written after a worker had claimed and completed the operation."""
    mirror = tmp_path / "mirror"
    async with store_for(redis_server, mirror):  # a mirror in use already (a new one is filled from Redis)
        pass
    first, other = store_for(redis_server, mirror), store_for(redis_server, mirror)
    await first.open()
    await other.open()
    try:
        op = queued_record("ledger")
        real_save = first.mirror.save_record  # type: ignore[union-attr]
        stall = {"paused": Status.PAUSED, "resumed": Status.QUEUED, "created": Status.QUEUED}[late]
        calls: list[Operation] = []

        async def stalled(record: Operation, new: bool = False) -> None:
            if record.status is stall and not calls:  # Redis took it; its mirror write waits
                calls.append(record)
                if late == "paused":
                    await other.transition(op.id, Status.QUEUED, expect=frozenset({Status.PAUSED}))
                again = await other.claim(WorkerInfo(host="b", pid=2), time.time(), 300.0, op_id=op.id)
                assert again is not None
                await other.transition(op.id, Status.COMPLETED, epoch=again.epoch, finished_at=time.time())
            await (real_save(record, new=True) if new else real_save(record))

        if late == "created":
            monkeypatch.setattr(first.mirror, "save_record", stalled)
        await first.create(op)
        if late != "created":
            held = await first.claim(WorkerInfo(host="a", pid=1), time.time(), 300.0, op_id=op.id)
            assert held is not None
            monkeypatch.setattr(first.mirror, "save_record", stalled)
            if late == "paused":
                await first.transition(op.id, Status.PAUSED, epoch=held.epoch)
            else:
                await other.transition(op.id, Status.PAUSED, epoch=held.epoch)
                await first.transition(op.id, Status.QUEUED, expect=frozenset({Status.PAUSED}))
        assert mirrored(mirror, op.id).status is Status.COMPLETED
    finally:
        await first.close()
        await other.close()
    redis_server.client().flushall()  # Redis lost: what comes back is what the mirror holds
    settings: Settings = load_settings(state_dir=state_dir, plugins=["tests.ops_for_tests"])
    async with Engine(store=store_for(redis_server, mirror), settings=settings, run_queue=False) as engine:
        assert (await engine.get(op.id)).status is Status.COMPLETED
