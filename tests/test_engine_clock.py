"""The engine's clock against what a handler does to the process: time it runs counts, time it is stopped
does not."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from engine import Engine, Operation, OperationSpec, Progress, Status, load_settings, open_store
from engine.store import Store
from tests.fixtures_cli import run_cli


async def ran(state_dir: Path, type_: str, params: dict[str, Any], profile: dict[str, Any], said: str = "") -> Any:
    """``type_`` (tests.ops_clock) run to its end on a fresh engine: its final record, and its log lines holding
    ``said``."""
    settings = load_settings(state_dir=state_dir, plugins=["tests.ops_clock"], grace_period=2.0)
    async with Engine(store=open_store(state_dir), settings=settings) as engine:
        op = await engine.submit(OperationSpec(type=type_, params=params, profile=profile))
        final: Operation = await engine.wait(op.id, timeout=60)
        lines = [r.message for r in (await engine.logs(op.id))[0] if said and said in r.message]
    return final, lines


async def test_a_handler_holding_the_gil_is_no_stop_of_the_process(state_dir: Path) -> None:
    """A handler computing in C for seconds without letting go of the GIL kept the watch thread from waking,
    as a SIGSTOP does: that time was taken for a stop of the process and counted toward no stall or
    deadline. An operation with a stall_timeout of 1s held the loop for 3s, and completed; a handler doing
    that in chunks ran past max_timeout for ever. The process ran all that time (its CPU time says so)."""
    final, _ = await ran(state_dir, "gil_hog", {"hold": 3}, {"stall_timeout": 1})
    assert final.status is Status.TIMED_OUT, (final.status, final.status_message)
    assert final.status_message.startswith("stalled"), final.status_message


async def test_a_handler_holding_the_loop_stalls_itself_not_its_neighbour(state_dir: Path) -> None:
    """A handler holding the event loop (``time.sleep``) for 3s made a healthy neighbour (an item every 0.8s,
    stall_timeout 1.5s) end "stalled: no progress for 1.5s" the moment the loop came back: it could report
    nothing meanwhile. That time counts toward no stall clock but the holder's, which stalls."""
    settings = load_settings(state_dir=state_dir, plugins=["tests.ops_clock"], grace_period=2.0)
    async with Engine(store=open_store(state_dir), settings=settings) as engine:
        stall = {"stall_timeout": 1.5}
        healthy = await engine.submit(
            OperationSpec(type="warmup", params={"items": 5, "first": 0.05, "d": 0.8}, profile=stall)
        )
        while (live := engine.live(healthy.id)) is None or live.done < 2:
            await asyncio.sleep(0.02)
        # The hold starts once the clock has seen that item (a change seen only after the hold reads as
        # progress), and well before the next item ends: after the hold the clock looks before the item ends.
        await asyncio.sleep(0.25)
        holder = await engine.submit(OperationSpec(type="sleeper", params={"hold": 3}, profile=stall))
        held = await engine.wait(holder.id, timeout=30)
        neighbour = await engine.wait(healthy.id, timeout=30)
    assert neighbour.status is Status.COMPLETED, (neighbour.status, neighbour.status_message)
    assert held.status is Status.TIMED_OUT and (held.status_message or "").startswith("stalled"), held.status_message


async def test_work_that_speeds_up_is_judged_by_its_pace_now(state_dir: Path) -> None:
    """At the deadline the rest's time was reckoned from the attempt's average rate only: work with a slow
    start (one item of 1s, then 100 a second) was stopped at the deadline of 1.5s, its average saying the
    rest needed 4.5s more, past max_timeout 5s, while at its pace then it finished by 3s. The recent rate
    counts too (the deadline still never passes max_timeout)."""
    profile = {"base_timeout": 1.5, "per_item_timeout": 0, "max_timeout": 5}
    final, _ = await ran(state_dir, "warmup", {"items": 200, "first": 1.0, "d": 0.01}, profile)
    assert final.status is Status.COMPLETED, (final.status, final.status_message, final.progress.done)
    assert final.extensions >= 1


async def test_a_total_estimated_again_keeps_the_extended_deadline(state_dir: Path) -> None:
    """A change of total set the deadline back to the formula's, whatever extension the rate had given: past
    the base timeout, a handler estimating its total again at each item had the deadline passed and extended
    again at each, an "extended" line in its log and a TimeoutExtended event per item (21 in 2s)."""
    profile = {"base_timeout": 0.5, "per_item_timeout": 0, "max_timeout": 30}
    final, lines = await ran(state_dir, "estimating", {"items": 40, "d": 0.04}, profile, "deadline extended")
    assert final.status is Status.COMPLETED, (final.status, final.status_message)
    assert final.extensions == len(lines) <= 2, lines


async def test_the_record_counts_every_extension(state_dir: Path) -> None:
    """The final write took the timeout and its basis from the clock, not its count of extensions: one given
    within the last second of an attempt (between two live writes) was in its log and not in its record."""
    profile = {"base_timeout": 0.4, "per_item_timeout": 0, "max_timeout": 30}
    final, lines = await ran(state_dir, "warmup", {"items": 16, "first": 0.04, "d": 0.04}, profile, "deadline extended")
    assert final.status is Status.COMPLETED, (final.status, final.status_message)
    assert final.extensions == len(lines) >= 1, lines


async def test_work_finishing_after_its_last_item_is_not_stopped_at_the_deadline(state_dir: Path) -> None:
    """With every item done the rate had nothing left to reckon, and the deadline stopped the handler while it
    finished (a step every 0.2s, well within max_timeout): timed out at 10 of 10 items, and so again on every
    resume, which does the finishing again under the same base timeout. It is extended while the handler
    shows life (a stall still stops it), never past max_timeout."""
    profile = {"base_timeout": 0.5, "per_item_timeout": 0, "max_timeout": 30, "stall_timeout": 1}
    final, _ = await ran(state_dir, "finishing", {"items": 10, "steps": 6}, profile)
    assert final.status is Status.COMPLETED, (final.status, final.status_message)
    assert final.extensions >= 1


async def test_a_deadline_not_extended_says_why(state_dir: Path) -> None:
    """The log said "deadline of 0.3s passed: stopping" whatever kept it from being extended: now the rate,
    what is left and the max_timeout it would pass (or the fixed timeout, the missing total), with the time in
    all that passes it ("need 3s more, past max_timeout 3s" read as 3 <= 3)."""
    profile = {"base_timeout": 0.3, "per_item_timeout": 0, "max_timeout": 0.6}
    final, said = await ran(state_dir, "warmup", {"items": 200, "first": 0.02, "d": 0.02}, profile, "deadline passed")
    assert final.status is Status.TIMED_OUT, (final.status, final.status_message)
    assert len(said) == 1 and "left need" in said[0] and "s in all, past max_timeout 0.6s" in said[0], said


async def test_a_timeout_after_extensions_names_the_deadline_it_passed(state_dir: Path) -> None:
    """Extended while it finished, then stopped at its max_timeout: the status line said "deadline passed
    (0.5s)", the base timeout, of work stopped after 1.5s (its log said max_timeout reached)."""
    profile = {"base_timeout": 0.5, "per_item_timeout": 0, "max_timeout": 1.5, "stall_timeout": 1}
    final, _ = await ran(state_dir, "finishing", {"items": 5, "steps": 40}, profile)
    assert final.status is Status.TIMED_OUT and final.extensions >= 1, (final.status, final.extensions)
    assert "deadline passed (1.5s)" in (final.status_message or ""), final.status_message


async def test_an_eta_past_the_year_9999_is_no_internal_error(state_dir: Path) -> None:
    """A total of 10^15 items at a few a second: the ETA is a million years on, and the seed's
    ``estimated_completion`` (a date) could not be made: ``ls --json`` and ``show --json`` ended in an internal
    error, exit 70. They give no date for it, as for no ETA; the seconds stand in ``eta``."""
    final, _ = await ran(state_dir, "far_total", {"items": 5, "d": 0.05}, {})
    assert final.status is Status.COMPLETED and final.progress.eta and final.progress.eta > 3e11, final.progress
    for args in (["ls"], ["show", final.id]):
        r = run_cli("--json", *args, env={**os.environ, "OUTLAST_STATE_DIR": str(state_dir)})
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        [got] = got if args == ["ls"] else [got]
        assert got["progress"]["eta"] == final.progress.eta and got["progress"]["estimated_completion"] is None, got


async def written_again(store: Store, op_id: str, done: int) -> tuple[Progress, Progress]:
    """The stored progress of ``op_id`` once it has ``done`` items, and the next write of it after that."""
    still = (await store.get(op_id)).progress
    while still.done < done:
        await asyncio.sleep(0.05)
        still = (await store.get(op_id)).progress
    stored = still
    while stored.updated_at == still.updated_at:
        await asyncio.sleep(0.05)
        stored = (await store.get(op_id)).progress
    return still, stored


async def test_the_eta_follows_the_pace_now_and_ages_while_the_work_stands_still(state_dir: Path) -> None:
    """The ETA was reckoned from the attempt's average rate: 500 items in the first instant and one every 0.2 s
    since said "eta 3s" of some 100 s left. And the record of work standing still was never written again: every
    other reader (the dashboard, the API) showed its last rate and ETA for as long as it stood still."""
    settings = load_settings(state_dir=state_dir, plugins=["tests.ops_clock"], grace_period=2.0)
    params = {"burst": 500, "total": 1000, "slow": 15, "d": 0.2}
    async with Engine(store=open_store(state_dir), settings=settings) as engine:
        op = await engine.submit(OperationSpec(type="burst_then_slow", params=params))
        while (live := engine.live(op.id)) is None or live.done < 515:
            await asyncio.sleep(0.05)
        # 485 left at 5 a second at most; its rate is its pace now, not the average of its burst
        assert live.eta is not None and live.eta > 20, live
        assert live.rate is not None and live.rate < 20, live
        store = open_store(state_dir)  # another process's view: the record as stored
        await store.open()
        try:
            still, stored = await asyncio.wait_for(written_again(store, op.id, 515), 60)
        finally:
            await store.close()
        await engine.cancel(op.id)
    assert stored.done == still.done and stored.eta is not None and still.eta is not None
    assert stored.eta > still.eta, (still, stored)  # standing still: it says so, later each time


async def test_a_count_begun_again_by_a_resume_has_a_rate(state_dir: Path) -> None:
    """A handler counting this run's list of what is left (from 0 after a resume at 50, as the README's
    ``ctx.progress`` allows) had its rate measured from the resume's 50: none, for the whole attempt, and no
    ETA or deadline extension reckoned from one."""
    settings = load_settings(state_dir=state_dir, plugins=["tests.ops_clock"], grace_period=2.0)
    async with Engine(store=open_store(state_dir), settings=settings) as engine:
        op = await engine.submit(OperationSpec(type="counts_left", params={"n": 150, "d": 0.05}))
        while (live := engine.live(op.id)) is None or live.done < 50:
            await asyncio.sleep(0.05)
        await engine.pause(op.id)
        paused = await engine.wait(op.id, timeout=60)
        assert paused.status is Status.PAUSED and paused.progress.done >= 50, paused.progress
        await engine.resume(op.id)
        while (live := engine.live(op.id)) is None or live.done < 10 or live.total == 150:
            await asyncio.sleep(0.05)
        await engine.cancel(op.id)
    assert live.done < 50 and live.rate is not None and live.eta is not None, live


async def test_items_failed_or_skipped_are_not_left_in_the_eta(state_dir: Path) -> None:
    """The ETA reckoned the items failed and skipped as still to do: work with every item tried said it had
    more time to go, the more the more of its items failed."""
    settings = load_settings(state_dir=state_dir, plugins=["tests.ops_clock"], grace_period=2.0)
    params = {"n": 30, "d": 0.02, "fail_every": 4, "skip_every": 5}
    async with Engine(store=open_store(state_dir), settings=settings) as engine:
        op = await engine.submit(OperationSpec(type="some_fail", params=params, profile={"failure_threshold": 30}))
        while (live := engine.live(op.id)) is None or live.done + live.failed + live.skipped < 30:
            await asyncio.sleep(0.05)
        await engine.cancel(op.id)
    assert live.failed and live.skipped and live.eta == 0, live
