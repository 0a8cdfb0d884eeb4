"""Local store: a resume and the claim of the same operation committed in one group keep the new attempt's lock."""

from __future__ import annotations

import asyncio
import os
import time

from engine import OperationSpec, Settings, Status
from engine.models import WorkerInfo
from tests.fixtures_engine import make_engine


async def test_resume_and_claim_in_one_commit_group_keep_the_lock(settings: Settings) -> None:
    """The transition out of running lets go of the lock after its commit; a claim later in the same
    group took the lock again, and letting go of it made the running attempt look orphaned."""
    async with make_engine(settings, run_queue=False) as engine:
        store = engine.store
        me = WorkerInfo(host="test", pid=os.getpid())
        op = await engine.submit(OperationSpec(type="demo", params={"items": 1}))
        assert (await store.claim(me, time.time(), 0, op_id=op.id)) is not None
        await store.transition(op.id, Status.PAUSED, expect=frozenset({Status.RUNNING}))
        # Hold the writer thread so that the two writes below are committed as one group.
        busy = store.worker.run_txn(lambda conn: time.sleep(0.3))
        resumed = asyncio.ensure_future(store.transition(op.id, Status.QUEUED, expect=frozenset({Status.PAUSED})))
        claimed = asyncio.ensure_future(store.claim(me, time.time(), 0, op_id=op.id))
        await busy
        await resumed
        assert (await claimed).status is Status.RUNNING
        assert (await store.get(op.id)).status is Status.RUNNING
        assert await store.find_orphans() == []
