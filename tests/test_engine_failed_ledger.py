"""An operation that fails (its handler raised outside any item, or called ``sys.exit(1)``) keeps what its
attempt did since the last checkpoint: the items it failed are listed by ``item_failures`` (they were
counted in progress but listed nowhere), and a resume runs neither those nor the items done again."""

from __future__ import annotations

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
