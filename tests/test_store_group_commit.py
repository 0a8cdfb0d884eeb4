"""Group commits of the SQLite store: what shares a transaction, and what survives a SIGKILL in the middle.

The SQLite thread commits concurrent writes together (engine/store/sqlite/worker.py); an attempt's final
write and the next claim for its slot share one transaction (Scheduler.hand_over); the WAL is folded in
when the thread is idle, not inside a commit. A group commit must never acknowledge a write before it is
durable: a subprocess checkpointing several operations at once (and submitting) is SIGKILLed at a
seeded random point, and everything it was told was written must be there, chains intact.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as fuzz
from hypothesis import strategies as st

from engine import OperationSpec, Settings, Status
from engine.models import Operation, WorkerInfo, new_id
from engine.store.sqlite import LocalStore
from engine.store.sqlite import worker as sqlite_worker
from tests.conftest import REPO
from tests.fixtures_engine import make_engine

OPS = 4
"""Operations checkpointing at once in the child (their checkpoints share group commits)."""

CHILD = r"""
import asyncio, sys, time
from engine import WorkerInfo, open_store
from engine.models import Checkpoint, Operation, Status, new_id
from engine.store.base import ItemDelta

OPS = int(sys.argv[2])
out = sys.stdout

def record() -> Operation:
    now = time.time()
    return Operation(id=new_id(), type="ledger", status=Status.QUEUED, created_at=now, queued_at=now, updated_at=now)

async def checkpointer(store, op_id: str, epoch: int) -> None:
    seq = 0
    while True:
        seq += 1
        state = {"seq": seq, "pad": "x" * 300}
        cp = Checkpoint(operation_id=op_id, seq=seq, epoch=epoch, created_at=time.time(), state=state)
        await store.save_checkpoint(cp, ItemDelta(done=[f"{seq}-{i}" for i in range(3)]), 3)
        out.write(f"cp {op_id} {seq} {store.worker.commits}\n")
        out.flush()

async def submitter(store) -> None:
    while True:
        op = record()
        await store.create(op)
        out.write(f"sub {op.id} {store.worker.commits}\n")
        out.flush()

async def main() -> None:
    store = open_store(sys.argv[1])
    await store.open()
    claimed = []
    for _ in range(OPS):
        op = record()
        await store.create(op)
        got = await store.claim(WorkerInfo(host="test", pid=0), time.time(), 300.0, op_id=op.id)
        claimed.append(got)
    out.write(f"ready {store.worker.commits} " + " ".join(op.id for op in claimed) + "\n")
    out.flush()
    tasks = [checkpointer(store, op.id, op.epoch) for op in claimed] + [submitter(store) for _ in range(2)]
    await asyncio.gather(*tasks)

asyncio.run(main())
"""


def _kill_round(state: Path, rng: random.Random, seed: int) -> tuple[int, int]:
    """One child run, SIGKILLed after a random number of acknowledged writes; returns (acks, commits) as
    the last acknowledgement read before the kill counted them (each line carries the commit count)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state), str(OPS)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    assert proc.stdout is not None
    kill_after = rng.randint(5, 150)
    acked_cp: dict[str, int] = {}
    acked_sub: list[str] = []
    commits = before = 0
    lines = 0
    try:
        for line in proc.stdout:
            kind, *rest = line.split()
            if kind == "ready":
                before, acked_cp = int(rest[0]), dict.fromkeys(rest[1:], 0)
                continue
            lines += 1
            if kind == "cp":
                acked_cp[rest[0]] = max(acked_cp[rest[0]], int(rest[1]))
            elif kind == "sub":
                acked_sub.append(rest[0])
            commits = int(rest[-1])
            if lines >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
        # Whatever was written before the kill was acknowledged too.
        for line in proc.stdout:
            kind, *rest = line.split()
            if kind == "cp":
                acked_cp[rest[0]] = max(acked_cp[rest[0]], int(rest[1]))
            elif kind == "sub":
                acked_sub.append(rest[0])
    finally:
        proc.kill()
        proc.wait(30)
    assert acked_cp, f"seed {seed}: the child never got ready"
    asyncio.run(_check(state, acked_cp, acked_sub, seed))
    return lines, commits - before


async def _check(state: Path, acked_cp: dict[str, int], acked_sub: list[str], seed: int) -> None:
    async with LocalStore(state) as store:
        for op_id in acked_sub:
            assert (await store.get(op_id)).status is Status.QUEUED, f"seed {seed}: acknowledged submit {op_id} lost"
        for op_id, acked in acked_cp.items():
            listed = await store.checkpoints(op_id)
            newest = max((c.seq for c in listed), default=0)
            assert newest >= acked, f"seed {seed}: {op_id} acknowledged checkpoint {acked}, newest stored {newest}"
            assert all(c.valid for c in listed), f"seed {seed}: {op_id} has a checkpoint off its chain"
            if not newest:
                continue
            got = await store.load_checkpoint(op_id)
            assert got is not None, f"seed {seed}: {op_id} has checkpoints but none loads"
            cp, ledger = got
            # The newest stored checkpoint loads whole: nothing half-written, the chain unbroken from seq 1.
            assert cp.seq == newest and cp.state["seq"] == newest, f"seed {seed}: {op_id} loads {cp.seq}/{newest}"
            assert ledger.done == {f"{s}-{i}" for s in range(1, newest + 1) for i in range(3)}, f"seed {seed}"


def test_sigkill_during_group_commits_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed = int(os.environ.get("OUTLAST_TEST_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    rounds = 20 if os.environ.get("OUTLAST_SOAK") else 3
    shared = False
    for n in range(rounds):
        acks, commits = _kill_round(tmp_path / f"state-{n}", rng, seed)
        shared = shared or 0 < commits < acks
    print(f"seed {seed}")
    assert shared or rounds < 3, f"seed {seed}: no round saw writes share a commit"


async def test_settle_and_the_next_claim_share_one_commit(settings: Settings) -> None:
    """One slot, a queue of trivial operations: each one's final write and the next claim are one commit."""
    n = 40
    async with make_engine(settings.model_copy(update={"max_concurrent": 1}), run_queue=False) as engine:
        ops = await asyncio.gather(
            *(engine.submit(OperationSpec(type="ledger", params={"items": 1})) for _ in range(n))
        )
    async with make_engine(settings.model_copy(update={"max_concurrent": 1})) as engine:
        worker = engine.store.worker  # type: ignore[attr-defined]
        start = worker.commits
        for op in ops:
            final = await engine.wait(op.id, timeout=60, poll=0.05)
            assert final.status is Status.COMPLETED, final
        used = worker.commits - start
    # Before: a claim and a settle per operation (2n, fewer when they happened to meet); now one per hand-over (n).
    assert used <= n + n // 8, f"{used} commits for {n} operations at one slot"


async def test_the_wal_is_folded_in_when_the_store_is_idle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits leave the WAL to grow until the thread is idle; then it is folded in and starts over, so the
    next commits reuse its space (the file stops growing)."""
    monkeypatch.setattr(sqlite_worker, "IDLE_FOLD", 5, raising=False)
    wal = tmp_path / "state" / "outlast.db-wal"
    async with LocalStore(tmp_path / "state") as store:

        def record() -> Operation:
            now = time.time()
            return Operation(id=new_id(), type="x", status=Status.QUEUED, created_at=now, queued_at=now, updated_at=now)

        for _ in range(39):
            await store.create(record())
        # A fold after these commits: on a loaded machine the thread was idle between two of them too, and
        # a fold then (the WAL begun again after a few commits) was taken for this one. Counted before the
        # last commit: counted after it, a fold the idle thread made before the count was read (5 ms on a
        # loaded machine) was never seen, and the test waited its 10 s.
        folds = getattr(store.worker, "wal_checkpoints", 0)
        await store.create(record())
        grown = wal.stat().st_size
        end = time.monotonic() + 10
        while getattr(store.worker, "wal_checkpoints", 0) == folds and time.monotonic() < end:
            await asyncio.sleep(0.01)  # idle: the thread folds the WAL in
        before = wal.stat().st_size
        assert before == grown, "a write happened while idle"
        for _ in range(10):
            await store.create(record())  # from the WAL's start, over blocks it has
        assert wal.stat().st_size == before, f"the WAL grew from {before} to {wal.stat().st_size} bytes after idling"


async def test_a_store_that_never_idles_keeps_its_wal_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load with no idle moment the WAL is folded in every WAL_COMMITS commits, so its file stops
    growing near that many commits' frames (a growing WAL costs each commit about twice a reused one)."""
    monkeypatch.setattr(sqlite_worker, "IDLE_CHECKPOINT", 3600.0)  # never idle long enough
    monkeypatch.setattr(sqlite_worker, "WAL_COMMITS", 20)
    wal = tmp_path / "state" / "outlast.db-wal"
    async with LocalStore(tmp_path / "state") as store:

        def record() -> Operation:
            now = time.time()
            return Operation(id=new_id(), type="x", status=Status.QUEUED, created_at=now, queued_at=now, updated_at=now)

        before = wal.stat().st_size
        for _ in range(10):
            await store.create(record())
        per_commit = (wal.stat().st_size - before) / 10
        for _ in range(90):
            await store.create(record())
        assert store.worker.wal_checkpoints >= 4
        assert wal.stat().st_size <= before + 25 * per_commit, f"the WAL grew to {wal.stat().st_size} bytes"


async def test_an_error_outside_any_job_is_answered_and_the_thread_goes_on() -> None:
    """Whatever goes wrong in a group (here: a write with no connection to run it on), its callers get the
    error and the thread keeps serving: a dead thread would leave every later caller waiting forever."""
    worker = sqlite_worker.SqliteWorker()
    try:
        with pytest.raises(AssertionError):
            await asyncio.wait_for(worker.run_txn(lambda conn: None), 10)
        assert await asyncio.wait_for(worker.run(lambda: 42), 10) == 42
    finally:
        worker.stop()


async def test_a_transaction_sqlite_rolls_back_whole_fails_only_the_jobs_it_held(tmp_path: Path) -> None:
    """SQLite may roll back the whole transaction from inside a statement (SQLITE_FULL, IOERR, NOMEM: a
    job here does what it does, ROLLBACK, then raises as it would). In one group: a job that failed by
    itself keeps its own error; the job before, whose write went with the transaction, fails with that
    error; the job after runs in the next group and commits. Each failed job is undone; the first try of
    the group (no savepoints) was rolled back for the first failure, so every job was undone once then."""
    worker = sqlite_worker.SqliteWorker()
    undone: list[str] = []

    def open_db() -> None:
        conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None, check_same_thread=False)
        conn.execute("CREATE TABLE t(k TEXT)")
        worker.conn = conn

    def insert(key: str) -> Any:
        def job(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO t VALUES(?)", (key,))
            if key == "stale":
                raise ValueError("stale attempt")
            if key == "big":
                conn.execute("ROLLBACK")
                raise sqlite3.OperationalError("database or disk is full")
            return key

        return job

    try:
        await worker.run(open_db)
        gate = threading.Event()
        held = worker.run(gate.wait)
        futs = {
            k: worker.run_txn(insert(k), undo=lambda k=k: undone.append(k)) for k in ("stale", "before", "big", "after")
        }
        gate.set()
        await asyncio.wait_for(held, 10)
        outcomes = {}
        for k, fut in futs.items():
            try:
                outcomes[k] = await asyncio.wait_for(fut, 10)
            except Exception as e:
                outcomes[k] = f"{type(e).__name__}: {e}"
        assert outcomes == {
            "stale": "ValueError: stale attempt",
            "before": "OperationalError: database or disk is full",
            "big": "OperationalError: database or disk is full",
            "after": "after",
        }
        assert sorted(undone) == sorted(["stale", "before", "big", "after", "before", "big"])
        conn = worker.conn
        assert conn is not None
        assert await worker.run(lambda: conn.execute("SELECT k FROM t").fetchall()) == [("after",)]
    finally:
        if worker.conn is not None:
            await worker.run(worker.conn.close)
        worker.stop()


@fuzz(max_examples=40, deadline=None)
@given(plan=st.lists(st.sampled_from(["ok", "raise-before", "raise-after"]), min_size=1, max_size=8))
def test_a_job_that_raises_in_a_group_takes_only_its_own_writes_with_it(tmp_path_factory: Any, plan: list[str]) -> None:
    """A group runs first without a savepoint per job; a job that raises then rolls the whole transaction
    back and the others run again, each in a savepoint. Whatever jobs raise, before or after writing: the
    table holds exactly the writes of the jobs that returned, once each; every caller gets its own outcome;
    every failed job is undone, and a job that returned is undone only when the group's first try was rolled
    back (it then ran again)."""
    db = tmp_path_factory.mktemp("group") / "t.db"

    async def scenario() -> None:
        worker = sqlite_worker.SqliteWorker()
        undone: list[int] = []

        def open_db() -> None:
            conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            conn.execute("CREATE TABLE t(k INTEGER)")
            worker.conn = conn

        def job(k: int, how: str) -> Any:
            def run(conn: sqlite3.Connection) -> int:
                if how == "raise-before":
                    raise ValueError(f"refused {k}")
                conn.execute("INSERT INTO t VALUES(?)", (k,))
                if how == "raise-after":
                    raise ValueError(f"refused {k}")
                return k

            return run

        try:
            await worker.run(open_db)
            gate = threading.Event()
            held = worker.run(gate.wait)  # the jobs queue up behind it, so they share one group
            futs = [worker.run_txn(job(k, how), undo=lambda k=k: undone.append(k)) for k, how in enumerate(plan)]
            gate.set()
            await asyncio.wait_for(held, 10)
            got = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 10)
            want = [k if how == "ok" else f"refused {k}" for k, how in enumerate(plan)]
            assert [g if isinstance(g, int) else str(g) for g in got] == want
            conn = worker.conn
            assert conn is not None
            rows = await worker.run(lambda: [k for (k,) in conn.execute("SELECT k FROM t ORDER BY k")])
            assert rows == [k for k, how in enumerate(plan) if how == "ok"]
            failed = [k for k, how in enumerate(plan) if how != "ok"]
            assert set(failed) <= set(undone)
            if failed and len(plan) > 1:  # the first try rolled back: every job undone once then
                assert sorted(undone) == sorted(list(range(len(plan))) + failed[1:])
            else:
                assert sorted(undone) == failed
        finally:
            if worker.conn is not None:
                await worker.run(worker.conn.close)
            worker.stop()

    asyncio.run(scenario())


def interrupt_statements(monkeypatch: pytest.MonkeyPatch, fail: Callable[[str, sqlite3.Connection], bool]) -> None:
    """Every store connection made from here on aborts a statement ("interrupted", as the race test's failing
    disk does, from SQLite's progress handler, checked at every step) wherever ``fail(sql, con)`` says so, with
    the statement's SQL upper-cased."""
    real = sqlite3.connect

    def connect(database: Any, *args: Any, **kw: Any) -> sqlite3.Connection:
        con = real(database, *args, **kw)
        if str(database).endswith("outlast.db"):
            now = threading.local()

            def started(sql: str) -> None:
                now.sql = sql.lstrip().upper()

            con.set_trace_callback(started)
            con.set_progress_handler(lambda: int(fail(getattr(now, "sql", ""), con)), 1)
        return con

    monkeypatch.setattr(sqlite3, "connect", connect)


async def test_a_claim_whose_commit_and_rollback_both_fail_leaves_its_operation_to_the_next_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing disk interrupts any statement (tests.store_flaky), the ROLLBACK after a failed COMMIT too. That
    ROLLBACK left the transaction open: the claim's undo read its own claim back as running and kept the
    operation's lock, and the connection kept SQLite's write lock, so another process's claim waited out the
    30 s busy timeout (and then, while this process lived, skipped the operation as "still finishing").
    The ROLLBACK is tried again: the claim fails, the operation is queued, and the next claim takes it."""
    failing: list[str] = []
    """Statements to fail, in order: each fails the next statement that begins with it."""

    def fail(sql: str, con: sqlite3.Connection) -> bool:
        if failing and sql.startswith(failing[0]):
            failing.pop(0)
            return True
        return False

    interrupt_statements(monkeypatch, fail)
    now = time.time()
    op = Operation(id=new_id(), type="ledger", status=Status.QUEUED, created_at=now, queued_at=now, updated_at=now)
    first, second = LocalStore(tmp_path / "state"), LocalStore(tmp_path / "state")
    await first.open()
    try:
        await first.create(op)
        failing[:] = ["COMMIT", "ROLLBACK"]
        with pytest.raises(Exception, match="interrupted"):
            await first.claim(WorkerInfo(host="test", pid=1), time.time(), 300.0)
        assert failing == [], "both statements failed"
        assert (await first.get(op.id)).status is Status.QUEUED  # its own reads: what was committed
        await second.open()
        got = await asyncio.wait_for(second.claim(WorkerInfo(host="test", pid=2), time.time(), 300.0), 10)
        assert got is not None and got.id == op.id and got.worker == WorkerInfo(host="test", pid=2)
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("commit_of", ["claim", "submit"])
async def test_a_commit_interrupted_once_it_committed_answers_what_it_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commit_of: str
) -> None:
    """SQLite runs the progress handler once more as a statement returns: a COMMIT interrupted there (the race
    test's failing disk does it) raises "interrupted" though it committed. The group was read as lost: a claim
    was answered as failed while the store said running by this process, its lock kept (the undo read it back
    as running), and no attempt started: the operation stayed running with nothing behind it for as long as the
    worker lived (seed 20261252 of the failing-disk race). A submit was answered as failed though stored, so
    submitting it again ran it twice. Such a COMMIT now answers what it committed."""
    armed = [False]

    def fail(sql: str, con: sqlite3.Connection) -> bool:
        # Only once the COMMIT has ended the transaction: it committed, then is interrupted.
        if armed[0] and sql.startswith("COMMIT") and not con.in_transaction:
            armed[0] = False
            return True
        return False

    interrupt_statements(monkeypatch, fail)
    now = time.time()
    op = Operation(id=new_id(), type="ledger", status=Status.QUEUED, created_at=now, queued_at=now, updated_at=now)
    store, other = LocalStore(tmp_path / "state"), LocalStore(tmp_path / "state")
    await store.open()
    await other.open()
    try:
        if commit_of == "submit":
            armed[0] = True
            await store.create(op)  # old code: raised "interrupted" of a stored operation
            assert not armed[0], "the COMMIT was interrupted"
            assert (await other.get(op.id)).status is Status.QUEUED
            return
        await store.create(op)
        armed[0] = True
        got = await store.claim(WorkerInfo(host="test", pid=1), time.time(), 300.0)  # old code: raised
        assert not armed[0], "the COMMIT was interrupted"
        assert got is not None and got.id == op.id and got.status is Status.RUNNING
        stored = await other.get(op.id)
        assert (stored.status, stored.epoch, stored.worker) == (Status.RUNNING, got.epoch, got.worker)
    finally:
        await store.close()
        await other.close()
