"""A checkpoint larger than a store can hold (SQLite's largest value, 1 GB; Redis's largest argument, 512 MB)
was refused by the store at every write, which the engine took for a store outage: "the store cannot be
written (string or blob too big)", the attempt ended interrupted (exit 8) after ``store_outage_limit``, and so
did every resume, or the operation ran to its end with no checkpoint at all. A payload over
``MAX_CHECKPOINT_BYTES`` is now the handler's to fix: refused at its safe point, naming its size, the
checkpoints before it kept. (The limit is lowered here: a real one takes gigabytes of memory to reach.)"""

from __future__ import annotations

import pytest

from engine import OperationSpec, Settings, Status, limits
from tests.fixtures_engine import make_engine


async def test_a_checkpoint_over_the_limit_fails_its_operation_naming_its_size(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_CHECKPOINT_BYTES", 1 << 20, raising=False)
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="big_state", params={"chars": 1 << 20}))
        final = await engine.wait(op.id, timeout=30)
        checkpoints = await engine.store.checkpoints(op.id)
    assert final.status is Status.FAILED, (final.status, final.status_message)
    assert "over the limit of 1,048,576" in (final.error or ""), final.error
    assert "keep bulk data in your own output" in (final.error or ""), final.error
    assert [c.seq for c in checkpoints] == [1] and checkpoints[0].valid, checkpoints  # item 0's, kept
