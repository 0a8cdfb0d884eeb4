"""Fault suite (c): a full file system and a read-only state dir, mid-run, on a real small tmpfs.

The state dir lives on a 5 MB tmpfs (CI runs as root; skipped with the reason where mounting is not
permitted). Checked: the foreground run exits by itself with one line on stderr and the documented code
(8: the store cannot be written), no traceback; signals work while the store fails; a short outage costs
one line when it starts and one when it is over; and after space is freed (or the mount is writable
again) ``outlast resume`` finishes with the result of an uninterrupted run, item by item. And a write
too big for the space left, which SQLite rolls back whole with every write grouped with it, fails
those writes, not the store's thread (whose death once left every caller waiting forever); an
operation whose own checkpoints no longer fit, while smaller writes still do, stops interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel

from engine import OperationContext, OperationSpec, Settings, Status, load_settings, operation
from engine.exitcodes import ExitCode
from engine.outage import StoreUnwritable
from engine.store.sqlite.worker import SqliteWorker
from tests.fixtures_cli import Cli, CliAt, Proc, until
from tests.fixtures_disk import fill as fill_disk
from tests.fixtures_disk import fill_inodes, mount
from tests.fixtures_engine import make_engine
from tests.fixtures_ops import checkpoint_state, resume, run_json, submit
from tests.test_op_command import WORKER_SCRIPT

N = 150


JOB_SCRIPT = WORKER_SCRIPT.replace(
    '    print(f"::outlast progress', '    print(f"item {i}", flush=True)\n    print(f"::outlast progress'
).replace("float(sys.argv[3])", 'float(sys.argv[3]) * (os.environ.get("JOB_PAUSE") != "0")')
"""The resumable script of the command tests, with a line of output per item: a job that logs as it goes,
so the store has log lines to write while the state dir is full or read-only (a read-only mount stops
new opens, not writes through files already open). JOB_PAUSE=0 in its environment: no pause (a resume
after the fault need not be slow)."""
assert JOB_SCRIPT != WORKER_SCRIPT


def _params(tmp_path: Path, ledger: str, pause: float) -> str:
    script = tmp_path / "job.py"
    script.write_text(JOB_SCRIPT)
    return json.dumps({"argv": [sys.executable, str(script), str(tmp_path / ledger), str(N), str(pause)]})


def _uninterrupted(cli: Cli, tmp_path: Path) -> dict:
    code, rec, err = run_json(cli, "run", "command", "--params-json", _params(tmp_path, "whole.ledger", 0))
    assert code == 0, err
    return rec["result"]


def _start(fs: Cli, tmp_path: Path) -> tuple[Proc, str]:
    """``outlast run command`` on the small fs; the process and the operation id, once it checkpointed."""
    proc = fs.start("run", "command", "--params-json", _params(tmp_path, "job.ledger", 0.04))
    op_id = proc.wait_line(lambda ln: " submitted" in ln).split()[1]
    until(lambda: checkpoint_state(fs, op_id).get("checkpoint", {}).get("next", 0) >= 20, 60, what="checkpoints")
    return proc, op_id


def _one_line(proc: Proc, needle: str, stopped: str | None = None) -> None:
    """One line when the outage began; a run that gave up writing ``stopped`` also says so at its end,
    after its progress lines, with how to resume it (the first line may be far up by then)."""
    err = [ln for ln in proc.err if ln.strip()]
    assert len(err) == (1 if stopped is None else 2) and needle in err[0], err
    if stopped is not None:
        assert err[1].startswith(f"{stopped} stopped, ") and err[1].endswith(f"outlast resume {stopped}"), err
    assert not any("Traceback" in ln for ln in proc.err)


def _resumes_to_the_same_result(fs: CliAt, op_id: str, tmp_path: Path, whole: dict) -> None:
    checkpointed = checkpoint_state(fs, op_id)["checkpoint"]["next"]
    final = resume(CliAt(fs.state_dir, **fs.extra, JOB_PAUSE="0"), op_id)
    assert final["status"] == "completed", final
    assert final["result"] == whole
    items = (tmp_path / "job.ledger").read_text().split()
    assert sorted(set(items), key=int) == [str(i) for i in range(N)], "an item was lost"
    assert all(items.count(str(i)) == 1 for i in range(checkpointed)), "an item before the checkpoint was redone"


def test_full_disk_mid_run_exits_with_one_line_then_resumes(cli: Cli, small_fs: Path, tmp_path: Path) -> None:
    whole = _uninterrupted(cli, tmp_path)
    fs = CliAt(small_fs / "state", OUTLAST_STORE_OUTAGE_LIMIT="2")
    proc, op_id = _start(fs, tmp_path)
    try:
        fill = fill_disk(small_fs)
        assert proc.wait(60) == ExitCode.STORE
        _one_line(proc, "the store cannot be written", stopped=op_id)
        # Left running for the next engine (the process holding it is gone), or interrupted if the last
        # write got through.
        assert fs.op(op_id).status.value in ("running", "interrupted")
        fill.unlink()
        _resumes_to_the_same_result(fs, op_id, tmp_path, whole)
    finally:
        proc.kill()
        fs.close()


def test_signals_work_while_the_store_cannot_write(cli: Cli, small_fs: Path, tmp_path: Path) -> None:
    """SIGTERM while the disk is full ends the run at once (the outage limit is far away)."""
    whole = _uninterrupted(cli, tmp_path)
    fs = CliAt(small_fs / "state", OUTLAST_STORE_OUTAGE_LIMIT="600")
    proc, op_id = _start(fs, tmp_path)
    try:
        fill = fill_disk(small_fs)
        until(lambda: any("cannot be written" in ln for ln in proc.err), 60, what="the store failure said")
        proc.signal(signal.SIGTERM)
        assert proc.wait(60) == ExitCode.STORE
        _one_line(proc, "the store cannot be written", stopped=op_id)
        fill.unlink()
        _resumes_to_the_same_result(fs, op_id, tmp_path, whole)
    finally:
        proc.kill()
        fs.close()


def test_read_only_state_dir_mid_run(cli: Cli, small_fs: Path, tmp_path: Path) -> None:
    """A read-only mount over the state dir (chmod does not stop root): the run stops interrupted, exit 8."""
    whole = _uninterrupted(cli, tmp_path)
    state = small_fs / "state"
    fs = CliAt(state, OUTLAST_STORE_OUTAGE_LIMIT="2")
    proc, op_id = _start(fs, tmp_path)
    try:
        r = mount("--bind", "-o", "ro", str(state), str(state))
        assert r.returncode == 0, r.stderr
        assert proc.wait(60) == ExitCode.STORE
        _one_line(proc, "Read-only file system")
        assert subprocess.run(["umount", str(state)], capture_output=True, timeout=30).returncode == 0
        _resumes_to_the_same_result(fs, op_id, tmp_path, whole)
    finally:
        proc.kill()
        fs.close()


def test_short_outage_one_line_each_way_and_no_loss(cli: Cli, small_fs: Path, tmp_path: Path) -> None:
    """A state dir read-only for a few seconds: one line when writes fail, one when they work again."""
    whole = _uninterrupted(cli, tmp_path)
    state = small_fs / "state"
    fs = CliAt(state, OUTLAST_STORE_OUTAGE_LIMIT="120")
    proc, op_id = _start(fs, tmp_path)
    try:
        assert mount("--bind", "-o", "ro", str(state), str(state)).returncode == 0
        until(lambda: any("cannot be written" in ln for ln in proc.err), 60, what="the store failure said")
        time.sleep(1.0)
        assert subprocess.run(["umount", str(state)], capture_output=True, timeout=30).returncode == 0
        assert proc.wait(120) == 0, proc.err
        err = [ln for ln in proc.err if ln.strip()]
        assert len(err) == 2 and "cannot be written" in err[0] and "written again" in err[1], err
        assert not any("stopped" in ln for ln in proc.out + proc.err), "its own live process called stopped"
        rec = fs.op(op_id)
        assert rec.status.value == "completed" and rec.result == whole
        items = (tmp_path / "job.ledger").read_text().split()
        assert items == [str(i) for i in range(N)]
    finally:
        with contextlib.suppress(Exception):
            if os.path.ismount(state):
                subprocess.run(["umount", str(state)], capture_output=True, timeout=30)
        proc.kill()
        fs.close()


def _leave_free(fill: Path, mb: float) -> None:
    """Free ``mb`` MB of a file system ``_fill`` filled."""
    os.truncate(fill, max(0, fill.stat().st_size - int(mb * 2**20)))


async def test_a_write_sqlite_rolls_back_whole_fails_its_group_and_the_thread_goes_on(small_fs: Path) -> None:
    """On a full disk SQLite may roll back a whole transaction from inside one statement (here: a write
    larger than its page cache spills into a WAL that cannot grow). The writes committed with it in the
    same group lost theirs too and must be told so; the writes queued after it must still run; and the
    SQLite thread must go on: it once died here, and every caller waited forever."""
    worker = SqliteWorker()
    db = small_fs / "t.db"

    def open_db() -> None:
        conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t(k TEXT, v BLOB)")
        worker.conn = conn

    def insert(key: str, size: int) -> Callable[[sqlite3.Connection], str]:
        def job(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO t VALUES(?, ?)", (key, os.urandom(size)))
            return key

        return job

    try:
        await worker.run(open_db)
        _leave_free(fill_disk(small_fs), 1)
        gate = threading.Event()
        held = worker.run(gate.wait)  # the thread waits here while the three writes queue: one group
        before, big, after = (
            worker.run_txn(insert("before", 100)),
            worker.run_txn(insert("big", 4 * 2**20)),
            worker.run_txn(insert("after", 100)),
        )
        gate.set()
        await asyncio.wait_for(held, 10)
        for lost in (before, big):
            with pytest.raises(sqlite3.OperationalError, match="full"):
                await asyncio.wait_for(lost, 10)
        assert await asyncio.wait_for(after, 10) == "after"
        conn = worker.conn
        assert conn is not None
        rows = await asyncio.wait_for(worker.run(lambda: conn.execute("SELECT k FROM t").fetchall()), 10)
        assert rows == [("after",)]
    finally:
        if worker.conn is not None:
            await asyncio.wait_for(worker.run(worker.conn.close), 10)
        worker.stop()


class BigParams(BaseModel):
    items: int = 4
    mb: float = 3.0
    seconds: float = 0.0


@operation("test_big_checkpoints", params=BigParams)
async def big_checkpoints(ctx: OperationContext, p: BigParams) -> dict:
    """A checkpoint of ``mb`` MB of state after every item (of ``seconds`` each)."""
    async for i in ctx.items(range(p.items), key=str):
        await asyncio.sleep(p.seconds)
        ctx.state["blob"] = os.urandom(int(p.mb * 2**19)).hex()
        ctx.state["last"] = i
        await ctx.checkpoint()
    return {"last": ctx.state["last"]}


async def _nearly_full(mnt: Path, outage_limit: float) -> tuple[Settings, Path]:
    """Settings for a store on ``mnt`` that has written an operation, then the file system filled but for
    1.5 MB: room for small writes, not for a 3 MB checkpoint. The file to delete to free the rest."""
    settings = load_settings(
        state_dir=mnt / "state", plugins=["tests.ops_for_tests"], grace_period=2.0, store_outage_limit=outage_limit
    )
    async with make_engine(settings) as engine:
        await engine.submit(OperationSpec(type="ledger", params={"items": 1, "explicit_every": 1}))
    fill = fill_disk(mnt)
    _leave_free(fill, 1.5)
    return settings, fill


async def test_a_checkpoint_too_big_for_the_disk_left_does_not_hang_the_engine(small_fs: Path) -> None:
    """Operations checkpointing after every item beside one whose checkpoints no longer fit on the disk:
    their writes share group commits with the big one, which SQLite rolls back whole. The engine must
    not hang: either everything ends while the small writes still fit, or the store is given up on (one
    error) with the work left interrupted; once space is freed, a new engine resumes it to the results of
    an uninterrupted run."""
    settings, fill = await _nearly_full(small_fs, outage_limit=2.0)
    ids = []
    with contextlib.suppress(StoreUnwritable):
        async with make_engine(settings) as engine:
            for _ in range(2):
                ids.append(
                    (await engine.submit(OperationSpec(type="ledger", params={"items": 300, "explicit_every": 1}))).id
                )
            ids.append((await engine.submit(OperationSpec(type="test_big_checkpoints"))).id)
            for op_id in ids:
                await asyncio.wait_for(engine.wait(op_id, timeout=60, poll=0.1), 70)
    fill.unlink()
    async with make_engine(settings) as engine:
        for op_id in ids:
            if (await engine.get(op_id)).status is not Status.COMPLETED:
                await engine.resume(op_id)
        results = [await asyncio.wait_for(engine.wait(op_id, timeout=60, poll=0.1), 70) for op_id in ids]
    assert [(r.status, r.result) for r in results] == [
        (Status.COMPLETED, {"sum": sum(range(300))}),
        (Status.COMPLETED, {"sum": sum(range(300))}),
        (Status.COMPLETED, {"last": 3}),
    ]


async def test_an_operation_whose_checkpoints_no_longer_fit_stops_interrupted(small_fs: Path) -> None:
    """Its checkpoints fail while smaller writes still work, so the store's outage is over as soon as
    another write succeeds: the operation once went on for good without a durable checkpoint, and a crash
    would have cost all of its work. It stops as interrupted after ``store_outage_limit`` (resumable, as
    from any outage), and says why."""
    settings, fill = await _nearly_full(small_fs, outage_limit=1.0)
    with contextlib.suppress(StoreUnwritable):  # the small writes may fail too: then everything stops
        async with make_engine(settings) as engine:
            # Beside it, an operation whose small checkpoints keep working: each one ends the store's outage.
            small = {"items": 600, "seconds": 0.01, "explicit_every": 1}
            await engine.submit(OperationSpec(type="ledger", params=small))
            big = await engine.submit(
                OperationSpec(type="test_big_checkpoints", params={"items": 200, "seconds": 0.05})
            )
            await asyncio.wait_for(engine.wait(big.id, timeout=60, poll=0.1), 70)
            assert big.id in engine.store_stopped
    fill.unlink()
    async with make_engine(settings) as engine:
        final = await engine.get(big.id)
    assert final.status is Status.INTERRUPTED, (final.status, final.result)
    assert "could not be written" in (final.status_message or "") and "full" in (final.status_message or "")
    assert "no checkpoint" in (final.status_message or "")


def test_worker_exits_when_the_store_cannot_write(small_fs: Path) -> None:
    """``outlast worker`` on a full disk: one line, exit 8, and its work is found interrupted afterwards."""
    fs = CliAt(small_fs / "state", OUTLAST_STORE_OUTAGE_LIMIT="2")
    op_id = submit(fs, "demo", {"items": 3000, "seconds": 0.01})
    worker = fs.start("worker")
    try:
        until(lambda: fs.op(op_id).progress.done > 20, 60, what="the worker runs it")
        fill = fill_disk(small_fs)
        assert worker.wait(60) == ExitCode.STORE
        _one_line(worker, "the store cannot be written")
        fill.unlink()
        r = fs("--json", "show", op_id)
        assert r.returncode == 0 and json.loads(r.stdout)["status"] == "interrupted", r.stdout
    finally:
        worker.kill()
        fs.close()


def test_a_sound_database_on_a_full_disk_is_not_called_unusable(small_fs: Path) -> None:
    """A full file system, with no process holding the store open: opening ``outlast.db`` failed when its
    shared-memory file could not be sized, and every command said "outlast.db is not a usable Outlast
    database (disk I/O error)", which reads as "it is damaged: delete it". Now what is stored is read as it
    is, what would write says the disk is full and what to do, exit 8, and nothing is changed; with space
    freed the same store lists its operation. A state dir made on a full disk says the same of making its
    database."""
    state = small_fs / "state"
    fs = CliAt(state)
    code, rec, err = run_json(fs, "run", "demo", "-p", "items=3", "-p", "seconds=0")
    assert code == 0, err
    op_id = rec["id"]
    for name in ("outlast.db-wal", "outlast.db-shm"):  # as a process that exited cleanly leaves it
        with contextlib.suppress(FileNotFoundError):
            (state / name).unlink()
    before = (state / "outlast.db").read_bytes()
    fill = fill_disk(small_fs)
    # What is stored is read (it said only "cannot be opened", exit 8, to `ls` and `logs` as to a run), with
    # one line saying why nothing can be changed; what would write says so in one line, exit 8.
    for args in (("--json", "ls"), ("--json", "show", op_id), ("logs", op_id), ("checkpoints", op_id)):
        r = fs(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        warned = [ln for ln in r.stderr.splitlines() if "WARNING" in ln]  # `checkpoints` says "no checkpoints"
        assert len(warned) == 1, (args, r.stderr)
        line = warned[0]
        assert "WARNING" in line and "its file system is full" in line and "read as it is" in line, r.stderr
        if args[1] == "ls":
            assert [op["id"] for op in json.loads(r.stdout)] == [op_id]
    for args in (("run", "demo", "-p", "items=3"), ("submit", "demo"), ("rm", op_id), ("worker",)):
        r = fs(*args)
        assert r.returncode == ExitCode.STORE, (args, r.stdout, r.stderr)
        [line] = [ln for ln in r.stderr.strip().splitlines() if "WARNING" not in ln]
        assert "its file system is full" in line and "not a usable" not in line, line
    assert (state / "outlast.db").read_bytes() == before
    new = CliAt(small_fs / "new")
    r = new("ls")  # a read makes no state dir: nothing listed, and nothing to fail at making
    assert r.returncode == 0 and not (small_fs / "new").exists(), r.stderr
    r = new("submit", "demo")
    assert r.returncode == ExitCode.STORE and "outlast.db cannot be created" in r.stderr, r.stderr
    fill.unlink()
    r = fs("--json", "show", op_id)
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "completed", r.stderr


async def test_a_store_opened_on_a_full_disk_reads_what_others_write_and_writes_once_there_is_room(
    small_fs: Path,
) -> None:
    """A dashboard, API server or ``watch`` started on a full disk opens the store read-only, the file as it
    was: once space was freed, it listed the operations of its start for good (45 there, 5 listed),
    refused every write and ran no queued work until restarted. It now reads what other processes wrote,
    writes again, and runs the queue as its caller asked."""
    state = small_fs / "state"
    fs = CliAt(state)
    code, rec, err = run_json(fs, "run", "demo", "-p", "items=3", "-p", "seconds=0")
    assert code == 0, err
    first = rec["id"]
    fill = fill_disk(small_fs)
    async with make_engine(load_settings(state_dir=state)) as engine:  # as the dashboard's, it runs the queue
        assert engine.store.read_only and not engine.run_queue
        assert [op.id for op in await engine.list()] == [first]
        fill.unlink()
        r = fs("submit", "demo", "-p", "items=3", "-p", "seconds=0")  # another process writes, now there is room
        assert r.returncode == 0, r.stderr
        second = r.stdout.strip()
        # A look for room that raced the unlink (SQLite failed on the full disk, the look after found room)
        # reads as before and looks again a second later: bounded, not at once.
        deadline = time.monotonic() + 10
        while engine.store.read_only and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            await engine.list()
        assert {op.id for op in await engine.list()} == {first, second}
        assert not engine.store.read_only and engine.run_queue
        third = (await engine.submit(OperationSpec(type="demo", params={"items": 1, "seconds": 0}))).id
        for op_id in (second, third):
            assert (await engine.wait(op_id, timeout=30)).status is Status.COMPLETED
    r = fs("--json", "ls")
    assert {op["id"] for op in json.loads(r.stdout)} == {first, second, third}, r.stderr


async def test_a_look_for_room_that_fails_to_open_for_writing_reads_on_and_looks_again(
    small_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store opened on a full disk looks for room each second; SQLite can fail that read-write open on the
    full disk just before the space is freed, and the look for room after it then found room and took the
    failure for a damaged file: the store stayed closed, every call said "outlast.db cannot be opened (disk
    I/O error)" until the process (a dashboard, an API server) was restarted. It reads on as before and is
    written again at the next look."""
    state = small_fs / "state"
    code, rec, err = run_json(CliAt(state), "run", "demo", "-p", "items=1", "-p", "seconds=0")
    assert code == 0, err
    fill = fill_disk(small_fs)
    real_connect = sqlite3.connect
    failed: list[object] = []

    def connect(database: object, *a: object, **kw: object) -> sqlite3.Connection:
        if not kw.get("uri") and str(database) == str(state / "outlast.db") and not failed:
            failed.append(database)
            fill.unlink()  # the space freed between SQLite's failure and the look for room
            raise sqlite3.OperationalError("disk I/O error")
        return real_connect(database, *a, **kw)  # type: ignore[arg-type]

    async with make_engine(load_settings(state_dir=state), run_queue=False) as engine:
        assert engine.store.read_only
        monkeypatch.setattr(sqlite3, "connect", connect)
        (state / "outlast.db-wal").touch()  # another process's WAL: the store opens again at its next call
        assert [op.id for op in await engine.list()] == [rec["id"]] and failed
        assert engine.store.read_only
        deadline = time.monotonic() + 10
        while engine.store.read_only and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            await engine.list()
        assert not engine.store.read_only
        op = await engine.submit(OperationSpec(type="demo", params={"items": 1, "seconds": 0}))
        assert {o.id for o in await engine.list()} == {rec["id"], op.id}


def test_watch_on_a_full_disk_follows_work_whose_process_died_until_there_is_room(small_fs: Path) -> None:
    """``outlast watch`` of an operation whose process was killed, on a full disk: it first marks such work
    interrupted, and that write failing ended the watch (exit 8), where ``ls`` and ``show`` read the store as
    it is. It watches, says in one line why the work is not marked yet, and once there is room marks it
    and exits as for any interrupted operation."""
    state = small_fs / "state"
    fs = CliAt(state)
    runner = fs.start("run", "demo", "-p", "items=1000", "-p", "seconds=0.05")
    op_id = runner.wait_line(lambda ln: " running " in ln).split()[1]
    runner.kill()
    fill = fill_disk(small_fs)
    watch = fs.start("watch", op_id)
    until(lambda: any("not marked interrupted" in ln for ln in watch.err), 30, what="the watch's warning")
    assert watch.popen.poll() is None, watch.err
    fill.unlink()
    assert watch.wait(timeout=60) == ExitCode.PAUSED, watch.err
    assert [ln for ln in watch.err if "WARNING" in ln and "full" in ln], watch.err
    assert fs.op(op_id).status is Status.INTERRUPTED


@pytest.mark.parametrize("left", ["closed cleanly", "its runner killed"])
def test_a_read_only_state_dir_can_be_read_and_refuses_writes_in_one_line(
    cli: Cli, small_fs: Path, tmp_path: Path, left: str
) -> None:
    """A state dir on a read-only file system (a snapshot, a disk the kernel remounted read-only after
    errors): every command, `outlast ls` too, said only "state dir X: Read-only file system", so nobody
    could see what had been running. Now what is stored is read as it is (with one line saying so), and
    what would write says in one line that it cannot, exit 8, with nothing changed."""
    state = small_fs / "state"
    fs = CliAt(state)
    code, done, err = run_json(fs, "run", "demo", "-p", "items=3", "-p", "seconds=0")
    assert code == 0, err
    ids = {done["id"]}
    if left == "its runner killed":  # running, with its writes in the WAL and no process behind it
        proc = fs.start("run", "demo", "-p", "items=500", "-p", "seconds=0.02")
        ids.add(proc.wait_line(lambda ln: " submitted" in ln).split()[1])
        proc.wait_line(lambda ln: "running" in ln and " 0/500" not in ln)
        proc.kill()
    before = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
    r = mount("--bind", "-o", "ro", str(state), str(state))
    assert r.returncode == 0, r.stderr
    try:
        listing = fs("--json", "ls")
        assert listing.returncode == 0, listing.stderr
        assert {op["id"] for op in json.loads(listing.stdout)} == ids
        r = fs("--json", "show", done["id"])
        assert r.returncode == 0 and json.loads(r.stdout)["status"] == "completed", r.stderr
        refusal = "is on a read-only file system: it can be read, not written"
        for args in (("run", "demo", "-p", "items=1"), ("cancel", done["id"]), ("rm", done["id"])):
            r = fs(*args)
            said = [ln for ln in r.stderr.splitlines() if "WARNING" not in ln]
            if args[0] == "run":
                assert r.returncode == ExitCode.STORE and len(said) == 1 and refusal in said[0], r.stderr
            else:
                assert r.returncode in (ExitCode.STORE, ExitCode.CONFLICT) and len(said) == 1, r.stderr
        r = fs("worker", "--exit-when-idle")
        assert r.returncode == ExitCode.STORE and "no work can be run from it" in r.stderr, r.stderr
    finally:
        assert subprocess.run(["umount", str(state)], capture_output=True, timeout=30).returncode == 0
    assert {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()} == before


def test_a_state_dir_its_owner_made_read_only_is_read_and_never_made_writable(cli: Cli) -> None:
    """``chmod a-w`` on a state dir holding only Outlast's files (to keep it as it is): every command made it
    0700 again, write added, and wrote to it. It is now read as a read-only file system's is, and what would
    write says in one line what makes it read-only and how to change that, exit 8, nothing changed."""
    state = cli.state_dir
    code, done, err = run_json(cli, "run", "demo", "-p", "items=3", "-p", "seconds=0")
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
    state.chmod(0o555)
    try:
        listing = cli("--json", "ls")
        assert listing.returncode == 0 and [op["id"] for op in json.loads(listing.stdout)] == [done["id"]]
        refusal = f"state dir {state} is read-only (mode 555: no write for its owner): it can be read, not written"
        for args in (("run", "demo", "-p", "items=1"), ("rm", done["id"])):
            r = cli(*args)
            said = [ln for ln in r.stderr.splitlines() if "WARNING" not in ln]
            assert r.returncode == ExitCode.STORE and len(said) == 1 and refusal in said[0], r.stderr
            assert f"chmod u+w {state}" in said[0], said
        r = cli("worker", "--exit-when-idle")
        assert r.returncode == ExitCode.STORE, r.stderr
        assert stat.S_IMODE(state.stat().st_mode) == 0o555
    finally:
        state.chmod(0o700)
    assert {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()} == before


def test_a_write_the_full_disk_refuses_after_the_store_opened_says_so_in_one_line(small_fs: Path) -> None:
    """The store opened (a worker keeps its WAL and shared memory in place), then a submit whose record needs
    pages the full disk has not: SQLite's "database or disk is full" escaped the store as it was, and the
    command said "internal error: OperationalError" (exit 70). Now it is the store's error: one line saying the
    disk is full and what to do, exit 8, nothing stored."""
    state = small_fs / "state"
    fs = CliAt(state)
    assert fs("run", "demo", "-p", "items=1", "-p", "seconds=0").returncode == 0
    holder = Proc(["worker"], fs.env)  # the store open in another process: its files stay as they are
    try:
        until(lambda: (state / "outlast.db-shm").exists())
        fill = fill_disk(small_fs)
        big = json.dumps({"argv": ["echo", "x" * 60_000]})
        r = fs("submit", "command", "--params-json", big)
        assert r.returncode == ExitCode.STORE, (r.returncode, r.stderr)
        [line] = r.stderr.strip().splitlines()
        assert "its file system is full" in line and "outlast.db cannot be written" in line, line
        fill.unlink()
        assert len(json.loads(fs("--json", "ls").stdout)) == 1, "the refused submit stored an operation"
    finally:
        holder.kill()


def test_a_stop_whose_wait_could_not_read_what_it_became_says_it_was_requested(cli: Cli, tmp_path: Path) -> None:
    """``outlast pause ID`` (waiting, as by default) of work a worker runs: the pause was stored, then a read of
    its wait failed (a disk's I/O error): the command said only "outlast.db cannot be read", exit 8, which reads
    as "nothing was asked", and the work paused all the same. It now says the pause was requested."""
    sub = cli("submit", "demo", "-p", "items=5", "-p", "seconds=4")  # a stop waits for the item's end
    assert sub.returncode == 0, sub.stderr
    op_id = sub.stdout.strip()
    worker = cli.start("worker", "--exit-when-idle")
    cli.wait_status(op_id, {"running"})
    flag = tmp_path / "disk-fails"
    flaky = {
        "OUTLAST_TEST_FLAKY_FLAG": str(flag),
        "OUTLAST_TEST_FLAKY_ALL": "1",
        "OUTLAST_TEST_FLAKY_P": "1",
        "OUTLAST_TEST_FLAKY_ONCE": "1",
        "OUTLAST_TEST_FLAKY_MATCH": "FROM operations",
    }
    pause = Proc(["--plugin", "tests.store_flaky", "pause", "--wait", "30", op_id], {**cli.env, **flaky})

    def asked() -> bool:
        with contextlib.closing(sqlite3.connect(f"file:{cli.state_dir / 'outlast.db'}?mode=ro", uri=True)) as db:
            return db.execute("SELECT control FROM operations WHERE id=?", (op_id,)).fetchone() == ("pause",)

    until(asked, 30, what="the pause stored")
    time.sleep(0.5)  # its first look at what the operation became is done: the wait's polls read on
    flag.touch()
    assert pause.wait(60) == ExitCode.STORE, pause.err
    said = [ln for ln in pause.err if "WARNING" not in ln]
    assert len(said) == 1 and "pause requested (it stops at its next safe point)" in said[0], pause.err
    assert "could not be read" in said[0], said
    assert not flag.exists()  # one statement failed, as the plugin was asked
    assert cli.wait_status(op_id, {"paused"}, 30).status is Status.PAUSED  # asked, and done
    assert worker.wait(60) == 0


def test_a_lock_file_the_disk_has_no_inode_for_says_it_is_full_in_one_line(small_fs: Path) -> None:
    """Bytes free but no inode left (a tmpfs's ``nr_inodes``, millions of small files): the database opens
    (its WAL and shared-memory files are there, held by another connection), the operation is submitted,
    and its lock file cannot be made. That OSError escaped the store as it was: "internal error" (exit 70)
    after the line saying it was submitted. Now it is the store's error: one line saying the disk is full,
    exit 8, and the operation the run submitted taken back."""
    state = small_fs / "state"
    fs = CliAt(state)
    assert fs("run", "demo", "-p", "items=1", "-p", "seconds=0").returncode == 0
    holder = sqlite3.connect(state / "outlast.db")  # keeps outlast.db-wal and -shm in place
    try:
        holder.execute("SELECT count(*) FROM operations").fetchone()
        spent = fill_inodes(small_fs)
        r = fs("run", "demo", "-p", "items=1", "-p", "seconds=0")
        assert r.returncode == ExitCode.STORE, (r.returncode, r.stderr)
        [line] = r.stderr.strip().splitlines()
        assert "its file system is full (no inode free" in line and ".lock cannot be made" in line, line
        shutil.rmtree(spent)
        assert len(json.loads(fs("--json", "ls").stdout)) == 1, "the run that could not start left its operation"
    finally:
        holder.close()


def test_what_was_running_is_read_while_the_store_fails_its_writes(cli: Cli, tmp_path: Path) -> None:
    """An operation whose process died (its disk filled, then a SIGKILL), read while the store's writes
    fail (the disk still full): ``ls``, ``show`` and ``logs`` each first mark it interrupted, a write that
    failed, and said only "outlast.db cannot be written", exit 8, so nobody could read what had been
    running, nor its log, until space was freed. Now they read it as stored, with one line saying why it is
    not marked, exit 0; the next command once writes work marks it."""
    argv = [sys.executable, "-c", "import time\nfor i in range(10**6): print('line', i, flush=True); time.sleep(0.02)"]
    proc = cli.start("run", "command", "--params-json", json.dumps({"argv": argv}))
    op_id = proc.wait_line(lambda ln: " submitted" in ln).split()[1]
    until(lambda: "line 5" in cli("logs", op_id).stdout, 30, what="lines logged")
    proc.kill()
    flag = tmp_path / "disk-fails"
    flag.touch()
    failing = {
        **cli.env,
        "OUTLAST_TEST_FLAKY_FLAG": str(flag),
        "OUTLAST_TEST_FLAKY_ALL": "1",
        "OUTLAST_TEST_FLAKY_P": "1",
        "OUTLAST_TEST_FLAKY_MATCH": "UPDATE operations",
    }
    for args in (("--json", "ls"), ("--json", "show", op_id), ("logs", op_id)):
        r = cli("--plugin", "tests.store_flaky", *args, env=failing)
        assert r.returncode == 0, (args, r.stderr)
        [line] = r.stderr.strip().splitlines()
        assert "outlast.db cannot be written" in line and "shown as stored" in line, line
        if args[1] == "ls":
            assert [(op["id"], op["status"]) for op in json.loads(r.stdout)] == [(op_id, "running")]
        elif args[1] == "show":
            assert json.loads(r.stdout)["status"] == "running"
        else:
            assert "line 5" in r.stdout, r.stdout
    flag.unlink()
    r = cli("--json", "show", op_id)
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "interrupted", r.stderr


def test_a_log_larger_than_the_disk_is_cut_before_the_store_has_no_room(small_fs: Path) -> None:
    """A command printing more than the state dir's disk holds (under the log limit, 64 MB): its log filled
    the disk, its record and checkpoints could not be written, and the run stopped as a store outage (exit 8);
    each resume filled it again, and every command said the disk was full until space was freed by hand.
    Now the log stops being written while the disk still has room for the store's records: the run
    completes, its log saying where lines were left out, with the last of them."""
    fs = CliAt(small_fs / "state", OUTLAST_STORE_OUTAGE_LIMIT="2")
    lines = 35_000  # ~9 MB of log records on a 5 MB disk (long lines: the cost is per line, the cut per byte)
    argv = [sys.executable, "-c", f"for i in range({lines}): print('line', i, 'x' * 200)"]
    code, rec, err = run_json(fs, "run", "command", "--params-json", json.dumps({"argv": argv}))
    assert code == 0, err
    assert rec["status"] == "completed" and rec["result"]["lines"] == lines, rec
    log = fs("logs", rec["id"]).stdout
    assert "the state dir's file system is nearly full" in log, log[-2000:]
    assert "came past the point where the store's disk was nearly full" in log
    assert f"line {lines - 1} " in log
