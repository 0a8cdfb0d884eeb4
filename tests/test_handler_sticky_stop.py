"""A stop raised into a handler stays raised: every later safe point raises it again (in this process).

The subprocess tests of ``test_handler_hangs`` show what a user saw; these pin the context's rule itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine import Engine, OperationContext, OperationSpec, OperationStopped, Status, operation
from tests.fixtures_engine import until

SEEN: dict[str, list[str]] = {}


@operation("test_sticky_probe")
async def sticky_probe(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """Catches the first stop, then tries each safe point in turn, noting what each does."""
    seen = SEEN.setdefault(ctx.id, [])
    try:
        async for _ in ctx.items(range(1000), key=str):
            await asyncio.sleep(0.02)
    except OperationStopped:
        seen.append("first")
    for name, call in (("progress", lambda: ctx.progress(1)), ("advance", lambda: ctx.advance(1))):
        try:
            call()
            seen.append(f"{name} returned")
        except OperationStopped:
            seen.append(f"{name} raised")
    try:
        await ctx.checkpoint(next_step="x")
        seen.append("checkpoint returned")
    except OperationStopped:
        seen.append("checkpoint raised")
    except asyncio.CancelledError:
        seen.append("checkpoint cancelled")
    try:
        async for i in ctx.items(range(1000, 1010), key=str):
            seen.append(f"item {i}")
    except OperationStopped:
        seen.append("items raised")
    except asyncio.CancelledError:  # seen catching the stop, it is cancelled without waiting for the grace
        seen.append("items cancelled")
    raise OperationStopped(ctx.stop_reason, checkpointed=False)  # type: ignore[arg-type]  # now it goes


async def test_every_safe_point_raises_a_stop_the_handler_caught(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="test_sticky_probe"))
    for _ in range(100):
        if (await engine.get(op.id)).progress.done >= 3:
            break
        await asyncio.sleep(0.05)
    await engine.pause(op.id)
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.PAUSED, final.status_message
    seen = SEEN[op.id]
    assert seen[:3] == ["first", "progress raised", "advance raised"], seen
    assert seen[3] in ("checkpoint raised", "checkpoint cancelled"), seen
    assert seen[4:] in (["items raised"], ["items cancelled"]), seen  # never an item
    # The handler came back to safe points after catching the stop: cancelled at once, then settled
    # when the stop it raised at the end went out (no abandonment: it did end).
    assert "abandoned" not in (final.status_message or ""), final.status_message


@operation("test_sticky_cancel_swallowed")
async def cancel_swallowed(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """asyncio's way of cleaning up on cancel: the forced cancel caught, a partial result returned."""
    async for i in ctx.items(range(5), key=str):
        try:
            await asyncio.sleep(3600)  # no safe point within the grace period
        except asyncio.CancelledError:
            return {"partial": i}
    return {"all": True}


async def test_a_handler_that_catches_the_forced_cancel_and_returns_is_stopped_not_completed(engine: Engine) -> None:
    """A pause whose grace period passed cancels the handler's task; one that caught that cancel and returned
    was "completed at 0/5 items" with its partial result: its items never run, and a completed operation
    cannot be resumed. It is paused (forced) as if it had let the cancel through, its result not kept."""
    op = await engine.submit(OperationSpec(type="test_sticky_cancel_swallowed"))
    await until(lambda: engine.live(op.id) is not None)
    await engine.pause(op.id)
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.PAUSED and final.result is None, (final.status, final.result)
    assert "forced after" in (final.status_message or ""), final.status_message
    await engine.resume(op.id)  # resumable: the items run (and are cut off again) on resume
    assert (await engine.get(op.id)).status in (Status.QUEUED, Status.RUNNING)
    await engine.cancel(op.id)
    assert (await engine.wait(op.id, timeout=30)).status is Status.CANCELLED


@operation("test_sticky_cancel_converted")
async def cancel_converted(ctx: OperationContext, params: Any) -> None:
    """A library's way: the cancel turned into an error of its own."""
    async for _ in ctx.items(range(5), key=str):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("request aborted") from None


async def test_a_handler_that_turns_the_forced_cancel_into_an_error_is_stopped_not_failed(engine: Engine) -> None:
    """The cancel that forced a pause, raised again as a RuntimeError by the handler (or a library it awaits),
    failed the operation: a Ctrl-C exited 1, and a worker's SIGTERM under auto_resume left it failed for good."""
    op = await engine.submit(OperationSpec(type="test_sticky_cancel_converted"))
    await until(lambda: engine.live(op.id) is not None)
    await engine.pause(op.id)
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.PAUSED and final.error is None, (final.status, final.error)
    assert "forced after" in (final.status_message or ""), final.status_message
