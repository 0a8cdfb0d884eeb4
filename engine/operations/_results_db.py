"""The SQLite results database of the analysis operations (code_analysis, dependency_analysis).

Both commit each batch of files in one transaction before those files count as done, so a resume
redoes at most one batch, and the rows are replaced (never added twice) when it does.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

from ..files import create_private
from ._common import output_dir


def db_path(ctx: Any, output: str | None, prefix: str, root: str) -> str:
    """``output`` resolved, else ``outputs/PREFIX-HASH.sqlite`` in the state dir (one per analysed root)."""
    if output:
        return str(Path(output).expanduser().resolve())
    return str(output_dir(ctx) / f"{prefix}-{hashlib.sha1(root.encode()).hexdigest()[:12]}.sqlite")


def open_db(db: str, schema: str, meta: dict[str, str]) -> sqlite3.Connection:
    """The database, created if new (private mode); one connection used by one thread at a time."""
    create_private(Path(db))
    con = sqlite3.connect(db, check_same_thread=False)
    try:
        con.execute("PRAGMA journal_mode=WAL")  # one fsync per batch; readers never block the writer
        con.executescript(schema + "\nCREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);")
        with con:
            con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
    except BaseException:
        con.close()
        raise
    return con
