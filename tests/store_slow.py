"""A plugin for the slow-store tests: a disk whose fsync stalls, seen from the process whose store it is. Each SQL
statement on ``outlast.db`` whose text holds OUTLAST_TEST_SLOW_MATCH waits OUTLAST_TEST_SLOW_SECONDS before it runs,
inside its write transaction (the write lock held, as a commit waiting for its fsync holds it), the first
OUTLAST_TEST_SLOW_TIMES such statements (0: every one). As each wait begins, the process's pid is written to
OUTLAST_TEST_SLOW_FLAG (when set), for a test to act while it holds the lock (SIGSTOP it, write beside it).

A wait on the store's own thread, as strace's ``inject=fdatasync:delay_enter=`` makes the real one, but at the
statement the test names, not at the N-th fsync of a sequence that changes with SQLite's version."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any

MATCH = os.environ.get("OUTLAST_TEST_SLOW_MATCH", "")
SECONDS = float(os.environ.get("OUTLAST_TEST_SLOW_SECONDS", "0"))
TIMES = int(os.environ.get("OUTLAST_TEST_SLOW_TIMES", "0"))
FLAG = os.environ.get("OUTLAST_TEST_SLOW_FLAG", "")
_lock = threading.Lock()
_count = [0]
_connect = sqlite3.connect


def _statement(sql: str) -> None:
    if MATCH not in sql:
        return
    with _lock:
        _count[0] += 1
        if TIMES and _count[0] > TIMES:
            return
    if FLAG:
        with open(FLAG, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    time.sleep(SECONDS)


def connect(database: Any, *args: Any, **kw: Any) -> sqlite3.Connection:
    con = _connect(database, *args, **kw)
    name = os.fsdecode(database) if isinstance(database, (str, bytes, os.PathLike)) else ""
    if name.split("?")[0].endswith("/outlast.db"):
        con.set_trace_callback(_statement)
    return con


if MATCH and SECONDS:
    sqlite3.connect = connect  # type: ignore[assignment]
