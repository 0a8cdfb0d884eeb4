"""An item body that catches an error and raises it again (or has an ``except`` for another error, a
``finally``, a ``with``) fails that item, as a body that raises does: it failed the whole operation at its
first failing item (found with performance_testing, whose run that passed its timeout_per_run went through
such a body)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from engine import Engine, OperationContext, OperationSpec, Status, operation


@operation("hunt_reraise_body")
async def hunt_reraise_body(ctx: OperationContext, params: Any) -> dict:
    how = params["how"]
    async for i in ctx.items(range(5), key=str):
        if how == "other_except":
            try:
                if i == 1:
                    raise ValueError("boom")
            except KeyError:
                pass
        elif how == "log_and_raise":
            try:
                if i == 1:
                    raise ValueError("boom")
            except ValueError:
                ctx.log.info("saw it")
                raise
        elif how == "finally":
            try:
                if i == 1:
                    raise ValueError("boom")
            finally:
                ctx.state["seen"] = i
        elif how == "with":
            with contextlib.suppress(KeyError):
                if i == 1:
                    raise ValueError("boom")
    return {"ok": True}


@operation("hunt_break_then_reraise")
async def hunt_break_then_reraise(ctx: OperationContext, params: Any) -> dict:
    try:
        async for i in ctx.items(range(5), key=str):
            if i == 2:
                break
        raise ValueError("after the loop")
    except ValueError:
        raise


@pytest.mark.parametrize("how", ["other_except", "log_and_raise", "finally", "with"])
async def test_an_error_raised_again_in_a_body_fails_its_item(engine: Engine, how: str) -> None:
    op = await engine.submit(OperationSpec(type="hunt_reraise_body", params={"how": how}))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    assert final.progress.failed == 1 and final.progress.done == 4


async def test_an_error_raised_again_after_a_break_is_still_no_items(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="hunt_break_then_reraise", params={}))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED and "after the loop" in (final.error or "")
    assert final.progress.failed == 0
