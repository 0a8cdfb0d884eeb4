"""Item keys that are not strings (``key=lambda i: i``, a Path): a checkpoint lists keys as JSON text, and
one listing ints was written but never read back, so every resume started from scratch and each item
done before it ran again, said only as "no checkpoint verifies" on resume. Such a key is kept as its
str, said once per attempt, and a resume skips exactly the items done."""

from __future__ import annotations

import asyncio
from pathlib import PurePosixPath
from typing import Any

import pytest
from pydantic import BaseModel

from engine import Engine, Operation, OperationContext, OperationSpec, Status, operation
from tests.fixtures_engine import paused_and_resumed, until

KEYS: dict[str, Any] = {
    "int": lambda i: i,
    "float": lambda i: i / 2,
    "path": lambda i: PurePosixPath("src") / f"f{i}.py",
    "tuple": lambda i: ("batch", i),
}


class Params(BaseModel):
    kind: str


@operation("test_item_keys", params=Params)
async def item_keys(ctx: OperationContext, p: Params) -> dict[str, Any]:
    ran = ctx.state.setdefault("ran", [])
    async for i in ctx.items(range(40), key=KEYS[p.kind]):
        await asyncio.sleep(0.005)
        ran.append(i)
        if i == 7:
            ctx.skip(KEYS[p.kind](39), "not wanted")  # skip and fail take such keys too
            ctx.fail(KEYS[p.kind](38), "broken")
    return {"ran": ran, "done_7": ctx.is_done(KEYS[p.kind](7))}


@pytest.mark.parametrize("kind", sorted(KEYS))
async def test_keys_that_are_not_strings_resume_exactly(engine: Engine, kind: str) -> None:
    op = await engine.submit(
        OperationSpec(type="test_item_keys", params={"kind": kind}, profile={"checkpoint_every": 5})
    )
    final = await paused_and_resumed(engine, op.id, 12)
    assert final.status is Status.COMPLETED, final.error
    ran = final.result["ran"]
    # Each once; 39 skipped for good; 38, failed in the first attempt, offered again and done in the second.
    assert sorted(ran) == list(range(39)) and len(ran) == len(set(ran)), ran
    assert final.result["done_7"] is True
    warnings = [r.message for r in (await engine.store.read_logs(op.id))[0] if "is not a str" in r.message]
    assert len(warnings) == 2, warnings  # once per attempt
    assert await engine.store.item_failures(op.id) == []


@operation("test_item_keys_twice")
async def item_keys_twice(ctx: OperationContext, p: Any) -> dict[str, Any]:
    ran = []
    async for name in ctx.items(["a/README.md", "a/x.py", "b/README.md", "b/y.py"], key=lambda f: f.split("/")[1]):
        ran.append(name)
    async for name in ctx.items(["a/x.py"], key=lambda f: f.split("/")[1]):  # a second pass, same keys
        ran.append(name)
    return {"ran": ran}


async def test_a_key_shared_by_two_items_is_said_not_skipped_in_silence(engine: Engine) -> None:
    """Two items with one key (``key=basename`` over a tree) run once: the second was skipped as done
    without a word, as was every item of a second loop over the same keys."""
    final = await engine.wait((await engine.submit(OperationSpec(type="test_item_keys_twice"))).id, timeout=20)
    assert final.status is Status.COMPLETED and final.result["ran"] == ["a/README.md", "a/x.py", "b/y.py"]
    warnings = [r.message for r in (await engine.store.read_logs(final.id))[0] if r.level == "warning"]
    assert len(warnings) == 2 and all("came again after it was done" in w for w in warnings), warnings
    assert warnings[0].startswith("item key 'README.md' came again") and "'x.py'" in warnings[1]
    # Said where `ls` and `show` show it too, not in the log alone: "completed" with work skipped read as all done
    # (an outside hour: a second pass and the inner loops of a second directory skipped, "completed", 3/3).
    assert final.status_message == (
        "completed; 2 items skipped: their keys were done earlier in this run (item keys are one space for the"
        " whole operation: see the log)"
    ), final.status_message


KEY_VERSION = {"prefix": "v1"}


@operation("test_item_keys_versioned")
async def item_keys_versioned(ctx: OperationContext, p: Any) -> dict[str, Any]:
    async for _i in ctx.items(range(30), key=lambda i: f"{KEY_VERSION['prefix']}-{i}"):
        await asyncio.sleep(0.005)
    async for _j in ctx.items(range(3), key=lambda j: f"phase2-{j}"):  # a second loop, none of it done before
        pass
    return {}


async def _paused_then_resumed(engine: Engine, op_type: str, changed: bool) -> tuple[Operation, list[str]]:
    """Run ``op_type`` until 10 items are done, pause it, resume it with the item keys changed or not: its
    final record and what its log said of changed keys."""
    KEY_VERSION["prefix"] = "v1"
    op = await engine.submit(OperationSpec(type=op_type, profile={"checkpoint_every": 5}))
    await until(lambda: (live := engine.live(op.id)) is not None and live.done >= 10)
    await engine.pause(op.id)
    assert (await engine.wait(op.id, timeout=20)).status is Status.PAUSED
    KEY_VERSION["prefix"] = "v2" if changed else "v1"
    try:
        await engine.resume(op.id)
        final = await engine.wait(op.id, timeout=20)
    finally:
        KEY_VERSION["prefix"] = "v1"
    assert final.status is Status.COMPLETED
    said = [r.message for r in (await engine.store.read_logs(op.id))[0] if "did the item keys change" in r.message]
    return final, said


@pytest.mark.parametrize("changed", [True, False])
async def test_a_resume_whose_item_keys_changed_says_every_item_ran_again(engine: Engine, changed: bool) -> None:
    """A new version of a handler with other item keys resumed an old operation: none of the done keys
    came up, every item ran again, and nothing said so. Said once at the loop's end; a resume that met
    its done keys (and a later loop with none of them) says nothing."""
    _, said = await _paused_then_resumed(engine, "test_item_keys_versioned", changed)
    assert len(said) == (1 if changed else 0), said


@operation("test_item_keys_filtered")
async def item_keys_filtered(ctx: OperationContext, p: Any) -> dict[str, Any]:
    key = lambda i: f"{KEY_VERSION['prefix']}-{i}"  # noqa: E731
    todo = [i for i in range(30) if not ctx.is_done(key(i))]  # the done ones left out here, not by the loop
    async for _i in ctx.items(todo, key=key):
        await asyncio.sleep(0.005)
    return {"todo": len(todo)}


@pytest.mark.parametrize("changed", [True, False])
async def test_a_handler_that_leaves_out_the_done_items_itself_is_not_told_its_keys_changed(
    engine: Engine, changed: bool
) -> None:
    """The built-ins (indexing, backup, the analyses) filter their done items with ``ctx.is_done`` before
    the loop, which then meets none of them: every resume of theirs said that every item ran again and
    asked whether the item keys changed."""
    final, said = await _paused_then_resumed(engine, "test_item_keys_filtered", changed)
    assert (final.result["todo"] == 30) is changed, final.result
    assert len(said) == (1 if changed else 0), said


@operation("test_item_keys_batches_by_state")
async def item_keys_batches_by_state(ctx: OperationContext, p: Any) -> dict[str, Any]:
    ctx.total = 30
    ran = ctx.state.setdefault("ran", [])
    for b in range(ctx.state.get("next_batch", 0), 30, 10):  # resumes from its own state: one loop a batch
        async for i in ctx.items(range(b, b + 10)):
            ran.append(i)
        ctx.state["next_batch"] = b + 10
        while ctx.attempt == 1 and b == 0 and not ctx.cancelled:  # paused here, between two batches
            await asyncio.sleep(0.005)
        await ctx.checkpoint()  # the stop's too
    return {"ran": ran}


async def test_a_handler_resuming_from_its_own_state_a_loop_a_batch_is_not_told_its_keys_changed(
    engine: Engine,
) -> None:
    """A loop per batch, the next batch kept in ``ctx.state``: resumed, its loops meet none of the done keys
    (it leaves them out itself), and each batch's loop said that every item had been run again and asked
    whether the item keys changed, when each ran once."""
    op = await engine.submit(OperationSpec(type="test_item_keys_batches_by_state"))
    final = await paused_and_resumed(engine, op.id, 10)
    assert final.status is Status.COMPLETED, final.error
    assert final.result["ran"] == list(range(30))
    said = [r.message for r in (await engine.store.read_logs(op.id))[0] if r.level == "warning"]
    assert said == [], said


@operation("test_item_keys_none")
async def item_keys_none(ctx: OperationContext, p: Any) -> dict[str, Any]:
    def key(i: int) -> Any:
        name = f"item-{i}"  # noqa: F841  # its return forgotten

    ran = []
    async for i in ctx.items(range(10), key=key):
        ran.append(i)
    return {"ran": ran}


async def test_a_key_function_that_returns_nothing_fails_the_operation_in_one_line(engine: Engine) -> None:
    """A key function without its ``return`` gives None for every item: the first ran, the other nine were
    skipped as done (a warning that the key came again) and the operation completed."""
    final = await engine.wait((await engine.submit(OperationSpec(type="test_item_keys_none"))).id, timeout=20)
    assert final.status is Status.FAILED, final.result
    assert final.error is not None and final.error.startswith("TypeError: an item key is None"), final.error
    assert "test_engine_item_keys.py" in final.error and "\n" not in final.error


class _Task:
    def __init__(self, i: int) -> None:
        self.i = i


@operation("test_item_keys_address", params=Params)
async def item_keys_address(ctx: OperationContext, p: Params) -> dict[str, Any]:
    tasks = [_Task(i) for i in range(5)]
    ran = []
    async for t in ctx.items(tasks, key=(lambda t: t) if p.kind == "key" else None):
        ran.append(t.i)
    return {"ran": ran}


@pytest.mark.parametrize("kind", ["default", "key"])
async def test_an_item_named_by_its_address_fails_the_operation_in_one_line(engine: Engine, kind: str) -> None:
    """Objects without a ``__str__`` of their own were keyed by their address in memory, another on every run:
    a resume ran every item again (said, at best, once the loop had run them all)."""
    op = await engine.submit(OperationSpec(type="test_item_keys_address", params={"kind": kind}))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED, final.result
    assert final.error is not None and final.error.startswith("TypeError: item key <"), final.error
    assert "default str is its address in memory" in final.error and "test_engine_item_keys.py" in final.error


@operation("test_nested_progress")
async def nested_progress(ctx: OperationContext, p: Any) -> dict[str, Any]:
    seen = []
    async for d in ctx.items([f"d{i}" for i in range(p["dirs"])]):
        async for _f in ctx.items([f"{d}/f{j}" for j in range(p["files"])]):
            seen.append((ctx.done, ctx.total))
            await asyncio.sleep(0)
    if p.get("total"):  # the handler's own total stays
        ctx.progress(total=p["dirs"] * (p["files"] + 1))
        async for _d in ctx.items(["again"]):
            async for _f in ctx.items(["again/f"]):
                seen.append((ctx.done, ctx.total))
    return {"seen": seen}


async def test_nested_loops_show_no_total_rather_than_the_outer_loops_length(engine: Engine) -> None:
    """The outer loop's length was the total while every inner item counted in done: 10 directories of 100 files
    read 90/10, 100%, ETA 0, for the whole run (an outside hour). A nested loop drops a total that was only the
    outer loop's length: done counts on with no total, unless the handler gives one."""
    op = await engine.submit(OperationSpec(type="test_nested_progress", params={"dirs": 3, "files": 4}))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    assert all(total is None for _, total in final.result["seen"]), final.result["seen"]
    assert final.progress.done == 15 and final.progress.total == 15  # at the end, the total is what was done
    op = await engine.submit(OperationSpec(type="test_nested_progress", params={"dirs": 2, "files": 2, "total": 1}))
    final = await engine.wait(op.id, timeout=20)
    assert final.result["seen"][-1][1] == 6, final.result["seen"]
