"""How often a ``ctx.items`` loop of bodies that never await lets the event loop turn.

It turns once the engine's clock is ``LOOP_LATE`` late (the clock marks ``clock_ticked`` at each tick). A handler
that goes on after its engine has stopped has no clock at all any more: its mark only ages, and every 16th
item turned the loop for ``LOOP_TURN`` (3 ms), 200 turns in 3,200 quick items where nothing else ran."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from engine import context
from engine.store.base import Ledger
from tests.test_engine_resume_order import _context


async def test_a_loop_whose_clock_stopped_turns_the_event_loop_once_per_loop_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    turns = 0
    sleep = asyncio.sleep

    async def counted(delay: float, *args: Any) -> Any:
        nonlocal turns
        turns += delay == context.LOOP_TURN
        return await sleep(delay, *args)

    monkeypatch.setattr(asyncio, "sleep", counted)
    ctx = _context(tmp_path, Ledger())
    ctx.clock_ticked = time.monotonic() - 60  # the clock ticked a minute ago, and not since
    began = time.monotonic()
    async for _ in ctx.items(range(3200), key=str):
        pass
    took = time.monotonic() - began
    assert turns >= 1, "the loop never let the event loop turn, late as its clock was"
    assert turns <= 1 + took / context.LOOP_LATE, (turns, took)
