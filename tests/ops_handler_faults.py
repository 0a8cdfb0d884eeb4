"""Handlers that misbehave as users' handlers do (tests/test_handler_faults.py), as a plugin module: loaded
with ``--plugin tests.ops_handler_faults`` in a subprocess, or imported by the tests in this process.

Each appends the item keys whose body it ran to ``ledger`` (when given): what a resume runs twice or skips
is read from there."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from engine import OperationContext, OperationStopped, operation
from engine.lifecycle import StopReason


class FaultParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    how: str = ""
    items: int = 20
    seconds: float = 0.05
    ledger: str | None = None


def _ran(p: FaultParams, key: str) -> None:
    if p.ledger:
        with open(p.ledger, "a") as f:
            f.write(f"{key}\n")


@operation("fault_catches_stop", params=FaultParams)
async def catches_stop(ctx: OperationContext, p: FaultParams) -> dict[str, Any]:
    """Catches whatever stops it and returns what it has: a stop must not end it completed."""
    try:
        async for i in ctx.items(range(p.items), key=str):
            await asyncio.sleep(p.seconds)
            _ran(p, str(i))
    except BaseException as e:
        return {"partial": True, "caught": type(e).__name__}
    return {"partial": False}


@operation("fault_raises", params=FaultParams)
async def raises(ctx: OperationContext, p: FaultParams) -> dict[str, Any]:
    """Raises what ``how`` names inside its second item (``memory``: runs out of memory before its first, in its
    first attempt only)."""
    if p.how == "memory" and ctx.attempt == 1:
        _ = bytearray(1 << 60)  # MemoryError, as under ``ulimit -v``: no machine has it to give
    async for i in ctx.items(range(p.items), key=str):
        if i == 1:
            if p.how == "keyboard":
                raise KeyboardInterrupt
            if p.how == "group":
                raise BaseExceptionGroup("two", [KeyboardInterrupt(), ValueError("a")])
            if p.how == "forged_stop":  # no stop asked: a deadline passed 0 s into the run, it says
                raise OperationStopped(StopReason.TIMEOUT, True)
            if p.how == "forged_stop_group":
                raise BaseExceptionGroup("tasks", [OperationStopped(StopReason.CANCEL, True)])
            if p.how == "hangs":  # no safe point within any grace period
                _ran(p, "hangs")
                await asyncio.sleep(60)
            if p.how == "self_cancel":  # its own task: cancelling() is true, as under the engine's forced stop
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
                await asyncio.sleep(1)
            if p.how == "own_cancel":
                t = asyncio.get_running_loop().create_task(asyncio.sleep(10))
                asyncio.get_running_loop().call_later(0.05, t.cancel)
                await t
        _ran(p, str(i))
    return {"items": p.items}


class Unprintable:
    """A value no text stands for: its ``str()`` and ``repr()`` raise."""

    def __repr__(self) -> str:
        raise RuntimeError("repr boom")

    __str__ = __repr__


@operation("fault_unprintable", params=FaultParams)
async def unprintable(ctx: OperationContext, p: FaultParams) -> dict[str, Any]:
    """Reports a metric (``how`` = ``metric``) or returns a result (``result``) holding an ``Unprintable``."""
    async for i in ctx.items(range(p.items), key=str):
        if p.how == "metric":
            ctx.progress(weird=Unprintable(), fine=i)
        await asyncio.sleep(p.seconds)
    return {"r": [1, Unprintable()]} if p.how == "result" else {"items": p.items}


@operation("fault_state", params=FaultParams)
async def bad_state(ctx: OperationContext, p: FaultParams) -> dict[str, Any]:
    """Keeps the items it did as int keys of a dict in its state: a resume would read them as strings."""
    seen = ctx.state.setdefault("seen", {})
    for i in range(p.items):
        if i in seen:
            continue
        _ran(p, str(i))
        seen[i] = True
        await ctx.checkpoint()
    return {"seen": len(seen)}


@operation("fault_result", params=FaultParams)
async def changed_result(ctx: OperationContext, p: FaultParams) -> dict[str, Any]:
    """Returns a result that a task it leaves running changes after the return (a cycle added)."""
    result: dict[str, Any] = {"n": 1}

    async def later() -> None:
        await asyncio.sleep(0)
        result["self"] = result

    asyncio.get_running_loop().create_task(later())
    return result


@operation("fault_fork", params=FaultParams)
async def forks(ctx: OperationContext, p: FaultParams) -> dict[str, Any]:
    """Forks, and the child returns from the handler as the parent does."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
    return {"child": pid == 0}


class ValidatorParams(BaseModel):
    where: str = ""

    @field_validator("where")
    @classmethod
    def _boom(cls, v: str) -> str:
        if v == "type":
            raise TypeError("type boom")
        if v == "exit":
            raise SystemExit(9)
        return v


@operation("fault_validator", params=ValidatorParams)
async def validator(ctx: OperationContext, p: ValidatorParams) -> None:
    """Its params model's validator raises what pydantic passes on (not a ValueError)."""
