"""``ctx.items`` loops nested (directories, then each one's files): the inner loop took the one slot that
says whose body runs, so an outer item was never counted done; every resume ran the body of each outer item
done before it again, and an item failure inside the inner loop is still that inner item's."""

from __future__ import annotations

import asyncio
from typing import Any

from engine import Engine, OperationContext, OperationSpec, Status, operation
from tests.fixtures_engine import paused_and_resumed, until


@operation("test_items_nested")
async def nested(ctx: OperationContext, p: Any) -> dict[str, Any]:
    ran = ctx.state.setdefault("ran", [])
    async for d in ctx.items([f"d{i}" for i in range(4)]):
        async for f in ctx.items([f"{d}/f{j}" for j in range(3)]):
            await asyncio.sleep(0.005)
            if f == p.get("fail"):
                raise ValueError("broken")
            ran.append(f)
        async for f in ctx.items([f"{d}/g{j}" for j in range(2)]):  # a second inner loop in the same body
            ran.append(f)
        ran.append(d)
    return {"ran": ran, "done": sorted(k for k in ctx.done_keys if "/" not in k)}


async def test_an_outer_item_is_done_once_its_body_ends_and_not_run_again_on_resume(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="test_items_nested"))
    final = await paused_and_resumed(engine, op.id, 14)  # into d2
    assert final.status is Status.COMPLETED, final.error
    ran = final.result["ran"]
    want = [
        x for i in range(4) for x in [*(f"d{i}/f{j}" for j in range(3)), *(f"d{i}/g{j}" for j in range(2)), f"d{i}"]
    ]
    assert ran == want, ran  # each once, in order (state and ledger agree at the pause's checkpoint)
    assert final.result["done"] == ["d0", "d1", "d2", "d3"]


async def test_an_inner_item_that_raises_is_the_failed_one(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="test_items_nested", params={"fail": "d1/f1"}))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    failures = await engine.store.item_failures(op.id)
    assert [f.key for f in failures] == ["d1/f1"], failures


@operation("test_items_stop_before_loop")
async def stop_before_loop(ctx: OperationContext, p: Any) -> dict[str, Any]:
    ran = ctx.state.setdefault("ran", [])
    async for i in ctx.items(range(3)):
        ran.append(i)
    while ctx.attempt == 1 and not ctx.cancelled:  # between two loops (listing the next batch's files)
        await asyncio.sleep(0.005)
    async for i in ctx.items(range(3, 6)):
        ran.append(i)
    return {"ran": ran}


async def test_a_stop_asked_before_a_loop_stops_it_before_its_first_item(engine: Engine) -> None:
    """The first turn of a loop did not look for a stop: one more item ran after a pause (a long one held it)."""
    op = await engine.submit(OperationSpec(type="test_items_stop_before_loop"))
    await until(lambda: (live := engine.live(op.id)) is not None and live.done >= 3)
    await engine.pause(op.id)
    assert (await engine.wait(op.id, timeout=20)).status is Status.PAUSED
    got = await engine.store.load_checkpoint(op.id)
    assert got is not None and got[0].state["ran"] == [0, 1, 2] and got[1].done == {"0", "1", "2"}
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED and final.result["ran"] == list(range(6))


@operation("test_items_async_source")
async def async_source(ctx: OperationContext, p: Any) -> dict[str, Any]:
    async def files() -> Any:
        yield "a.py"

    async for _f in ctx.items(files()):  # type: ignore[arg-type]
        pass
    return {}


async def test_an_async_iterable_is_named_in_one_line(engine: Engine) -> None:
    final = await engine.wait((await engine.submit(OperationSpec(type="test_items_async_source"))).id, timeout=20)
    assert final.status is Status.FAILED
    assert final.error is not None and final.error.startswith(
        "TypeError: ctx.items() takes an iterable (a list, a generator), not an async one (async_generator)"
    ), final.error
    assert "test_engine_items_nested.py" in final.error


@operation("test_items_two_loops_at_once")
async def two_loops_at_once(ctx: OperationContext, p: Any) -> dict[str, Any]:
    async def worker(name: str) -> None:
        async for _k in ctx.items([f"{name}{j}" for j in range(5)]):
            await asyncio.sleep(0.005)

    await asyncio.gather(worker("a"), worker("b"))
    return {"done": len(ctx.done_keys)}


async def test_two_loops_running_items_at_once_fail_the_operation_in_one_line(engine: Engine) -> None:
    """One slot says whose body runs: the other loop's item was never counted done (9 of 10 done, the tenth
    run again on resume), and a checkpoint between the items of one held half an item of the other."""
    op = await engine.submit(OperationSpec(type="test_items_two_loops_at_once"))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED, final.result
    assert final.error is not None and "two ctx.items() loops ran at once" in final.error, final.error
    assert "item failures exceed" not in final.error  # not the failure of the item whose body ran meanwhile
    assert await engine.store.item_failures(op.id) == []


@operation("test_items_nested_helper")
async def nested_helper(ctx: OperationContext, p: Any) -> dict[str, Any]:
    ran: list[str] = []

    async def files(d: str) -> None:  # the inner loop in a helper of its own
        async for f in ctx.items([f"{d}/f{j}" for j in range(3)]):
            if f == p.get("fail"):
                raise ValueError("broken")
            ran.append(f)

    async for d in ctx.items([f"d{i}" for i in range(3)]):
        await files(d)
        if d == p.get("fail_after_break"):
            async for _f in ctx.items([f"{d}/g{j}" for j in range(3)]):
                break
            raise ValueError("broken after the inner loop")
        ran.append(d)
    return {"ran": ran}


async def test_an_inner_item_that_raises_in_a_helper_is_the_failed_one(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="test_items_nested_helper", params={"fail": "d1/f1"}))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    assert [f.key for f in await engine.store.item_failures(op.id)] == ["d1/f1"]
    assert "d1/f2" in final.result["ran"] and "d1" in final.result["ran"]  # the rest of d1 ran


async def test_an_outer_body_that_raises_after_an_inner_break_is_the_failed_one(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="test_items_nested_helper", params={"fail_after_break": "d1"}))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    assert [f.key for f in await engine.store.item_failures(op.id)] == ["d1"]
    assert final.result["ran"][-4:] == ["d2/f0", "d2/f1", "d2/f2", "d2"]
