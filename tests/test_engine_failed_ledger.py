"""An operation that fails (its handler raised outside any item, or called ``sys.exit(1)``) keeps what its
attempt did since the last checkpoint: the items it failed are listed by ``item_failures`` (they were
counted in progress but listed nowhere), and a resume runs neither those nor the items done again."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from pydantic import BaseModel

from engine import Engine, OperationContext, OperationSpec, Status, operation


class Params(BaseModel):
    how: str


@operation("test_failed_ledger", params=Params)
async def failed_ledger(ctx: OperationContext, p: Params) -> dict[str, Any]:
    ran = ctx.state.setdefault("ran", [])
    async for i in ctx.items(range(10), key=str):
        ran.append(i)
        if i == 3 and ctx.attempt == 1:
            raise ValueError(f"item {i} is broken")  # an item failure: the loop goes on
    if ctx.attempt == 1:
        if p.how == "exit":
            sys.exit(1)
        raise RuntimeError("the summary could not be written")  # outside any item: the operation fails
    return {"ran": ran}


@pytest.mark.parametrize("how", ["raise", "exit"])
async def test_a_failed_operation_keeps_its_item_failures_and_done_items(engine: Engine, how: str) -> None:
    spec = OperationSpec(type="test_failed_ledger", params={"how": how}, profile={"checkpoint_every": 1000})
    op = await engine.submit(spec)
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED, final.error
    failures = await engine.store.item_failures(op.id)
    assert [f.key for f in failures] == ["3"], failures
    assert "item 3 is broken" in failures[0].error
    # A resume (the causes fixed): the nine items done are not run again; the failed one is offered again.
    await engine.resume(op.id)
    again = await engine.wait(op.id, timeout=20)
    assert again.status is Status.COMPLETED, again.error
    assert again.result["ran"] == [*range(10), 3], again.result


HELD: dict[str, Any] = {}
"""The resumed attempt waits here (``HELD["go"]``) before its first item, so the test can look."""


@operation("test_failed_then_cut", params=Params)
async def failed_then_cut(ctx: OperationContext, p: Params) -> dict[str, Any]:
    if ctx.attempt > 1:
        HELD["resumed"].set()
        await HELD["go"].wait()
    ran = ctx.state.setdefault("ran", [])
    async for i in ctx.items(range(8), key=str):
        ran.append(i)
        if i == 2:
            await ctx.checkpoint()  # checkpoint 1, at the end of item 2: items 0-2 done
        if i == 5 and ctx.attempt == 1:
            raise ValueError("item 5 is broken")
    if ctx.attempt == 1:
        raise RuntimeError("the summary could not be written")  # checkpoint 2 holds item 5's failure
    return {"ran": ran}


async def test_a_resume_from_an_older_checkpoint_lists_the_failures_of_the_chain_it_keeps(engine: Engine) -> None:
    """Item 5 failed after checkpoint 1; resumed from checkpoint 1, the failure is cut off with the chain
    that held it: not listed (nor counted) while the resumed attempt has not reached item 5."""
    HELD.update(resumed=asyncio.Event(), go=asyncio.Event())
    op = await engine.submit(OperationSpec(type="test_failed_then_cut", params={"how": "raise"}))
    first = await engine.wait(op.id, timeout=20)
    assert first.status is Status.FAILED and first.item_failures == 1, first
    assert [f.key for f in await engine.store.item_failures(op.id)] == ["5"]
    await engine.resume(op.id, checkpoint=1)
    await asyncio.wait_for(HELD["resumed"].wait(), 20)
    assert await engine.store.item_failures(op.id) == []
    assert (await engine.store.get(op.id)).item_failures == 0
    HELD["go"].set()
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED and final.result == {"ran": [0, 1, 2, 3, 4, 5, 6, 7]}, final
    assert await engine.store.item_failures(op.id) == [] and final.item_failures == 0
