"""Two processes writing one operation's record into the checkpoint mirror in the other order than Redis
took their writes: a worker stopped (SIGSTOP, a suspended VM, a slow disk) between Redis taking its
``paused`` and its mirror write, while the operation was resumed and run to its end elsewhere, wrote its
``paused`` over the mirror's ``completed`` when it woke. A Redis lost later was restored from that: the
completed operation came back paused, and ran again once resumed. The writer now reads the record back
from Redis after its mirror write and writes the newer one Redis holds over its own."""

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


@pytest.mark.parametrize("late", [Status.PAUSED, Status.QUEUED])
async def test_a_late_mirror_write_leaves_the_newer_record_there(
    redis_server: RedisServer, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, late: Status
) -> None:
    """``paused``: the worker's own settle; ``queued``: a client's resume of it, late in its turn."""
    mirror = tmp_path / "mirror"
    first, other = store_for(redis_server, mirror), store_for(redis_server, mirror)
    await first.open()
    await other.open()
    try:
        op = queued_record("ledger")
        await first.create(op)
        held = await first.claim(WorkerInfo(host="a", pid=1), time.time(), 300.0, op_id=op.id)
        assert held is not None
        real_save = first.mirror.save_record  # type: ignore[union-attr]

        async def stalled(record: Operation) -> None:
            if record.status is late:  # Redis took it; the mirror write waits while the world moves on
                if late is Status.PAUSED:
                    await other.transition(op.id, Status.QUEUED, expect=frozenset({Status.PAUSED}))
                again = await other.claim(WorkerInfo(host="b", pid=2), time.time(), 300.0, op_id=op.id)
                assert again is not None
                await other.transition(op.id, Status.COMPLETED, epoch=again.epoch, finished_at=time.time())
            await real_save(record)

        monkeypatch.setattr(first.mirror, "save_record", stalled)
        if late is Status.PAUSED:
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
