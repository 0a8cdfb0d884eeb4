"""Counts a handler reports (``done``, ``total``) that are not whole numbers of items.

Before: ``ctx.progress(done="7")`` left its operation ``running`` for good (the final status could not be
computed, nor the internal-error fallback); ``done=3.5`` or NaN was stored, and the record could no longer
be read (``outlast ls`` refused the whole store on it); ``done=-5`` was stored and shown. Now each is a
ValueError in the handler, naming the argument and the handler's line, and the store keeps a record that
reads back."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from engine import (
    Engine,
    OperationContext,
    OperationSpec,
    Progress,
    Settings,
    Status,
    load_settings,
    open_store,
    operation,
)
from engine.context import MAX_COUNT, count_of
from tests.fixtures_redis import RedisServer

BAD: dict[str, Any] = {
    "str": "7",
    "fraction": 3.5,
    "nan": math.nan,
    "inf": math.inf,
    "negative": -5,
    "too big": 2**63,
    "list": [1],
}
HOW = ["progress done", "progress total", "advance", "set done", "set total", "update_progress"]


class Params(BaseModel):
    bad: str
    how: str


def _report(ctx: OperationContext, how: str, value: Any) -> None:
    if how == "progress done":
        ctx.progress(done=value)
    elif how == "progress total":
        ctx.progress(total=value)
    elif how == "advance":
        ctx.advance(value)
    elif how == "set done":
        ctx.done = value
    elif how == "set total":
        ctx.total = value


@operation("test_bad_count", params=Params)
async def bad_count(ctx: OperationContext, p: Params) -> None:
    ctx.progress(done=2, total=10)
    await ctx.checkpoint(now=True)
    value = BAD[p.bad]
    if p.how == "update_progress":
        await ctx.update_progress("counting", value, 10)  # the seed's call
    else:
        _report(ctx, p.how, value)
    await ctx.checkpoint(now=True)


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def any_engine(request: pytest.FixtureRequest, state_dir: Path) -> AsyncIterator[Callable[[], Engine]]:
    s: Settings = load_settings(state_dir=state_dir, plugins=["tests.test_engine_progress_values"])
    if request.param == "local":
        yield lambda: Engine(store=open_store(s.state_dir), settings=s)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        yield lambda: Engine(store=open_store(server.url, namespace="c", checkpoint_mirror=None), settings=s)


async def test_a_count_that_is_not_a_whole_number_fails_its_operation_in_one_line(
    any_engine: Callable[[], Engine],
) -> None:
    async with any_engine() as engine:
        ops = {}
        for bad in BAD:
            for how in HOW:
                ops[bad, how] = await engine.submit(
                    OperationSpec(type="test_bad_count", params={"bad": bad, "how": how})
                )
        for (bad, how), op in ops.items():
            final = await asyncio.wait_for(engine.wait(op.id), 20)  # never left running
            assert final.status is Status.FAILED, (bad, how, final.status)
            error = final.error or ""
            assert error.startswith("ValueError: ") and "\n" not in error, (bad, how, error)
            named = {"update_progress": ("processed_items", "total_items")}.get(how, ("done", "total", "advance"))
            assert any(n in error for n in named), (bad, how, error)
            assert "(at test_engine_progress_values.py:" in error, error  # the handler's line, not ours
            # What was stored reads back: the last good count, in the record and its checkpoint.
            assert final.progress.done == 2 and final.progress.total == 10, (bad, how, final.progress)
            assert [c.processed_items for c in await engine.checkpoints(op.id)] == [2], (bad, how)
        assert len(await engine.list(limit=100)) == len(ops)  # every record reads back


@given(
    st.one_of(
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.text(max_size=5),
        st.none(),
        st.decimals(allow_nan=True),
    )
)
@settings(max_examples=400, deadline=None)
def test_a_count_is_either_one_the_store_keeps_or_a_value_error(value: object) -> None:
    try:
        n = count_of(value, "done")
    except ValueError as e:
        assert str(e).startswith("done must be ") and "\n" not in str(e)
        return
    assert type(n) is int and 0 <= n <= MAX_COUNT
    assert n == value  # nothing rounded
    assert Progress.model_validate_json(Progress(done=n, total=n).model_dump_json()).done == n


@operation("test_count_overflow")
async def count_overflow(ctx: OperationContext, params: dict) -> None:
    ctx.progress(done=2, total=10)
    await ctx.checkpoint(now=True)
    ctx.advance(MAX_COUNT - 2 - 2**40)
    ctx.advance(2**40)  # at the limit: allowed
    ctx.advance(2**40)  # past it


async def test_advancing_past_the_largest_count_is_the_handler_s_value_error(any_engine: Callable[[], Engine]) -> None:
    """Two counts each in range could add up past 2**63-1: the operation then failed at its end as an
    "internal error" about ``ctx.total``, with a count no record should hold stored. Now ``advance`` says so
    at the handler's line, and the count stays the last one in range."""
    async with any_engine() as engine:
        op = await engine.submit(OperationSpec(type="test_count_overflow"))
        final = await asyncio.wait_for(engine.wait(op.id), 20)
        assert final.status is Status.FAILED, final
        error = final.error or ""
        assert error.startswith(f"ValueError: ctx.advance({2**40}): items done would pass 2**63-1"), error
        assert "(at test_engine_progress_values.py:" in error and "internal error" not in error, error
        assert final.progress.done == MAX_COUNT, final.progress
