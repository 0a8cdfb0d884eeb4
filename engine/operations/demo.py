"""demo: a configurable operation for trying the dashboard and for tests."""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel, ConfigDict, Field

from ..context import OperationContext
from ..registry import operation


class DemoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: int = Field(default=100, ge=0, le=10_000_000, description="how many items to process")
    seconds: float = Field(default=0.05, ge=0, le=3600, description="seconds per item")
    fail_every: int = Field(default=0, ge=0, description="every Nth item fails (0: never)")
    # Only in the first attempt, so a resume goes on past K (the description is shown in the dashboard).
    crash_at: int | None = Field(default=None, ge=0, description="the process exits hard at item K")
    hang_at: int | None = Field(default=None, ge=0, description="stop reporting progress at item K")


@operation("demo", params=DemoParams, description="process N items, optionally failing, crashing or hanging on the way")
async def demo(ctx: OperationContext, p: DemoParams) -> dict:
    """Process N items, optionally failing, crashing or hanging on the way."""
    ctx.state.setdefault("sum", 0)
    ctx.state.setdefault("processed", [])
    async for i in ctx.items(range(p.items), key=str):
        if p.crash_at is not None and i == p.crash_at and ctx.attempt == 1:
            os._exit(137)
        if p.hang_at is not None and i == p.hang_at:
            await asyncio.sleep(10**9)
        if p.seconds:
            await asyncio.sleep(p.seconds)
        if p.fail_every and (i + 1) % p.fail_every == 0:
            raise RuntimeError(f"item {i} failed on purpose")
        ctx.state["sum"] += i
        ctx.step = f"item {i}"
    return {"sum": ctx.state["sum"], "items": p.items, "failures": ctx.failures}
