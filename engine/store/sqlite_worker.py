"""One thread that owns a SQLite connection and commits concurrent writes as a group.

Every write job runs in its own SAVEPOINT inside one ``BEGIN IMMEDIATE`` transaction
with whatever other writes are waiting, so N operations finishing at once cost one
fsync, not N. A job that raises is rolled back alone; a failed COMMIT fails the group.
Reads run alone, in arrival order, and never see another job's uncommitted writes.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

MAX_GROUP = 256


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    write: bool
    future: Future[Any]
    undo: Callable[[], None] | None = None


class SqliteWorker:
    """``call(fn, *args)`` runs ``fn(*args)`` on the worker; ``transact(fn)`` runs ``fn(conn)`` in a group commit."""

    def __init__(self, name: str = "outlast-sqlite") -> None:
        self.conn: sqlite3.Connection | None = None
        self._q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self._q.put(_Job(fn, args, False, fut))
        return fut

    def transact(self, fn: Callable[[sqlite3.Connection], Any], undo: Callable[[], None] | None = None) -> Future[Any]:
        fut: Future[Any] = Future()
        self._q.put(_Job(fn, (), True, fut, undo))
        return fut

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=30)

    # ---- the thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        pending: deque[_Job] = deque()
        while True:
            job = pending.popleft() if pending else self._q.get()
            if job is None:
                return
            if not job.write:
                _settle(job, *_attempt(job.fn, *job.args))
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
            self._commit(group)

    def _commit(self, group: list[_Job]) -> None:
        conn = self.conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            for job in group:
                _undo(job)
                _settle(job, None, e)
            return
        outcomes: list[tuple[Any, BaseException | None]] = []
        for job in group:
            conn.execute("SAVEPOINT job")
            result, error = _attempt(job.fn, conn)
            if error is None:
                conn.execute("RELEASE job")
            else:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                _undo(job)
            outcomes.append((result, error))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for job, (_r, err) in zip(group, outcomes, strict=True):
                if err is None:
                    _undo(job)
                _settle(job, None, err or e)
            return
        for job, (result, error) in zip(group, outcomes, strict=True):
            _settle(job, result, error)


def _attempt(fn: Callable[..., Any], *args: Any) -> tuple[Any, BaseException | None]:
    try:
        return fn(*args), None
    except BaseException as e:  # delivered to the awaiting coroutine
        return None, e


def _undo(job: _Job) -> None:
    if job.undo is not None:
        with contextlib.suppress(Exception):
            job.undo()


def _settle(job: _Job, result: Any, error: BaseException | None) -> None:
    if job.future.set_running_or_notify_cancel():
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
