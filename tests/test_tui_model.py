"""The dashboard's model and actions table, without Textual: a real engine over a real store.

``tui.model`` (the records and how they are kept fresh) and ``tui.actions`` (which key applies to
which operation) import no Textual, so they are tested here as plain objects.
"""

from __future__ import annotations

import ast
import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine import (
    ACTIONS,
    Action,
    Conflict,
    Engine,
    LogRecord,
    Operation,
    OperationSpec,
    Priority,
    Progress,
    Settings,
    Status,
    open_store,
)
from tests import zygote
from tests.test_retry_clock import FAKETIME
from tui.actions import KEY_ACTIONS, key_applies, resume_question
from tui.model import OperationsModel

from .conftest import REPO


def test_model_and_actions_import_no_textual() -> None:
    code = (
        "import sys, tui.model, tui.actions; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dashboard_imports_only_engines_public_api() -> None:
    """``from engine import ...`` only: no ``engine.x`` module, so no private name and no other face.
    (tui/format.py re-exports the shared formatting; it moves to engine.humanize with the CLI package.)"""
    bad = []
    for path in sorted((REPO / "tui").rglob("*.py")):
        if path.name == "format.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            bad += [f"{path.relative_to(REPO)}: {n}" for n in names if n.startswith("engine.")]
    assert not bad, bad


def _op(status: Status, priority: Priority = Priority.NORMAL) -> Operation:
    return Operation(
        id="06b4000000001", type="ledger", status=status, priority=priority, created_at=0, queued_at=0, updated_at=0
    )


@pytest.mark.parametrize("status", list(Status))
def test_keys_apply_as_the_lifecycle_table_says(status: Status) -> None:
    for name, key in KEY_ACTIONS.items():
        if key.action is not None and key.action is not Action.PRIORITY:
            assert key_applies(name, _op(status)) is (status in ACTIONS[key.action]), name
    queued = status is Status.QUEUED
    assert key_applies("raise_priority", _op(status)) is queued
    assert key_applies("raise_priority", _op(status, Priority.HIGH)) is False  # nowhere left to go
    assert key_applies("lower_priority", _op(status, Priority.HIGH)) is queued
    assert key_applies("lower_priority", _op(status, Priority.LOW)) is False
    assert key_applies("detail", _op(status)) and key_applies("launch", _op(status))


def test_with_nothing_selected_only_the_keys_that_need_no_operation_apply() -> None:
    assert {n for n in KEY_ACTIONS if key_applies(n, None)} == {
        "launch",
        "filter",
        "sort",
        "logs",
        "toggle_run_queue",
        "cycle_theme",
        "help",
        "quit",
    }


def test_resume_question_says_what_will_be_done_again() -> None:
    op = _op(Status.PAUSED).model_copy(update={"name": "big", "progress": Progress(done=1500, total=4000)})
    assert resume_question(op, 2, 1000, 3) == (
        f"Resume big ({op.id}) from checkpoint 2 (1.0k items done)? "
        "500 items will be done again; 3 newer checkpoints dropped."
    )


async def test_model_reads_acts_and_forgets_what_the_store_no_longer_has(settings: Settings) -> None:
    async with Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False) as engine:
        model = OperationsModel(engine)
        a = await model.submit({"type": "ledger", "name": "a", "params": {"items": 3}})  # type: ignore[arg-type]
        assert model.ops[a.id].status is Status.QUEUED and a.id in model.active and model.structure_dirty
        b = await engine.submit({"type": "ledger", "name": "b", "params": {"items": 3}})  # by someone else
        await model.poll()
        assert b.id in model.ops

        paused = await model.act("pause", a.id)
        assert paused.status is Status.PAUSED and model.ops[a.id].status is Status.PAUSED
        assert a.id in model.refetch  # read again at the next frame either way
        with pytest.raises(Conflict, match="paused"):
            await model.act("pause", a.id)  # a refusal is raised, for the one handler to say
        await model.act("set_priority", b.id, priority=model.reprioritise(model.ops[b.id], up=True))
        assert (await engine.get(b.id)).priority is Priority.HIGH

        gone = _op(Status.PAUSED)  # a record held that the store no longer has (removed elsewhere)
        model.keep(gone)
        await model.fetch({gone.id, b.id})
        assert gone.id not in model.ops and b.id in model.ops and model.store_ok
        # The counts are kept as records come, change and go: they are those of a count done now.
        await model.act("cancel", b.id)
        await model.remove(b.id)
        assert model.counts() == {Status.PAUSED: 1} == {op.status: 1 for op in model.ops.values()}
        assert b.id in model.moved and gone.id in model.moved  # the rows the table moves, and only those


async def test_model_reads_the_selected_log_from_its_tail_then_what_is_new_and_merges_all_logs(
    settings: Settings,
) -> None:
    async with Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False) as engine:
        model = OperationsModel(engine)
        ops = [await model.submit({"type": "ledger", "name": n}) for n in ("x", "y")]  # type: ignore[arg-type]
        store = engine.store
        for i, op in enumerate(ops):
            await store.append_logs(
                op.id, [LogRecord(ts=10 + 2 * j + i, level="info", message=f"{op.name} {j}") for j in range(3)]
            )
        side = await model.side(ops[0].id, logs=True, log_offset=None)
        assert [r.message for r in side.logs or []] == ["x 0", "x 1", "x 2"] and side.checkpoints == []
        assert model.full_of(ops[0].id) is not None and model.full_of(ops[1].id) is None
        await store.append_logs(ops[0].id, [LogRecord(ts=20, level="info", message="x 3")])
        again = await model.side(ops[0].id, logs=True, log_offset=side.log_offset)
        assert [r.message for r in again.logs or []] == ["x 3"]

        offsets: dict[str, int] = {}
        merged = await model.all_logs(offsets)
        assert [r.message for r in merged] == ["x 0", "y 0", "x 1", "y 1", "x 2", "y 2", "x 3"]
        assert {r.operation_id for r in merged} == {op.id for op in ops}
        assert await model.all_logs(offsets) == []  # offsets advanced: nothing new


@pytest.fixture
def settings(state_dir: Path) -> Settings:
    from engine import load_settings

    return load_settings(state_dir=state_dir, plugins=["tests.ops_for_tests"])


async def test_poll_reads_the_newest_queued_every_second_and_the_whole_queue_rarely(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long queue is not read whole every second (1,250 waiting records were most of a poll): the
    newest queued are (what another process just submitted shows at once); one further back that
    another process cancelled shows cancelled at the whole queue's read, and is not forgotten before."""
    import tui.model

    monkeypatch.setattr(tui.model, "QUEUED_RECENT", 5)
    async with Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False) as engine:
        ops = [await engine.submit({"type": "ledger", "name": f"q{i}", "params": {"items": 1}}) for i in range(12)]
        model = OperationsModel(engine)
        await model.first_read()
        model.last_stopped = time.monotonic()  # the whole queue was just read
        read: list[int] = []
        listing = engine.list_operations

        async def counted(*args: Any, **kw: Any) -> list[Operation]:
            got = await listing(*args, **kw)
            read.append(len(got))
            return got

        monkeypatch.setattr(engine, "list_operations", counted)
        oldest, new = ops[0], await engine.submit({"type": "ledger", "name": "new", "params": {"items": 1}})
        await engine.cancel(oldest.id)  # by another process, as far as the model knows
        await model.poll()
        assert max(read) == 5, read  # the newest queued only
        assert new.id in model.ops and model.ops[oldest.id].status is Status.QUEUED
        assert oldest.id in model.active  # not forgotten: the whole queue's read decides
        await engine.store.set_slots(4)  # by another process: read with the whole queue
        assert model.store_slots is None
        model.last_stopped = 0.0
        await model.poll()
        assert model.ops[oldest.id].status is Status.CANCELLED and oldest.id not in model.active
        assert model.active == {op.id for op in [*ops[1:], new]}
        assert model.store_slots == 4 and [model.ops[op.id].handle for op in ops[:2]] == [1, 2]


async def test_poll_reads_the_running_ones_only_when_another_process_may_run_one(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When every operation the store counts as running is run by this engine (its progress is read live,
    its changes come as events) and the store's counts have not moved, a poll reads no record."""
    async with Engine(store=open_store(settings.state_dir), settings=settings) as engine:
        op = await engine.submit({"type": "ledger", "name": "long", "params": {"items": 1000, "seconds": 0.05}})
        model = OperationsModel(engine)
        deadline = time.monotonic() + 10
        while op.id not in engine.running_ids and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await model.poll()  # the first: every status read
        assert model.ops[op.id].status is Status.RUNNING and op.id in model.active
        read: list[list[Status]] = []
        listing = engine.list_operations

        async def counted(statuses: list[Status] | None = None, **kw: Any) -> list[Operation]:
            read.append(list(statuses or []))
            return await listing(statuses, **kw)

        monkeypatch.setattr(engine, "list_operations", counted)
        await model.poll()
        assert read == [] and op.id in model.active and model.ops[op.id].status is Status.RUNNING
        other = await engine.store.counts()  # another process's running one moves the counts
        monkeypatch.setattr(engine.store, "counts", _counts_with(other, Status.RUNNING, 1))
        await model.poll()
        assert [Status.RUNNING] in read
        await engine.cancel(op.id)


def _counts_with(counts: dict[Status, int], status: Status, more: int) -> Any:
    async def counted() -> dict[Status, int]:
        return {**counts, status: counts.get(status, 0) + more}

    return counted


async def test_the_counts_the_model_keeps_as_records_change_are_those_of_a_count_done_now(
    settings: Settings,
) -> None:
    """``active``, ``running``, the queue per priority and the counts per status are kept as records
    come, change and go (a pass over 100,000 queued ones every second kept a core busy): after each of
    a seeded random run of reads (newer, older, the same, of records the store no longer has), they are
    what a count of the held records gives."""
    import random
    from collections import Counter

    from engine.models import new_id

    seed = random.SystemRandom().randrange(2**32)
    rnd = random.Random(seed)
    async with Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False) as engine:
        model = OperationsModel(engine)
        ids = [new_id() for _ in range(12)]
        for step in range(1500):
            op_id = rnd.choice(ids)
            if rnd.random() < 0.1:
                await model.fetch({op_id})  # the store has none of them: each read drops it
            else:
                op = Operation(
                    id=op_id,
                    type="ledger",
                    status=rnd.choice(list(Status)),
                    priority=rnd.choice(list(Priority)),
                    created_at=0,
                    queued_at=0,
                    updated_at=rnd.randrange(step // 2, step + 1),  # older reads come too
                )
                model.keep(op)
            held = model.ops.values()
            where = f"seed {seed}, step {step}"
            assert model.active == {o.id for o in held if o.status in (Status.QUEUED, Status.RUNNING)}, where
            assert model.running == {o.id for o in held if o.status is Status.RUNNING}, where
            depth = Counter(o.priority for o in held if o.status is Status.QUEUED)
            assert model.queue_depth() == {p: depth.get(p, 0) for p in Priority}, where
            assert model.counts() == dict(Counter(o.status for o in held)), where


async def test_a_full_read_is_not_followed_by_a_second_read_of_the_whole_queue(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every record was just read, the queue with it: the next poll reads the newest queued, not the whole
    queue again (with 100,000 queued, that second read took as long as the first, 7 s)."""
    import tui.model

    monkeypatch.setattr(tui.model, "QUEUED_RECENT", 5)
    async with Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False) as engine:
        for i in range(12):
            await engine.submit({"type": "ledger", "name": f"q{i}", "params": {"items": 1}})
        model = OperationsModel(engine)
        assert await model.reload_all()
        assert len(model.active) == 12
        read = _count_listings(engine, monkeypatch)
        await model.poll()  # the first poll: its ten-second look at the store's counts is due
        assert ([Status.QUEUED], None) not in read and ([Status.QUEUED], 5) in read, read
        assert len(model.active) == 12


async def test_the_all_operations_log_reads_the_running_and_the_recent_not_every_queued_one(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The logs pane's all-operations mode read every queued operation's log each second: 100,000 reads
    with a queue of 100,000. The running ones and the ALL_LOGS_OPS updated last are read."""
    import tui.model

    async with Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False) as engine:
        for i in range(tui.model.ALL_LOGS_OPS + 15):
            await engine.submit({"type": "ledger", "name": f"q{i}", "params": {"items": 1}})
        model = OperationsModel(engine)
        assert await model.reload_all()
        logs_read: list[str] = []
        reading = engine.logs

        async def counted(op_id: str, *args: Any, **kw: Any) -> Any:
            logs_read.append(op_id)
            return await reading(op_id, *args, **kw)

        monkeypatch.setattr(engine, "logs", counted)
        await model.all_logs({})
        assert len(logs_read) == tui.model.ALL_LOGS_OPS
        assert set(logs_read) == {o.id for o in model.recent(tui.model.ALL_LOGS_OPS)}


async def test_a_long_queue_is_looked_at_by_ids_and_priorities_not_read_whole(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more queued than the newest read, the ten-second look reads every queued id and priority
    (an index read), not every record (100,000 records read every ten seconds while a worker drained
    them kept the dashboard at half a core and 1 GB): what left the queue, came into it unseen or moved
    in it is read by id, the rest is as held."""
    import tui.model

    monkeypatch.setattr(tui.model, "QUEUED_RECENT", 5)
    async with Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False) as engine:
        ops = [await engine.submit({"type": "ledger", "name": f"q{i}", "params": {"items": 1}}) for i in range(12)]
        model = OperationsModel(engine)
        assert await model.reload_all()
        read = _count_listings(engine, monkeypatch)
        # Another process: cancels one far back, raises another, submits seven (two beyond the newest five).
        await engine.cancel(ops[0].id)
        await engine.set_priority(ops[1].id, Priority.HIGH)
        came = [await engine.submit({"type": "ledger", "name": f"n{i}", "params": {"items": 1}}) for i in range(7)]
        model.last_stopped = 0.0  # the ten-second look is due
        await model.poll()
        assert ([Status.QUEUED], None) not in read, read
        assert model.ops[ops[0].id].status is Status.CANCELLED and ops[0].id not in model.active
        assert model.ops[ops[1].id].priority is Priority.HIGH
        assert {op.id for op in came} <= model.active
        assert model.active == {op.id for op in [*ops[1:], *came]}
        assert (
            model.queue_depth()
            == await engine.store.queue_depth()
            == {
                Priority.HIGH: 1,
                Priority.NORMAL: 17,
                Priority.LOW: 0,
            }
        )


def _count_listings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[Status], int | None]]:
    """The (statuses, limit) of every ``engine.list_operations`` call from now on."""
    read: list[tuple[list[Status], int | None]] = []
    listing = engine.list_operations

    async def counted(statuses: list[Status] | None = None, **kw: Any) -> list[Operation]:
        read.append((list(statuses or []), kw.get("limit")))
        return await listing(statuses, **kw)

    monkeypatch.setattr(engine, "list_operations", counted)
    return read


async def test_operations_another_process_ran_between_two_polls_are_listed(settings: Settings) -> None:
    """Submitted and ended by another process between two polls (a quick `outlast run`, a worker draining
    a queue), an operation was never queued or running when a poll looked: it showed only at the full
    reload, minutes later. Each ended status the store counts more of than the model holds is read."""
    async with Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False) as engine:
        model = OperationsModel(engine)
        await model.poll()
        async with Engine(store=open_store(settings.state_dir), settings=settings) as other:
            ran = [await other.submit({"type": "ledger", "params": {"items": 1}}) for _ in range(3)]  # type: ignore[arg-type]
            for op in ran:
                assert (await other.wait(op.id, timeout=20)).status is Status.COMPLETED
        gone = await engine.submit({"type": "ledger", "params": {"items": 1}})  # type: ignore[arg-type]
        await engine.cancel(gone.id)  # not through the model: as another terminal would
        await model.poll()
        assert {op.id for op in ran} | {gone.id} <= model.ops.keys()
        assert model.counts() == {Status.COMPLETED: 3, Status.CANCELLED: 1}


async def test_operations_another_process_removed_leave_the_model(settings: Settings) -> None:
    """Removed by another process (`outlast rm`, `clean`) or with the state dir deleted, records stayed
    in the dashboard until the full reload, minutes later, and a key on one said "no operation". A store
    that counts fewer of a settled status than the model holds, two polls in a row, is read whole."""
    async with Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False) as engine:
        ops = [await engine.submit({"type": "ledger", "params": {"items": 1}}) for _ in range(3)]  # type: ignore[arg-type]
        for op in ops:
            await engine.cancel(op.id)
        model = OperationsModel(engine)
        assert await model.reload_all() and model.counts() == {Status.CANCELLED: 3}
        await engine.remove(ops[0].id)  # not through the model: as another terminal would
        await model.poll()
        await model.poll()
        assert model.ops.keys() == {ops[1].id, ops[2].id}

        shutil.rmtree(settings.state_dir)  # the store opens the empty one made in its place
        await model.poll()
        await model.poll()
        assert model.ops == {} and model.counts() == {}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"name": None, "params": {"items": 3}, "result": {"n": 1}, "tags": {"a": "b"}, "profile": {"x": 1}},
        {
            "status": Status.RUNNING,
            "priority": Priority.HIGH,
            "worker": {"host": "h", "pid": 7, "name": "w", "boot": "b", "start": 9},
            "progress": Progress(done=5, total=0, failed=1, step="s", message="m", rate=2.5, eta=3.0, metrics={"k": 1}),
            "profile": {"failure_threshold": 4, "checkpoint_interval": 30},
            "started_at": 5,
            "deadline": 99.5,
            "handle": 12,
            "checkpoint_seq": 3,
            "error": "boom",
            "status_message": "waiting",
        },
        {"progress": Progress(done=5, total=None)},
    ],
)
def test_a_record_read_for_the_first_frame_reads_as_the_validated_operation(extra: dict[str, Any]) -> None:
    """``looked.LookedOperation`` (the first frame's records, without pydantic) gives every value the screen
    reads exactly as the engine's Operation, slim as the model keeps it, gives it: the two screens are the
    same until the validated records replace it. A field the engine's model gains or renames fails here."""
    from tui.looked import FIELDS, PROGRESS, looked
    from tui.model import slim

    fields: dict[str, Any] = {"id": "06b4000000001", "type": "ledger", "created_at": 1, "queued_at": 2}
    record = Operation(**{**fields, "updated_at": 3.5, **extra}).model_dump(mode="json")
    real, seen = slim(Operation.model_validate(record)), looked(record)
    for name in (*FIELDS, "label", "params", "result", "tags", "profile_overrides"):
        if name not in ("progress", "worker"):
            assert getattr(seen, name) == getattr(real, name), name
    assert type(seen.status) is type(real.status) and type(seen.priority) is type(real.priority)
    for name in (*PROGRESS, "percent"):
        assert getattr(seen.progress, name) == getattr(real.progress, name), name
    assert str(seen.worker) == str(real.worker) and bool(seen.worker) == bool(real.worker)


def test_the_first_look_is_validated_into_operations_and_counted_the_same() -> None:
    """``validate_looked`` (right after the first frame) replaces each looked record by the engine's
    Operation in place: the same ids, counts and queue; a record the model refuses drops the first look."""
    ops = [
        Operation(id=f"06b40000000{i:02d}", type="ledger", status=s, created_at=i, queued_at=i, updated_at=i)
        for i, s in enumerate([Status.RUNNING, Status.QUEUED, Status.QUEUED], 1)
    ]
    records = [op.model_dump(mode="json") for op in ops]
    model = OperationsModel()
    assert model.first_look(lambda statuses, limit: [r for r in records if r["status"] in statuses])
    counts, depth = model.counts(), model.queue_depth()
    assert not any(isinstance(op, Operation) for op in model.ops.values())
    assert model.validate_looked()
    assert all(isinstance(model.ops[op.id], Operation) for op in ops)
    assert (model.counts(), model.queue_depth(), model.looked) == (counts, depth, {op.id for op in ops})

    bad = OperationsModel()
    records[1]["created_at"] = "not a time"
    assert bad.first_look(lambda statuses, limit: [r for r in records if r["status"] in statuses])
    assert not bad.validate_looked()
    assert (bad.ops, bad.looked, bad.counts()) == ({}, set(), {})


async def test_the_selected_operations_checkpoints_costly_to_read_are_read_again_at_a_tenth_of_the_time(
    settings: Settings,
) -> None:
    """The checkpoints pane read the selected operation's checkpoints at every poll (a second): each read hashes
    every kept payload and the chain of its item keys, and five checkpoints of a 36 MB state took a second to
    read, so the dashboard spent its whole time there. After a read of 0.2s or more the next waits ten times as
    long, the record unchanged; a quick one is read at every poll as before, and a change of the record (its
    status) reads it at once."""
    async with Engine(store=open_store(settings.state_dir), settings=settings) as engine:
        op = await engine.submit(OperationSpec(type="dict_state", params={"items": 3, "n": 10}))
        assert (await engine.wait(op.id, timeout=30)).status is Status.COMPLETED
        model = OperationsModel(engine)
        model.started = True
        await model.poll()
        reads: list[str] = []
        slow = [0.0]
        real = engine.checkpoints

        async def costly(op_id: str) -> list[Any]:
            reads.append(op_id)
            await asyncio.sleep(slow[0])
            return await real(op_id)

        engine.checkpoints = costly  # type: ignore[method-assign]
        for _ in range(3):  # quick: read at every poll
            assert [c.seq for c in (await model.side(op.id, logs=False, log_offset=0)).checkpoints] == [3, 2, 1]
        assert len(reads) == 3
        slow[0] = 0.5  # a read of half a second: the next one not before five and a half seconds have passed
        for _ in range(4):
            assert [c.seq for c in (await model.side(op.id, logs=False, log_offset=0)).checkpoints] == [3, 2, 1]
        assert len(reads) == 4, reads  # the first of them only
        held = model.ops[op.id]
        model.ops[op.id] = held.model_copy(update={"status": Status.FAILED})  # as a poll keeps a changed record
        await model.side(op.id, logs=False, log_offset=0)
        assert len(reads) == 5, reads


@pytest.mark.skipif(FAKETIME is None, reason="libfaketime is not installed")
async def test_model_shows_what_a_process_whose_clock_went_back_wrote(settings: Settings) -> None:
    """The dashboard kept a record unless a read had a newer ``updated_at``, to drop a slow read that a fresher
    one overtook. Written by a process whose wall clock reads an hour earlier (a clock stepped back by NTP while
    the dashboard ran, a worker on a machine behind), every later write looked older: an operation that
    completed stayed "queued" on the screen for that hour."""
    async with Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False) as engine:
        model = OperationsModel(engine)
        op = await model.submit({"type": "demo", "params": {"items": 3, "seconds": 0}})  # type: ignore[arg-type]
        assert model.ops[op.id].status is Status.QUEUED
        assert FAKETIME is not None
        env = {
            **os.environ,
            "OUTLAST_STATE_DIR": str(settings.state_dir),
            "LD_PRELOAD": FAKETIME,
            "FAKETIME": "-1h",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
        worker = await asyncio.to_thread(
            zygote.run, ["worker", "--exit-when-idle"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
        assert worker.returncode == 0, worker.stderr
        await model.fetch({op.id})
        assert model.ops[op.id].status is Status.COMPLETED
