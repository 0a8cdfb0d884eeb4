"""A plugin for the store's kill tests (the sibling of tests.sqlite_die, for the local store): the process SIGKILLs
itself as the OUTLAST_TEST_STORE_DIE_AT-th SQL statement on the store of state dir OUTLAST_TEST_STORE_DIE_DIR
starts (statements 1 .. N-1 ran), after writing that statement to OUTLAST_TEST_STORE_DIE_HIT; with
OUTLAST_TEST_STORE_DIE_TRACE set, it writes every statement run on the store there, one per line; with
OUTLAST_TEST_STORE_DIE_SIGINT_AT=P, it sends itself SIGINT (Ctrl-C: a run pauses) as the P-th starts.

The store is every connection to ``outlast.db`` of that state dir, on any thread (the store's SQLite thread, the
quick paths of ``submit`` and ``ls``, read-only peeks through a ``file:`` URI), and to the database a new store is
built in beside it (``.outlast.db.new-*``, linked into place whole). Statements are counted in the order they start,
across connections and threads. ``--plugin`` modules are imported with the settings, before any command opens the
store; the first statement this plugin sees in a new state dir is the creation's first (the test checks it)."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

DIR = os.environ.get("OUTLAST_TEST_STORE_DIE_DIR", "")
AT = int(os.environ.get("OUTLAST_TEST_STORE_DIE_AT", "0"))
TRACE = os.environ.get("OUTLAST_TEST_STORE_DIE_TRACE", "")
HIT = os.environ.get("OUTLAST_TEST_STORE_DIE_HIT", "")
SIGINT_AT = int(os.environ.get("OUTLAST_TEST_STORE_DIE_SIGINT_AT", "0"))
_lock = threading.Lock()
_count = [0]
_connect = sqlite3.connect


def _line(sql: str) -> str:
    line = " ".join(sql.split())
    return line if len(line) <= 160 else line[:157] + "..."


def _statement(sql: str) -> None:
    with _lock:
        _count[0] += 1
        n = _count[0]
        if TRACE:
            with open(TRACE, "a") as fh:
                fh.write(_line(sql) + "\n")
        if n == SIGINT_AT:
            os.kill(os.getpid(), signal.SIGINT)
        if AT and n >= AT:
            if HIT:
                with open(HIT, "w") as fh:
                    fh.write(f"{n} [{threading.current_thread().name}] {_line(sql)}\n")
            os.kill(os.getpid(), signal.SIGKILL)


def _path(database: Any) -> Path | None:
    name = os.fsdecode(database) if isinstance(database, (str, bytes, os.PathLike)) else None
    if not name:
        return None
    if name.startswith("file:"):
        name = unquote(urlsplit(name).path)
    return Path(name)


def _ours(database: Any) -> bool:
    path = _path(database)
    if not DIR or path is None or os.path.realpath(path.parent) != os.path.realpath(DIR):
        return False
    return path.name == "outlast.db" or path.name.startswith(".outlast.db.new-")


def connect(database: Any, *args: Any, **kw: Any) -> sqlite3.Connection:
    con = _connect(database, *args, **kw)
    if _ours(database):
        con.set_trace_callback(_statement)
    return con


sqlite3.connect = connect  # type: ignore[assignment]
