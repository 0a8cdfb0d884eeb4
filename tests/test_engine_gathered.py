"""A handler whose tasks checkpoint at once (``asyncio.gather`` of workers, each calling
``save_checkpoint``, as code written for the seed does): every checkpoint links to the one before it,
so they must be saved one at a time in order. On the Redis store two in flight at once broke the
chain: every checkpoint from there on was invalid, and a resume found none to start from."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, OperationContext, OperationSpec, Settings, load_settings, open_store, operation
from tests.fixtures_redis import RedisServer

TASKS, ROUNDS = 8, 30


@operation("test_gathered")
async def gathered(ctx: OperationContext, p: Any) -> dict[str, int]:
    async def worker(t: int) -> None:
        for n in range(ctx.state.get(f"t{t}", -1) + 1, ROUNDS):
            await ctx.save_checkpoint({f"t{t}": n}, next_step=f"task {t} round {n}")  # type: ignore[attr-defined]
            if n == ROUNDS // 2 and not ctx.resuming:
                await ctx.update_progress(f"task {t} halfway", t)  # type: ignore[attr-defined]
                while True:  # held here until paused (progress() raises the stop): resumed from the newest
                    await asyncio.sleep(0.02)
                    ctx.progress()

    await asyncio.gather(*(worker(t) for t in range(TASKS)))
    return {k: v for k, v in ctx.state.items()}


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def any_engine(request: pytest.FixtureRequest, state_dir: Path) -> AsyncIterator[Callable[[], Engine]]:
    # tests.ops_for_tests: test_shared_items is there; it was found only when another module of the same worker
    # had imported it first (alone, this file failed "unknown operation type").
    plugins = ["tests.test_engine_gathered", "tests.ops_for_tests"]
    s: Settings = load_settings(state_dir=state_dir, plugins=plugins, grace_period=5.0)
    if request.param == "local":
        yield lambda: Engine(store=open_store(s.state_dir), settings=s)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        yield lambda: Engine(store=open_store(server.url, namespace="g", checkpoint_mirror=None), settings=s)


async def test_checkpoints_of_tasks_saved_at_once_stay_a_valid_chain(any_engine: Callable[[], Engine]) -> None:
    async with any_engine() as engine:
        op = await engine.submit(OperationSpec(type="test_gathered"))
        for _ in range(400):
            cps = await engine.store.checkpoints(op.id)
            if cps and cps[0].seq >= TASKS * (ROUNDS // 2 + 1):
                break
            await asyncio.sleep(0.05)
        await engine.pause(op.id)
        paused = await engine.wait(op.id, timeout=20)
        assert paused.status.value == "paused", paused
        cps = await engine.store.checkpoints(op.id)
        assert cps and all(c.valid for c in cps), [(c.seq, c.valid) for c in cps]
        newest = await engine.store.load_checkpoint(op.id)
        assert newest is not None and newest[0].seq == cps[0].seq
        assert newest[0].state == {f"t{t}": ROUNDS // 2 for t in range(TASKS)}
        await engine.resume(op.id)
        done = await engine.wait(op.id, timeout=30)
        assert done.status.value == "completed", done.error
        assert done.result == {f"t{t}": ROUNDS - 1 for t in range(TASKS)}
        assert all(c.valid for c in await engine.store.checkpoints(op.id))


async def test_one_items_loop_shared_by_tasks_fails_instead_of_marking_running_items_done(
    any_engine: Callable[[], Engine],
) -> None:
    """Asking for the next item ends the body of the one before: a second task's loop did that while the
    first task's body still ran, so an item was checkpointed done that never finished (lost on a kill)."""
    async with any_engine() as engine:
        op = await engine.submit(OperationSpec(type="test_shared_items"))
        final = await engine.wait(op.id, timeout=20)
        assert final.status.value == "failed" and "ctx.items() is one loop" in (final.error or ""), final.error


LEFT: list[str] = []
"""What the task a handler left running was told, per operation."""
KEPT: set[asyncio.Task[None]] = set()


@operation("test_left_running")
async def left_running(ctx: OperationContext, p: Any) -> None:
    async def beyond() -> None:  # a task the handler starts and never awaits
        for _ in range(100):
            await asyncio.sleep(0.02)
            ctx.advance()
            try:
                await ctx.checkpoint(now=True)
            except Exception as e:
                LEFT.append(f"{type(e).__name__}: {e}")
                return

    KEPT.add(asyncio.get_running_loop().create_task(beyond()))
    await ctx.checkpoint(now=True)
    await asyncio.sleep(0.1)


async def test_a_task_a_handler_left_running_cannot_checkpoint_the_settled_operation(
    any_engine: Callable[[], Engine],
) -> None:
    """On the local store it went on writing checkpoints of the completed operation (30 past the end);
    had it been paused, its resume point would have moved on behind the user's back."""
    LEFT.clear()
    async with any_engine() as engine:
        op = await engine.submit(OperationSpec(type="test_left_running"))
        final = await engine.wait(op.id, timeout=20)
        seqs = [c.seq for c in await engine.store.checkpoints(op.id)]
        for _ in range(100):
            if LEFT:
                break
            await asyncio.sleep(0.02)
        assert [c.seq for c in await engine.store.checkpoints(op.id)] == seqs
        assert (await engine.store.get(op.id)).checkpoint_seq == final.checkpoint_seq
        assert len(LEFT) == 1 and LEFT[0].startswith("StaleAttempt: ") and "is completed now" in LEFT[0], LEFT
