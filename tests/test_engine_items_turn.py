"""One turn of ``ctx.items()`` is one coroutine of its iterator (no async generator behind a wrapper, no
frame lookup): what a turn did before still holds. A loop whose iterator the handler keeps in a variable
and leaves with ``break`` is seen left when the handler's frame lets go of it (the iterator holds the task
that took its item: that must not keep it alive); a checkpoint is due after ``checkpoint_every`` items,
counted from the last checkpoint, and taken between two items."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from engine import Engine, OperationContext, OperationSpec, Status, context, operation
from tests.fixtures_engine import until


@operation("test_items_kept_then_left")
async def kept_then_left(ctx: OperationContext, p: Any) -> dict[str, Any]:
    it = ctx.items([f"k{i}" for i in range(10)])
    async for k in it:
        if k == "k4":
            break
    del it  # the loop is left here: k4 is not done, and a checkpoint is taken at once, not deferred
    await ctx.checkpoint(next_step="after the loop")
    return {"done": ctx.done, "k4": ctx.is_done("k4"), "seq": ctx.checkpoint_seq}


async def test_a_kept_iterator_left_by_break_is_left_when_let_go(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="test_items_kept_then_left"))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    assert final.result == {"done": 4, "k4": False, "seq": 1}
    got = await engine.store.load_checkpoint(op.id)
    assert got is not None
    cp, ledger = got
    assert cp.next_step == "after the loop" and ledger.done == {f"k{i}" for i in range(4)}


@operation("test_items_every")
async def every(ctx: OperationContext, p: Any) -> list[int]:
    seen = []
    async for _ in ctx.items(range(10)):
        seen.append(ctx.checkpoint_seq)  # the checkpoints saved before this item's body
    return seen


async def test_checkpoint_every_is_taken_between_items_on_the_count(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="test_items_every", profile={"checkpoint_every": 3}))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    assert final.result == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    ledger = (await engine.store.load_checkpoint(op.id))[1]  # type: ignore[index]
    assert ledger.done >= {str(i) for i in range(9)}


async def test_a_task_table_asyncio_does_not_keep_falls_back_to_asking_asyncio(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task check reads asyncio's own table of running tasks (3.11 keeps it in ``asyncio.tasks``). Where
    asyncio keeps it elsewhere the table says no task runs: seen at the first turn, and from then on
    ``asyncio.current_task`` is asked, so two tasks sharing one loop are still refused."""
    monkeypatch.setattr(context, "_task_now", lambda loop: None)
    op = await engine.submit(OperationSpec(type="test_shared_items"))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED and "ctx.items() is one loop" in (final.error or ""), final.error
    assert context._task_now is context._current_task


@operation("test_items_closed")
async def closed(ctx: OperationContext, p: Any) -> dict[str, Any]:
    async with contextlib.aclosing(ctx.items([f"k{i}" for i in range(10)])) as it:
        async for k in it:
            if k == "k2":
                break
    await ctx.checkpoint(next_step="after")
    again = [k async for k in it]  # closed: nothing more
    return {"done": ctx.done, "k2": ctx.is_done("k2"), "again": again, "seq": ctx.checkpoint_seq}


async def test_an_iterator_closed_by_aclose_leaves_its_item_not_done(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="test_items_closed"))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    assert final.result == {"done": 2, "k2": False, "again": [], "seq": 1}


@operation("test_items_own_count")
async def own_count(ctx: OperationContext, p: Any) -> dict[str, Any]:
    todo = [str(i) for i in range(20) if not ctx.is_done(str(i))]
    n = 0
    async for _k in ctx.items(todo):
        await asyncio.sleep(0.005)
        n += 1
        ctx.progress(done=n, total=len(todo))  # a count of its own: this run's list, from 0 after a resume
    return {}


async def test_a_count_of_its_own_that_goes_back_on_resume_still_checkpoints_every_n_items(engine: Engine) -> None:
    """Resumed at 10 done, the handler counted its own list from 0: checkpoint_every counted from 10, and no
    checkpoint by count came before the count passed 10 again (a kill repeated all of it)."""
    op = await engine.submit(OperationSpec(type="test_items_own_count", profile={"checkpoint_every": 3}))
    await until(lambda: (live := engine.live(op.id)) is not None and live.done >= 10)
    await engine.pause(op.id)
    paused = await engine.wait(op.id, timeout=20)
    assert paused.status is Status.PAUSED and paused.checkpoint_seq is not None
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    assert final.checkpoint_seq is not None and final.checkpoint_seq - paused.checkpoint_seq >= 2, (
        paused.checkpoint_seq,
        final.checkpoint_seq,
    )
