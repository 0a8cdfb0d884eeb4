"""Fault suite: the engine's own work finds no memory (``ulimit -v``, a container's address-space limit).

Under ``ulimit -v`` a tester saw: a MemoryError inside ``ctx.items`` after an item's body finished, before its
key was recorded, leave a failure checkpoint holding the item's effects on ``ctx.state`` without its key (the
resume ran it again: a count of 31 for 30 items), the error blaming the handler's ``async for`` line;
pydantic-core encoding a checkpoint panic ("PyObject pointer is null") and block for good with the GIL held
(the operation running for ever, deaf to signals and cancel); a final status that found no memory left the
operation running. Here the MemoryError is raised at the exact point, once, in the real engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from engine import Operation, OperationContext, OperationSpec, Settings, Status, operation
from engine.outage import store_failure, why
from engine.shortage import OutOfMemory, ran_short
from engine.store import base
from tests.fixtures_engine import make_engine

N = 12
FAST_RETRY = {"backoff_base": 0.05, "max_attempts": 1, "transient": []}
"""One attempt by its policy: only a shortage is retried (as for a command), and quickly."""

_BODIES: list[str] = []
"""Item keys whose body ran, in order, across attempts."""


class _SetFailing(set[str]):
    """The done-set, failing ``times`` times to take ``at``: no memory to grow it."""

    at: str = ""
    times = 1

    def add(self, k: str) -> None:
        if k == self.at:
            self.times -= 1
            if not self.times:
                self.at = ""
            raise MemoryError
        super().add(k)


class _ListFailing(list[str]):
    """The keys new since the last checkpoint, failing (once) to take ``at`` (the done-set took it already)."""

    at: str = ""

    def append(self, k: str) -> None:
        if k == self.at:
            self.at = ""
            raise MemoryError
        super().append(k)


_FAIL: dict[str, str] = {}
"""Where the next attempt's bookkeeping fails ("done", "done twice": the final checkpoint's try to finish it
too, or "delta") and at which key; emptied once used."""


@operation("test_memory_items")
async def memory_items(ctx: OperationContext, params: dict[str, Any]) -> dict[str, Any]:
    """A rule-following handler: each item's effect on ``ctx.state`` is the last statement of its body."""
    ledger = ctx._ledger  # the engine's bookkeeping, made to find no memory where the test says
    where, at = _FAIL.pop("where", ""), _FAIL.pop("at", "")
    if where.startswith("done"):
        ledger.done = failing = _SetFailing(ledger.done)
        failing.at, failing.times = at, 2 if where == "done twice" else 1
    elif where == "delta":
        ledger.new_done = flaky = _ListFailing(ledger.new_done)
        flaky.at = at
    ctx.state.setdefault("seen", [])
    async for i in ctx.items(range(N), key=str):
        _BODIES.append(str(i))
        await asyncio.sleep(0)
        ctx.state["seen"].append(str(i))
    return {"count": len(ctx.state["seen"]), "seen": ctx.state["seen"]}


async def _run(settings: Settings, spec: OperationSpec) -> tuple[Operation, list[str]]:
    """The final record of ``spec`` run to its end, and its log's lines."""
    async with make_engine(settings) as engine:
        op = await engine.submit(spec)
        final = await engine.wait(op.id, timeout=30)
        lines = [r.message for r in (await engine.logs(op.id))[0]]
    return final, lines


@pytest.mark.parametrize("where", ["done", "delta", "done twice"])
async def test_an_item_whose_key_found_no_memory_is_not_run_twice_by_the_resume(settings: Settings, where: str) -> None:
    """The body of item 5 finished; recording its key found no memory (the done-set, or the delta the next
    checkpoint writes). No checkpoint holds item 5's effects on ``state`` without its key: the final checkpoint
    finishes the recording first, or, when that finds no memory either, is skipped (the resume goes from the
    newest checkpoint, items 0-3). The attempt is queued again as a shortage, and the result is an uninterrupted
    run's, item by item. The error and the log say the engine ran out of memory, not the handler's line."""
    profile = {"checkpoint_every": 2, "retry": FAST_RETRY}
    spec = OperationSpec(type="test_memory_items", params={}, profile=profile)
    _BODIES.clear()
    clean, _ = await _run(settings, spec)
    assert clean.status is Status.COMPLETED and clean.result == {"count": N, "seen": [str(i) for i in range(N)]}
    _BODIES.clear()
    _FAIL.update(where=where, at="5")
    final, lines = await _run(settings, spec)
    assert final.status is Status.COMPLETED, (final.status, final.error, lines)
    assert final.result == clean.result, "an item's effect on ctx.state twice, or lost"
    assert final.item_failures == 0 and final.retries == 1
    failed = next(ln for ln in lines if ln.startswith("attempt 1 failed"))
    assert "the engine could not go on recording item '5' done" in failed and "(at " not in failed, failed
    assert any(ln.startswith("retry 1/4 in") and "out of memory" in ln for ln in lines), lines
    skipped = [ln for ln in lines if ln.startswith("final checkpoint skipped: the engine ran out of memory")]
    if where == "done twice":  # items 0-3 were checkpointed; 4 and 5 ran after it, and run again from there
        assert skipped and [*map(str, range(6)), *map(str, range(4, N))] == _BODIES
    else:  # recorded after all: the final checkpoint has 0-5 done, and the resume goes on with 6
        assert not skipped and [*map(str, range(N))] == _BODIES


_SAVES: list[int] = []


@operation("test_memory_checkpoint")
async def memory_checkpoint(ctx: OperationContext, params: dict[str, Any]) -> dict[str, Any]:
    """bigstate's shape: a checkpoint asked inside each item's body, ``now``."""
    ctx.state.setdefault("blobs", {})
    async for i in ctx.items(range(N), key=str):
        _BODIES.append(str(i))
        ctx.state["blobs"][str(i)] = "x" * 100
        await ctx.checkpoint(now=True)
    return {"n": len(ctx.state["blobs"])}


async def test_a_checkpoint_that_finds_no_memory_ends_the_attempt_resumable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encoding checkpoint 4 (asked inside item 3's body) finds no memory: the attempt ends at once (not item 3's
    failure, as it was), queued again as a shortage from its final checkpoint, and completes; no finished item
    runs again."""
    real = base.to_json
    calls = {"n": 0}

    def to_json(value: Any, **kw: Any) -> bytes:
        if isinstance(value, dict) and "state" in value:
            calls["n"] += 1
            if calls["n"] == 4:
                raise MemoryError
        return real(value, **kw)

    monkeypatch.setattr(base, "to_json", to_json)
    _BODIES.clear()
    spec = OperationSpec(type="test_memory_checkpoint", params={}, profile={"retry": FAST_RETRY})
    final, lines = await _run(settings, spec)
    assert final.status is Status.COMPLETED, (final.status, final.error, lines)
    assert final.item_failures == 0 and final.retries == 1 and final.result == {"n": N}
    # The final checkpoint (memory was back) has items 0-2 done: item 3, whose body the error left, runs again.
    assert [*map(str, range(4)), *map(str, range(3, N))] == _BODIES
    failed = next(ln for ln in lines if ln.startswith("attempt 1 failed"))
    assert "out of memory" in failed and "saving checkpoint 4" in failed and "(at " not in failed, failed
    assert not any("item failed" in ln for ln in lines), lines


def _payload() -> base.Checkpoint:
    return base.Checkpoint.model_construct(
        operation_id="x",
        seq=1,
        epoch=1,
        created_at=0.0,
        progress_percentage=None,
        processed_items=1,
        total_items=2,
        done_count=1,
        state={"a": [1, 2.5, "é"]},
        context_data={},
        next_step=None,
        metadata={},
        checksum="",
        size=0,
        valid=True,
    )


def test_pydantic_core_is_not_asked_to_encode_near_the_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where an allocation fails inside it, pydantic-core panics and may block for good holding the GIL:
    near an address-space limit the checkpoint is encoded by ``json``, which raises MemoryError."""
    cp = _payload()
    quick = base.encode_payload(cp)

    def never(*a: Any, **kw: Any) -> bytes:
        raise AssertionError("pydantic-core called with no memory to spare")

    monkeypatch.setattr(base, "to_json", never)
    monkeypatch.setattr(base, "memory_left", lambda: base.QUICK_HEADROOM // 2)
    assert json.loads(base.encode_payload(cp)) == json.loads(quick)


def test_a_panic_in_pydantic_core_is_out_of_memory_and_it_is_not_called_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class PanicException(BaseException):  # pyo3's, by name
        pass

    calls = []

    def panics(*a: Any, **kw: Any) -> bytes:
        calls.append(1)
        raise PanicException("PyObject pointer is null")

    monkeypatch.setattr(base, "to_json", panics)
    monkeypatch.setattr(base._Quick, "usable", True)
    monkeypatch.setattr(base, "memory_left", lambda: None)
    with pytest.raises(MemoryError):
        base.encode_payload(_payload())
    assert base.encode_payload(_payload()) and len(calls) == 1  # by ``json`` from then on


async def test_a_final_status_write_that_finds_no_memory_is_retried_as_a_store_outage(settings: Settings) -> None:
    """The final status write found no memory (SQLite's SQLITE_NOMEM under ``ulimit -v``): it was "final status
    not written" with a traceback, the operation left running and the command's exit 70. Now it is retried as
    a store outage (said in words), and written once there is memory again."""
    assert store_failure(MemoryError()) and why(MemoryError()) == "out of memory"
    assert ran_short(OutOfMemory("the engine ...")) is not None and ran_short(MemoryError()) is None
    async with make_engine(settings) as engine:
        real = engine.store.transition
        refused: list[Status] = []

        async def transition(op_id: str, status: Status, **kw: Any) -> Operation:
            if status is Status.COMPLETED and not refused:
                refused.append(status)
                raise MemoryError
            return await real(op_id, status, **kw)

        engine.store.transition = transition  # type: ignore[method-assign]
        op = await engine.submit(OperationSpec(type="test_memory_items", params={}))
        final = await engine.wait(op.id, timeout=20)
    assert refused and final.status is Status.COMPLETED, (final.status, final.error)


async def test_an_error_the_event_loop_meets_at_every_turn_is_said_once_with_a_count(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of memory, asyncio's self-pipe reader failed at every turn of the loop, and its default handler
    logged a traceback each time (86,000 lines on stderr in 5 s). Now one line, and the repeats counted."""

    def reader() -> None:  # as ``BaseSelectorEventLoop._read_from_self`` fails with no memory for its buffer
        raise MemoryError

    caplog.set_level(logging.WARNING)
    async with make_engine(settings):
        loop = asyncio.get_running_loop()
        for _ in range(500):
            loop.call_soon(reader)
        await asyncio.sleep(0.05)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said[:5]
    assert said[0].startswith("Exception in callback") and "the machine ran out of memory (MemoryError at" in said[0]
    assert said[1].endswith(": 499 more like it since"), said[1]
    assert loop.get_exception_handler() is None  # the loop's own again once the engine stopped


def test_log_lines_stderr_cannot_take_are_said_once_not_a_traceback_each(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line that found no memory to be written was "--- Logging error ---" and a traceback, each one."""
    from engine.cli import common
    from engine.cli import format as fmt

    def echo(*a: Any, **kw: Any) -> None:
        raise MemoryError

    root = logging.getLogger("outlast")
    before = list(root.handlers)
    common.configure_logging()
    added = [h for h in root.handlers if h not in before]
    monkeypatch.setattr(fmt, "echo", echo)
    try:
        for i in range(50):
            logging.getLogger("outlast.engine").warning("line %d", i)
    finally:
        for h in added:
            root.removeHandler(h)
    err = capfd.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err, err[:500]
    if added:  # a test before this one configured it already: its handler has said it, or says it now
        assert err.count("a log line could not be written to stderr (MemoryError)") == 1, err
