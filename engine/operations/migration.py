"""migration_operation: apply an ordered folder of SQL migrations to a SQLite database, each exactly once.

Migrations are the ``*.sql`` files of ``directory`` (whatever the case of the extension: ``*.SQL`` too, as on
a case-insensitive file system), in natural order of their names (``2_x.sql`` before ``10_y.sql``), but down
migrations (``rollbacks``). Each one is an item, run in its own transaction (``BEGIN IMMEDIATE``), and the
row that records it in the migrations table (name, sha256 checksum, applied_at, operation id) is written
in that same transaction: a migration is applied and recorded together or not at all.
The table, not the checkpoint, says what is applied, so a run killed at any point (even between a commit and
the checkpoint) resumes at the next unapplied migration and never applies one twice. A migration already
applied whose file has changed since is refused before anything runs (one line naming it); so is a migration
added out of order (a file not applied yet whose name sorts before one already applied, say from a branch
merged late): applied now, it would run after migrations written to come after it, and this database would
differ from one migrated in order. Rename it to sort after the last applied migration (the refusal names
both). So is a file that controls transactions itself (BEGIN, COMMIT, ROLLBACK, SAVEPOINT), which would break
that guarantee, and a ``*.sql`` entry that is not a regular file (a symlink to nothing, a directory, a FIFO):
left out, the migrations after it ran without it. A migration writes its database only: ATTACH and VACUUM INTO
(which would write other files) are refused by an SQLite authorizer.

Another writer's lock is waited for up to BUSY_TIMEOUT in short waits, so that a stop asked for meanwhile is
taken at once (SQLite's own busy wait cannot be interrupted); the connection is closed only when no thread is in it.

Built on the standard library's sqlite3: statements are split with ``sqlite3.complete_statement`` (SQLite's own
tokenizer: triggers' ``BEGIN ... END`` and semicolons inside strings are handled). Databases other than SQLite
(a DB-API driver by URL) are not supported.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..context import OperationContext, OperationFailed
from ..files import NotRegular, create_private, open_regular
from ..registry import operation
from ..text import clean
from ._common import SQLITE_MAGIC, check_output_file, existing_dir

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
_TXN = re.compile(r"^\s*(BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b", re.IGNORECASE)
BUSY_TIMEOUT = 30.0
"""Seconds to wait for another writer of the database before a migration fails."""
POLL = 0.1
"""Seconds one wait of SQLite's for a lock lasts: between two, the run checks whether it was asked to stop.
SQLite's own busy wait is broken neither by ``Connection.interrupt`` nor by a progress handler (which is not
called while it waits), so a stop would otherwise wait out BUSY_TIMEOUT with the connection's thread in it."""

R = TypeVar("R")


@dataclass(frozen=True)
class Migration:
    name: str
    checksum: str
    statements: tuple[str, ...]


class MigrationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database: str = Field(description="SQLite database file (created if missing)")
    table: str = Field(default="schema_migrations", description="table recording applied migrations")
    directory: str = Field(description="folder of *.sql migration files, applied in natural order of their names")

    @field_validator("database")
    @classmethod
    def _database(cls, v: str) -> str:
        checked = check_output_file(v, "database", SQLITE_MAGIC, "an SQLite database")
        return str(Path(checked or v).expanduser().resolve())

    @field_validator("table")
    @classmethod
    def _table(cls, v: str) -> str:
        if not _IDENT.match(v):
            raise ValueError(f"table {v!r} is not a plain SQL name (letters, digits, _)")
        if v.lower().startswith("sqlite_"):  # SQLite's own tables: a name it keeps for itself
            raise ValueError(f"table {v!r}: names beginning with sqlite_ are SQLite's own")
        return v

    @field_validator("directory")
    @classmethod
    def _directory(cls, v: str) -> str:
        return existing_dir(v, "directory")

    @model_validator(mode="after")
    def _migrations_fit(self) -> MigrationParams:
        """Every file is fit to run, and no applied migration has changed since: refused before anything runs.
        A check of the whole params, not of ``directory``: its errors name their own file, table or database
        (a table without the recording columns was said as 'directory: table ...')."""
        migrations, applied = load_migrations(Path(self.directory)), read_applied(self.database, self.table)
        check_unchanged(migrations, applied)
        check_in_order(migrations, applied)
        return self


def _natural(name: str) -> tuple[list[tuple[int, int | str]], str]:
    """The sort key of a migration's name: its numbers by value (``2_x`` before ``10_y``), then the name itself,
    so names of equal numbers (``1_a.sql``, ``01_a.sql``) have one order, not the directory listing's (which
    differs between file systems: the same migrations were applied in two orders on two machines)."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", name) if t], name


def split_statements(sql: str) -> list[str]:
    """The complete SQL statements of a script, in order (SQLite's tokenizer decides where one ends)."""
    out: list[str] = []
    buf = ""
    for piece in sql.split(";"):
        buf = piece if not buf else buf + ";" + piece
        if sqlite3.complete_statement(buf + ";"):
            if buf.strip():
                out.append(buf.strip() + ";")
            buf = ""
    if buf.strip() and not _only_comments(buf):
        out.append(buf.strip())  # the last statement without its semicolon
    return [s for s in out if not _only_comments(s)]


def _only_comments(s: str) -> bool:
    s = re.sub(r"/\*.*?\*/", "", s, flags=re.DOTALL)
    return all(not ln.strip() or ln.strip().startswith("--") for ln in s.replace(";", "").splitlines())


def _strip_leading_comments(s: str) -> str:
    while True:
        s = s.lstrip()
        if s.startswith("--"):
            s = s.split("\n", 1)[1] if "\n" in s else ""
        elif s.startswith("/*") and "*/" in s:
            s = s.split("*/", 1)[1]
        else:
            return s


_DOWN_FILE = re.compile(r"^(?P<stem>.*)\.down\.sql$", re.IGNORECASE)
_DOWN_SECTION = re.compile(
    r"^[ \t]*--[ \t]*(?P<marker>\+goose[ \t]+down|migrate:down|\+migrate[ \t]+down)\b", re.IGNORECASE | re.MULTILINE
)
"""Where a file of goose, dbmate or sql-migrate begins the part that undoes its migration."""


def sql_files(directory: Path) -> list[Path]:
    """The entries of ``directory`` named ``*.sql`` in any case (``001_init.SQL``, ``x.Sql``): a migration
    written as ``*.SQL`` (a habit of case-insensitive systems, where ``*.sql`` finds it) was left out silently,
    and a directory of them applied nothing and completed. ValueError (one line) for a directory that cannot
    be listed, which is not a directory of no migrations."""
    try:
        return [p for p in directory.iterdir() if p.name.lower().endswith(".sql")]
    except OSError as e:
        raise ValueError(f"directory {str(directory)!r}: cannot be listed ({e.strerror or e})") from None


def rollbacks(directory: Path) -> list[str]:
    """The ``NAME.down.sql`` files beside a ``NAME.up.sql`` (golang-migrate's layout): each undoes its up
    migration, so none is a migration (in natural order it ran just before its own up migration, and a down
    migration of data, ``DELETE FROM users``, emptied a table that was then migrated)."""
    files = sql_files(directory)
    names = {p.name.lower() for p in files}
    out = []
    for p in files:
        m = _DOWN_FILE.match(p.name)
        if m and f"{m['stem']}.up.sql".lower() in names:
            out.append(p.name)
    return sorted(out, key=_natural)


def load_migrations(directory: Path) -> list[Migration]:
    """The folder's migrations in natural order; ValueError (one line) for an unreadable or unfit file.

    Every ``*.sql`` entry (in any case: ``sql_files``) is a migration: one that is not a regular file (a
    dangling symbolic link, a directory, a FIFO) is refused, never left out (the migrations after it would run
    without it). But for
    down migrations beside their up ones (``rollbacks``), which are no migrations; a ``.down.sql`` alone, and
    a file holding its own down part (goose's ``-- +goose Down``, dbmate's ``-- migrate:down``), are refused:
    applied, they undo what they or another migration did."""
    out: list[Migration] = []
    down = set(rollbacks(directory))
    for p in sorted(sql_files(directory), key=lambda p: _natural(p.name)):
        if p.name in down:
            continue
        if lone := _DOWN_FILE.match(p.name):
            raise ValueError(
                f"migration {p.name} is a down migration with no {lone['stem']}.up.sql beside it: applied, it"
                " would undo a migration; remove it or rename it off *.down.sql"
            )
        if clean(p.name) != p.name:  # recorded by name in the database, which stores text: the insert failed mid-run
            raise ValueError(f"migration {clean(p.name)}: its file name is not UTF-8: rename it")
        raw = _read_migration(p)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"migration {p.name}: not UTF-8 (byte {e.start})") from None
        section = _DOWN_SECTION.search(text)
        if section:
            raise ValueError(
                f"migration {p.name} holds the part that undoes it ({section['marker']}), which would run"
                " with the rest: keep only what comes before it (down migrations are not applied)"
            )
        stmts = split_statements(text)
        for s in stmts:
            m = _TXN.match(_strip_leading_comments(s))
            if m:
                raise ValueError(
                    f"migration {p.name} controls transactions itself ({m.group(1).upper()}): "
                    "each migration already runs in its own transaction"
                )
        out.append(Migration(p.name, hashlib.sha256(raw).hexdigest(), tuple(stmts)))
    return out


def _read_migration(p: Path) -> bytes:
    """The bytes of migration ``p`` (a regular file, or a symbolic link to one); ValueError naming it for
    anything else. Opened without waiting (a FIFO would block the open for ever) and checked on the open
    descriptor, so what is read is what was checked."""
    try:
        fd = open_regular(p, os.O_RDONLY)
    except NotRegular:
        raise ValueError(f"migration {p.name} is not a regular file: remove it or rename it off *.sql") from None
    except FileNotFoundError:
        what = "a symbolic link to nothing" if p.is_symlink() else "gone since the folder was listed"
        raise ValueError(f"migration {p.name} is {what}: restore its target or remove it") from None
    except OSError as e:
        raise ValueError(f"migration {p.name}: unreadable ({e.strerror or e})") from None
    try:
        with open(fd, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise ValueError(f"migration {p.name}: unreadable ({e.strerror or e})") from None


def read_applied(database: str, table: str) -> dict[str, str]:
    """name -> checksum of the migrations recorded in ``database`` ({} when it or the table does not exist).

    Read-only, but for one case: a run killed inside a migration leaves a hot rollback journal
    (``DATABASE-journal``), and a read-only connection cannot roll it back ("attempt to write a readonly
    database"), so every resume of that run was refused for ever. The database's file then holds part of a
    transaction that was never committed: the only consistent reading of it is after the rollback, which
    any read-write connection does first, so it is read once more read-write (the rollback restores the
    last committed state, as the run's own connection would on its first statement). A WAL database
    needs no such thing: its uncommitted frames are ignored by a read-only reader."""
    if not Path(database).exists() or Path(database).stat().st_size == 0:
        return {}
    try:
        try:
            return _read_applied(database, table, "ro")
        except sqlite3.OperationalError as e:
            if getattr(e, "sqlite_errorcode", None) != sqlite3.SQLITE_READONLY_ROLLBACK:
                raise
        try:
            return _read_applied(database, table, "rw")  # rolls the hot journal back, then reads
        except sqlite3.Error as e:
            raise ValueError(
                f"database {database!r}: a process killed inside a transaction left {Path(database).name}-journal,"
                f" which must be rolled back before the database can be read, and that failed: {e}"
            ) from None
    except sqlite3.Error as e:
        raise ValueError(f"database {database!r}: {e}") from None


def _read_applied(database: str, table: str, mode: str) -> dict[str, str]:
    con = sqlite3.connect(f"{Path(database).as_uri()}?mode={mode}", uri=True, timeout=BUSY_TIMEOUT)
    try:
        kind = con.execute("SELECT type FROM sqlite_master WHERE name = ? COLLATE NOCASE", (table,)).fetchone()
        if kind is not None and kind[0] != "table":  # its CREATE TABLE would fail mid-run
            what = f"{'an' if kind[0][0] in 'aeiou' else 'a'} {kind[0]}"
            raise ValueError(f"table {table!r}: {database!r} has {what} of that name: choose another")
        cols = {r[1] for r in con.execute(f"PRAGMA table_info({_q(table)})")}
        if not cols:
            return {}
        if not {"name", "checksum"} <= cols:
            raise ValueError(f"table {table!r} in {database!r} exists without the columns name and checksum")
        return dict(con.execute(f"SELECT name, checksum FROM {_q(table)}").fetchall())
    finally:
        con.close()


def _q(table: str) -> str:
    """``table`` quoted as an identifier: a plain name that is also an SQL keyword (``order``, ``select``)
    was a syntax error in every statement naming it."""
    return f'"{table}"'


def check_unchanged(migrations: list[Migration], applied: dict[str, str]) -> None:
    for m in migrations:
        if m.name in applied and applied[m.name] != m.checksum:
            raise ValueError(
                f"migration {m.name} was changed after it was applied (checksum {applied[m.name][:12]} recorded, "
                f"{m.checksum[:12]} now): write a new migration instead"
            )


def check_in_order(migrations: list[Migration], applied: dict[str, str]) -> None:
    """No migration is pending whose name sorts before an applied one's: it was applied silently, out of order."""
    if not applied:
        return
    last = max(applied, key=_natural)
    for m in migrations:
        if m.name not in applied and _natural(m.name) < _natural(last):
            raise ValueError(
                f"migration {m.name} is not applied yet and sorts before {last}, which is: it would run out of"
                f" order; rename it to sort after {last}"
            )


def _no_other_files(action: int, *_args: object) -> int:
    """SQLite authorizer: ATTACH (and VACUUM INTO, which attaches) would write files other than the database."""
    return sqlite3.SQLITE_DENY if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH) else sqlite3.SQLITE_OK


class _Stopped(Exception):
    """A stop was asked for while the run waited for another connection's lock: what it waited to do was not
    done (a migration not begun, or rolled back)."""


def _busy(e: sqlite3.OperationalError) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return (code & 0xFF) == sqlite3.SQLITE_BUSY if code is not None else "locked" in str(e)


def _waiting(stopping: Callable[[], bool], fn: Callable[[], R]) -> R:
    """``fn()``, tried again in POLL steps while another connection holds the lock it needs, up to
    BUSY_TIMEOUT seconds; _Stopped as soon as ``stopping()`` between two tries. ``fn`` must be safe to try
    again after SQLITE_BUSY: a statement outside a transaction, BEGIN or COMMIT (which leaves the
    transaction open when it is busy)."""
    end = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not _busy(e) or time.monotonic() >= end:
                raise
        if stopping():
            raise _Stopped


class _Db:
    """One run's connection, used by one thread at a time and closed only when no thread is in it.

    A forced stop cancels the handler's await, not the thread running the statement: the connection was
    closed under that thread (still waiting for another writer's lock), which crashed the process (SIGSEGV)
    when the lock came free. Every use and the close take ``_lock``; ``forced`` and ``interrupt`` make the
    statement in progress end (rolled back) within POLL seconds, so the close waits for little."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self._con = con
        self._lock = threading.Lock()
        self.forced = threading.Event()

    async def call(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.to_thread(self._run, fn, *args)

    def _run(self, fn: Callable[..., R], *args: Any) -> R:
        with self._lock:
            return fn(self._con, *args)

    def force_stop(self) -> None:
        """The handler is cancelled by force: the statement in progress ends, the migration is rolled back."""
        self.forced.set()
        self._con.interrupt()  # a statement running (not waiting for a lock: ``_waiting`` sees ``forced``)

    async def close(self) -> None:
        await asyncio.to_thread(self._run, sqlite3.Connection.close)


def _connect(database: str) -> sqlite3.Connection:
    create_private(Path(database))  # a new database is its user's alone (its journal files take its mode)
    return sqlite3.connect(database, timeout=POLL, isolation_level=None, check_same_thread=False)


def _prepare(con: sqlite3.Connection, table: str, stopping: Callable[[], bool]) -> dict[str, str]:
    """The migrations table made if missing; name -> checksum of those it records."""
    sql = (
        f"CREATE TABLE IF NOT EXISTS {_q(table)} (name TEXT PRIMARY KEY, checksum TEXT NOT NULL,"
        " applied_at REAL NOT NULL, operation_id TEXT)"
    )
    _waiting(stopping, lambda: con.execute(sql))
    con.set_authorizer(_no_other_files)
    return dict(_waiting(stopping, lambda: con.execute(f"SELECT name, checksum FROM {_q(table)}").fetchall()))


def _apply(
    con: sqlite3.Connection, table: str, m: Migration, op_id: str, stopping: Callable[[], bool], forced: threading.Event
) -> str:
    """Run one migration and record it in one transaction: "applied", or "present" when it already was.
    _Stopped when a stop was asked for while it waited for the write lock (nothing done), or when it is
    stopped by force (``forced``: rolled back)."""
    # The write lock first: no other runner can apply it meanwhile. Any stop gives the wait for it up.
    _waiting(stopping, lambda: con.execute("BEGIN IMMEDIATE"))
    try:
        row = con.execute(f"SELECT checksum FROM {_q(table)} WHERE name=?", (m.name,)).fetchone()
        if row is not None:
            con.execute("ROLLBACK")
            if row[0] != m.checksum:
                raise ValueError(f"migration {m.name} was changed after it was applied")
            return "present"
        for stmt in m.statements:
            if forced.is_set():
                raise _Stopped
            con.execute(stmt)
        con.execute(f"INSERT INTO {_q(table)} VALUES (?, ?, ?, ?)", (m.name, m.checksum, time.time(), op_id))
        # A COMMIT may wait for readers (rollback journal): only a forced stop gives up the migration's work.
        _waiting(forced.is_set, lambda: con.execute("COMMIT"))
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    return "applied"


def _summary(con: sqlite3.Connection, table: str, op_id: str, stopping: Callable[[], bool]) -> tuple[list[str], int]:
    def read() -> tuple[list[str], int]:
        t = _q(table)
        mine = [r[0] for r in con.execute(f"SELECT name FROM {t} WHERE operation_id=? ORDER BY rowid", (op_id,))]
        return mine, con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]

    return _waiting(stopping, read)


async def _lost(ctx: OperationContext, database: str, pending: list[Migration]) -> list[Migration]:
    """The migrations of ``pending`` an earlier attempt applied (done) that ``database`` does not record: it
    was restored or replaced since. ``ctx.items`` skips them (done), and the resume "completed" a database
    without them (or failed on the first migration that needed them). A new migration that sorts before one
    of them is refused, as ``check_in_order`` refuses one before an applied migration."""
    lost = [m for m in pending if ctx.is_done(m.name)]
    if not lost:
        return []
    first = next((m for m in pending if not ctx.is_done(m.name)), None)
    if first is not None and _natural(first.name) < _natural(lost[-1].name):
        raise OperationFailed(
            f"migration {first.name} is not applied yet and sorts before {lost[-1].name}, which an earlier attempt"
            " applied: it would run out of order; rename it to sort after the last migration"
        )
    ctx.log.warning(
        f"{len(lost)} migrations an earlier attempt applied are not recorded in {database} (restored or replaced"
        " since): applied again"
    )
    return lost


async def _apply_one(db: _Db, table: str, m: Migration, op_id: str, stopping: Callable[[], bool]) -> str:
    """``_apply`` in the database's thread; a failing migration is OperationFailed (rolled back)."""
    try:
        return await db.call(_apply, table, m, op_id, stopping, db.forced)
    except sqlite3.Error as e:
        hint = " (ATTACH and VACUUM INTO are refused: a migration writes its database only)"
        why = f"{e}{hint if 'authoriz' in str(e) else ''}"
        raise OperationFailed(f"migration {m.name} failed and was rolled back: {why}") from None


@operation("migration_operation", params=MigrationParams, description="apply SQL migrations to SQLite, each once")
async def migrate(ctx: OperationContext, p: MigrationParams) -> dict:
    """Apply the pending migrations in order; the result names those this operation applied."""
    migrations = await asyncio.to_thread(load_migrations, Path(p.directory))
    if down := await asyncio.to_thread(rollbacks, Path(p.directory)):
        ctx.log.info(f"{len(down)} down migration(s) left out, as rollbacks are not applied: {', '.join(down)}")
    db = _Db(await asyncio.to_thread(_connect, p.database))
    stopping = lambda: ctx.cancelled or db.forced.is_set()  # noqa: E731
    try:
        applied = await db.call(_prepare, p.table, stopping)
        check_unchanged(migrations, applied)  # again: a file may have changed (or come) since the submit
        check_in_order(migrations, applied)
        pending = [m for m in migrations if m.name not in applied]
        ctx.progress(total=len(migrations), step="migrating")
        ctx.progress(done=len(migrations) - len(pending))
        for m in await _lost(ctx, p.database, pending):  # done, so no item: applied first, in their order
            ctx.step = m.name
            await _apply_one(db, p.table, m, ctx.id, stopping)
            ctx.advance()
        async for m in ctx.items(pending, key=lambda m: m.name):
            ctx.step = m.name
            try:
                outcome = await _apply_one(db, p.table, m, ctx.id, stopping)
            except _Stopped:
                break  # asked to stop while waiting for another writer: left undone, for a resume
            if outcome == "present":
                ctx.log.info(f"{m.name} was already applied (by another run): not applied again")
        ctx.progress()  # raises OperationStopped when a stop was asked for
        mine, total = await db.call(_summary, p.table, ctx.id, stopping)
    except _Stopped:
        ctx.progress()  # the stop a wait for a lock was given up for: OperationStopped
        raise
    except asyncio.CancelledError:
        db.force_stop()  # a forced stop rolls the migration back instead of leaving it running
        raise
    finally:
        await db.close()  # once no thread is in it (within POLL seconds of a stop)
    return {"database": p.database, "applied": mine, "pending": 0, "recorded": total, "migrations": len(migrations)}
