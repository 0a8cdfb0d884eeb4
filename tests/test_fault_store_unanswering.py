"""Fault suite: a store that does not answer (a frozen Redis: SIGSTOP, a host suspended, packets dropped).

Unlike a store that is down (refused at once) or full (fails at once), each call waits for a reply that
never comes. Before: the engine's clock awaited its store steps (control poll, live progress, heartbeat)
in turn, so the outage limit was not looked at while one of them waited, and an attempt told to stop
"unless the store is back within 10s" ran on for minutes with nothing saved; and every call of its way out
(final checkpoint, logs, status) waited 10s for a reply and then retried for 30s: a frozen Redis kept
``outlast run`` going 195s where the limit promised about 50.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, OperationSpec, Status, load_settings, open_store
from engine.models import StoreError
from engine.store.redis.connection import DOWN_PROBE
from engine.store.sqlite import core as sqlite_core
from tests.fixtures_cli import CliAt
from tests.fixtures_engine import queued_record, until
from tests.fixtures_redis import RedisServer


def _unanswering(store: Any, never: asyncio.Event) -> None:
    """``store``'s reads of requests and live writes wait for ``never``; its checkpoints fail (a full disk)."""

    async def no_answer(*_a: Any, **_k: Any) -> Any:
        await never.wait()
        return {}

    async def full(*_a: Any, **_k: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    for name in ("pending_controls", "heartbeat", "save_live"):
        setattr(store, name, no_answer)
    store.save_checkpoint = full


async def test_the_outage_limit_stops_work_while_the_store_leaves_the_clock_waiting(tmp_path: Path) -> None:
    """The store's reads and live writes never answer and its checkpoints fail: the attempt is stopped
    within the outage limit, not run to the end with nothing saved (before: it completed, its clock
    held by the control poll)."""
    settings = load_settings(state_dir=tmp_path / "state", store_outage_limit=0.5, control_poll_interval=0.1)
    store = open_store(settings.state_dir)
    never = asyncio.Event()
    engine = Engine(store=store, settings=settings)
    await engine.start()
    try:
        spec = OperationSpec(type="demo", params={"items": 400, "seconds": 0.02}, profile={"checkpoint_interval": 0.1})
        op = await engine.submit(spec)
        await until(lambda: op.id in engine.running_ids)
        _unanswering(store, never)
        done = await asyncio.wait_for(engine.wait(op.id, timeout=60, poll=0.1), 60)
        assert done.status is Status.INTERRUPTED, (done.status, done.status_message)
        assert "store" in (done.status_message or ""), done.status_message
        assert done.progress.done < 400, done.progress
    finally:
        never.set()
        await engine.shutdown(grace=1)


async def test_a_cancel_stored_while_the_store_failed_wins_over_the_outage_stop(tmp_path: Path) -> None:
    """A cancel another process stored while this one's writes failed (and its reads of requests never came
    back): the attempt stopped for the outage and settled interrupted, which auto_resume queues again, though
    the asker was told "cancel requested". The settle now ends it cancelled, as a pause or timeout would."""
    settings = load_settings(state_dir=tmp_path / "state", store_outage_limit=0.5, control_poll_interval=0.1)
    store = open_store(settings.state_dir)
    never = asyncio.Event()
    engine = Engine(store=store, settings=settings)
    await engine.start()
    asking = open_store(settings.state_dir)
    await asking.open()
    try:
        spec = OperationSpec(type="demo", params={"items": 400, "seconds": 0.02}, profile={"checkpoint_interval": 0.1})
        op = await engine.submit(spec)
        await until(lambda: op.id in engine.running_ids)
        _unanswering(store, never)
        assert await asking.request_control(op.id, "cancel") == "cancel"
        done = await asyncio.wait_for(engine.wait(op.id, timeout=60, poll=0.1), 60)
        assert done.status is Status.CANCELLED, (done.status, done.status_message)
        assert done.status_message is not None and done.status_message.startswith("cancelled by user")
    finally:
        never.set()
        await asking.close()
        await engine.shutdown(grace=1)


async def test_a_redis_unreachable_past_retry_for_is_tried_once_with_a_short_wait(
    redis_server: RedisServer,
) -> None:
    """A frozen Redis: the first call waits for its reply and retries for ``retry_for``; once the outage is
    that old, a call is tried once and waits ``DOWN_PROBE`` seconds (before: the link's whole timeout,
    then ``retry_for`` more, for every call of an engine on its way out). Thawed, the next call works."""
    store = open_store(redis_server.url + "?retry_for=0.5", namespace="t")
    await store.open()
    link = store.link  # type: ignore[attr-defined]
    link.timeout = DOWN_PROBE * 1.5
    assert redis_server.proc is not None
    try:
        assert await store.list_operations() == []
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreError, match=rf"no reply within {link.timeout:g}s"):
                await store.list_operations()
            t0 = time.monotonic()
            with pytest.raises(StoreError, match=rf"unreachable for \d+s \(no reply within {DOWN_PROBE:g}s\)"):
                await store.list_operations()
            assert time.monotonic() - t0 < link.timeout  # one short try, not a timeout and a retry window
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        assert await store.list_operations() == []
        assert link.connected
    finally:
        await store.close()


async def test_a_write_lock_kept_by_another_process_is_named_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sqlite3 shell (or a database browser) left with a write transaction open on ``outlast.db``: every
    write waits the busy timeout, then failed as "database is locked", which said neither by whom nor what
    to do. Now the line says so; the store takes writes again once the transaction ends."""
    monkeypatch.setattr(sqlite_core, "BUSY_TIMEOUT", 0.2)
    state = tmp_path / "state"
    store = open_store(state)
    await store.open()
    try:
        other = sqlite3.connect(state / "outlast.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        op = queued_record()
        with pytest.raises(StoreError, match=r"outlast\.db is locked: another process .* transaction open .* end it"):
            await store.create(op)
        other.execute("ROLLBACK")
        other.close()
        await store.create(op)
        assert (await store.get(op.id)).status is Status.QUEUED
    finally:
        await store.close()


async def test_work_claimed_once_the_store_answers_again_is_not_stopped_for_the_outage(tmp_path: Path) -> None:
    """An outage past its limit, then the store takes a claim: the attempt claimed runs. Before, the
    engine still counted the outage until another write said otherwise, and stopped that attempt at once
    (an operation resumed as a frozen Redis came back was interrupted again at its first item)."""
    settings = load_settings(state_dir=tmp_path / "state", store_outage_limit=0.2)
    engine = Engine(store=open_store(settings.state_dir), settings=settings)
    await engine.start()
    try:
        engine.health.failed(OSError(errno.EIO, "Input/output error"))
        await asyncio.sleep(0.3)
        assert engine.health.over_limit(time.monotonic())
        op = await engine.submit(OperationSpec(type="demo", params={"items": 20, "seconds": 0.02}))
        done = await asyncio.wait_for(engine.wait(op.id, timeout=30, poll=0.1), 30)
        assert done.status is Status.COMPLETED, (done.status, done.status_message)
    finally:
        await engine.shutdown(grace=1)


async def test_a_final_status_given_up_on_is_written_once_the_store_takes_writes_again(tmp_path: Path) -> None:
    """A process that stays (the dashboard) after its store failed past the limit: the operation it
    stopped was listed running, under its lock, until it quit. ``write_abandoned`` writes the status it
    gave up on once the store takes writes, and lets go of the lock."""
    settings = load_settings(state_dir=tmp_path / "state", store_outage_limit=0.3)
    store = open_store(settings.state_dir)
    engine = Engine(store=store, settings=settings)
    await engine.start()
    saved = {name: getattr(store, name) for name in ("save_checkpoint", "transition", "save_live", "append_logs")}

    async def full(*_a: Any, **_k: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        op = await engine.submit(OperationSpec(type="demo", params={"items": 400, "seconds": 0.02}))
        await until(lambda: op.id in engine.running_ids)
        for name in saved:
            setattr(store, name, full)
        await until(lambda: op.id in engine.abandoned, timeout=30)
        assert await engine.write_abandoned() == []  # still full: nothing written, nothing lost
        assert op.id in engine.unwritten and (await store.get(op.id)).status is Status.RUNNING
        for name, fn in saved.items():
            setattr(store, name, fn)
        assert await engine.write_abandoned() == [op.id]
        assert not engine.abandoned and not engine.unwritten
        stored = await store.get(op.id)
        assert stored.status is Status.INTERRUPTED and "could not be written" in (stored.status_message or "")
        other = Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False)
        async with other:  # its lock let go: another engine can resume it
            await other.resume(op.id)
            assert (await other.get(op.id)).status is Status.QUEUED
    finally:
        await engine.shutdown(grace=1)


def test_a_ctrl_c_under_a_redis_that_stopped_answering_is_acknowledged_at_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """``outlast run``'s view read the record from the store at every tick: with Redis frozen, the line
    saying a Ctrl-C was heard ("pausing at its next safe point") came 27 s after it, so a person pressed it
    again and again. The view now waits half a second for a record, then shows what the engine knows."""
    assert redis_server.proc is not None
    cli = CliAt(tmp_path / "state")
    try:
        proc = cli.start("--store", redis_server.url, "run", "demo", "-p", "items=400", "-p", "seconds=0.05")
        proc.wait_line(lambda ln: "running" in ln and " 0/400" not in ln and "items" in ln)
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(1.0)
            proc.signal(signal.SIGINT)
            heard = time.monotonic()
            proc.wait_line(lambda ln: "pausing at its next safe point" in ln, timeout=30)
            assert time.monotonic() - heard < 15  # before: 27 s, the store's reply timeout and retries
        finally:
            proc.signal(signal.SIGKILL)
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        proc.wait(30)
    finally:
        cli.close()


@pytest.mark.parametrize(("ask", "settled"), [("pause", Status.PAUSED), ("cancel", Status.CANCELLED)])
async def test_a_stop_the_store_did_not_confirm_is_asked_again_when_the_lease_was_lost_meanwhile(
    redis_server: RedisServer, tmp_path: Path, ask: str, settled: Status
) -> None:
    """A pause (or cancel) of work this engine runs, asked while Redis is frozen: the work stops at once, and the
    asker is told the store did not confirm it. Frozen past the lease, the attempt lost the operation: it was
    queued again as an orphan and run again (by this very engine), the pause forgotten, though the dashboard had
    stopped the work (found by the dashboard's test on a loaded machine). The engine now asks it again once
    the store answers: whoever holds the operation by then pauses it. Found orphaned by this engine's own
    recovery before the attempt ended, it was queued again and ran some items before the request was asked
    again: this engine resumes no orphan whose stop it could not store."""
    settings = load_settings(state_dir=tmp_path / "state", plugins=["tests.ops_for_tests"], grace_period=2.0)
    store = open_store(f"{redis_server.url}?retry_for=0.5&lease_ttl=1", namespace="t")
    engine = Engine(store=store, settings=settings)
    ran = tmp_path / "ran"
    assert redis_server.proc is not None
    await engine.start()
    try:
        # The handler takes 4 s to let go once stopped: Redis answers again while its attempt still runs, so
        # this engine's own recovery finds the operation orphaned (its lease ran out) before the attempt ends.
        params = {"items": 20_000, "seconds": 0.01, "log_file": str(ran), "linger": 4.0}
        op = await engine.submit(OperationSpec(type="ledger", params=params))
        await until(lambda: op.id in engine.running_ids and ran.exists() and len(ran.read_text().split()) > 3)
        link = store.link  # type: ignore[attr-defined]
        reply_wait, link.timeout = link.timeout, 0.3  # calls fail within the freeze
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreError, match="did not confirm"):
                await getattr(engine, ask)(op.id)
            await asyncio.sleep(0.2)  # the item in flight when asked
            stopped_at = len(ran.read_text().split())
            await asyncio.sleep(2.5)  # past the lease
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
            # Redis answers again: the store's own reply wait from now on. Kept at 0.3 s, any call after the thaw
            # (the engine's asking again, this test's reads of the record) failed when a loaded machine held Redis
            # or this process up for 0.65 s (two tries within retry_for), though nothing was frozen any more.
            link.timeout = reply_wait
        deadline = time.monotonic() + 30
        while (await store.get(op.id)).status is not settled and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # long enough for an operation queued again to be claimed and run again
        final = await store.get(op.id)
        assert final.status is settled, final.status_message
        assert len(ran.read_text().split()) == stopped_at, "run again after the stop, from the orphan's resume"
    finally:
        await engine.shutdown(grace=1)
