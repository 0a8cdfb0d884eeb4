"""One thread that owns a SQLite connection and commits concurrent writes as a group.

Every write job runs inside one ``BEGIN IMMEDIATE`` transaction with whatever other
writes are waiting, so N operations finishing at once cost one fsync, not N. A job that
raises is rolled back alone (the group runs again without it, each job in a SAVEPOINT);
a failed COMMIT fails the group.
SQLite may roll back the whole transaction from inside a statement (on a full disk, an
I/O error, out of memory): then the jobs before it fail with it, and the jobs after it
run in the next group. No error ends the thread: every caller gets an answer.
Reads run alone, in arrival order, and never see another job's uncommitted writes.

Results reach asyncio callers in one ``call_soon_threadsafe`` per group (one wake-up
of the event loop for a whole group), not one per job.

The WAL is folded back into the database file (a PASSIVE checkpoint) when the thread is idle
(no job for ``IDLE_CHECKPOINT`` seconds, once ``IDLE_FOLD`` commits are in it), not inside
whichever commit crosses SQLite's auto-checkpoint threshold (the connection turns that off:
``wal_autocheckpoint=0``). Under load that never pauses, every ``WAL_COMMITS`` commits are
folded in between two groups, so the WAL stays bounded.

Once folded in, the WAL starts over from its beginning and is not truncated: the next commits
overwrite blocks the file already has, and their fsync has no file size to write. A commit that
grows the WAL cost 1.6-2x one that reuses it here (1,700-2,100 against 3,100-3,400 commits/s of an
operation row), so the WAL is kept small: folded every ``WAL_COMMITS`` commits (about 4.5 MB of
submits, near SQLite's own 1,000-page default; one fold about 1.5 ms) rather than grown for
thousands of commits (84 MB after 2,000 submits with no fold). After a write failed (a full disk)
nothing is folded in until a commit succeeds again, so a store that cannot write stays so (said
once, exit 8) instead of flickering between failing and not.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

MAX_GROUP = 256

IDLE_CHECKPOINT = 0.005
"""Seconds without a job after which the thread folds the WAL into the database file."""

IDLE_FOLD = 25
"""Commits in the WAL before an idle moment folds them in."""

SLOW_GROUP = 1.0
"""Seconds a group commit may take before the thread lets other processes take the write lock after it..."""

LOCK_TURN = 0.2
"""...for this long (SQLite's busy handler of a waiting process tries again every 100 ms): a disk whose fsync
took 20s per commit kept the lock with this thread's next group for 30s on end, every ``outlast cancel`` and
``submit`` beside it refused as "locked"."""

WAL_COMMITS = 100
"""Commits after which the WAL is folded in even without an idle moment (keeps it small, so reused)."""


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    write: bool
    future: asyncio.Future[Any]
    undo: Callable[[], None] | None = None
    """Runs on the thread each time the job's writes were rolled back (e.g. let go of a lock it took): it
    failed, or the group's first try was rolled back for another job's failure and it runs again."""
    after: Callable[[], None] | None = None
    """Runs on the thread once the job's group committed (e.g. let go of a lock the commit made stale)."""


class SqliteWorker:
    """``run(fn, *args)`` runs ``fn(*args)`` on the thread; ``run_txn(fn)`` runs ``fn(conn)`` in a group commit."""

    def __init__(self, name: str = "outlast-sqlite") -> None:
        self.conn: sqlite3.Connection | None = None
        self.commits = 0
        """Group commits made (several concurrent writes share one): for benchmarks and tests."""
        self.wal_checkpoints = 0
        """PASSIVE checkpoints run by this thread (idle, or after WAL_COMMITS commits)."""
        self._unfolded = 0
        """Commits since the WAL was last folded in completely."""
        self._failing = False
        """The last write failed in SQLite (a full disk, an I/O error): fold nothing in until one commits."""
        self.busy_since: float | None = None
        """When (monotonic) the thread began what it does now (a job, a group, a fold of the WAL); None while it
        waits for a job: how long the store has not answered (a disk whose fsync does not return)."""
        self.guard: Callable[[bool], None] | None = None
        """Run on the thread before each job, with whether it writes (the store's check that its database
        file is still the one at its path): what it raises fails a write group unwritten; a read goes on."""
        self._q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # asyncio imported by the first worker, not with this module: ``outlast submit`` writes its record with
        # the store's commit (``commit``) and no event loop, and asyncio was a tenth of its start-up.
        import asyncio

        self._running_loop = asyncio.get_running_loop
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` on the thread (a read, or plumbing); an asyncio future of the running loop."""
        fut: asyncio.Future[Any] = self._running_loop().create_future()
        self._q.put(_Job(fn, args, False, fut))
        return fut

    def run_txn(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        undo: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
    ) -> asyncio.Future[Any]:
        """Run ``fn(conn)`` as a durable write in the next group commit; ``after`` runs once it committed."""
        fut: asyncio.Future[Any] = self._running_loop().create_future()
        self._q.put(_Job(fn, (), True, fut, undo, after))
        return fut

    def stop(self, wait: float = 30.0) -> None:
        """End the thread once the jobs queued before are done, waiting up to ``wait`` seconds for it (0: not at
        all; it is a daemon thread, so nothing at exit waits for it either)."""
        self._q.put(None)
        if wait:
            self._thread.join(timeout=wait)

    # ---- the thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        pending: deque[_Job | None] = deque()  # None: the stop marker
        while True:
            job = pending.popleft() if pending else self._next()
            if job is None:
                return
            self.busy_since = time.monotonic()
            if self.conn is not None and self.conn.in_transaction:
                _rollback(self.conn)  # one a failed ROLLBACK left open (see _rollback)
            if not job.write:
                if self.guard is not None:
                    with contextlib.suppress(Exception):
                        self.guard(False)
                _deliver([(job, *_attempt(job.fn, *job.args))])
                continue
            group = [job]
            while len(group) < MAX_GROUP and not pending:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is not None and nxt.write:
                    group.append(nxt)
                else:
                    pending.append(nxt)  # a read or the stop marker waits for this group's commit
            try:
                unrun = self._commit(group)
            except Exception as e:  # never expected; but a dead thread would leave every caller waiting forever
                unrun = []
                self._lose(group, e)
            pending.extendleft(reversed(unrun))  # they came before what waits in pending
            if time.monotonic() - self.busy_since >= SLOW_GROUP:
                time.sleep(LOCK_TURN)  # the lock is free: another process's write gets its turn
            if self._unfolded >= WAL_COMMITS and not self._failing:
                self._fold_wal()  # constant load: between two groups, the WAL must not grow forever

    def _next(self) -> _Job | None:
        """The next job; while waiting for one, fold the WAL in once the thread has been idle a moment."""
        self.busy_since = None
        if self._unfolded < IDLE_FOLD or self._failing:
            return self._q.get()
        try:
            return self._q.get(timeout=IDLE_CHECKPOINT)
        except queue.Empty:
            self.busy_since = time.monotonic()
            self._fold_wal()
            self.busy_since = None
            return self._q.get()

    def _fold_wal(self) -> None:
        """A PASSIVE checkpoint (never waits for readers or writers of other processes): copies the
        committed WAL frames into the database file, so the next write starts the WAL over."""
        conn = self.conn
        if conn is None:
            self._unfolded = 0
            return
        try:
            busy, logged, folded = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            busy, logged, folded = 1, 1, 0  # tried again after the next commits
        self.wal_checkpoints += 1
        # A reader of another process can hold frames back: count from here, try again later.
        self._unfolded = 0 if not busy and logged == folded else min(self._unfolded, IDLE_FOLD)

    def _commit(self, group: list[_Job], careful: bool = False) -> list[_Job]:
        """Run ``group`` in one transaction and deliver every job's outcome; return the jobs that did not
        run because the transaction was lost before their turn (the caller runs them in the next group).

        The first try gives no job a savepoint of its own: two statements fewer per job, and each statement
        lets go of the GIL and waits to get it back behind the event loop. A job that raises then costs the
        group its transaction: it is answered with its error, and the others run again, ``careful``, each
        in a savepoint (a job is a function of the database it reads, and takes the same locks again)."""
        try:
            if self.guard is not None:
                self.guard(True)
            conn = self.conn
            assert conn is not None
            conn.execute("BEGIN IMMEDIATE")
        except Exception as e:
            self._failing = True
            self._lose(group, e)
            return []
        outcomes: list[tuple[Any, BaseException | None]] = []
        solo = len(group) == 1  # alone: the transaction is the job's savepoint
        marks = careful and not solo
        for i, job in enumerate(group):
            try:
                if marks:
                    conn.execute("SAVEPOINT job")
                result, error = _attempt(job.fn, conn)
                if isinstance(error, sqlite3.OperationalError):
                    self._failing = True
                if error is not None and (solo or not conn.in_transaction):
                    # Alone, or SQLite rolled the whole transaction back (it may on a full disk, an I/O
                    # error, out of memory): the jobs before this one lost their writes too, and the ones
                    # after it have not run.
                    self._lose(group[: i + 1], error, outcomes)
                    return group[i + 1 :]
                if error is not None and not marks:
                    return self._again_without(group, i, error)
                if error is None:
                    if marks:
                        conn.execute("RELEASE job")
                else:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
            except sqlite3.Error as e:  # a savepoint statement failed: the transaction is in doubt
                self._failing = True
                self._lose(group[: i + 1], e, outcomes)
                return group[i + 1 :]
            if error is not None:
                _undo(job)
            outcomes.append((result, error))
        try:
            commit(conn)
        except sqlite3.Error as e:
            self._failing = True
            self._lose(group, e, outcomes)
            return []
        self.commits += 1
        self._unfolded += 1
        self._failing = False
        for job, (_r, err) in zip(group, outcomes, strict=True):
            if err is None and job.after is not None:
                with contextlib.suppress(Exception):
                    job.after()
        _deliver([(job, result, error) for job, (result, error) in zip(group, outcomes, strict=True)])
        return []

    def _again_without(self, group: list[_Job], i: int, error: BaseException) -> list[_Job]:
        """Job ``i`` of a group run without savepoints raised ``error``: roll the whole transaction back,
        answer that job, and run the others again, each in a savepoint (their outcomes are delivered then)."""
        job, others = group[i], group[:i] + group[i + 1 :]
        conn = self.conn
        assert conn is not None
        if not _rollback(conn):
            self._failing = True
            _undo(job)
            _deliver([(job, None, error)])
            self._lose(others, sqlite3.OperationalError("the transaction could not be rolled back"))
            return []
        # Every job's writes went with the rollback: each is undone (read as the database was before the
        # group), so a claim lets go of the lock it took, and takes one again when it runs again: another
        # process may commit between the two tries, and a claim that then chose another operation left the
        # first one locked, claimable by nobody else while this process lived.
        for undone in group:
            _undo(undone)
        _deliver([(job, None, error)])
        return self._commit(others, careful=True)

    def _lose(
        self, jobs: list[_Job], error: BaseException, outcomes: Sequence[tuple[Any, BaseException | None]] = ()
    ) -> None:
        """Nothing of ``jobs`` was committed: roll back what is left of the transaction, undo each job and
        fail it with ``error`` (a job that failed by itself, its outcome among the ``outcomes`` of the jobs
        that ran, keeps its own error and was undone then)."""
        if self.conn is not None:
            _rollback(self.conn)
        own = [err for _r, err in outcomes] + [None] * (len(jobs) - len(outcomes))
        for job, err in zip(jobs, own, strict=True):
            if err is None:
                _undo(job)
        _deliver([(job, None, err or error) for job, err in zip(jobs, own, strict=True)])


def commit(conn: sqlite3.Connection) -> None:
    """``COMMIT``, raising only if the transaction did not commit. SQLite runs the progress handler once more as
    any statement returns, so a COMMIT interrupted there (``sqlite3_interrupt``, the tests' failing disk) raises
    "interrupted" though it committed and ended its transaction. Read as lost, a claim that committed was answered
    as failed and undone, and its undo read the operation back as running: it stayed running by this process with
    no attempt, its lock held, as long as the process lived. Any other error after which no transaction is open is
    SQLite's own rollback (a full disk, an I/O error, out of memory); one that leaves it open did not commit."""
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        if conn.in_transaction or getattr(e, "sqlite_errorcode", None) != sqlite3.SQLITE_INTERRUPT:
            raise


ROLLBACK_TRIES = 10


def _rollback(conn: sqlite3.Connection) -> bool:
    """End the open transaction, if any; whether it ended. A ROLLBACK can fail too (interrupted, as the tests'
    failing disk interrupts any statement): until one succeeds the connection keeps the lost writes, its
    reads see them (a claim's undo read its own claim back as running, and kept a lock no claim had), and it
    keeps the write lock, every other process's write waiting for it. Tried again at once: what fails a
    ROLLBACK (it only drops pages in memory) does not last."""
    for _ in range(ROLLBACK_TRIES):
        if not conn.in_transaction:
            return True
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
    return not conn.in_transaction


def _attempt(fn: Callable[..., Any], *args: Any) -> tuple[Any, BaseException | None]:
    try:
        return fn(*args), None
    except BaseException as e:  # delivered to the awaiting coroutine
        return None, e


def _undo(job: _Job) -> None:
    if job.undo is not None:
        with contextlib.suppress(Exception):
            job.undo()


Outcome = tuple[_Job, Any, BaseException | None]


def _deliver(outcomes: list[Outcome]) -> None:
    """Resolve the jobs' futures in one hop per event loop (one wake-up for a whole group)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for o in outcomes:
        by_loop.setdefault(o[0].future.get_loop(), []).append(o)
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed while the job ran: nobody waits
            loop.call_soon_threadsafe(_resolve, batch)


def _resolve(batch: list[Outcome]) -> None:
    """On the event loop: set each asyncio future (one a caller gave up on stays cancelled)."""
    for job, result, error in batch:
        fut = job.future
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
