"""A plugin for the output databases' kill tests: the process SIGKILLs itself as the OUTLAST_TEST_DIE_AT-th SQL
statement on the database OUTLAST_TEST_DIE_DB starts (statements 1 .. N-1 ran), or, with OUTLAST_TEST_DIE_AT=0,
writes every statement run on it to OUTLAST_TEST_DIE_TRACE, one per line (to learn where the creation ends).

A kill at a random moment rarely lands between two statements that run within a millisecond of each other."""

from __future__ import annotations

import os
import signal
import sqlite3
from typing import Any

DB = os.environ.get("OUTLAST_TEST_DIE_DB", "")
AT = int(os.environ.get("OUTLAST_TEST_DIE_AT", "0"))
TRACE = os.environ.get("OUTLAST_TEST_DIE_TRACE", "")
_count = [0]
_connect = sqlite3.connect


def _statement(sql: str) -> None:
    _count[0] += 1
    if AT and _count[0] >= AT:
        os.kill(os.getpid(), signal.SIGKILL)
    if TRACE:
        with open(TRACE, "a") as fh:
            fh.write(" ".join(sql.split()) + "\n")


def connect(database: Any, *args: Any, **kw: Any) -> sqlite3.Connection:
    con = _connect(database, *args, **kw)
    if DB and str(database) == DB:
        con.set_trace_callback(_statement)
    return con


sqlite3.connect = connect  # type: ignore[assignment]
