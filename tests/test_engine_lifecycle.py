"""Lifecycle: transitions, control (cancel/pause/resume), retries, shutdown, failure threshold."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from engine import (
    Conflict,
    Engine,
    InvalidInput,
    NotFound,
    OperationSpec,
    Settings,
    Status,
    StatusChanged,
    TimeoutProfile,
)
from engine.models import RESUMABLE, TRANSITIONS, Operation, check_transition, new_id
from tests.fixtures_engine import collect, make_engine, until


@pytest.mark.parametrize("current", list(Status))
@pytest.mark.parametrize("target", list(Status))
def test_transition_table(current: Status, target: Status) -> None:
    if target in TRANSITIONS[current]:
        check_transition(current, target)
    else:
        with pytest.raises(Conflict):
            check_transition(current, target)


def test_table_shape() -> None:
    assert TRANSITIONS[Status.COMPLETED] == frozenset()
    for s in RESUMABLE:
        assert Status.QUEUED in TRANSITIONS[s]
    assert Status.RUNNING not in TRANSITIONS[Status.PAUSED]  # resume always goes through the queue


async def test_store_refuses_illegal_transition(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="ledger", params={"items": 3}))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED
    with pytest.raises(Conflict):
        await engine.store.transition(op.id, Status.RUNNING)
    with pytest.raises(Conflict):
        await engine.resume(op.id)
    assert (await engine.get(op.id)).status is Status.COMPLETED


async def test_run_to_completion_with_checkpoints(engine: Engine) -> None:
    events = collect(engine, (StatusChanged,))
    op = await engine.submit(OperationSpec(type="ledger", params={"items": 40, "explicit_every": 10}, name="sum"))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED
    assert final.result == {"sum": sum(range(40))}
    assert final.progress.done == 40 and final.progress.total == 40
    cps = await engine.checkpoints(op.id)
    assert [c.seq for c in cps] == [4, 3, 2, 1]
    assert cps[0].processed_items == 40 and cps[0].next_step == "after 39"
    statuses = [e.status for e in events if e.operation_id == op.id]
    assert statuses == [Status.QUEUED, Status.RUNNING, Status.COMPLETED]


async def test_checkpoints_keep_newest_n(settings: Settings) -> None:
    settings.checkpoints_keep = 3
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="ledger", params={"items": 50, "explicit_every": 5}))
        await engine.wait(op.id, timeout=20)
        assert [c.seq for c in await engine.checkpoints(op.id)] == [10, 9, 8]
        # The done set survives pruning: it is stored as deltas per checkpoint.
        _cp, ledger = await engine.store.load_checkpoint(op.id)
        assert ledger.done == {str(i) for i in range(50)}


async def test_cancel_pause_resume_in_process(engine: Engine) -> None:
    # Attempts 1 and 2 are stopped mid-run; the third, which only runs the rest, runs at full speed.
    params = {"items": 400, "seconds": 0.01, "slow_attempts": 2}
    op = await engine.submit(OperationSpec(type="ledger", params=params))
    await until(lambda: engine.live(op.id) and engine.live(op.id).done >= 5)
    await engine.pause(op.id)
    paused = await engine.wait(op.id, timeout=20)
    assert paused.status is Status.PAUSED
    assert paused.checkpoint_seq is not None
    _cp, ledger = await engine.store.load_checkpoint(op.id)
    assert len(ledger.done) == paused.progress.done >= 5

    resumed = await engine.resume(op.id)
    assert resumed.status is Status.QUEUED and resumed.attempt == 2
    await until(lambda: engine.live(op.id) and engine.live(op.id).done > paused.progress.done)
    await engine.cancel(op.id)
    cancelled = await engine.wait(op.id, timeout=20)
    assert cancelled.status is Status.CANCELLED

    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED and final.result == {"sum": sum(range(400))}
    assert final.attempt == 3


async def test_cancel_and_pause_of_queued_work(settings: Settings) -> None:
    async with make_engine(settings, run_queue=False) as engine:
        a = await engine.submit(OperationSpec(type="ledger"))
        b = await engine.submit(OperationSpec(type="ledger"))
        assert (await engine.cancel(a.id)).status is Status.CANCELLED
        assert (await engine.pause(b.id)).status is Status.PAUSED
        with pytest.raises(Conflict):
            await engine.pause(a.id)
        # A paused operation can be given up for good.
        assert (await engine.cancel(b.id)).status is Status.CANCELLED


async def test_control_from_another_engine(settings: Settings) -> None:
    """cancel/pause written by another engine (as another process would) reach the runner."""
    async with make_engine(settings) as runner, make_engine(settings, run_queue=False) as other:
        op = await runner.submit(OperationSpec(type="ledger", params={"items": 1000, "seconds": 0.01}))
        await until(lambda: runner.live(op.id) and runner.live(op.id).done >= 3)
        t0 = time.monotonic()
        await other.pause(op.id)
        paused = await other.wait(op.id, timeout=10)
        assert paused.status is Status.PAUSED
        assert time.monotonic() - t0 < 5
        await other.resume(op.id)
        await until(lambda: runner.live(op.id) is not None)
        await other.cancel(op.id)
        assert (await other.wait(op.id, timeout=10)).status is Status.CANCELLED


async def test_shutdown_pauses_running_work(settings: Settings) -> None:
    async with make_engine(settings) as engine:
        params = {"items": 300, "seconds": 0.01, "slow_attempts": 1}  # the resume runs at full speed
        op = await engine.submit(OperationSpec(type="ledger", params=params))
        await until(lambda: engine.live(op.id) and engine.live(op.id).done >= 5)
    async with make_engine(settings) as engine:
        rec = await engine.get(op.id)
        assert rec.status is Status.PAUSED and rec.checkpoint_seq
        await engine.resume(op.id)
        final = await engine.wait(op.id, timeout=30)
        assert final.status is Status.COMPLETED and final.result == {"sum": sum(range(300))}


async def test_failure_threshold(engine: Engine) -> None:
    ok = await engine.submit(
        OperationSpec(
            type="demo", params={"items": 10, "seconds": 0, "fail_every": 2}, profile={"failure_threshold": 5}
        )
    )
    final = await engine.wait(ok.id, timeout=20)
    assert final.status is Status.COMPLETED
    assert final.item_failures == 5
    assert final.result["sum"] == sum(i for i in range(10) if (i + 1) % 2)
    failures = await engine.store.item_failures(ok.id)
    assert sorted(f.key for f in failures) == ["1", "3", "5", "7", "9"]
    assert "failed on purpose" in failures[0].error

    bad = await engine.submit(
        OperationSpec(
            type="demo", params={"items": 10, "seconds": 0, "fail_every": 2}, profile={"failure_threshold": 2}
        )
    )
    final = await engine.wait(bad.id, timeout=20)
    assert final.status is Status.FAILED
    assert "exceed failure_threshold (2)" in final.error
    # Resumable: the done items are kept, failed ones are offered again.
    _cp, ledger = await engine.store.load_checkpoint(bad.id)
    assert ledger.done == {"0", "2", "4"} and set(ledger.failed) == {"1", "3", "5"}


async def test_transient_error_retries_from_checkpoint(engine: Engine, tmp_path) -> None:
    log = tmp_path / "items.log"
    op = await engine.submit(
        OperationSpec(
            type="ledger",
            params={
                "items": 20,
                "fail_at": 9,
                "flaky_file": str(tmp_path / "flaky"),
                "log_file": str(log),
                "explicit_every": 5,
            },
            profile={"retry": {"backoff_base": 0.05, "max_attempts": 3}},
        )
    )
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED, final.error
    assert final.retries == 1 and final.attempt == 2
    assert final.result == {"sum": sum(range(20))}
    runs = log.read_text().split()
    # Items 0..9 were checkpointed (explicit_every=5) before the failure: none is done twice.
    assert sorted(runs, key=int) == [str(i) for i in range(20)]


async def test_a_resume_gets_its_retry_policy_anew(engine: Engine) -> None:
    """Its automatic retries used up (the backend down for a while), an operation a person resumed failed at
    its next transient error, retried no more: the count of retries ran on from the attempts before."""
    op = await engine.submit(
        OperationSpec(
            type="ledger",
            params={"items": 5, "fail_at": 2},
            profile={"retry": {"backoff_base": 0.01, "max_attempts": 2}},
        )
    )
    first = await engine.wait(op.id, timeout=30)
    assert (first.status, first.attempt, first.retries) == (Status.FAILED, 2, 1)
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=30)
    assert (final.status, final.attempt, final.retries) == (Status.FAILED, 4, 1), final.status_message


async def test_non_transient_error_fails(engine: Engine) -> None:
    op = await engine.submit(
        OperationSpec(type="ledger", params={"items": 5, "fail_at": 2}, profile={"retry": {"transient": []}})
    )
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.FAILED
    assert final.error.startswith("ConnectionError: the backend went away")
    assert final.status.resumable


async def test_fencing_rejects_stale_attempt(engine: Engine) -> None:
    from engine import StaleAttempt
    from engine.models import Checkpoint
    from engine.store import ItemDelta

    store = engine.store
    now = time.time()
    op = Operation(
        id=new_id(),
        type="ledger",
        created_at=now,
        queued_at=now,
        updated_at=now,
        profile=TimeoutProfile.model_validate(engine.settings.profile("ledger").model_dump()).model_dump(),
    )
    await store.create(op)
    await store.transition(op.id, Status.PAUSED)  # keep the engine's scheduler away from it
    await store.transition(op.id, Status.QUEUED)
    first = await store.claim(engine.worker, now, 300, op_id=op.id)
    assert first is not None and first.epoch == 1
    await store.release(op.id)
    # The first attempt is declared dead and replaced.
    await store.transition(op.id, Status.INTERRUPTED, epoch=1)
    await store.transition(op.id, Status.QUEUED)
    second = await store.claim(engine.worker, now, 300, op_id=op.id)
    assert second.epoch == 2
    cp = Checkpoint(operation_id=op.id, seq=1, epoch=1, created_at=now, state={"zombie": True})
    with pytest.raises(StaleAttempt):
        await store.save_checkpoint(cp, ItemDelta(done=["x"]), keep=5)
    with pytest.raises(StaleAttempt):
        await store.transition(op.id, Status.COMPLETED, epoch=1)
    assert await store.load_checkpoint(op.id) is None
    await store.save_checkpoint(cp.model_copy(update={"epoch": 2}), ItemDelta(done=["x"]), keep=5)
    assert (await store.get(op.id)).status is Status.RUNNING
    await store.transition(op.id, Status.COMPLETED, epoch=2)
    await store.release(op.id)


async def test_two_resumes_at_once_run_it_once_and_the_other_says_why(settings: Settings) -> None:
    """Two resumes racing: one queued it, and the other said "is queued: cannot make it queued"."""
    from engine.lifecycle import refused_change

    assert refused_change("x", Status.QUEUED, Status.QUEUED).endswith(
        "is queued already: another command made it so meanwhile"
    )
    async with make_engine(settings, run_queue=False) as one, make_engine(settings, run_queue=False) as two:
        op = await one.submit(OperationSpec(type="demo", params={"items": 3}))
        await one.pause(op.id)
        got = await asyncio.gather(one.resume(op.id), two.resume(op.id), return_exceptions=True)
        errors = [str(g) for g in got if isinstance(g, Exception)]
        assert len(errors) <= 1 and all("cannot make it queued" not in e for e in errors), errors
        assert (await one.get(op.id)).status is Status.QUEUED


async def test_list_operations_refuses_a_status_that_is_none(engine: Engine) -> None:
    """``list_operations(statuses=["bogus"])`` raised the enum's bare ValueError."""
    with pytest.raises(InvalidInput, match=r"^status 'bogus': no such status \(valid: queued, running, .*\)$"):
        await engine.list_operations(statuses=["bogus"])
    assert await engine.list_operations(statuses=["completed"]) == []


async def test_checkpoints_of_an_unknown_id_is_not_found(engine: Engine) -> None:
    """It returned [] where ``get``, ``pause`` and ``wait`` raise NotFound."""
    unknown = new_id()
    with pytest.raises(NotFound, match=unknown):
        await engine.checkpoints(unknown)
    op = await engine.submit(OperationSpec(type="demo", params={"items": 1, "seconds": 0}))
    await engine.wait(op.id, timeout=20)
    assert isinstance(await engine.checkpoints(op.id), list)  # known: its checkpoints, none or some


async def test_logs_refuse_a_negative_offset(engine: Engine) -> None:
    """``logs(id, -5)`` returned offset -5, as if a page of the log began there."""
    op = await engine.submit(OperationSpec(type="demo", params={"items": 1, "seconds": 0}))
    await engine.wait(op.id, timeout=20)
    with pytest.raises(InvalidInput, match=r"^log offset -5: expected 0 or more"):
        await engine.logs(op.id, -5)
    assert (await engine.logs(op.id, 0))[1] >= 0


async def test_a_wait_ends_when_the_engine_stops_and_runs_the_operation_no_more(settings: Settings) -> None:
    """A program awaiting ``engine.wait(id)`` when its engine is stopped (SIGTERM through
    ``install_signal_handlers``, ``drain``): work handed back (``auto_resume``) or still queued settles in another
    process, and the wait went on polling for ever, deaf to more SIGTERMs, the program's ``finally`` never run. It
    returns the record as it is once this engine does not run the operation; one it runs is waited for."""
    async with make_engine(settings.model_copy(update={"max_concurrent": 1})) as engine:
        running = await engine.submit(OperationSpec(type="demo", params={"items": 200, "seconds": 0.02}))
        queued = await engine.submit(OperationSpec(type="demo", params={"items": 1, "seconds": 0}))
        await until(lambda: running.id in engine.running_ids)
        waits = [asyncio.ensure_future(engine.wait(op.id)) for op in (running, queued)]
        engine.drain("shutdown")
        done = await asyncio.wait_for(asyncio.gather(*waits), 20)
        assert [op.status for op in done] == [Status.PAUSED, Status.QUEUED], done


async def test_an_engine_started_again_or_given_no_slots_says_so(settings: Settings) -> None:
    """An Engine used for a second ``async with`` took submits and ran none of them (its scheduler stays
    stopped once shut down), and ``max_concurrent`` 0 or -1 ran nothing, for ever, where the settings refuse
    them: each is one clear error now, nothing stored."""
    for bad in (0, -1, 1001, True, 2.5):
        with pytest.raises(InvalidInput, match="max_concurrent"):
            make_engine(settings, max_concurrent=bad)
    engine = make_engine(settings, max_concurrent=2)
    async with engine:
        done = await engine.wait((await engine.submit(OperationSpec(type="demo", params={"items": 1}))).id, 20)
        assert done.status is Status.COMPLETED
    with pytest.raises(InvalidInput, match="shut down"):
        async with engine:
            pass


async def test_events_are_kept_from_the_call_on(engine: Engine) -> None:
    """``events()`` said "every event from now on" but subscribed at its first ``async for`` step: taken before a
    submit and read after, it had lost them all, and a loop waiting for the settle hung. A subscriber callback
    that raises is said once, not with a traceback at every event."""
    stream = engine.events()
    op = await engine.submit(OperationSpec(type="demo", params={"items": 3, "seconds": 0}))
    await engine.wait(op.id, 20)
    seen = []
    async for ev in stream:
        seen.append(ev)
        if isinstance(ev, StatusChanged) and ev.operation_id == op.id and ev.status is Status.COMPLETED:
            break
    assert any(isinstance(e, StatusChanged) and e.status is Status.RUNNING for e in seen), seen
    await stream.aclose()  # type: ignore[attr-defined]
    assert not engine.bus.has_subscribers


async def test_a_subscriber_that_raises_is_said_once(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    def broken(ev: object) -> None:
        raise RuntimeError("subscriber bug")

    engine.subscribe(broken)
    with caplog.at_level(logging.WARNING, "outlast"):
        for _ in range(3):
            await engine.wait((await engine.submit(OperationSpec(type="demo", params={"items": 2}))).id, 20)
    said = [r for r in caplog.records if "event subscriber" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is not None, [r.getMessage() for r in said]


def test_signal_handlers_asked_for_in_another_thread_are_refused_in_words_that_say_why(settings: Settings) -> None:
    """An app running the engine in a thread's own event loop got asyncio's "set_wakeup_fd only works in main
    thread of the main interpreter", raised half-way through, after the engine had taken the signals as its
    own. Refused first, saying why; the engine runs on and closes as usual."""
    import threading

    seen: list[object] = []

    async def main() -> None:
        async with make_engine(settings) as engine:
            with pytest.raises(RuntimeError, match="signals reach only the main thread") as refused:
                engine.install_signal_handlers()
            seen.append(refused.value)
            op = await engine.submit(OperationSpec(type="demo", params={"items": 3, "seconds": 0}))
            seen.append((await engine.wait(op.id, timeout=30)).status)

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:
            seen.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert len(seen) == 2 and seen[1] is Status.COMPLETED, seen
