"""A checkpoint state that JSON cannot hold fails the operation with a message naming the value and where
it is, not the encoder's ("Object of type datetime is not JSON serializable (at encoder.py:180)"); a
result that JSON cannot hold completes the operation without it, said in its log."""

from __future__ import annotations

import dataclasses
import datetime
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from engine import Engine, OperationContext, OperationSpec, Status, operation
from engine.text import not_json


def _cycle() -> dict[str, Any]:
    a: dict[str, Any] = {}
    a["again"] = a
    return a


BAD: dict[str, tuple[Any, str]] = {
    "datetime": (datetime.date(2026, 12, 2), "ctx.state['x'] is a date"),
    "set": ({1, 2}, "ctx.state['x'] is a set"),
    "nested": ({"a": [1, {"b": b"raw"}]}, "ctx.state['x']['a'][1]['b'] is a bytes"),
    "key": ({(1, 2): "v"}, "ctx.state['x'] has a key that is a tuple ((1, 2))"),
    "cycle": (_cycle(), "ctx.state['x']['again'] refers back to itself"),
    "long int": (10 ** (sys.get_int_max_str_digits() + 1), "ctx.state['x'] is an integer too long for JSON"),
}


class Params(BaseModel):
    kind: str


LOOP_LINE = next(
    n for n, line in enumerate(Path(__file__).read_text().splitlines(), 1) if line.endswith("# LOOP_" + "LINE")
)


@operation("test_state_value", params=Params)
async def state_value(ctx: OperationContext, p: Params) -> dict:
    async for i in ctx.items(range(3), key=str):  # LOOP_LINE
        if i == 1:
            ctx.state["x"] = BAD[p.kind][0]
    return {"never": True}


@pytest.mark.parametrize("kind", sorted(BAD))
async def test_a_value_json_cannot_hold_is_named_with_its_place(engine: Engine, kind: str) -> None:
    op = await engine.submit(
        OperationSpec(type="test_state_value", params={"kind": kind}, profile={"checkpoint_every": 1})
    )
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED
    assert f"checkpoint not saved: {BAD[kind][1]}; a checkpoint holds JSON values only" in (final.error or "")
    # At the handler's line that checkpointed (its loop), not the store's (read as a bug in Outlast).
    assert (final.error or "").endswith(f"(at test_engine_state_values.py:{LOOP_LINE})"), final.error


def test_json_values_are_not_reported() -> None:
    assert not_json({"a": [1, 2.5, None, True, "s", {"b": (1, 2)}], 3: "int key"}, "v") is None


RESULTS: dict[str, tuple[Any, Any, str | None]] = {
    # returned, stored, the warning (None: stored as it is, or as its str)
    "datetime": ({"at": datetime.date(2026, 12, 2)}, {"at": "2026-12-02"}, None),
    "nan": ({"x": [math.nan, math.inf, 1.5]}, {"x": [None, None, 1.5]}, None),
    "key": ({(1, 2): "v"}, None, "result has a key that is a tuple ((1, 2))"),
    "cycle": (_cycle(), None, "result['again'] refers back to itself"),
    "long int": ({"n": 10 ** (sys.get_int_max_str_digits() + 1)}, None, "result['n'] is an integer too long for JSON"),
    "deep": ("deep", None, "result[0][0][0][0]... nests 100,001 lists or dicts deep, past the limit of 200"),
    # Past pydantic's 255 but not the stack's: the record that held it could not be written, and the operation
    # was left running until the process exited, then found interrupted.
    "300 deep": (
        "300 deep",
        None,
        "result['x']['x']['x']['x']... nests 301 lists or dicts deep, past the limit of 200",
    ),
}


def _nest(levels: int) -> dict[str, Any]:
    """``{"x": {"x": ...}}``, ``levels`` dicts inside the outer one."""
    top = inner = {}
    for _ in range(levels):
        inner["x"] = {}
        inner = inner["x"]
    return top


def _returned(kind: str) -> Any:
    if kind == "300 deep":
        return _nest(300)
    if kind == "deep":
        value: Any = []
        for _ in range(100_000):
            value = [value]
        return value
    return RESULTS[kind][0]


@operation("test_result_value", params=Params)
async def result_value(ctx: OperationContext, p: Params) -> Any:
    ctx.progress(1, total=1)
    return _returned(p.kind)


@pytest.mark.parametrize("kind", sorted(RESULTS))
async def test_a_result_json_cannot_hold_completes_without_it(engine: Engine, kind: str) -> None:
    """Such a result raised inside the attempt as it completed: the operation stayed running, with no
    attempt behind it, until the process exited (and "Task exception was never retrieved")."""
    op = await engine.submit(OperationSpec(type="test_result_value", params={"kind": kind}))
    final = await engine.wait(op.id, timeout=20)
    _, stored, warning = RESULTS[kind]
    assert final.status is Status.COMPLETED and final.result == stored, (final.status, final.error)
    logs = [r.message for r in (await engine.store.read_logs(op.id))[0] if r.level == "warning"]
    assert logs == ([f"result not stored: {warning}; a result holds JSON values only"] if warning else []), logs


WHOLE: dict[str, Any] = {"none": None, "list": [1, 2], "str": "done"}


@operation("test_state_whole", params=Params)
async def state_whole(ctx: OperationContext, p: Params) -> dict:
    async for i in ctx.items(range(3), key=str):
        if i == 1:
            ctx.state = WHOLE[p.kind]
    return {"never": True}


@pytest.mark.parametrize("kind", sorted(WHOLE))
async def test_a_state_that_is_not_a_dict_is_named(engine: Engine, kind: str) -> None:
    """``ctx.state = None`` was saved, no resume could read it back, and the next attempt started again from
    the first item without a word."""
    op = await engine.submit(
        OperationSpec(type="test_state_whole", params={"kind": kind}, profile={"checkpoint_every": 1})
    )
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED, final.result
    name = type(WHOLE[kind]).__name__
    assert f"checkpoint not saved: ctx.state is a {name}, not a dict" in (final.error or ""), final.error


DEEP: dict[str, tuple[int, str]] = {
    # how it is nested, and what is said
    "state 1200": (1200, "ctx.state['x']['x']['x']['x']... nests 1,202 lists or dicts deep, past the limit of 200"),
    "state 300": (300, "ctx.state['x']['x']['x']['x']... nests 302 lists or dicts deep, past the limit of 200"),
    "context_data": (1200, "ctx.context_data['x']['x']['x']['x']... nests 1,202 lists or dicts deep"),
    "seed": (1200, "ctx.state['x']['x']['x']['x']... nests 1,202 lists or dicts deep"),
}


@operation("test_state_deep", params=Params)
async def state_deep(ctx: OperationContext, p: Params) -> dict:
    levels = DEEP[p.kind][0]
    try:
        if p.kind == "context_data":
            await ctx.checkpoint(now=True, x=_nest(levels))
        elif p.kind == "seed":
            await ctx.save_checkpoint({"x": _nest(levels)}, "next")
        else:
            ctx.state["x"] = _nest(levels)
            await ctx.checkpoint(now=True)
    except TypeError as e:  # NotJSON, as for a set or a cycle
        ctx.state.clear()
        return {"error": type(e).__name__, "message": str(e)}
    return {"never": True}


@pytest.mark.parametrize("kind", sorted(DEEP))
async def test_a_state_nested_too_deep_is_named_with_its_depth(engine: Engine, kind: str) -> None:
    """1,200 levels: "internal error: RecursionError" from JSON's encoder, two tracebacks on stderr, and
    ``ctx.checkpoint`` raised RecursionError where a set or a cycle raises NotJSON naming the key."""
    op = await engine.submit(OperationSpec(type="test_state_deep", params={"kind": kind}))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    assert final.result is not None and final.result["error"] == "NotJSON", final.result
    assert final.result["message"].startswith(f"checkpoint not saved: {DEEP[kind][1]}"), final.result


@operation("test_metric_deep")
async def metric_deep(ctx: OperationContext, params: Any) -> dict:
    ctx.progress(1, total=2, deep=_nest(300), fine=3)
    await ctx.checkpoint(now=True)
    return {"done": True}


async def test_a_metric_nested_too_deep_is_left_out(engine: Engine) -> None:
    """300 levels: JSON wrote it, pydantic (writing the record) refused it, and the operation stayed running
    with every write of its record failing, then was found interrupted."""
    op = await engine.submit(OperationSpec(type="test_metric_deep"))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED and final.result == {"done": True}, (final.status, final.error)
    assert "deep" not in final.progress.metrics and final.progress.metrics.get("fine") == 3
    logs = [r.message for r in (await engine.store.read_logs(op.id))[0] if r.level == "warning"]
    assert logs == [
        "not stored: metric 'deep'['x']['x']['x']['x']... nests 301 lists or dicts deep, past the limit of 200;"
        " a metric holds JSON values only"
    ], logs


class ResultModel(BaseModel):
    files: int
    top: list[tuple[str, int]]


@dataclasses.dataclass
class ResultRow:
    path: Path
    lines: int


@operation("test_result_models")
async def result_models(ctx: OperationContext, p: Any) -> Any:
    return {"model": ResultModel(files=3, top=[("the", 4)]), "rows": [ResultRow(Path("/a"), 2)]}


async def test_a_result_that_is_a_pydantic_model_or_a_dataclass_is_stored_as_its_fields(engine: Engine) -> None:
    """A plugin's own result model (its params are one) was stored as its ``str``: "files=3 top=[('the', 4)]"."""
    op = await engine.submit(OperationSpec(type="test_result_models"))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    assert final.result == {"model": {"files": 3, "top": [["the", 4]]}, "rows": [{"path": "/a", "lines": 2}]}
