"""Listing an operation's checkpoints (``outlast show``, ``outlast checkpoints``, the dashboard's checkpoints
pane at every poll) read every kept payload at once and decoded each whole in Python for its next step; a
resume read them all at once too. Five checkpoints of a 36 MB state took ``outlast checkpoints`` to 585 MB
and 6.5 s. A payload is now read one at a time, its next step taken by SQLite's JSON functions."""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

from engine import OperationContext, OperationSpec, Settings, Status, operation
from tests.fixtures_engine import make_engine


async def test_a_listing_of_checkpoints_holds_one_payload_at_a_time(settings: Settings) -> None:
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="dict_state", params={"items": 5, "n": 40_000}))
        assert (await engine.wait(op.id, timeout=60)).status is Status.COMPLETED
        store = engine.store
        sizes = [c.size for c in await store.checkpoints(op.id)]
        tracemalloc.start()
        try:
            listed = await store.checkpoints(op.id)
            _, listing_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        newest = await store.load_checkpoint(op.id)  # read newest first, one at a time: the newest it is
    assert [c.next_step for c in listed] == [f"after {i}" for i in (4, 3, 2, 1, 0)] and all(c.valid for c in listed)
    assert newest is not None and newest[0].next_step == "after 4"
    one = max(sizes)
    # Before: all five payloads held at once, each decoded into Python objects (15 times one payload here).
    assert listing_peak < 3 * one, (listing_peak, sizes)


@operation("test_nan_state")
async def nan_state(ctx: OperationContext, params: Any) -> dict:
    """One checkpoint whose state holds a NaN (which Python's JSON writes and SQLite's JSON does not read)."""
    ctx.state["ratio"] = math.nan
    await ctx.checkpoint("after the NaN")
    return {}


async def test_a_payload_sqlite_does_not_read_as_json_still_lists_its_next_step(settings: Settings) -> None:
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="test_nan_state"))
        assert (await engine.wait(op.id, timeout=30)).status is Status.COMPLETED
        listed = await engine.store.checkpoints(op.id)
    assert [(c.next_step, c.valid) for c in listed][-1:] == [("after the NaN", True)], listed
