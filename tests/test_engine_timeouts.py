"""Timeout profiles: the formula, extension while making progress, stall, deadline, priorities and aging."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine import (
    SEED_PROFILES,
    Engine,
    InvalidInput,
    OperationContext,
    OperationSpec,
    Priority,
    Settings,
    Status,
    TimeoutExtended,
    TimeoutProfile,
    load_settings,
    operation,
)
from engine.models import Operation, Progress, new_id
from engine.profiles import DEFAULT_PROFILE, profile_for
from tests.conftest import REPO
from tests.fixtures_engine import collect, make_engine, until

SEED_TYPES = {
    "codebase_indexing",
    "code_analysis",
    "dependency_analysis",
    "security_scan",
    "performance_profiling",
    "comprehensive_test_suite",
    "integration_testing",
    "performance_testing",
    "load_testing",
    "kb_population",
    "kb_optimization",
    "vector_indexing",
    "semantic_analysis",
    "backup_operation",
    "migration_operation",
    "cleanup_operation",
    "monitoring_collection",
}


def test_all_seed_types_have_profiles() -> None:
    assert set(SEED_PROFILES) >= SEED_TYPES
    ci = SEED_PROFILES["codebase_indexing"]
    assert (
        ci.base_timeout,
        ci.per_item_timeout,
        ci.max_timeout,
        ci.checkpoint_interval,
        ci.progress_report_interval,
        ci.failure_threshold,
    ) == (3600, 10, 14400, 300, 30, 5)
    ts = SEED_PROFILES["comprehensive_test_suite"]
    assert (
        ts.base_timeout,
        ts.per_item_timeout,
        ts.max_timeout,
        ts.checkpoint_interval,
        ts.progress_report_interval,
        ts.failure_threshold,
    ) == (2400, 120, 10800, 600, 60, 10)
    sec = SEED_PROFILES["security_scan"]
    assert sec.base_timeout == 45 * 60 and sec.max_timeout == 3 * 3600
    assert profile_for("some_plugin_type") == DEFAULT_PROFILE


@pytest.mark.parametrize(
    ("items", "expected"),
    [(None, 3600), (0, 3600), (100, 3600 + 1000), (1079, 3600 + 10790), (1080, 14400), (10**6, 14400)],
)
def test_effective_timeout_formula(items: int | None, expected: float) -> None:
    p = SEED_PROFILES["codebase_indexing"]
    assert p.effective_timeout(items) == expected
    assert ("= max" in p.basis(items)) == (expected == 14400 and (items or 0) * 10 + 3600 > 14400)


def test_profile_overrides_validated() -> None:
    p = SEED_PROFILES["demo"].merged({"checkpoint_interval": 2, "retry": {"max_attempts": 1}})
    assert p.checkpoint_interval == 2 and p.retry.max_attempts == 1
    with pytest.raises(InvalidInput, match="checkpoint_interval"):
        SEED_PROFILES["demo"].merged({"checkpoint_interval": -1})
    with pytest.raises(InvalidInput, match="nonsense"):
        SEED_PROFILES["demo"].merged({"nonsense": 1})
    with pytest.raises(InvalidInput, match="below base_timeout"):
        SEED_PROFILES["demo"].merged({"max_timeout": 1, "base_timeout": 10})


def test_config_file_profiles(tmp_path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_concurrent = 7\n[profiles.codebase_indexing]\ncheckpoint_interval = 12\n")
    s = load_settings(config_file=cfg, env={})
    assert s.max_concurrent == 7 and s.origins["max_concurrent"] == str(cfg)
    assert s.profile("codebase_indexing").checkpoint_interval == 12
    assert s.profile("codebase_indexing").base_timeout == 3600
    s = load_settings(config_file=cfg, env={"OUTLAST_MAX_CONCURRENT": "2"}, max_concurrent=None)
    assert s.max_concurrent == 2 and s.origins["max_concurrent"] == "environment"
    s = load_settings(config_file=cfg, env={"OUTLAST_MAX_CONCURRENT": "2"}, max_concurrent=9)
    assert s.max_concurrent == 9 and s.origins["max_concurrent"] == "argument"


def test_outlast_config_names_the_file_profiles_came_from(tmp_path) -> None:
    """`outlast config` ("effective settings and where each came from") said profiles came from "default"
    when a config file's [profiles.TYPE] set them."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[profiles.demo]\ncheckpoint_interval = 2\n")
    assert load_settings(config_file=cfg, env={}).origins["profiles"] == str(cfg)
    assert load_settings(env={}).origins["profiles"] == "default"
    r = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--config", str(cfg), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OUTLAST_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("profiles "))
    assert row.split()[-1] == str(cfg), r.stdout


async def test_deadline_extended_while_making_progress(engine: Engine) -> None:
    events = collect(engine, (TimeoutExtended,))
    op = await engine.submit(
        OperationSpec(
            type="ledger",
            params={"items": 30, "seconds": 0.03},
            profile={"base_timeout": 0.4, "per_item_timeout": 0, "max_timeout": 30},
        )
    )
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED
    assert final.extensions >= 1 or any(e.operation_id == op.id for e in events)
    assert any(e.operation_id == op.id for e in events)


@operation("test_items_from_a_generator")
async def items_from_a_generator(ctx: OperationContext, p: Any) -> dict:
    """Items from a generator (os.walk, a cursor): no total known."""
    async for _ in ctx.items((i for i in range(p["items"])), key=str):
        await asyncio.sleep(p["seconds"])
    return {"done": ctx.done}


async def test_work_with_no_total_is_extended_while_items_are_done(engine: Engine) -> None:
    """Items from a generator give no total to reckon the rest by: work doing 25 items/s was stopped at its
    base_timeout, timed_out (an outside hour: at 2 s of a 6 s run). Extended a slice at a time while items are
    done, up to max_timeout, which still stops it; the stall timeout stops one that stands still."""
    events = collect(engine, (TimeoutExtended,))
    profile = {"base_timeout": 0.5, "per_item_timeout": 0, "max_timeout": 30}
    op = await engine.submit(
        OperationSpec(type="test_items_from_a_generator", params={"items": 60, "seconds": 0.025}, profile=profile)
    )
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED and final.result == {"done": 60}, final.status_message
    assert any(e.operation_id == op.id and "no total known" in e.reason for e in events), events
    short = {**profile, "max_timeout": 1.0}
    op = await engine.submit(
        OperationSpec(type="test_items_from_a_generator", params={"items": 200, "seconds": 0.025}, profile=short)
    )
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.TIMED_OUT and final.status_message.startswith("deadline passed (1s)"), final
    logs = [r.message for r in (await engine.store.read_logs(op.id))[0]]
    assert any("max_timeout 1s reached" in m for m in logs), logs


async def test_slow_items_with_no_total_are_extended_on_their_pace(engine: Engine) -> None:
    """An item every 5 s from a generator was stopped at a base_timeout of 8 s, 3 s after its last item: none
    was done in the last quarter of the attempt, read as "no item done lately". An item within twice the
    attempt's time per item is on its pace: extended, as one with a total and the same rate is."""
    await _completes_extended(engine, "test_items_from_a_generator", {"items": 3, "seconds": 2}, 3, {"done": 3})


async def test_a_command_reporting_no_count_is_extended_while_its_output_goes_on(engine: Engine) -> None:
    """A command whose output has no progress lines (a build) has no rate: it was stopped at base_timeout, "no
    item done lately", while it printed a line every 0.2 s (1h of a command's 24h max_timeout, by default).
    Its output lately is its progress: extended a slice at a time, up to max_timeout; silent lately (or
    standing still past stall_timeout), it stops as before."""
    events = collect(engine, (TimeoutExtended,))
    printing = "for i in $(seq 20); do echo building $i; sleep 0.2; done"
    await _completes_extended(
        engine, "command", {"command": printing, "shell": True}, 1, {"exit_code": 0, "lines": 20, "checkpoint": None}
    )
    assert any("no count reported, output or steps lately" in e.reason for e in events), events
    profile = {"base_timeout": 1, "per_item_timeout": 0, "max_timeout": 60}
    silent = OperationSpec(type="command", params={"command": "echo started; sleep 30", "shell": True}, profile=profile)
    op = await engine.submit(silent)
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.TIMED_OUT and final.extensions == 0, final
    logs = [r.message for r in (await engine.store.read_logs(op.id))[0]]
    assert any("no count reported, and no output or step lately" in m for m in logs), logs


async def _completes_extended(
    engine: Engine, type_: str, params: dict[str, Any], base_timeout: float, result: dict[str, Any]
) -> None:
    """``type_`` with ``params``, its deadline at ``base_timeout`` (``max_timeout`` 60 s), completes with
    ``result``, extended on its rate at least once."""
    profile = {"base_timeout": base_timeout, "per_item_timeout": 0, "max_timeout": 60}
    op = await engine.submit(OperationSpec(type=type_, params=params, profile=profile))
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED and final.result == result, final.status_message
    assert final.extensions >= 1, final


@operation("test_one_large_item")
async def one_large_item(ctx: OperationContext, p: Any) -> dict:
    """One item reported in parts (bytes of one large file copied), as a migrated function's
    ``progress_callback(0.4, 1)`` is."""
    ctx.total = 1
    for step in range(1, p["steps"]):
        await asyncio.sleep(p["seconds"])
        ctx.fraction = step / p["steps"]
    await asyncio.sleep(p["seconds"])
    ctx.done = 1
    return {"done": ctx.done}


async def test_the_part_of_an_item_done_counts_in_the_rate(engine: Engine) -> None:
    """One large item reported in parts had done no whole item at its deadline: stopped as "no item done in
    this attempt to reckon the rest by", at a steady 10% a second with 59 s of max_timeout left."""
    await _completes_extended(engine, "test_one_large_item", {"steps": 30, "seconds": 0.1}, 1, {"done": 1})


async def test_deadline_passed_when_max_timeout_too_short(engine: Engine) -> None:
    op = await engine.submit(
        OperationSpec(
            type="ledger",
            params={"items": 200, "seconds": 0.02},
            profile={"base_timeout": 0.4, "per_item_timeout": 0, "max_timeout": 0.6},
        )
    )
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.TIMED_OUT
    assert "deadline passed" in final.status_message
    # Stopped at a safe point with a final checkpoint: resumable without losing done items.
    _cp, ledger = await engine.store.load_checkpoint(op.id)
    assert len(ledger.done) == final.progress.done > 0
    await engine.store.update(op.id, profile={**final.profile, "max_timeout": 60})
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED and final.result == {"sum": sum(range(200))}


async def test_fixed_timeout(engine: Engine) -> None:
    op = await engine.submit(
        OperationSpec(
            type="ledger",
            params={"items": 500, "seconds": 0.02},
            timeout=0.3,
            profile={"base_timeout": 0.1, "max_timeout": 0.5},
        )
    )
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.TIMED_OUT
    assert final.timeout == 0.3


async def test_an_estimate_of_items_gives_way_to_the_total_the_handler_loops_over(engine: Engine) -> None:
    """`--items N` (total_items) estimates the count "until the handler reports the real total": a handler
    looping with ctx.items over a sized iterable kept the estimate (`outlast run demo -p items=3 --items 10`
    ended "completed at 3/10 items"), its percent, ETA and deadline reckoned on items that never came."""
    op = await engine.submit(
        OperationSpec(
            type="demo",
            params={"items": 30, "seconds": 0.05},
            total_items=1000,
            profile={"base_timeout": 60, "per_item_timeout": 10, "max_timeout": 100_000},
        )
    )
    assert op.effective_timeout == 60 + 10 * 1000
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED
    assert (final.progress.done, final.progress.total) == (30, 30)
    assert final.effective_timeout == 60 + 10 * 30, final.timeout_basis


async def test_a_run_under_a_second_settles_with_the_timeout_of_its_total(engine: Engine) -> None:
    """The record's timeout and basis were written on the clock (once a second at most): an attempt done
    before that settled with the basis of its submit, "base 600s + 1s x 0 items" for a run of 3 items
    (`outlast show`, the dashboard's detail), and the timeout of no items."""
    op = await engine.submit(
        OperationSpec(
            type="demo",
            params={"items": 3, "seconds": 0},
            profile={"base_timeout": 600, "per_item_timeout": 1, "max_timeout": 3600},
        )
    )
    assert op.timeout_basis == "min(max 3600s, base 600s + 1s x 0 items) = 600s"
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED and final.progress.total == 3
    assert final.finished_at - final.started_at < 1.0  # the case: settled before the clock wrote the record
    assert final.timeout_basis == "min(max 3600s, base 600s + 1s x 3 items) = 603s"
    assert final.effective_timeout == 603
    stored = await engine.store.get(op.id)
    assert (stored.timeout_basis, stored.effective_timeout) == (final.timeout_basis, 603)


async def test_stall_times_out(engine: Engine) -> None:
    op = await engine.submit(
        OperationSpec(type="silent", params={"items": 5, "hang_after": 2}, profile={"stall_timeout": 0.5})
    )
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.TIMED_OUT
    assert final.status_message.startswith("stalled")
    assert final.progress.done == 2


async def test_uncooperative_handler_forced_after_grace(settings: Settings) -> None:
    settings.grace_period = 0.3
    async with make_engine(settings) as engine:
        op = await engine.submit(
            OperationSpec(
                type="demo", params={"items": 10, "seconds": 0.01, "hang_at": 3}, profile={"stall_timeout": 0.4}
            )
        )
        final = await engine.wait(op.id, timeout=30)
        assert final.status is Status.TIMED_OUT
        assert "forced" in final.status_message


def _queued(priority: Priority, queued_at: float) -> Operation:
    return Operation(
        id=new_id(),
        type="ledger",
        priority=priority,
        created_at=queued_at,
        queued_at=queued_at,
        updated_at=queued_at,
        profile=TimeoutProfile.model_validate(SEED_PROFILES["demo"].model_dump()).model_dump(),
    )


async def test_priority_order_fifo_and_aging(settings: Settings) -> None:
    async with make_engine(settings, run_queue=False) as engine:
        store = engine.store
        t = 1_000_000.0
        ops = [
            _queued(Priority.LOW, t + 0),
            _queued(Priority.NORMAL, t + 1),
            _queued(Priority.HIGH, t + 2),
            _queued(Priority.NORMAL, t + 3),
            _queued(Priority.HIGH, t + 4),
        ]
        for o in ops:
            await store.create(o)
        order = []
        while (c := await store.claim(engine.worker, t + 10, aging=300)) is not None:
            order.append(c.id)
        assert order == [ops[2].id, ops[4].id, ops[1].id, ops[3].id, ops[0].id]

    # Aging: with 5 s per level, low work waiting 12 s beats high work queued just now.
    settings2 = load_settings(state_dir=settings.state_dir.parent / "s2", plugins=["tests.ops_for_tests"])
    async with make_engine(settings2, run_queue=False) as engine:
        store = engine.store
        old_low = _queued(Priority.LOW, t)
        fresh_high = _queued(Priority.HIGH, t + 12)
        for o in (fresh_high, old_low):
            await store.create(o)
        first = await store.claim(engine.worker, t + 12, aging=5)
        assert first.id == old_low.id


async def test_engine_runs_by_priority(settings: Settings) -> None:
    settings.max_concurrent = 1
    async with make_engine(settings, run_queue=False) as submitter:
        low = await submitter.submit(OperationSpec(type="ledger", params={"items": 2}, priority=Priority.LOW))
        normal = await submitter.submit(OperationSpec(type="ledger", params={"items": 2}))
        high = await submitter.submit(OperationSpec(type="ledger", params={"items": 2}, priority=Priority.HIGH))
    started: list[str] = []
    async with make_engine(settings) as runner:
        runner.subscribe(
            lambda e: started.append(e.operation_id) if getattr(e, "status", None) is Status.RUNNING else None
        )
        for op in (low, normal, high):
            assert (await runner.wait(op.id, timeout=20)).status is Status.COMPLETED
    assert started == [high.id, normal.id, low.id]


async def test_set_priority(settings: Settings) -> None:
    async with make_engine(settings, run_queue=False) as engine:
        op = await engine.submit(OperationSpec(type="ledger"))
        assert (await engine.set_priority(op.id, Priority.HIGH)).priority is Priority.HIGH
        assert Priority.LOW.raised() is Priority.NORMAL and Priority.HIGH.raised() is Priority.HIGH
        depth = await engine.store.queue_depth()
        assert depth[Priority.HIGH] == 1 and depth[Priority.NORMAL] == 0


def test_new_ids_sortable_and_safe() -> None:
    ids = [new_id() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == 2000
    assert all(len(i) == 13 and i.isalnum() and i.islower() for i in ids)
    time.sleep(0.002)
    assert new_id() > ids[-1]


async def test_a_profile_for_no_known_type_is_said_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``[profiles.codebase_indexng]`` (a misspelt type) changed nothing and said nothing, where an unknown
    key inside a profile is refused."""
    profiles = {"codebase_indexng": {"base_timeout": 5.0}, "demo": {"base_timeout": 700.0}}
    settings = load_settings(state_dir=tmp_path / "state", profiles=profiles)
    with caplog.at_level(logging.WARNING, logger="outlast"):
        async with Engine(settings=settings, run_queue=False):
            pass
    said = [r.getMessage() for r in caplog.records if "no such operation type" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("profiles for codebase_indexng:"), said


async def test_a_checkpoint_past_the_estimate_keeps_no_total_and_a_resumed_estimate_stays_one(engine: Engine) -> None:
    """A handler with no total of its own counting past the submitter's estimate (``--items 3``) shows no total,
    "6/?"; its checkpoint kept the estimate, 100% "6/3" in ``outlast show``'s checkpoints and the dashboard's
    pane. And an estimate a checkpoint kept came back from it as the handler's own total: resumed past it,
    the count showed "12/8" where the first attempt would have said "12/?"."""
    past = await engine.submit(OperationSpec(type="silent", params={"items": 10, "hang_after": 6}, total_items=3))
    await until(lambda: (engine.live(past.id) or Progress()).done == 6)
    await engine.pause(past.id)
    assert (await engine.wait(past.id, timeout=20)).status is Status.PAUSED
    loaded = await engine.store.load_checkpoint(past.id)
    assert loaded is not None
    assert (loaded[0].processed_items, loaded[0].total_items, loaded[0].progress_percentage) == (6, None, None)

    ahead = await engine.submit(OperationSpec(type="silent", params={"items": 10, "hang_after": 6}, total_items=8))
    await until(lambda: (engine.live(ahead.id) or Progress()).done == 6)
    await engine.pause(ahead.id)
    assert (await engine.wait(ahead.id, timeout=20)).status is Status.PAUSED
    loaded = await engine.store.load_checkpoint(ahead.id)
    assert loaded is not None and (loaded[0].total_items, loaded[0].progress_percentage) == (8, 75.0)
    await engine.resume(ahead.id)
    live = await until(lambda: (p := engine.live(ahead.id)) is not None and p.done == 12 and p)
    assert live.total is None, live
    await engine.cancel(ahead.id)
