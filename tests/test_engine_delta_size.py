"""The item keys done since the last checkpoint are written in one value (its delta), and a store holds a value
up to a size (SQLite 1 GB, a Redis argument 512 MB). A quick handler's keys of one checkpoint interval (10M
keys of 100 bytes) passed it: every checkpoint was refused as a store outage, the keys it held put back for the
next one, which was larger still, so no checkpoint was ever saved again. A checkpoint is now due as soon as
those keys pass ``MAX_DELTA_BYTES``, whatever the interval. (The limit is lowered here.)"""

from __future__ import annotations

import pytest

from engine import OperationSpec, Settings, Status, limits
from tests.fixtures_engine import make_engine


async def test_keys_done_past_the_limit_make_a_checkpoint_due_before_its_interval(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_DELTA_BYTES", 1 << 20, raising=False)
    async with make_engine(settings) as engine:
        spec = OperationSpec(
            type="long_keys", params={"items": 60, "kb": 100, "d": 0.05}, profile={"checkpoint_interval": 3600}
        )
        op = await engine.submit(spec)
        final = await engine.wait(op.id, timeout=60)
        checkpoints = await engine.store.checkpoints(op.id)
    assert final.status is Status.COMPLETED, (final.status, final.status_message)
    # About 11 keys of 100 KB pass 1 MB, looked at once a second at most (20 items here, fewer on a loaded machine,
    # where a suite once saw one checkpoint in 40 items): at least one before the end, none waiting for the hour.
    done = sorted(c.processed_items for c in checkpoints)
    assert done and done[0] < 60, done
