"""A plugin for the race test's failing disk: in an ``outlast worker`` process, while the file OUTLAST_TEST_FLAKY_FLAG
exists, each SQL statement on its state dir's ``outlast.db`` fails with probability OUTLAST_TEST_FLAKY_P (SQLite
aborts it: ``sqlite3.OperationalError``, as a disk that answers a write with an I/O error makes the store see it).
Seeded by OUTLAST_TEST_FLAKY_SEED and the process id. Other commands (the clients' ``submit``, ``cancel``, ...) fail
too with OUTLAST_TEST_FLAKY_ALL=1 (exit 8).

A statement is aborted from SQLite's progress handler, which runs every few virtual-machine steps of any statement,
prepared or cached, ``COMMIT`` included, so a failure lands anywhere in a transaction, not only where it starts."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import sys
import threading
import time
from typing import Any

FLAG = os.environ.get("OUTLAST_TEST_FLAKY_FLAG", "")
COUNT = f"{FLAG}.count"
"""A line ``PID TIME`` appended per statement failed (the race's figure, and its bound on items run again)."""
P = float(os.environ.get("OUTLAST_TEST_FLAKY_P", "0.01"))
ONCE = os.environ.get("OUTLAST_TEST_FLAKY_ONCE") == "1"
"""Fail one statement, then remove the flag."""
MATCH = os.environ.get("OUTLAST_TEST_FLAKY_MATCH", "")
"""Only statements whose SQL holds this text fail (all when empty)."""
_sql = threading.local()
_rnd = random.Random(f"{os.environ.get('OUTLAST_TEST_FLAKY_SEED', '0')}-{os.getpid()}")
_seen = [0.0, False]
"""When the flag was last looked for, and whether it was there (looked for at most every 20 ms)."""
_connect = sqlite3.connect


def _failing() -> bool:
    now = time.monotonic()
    if now - _seen[0] > 0.02:
        _seen[0], _seen[1] = now, os.path.exists(FLAG)
    return bool(_seen[1])


def _abort() -> int:
    if MATCH and MATCH not in getattr(_sql, "now", ""):
        return 0
    if not (_failing() and _rnd.random() < P):
        return 0
    with open(COUNT, "a") as fh:
        fh.write(f"{os.getpid()} {time.time():.6f}\n")
    if ONCE:  # the disk works again after this one
        with contextlib.suppress(FileNotFoundError):
            os.unlink(FLAG)
        _seen[1] = False
    return 1


def _started(sql: str) -> None:
    _sql.now = sql


def connect(database: Any, *args: Any, **kw: Any) -> sqlite3.Connection:
    con = _connect(database, *args, **kw)
    if FLAG and str(database).endswith("outlast.db"):
        con.set_progress_handler(_abort, 4)
        if MATCH:
            con.set_trace_callback(_started)
    return con


if "worker" in sys.argv[1:] or os.environ.get("OUTLAST_TEST_FLAKY_ALL") == "1":
    sqlite3.connect = connect  # type: ignore[assignment]
