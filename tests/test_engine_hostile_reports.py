"""What a handler reports besides counts (metrics, step, message, log fields, item failures), given values a
record cannot hold as they are.

Before: a metric holding bytes, a cycle or the context itself stopped every write of the record, the
final status included, so that completed work was found interrupted and would have run again on resume;
``ctx.step = 123`` or ``ctx.message = {...}`` was stored, and the record could no longer be read; a log
call with a cyclic field raised RecursionError in the handler and failed its operation. Each now
completes, with the record, its logs and checkpoints readable on both stores."""

from __future__ import annotations

import asyncio
import datetime
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from engine import Engine, OperationContext, OperationSpec, Settings, Status, load_settings, open_store, operation
from engine.limits import MAX_STEP_CHARS
from tests.fixtures_redis import RedisServer


def _cycle() -> dict[str, Any]:
    d: dict[str, Any] = {}
    d["me"] = d
    return d


CASES: dict[str, Callable[[OperationContext], Any]] = {
    "metric NaN": lambda ctx: ctx.progress(rate_x=math.nan),
    "metric set": lambda ctx: ctx.progress(s={1, 2}),
    "metric datetime": lambda ctx: ctx.progress(when=datetime.datetime(2026, 1, 2)),
    "metric bytes": lambda ctx: ctx.progress(b=b"\xff"),
    "metric is the context": lambda ctx: ctx.progress(ctx=ctx),
    "metric cycle": lambda ctx: ctx.progress(c=_cycle()),
    "metrics set by hand": lambda ctx: ctx.metrics.update({("a", 1): 1, "x": math.inf}),
    "step bytes": lambda ctx: ctx.progress(step=b"\xff\xfe"),
    "step set by hand": lambda ctx: setattr(ctx, "step", 123),
    "message set by hand": lambda ctx: setattr(ctx, "message", {"a": 1}),
    "step a megabyte": lambda ctx: ctx.progress(step="s" * 1_000_000),
    "message a megabyte": lambda ctx: setattr(ctx, "message", "m" * 1_000_000),
    "log message object": lambda ctx: ctx.log.info(object()),  # type: ignore[arg-type]
    "log field set": lambda ctx: ctx.log.info("m", v={1}),
    "log field cycle": lambda ctx: ctx.log.info("m", c=_cycle()),
    "item failure object": lambda ctx: ctx.fail("k", object()),  # type: ignore[arg-type]
}


class Params(BaseModel):
    case: str


@operation("test_hostile_report", params=Params)
async def hostile_report(ctx: OperationContext, p: Params) -> dict[str, Any]:
    CASES[p.case](ctx)
    await asyncio.sleep(0.25)  # the live record is written at least once with it
    await ctx.checkpoint(now=True)
    return {"ok": True}


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def any_engine(request: pytest.FixtureRequest, state_dir: Path) -> AsyncIterator[Callable[[], Engine]]:
    s: Settings = load_settings(state_dir=state_dir, plugins=["tests.test_engine_hostile_reports"])
    if request.param == "local":
        yield lambda: Engine(store=open_store(s.state_dir), settings=s)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        yield lambda: Engine(store=open_store(server.url, namespace="h", checkpoint_mirror=None), settings=s)


async def test_values_a_record_cannot_hold_as_they_are_complete_and_read_back(
    any_engine: Callable[[], Engine],
) -> None:
    async with any_engine() as engine:
        profile = {"progress_report_interval": 0.05}
        ops = {
            c: await engine.submit(OperationSpec(type="test_hostile_report", params={"case": c}, profile=profile))
            for c in CASES
        }
        for case, op in ops.items():
            final = await asyncio.wait_for(engine.wait(op.id), 20)
            assert final.status is Status.COMPLETED, (case, final.status, final.error)
            await engine.store.read_logs(op.id)
            assert len(await engine.checkpoints(op.id)) == 1, case
        assert len(await engine.list(limit=100)) == len(CASES)
        shown = {c: (await engine.store.get(op.id)).progress for c, op in ops.items()}
        assert shown["metric bytes"].metrics == {"b": "b'\\xff'"}
        assert shown["metric datetime"].metrics == {"when": "2026-01-02 00:00:00"}
        assert shown["metric NaN"].metrics == {"rate_x": None}
        assert shown["metric cycle"].metrics == {}  # no form at all: left out, said once
        assert shown["metric is the context"].metrics["ctx"].startswith("<engine.context.OperationContext object")
        assert shown["metrics set by hand"].metrics == {"('a', 1)": 1, "x": None}
        assert shown["step bytes"].step == "b'\\xff\\xfe'" and shown["step set by hand"].step == "123"
        assert shown["message set by hand"].message == "{'a': 1}"
        # Stored and written again at each report as a head saying how long it was, not a megabyte each time.
        assert shown["step a megabyte"].step == "s" * MAX_STEP_CHARS + "… (1,000,000 characters)"
        assert shown["message a megabyte"].message == "m" * MAX_STEP_CHARS + "… (1,000,000 characters)"
        logs = (await engine.store.read_logs(ops["metric cycle"].id))[0]
        said = [r.message for r in logs if r.level == "warning"]
        assert said == ["not stored: metric 'c'['me'] refers back to itself; a metric holds JSON values only"], said
        cyclic = [r for r in (await engine.store.read_logs(ops["log field cycle"].id))[0] if r.message == "m"]
        assert [r.fields for r in cyclic] == [{"fields": "not stored: they hold a cycle or nest too deep for JSON"}]
