"""Handlers for the clock's tests (``plugins=["tests.ops_clock"]``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from engine import OperationContext, operation


def hold_the_gil(seconds: float) -> None:
    """Compute for about ``seconds`` in one C call that never lets go of the GIL (a big integer power):
    no other thread of the process runs meanwhile, as under a regex backtracking or a large sort."""
    probe = 1_000_000
    t = time.perf_counter()
    _ = 3**probe
    took = max(time.perf_counter() - t, 1e-4)
    # Karatsuba: the time grows as the exponent's size to the power log2(3)
    _ = 3 ** min(int(probe * (seconds / took) ** (1 / 1.585)), 200_000_000)
    left = seconds - (time.perf_counter() - t)
    if left > 0.05:  # a probe slowed by a loaded machine (CI) made the hold a third as long: held the rest
        _ = 3 ** min(int(probe * (left / took) ** (1 / 1.585)), 200_000_000)


@operation("gil_hog")
async def gil_hog(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """Hold the GIL for ``hold`` seconds before the first item, then ``items`` items of ``d`` seconds."""
    items = int(params.get("items", 5))
    ctx.progress(0, total=items)
    if not ctx.resuming:
        hold_the_gil(float(params.get("hold", 3.5)))
    async for _ in ctx.items(range(items), key=str):
        await asyncio.sleep(float(params.get("d", 0.2)))
    return {"items": items}


@operation("sleeper")
async def sleeper(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """Hold the event loop with ``time.sleep(hold)`` before the first item (blocking work on the loop, as a
    handler should not do), then ``items`` items of ``d`` seconds."""
    items = int(params.get("items", 3))
    ctx.progress(0, total=items)
    time.sleep(float(params.get("hold", 2.5)))
    async for _ in ctx.items(range(items), key=str):
        await asyncio.sleep(float(params.get("d", 0.05)))
    return {"items": items}


@operation("warmup")
async def warmup(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """``items`` items: the first takes ``first`` seconds (a cold start), each other one ``d``."""
    items = int(params["items"])
    ctx.progress(0, total=items)
    async for i in ctx.items(range(items), key=str):
        await asyncio.sleep(float(params["first"]) if i == 0 else float(params["d"]))
    return {"items": items}


@operation("estimating")
async def estimating(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """``items`` items of ``d`` seconds, the total estimated again at each (a little more, or exact)."""
    items = int(params["items"])
    for i in range(items):
        ctx.progress(i, total=items + i % 3)
        await asyncio.sleep(float(params["d"]))
    ctx.progress(items, total=items)
    return {"items": items}


@operation("finishing")
async def finishing(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """``items`` quick items, then ``steps`` steps of 0.2s after them (writing an index, a report)."""
    items = int(params["items"])
    ctx.progress(0, total=items)
    async for _ in ctx.items(range(items), key=str):
        await asyncio.sleep(0.01)
    for k in range(int(params["steps"])):
        ctx.progress(step=f"writing the index, part {k}")
        await asyncio.sleep(0.2)
    return {"items": items}


@operation("far_total")
async def far_total(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """``items`` items of ``d`` seconds out of a total of 10^15: its ETA is a million years on."""
    ctx.progress(0, total=10**15)
    for i in range(int(params["items"])):
        await asyncio.sleep(float(params["d"]))
        ctx.progress(i + 1)
    return {}


@operation("burst_then_slow")
async def burst_then_slow(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """``burst`` items at once out of ``total``, then ``slow`` items of ``d`` seconds each, then nothing until
    stopped (work standing still)."""
    ctx.progress(int(params["burst"]), total=int(params["total"]))
    for _ in range(int(params["slow"])):
        await asyncio.sleep(float(params["d"]))
        ctx.advance()
    await asyncio.Event().wait()
    return {}


@operation("counts_left")
async def counts_left(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """``n`` items of ``d`` seconds, counted as this run's list of what is left: from 0 after a resume."""
    left = list(range(ctx.state.get("next", 0), int(params["n"])))
    ctx.progress(0, total=len(left))
    for k, i in enumerate(left):
        await asyncio.sleep(float(params["d"]))
        ctx.state["next"] = i + 1
        ctx.progress(k + 1)
        await ctx.checkpoint()
    return {}


@operation("some_fail")
async def some_fail(ctx: OperationContext, params: Any) -> dict[str, Any]:
    """``n`` items of ``d`` seconds; every ``fail_every``-th fails (within the threshold), every ``skip_every``-th
    is skipped; then the handler waits to be stopped."""
    async for i in ctx.items(range(int(params["n"])), key=str):
        await asyncio.sleep(float(params["d"]))
        if i % int(params["skip_every"]) == 0:
            ctx.skip(str(i), "not wanted")
        elif i % int(params["fail_every"]) == 0:
            raise ValueError(f"item {i} is bad")
    await asyncio.Event().wait()
    return {}
