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


def check_kind(value: str | None, name: str, kind: str) -> str | None:
    """``value`` when it names no database yet, an empty one, or one this ``kind`` of operation wrote;
    else a ValueError (another operation's database, say an index, must not be written into)."""
    if value is None:
        return None
    p = Path(value).expanduser()
    if not p.is_file() or p.stat().st_size == 0:
        return value
    try:
        con = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            found = con.execute("SELECT value FROM meta WHERE key='kind'").fetchone() if "meta" in tables else None
        finally:
            con.close()
    except sqlite3.Error as e:
        raise ValueError(f"{name} {value!r} cannot be read as SQLite: {e}") from None
    if tables and (found is None or found[0] != kind):
        what = f"a {found[0]} database" if found else "another program's database"
        raise ValueError(f"{name} {value!r} is {what}, not a {kind} one: choose another path")
    return value


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
