"""Fault suite: the state dir deleted, or replaced by a restored copy, under a running process.

SQLite goes on with the database file it has open, which nobody reads again once the path names
another file (or none): a run "completed" there was found nowhere, and an idle worker's look for work
saw none of what was submitted since. Checked with real processes: a foreground run whose state dir is
deleted mid-run exits 8 with one line naming it (not 0 with its result stored nowhere); an idle worker
serves the state dir made anew after its deletion; and in process, a store holding nothing follows a
restored copy put in place, while one holding a running operation refuses to write it elsewhere. And
an operation's row deleted by hand under its attempt ends the attempt (a checkpoint raised NotFound into
the handler; a final status logged an internal error with a traceback). And ``outlast.db`` alone put back
or deleted beside the WAL of the file before (SQLite lays a WAL over whatever file has the name): refused
in one line with nothing written, where the database and its WAL copied together open as they are.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from engine import Engine, OperationSpec, WorkerInfo, load_settings, open_store
from engine.errors import StoreLost
from engine.exitcodes import ExitCode
from engine.models import Checkpoint, LogRecord, NotFound, Operation, StaleAttempt, Status, StoreError
from engine.outage import StoreHealth
from engine.store import Store
from engine.store.base import ItemDelta
from tests.fixtures_cli import Cli, CliAt, Proc
from tests.fixtures_engine import queued_record, until


async def _running(store: Store) -> tuple[Operation, Checkpoint]:
    """An operation created and claimed in ``store`` (open), and a first checkpoint of its attempt."""
    op = queued_record()
    await store.create(op)
    claimed = await store.claim(WorkerInfo(host="test", pid=1), time.time(), 300.0, op_id=op.id)
    assert claimed is not None
    return claimed, Checkpoint(operation_id=op.id, seq=1, epoch=claimed.epoch, created_at=time.time(), state={"n": 1})


def _run_under_way(cli: Cli) -> Proc:
    """``outlast run demo`` started, once it has done items (the state dir is then changed under it)."""
    proc = cli.start("run", "demo", "-p", "items=60", "-p", "seconds=0.05")
    proc.wait_line(lambda ln: "items" in ln and " 0/60" not in ln and "running" in ln)
    return proc


def test_a_run_whose_state_dir_is_deleted_exits_8_not_completed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cli = CliAt(state, OUTLAST_STORE_OUTAGE_LIMIT="1")
    try:
        proc = _run_under_way(cli)
        shutil.rmtree(state)
        assert proc.wait(60) == ExitCode.STORE, (proc.out[-3:], proc.err)
        err = [ln for ln in proc.err if ln.strip()]
        # The outage's line when it began (not "resumable": the record went with the state dir), and a
        # last line at the end, after the progress lines, saying what became of the operation. ``rm -rf``
        # may take a file beside outlast.db first: then the outage began as another failure, and one more
        # line says, once outlast.db is gone too, that the work cannot be resumed after all.
        deleted = [i for i, ln in enumerate(err) if "outlast.db was deleted while this process had it open" in ln]
        assert len(err) in (2, 3) and deleted and deleted[0] == len(err) - 2, err
        assert "resumable" not in err[-2] and "cannot be resumed" in err[-2], err
        assert err[1].startswith(f"{proc.out[0].split()[1]} stopped, ") and "cannot be resumed" in err[1], err
        assert not any("Traceback" in ln for ln in proc.err)
    finally:
        cli.close()


def test_a_run_whose_state_dir_is_renamed_says_where_to_resume_it_and_it_resumes_there(tmp_path: Path) -> None:
    """``mv`` of the state dir under a run: it said "was deleted ... cannot be resumed", while the record was
    at the new path, interrupted, and resumable there."""
    state, moved = tmp_path / "state", tmp_path / "moved"
    cli = CliAt(state, OUTLAST_STORE_OUTAGE_LIMIT="1")
    try:
        proc = _run_under_way(cli)
        state.rename(moved)
        assert proc.wait(60) == ExitCode.STORE, (proc.out[-3:], proc.err)
        op_id = proc.out[0].split()[1]
        last = [ln for ln in proc.err if ln.strip()][-1]
        assert f"outlast.db was moved to {moved / 'outlast.db'}" in last, proc.err
        assert last.endswith(f"to resume: outlast --state-dir {moved} resume {op_id}"), last
        assert not any("deleted" in ln or "cannot be resumed" in ln for ln in proc.err), proc.err
        assert not state.exists()  # nothing made again where it was
    finally:
        cli.close()
    there = CliAt(moved)
    shown = there("show", op_id, "--json")
    assert json.loads(shown.stdout)["status"] == "interrupted", (shown.stdout, shown.stderr)
    done = there("-q", "resume", op_id)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert there.op(op_id).status is Status.COMPLETED


def test_an_idle_worker_serves_the_state_dir_made_after_it_was_deleted(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cli = CliAt(state)
    try:
        worker = cli.start("worker", "-c", "1")
        first = cli("-q", "submit", "demo", "-p", "items=3", "-p", "seconds=0.01")
        assert first.returncode == 0, first.stderr
        cli.wait_status(first.stdout.strip(), {"completed"})
        shutil.rmtree(state)
        second = cli("-q", "submit", "demo", "-p", "items=3", "-p", "seconds=0.01")
        assert second.returncode == 0, second.stderr
        # Before: the worker looked for work in the deleted file, and this one stayed queued for good.
        cli.wait_status(second.stdout.strip(), {"completed"}, timeout=30)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == ExitCode.OK, worker.err
        said = [ln for ln in worker.err if ln.strip()]
        # Deleted, or already made anew by the submit when the worker looked: either is said, once.
        assert len(said) == 1 and "outlast.db was" in said[0] and "using the one there now" in said[0], said
    finally:
        cli.close()


def _restorable_copy(state: Path, to: Path) -> None:
    """A consistent copy of the state dir (its database through SQLite's backup), as a backup tool makes."""
    to.mkdir()
    for sub in ("logs", "locks"):
        (to / sub).mkdir()
    src = sqlite3.connect(state / "outlast.db")
    dst = sqlite3.connect(to / "outlast.db")
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _put_in_place(copy: Path, state: Path) -> None:
    shutil.rmtree(state)
    copy.rename(state)


async def test_a_store_holding_nothing_follows_a_copy_restored_in_place(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = open_store(state)
    await store.open()
    try:
        kept = queued_record()
        await store.create(kept)
        _restorable_copy(state, tmp_path / "copy")
        later = queued_record()
        await store.create(later)
        _put_in_place(tmp_path / "copy", state)
        # Reads and writes go to the restored file: the record made after the copy is not there.
        assert (await store.get(kept.id)).id == kept.id
        with pytest.raises(NotFound):
            await store.get(later.id)
        again = queued_record()
        await store.create(again)
    finally:
        await store.close()
    fresh = open_store(state)
    await fresh.open()
    try:
        assert {o.id for o in await fresh.list_operations()} == {kept.id, again.id}
    finally:
        await fresh.close()


async def test_a_store_running_an_operation_refuses_to_write_it_to_a_file_nobody_reads(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = open_store(state)
    await store.open()
    try:
        op, cp = await _running(store)
        _restorable_copy(state, tmp_path / "copy")
        _put_in_place(tmp_path / "copy", state)
        with pytest.raises(StoreError, match=r"outlast\.db was replaced by another file .* 1 operation"):
            await store.save_checkpoint(cp, ItemDelta(done=["a"]), 1)
        with pytest.raises(StoreError, match="replaced"):
            await store.transition(op.id, Status.COMPLETED, epoch=op.epoch)
        # Reads answer from the file it has: its running operation is there.
        assert (await store.get(op.id)).status == Status.RUNNING
    finally:
        await store.close()
    restored = open_store(state)
    await restored.open()
    try:
        assert (await restored.get(op.id)).status == Status.RUNNING  # as the copy had it: nothing written there
        assert await restored.checkpoints(op.id) == []
    finally:
        await restored.close()


async def test_a_log_or_lock_written_after_the_state_dir_is_deleted_says_the_record_is_gone(tmp_path: Path) -> None:
    """Under ``rm -rf`` of the state dir a log append or a lock file's refresh can fail before any write of
    the database does: it raised "cannot make logs (No such file or directory)", an outage that said its
    work was resumable (CI, once). Now it is the same StoreLost the database's own write raises."""
    state = tmp_path / "state"
    store = open_store(state)
    await store.open()
    try:
        op, _cp = await _running(store)
        record = LogRecord(ts=time.time(), level="info", message="x")
        await store.append_logs(op.id, [record])
        shutil.rmtree(state)
        with pytest.raises(StoreLost, match=r"outlast\.db was deleted .* 1 operation"):
            await store.append_logs(op.id, [record])
        with pytest.raises(StoreLost, match=r"outlast\.db was deleted"):
            await store.heartbeat([op.id])
        assert not state.exists()  # nothing made again in a state dir that is gone
    finally:
        await store.close()


def test_an_outage_found_later_to_be_a_deleted_store_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    """The outage began with another failure; the store's file found deleted after that changes what the
    run's last line says (not resumable), and is said in one more line, once."""
    health = StoreHealth(10.0, busy=lambda: True)
    with caplog.at_level(logging.ERROR, logger="outlast.engine"):
        health.failed(StoreError("cannot make logs (No such file or directory)"), "logs")
        assert not health.lost and "resumable" in caplog.records[-1].getMessage()
        for _ in range(3):
            health.failed(StoreLost("outlast.db was deleted while this process had it open"), "database")
    assert health.lost and "outlast.db was deleted" in health.why
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "cannot be resumed" in said[1], said


async def test_a_checkpoint_of_an_operation_deleted_by_hand_ends_its_attempt(tmp_path: Path) -> None:
    """Its row deleted under a running attempt (``outlast rm`` refuses a running one; by hand it is not):
    the checkpoint raised NotFound into the handler, taken as its own failure; now the attempt is over."""
    state = tmp_path / "state"
    store = open_store(state)
    await store.open()
    try:
        op, cp = await _running(store)
        with sqlite3.connect(state / "outlast.db") as conn:
            conn.execute("DELETE FROM operations WHERE id=?", (op.id,))
        with pytest.raises(StaleAttempt, match="the operation is gone from the store"):
            await store.save_checkpoint(cp, ItemDelta(done=["a"]), 1)
    finally:
        await store.close()


async def test_a_final_status_of_an_operation_deleted_by_hand_is_a_warning_not_an_internal_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(state_dir=tmp_path / "state", plugins=["tests.ops_for_tests"], grace_period=2.0)
    async with Engine(store=open_store(settings.state_dir), settings=settings) as engine:
        spec = OperationSpec(
            type="ledger", params={"items": 60, "seconds": 0.01}, profile={"checkpoint_interval": 3600}
        )
        op = await engine.submit(spec)
        await until(lambda: engine.live(op.id) and engine.live(op.id).done >= 5)
        with sqlite3.connect(settings.state_dir / "outlast.db") as conn:
            conn.execute("DELETE FROM operations WHERE id=?", (op.id,))
        await until(lambda: op.id not in engine.running_ids, timeout=20)
    said = [r for r in caplog.records if r.name.startswith("outlast")]
    assert not [r for r in said if r.levelno >= logging.ERROR or r.exc_info], [r.getMessage() for r in said]
    assert any("not written" in r.getMessage() for r in said), [r.getMessage() for r in said]


# ---- only outlast.db put back, beside the WAL of the file before -------------------------------------


def _crashed_with_writes_in_the_wal(cli: Cli) -> None:
    """A run SIGKILLed mid-way: its writes since the last fold are in ``outlast.db-wal`` (and all of
    them are frames SQLite lays over ``outlast.db`` when it opens it)."""
    proc = cli.start("run", "demo", "-p", "items=2000", "-p", "seconds=0.01", "--name", "crashed")
    proc.wait_line(lambda ln: "running" in ln and " 0/2000" not in ln)
    time.sleep(0.5)  # a few checkpoints: writes in the WAL
    proc.signal(signal.SIGKILL)
    proc.wait(30)
    assert (cli.state_dir / "outlast.db-wal").stat().st_size > 32


def _listed(cli: Cli) -> list[str]:
    """The names ``outlast ls`` lists (it must succeed)."""
    listed = cli("ls", "--json")
    assert listed.returncode == 0, listed.stderr
    return sorted(o["name"] for o in json.loads(listed.stdout))


def test_a_database_put_back_beside_a_crashed_runs_wal_is_refused_and_nothing_is_changed(
    cli: Cli, tmp_path: Path
) -> None:
    """A backup of ``outlast.db`` put back (mv) after a crash: SQLite laid the crashed run's writes from the
    WAL over it when it opened it, and the restored operations silently became the crashed store's (or the
    pages a mix of both). Refused with one line saying both ways out, nothing written; the WAL moved out
    as it says, the restored file is what is listed."""
    state = cli.state_dir
    for name in ("kept-1", "kept-2"):
        assert cli("submit", "demo", "--name", name).returncode == 0
    backup = tmp_path / "outlast.db.bak"
    shutil.copy(state / "outlast.db", backup)  # no process running: the WAL was folded in and removed
    _crashed_with_writes_in_the_wal(cli)
    os.replace(shutil.copy(backup, state / ".restoring"), state / "outlast.db")
    before = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
    for args in (["ls"], ["ls", "--json"], ["submit", "demo"]):
        r = cli(*args)
        assert r.returncode == ExitCode.STORE, (args, r.stdout, r.stderr)
        err = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(err) == 1 and "outlast.db-wal holds writes of the one before" in err[0], err
        assert "move outlast.db-wal and outlast.db-shm out of it" in err[0], err
    assert {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()} == before
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in ("outlast.db-wal", "outlast.db-shm"):
        (state / name).rename(aside / name)
    assert _listed(cli) == ["kept-1", "kept-2"]


def test_a_crashed_runs_wal_is_still_applied_to_its_own_database(cli: Cli) -> None:
    """No false alarm: after a crash, with nothing put back, the WAL's writes are the store's."""
    assert cli("submit", "demo", "--name", "kept").returncode == 0
    _crashed_with_writes_in_the_wal(cli)
    assert _listed(cli) == ["crashed", "kept"]


def test_a_state_dir_copied_whole_after_a_crash_opens_with_the_writes_in_its_wal(cli: Cli, tmp_path: Path) -> None:
    """No false alarm either where the database and its WAL were copied together (``cp -a`` of the state
    dir, a restore of all of it): both files are new, written together, and the copy lists what the WAL
    holds. Refused, its advice (move the WAL out) would have thrown those writes away."""
    state = cli.state_dir
    assert cli("submit", "demo", "--name", "kept").returncode == 0
    _crashed_with_writes_in_the_wal(cli)
    copied = tmp_path / "copied"
    shutil.copytree(state, copied)
    other = CliAt(copied)
    try:
        assert _listed(other) == ["crashed", "kept"]
    finally:
        other.close()


@pytest.mark.parametrize("damage", ["empty", "garbage", "three numbers", "10 MB", "a directory", "a fifo"])
def test_a_damaged_owner_note_is_no_note(cli: Cli, damage: str) -> None:
    """The note is a file the store reads at every open: damaged in any way it is taken as no note (the WAL
    applied as before the note existed, the listing right), never a refusal or a hang, and written anew; a
    directory, which cannot be written over, is said in a warning."""
    state = cli.state_dir
    assert cli("submit", "demo", "--name", "kept").returncode == 0
    _crashed_with_writes_in_the_wal(cli)
    note = state / "outlast.db-owner"
    note.unlink()
    if damage == "a directory":
        note.mkdir()
    elif damage == "a fifo":
        os.mkfifo(note, 0o600)
    else:
        content = {"empty": b"", "garbage": b"\xff\x00 not a note", "three numbers": b"1 2 3\n"}
        note.write_bytes(content.get(damage, b"7 " * (5 << 20)))
    assert _listed(cli) == ["crashed", "kept"]
    if damage == "a directory":
        # Left as it is: a note cannot be renamed over a directory (a FIFO it replaces). Its check lost without
        # a word, a database restored beside another file's WAL would have taken its writes unsaid: said once.
        r = cli("submit", "demo")
        said = [ln for ln in r.stderr.splitlines() if "outlast.db-owner is a directory" in ln]
        assert r.returncode == 0 and len(said) == 1 and "move outlast.db-owner out of the way" in said[0], r.stderr
        return
    db = os.stat(state / "outlast.db")
    written = [int(n) for n in note.read_text().split()]  # the WAL it names is gone with the last close
    assert len(written) == 4 and written[:2] == [db.st_dev, db.st_ino], written


def test_a_database_deleted_alone_beside_a_crashed_runs_wal_is_not_made_anew_under_it(cli: Cli) -> None:
    """``rm outlast.db`` to start over, the WAL of a crashed run left: a new database made there took the
    old writes laid over it. Refused, and nothing is made until the WAL is moved out."""
    state = cli.state_dir
    _crashed_with_writes_in_the_wal(cli)
    (state / "outlast.db").unlink()
    r = cli("ls")
    assert r.returncode == ExitCode.STORE and "outlast.db is missing, and outlast.db-wal holds" in r.stderr
    assert not (state / "outlast.db").exists()


async def test_a_store_holding_nothing_follows_its_database_put_back_without_the_writes_of_the_one_before(
    tmp_path: Path,
) -> None:
    """An idle store whose ``outlast.db`` alone is replaced by a backup: it said "using the one there now",
    then listed the file before (its WAL laid over the backup), and wrote into that mix. Now it folds the
    WAL into the file before first: it lists the backup, and writes there."""
    state = tmp_path / "state"
    store = open_store(state)
    await store.open()
    try:
        kept = queued_record()
        await store.create(kept)
        _restorable_copy(state, tmp_path / "copy")
        later = [queued_record() for _ in range(20)]
        for op in later:
            await store.create(op)
        assert (state / "outlast.db-wal").stat().st_size > 32
        os.replace(tmp_path / "copy" / "outlast.db", state / "outlast.db")
        assert [o.id for o in await store.list_operations()] == [kept.id]
        again = queued_record()
        await store.create(again)
    finally:
        await store.close()
    with sqlite3.connect(state / "outlast.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert {i for (i,) in conn.execute("SELECT id FROM operations")} == {kept.id, again.id}


def test_a_logs_dir_deleted_under_a_run_is_made_again_and_the_run_goes_on(tmp_path: Path) -> None:
    """``rm -rf logs/`` (to free space) under a command that prints: every append of its log failed, a store
    outage, which stopped the run as interrupted (exit 8) once it outlasted ``store_outage_limit``, and the
    lines printed after were gone. The directory is made again and the lines go on in a new file."""
    state = tmp_path / "state"
    cli = CliAt(state, OUTLAST_STORE_OUTAGE_LIMIT="1")
    try:
        script = "for i in $(seq 1 25); do echo line $i; sleep 0.12; done"
        proc = cli.start("run", "command", "--params-json", json.dumps({"argv": ["sh", "-c", script]}))
        proc.wait_line(lambda ln: "running" in ln)
        time.sleep(0.8)
        shutil.rmtree(state / "logs")
        assert proc.wait(60) == ExitCode.OK, (proc.out[-3:], proc.err)
        assert not [ln for ln in proc.err if ln.strip()], proc.err
        (op,) = json.loads(cli("ls", "--json").stdout)
        logged = cli("logs", op["id"])
        assert logged.returncode == 0 and "line 25" in logged.stdout, logged.stdout[-300:]
        assert (state / "logs").stat().st_mode & 0o777 == 0o700
    finally:
        cli.close()
