"""A cancel asked while a pause is being settled is not lost.

A cancel gives an operation up; a pause keeps it. A cancel asked once the attempt had decided to pause (its
final checkpoint or its final status being written, which a loaded machine makes long) was answered
"cancel requested" and the operation ended paused: the settle wrote `paused` over the stored request and
cleared it. Each window is held open here by delaying the store's writes, so the race is met every run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, OperationSpec, Status, load_settings
from engine.store.base import Store
from tests.fixtures_engine import until
from tests.test_engine_stops import break_then_wait  # noqa: F401  (registers test_break_then_wait)


@pytest.fixture
async def engines(make_store: Callable[[], Store], tmp_path: Path) -> AsyncIterator[tuple[Engine, Engine]]:
    settings = load_settings(state_dir=tmp_path / "state", plugins=["tests.ops_for_tests"], grace_period=2.0)
    async with (
        Engine(store=make_store(), settings=settings) as runner,
        Engine(store=make_store(), settings=settings, run_queue=False) as other,
    ):
        yield runner, other


def _delay(store: Store, method: str, when: Callable[..., bool], entered: asyncio.Event) -> None:
    """The store's ``method`` waits 0.5 s before it runs when ``when(*args, **kw)``: the window a cancel
    falls into on a loaded machine, held open."""
    real = getattr(store, method)

    async def slow(*args: Any, **kw: Any) -> Any:
        if when(*args, **kw):
            entered.set()
            await asyncio.sleep(0.5)
        return await real(*args, **kw)

    setattr(store, method, slow)


def _request_once_paused(asking: Engine, reader: Engine) -> None:
    """``asking``'s store stores its control request only once the operation is paused (when a store
    ignores it: it is stored for a running operation only)."""
    real = asking.store.request_control

    async def late(op_id: str, action: Any) -> None:
        await until(lambda: _paused(reader, op_id), timeout=20)
        await real(op_id, action)

    asking.store.request_control = late  # type: ignore[method-assign]


async def _paused(engine: Engine, op_id: str) -> bool:
    return (await engine.store.get(op_id)).status is Status.PAUSED


@pytest.mark.parametrize("where", ["here", "another engine"])
@pytest.mark.parametrize("window", ["final checkpoint", "final status", "after the final status"])
async def test_a_cancel_asked_while_a_pause_settles_wins(
    engines: tuple[Engine, Engine], where: str, window: str
) -> None:
    runner, other = engines
    op = await runner.submit(OperationSpec(type="test_break_then_wait", params={"break_at": 5}))
    await until(lambda: (r := runner.live(op.id)) is not None and r.message == "waiting", timeout=20)
    entered = asyncio.Event()
    asking = runner if where == "here" else other
    if window == "final checkpoint":
        _delay(runner.store, "save_checkpoint", lambda *a, **kw: True, entered)
    else:
        _delay(runner.store, "transition", lambda _id, to, **kw: to is Status.PAUSED, entered)
    if window == "after the final status":  # the request reaches the store once the pause is written
        _request_once_paused(asking, other)
    await runner.pause(op.id)
    await asyncio.wait_for(entered.wait(), 20)
    await asking.cancel(op.id)
    final = await runner.wait(op.id, timeout=20)
    assert final.status is Status.CANCELLED, (final.status, final.status_message)
    assert (await other.get(op.id)).status is Status.CANCELLED
