"""A running operation read from the engine that runs it shows its timeout with the basis it was computed
from: the dashboard showed "timeout 43m20s = min(max 3600s, base 600s + 1s x 0 items) = 600s" for a demo of
2,000 items (the live timeout beside the basis of the submit, read from the store) until the record's next
write, a second later."""

from __future__ import annotations

import asyncio

from engine import Engine, OperationContext, OperationSpec, Settings, Status, operation
from tests.fixtures_engine import make_engine


@operation("late_total_for_basis")
async def late_total(ctx: OperationContext, params: dict) -> None:
    await asyncio.sleep(0.5)  # its record written as running, with the basis of no total
    ctx.progress(0, total=2000)
    await asyncio.sleep(60)


async def test_the_live_timeout_and_its_basis_agree(settings: Settings) -> None:
    # The record written once a minute: what a read shows meanwhile is the engine's live view.
    async with make_engine(settings.model_copy(update={"progress_flush_interval": 60})) as engine:
        await _check(engine)


async def _check(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="late_total_for_basis", profile={"per_item_timeout": 1}))
    profile = (await engine.get(op.id)).profile
    timeout = min(profile["base_timeout"] + 2000, profile["max_timeout"])
    seen = None
    for _ in range(2000):  # the live timeout for the total, from the engine's next tick
        seen = await engine.get(op.id)
        if seen.status is Status.RUNNING and seen.effective_timeout == timeout:
            break
        await asyncio.sleep(0.005)
    assert seen is not None and seen.effective_timeout == timeout, seen
    assert seen.timeout_basis is not None and " + 1s x 2000 items)" in seen.timeout_basis, seen.timeout_basis
    await engine.cancel(op.id)
    await engine.wait(op.id, timeout=30)
