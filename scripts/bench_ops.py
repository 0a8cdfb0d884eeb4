"""Operation types used only by scripts/bench.py (loaded as a plugin: ``plugins=["bench_ops"]``).

Each handler measures from inside a real engine run, with the OperationContext the
engine built, and returns its samples as the operation's result. Time is measured
with ``perf_counter`` in batches, so the clock's own cost is spread over many calls.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from engine import OperationContext, operation

FIRST_ITEM: dict[str, list[float]] = {}
"""Per operation id: perf_counter() when each attempt's first item started (read by the resume bench)."""
HELD: dict[str, asyncio.Event] = {}
"""Per operation id: set while the handler holds an item until it is paused."""


class HotParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rounds: int = 50
    batch: int = 2000


def _noop(n: int = 1) -> None:
    return None


@operation("bench_advance", params=HotParams)
async def bench_advance(ctx: OperationContext, p: HotParams) -> dict[str, Any]:
    """ctx.advance() vs tqdm.update(1) to /dev/null vs a bare call vs an empty loop, interleaved per round."""
    from tqdm import tqdm

    pc = time.perf_counter
    rng = range(p.batch)
    out: dict[str, list[float]] = {"advance": [], "tqdm": [], "bare": [], "loop": []}
    with open(os.devnull, "w") as devnull:
        bar = tqdm(total=p.rounds * p.batch, file=devnull, mininterval=0.1)
        for _ in range(p.rounds):
            t0 = pc()
            for _ in rng:
                ctx.advance()
            t1 = pc()
            for _ in rng:
                bar.update(1)
            t2 = pc()
            for _ in rng:
                _noop()
            t3 = pc()
            for _ in rng:
                pass
            t4 = pc()
            out["advance"].append((t1 - t0) / p.batch)
            out["tqdm"].append((t2 - t1) / p.batch)
            out["bare"].append((t3 - t2) / p.batch)
            out["loop"].append((t4 - t3) / p.batch)
            await asyncio.sleep(0)  # let the supervisor tick between rounds, as in a real handler
        bar.close()
    return out


@operation("bench_items", params=HotParams)
async def bench_items(ctx: OperationContext, p: HotParams) -> dict[str, Any]:
    """One turn of ``async for x in ctx.items(keys)`` vs a bare ``for`` over the same list, per round."""
    pc = time.perf_counter
    out: dict[str, list[float]] = {"items": [], "bare": []}
    for r in range(p.rounds):
        keys = [f"r{r}-{i}" for i in range(p.batch)]  # fresh keys: none done yet
        t0 = pc()
        async for _ in ctx.items(keys):
            pass
        t1 = pc()
        for _ in keys:
            pass
        t2 = pc()
        out["items"].append((t1 - t0) / p.batch)
        out["bare"].append((t2 - t1) / p.batch)
        await asyncio.sleep(0)
    return out


class CheckpointParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rounds: int = 100
    pre_done: int = 0
    """Items done (and checkpointed once) before the measured checkpoints."""
    per_round: int = 10
    """New items done between two measured checkpoints (the delta each one writes)."""
    state: dict[str, Any] = {}


@operation("bench_checkpoint", params=CheckpointParams)
async def bench_checkpoint(ctx: OperationContext, p: CheckpointParams) -> dict[str, Any]:
    """Latency of ``await ctx.checkpoint()`` with the given state, after ``pre_done`` items."""
    pc = time.perf_counter
    ctx.state.update(p.state)
    first = None
    if p.pre_done:
        async for _ in ctx.items(range(p.pre_done), key=str):
            pass
        t0 = pc()
        await ctx.checkpoint()
        first = pc() - t0
    times = []
    nxt = p.pre_done
    for _ in range(p.rounds):
        async for i in ctx.items(range(nxt, nxt + p.per_round), key=str):
            ctx.state["sum"] = ctx.state.get("sum", 0) + i
        nxt += p.per_round
        t0 = pc()
        await ctx.checkpoint()
        times.append(pc() - t0)
    return {"times": times, "first": first, "done": len(ctx.done_keys)}


class EachParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: int = 1000


@operation("bench_each", params=EachParams)
async def bench_each(ctx: OperationContext, p: EachParams) -> dict[str, Any]:
    """A durable checkpoint after every item: ``await ctx.checkpoint()`` inside the body."""
    ctx.state.setdefault("sum", 0)
    t0 = time.perf_counter()
    async for i in ctx.items(range(p.items), key=str):
        ctx.state["sum"] += i
        await ctx.checkpoint()
    return {"elapsed": time.perf_counter() - t0, "items": p.items, "seq": ctx.checkpoint_seq}


@operation("bench_noop")
async def bench_noop(ctx: OperationContext, p: Any) -> None:
    """A trivial operation: the engine's own cost per operation."""
    return None


class HoldParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: int = 200_000
    hold_at: int = 100_000
    """On the first run, hold item ``hold_at - 1`` until paused (so ``hold_at`` items are done)."""
    state: dict[str, Any] = {}


@operation("bench_hold", params=HoldParams)
async def bench_hold(ctx: OperationContext, p: HoldParams) -> dict[str, Any]:
    """Record when each attempt's first item starts; hold one item per attempt until paused."""
    if not ctx.resuming:
        ctx.state.update(p.state)
    first = True
    async for i in ctx.items(range(p.items), key=str):
        if first and ctx.resuming:
            FIRST_ITEM.setdefault(ctx.id, []).append(time.perf_counter())
        if (first and ctx.resuming) or (not ctx.resuming and i == p.hold_at - 1):
            ev = HELD.setdefault(ctx.id, asyncio.Event())
            ev.set()
            while not ctx.cancelled:
                await asyncio.sleep(0.001)
            ev.clear()
        first = False
    return {"done": len(ctx.done_keys)}


class ReportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = 600.0
    every: float = 0.05
    total: int = 100_000


@operation("bench_report", params=ReportParams)
async def bench_report(ctx: OperationContext, p: ReportParams) -> dict[str, Any]:
    """Report progress every ``every`` seconds for ``seconds`` (a busy operation as the dashboard sees it)."""
    ctx.progress(0, total=p.total)
    end = time.monotonic() + p.seconds
    n = 0
    while time.monotonic() < end:
        await asyncio.sleep(p.every)
        n += 1
        ctx.progress(n % p.total, message=f"step {n}", rate_hint=n)
    return {"reports": n}
