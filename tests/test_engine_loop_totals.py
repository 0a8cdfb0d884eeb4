"""The total a ``ctx.items`` loop gives is its length, and no more than that: a second pass over the same files
(the README's ``key=lambda p: f"pass2:{p}"``) counted on past it ("paused at 15/10 items", "100%, eta 0s" with
half the work left). Past it, no total is shown, as for nested loops, unless the handler gives one."""

from __future__ import annotations

import asyncio
from typing import Any

from engine import Engine, OperationContext, OperationSpec, Status, operation
from tests.fixtures_engine import until

PASS2_HELD = asyncio.Event()


@operation("test_loop_totals_two_passes")
async def two_passes(ctx: OperationContext, p: Any) -> dict[str, Any]:
    files = [f"f{i}" for i in range(5)]
    async for _f in ctx.items(files):
        await asyncio.sleep(0)
    async for f in ctx.items(files, key=lambda f: f"pass2:{f}"):
        if f == "f2" and ctx.attempt == 1:
            await PASS2_HELD.wait()  # the test looks at the progress here, 7 items done
    return {}


async def test_a_second_pass_counts_past_no_total(engine: Engine) -> None:
    PASS2_HELD.clear()
    op = await engine.submit(OperationSpec(type="test_loop_totals_two_passes"))
    live = await until(lambda: (live := engine.live(op.id)) is not None and live.done == 7 and live)
    assert live.total is None and live.eta is None, live  # was 7/5, 100%, eta 0s
    await engine.pause(op.id)
    PASS2_HELD.set()
    paused = await engine.wait(op.id, timeout=20)
    assert paused.status is Status.PAUSED and paused.progress.done == 8, paused
    assert paused.progress.total is None, paused.progress
    got = await engine.store.load_checkpoint(op.id)
    assert got is not None and got[0].total_items is None, got[0]
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED and (final.progress.done, final.progress.total) == (10, 10), final
