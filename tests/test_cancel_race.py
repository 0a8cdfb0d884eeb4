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


def _delay(
    store: Store, method: str, when: Callable[..., bool], entered: asyncio.Event, done: asyncio.Event | None = None
) -> None:
    """The store's ``method`` waits 0.5 s before it runs when ``when(*args, **kw)``: the window a cancel
    falls into on a loaded machine, held open. ``done`` is set once that call has run."""
    real = getattr(store, method)

    async def slow(*args: Any, **kw: Any) -> Any:
        if not when(*args, **kw):
            return await real(*args, **kw)
        entered.set()
        await asyncio.sleep(0.5)
        try:
            return await real(*args, **kw)
        finally:
            if done is not None:
                done.set()

    setattr(store, method, slow)


def _request_once_paused(asking: Engine, reader: Engine) -> None:
    """``asking``'s store stores its control request only once the operation is paused (when a store
    ignores it: it is stored for a running operation only)."""
    real = asking.store.request_control

    async def late(op_id: str, action: Any) -> Any:
        await until(lambda: _paused(reader, op_id), timeout=20)
        return await real(op_id, action)

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


@pytest.mark.parametrize("where", ["here", "another engine"])
async def test_a_cancel_asked_while_a_timeout_settles_wins(engines: tuple[Engine, Engine], where: str) -> None:
    """The deadline passed and the attempt stops for it: a cancel asked until its status is written gives
    the operation up (it ended timed out, resumable, after the asker was told "cancel requested")."""
    runner, other = engines
    op = await runner.submit(OperationSpec(type="test_break_then_wait", params={"break_at": 5}, timeout=1.0))
    entered = asyncio.Event()
    _delay(runner.store, "transition", lambda _id, to, **kw: to is Status.TIMED_OUT, entered)
    await asyncio.wait_for(entered.wait(), 20)
    await (runner if where == "here" else other).cancel(op.id)
    final = await runner.wait(op.id, timeout=20)
    assert final.status is Status.CANCELLED, (final.status, final.status_message)


@pytest.mark.parametrize("when", ["while the retry is queued", "after it is queued"])
async def test_a_cancel_asked_as_an_attempt_fails_and_is_retried_wins(
    engines: tuple[Engine, Engine], tmp_path: Path, when: str
) -> None:
    """A transient error queues a retry: a cancel asked while that is written, or whose request reaches the
    store once it is, gives the operation up; no second attempt runs (one ran to the end after the asker
    was told "cancel requested")."""
    runner, other = engines
    ledger = tmp_path / "ledger"
    params = {"items": 30, "seconds": 0.01, "fail_at": 5, "flaky_file": str(tmp_path / "flag"), "log_file": str(ledger)}
    op = await runner.submit(OperationSpec(type="ledger", params=params, profile={"retry": {"backoff_base": 1.0}}))
    entered, queued = asyncio.Event(), asyncio.Event()
    _delay(runner.store, "transition", lambda _id, to, **kw: to is Status.QUEUED, entered, queued)
    if when == "after it is queued":
        _request_after(other, queued)
    await asyncio.wait_for(entered.wait(), 20)
    await other.cancel(op.id)
    final = await runner.wait(op.id, timeout=20)
    assert final.status is Status.CANCELLED, (final.status, final.attempt, final.status_message)
    assert ledger.read_text().split() == [str(i) for i in range(6)]  # attempt 1 ran 0-5 (fail_at), none ran again
    await asyncio.sleep(1.0)  # past the backoff: nothing claims it again
    assert (await other.get(op.id)).status is Status.CANCELLED


def _request_after(asking: Engine, event: asyncio.Event) -> None:
    """``asking``'s store stores its control request only once ``event`` is set."""
    real = asking.store.request_control

    async def late(op_id: str, action: Any) -> Any:
        await asyncio.wait_for(event.wait(), 20)
        return await real(op_id, action)

    asking.store.request_control = late  # type: ignore[method-assign]


@pytest.mark.parametrize("when", ["before it fails", "while the retry is queued", "after it is queued"])
async def test_a_pause_asked_as_an_attempt_fails_and_is_retried_holds(
    engines: tuple[Engine, Engine], tmp_path: Path, when: str
) -> None:
    """A pause asked of a running attempt that then fails with a transient error (found writing
    test_fault_race's checks): the retry was queued, claimed and run on (paused only once the new attempt polled
    the request) after the asker was told "pause requested" (``--no-wait``), or, waiting, that "another command
    resumed it". A request that reached the store only once the retry was queued (which stores none) was
    dropped. The operation is paused at the failure's checkpoint, and no item runs again."""
    runner, other = engines
    ledger = tmp_path / "ledger"
    params = {"items": 30, "seconds": 0.01, "fail_at": 5, "flaky_file": str(tmp_path / "flag"), "log_file": str(ledger)}
    op = await runner.submit(OperationSpec(type="ledger", params=params, profile={"retry": {"backoff_base": 1.0}}))
    entered, queued = asyncio.Event(), asyncio.Event()
    if when == "before it fails":  # the pause is seen by the attempt (stop asked) before the error is raised
        _delay(runner.store, "save_checkpoint", lambda *a, **kw: True, entered)
    else:
        _delay(runner.store, "transition", lambda _id, to, **kw: to is Status.QUEUED, entered, queued)
    if when == "after it is queued":
        _request_after(other, queued)
    await asyncio.wait_for(entered.wait(), 20)
    await other.pause(op.id)
    final = await runner.wait(op.id, timeout=20)
    assert final.status is Status.PAUSED, (final.status, final.attempt, final.status_message)
    await asyncio.sleep(1.2)  # past the backoff: nothing claims it again
    assert (await other.get(op.id)).status is Status.PAUSED
    assert ledger.read_text().split() == [str(i) for i in range(6)]  # attempt 1 ran 0-5 (fail_at), none ran again


@pytest.mark.parametrize("action", ["pause", "cancel"])
async def test_a_stop_whose_request_lands_after_the_operation_completed_says_so(
    engines: tuple[Engine, Engine], tmp_path: Path, action: str
) -> None:
    """A pause or cancel read the operation running, and its request reached the store once it had completed
    (found by test_fault_race): the store keeps no request of a settled operation, yet the asker was answered
    with the running record it had read, and ``outlast pause --no-wait`` said "pause requested; it stops at its
    next safe point" of an operation already completed. The answer is the record as it ended."""
    runner, other = engines
    op = await runner.submit(OperationSpec(type="ledger", params={"items": 20, "seconds": 0.01}))
    await until(lambda: _running(other, op.id), timeout=20)
    completed = asyncio.Event()

    async def watch() -> None:
        await runner.wait(op.id, timeout=20)
        completed.set()

    watching = asyncio.ensure_future(watch())
    _request_after(other, completed)
    asked = await getattr(other, action)(op.id)
    await watching
    assert asked.status is Status.COMPLETED, (asked.status, asked.status_message)


async def _running(engine: Engine, op_id: str) -> bool:
    return (await engine.store.get(op_id)).status is Status.RUNNING
