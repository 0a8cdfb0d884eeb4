"""Handlers that misbehave at a stop, for the hang tests (``--plugin tests.ops_misbehaving``).

Each item body appends its index to the file ``log`` (a ledger of item executions), so a test can tell an
item run twice or never from one run once, and see whether any body ran after a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from typing import Any

from engine import OperationContext, operation


def _ran(path: str, i: int) -> None:
    with open(path, "a") as f:
        f.write(f"{i}\n")


def _delay(ctx: OperationContext, params: Any) -> float:
    """An item's time: ``d`` on the first attempt, where the stop lands; none on a resume, which the tests
    only run to the end to compare its ledger (the suite's time, not what is tested)."""
    return 0.0 if ctx.resuming else float(params.get("d", 0.1))


@operation("mb_swallow")
async def swallow(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """Catches every stop (and the forced cancel) around its loop and enters the loop again."""
    while True:
        try:
            async for i in ctx.items(range(params.get("n", 100)), key=str):
                await asyncio.sleep(_delay(ctx, params))
                _ran(params["log"], i)
            return {"n": params.get("n", 100)}
        except BaseException as e:  # the misbehaviour under test
            ctx.log.info(f"swallowed {type(e).__name__}")
            continue


@operation("mb_forever")
async def forever(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """Catches the stop, then waits for ever, catching the forced cancel too (on a resume it behaves)."""
    try:
        async for i in ctx.items(range(params.get("n", 100)), key=str):
            await asyncio.sleep(_delay(ctx, params))
            _ran(params["log"], i)
    except BaseException:  # the misbehaviour under test
        if ctx.resuming and params.get("behave_on_resume", True):
            raise
        while True:
            with contextlib.suppress(BaseException):
                await asyncio.sleep(3600)
    return {"n": params.get("n", 100)}


@operation("mb_thread")
async def leaves_a_thread(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """Starts a non-daemon thread that never ends, then completes."""

    def for_ever() -> None:
        while True:
            time.sleep(1)

    threading.Thread(target=for_ever, name="left-by-handler", daemon=False).start()
    async for i in ctx.items(range(params.get("n", 3)), key=str):
        await asyncio.sleep(0.05)
        _ran(params["log"], i)
    return {"n": params.get("n", 3)}


@operation("mb_blocks_and_returns")
async def blocks_and_returns(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """Blocking work on the event loop that catches whatever ends it and returns what it has (``except
    BaseException: return partial``): a second Ctrl-C breaks into it, and it returns. ``then``: ``raise`` a
    RuntimeError of its own instead. ``held``: a file made as the hold begins; once there, nothing holds."""
    async for i in ctx.items(range(params.get("n", 5)), key=str):
        try:
            if i == 0 and not os.path.exists(params["held"]):  # the first attempt's: where the test's signals land
                open(params["held"], "w").close()  # the test's sign that the loop is held from now on
                time.sleep(float(params.get("hold", 30)))
        except BaseException:  # the misbehaviour under test
            if params.get("then") == "raise":
                raise RuntimeError("aborted") from None
            return {"partial": i}
        _ran(params["log"], i)
    return {"n": params.get("n", 5)}
