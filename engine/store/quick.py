"""A quick look at the embedded store for ``outlast ls``: one read of the SQLite file, without asyncio,
pydantic models or an engine (together they cost a start-up of 4-5x a bare ``python -c pass``).

It answers only when its answer is what the full path (open an engine, recover orphans, list) would
print, and returns None otherwise: when the store is empty or not private (the full path makes it so),
has a WAL written for another file (walpair: closing would fold it in), was written by another schema
version, holds a record it cannot read, has a running operation whose process is gone (the full path
marks that one interrupted first), has something else in the place of one of its files, or is on a
read-only or (nearly) full file system (the full path warns that nothing can be changed there, or may
not open it, and says so). A state dir that does not exist, or holds no database, lists nothing (``missing``).

It writes nothing, not even SQLite's WAL and shared-memory files (``_reading_uri``), nor the state dir.

``quick_create`` is ``outlast submit``'s: the store opened, the record built and written as the engine
does it, by the same functions, without an event loop, the store's thread or an engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import free_bytes, open_regular
from ..statedir import DB_NAME, refusal
from .walpair import stale_wal

if TYPE_CHECKING:
    from ..models import Operation
    from .sqlite.core import SqliteCore

LOCK_DIR = "locks"
LOG_DIR = "logs"
SCHEMA_VERSION = 2
FULL_BELOW = 1 << 20
CHECKPOINT_SEQ = "(SELECT MAX(seq) FROM checkpoints c WHERE c.op_id = o.id)"
"""The local store's file and directory names and schema version (``LocalStore``; a test keeps them equal),
the free bytes under which a store that cannot be opened is said to be on a full file system, and the
newest checkpoint's seq of operation ``o``: the last two the store's own (``core`` and ``schema`` import
them from here, a module light enough for the quick path)."""


def quick_list(
    state_dir: Path,
    statuses: list[str] | None,
    types: list[str] | None,
    limit: int,
    *,
    loads: Callable[[str], Any] = json.loads,
    checkpoint_seq: bool = False,
) -> list[dict[str, Any]] | None:
    """The stored records (JSON objects) newest first, as ``Store.list`` would return them; None when
    only the full path can answer (see the module doc). ``loads`` reads each record (a ValueError: the
    full path); ``checkpoint_seq``: each record's ``checkpoint_seq`` is its newest checkpoint's, as the
    store derives it when it reads a record (a checkpoint does not rewrite the record)."""
    try:
        state_dir = state_dir.expanduser()
    except RuntimeError:
        return None  # "~nouser/x": the full path's settings say what is wrong
    db = state_dir / DB_NAME
    wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
    if missing(state_dir) is not None:
        return []  # no store: none is made by a read (nor by the full path: ``session``'s ``create``)
    if refusal(state_dir) is not None:
        return None  # the full path refuses it, in one line (a link at outlast.db: never read through)
    try:
        if db.stat().st_size == 0 or not _private(state_dir, db, wal, shm):
            return None
        if stale_wal(db) is not None or on_read_only_fs(state_dir) or Path(f"{db}-journal").exists():
            return None  # the full path says what is wrong (and warns of a read-only file system)
        if (free_bytes(state_dir) or 0) < FULL_BELOW:
            return None  # a full disk: the full path may not open it (its WAL and shared memory), and says so
        if not all(_fit(p, p.is_dir) for p in (state_dir / LOCK_DIR, state_dir / LOG_DIR)) or not _fit(
            shm, shm.is_file
        ):
            return None  # something else in the place of one (a FIFO, a file): the full path says what
        before = _identity(db)
        uri = _reading_uri(db, wal, shm)
        conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
    except (OSError, sqlite3.Error, _StepAside):
        return None
    try:
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version is None or str(version[0]) != str(SCHEMA_VERSION):
            return None
        running = conn.execute("SELECT id FROM operations WHERE status='running'").fetchall()
        if any(not lock_held(state_dir / LOCK_DIR / f"{op_id}.lock") for (op_id,) in running):
            return None  # an orphan: the full path marks it interrupted before listing
        where, args = [], []
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        if types:
            where.append(f"type IN ({','.join('?' * len(types))})")
            args += types
        seq = f", {CHECKPOINT_SEQ}" if checkpoint_seq else ", NULL"
        sql = f"SELECT record{seq} FROM operations o" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        records = []
        for raw, newest in conn.execute(sql, [*args, limit]):
            record = loads(raw)
            if checkpoint_seq and isinstance(record, dict):
                record["checkpoint_seq"] = newest
            records.append(record)
    except (sqlite3.Error, ValueError, RecursionError):
        return None  # damaged, locked or malformed (or nested past what a reader follows): the full path says
    finally:
        conn.close()
    try:
        if uri.endswith("immutable=1") and (_identity(db) != before or os.path.lexists(wal)):
            return None  # read as immutable while a writer opened it (and maybe wrote it): what was read may be torn
    except OSError:
        return None
    return records if all(isinstance(r, dict) for r in records) else None


def quick_create(state_dir: Path, build: Callable[[SqliteCore], Operation]) -> Operation | None:
    """A new operation stored in the local store at ``state_dir`` without an engine (no event loop, no
    store thread, no scheduler), as an engine's submit stores it: the store opened as the engine opens it
    (``SqliteCore.open_here``: the same checks of the state dir and its files, the same errors), the
    record built by ``build(store)`` after that, as the engine builds it after its open
    (``submission.new_operation``: the same checks of the spec and params), and written by the store's
    own insert (``records.creating``) in a durable transaction of its own (``SqliteCore.write_here``).
    The operation, with its handle; None, with nothing written, when only an engine can do what the
    submit must: mark an operation interrupted whose process is gone (an engine does that when it opens
    the store), or say what became of the operation an idempotency key was used for before."""
    from ..errors import KeyTaken
    from .sqlite.core import SqliteCore
    from .sqlite.records import creating

    store = SqliteCore(state_dir)
    try:
        store.open_here()
        if not store.read_only and store.unheld_running_here():
            return None  # perhaps an orphan: the engine's recovery marks it interrupted first
        op = build(store)
        try:
            op.handle = store.write_here(creating(op))
        except KeyTaken:
            return None  # the engine reads that operation and says what became of it (or refuses the key)
        return op
    finally:
        store.close_here()


def _fit(path: Path, kind: Callable[[], bool]) -> bool:
    """Whether ``path`` is missing (the full path makes it) or of its kind (``Path.is_dir``, ``is_file``)."""
    return kind() or not os.path.lexists(path)


def missing(state_dir: Path) -> str | None:
    """What a command that only reads finds missing at ``state_dir``: "no state directory" (nothing there) or
    "no outlast.db" (a directory without a store); None: a store is there to open, or something the store's
    open says is wrong (a file in the place of the directory, a part of the path that is a file, a WAL left
    by a deleted database). A read made a store where none was: a mistyped ``--state-dir`` left a directory,
    a database and its files behind."""
    try:
        os.lstat(state_dir / DB_NAME)
    except FileNotFoundError:
        pass
    except OSError:
        return None
    else:
        return None
    try:
        os.lstat(state_dir)
    except FileNotFoundError:
        return "no state directory"
    except OSError:
        return None
    if not state_dir.is_dir() or stale_wal(state_dir / DB_NAME) is not None:
        return None  # the store's open says what is wrong (a WAL whose database was deleted: how to go on)
    return f"no {DB_NAME}"


class _StepAside(Exception):
    """The store cannot be read without writing: the full path."""


def _identity(db: Path) -> tuple[int, int, int, int]:
    st = db.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _reading_uri(db: Path, wal: Path, shm: Path) -> str:
    """A URI that reads ``db`` and writes nothing, nor makes a file: a read-write connection made the WAL and
    shared-memory files and removed them again when it closed (a write to the state dir), and, the last to
    close, folded a WAL a killed process left into the database. With no WAL (no connection has the file
    open), the file as it is (``immutable``, checked unchanged after the read); with one, through it (read
    only, which needs its shared-memory file: without one, _StepAside)."""
    uri = db.resolve().as_uri()
    if not os.path.lexists(wal):
        return f"{uri}?mode=ro&immutable=1"
    if not shm.is_file() or not wal.is_file():
        raise _StepAside
    return f"{uri}?mode=ro"


def on_read_only_fs(d: Path) -> bool:
    """Whether the directory ``d`` exists on a file system mounted read-only."""
    try:
        return d.is_dir() and bool(os.statvfs(d).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def read_only_uri(db: Path) -> str:
    """The URI that opens ``db`` on a read-only file system to read. With no WAL holding writes, as
    ``immutable`` (SQLite cannot make the shared-memory file a WAL database needs, and nothing can write
    there meanwhile); with one, read through it (a process writing when the file system went read-only
    left its shared-memory file beside it)."""
    try:
        writes = Path(f"{db}-wal").stat().st_size > 32  # longer than its header
    except FileNotFoundError:
        writes = False
    return f"{db.resolve().as_uri()}?mode=ro" + ("" if writes else "&immutable=1")


def _private(*paths: Path) -> bool:
    """Whether every one of ``paths`` that exists is its owner's alone (the local store makes its
    directory 0700 and its database files 0600 when it opens them)."""
    for path in paths:
        try:
            if path.stat().st_mode & 0o077:
                return False
        except FileNotFoundError:
            continue
    return True


def lock_held(lock: Path) -> bool:
    """Whether a live process holds the operation's lock (the process running it holds it until it
    settles). A shared probe: it never takes the lock from, nor makes a file for, the holder."""
    try:  # never waiting on a FIFO put in its place (nor following a link): the full path moves those aside
        fd = open_regular(lock, os.O_RDONLY, follow=False)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
