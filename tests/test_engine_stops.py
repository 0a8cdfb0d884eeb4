"""Every stop leaves a consistent, resumable checkpoint: a handler that leaves ``ctx.items`` with ``break``,
a stall, a forced stop, a fixed timeout."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from engine import Engine, ItemFailed, OperationContext, OperationSpec, Settings, Status, operation, supervision
from engine.errors import Conflict, StoreError, StoreFailed
from engine.models import ControlAction, Operation, WorkerInfo, new_id
from engine.store import LocalStore
from tests.fixtures_engine import collect, make_engine, until


class BreakParams(BaseModel):
    items: int = 50
    break_at: int = 7
    checkpoint_after: bool = True
    raise_after: bool = False


@operation("test_break_then_wait", params=BreakParams)
async def break_then_wait(ctx: OperationContext, p: BreakParams) -> dict:
    """Leaves the items loop with ``break``, then checkpoints (or not) and waits cooperatively."""
    ctx.state.setdefault("sum", 0)
    async for i in ctx.items(range(p.items), key=str):
        if i == p.break_at:
            break
        ctx.state["sum"] += i
    if p.raise_after:
        raise ValueError("after the loop")
    if p.checkpoint_after:
        await ctx.checkpoint(next_step="after the loop")
    while True:
        await asyncio.sleep(0.02)
        ctx.progress(message="waiting")  # a safe point: raises OperationStopped once a stop is asked for


async def test_break_then_explicit_checkpoint_and_pause(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="test_break_then_wait", params={"break_at": 7}))
    cps = await until(lambda: engine.checkpoints(op.id), timeout=20)
    assert cps[-1].processed_items == 7 and cps[-1].next_step == "after the loop"
    _cp, ledger = await engine.store.load_checkpoint(op.id)
    assert ledger.done == {str(i) for i in range(7)}  # the item the body broke out of is not done
    await engine.pause(op.id)
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.PAUSED, final.status_message
    assert "forced" not in (final.status_message or "")


async def test_break_then_pause_saves_final_checkpoint(engine: Engine) -> None:
    op = await engine.submit(
        OperationSpec(type="test_break_then_wait", params={"break_at": 9, "checkpoint_after": False})
    )
    await until(lambda: (r := engine.live(op.id)) is not None and r.message == "waiting", timeout=20)
    assert await engine.checkpoints(op.id) == []
    await engine.pause(op.id)
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.PAUSED and "forced" not in (final.status_message or ""), final.status_message
    cp, ledger = await engine.store.load_checkpoint(op.id)
    assert ledger.done == {str(i) for i in range(9)} and cp.state == {"sum": sum(range(9))}


async def test_a_final_checkpoint_refused_as_stale_stops_the_attempt_without_an_internal_error(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Another attempt took the operation while this one ran (a lease run out under a frozen Redis; here
    its epoch is moved by hand), then this one is paused: its final checkpoint is refused as stale. That
    escaped as an "internal error settling the attempt" with a traceback, and a write of `failed` was
    tried over the other attempt's record. Now it stops, one warning, and writes nothing more."""
    op = await engine.submit(
        OperationSpec(type="test_break_then_wait", params={"break_at": 9, "checkpoint_after": False})
    )
    await until(lambda: (r := engine.live(op.id)) is not None and r.message == "waiting", timeout=20)
    held = await engine.store.get(op.id)
    db = sqlite3.connect(Path(engine.settings.state_dir) / "outlast.db")  # what another claim does
    with db:
        db.execute(
            "UPDATE operations SET epoch=epoch+1, record=json_set(record, '$.epoch', epoch+1) WHERE id=?", (op.id,)
        )
    db.close()
    with caplog.at_level(logging.WARNING, logger="outlast"):
        await engine.pause(op.id)
        await until(lambda: op.id not in engine.running_ids, timeout=20)
    assert not [r for r in caplog.records if "internal error" in r.getMessage()], caplog.text
    assert any("this attempt stops without writing" in r.getMessage() for r in caplog.records), caplog.text
    after = await engine.store.get(op.id)
    assert after.status is Status.RUNNING and after.epoch == held.epoch + 1  # the other attempt's, untouched


async def test_error_after_break_is_not_blamed_on_an_item(engine: Engine) -> None:
    failed = collect(engine, (ItemFailed,))
    op = await engine.submit(OperationSpec(type="test_break_then_wait", params={"break_at": 3, "raise_after": True}))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED and "after the loop" in final.error
    assert failed == [] and final.progress.failed == 0


async def _newest(engine: Engine, op_id: str) -> tuple[int, set[str]]:
    got = await engine.store.load_checkpoint(op_id)
    assert got is not None, "no checkpoint was saved"
    return got[0].processed_items, got[1].done


async def test_cooperative_stall_saves_final_checkpoint(engine: Engine) -> None:
    op = await engine.submit(
        OperationSpec(type="silent", params={"items": 5, "hang_after": 2}, profile={"stall_timeout": 0.5})
    )
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.TIMED_OUT and final.status_message.startswith("stalled"), final.status_message
    assert (await _newest(engine, op.id))[0] == 2
    assert final.checkpoint_seq is not None and f"checkpoint {final.checkpoint_seq}" in final.status_message


async def test_forced_stall_keeps_the_last_durable_checkpoint_and_state_agrees_with_it(settings: Settings) -> None:
    """A body that hangs past the grace period is cancelled where it stands. It may have changed
    ctx.state half-way, so no final checkpoint is written over it (the done-set and the state would
    disagree): the newest durable checkpoint stays the resume point (DESIGN: a forced stop loses at
    most one checkpoint interval), the log says why, and the status line names that checkpoint."""
    settings.grace_period = 0.3
    async with make_engine(settings) as engine:
        op = await engine.submit(
            OperationSpec(
                type="demo",
                params={"items": 20, "seconds": 0.06, "hang_at": 6},
                profile={"stall_timeout": 0.5, "checkpoint_interval": 0.1},
            )
        )
        final = await engine.wait(op.id, timeout=30)
        assert final.status is Status.TIMED_OUT and "forced" in final.status_message, final.status_message
        done, keys = await _newest(engine, op.id)
        assert 0 < done <= 6 and keys == {str(i) for i in range(done)}  # never the item cut off
        assert f"checkpoint {final.checkpoint_seq}" in final.status_message
        logs, _ = await engine.logs(op.id)
        assert any("final checkpoint skipped: item '6' was cut off mid-body" in r.message for r in logs)
        # The resume starts at the checkpoint, not at 0: it hangs at 6 again and saves nothing past it.
        await engine.resume(op.id)
        again = await engine.wait(op.id, timeout=30)
        assert again.status is Status.TIMED_OUT
        done_again, keys_again = await _newest(engine, op.id)
        assert done <= done_again <= 6 and "6" not in keys_again
        logs, _ = await engine.logs(op.id)
        assert any("resuming from checkpoint" in r.message and f"{done} items done" in r.message for r in logs)


async def test_fixed_timeout_is_not_extended(engine: Engine) -> None:
    """A rate that would finish well within max_timeout extends a profile's deadline, never a fixed one."""
    op = await engine.submit(
        OperationSpec(
            type="ledger",
            params={"items": 400, "seconds": 0.02},
            timeout=0.5,
            profile={"base_timeout": 0.1, "per_item_timeout": 0, "max_timeout": 600},
        )
    )
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.TIMED_OUT, final.status_message
    assert final.extensions == 0 and final.progress.done < 400
    assert (await _newest(engine, op.id))[0] == final.progress.done


class SeedLoopParams(BaseModel):
    items: int = 3000


@operation("test_seed_loop", params=SeedLoopParams)
async def seed_loop(ctx: OperationContext, p: SeedLoopParams) -> dict:
    """The seed's loop as code migrated to it is written: every item in ``try: ... except Exception``
    (log the error, go on with the next file), progress and checkpoints inside it."""
    done: list[int] = list(ctx.get_resume_data().intermediate_results["done"]) if ctx.should_resume() else []
    errors: list[str] = []
    for i in range(len(done), p.items):
        try:
            await asyncio.sleep(0 if ctx.should_resume() else 0.005)  # the first attempt cannot finish in time
            done.append(i)
            await ctx.update_progress(f"item {i}", len(done), p.items)
            if len(done) % 5 == 0:
                await ctx.save_checkpoint({"done": done}, f"item {i + 1}")
        except Exception as e:
            errors.append(f"item {i}: {e!r}")
    return {"done": done, "errors": errors}


@pytest.mark.parametrize("action", ["pause", "cancel"])
async def test_a_stop_is_not_swallowed_by_except_exception_in_the_handler(settings: Settings, action: str) -> None:
    """A stop reaches the handler at its next safe point as OperationStopped, which ``except Exception``
    must not catch: else a pause or a cancel (Ctrl-C, the dashboard, a timeout) waited out the grace
    period, logged a failure for every item of it, and an operation shorter than that completed after
    being cancelled. A resume then does every item exactly once, as an uninterrupted run does."""
    settings.grace_period = 60  # a stop that waits for the grace period fails this test's waits
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="test_seed_loop"))
        await until(lambda: (r := engine.live(op.id)) is not None and r.done >= 12, timeout=20)
        await getattr(engine, action)(op.id)
        final = await engine.wait(op.id, timeout=10)
        assert final.status is (Status.PAUSED if action == "pause" else Status.CANCELLED), final.status_message
        assert "forced" not in (final.status_message or ""), final.status_message
        logs, _ = await engine.logs(op.id)
        assert not any("OperationStopped" in r.message for r in logs)
        if action == "cancel":
            return
        await engine.resume(op.id)
        resumed = await engine.wait(op.id, timeout=30)
        assert resumed.status is Status.COMPLETED, resumed.status_message
        assert resumed.result == {"done": list(range(3000)), "errors": []}


@operation("test_stop_in_task_group")
async def stop_in_task_group(ctx: OperationContext) -> dict:
    """Safe points in tasks of an ``asyncio.TaskGroup``: a stop leaves it in an exception group."""

    async def part(n: int) -> None:
        while True:
            await asyncio.sleep(0.01)
            ctx.progress(message=f"part {n}")

    async with asyncio.TaskGroup() as tg:
        tg.create_task(part(1))
        tg.create_task(part(2))
    return {}


async def test_a_stop_raised_in_a_task_group_stops_the_operation(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="test_stop_in_task_group"))
    await until(lambda: (r := engine.live(op.id)) is not None and (r.message or "").startswith("part"), timeout=20)
    await engine.pause(op.id)
    final = await engine.wait(op.id, timeout=10)
    assert final.status is Status.PAUSED and "forced" not in (final.status_message or ""), final.status_message


@operation("test_blocks_the_loop")
async def blocks_the_loop(ctx: OperationContext) -> dict:
    time.sleep(1.2)  # blocking work on the event loop, as a handler should not do
    return {}


async def test_a_handler_blocking_the_event_loop_is_named_with_where_it_stands(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every timer (timeouts, Ctrl-C, pause, cancel) waits while a handler blocks the loop: the engine
    says so once, naming the operation and the line it is held at. An idle loop says nothing."""
    monkeypatch.setattr(supervision, "LOOP_BLOCKED", 0.4)
    caplog.set_level(logging.WARNING, logger="outlast.engine")
    async with make_engine(settings) as engine:
        await asyncio.sleep(1.0)  # idle: waiting in select is not being blocked
        assert not [r for r in caplog.records if "event loop" in r.getMessage()]
        op = await engine.submit(OperationSpec(type="test_blocks_the_loop"))
        assert (await engine.wait(op.id, timeout=20)).status is Status.COMPLETED
    said = [r.getMessage() for r in caplog.records if "event loop has not turned" in r.getMessage()]
    assert len(said) == 1, said
    assert f"test_blocks_the_loop {op.id}" in said[0] and "test_engine_stops.py" in said[0], said[0]
    assert "in blocks_the_loop" in said[0] and "asyncio.to_thread" in said[0]


@pytest.mark.parametrize("asked", [("pause", "cancel"), ("cancel", "pause")])
@pytest.mark.parametrize("where", ["here", "another engine"])
async def test_a_cancel_wins_over_a_pause_asked_before_or_after_it(
    settings: Settings, asked: tuple[str, str], where: str
) -> None:
    """A cancel asked while a pause was pending was answered "cancel requested" (HTTP 202, the CLI), and the
    operation ended paused: the first stop reason won, and through the store a later pause replaced a
    cancel. A cancel gives the operation up; a pause keeps it: the cancel wins, in either order. A pause
    asked after the cancel is refused, saying so: it was answered "pause requested" of work that ended
    cancelled."""
    async with make_engine(settings) as engine, make_engine(settings, run_queue=False) as other:
        op = await engine.submit(OperationSpec(type="test_break_then_wait", params={"break_at": 5}))
        await until(lambda: (r := engine.live(op.id)) is not None and r.message == "waiting", timeout=20)
        asking = engine if where == "here" else other
        first, then = asked
        await getattr(asking, first)(op.id)
        if then == "pause":
            with pytest.raises(Conflict, match=r"is stopping already \(cancel\): it ends cancelled, not paused"):
                await asking.pause(op.id)
        else:
            await asking.cancel(op.id)
        final = await engine.wait(op.id, timeout=20)
        assert final.status is Status.CANCELLED, (final.status, final.status_message)


class _ReadsFailAfterARequest(LocalStore):
    """A local store whose reads fail once a stop request is stored (its disk failing right after the write)."""

    asked = False

    async def request_control(self, op_id: str, action: ControlAction) -> ControlAction | None:
        held = await super().request_control(op_id, action)
        self.asked = True
        return held

    async def get(self, op_id: str) -> Operation:
        if self.asked:
            raise StoreFailed(f"state dir {self.state_dir}: outlast.db cannot be read (I/O error)", "I/O error")
        return await super().get(op_id)


@pytest.mark.parametrize("action", ["cancel", "pause"])
async def test_a_stop_stored_before_the_store_failed_says_it_was_requested(settings: Settings, action: str) -> None:
    """A cancel (or pause) of work another process runs, stored, then the read of what it became failed: the
    command said only "outlast.db cannot be read" (exit 8), which reads as "nothing was asked", and the work
    was cancelled all the same (the race test on a failing disk). The error now says it was requested."""
    store = _ReadsFailAfterARequest(settings.state_dir)
    engine = Engine(store=store, settings=settings, run_queue=False)
    await engine.start()
    try:
        now = time.time()
        op = Operation(id=new_id(), type="demo", created_at=now, queued_at=now, updated_at=now)
        await store.create(op)
        assert await store.claim(WorkerInfo(host="elsewhere", pid=1), now, 0, op_id=op.id) is not None
        with pytest.raises(StoreError, match=f"{action} requested .*could not be read"):
            await getattr(engine, action)(op.id)
        store.asked = False
        assert (await store.pending_controls([op.id])).get(op.id) == action
    finally:
        await engine.shutdown()
