"""The SQLite results database of the analysis operations (code_analysis, dependency_analysis).

Both commit each batch of files in one transaction before those files count as done, so a resume
redoes at most one batch, and the rows are replaced (never added twice) when it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import sqlite3
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..context import OperationFailed
from ..files import create_private
from ..shortage import OUT_OF_FILES, files_short, files_short_opening
from ._common import changed_since, disk_full, output_dir, peek, reading_since


def db_path(ctx: Any, output: str | None, prefix: str, root: str) -> str:
    """``output`` resolved, else ``outputs/PREFIX-HASH.sqlite`` in the state dir (one per analysed root)."""
    if output:
        return str(Path(output).expanduser().resolve())
    return str(output_dir(ctx) / f"{prefix}-{hashlib.sha1(root.encode()).hexdigest()[:12]}.sqlite")


def check_kind(
    value: str | None, name: str, kind: str, legacy: frozenset[str] = frozenset(), schema: str = ""
) -> str | None:
    """``value`` when it names no database yet, an empty one, or one this ``kind`` of operation wrote (or
    whose tables are all among ``legacy``: written before the kind was recorded, or all among the tables
    ``schema`` creates, with their columns, and empty: see ``_unfinished``); else a ValueError (another
    operation's database, say an index, or another program's, must not be written into)."""
    if value is None:
        return None
    p = Path(value).expanduser()
    if not p.is_file() or p.stat().st_size == 0:
        return value
    try:
        with peek(p) as con:
            try:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            except sqlite3.Error as e:
                if (short := files_short_opening(f"the results database {value!r}", e)) is not None:
                    raise short from None  # asked while it is open: once closed, there is room again
                raise
            meta: dict[str, str] = {}
            with contextlib.suppress(sqlite3.Error):  # another program's meta table, of its own columns
                meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('kind', 'root')"))
            unfinished = "kind" not in meta and schema != "" and _unfinished(con, tables, schema)
    except sqlite3.Error as e:
        if (short := files_short_opening(f"the results database {value!r}", e)) is not None:
            raise short from None
        if disk_full(e, name, p):
            # Read only to be told its kind: SQLite could not size its WAL's shared memory. Writing it fails the
            # same way (the operation says so in one line, and a resume checks its kind again): refused here,
            # the run (which checks its params again) failed as "InvalidInput: ... (at attempt.py:NNN)".
            return value
        raise ValueError(f"{name} {value!r} cannot be read as SQLite: {e}") from None
    found = meta.get("kind")
    # An old database of this kind: its tables all among ``legacy``, and its meta saying its root if it has one
    old = found is None and tables <= legacy and ("root" in meta if "meta" in tables else "meta" not in legacy)
    if tables and found != kind and not old and not unfinished:
        what = f"a {found} database" if found else "another program's database"
        raise ValueError(f"{name} {value!r} is {what}, not a {kind} one: choose another path")
    return value


def _columns(con: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in con.execute("SELECT * FROM pragma_table_info(?)", (table,))]


def _unfinished(con: sqlite3.Connection, tables: set[str], schema: str) -> bool:
    """Whether the database holds only tables ``schema`` (or the meta and run tables) creates, with their
    columns, every one empty: one whose creation was killed before its kind was written, by the versions that
    created the tables and the kind in separate transactions. Refused as another program's, it made the resume
    of the operation that created it fail, for ever; nothing in it can be another program's."""
    mem = sqlite3.connect(":memory:")
    try:
        mem.executescript(f"{schema}\n{META_TABLE};\n{RUN_TABLE};")
        own = {t: _columns(mem, t) for (t,) in mem.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        mem.close()
    return tables <= set(own) and all(
        _columns(con, t) == own[t] and con.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone() is None for t in tables
    )


def open_db(db: str, schema: str, meta: dict[str, str]) -> sqlite3.Connection:
    """The database, created if new (private mode); one connection used by one thread at a time."""
    con = connect(db)
    with setting_up(db, con):
        con.execute("PRAGMA journal_mode=WAL")  # one fsync per batch; readers never block the writer
        create_tables(con, schema, meta)
    return con


@contextlib.contextmanager
def setting_up(db: str, con: sqlite3.Connection) -> Iterator[None]:
    """Around the first statements on a new connection to ``db``: on any failure ``con`` is closed, and a
    SQLite error is said as ``cannot_open`` says it (asked while it is open: a descriptor shortage is seen
    before the close)."""
    try:
        yield
    except sqlite3.Error as e:
        said = cannot_open(db, e)
        con.close()
        if said is e:
            raise
        raise said from None
    except BaseException:
        con.close()
        raise


def connect(db: str, **kw: Any) -> sqlite3.Connection:
    """A connection to the results database ``db``, created if new (private mode: its journal files take
    it); a failure to open it is said in one line (``cannot_open``)."""
    try:
        create_private(Path(db))
        return sqlite3.connect(db, check_same_thread=False, **kw)
    except (OSError, sqlite3.Error) as e:
        said = cannot_open(db, e)
        if said is e:
            raise
        raise said from None


def cannot_open(db: str, e: BaseException) -> BaseException:
    """What to raise for ``e``, met opening (or first writing) the results database ``db``: SQLite's "unable
    to open database file" (SQLITE_CANTOPEN, no errno) named neither the file nor why. With no file
    descriptor left, an EMFILE naming the limit (a shortage: the attempt is queued again, as for any other);
    with the database or its directory unusable (gone, not writable, a directory), one line naming the path
    (the operation fails: the user's to mend). Else ``e`` itself."""
    what = f"the results database {db!r}"
    if isinstance(e, OSError) and e.errno in OUT_OF_FILES:
        return files_short(e.errno, what)
    if (short := files_short_opening(what, e)) is not None:
        return short
    if isinstance(e, OSError) and e.errno is not None:
        return OperationFailed(f"output {db!r} cannot be opened: {e.strerror or e}")
    if getattr(e, "sqlite_errorname", None) == "SQLITE_CANTOPEN":
        return OperationFailed(f"output {db!r} cannot be opened as SQLite: {_why_not(Path(db))}")
    return e


def _why_not(p: Path) -> str:
    """Why SQLite could not open ``p`` (or the journal files beside it), as far as the file system says."""
    parent = p.parent
    if not parent.exists():
        return f"its directory {str(parent)!r} does not exist"
    if not parent.is_dir():
        return f"{str(parent)!r} is not a directory"
    if p.is_dir():
        return "it is a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"its directory {str(parent)!r} is not writable (SQLite makes its journal files there)"
    if p.exists() and not os.access(p, os.R_OK | os.W_OK):
        return "it is not readable and writable"
    return "unable to open database file"


META_TABLE = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)"


def create_tables(con: sqlite3.Connection, schema: str, meta: dict[str, str]) -> None:
    """Run ``schema`` (statements that may run again: ``IF NOT EXISTS``) and write ``meta`` into the ``meta``
    table, in one transaction. Run one statement at a time, a kill after the tables and before the kind left a
    database the resume refused as another program's: the operation could never be resumed."""
    con.executescript(f"BEGIN IMMEDIATE;\n{schema}\n{META_TABLE};")
    try:
        con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
        con.commit()
    except BaseException:
        con.rollback()
        raise


RUN_TABLE = "CREATE TABLE IF NOT EXISTS outlast_run (id INTEGER PRIMARY KEY CHECK (id = 0), token TEXT NOT NULL)"
"""The token of the operation that last wrote the database (one row)."""


def _swap_token(con: sqlite3.Connection, token: str) -> str | None:
    """Write ``token`` into the database; the token it held before (None: none)."""
    con.execute(RUN_TABLE)
    row = con.execute("SELECT token FROM outlast_run WHERE id=0").fetchone()
    with con:
        con.execute("INSERT OR REPLACE INTO outlast_run VALUES (0, ?)", (token,))
    return None if row is None else str(row[0])


def lacking(sql: str, name: Callable[[str], str], *args: str) -> Callable[[sqlite3.Connection, list[str]], set[str]]:
    """For ``pending_items``'s ``stored``: the keys among those given whose name (``name(key)``, as the rows
    store it) is none of the names ``sql`` (with ``args``) selects (one column)."""

    def find(con: sqlite3.Connection, keys: list[str]) -> set[str]:
        have = {row[0] for row in con.execute(sql, args)}
        return {k for k in keys if name(k) not in have}

    return find


async def pending_items(
    ctx: Any,
    con: sqlite3.Connection,
    db: str,
    keys: list[str],
    root: Path | None = None,
    stored: Callable[[sqlite3.Connection, list[str]], set[str]] | None = None,
) -> list[str]:
    """The keys to analyse: those not done yet, or every one when the database lacks the done ones' rows.
    With ``root`` (the keys are its files), also the done ones changed since the first attempt began reading
    (``changed_since``): their rows are of the file before the change. Their bodies do not run again in
    ``ctx.items`` (done), so a caller stores their rows before it, as the built-ins do.

    An operation keeps a token in its checkpointed state and writes it into its database before its first
    row. A resume that finds another token (or none) there is writing into another database: it was
    deleted, replaced or truncated since the last attempt, or another operation wrote into it meanwhile
    (whose end dropped the rows it had not seen). The items done before are then analysed again, not
    skipped: skipped, they were missing from a "completed" result, silently. (``ctx.items`` still counts
    each item once.) ``stored(con, done)``: the done keys whose rows the database lacks, analysed again too:
    a copy of the database restored from before the last attempt carries the same token (written before its
    first row), and the files done since the copy were skipped (343 modules of 601, "completed"). The caller
    holds ``exclusive(db)``."""
    since = reading_since(ctx) if root is not None else None
    token = ctx.state.get("results_token")
    first = token is None
    if first:
        token = ctx.state["results_token"] = f"{ctx.id}:{uuid.uuid4().hex}"
    held = await asyncio.to_thread(_swap_token, con, token)
    if first or not ctx.done_keys or held == token:
        if not ctx.done_keys:
            return [k for k in keys if not ctx.is_done(k)]
        done = [k for k in keys if ctx.is_done(k)]
        again: set[str] = set()
        if stored is not None and (gone := await asyncio.to_thread(stored, con, done)):
            ctx.log.warning(
                f"{db} lacks the rows of {len(gone)} files an earlier attempt analysed (restored from an older"
                " copy since?): analysed again"
            )
            again |= gone
        if since is not None and root is not None:
            changed = await asyncio.to_thread(changed_since, root, [k for k in done if k not in again], since)
            if changed:
                ctx.log.info(f"{len(changed)} files read by an earlier attempt changed since: read again")
            again |= set(changed)
        return [k for k in keys if k in again or not ctx.is_done(k)]
    ctx.log.warning(
        f"{db} is not the database the earlier attempts wrote (deleted, replaced or written by another "
        "operation since): every file is analysed again"
    )
    return list(keys)


@contextlib.contextmanager
def exclusive(db: str, check: Any = None, output: str | None = None) -> Any:
    """Hold ``db`` for one operation, created if new (an advisory lock on the file, released when the
    operation ends or its process dies): two operations writing one database at once each dropped at its
    end the rows the other had stored. ``check(db)`` validates it again at run time (a ValueError): the
    path may have become a symlink to another program's database since the operation was submitted.
    ``output``: what a refusal for being held names, when ``db`` stands for it (a file locked for a directory).

    Opened without blocking and checked to be a regular file: a FIFO put in its place hung the run.
    Each refusal fails the operation with its message alone (OperationFailed): it is the user's to act on,
    not a bug of Outlast's ("ValueError: ... (at _results_db.py:146)" read as one). So does a full disk under
    ``db`` while it is held: SQLite's "database or disk is full" named no file and came with the handler's line
    ("OperationalError: ... (at code_analysis.py:241)")."""
    try:
        fd = os.open(db, os.O_RDONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise cannot_open(db, e) from None  # no descriptor left: a shortage, queued again; else one line
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OperationFailed(f"output {db!r} is not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            busy = False
        except BlockingIOError:
            busy = True
        if busy:  # raised here, not in the except: its context (EAGAIN) would read as the machine running short
            raise OperationFailed(
                f"output {output or db!r} is being written by another operation: wait for it or choose another output"
            )
        if check is not None:
            try:
                check(db)
            except ValueError as e:
                raise OperationFailed(str(e)) from None
        try:
            yield
        except (sqlite3.Error, OSError) as e:
            if (line := disk_full(e, f"output {output or db!r} cannot be written", db)) is None:
                raise
            raise OperationFailed(line) from None
    finally:
        os.close(fd)
