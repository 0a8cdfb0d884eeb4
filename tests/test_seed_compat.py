"""Issue 16: the seed's names and knobs: OperationType, per_file_timeout, checkpoint_every,
resume with a changed profile, the seed's field names on records and checkpoints."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import Any, List  # noqa: UP035 (List: the seed's spelling)

import pytest

from engine import (
    Engine,
    InvalidInput,
    Operation,
    OperationContext,
    OperationSpec,
    OperationType,
    Settings,
    Status,
    migrate_timeout_operation,
    open_store,
    operation,
)
from engine.autobot import OperationCheckpoint, checkpoint_listing, seed_checkpoint
from engine.exitcodes import ExitCode
from engine.models import type_name
from engine.registry import progress_reporter
from tests.fixtures_cli import Cli
from tests.fixtures_ops import run_json
from tests.fixtures_redis import RedisServer


def test_operation_type_is_the_seeds_enum_and_accepted_as_a_type() -> None:
    """(@operation and @migrate_timeout_operation with it: tests/test_seed_samples.py, in a process of its own.)"""
    assert len(OperationType) == 17 and OperationType.CODEBASE_INDEXING == "codebase_indexing"
    spec = OperationSpec(type=OperationType.SECURITY_SCAN)
    assert spec.type == "security_scan" and type(spec.type) is str
    assert type_name(OperationType.BACKUP_OPERATION) == "backup_operation" and type_name("x") == "x"


class CallbackCtx:
    """What a migrated function's ``progress_callback`` reports to, as the context keeps it."""

    done, total, step, message, metrics = 0, None, None, None, {}

    def progress(self, done=None, total=None, step=None, message=None, **metrics):  # type: ignore[no-untyped-def]
        self.done, self.total = done if done is not None else self.done, total or self.total
        self.step, self.message = step or self.step, message or self.message
        self.metrics = {**self.metrics, **metrics}

    def add_metrics(self, metrics):  # type: ignore[no-untyped-def]
        self.metrics = {**self.metrics, **metrics}


async def test_migrated_callback_takes_both_styles_awaited_or_not() -> None:
    ctx = CallbackCtx()
    cb = progress_reporter(ctx)
    await cb("Step 3", 3, 100)  # the seed's
    assert (ctx.done, ctx.total, ctx.step) == (3, 100, "Step 3")
    cb(7, 10, "seven", rate=2)  # the plain one, not awaited
    assert (ctx.done, ctx.total, ctx.message, ctx.metrics["rate"]) == (7, 10, "seven", 2)


async def test_migrated_callback_takes_the_seeds_argument_names() -> None:
    """``progress_callback(current_step=..., processed_items=..., total_items=...)``, the names of the seed's
    ``update_progress``: they were taken as metrics, and the operation showed 0 of no total throughout."""
    ctx = CallbackCtx()
    cb = progress_reporter(ctx)
    await cb(
        current_step="Step 3", processed_items=3, total_items=100, status_message="three", performance_metrics={"r": 1}
    )
    assert (ctx.done, ctx.total, ctx.step, ctx.message, ctx.metrics) == (3, 100, "Step 3", "three", {"r": 1})
    cb("Step 4", processed_items=4, total_items=100)  # the step by position, the counts by name
    assert (ctx.done, ctx.total, ctx.step) == (4, 100, "Step 4")
    cb(done=5, total=10, current_step="x")  # the plain style's names: its other keywords stay metrics
    assert (ctx.done, ctx.total, ctx.metrics["current_step"]) == (5, 10, "x")


FRACTIONS: list[tuple[float, float]] = []
FRACTION_SEEN = asyncio.Event()


@migrate_timeout_operation("test_seed_fractions_migrated")
async def migrated_fractions(progress_callback=None) -> str:  # type: ignore[no-untyped-def]
    """Progress with fractions, each held until the test has seen it."""
    for done, total in FRACTIONS:
        FRACTION_SEEN.clear()
        await progress_callback("Step", done, total)
        await FRACTION_SEEN.wait()
    return "ok"


async def test_migrated_callback_keeps_fractions_in_the_percent(engine: Engine) -> None:
    """progress_callback(2.5, 10) was cut to 2/10, shown 20%; 0.5 of 1 was 0%. The count stays whole
    items (2/10) and the part of the next one done counts in the percent, stored too (what `show`, `ls`
    and the dashboard read); a fractional total is rounded, the percent kept."""
    FRACTIONS[:] = [(0.5, 1), (2.5, 10), (3, 10), (1.25, 2.5)]
    op = await engine.submit(OperationSpec(type="test_seed_fractions_migrated"))
    for (done, total), (count, of) in zip(FRACTIONS, [(0, 1), (2, 10), (3, 10), (1, 2)], strict=True):
        want = 100.0 * done / total

        async def shown(want: float = want) -> Operation | None:
            live = await engine.get(op.id)
            stored = await engine.store.get(op.id)
            return live if live.progress.percent == stored.progress.percent == pytest.approx(want) else None

        for _ in range(100):
            if (got := await shown()) is not None:
                break
            await asyncio.sleep(0.05)
        else:
            live = await engine.get(op.id)
            raise AssertionError(f"{done}/{total}: shown {live.progress.percent}%, not {want}%")
        assert (got.progress.done, got.progress.total) == (count, of)
        FRACTION_SEEN.set()
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED and final.progress.percent == 100.0
    assert final.progress.fraction == 0.0  # it lapsed with the count that moved on


async def test_checkpoint_every_counts_items(engine: Engine) -> None:
    """Checkpoints every 10 items (and never by the clock here): after items 10 and 20 of 25."""
    spec = OperationSpec(type="ledger", params={"items": 25}, profile={"checkpoint_every": 10})
    op = await engine.submit(spec)
    assert op.profile["checkpoint_every"] == 10 and op.profile["checkpoint_interval"] == 300
    assert (await engine.wait(op.id, timeout=20)).status is Status.COMPLETED
    assert [c.processed_items for c in await engine.checkpoints(op.id)] == [20, 10]


def test_seed_checkpoint_every_defaults() -> None:
    from engine import SEED_PROFILES

    every = {t: SEED_PROFILES[t].checkpoint_every for t in ("codebase_indexing", "comprehensive_test_suite")}
    assert every == {"codebase_indexing": 100, "comprehensive_test_suite": 10}
    assert SEED_PROFILES["security_scan"].checkpoint_every == 50


async def test_per_file_and_per_test_timeout_are_aliases(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="ledger", params={"items": 0}, profile={"per_file_timeout": 7}))
    assert op.profile["per_item_timeout"] == 7 and "per_file_timeout" not in op.profile
    with pytest.raises(InvalidInput, match="per_test_timeout and per_item_timeout are the same key"):
        await engine.submit(OperationSpec(type="ledger", profile={"per_test_timeout": 1, "per_item_timeout": 2}))


async def test_resume_with_a_profile_changes_the_new_attempts_deadline(engine: Engine) -> None:
    await resume_with_a_profile(engine)


async def test_resume_with_a_profile_on_redis(redis_server: RedisServer, settings: Settings) -> None:
    store = open_store(redis_server.url, namespace="t", checkpoint_mirror=None)
    async with Engine(store=store, settings=settings) as engine:
        await resume_with_a_profile(engine)


async def resume_with_a_profile(engine: Engine) -> None:
    spec = OperationSpec(
        type="ledger", params={"items": 30, "seconds": 0.05}, profile={"base_timeout": 0.3, "max_timeout": 0.3}
    )
    op = await engine.submit(spec)
    first = await engine.wait(op.id, timeout=30)
    assert first.status is Status.TIMED_OUT
    with pytest.raises(InvalidInput, match="max_timeout"):
        await engine.resume(op.id, profile={"max_timeout": -1})
    assert (await engine.get(op.id)).status is Status.TIMED_OUT  # a refused change stores nothing
    resumed = await engine.resume(op.id, profile={"max_timeout": 120})
    assert resumed.profile["max_timeout"] == 120 and resumed.profile_overrides["max_timeout"] == 120
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED and final.attempt == 2 and final.result == {"sum": sum(range(30))}


async def test_resume_with_a_timeout_key_replaces_a_fixed_timeout(engine: Engine) -> None:
    await resume_past_a_fixed_timeout(engine)


async def test_resume_with_a_timeout_key_replaces_a_fixed_timeout_on_redis(
    redis_server: RedisServer, settings: Settings
) -> None:
    store = open_store(redis_server.url, namespace="t", checkpoint_mirror=None)
    async with Engine(store=store, settings=settings) as engine:
        await resume_past_a_fixed_timeout(engine)


async def resume_past_a_fixed_timeout(engine: Engine) -> None:
    """Submitted with a fixed timeout (``--timeout``): a resume with ``--profile max_timeout=...`` (as the
    README says to do with a too-tight limit) stored the profile and kept the fixed timeout, which went on
    deciding the deadline: the attempt timed out as the one before, and nothing said why."""
    spec = OperationSpec(type="ledger", params={"items": 30, "seconds": 0.05}, timeout=0.3)
    op = await engine.submit(spec)
    assert (await engine.wait(op.id, timeout=30)).status is Status.TIMED_OUT
    failure = await engine.resume(op.id, profile={"failure_threshold": 3})  # no timeout key: stays fixed
    assert failure.timeout == 0.3 and failure.effective_timeout == 0.3
    assert (await engine.wait(op.id, timeout=30)).status is Status.TIMED_OUT
    resumed = await engine.resume(op.id, profile={"base_timeout": 60, "max_timeout": 120})
    assert resumed.timeout is None and resumed.timeout_basis != "fixed by --timeout"
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED and final.result == {"sum": sum(range(30))}, final.error


def test_cli_per_file_timeout_and_resume_profile(cli: Cli) -> None:
    """A run whose deadline is too tight times out; `resume --profile` gives the new attempt another one."""
    tight = ("--profile", "per_file_timeout=0.01", "--profile", "base_timeout=0.2", "--profile", "max_timeout=0.2")
    code, rec, err = run_json(cli, "run", "demo", "-p", "items=20", "-p", "seconds=0.03", "--items", "20", *tight)
    assert code == ExitCode.TIMED_OUT and rec["status"] == "timed_out", err
    op_id = rec["id"]
    assert rec["profile"]["per_item_timeout"] == 0.01 and rec["effective_timeout"] == 0.2
    r = cli("resume", op_id, "--queue", "--profile", "max_timeout=bad")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "max_timeout" in r.stderr, r.stderr
    assert cli.op(op_id).status is Status.TIMED_OUT  # refused: nothing changed
    wider = ("--profile", "base_timeout=30", "--profile", "max_timeout=60", "--profile", "failure_threshold=0")
    code, rec, err = run_json(cli, "resume", op_id, *wider)
    assert code == ExitCode.OK and rec["status"] == "completed" and rec["attempt"] == 2, err
    assert rec["profile"]["max_timeout"] == 60 and rec["profile"]["failure_threshold"] == 0
    assert rec["effective_timeout"] == 30.2 and rec["profile_overrides"]["per_item_timeout"] == 0.01
    assert rec["progress"]["progress_percentage"] == 100 and rec["progress"]["current_step"] == "item 19"
    in_full = json.loads(cli("checkpoints", op_id, "--full").stdout)  # what listings leave out
    newest = in_full[0]
    assert newest["checkpoint_id"] == str(newest["seq"]) and newest["full"] is True
    assert newest["intermediate_results"] == newest["state"] and "sum" in newest["state"]


@operation("test_seed_paths")
async def seed_paths(ctx: OperationContext, params: dict) -> dict:
    """The seed's indexing example: file infos with Paths and datetimes in intermediate_results."""
    done: list[dict] = []
    if ctx.should_resume():
        done = ctx.get_resume_data().intermediate_results["processed_files"]  # type: ignore[union-attr]
    for i in range(len(done), 6):
        done.append({"path": Path("/src") / f"f{i}.py", "at": datetime.datetime(2026, 12, 2, 12, 0, i)})
        await ctx.update_progress(f"Indexing f{i}.py", i + 1, 6)
        if i % 2 == 1:
            await ctx.save_checkpoint({"processed_files": done}, f"file_{i + 1}", source=Path("/src"))
    return {"files": [str(d["path"]) for d in done]}


async def test_seed_checkpoints_save_paths_and_datetimes_as_strings(engine: Engine) -> None:
    """The seed's own checkpoint carries a datetime, so its JSON checkpoints wrote such values as strings:
    seed code that keeps Paths in intermediate_results ran there, and failed the operation here."""
    op = await engine.submit(OperationSpec(type="test_seed_paths"))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    loaded = await engine.store.load_checkpoint(op.id)
    assert loaded is not None
    cp, _ = loaded
    assert cp.state["processed_files"][-1] == {"path": "/src/f5.py", "at": "2026-12-02 12:00:05"}
    assert cp.context_data == {"source": "/src"}
    records, _ = await engine.logs(op.id)
    said = [r.message for r in records if "saved as its str" in r.message]
    assert said == ["ctx.state['processed_files'][0]['path'] is a PosixPath: saved as its str"], said


async def test_a_checkpoint_listing_leaves_metadata_out_as_null_like_the_other_unread_fields(engine: Engine) -> None:
    """A listing showed ``"metadata": {}`` (read as "no metadata") where the full checkpoint has the attempt
    and failure count: what a listing does not read is null, with ``"full": false``."""
    op = await engine.submit(OperationSpec(type="test_seed_paths"))
    assert (await engine.wait(op.id, timeout=20)).status is Status.COMPLETED
    listed = [checkpoint_listing(c) for c in await engine.checkpoints(op.id)]
    assert listed and all(c["metadata"] is None and c["intermediate_results"] is None for c in listed)
    assert all(c["full"] is False for c in listed)
    loaded = await engine.store.load_checkpoint(op.id)
    assert loaded is not None
    full = seed_checkpoint(loaded[0], full=True)
    assert full["metadata"] == {"attempt": 1, "failures": 0} and full["full"] is True


SEED_GATE: dict[str, asyncio.Event] = {}
SEED_RESUMED: list[OperationCheckpoint | None] = []


@operation("test_seed_save_every_10")
async def seed_save_every_10(ctx: OperationContext, params: dict) -> dict:
    """The seed's indexing pattern: results kept by the handler, handed over every 10 items to save_checkpoint,
    resumed from get_resume_data().processed_items; waits at ``params["wait_at"]`` for the test to pause it."""
    start, results = 0, []
    if ctx.should_resume():
        data = ctx.get_resume_data()
        SEED_RESUMED.append(data)
        assert data is not None
        start, results = data.processed_items, list(data.intermediate_results.get("results", []))
    for i in range(start, 25):
        results.append(i)
        await ctx.update_progress(f"Indexing f{i}", i + 1, 25, {}, f"Processed {i + 1} of 25")
        if i + 1 == params.get("wait_at"):
            SEED_GATE["reached"].set()
            await SEED_GATE["go"].wait()
        if (i + 1) % 10 == 0:
            await ctx.save_checkpoint({"results": results}, f"file_{i + 1}", source="/src")
    return {"results": results}


@pytest.mark.parametrize("wait_at", [15, 5])
async def test_seed_handler_paused_between_saves_resumes_from_its_last_save(engine: Engine, wait_at: int) -> None:
    """Paused at item 15 (after a save at 10) or 5 (before any): the stop's checkpoint must carry the
    processed_items, next_step and state of one save, or a handler resuming from processed_items skips items."""
    SEED_GATE.update(reached=asyncio.Event(), go=asyncio.Event())
    SEED_RESUMED.clear()
    op = await engine.submit(OperationSpec(type="test_seed_save_every_10", params={"wait_at": wait_at}))
    await asyncio.wait_for(SEED_GATE["reached"].wait(), 20)
    await engine.pause(op.id)
    SEED_GATE["go"].set()
    assert (await engine.wait(op.id, timeout=20)).status is Status.PAUSED
    loaded = await engine.store.load_checkpoint(op.id)
    assert loaded is not None
    cp = loaded[0]
    saved = 10 if wait_at == 15 else 0
    assert (cp.processed_items, cp.state.get("results", [])) == (saved, list(range(saved)))
    assert cp.next_step == ("file_10" if saved else None) and cp.context_data == ({"source": "/src"} if saved else {})
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    assert final.result == {"results": list(range(25))}
    data = SEED_RESUMED[0]
    assert data is not None and (data.processed_items, data.next_step) == (saved, "file_10" if saved else "")


@operation("test_seed_metric_names")
async def seed_metric_names(ctx: OperationContext, params: dict) -> str:
    """performance_metrics is any dict: a "total" in seconds or a "step" count are metrics like any other."""
    metrics = {"total": 12.5, "step": 3, "done": 1, "message": "x", "files_per_second": 4.0}
    await ctx.update_progress("Indexing a.py", 1, 10, metrics, "Processed 1 of 10 files")
    return "ok"


@migrate_timeout_operation("test_seed_metric_names_migrated")
async def migrated_metric_names(progress_callback=None) -> str:  # type: ignore[no-untyped-def]
    """The migrated callback, in both styles, with metrics named as the callback's own arguments."""
    await progress_callback("Run 1", 1, 5, {"total": 0.8, "done": 1})
    progress_callback(2, 5, "two", step=7)
    return "ok"


async def test_metrics_may_be_named_total_step_done_or_message(engine: Engine) -> None:
    for type_, step, metrics in (
        ("test_seed_metric_names", "Indexing a.py", {"total": 12.5, "step": 3, "done": 1, "message": "x"}),
        ("test_seed_metric_names_migrated", "Run 1", {"total": 0.8, "done": 1, "step": 7}),
    ):
        op = await engine.submit(OperationSpec(type=type_))
        final = await engine.wait(op.id, timeout=20)
        assert final.status is Status.COMPLETED, final.error
        assert final.progress.step == step
        assert {k: final.progress.metrics[k] for k in metrics} == metrics


async def failed_then_resumed(engine: Engine, type_: str) -> Operation:
    """Run ``type_``, which fails its first attempt, resume it, and return it completed."""
    op = await engine.submit(OperationSpec(type=type_))
    assert (await engine.wait(op.id, timeout=20)).status is Status.FAILED
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final.error
    return final


SEED_SNAPSHOTS: list[dict] = []


@operation("test_seed_resume_data_snapshot")
async def seed_resume_data_snapshot(ctx: OperationContext, params: dict) -> str:
    """get_resume_data() after a resume, then a save and a change to what it returned."""
    if not ctx.should_resume():
        await ctx.save_checkpoint({"processed_files": ["a"]}, "file_1")
        raise RuntimeError("connection lost")
    data = ctx.get_resume_data()
    assert data is not None
    data.intermediate_results["processed_files"].append("changed by the handler")
    await ctx.save_checkpoint({"processed_files": ["a", "b", "c"], "extra": 1}, "file_3")
    again = ctx.get_resume_data()
    assert again is not None
    SEED_SNAPSHOTS[:] = [data.intermediate_results, again.intermediate_results, {"next_step": again.next_step}]
    return "ok"


async def test_get_resume_data_is_a_snapshot_of_the_checkpoint(engine: Engine) -> None:
    final = await failed_then_resumed(engine, "test_seed_resume_data_snapshot")
    first, again, step = SEED_SNAPSHOTS
    assert first == {"processed_files": ["a", "changed by the handler"]}  # its own copy, changed by the handler
    assert again == {"processed_files": ["a"]} and step == {"next_step": "file_1"}  # the checkpoint, unchanged
    loaded = await engine.store.load_checkpoint(final.id)
    assert loaded is not None and loaded[0].state == {"processed_files": ["a", "b", "c"], "extra": 1}


@migrate_timeout_operation("test_seed_migrated_signature", estimated_items=5)
async def migrated_with_params(path: str, patterns: List[str], depth: int = 2) -> dict:  # noqa: UP006 (the seed's)
    """The seed's migrated ``index_codebase(path, patterns)``, with a default beside."""
    return {"path": path, "patterns": patterns, "depth": depth}


async def test_a_migrated_functions_params_are_checked_against_its_signature_at_submit(engine: Engine) -> None:
    """Params that do not fit the function were taken and stored, and the operation failed when it ran
    ("missing 1 required positional argument: 'patterns'"): now refused at submit, naming the field, with
    nothing stored, as any other type's params are."""
    for params, field in (
        ({"path": "."}, "patterns: Field required"),
        ({"path": ".", "patterns": ["*.py"], "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"path": ".", "patterns": ["*.py"], "depth": "deep"}, "depth: Input should be a valid integer"),
    ):
        with pytest.raises(InvalidInput, match=f"test_seed_migrated_signature params: {field}"):
            await engine.submit(OperationSpec(type="test_seed_migrated_signature", params=params))
    assert await engine.list_operations() == []
    op = await engine.submit(
        OperationSpec(type="test_seed_migrated_signature", params={"path": ".", "patterns": ["*.py"]})
    )
    assert op.params == {"path": ".", "patterns": ["*.py"], "depth": 2} and op.total_items == 5
    done = await engine.wait(op.id, timeout=20)
    assert done.status is Status.COMPLETED and done.result == {"path": ".", "patterns": ["*.py"], "depth": 2}
    assert await migrated_with_params("x", ["*.md"]) == {
        "path": "x",
        "patterns": ["*.md"],
        "depth": 2,
    }  # directly: as before


@operation("test_seed_long_phase")
async def seed_long_phase(context: OperationContext) -> dict:
    """A last phase reported all along with the counts unchanged, as the seed's update_progress has it."""
    await context.update_progress("Indexing", 5, 5)
    for k in range(12):
        await asyncio.sleep(0.1)
        await context.update_progress(f"Finalizing part {k}", 5, 5, None, f"writing part {k} of 12")
    return {"parts": 12}


@migrate_timeout_operation("test_seed_long_phase_migrated")
async def migrated_long_phase(progress_callback=None) -> dict:  # type: ignore[no-untyped-def]
    for k in range(12):
        await asyncio.sleep(0.1)
        await progress_callback(f"Finalizing part {k}", 5, 5)
    return {"parts": 12}


@operation("test_seed_same_report")
async def seed_same_report(context: OperationContext) -> None:
    """The same report again and again: no sign of life."""
    for _ in range(100):
        await asyncio.sleep(0.1)
        await context.update_progress("Waiting", 5, 10, None, "waiting")


async def test_a_new_step_or_message_is_progress_and_the_same_one_again_is_not(engine: Engine) -> None:
    """Reported every 0.1 s, a new step (and message) each time, counts unchanged: timed out as "stalled: no
    progress for 0.5s"; the seed's current_step and status_message are progress too."""
    for type_ in ("test_seed_long_phase", "test_seed_long_phase_migrated"):
        op = await engine.submit(OperationSpec(type=type_, profile={"stall_timeout": 0.5}))
        done = await engine.wait(op.id, timeout=20)
        assert done.status is Status.COMPLETED and done.result == {"parts": 12}, (type_, done.status_message)
    op = await engine.submit(OperationSpec(type="test_seed_same_report", profile={"stall_timeout": 0.5}))
    stalled = await engine.wait(op.id, timeout=20)
    assert stalled.status is Status.TIMED_OUT and "stalled" in (stalled.status_message or "")


@migrate_timeout_operation("test_seed_migrated_none_default")
async def migrated_none_default(path: str, patterns: List[str] = None, callback: Any = None) -> dict:  # type: ignore[assignment]  # noqa: UP006, RUF013
    """``patterns: List[str] = None``, as much Python has it: the default is the function's, not refused."""
    return {"path": path, "patterns": patterns}


async def test_a_migrated_functions_default_none_is_taken_whatever_its_annotation(engine: Engine) -> None:
    op = await engine.submit(OperationSpec(type="test_seed_migrated_none_default", params={"path": "."}))
    done = await engine.wait(op.id, timeout=20)
    assert done.status is Status.COMPLETED, done.error
    assert done.result == {"path": ".", "patterns": None}
    with pytest.raises(InvalidInput, match="patterns"):
        await engine.submit(OperationSpec(type="test_seed_migrated_none_default", params={"path": ".", "patterns": 3}))


@operation("test_seed_results_not_a_dict")
async def seed_results_not_a_dict(ctx: OperationContext, params: dict) -> dict:
    files = ["a.py", "b.py"]
    await ctx.save_checkpoint(None, "start")  # nothing new: kept as it was
    await ctx.save_checkpoint(files, "file_2")  # type: ignore[arg-type]  # the list itself, not a dict
    return {}


async def test_intermediate_results_that_are_not_a_dict_are_named_in_one_line(engine: Engine) -> None:
    """A list given as ``intermediate_results`` failed with "dictionary update sequence element #0 has
    length 4; 2 is required", which names neither the call nor what it wants."""
    final = await engine.wait((await engine.submit(OperationSpec(type="test_seed_results_not_a_dict"))).id, 20)
    assert final.status is Status.FAILED
    assert final.error is not None and final.error.startswith(
        "TypeError: save_checkpoint(intermediate_results=...) takes a dict (its keys go into ctx.state), not a list"
    ), final.error
    assert "test_seed_compat.py" in final.error


@operation("test_seed_not_awaited")
async def seed_not_awaited(ctx: OperationContext) -> dict:
    for i in range(6):
        ctx.update_progress(f"item {i}", i + 1, 6)  # type: ignore[unused-coroutine]  # the await forgotten
        if i % 2 == 1:
            ctx.save_checkpoint({"i": i}, f"item {i + 1}")  # type: ignore[unused-coroutine]
    ctx.checkpoint("end")  # type: ignore[unused-coroutine]
    await ctx.update_progress("last", 6, 6)  # awaited, as before
    await ctx.save_checkpoint({"i": 6}, "done")
    return {"seq": ctx.checkpoint_seq}


async def test_the_seed_calls_without_await_are_said_and_progress_still_reported(engine: Engine) -> None:
    """Without ``await`` the seed's async calls never ran: no progress (completed at "0/0 items"), no
    checkpoint, and nothing said but a RuntimeWarning on the worker's stderr."""
    final = await engine.wait((await engine.submit(OperationSpec(type="test_seed_not_awaited"))).id, 20)
    assert final.status is Status.COMPLETED, final.error
    assert (final.progress.done, final.progress.total) == (6, 6) and final.result == {"seq": 1}
    said = [r.message for r in (await engine.store.read_logs(final.id))[0] if "without await" in r.message]
    assert len(said) == 2, said  # once per call site
    assert said[0].startswith("ctx.save_checkpoint() was called without await (at test_seed_compat.py:")
    assert said[1].startswith("ctx.checkpoint() was called without await (at test_seed_compat.py:")


@operation("test_same_metrics")
async def same_metrics(ctx: OperationContext, params: dict) -> None:
    """Blocked on something, saying so every 0.1 s with the same values: no sign of life."""
    for _ in range(100):
        await asyncio.sleep(0.1)
        ctx.progress(waiting=1, bytes=4096)


@operation("test_moving_metrics")
async def moving_metrics(ctx: OperationContext, params: dict) -> dict:
    """Inside one long item, bytes copied every 0.1 s: alive, though no item is done."""
    for k in range(12):
        await asyncio.sleep(0.1)
        ctx.progress(waiting=1, bytes=4096 * k)
    return {"parts": 12}


async def test_a_metric_that_moves_is_progress_and_the_same_values_again_are_not(engine: Engine) -> None:
    """As with steps: the same metrics reported for ever restarted the stall clock each time, so a handler
    blocked for good that said ``waiting=1`` every second was never timed out as stalled."""
    op = await engine.submit(OperationSpec(type="test_moving_metrics", profile={"stall_timeout": 0.5}))
    done = await engine.wait(op.id, timeout=20)
    assert done.status is Status.COMPLETED and done.result == {"parts": 12}, done.status_message
    op = await engine.submit(OperationSpec(type="test_same_metrics", profile={"stall_timeout": 0.5}))
    stalled = await engine.wait(op.id, timeout=20)
    assert stalled.status is Status.TIMED_OUT and "stalled" in (stalled.status_message or ""), stalled.status


def test_only_running_work_has_an_estimated_completion() -> None:
    """A paused (or failed, interrupted) operation keeps the ETA it last measured: the seed's
    ``estimated_completion`` said it would complete 30 s after it was paused, which it never would."""
    from engine.autobot import seed_progress
    from engine.models import Progress

    p = Progress(done=10, total=40, rate=1.0, eta=30.0, updated_at=1_800_000_000.0)
    running = seed_progress("op", p, "running")
    assert running["estimated_completion"] is not None and running["detailed_status"]["eta_seconds"] == 30.0
    for status in ("paused", "failed", "interrupted", "timed_out", "cancelled", "queued"):
        stopped = seed_progress("op", p, status)
        assert stopped["estimated_completion"] is None and stopped["detailed_status"]["eta_seconds"] is None, status
