"""What every part of the SQLite store shares: the state directory, the connection and its thread,
the locks this process holds, and reading a record.

All SQLite calls run on one thread per store (never on the event loop): reads with ``_run``,
durable writes with ``_txn`` (group-committed by the worker). The parts of LocalStore
(records, liveness, checkpoints, control and logs) derive from SqliteCore, and use only what
it defines here.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ...errors import StoreFailed, StoreHeld, StoreLost, StoreMoved
from ...files import (
    create_new,
    free_bytes,
    make_private,
    no_inodes,
    owner_of,
    private_dir,
    private_dirs,
    sweep_dead_pid_temps,
)
from ...humanize import size
from ...models import NotFound, Operation, StoreError
from ...offload import off_loop
from ...shortage import NO_THREAD, ran_short
from ...statedir import NEW_DB_PREFIX, refusal
from ..quick import FULL_BELOW, lock_held, on_read_only_fs, read_only_uri
from ..walpair import OWNER_SUFFIX, note_owner, stale_wal
from .locks import Spares, try_lock, unlock, write_lock_holders
from .schema import CHECKPOINT_SEQ, SCHEMA_VERSION, ensure_current, init_schema, schema_version
from .worker import SqliteWorker, commit

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")

log = logging.getLogger("outlast.store")

_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
"""SQLite's primary result codes for a damaged database file."""


def damaged(e: sqlite3.DatabaseError) -> bool:
    """Whether ``e`` says the database's bytes are damaged (a page that does not parse), not that a read or
    write failed this time (an I/O error, the disk full, a statement interrupted): only damage is read
    around (a chain cut where it breaks); a failure is the store's error, and the request may be tried again."""
    return type(e) is sqlite3.DatabaseError or (getattr(e, "sqlite_errorcode", 0) & 0xFF) in _DAMAGED


BUSY_TIMEOUT = 30.0
"""Seconds a write waits for another process's write transaction on the database to end."""


def sqlite_unfit(connect: Callable[[str], sqlite3.Connection] = sqlite3.connect) -> str | None:
    """Why this Python's SQLite cannot hold the local store (None: it can). The store's statements use
    SQLite's JSON functions (``json_set``, ``json_each``), built in from SQLite 3.38 and a build option
    before: without them every write would fail with "no such function", after the store was made."""
    conn = connect(":memory:")
    try:
        conn.execute("SELECT json_set('{}', '$.a', json('[1]')), (SELECT count(*) FROM json_each('[1, 2]'))")
    except sqlite3.Error as e:
        return (
            f"this Python's SQLite {sqlite3.sqlite_version} has no JSON functions ({e}), which the local store"
            " needs: use a Python built with SQLite 3.38 or newer, or the Redis store (--store redis://...)"
        )
    finally:
        conn.close()
    return None


unfit_here = functools.cache(sqlite_unfit)
"""Asked once a process."""


OWN_NAMES = frozenset(
    {"outlast.db", "outlast.db-wal", "outlast.db-shm", "outlast.db-journal", "outlast.db-owner"}
    | {"logs", "locks", "detached", "outputs"}
)
"""What Outlast keeps in a state directory: one holding nothing else is its own, to narrow to 0700."""


def _only_ours(d: Path) -> bool:
    """``d`` holds nothing but Outlast's files (or nothing): a state dir, perhaps an older version's."""
    with os.scandir(d) as entries:
        return all(e.name in OWN_NAMES or ".not-a-file-" in e.name for e in entries)


def _default_said(d: Path) -> str:
    """For a state dir that cannot be made: when it is the default one (under HOME, or XDG_STATE_HOME), where
    it came from and how to give another. Under cron or a service account (``HOME=/nonexistent``) the line
    named a path nobody had asked for."""
    from ...paths import default_state_dir, home

    if d != default_state_dir():
        return ""
    if os.path.isabs(os.environ.get("XDG_STATE_HOME") or ""):
        base = "XDG_STATE_HOME"
    else:
        base = "HOME" if os.environ.get("HOME") else f"{home()}: no HOME is set"
    return f" (the default state dir, under {base}): give one with --state-dir or OUTLAST_STATE_DIR"


class SqliteCore:
    """The plumbing of LocalStore (see module doc)."""

    heartbeat_every: float | None = None
    """Nothing expires: the flock that holds an operation lives as long as its process."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir).expanduser()
        self.url = str(self.state_dir)
        self.db_path = self.state_dir / "outlast.db"
        self.log_dir = self.state_dir / "logs"
        self.lock_dir = self.state_dir / "locks"
        self._worker: SqliteWorker | None = None
        self._conn: sqlite3.Connection | None = None
        self._held: dict[str, int] = {}
        """The operations this process holds a lock on: operation id -> the lock file's fd."""
        self._spares = Spares(self.lock_dir)
        """Lock files let go of, kept to be the next claims' (locks.py)."""
        self._log_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        """Each operation's appends in order, one at a time; a lock lives while an append holds or waits for
        it (a plain dict kept one per operation that ever logged: 430 bytes each, for the store's life)."""
        self._opened = 0
        self._file: tuple[int, int] | None = None
        """The database file this store opened (device, inode): what every write checks is still there."""
        self._closed_why: str | None = None
        """Why the file now at the path could not be opened in place of the one before (``_reopen``)."""
        self.read_only = False
        """The state dir is on a read-only file system (a snapshot, a disk the kernel remounted read-only
        after errors), or made read-only (no write for its owner: ``chmod a-w``): it is read as it is, every
        write is refused in one line, and nothing is marked (an operation whose process is gone stays listed
        as running)."""
        self._read_only_why = ("is on a read-only file system", "remount it read-write")
        """What makes it read-only, and what to do to run or change anything: said by every refusal."""
        self._full_file: tuple[int, int, int, int] | None = None
        """Opened read-only because its file system was full: the database file's device, inode, size and
        time then. It is read as it was (immutable: no lock, no WAL), which writes made since space was
        freed would leave stale or torn: it is opened again once it changes or there is room (_look_again)."""
        self._room_looked = 0.0
        """When there was last a look for room (monotonic), for a store opened on a full disk."""
        self._immutable = False
        """Opened read-only as the file is, without its WAL (``read_only_uri``): a WAL made since is not read."""

    @property
    def _db(self) -> sqlite3.Connection:
        """The open connection (to be used on the SQLite thread only)."""
        conn = self._conn
        if conn is None:
            raise StoreError(self._closed_why or f"state dir {self.state_dir}: the store is not open")
        return conn

    @property
    def worker(self) -> SqliteWorker:
        """The thread that runs this store's SQLite calls (see worker.py); the store must be open."""
        if self._worker is None:
            raise StoreError(f"state dir {self.state_dir}: the store is not open")
        return self._worker

    unanswered_because = "a write waiting on its disk, or on another process's lock"
    """What keeps a call of this store from answering for long (said when a process leaves without it)."""

    def unanswered_for(self) -> float:
        """Seconds the store's thread has been inside what it does now (0: it waits for work, or the store is
        closed): a write held up by its disk (an fsync that does not return) or by another process's lock."""
        since = self._worker.busy_since if self._worker is not None else None
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the SQLite thread (a read, or plumbing)."""
        try:
            result: T = await self.worker.run(fn, *args)
        except sqlite3.DatabaseError as e:
            raise self._unusable(e, "read") from None
        return result

    async def _txn(
        self,
        fn: Callable[[sqlite3.Connection], T],
        undo: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
    ) -> T:
        """Run ``fn(conn)`` as a durable write, group-committed with concurrent writes."""
        if self._full_file is not None:
            await self._run(_nothing)  # on the thread, its guard looks whether there is room now (_look_again)
        self._refuse_read_only()
        try:
            result: T = await self.worker.run_txn(fn, undo, after)
        except sqlite3.DatabaseError as e:
            raise self._unusable(e, "written") from None
        return result

    @property
    def read_only_reason(self) -> str:
        """Why the store is read-only, after its path: "is on a read-only file system", "cannot be written: its
        file system is full (0B free)"."""
        return self._read_only_why[0]

    def _refuse_read_only(self) -> None:
        if self.read_only:
            what, fix = self._read_only_why
            raise StoreError(
                f"state dir {self.state_dir} {what}: it can be read, not written ({fix} to run or change anything)"
            )

    def write_here(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` as one durable write in this thread, on a store opened by ``open_here``: what ``_txn``
        does on the store's thread for a write alone (refused on a read-only file system; the file checked to
        be the one opened; ``BEGIN IMMEDIATE``, ``fn``, ``COMMIT``, all rolled back on any error), with the
        same errors."""
        self._refuse_read_only()
        try:
            self._same_file(True)
            conn = self._db
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                commit(conn)
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as e:
            raise self._unusable(e) from None
        return result

    def _not_found(self, conn: sqlite3.Connection, prefix: str, message: str) -> Exception:
        """NotFound(``message``) for an id (or id prefix) the index of operations does not find, unless the
        table itself holds it: then that index is damaged (bytes changed in its copy of the id), and the
        store error says so (exit 8, the store's code). "No operation matches" (exit 3) was said of a record that
        was there, whole. The table is read without the index only here, when nothing was found."""
        found = conn.execute(
            "SELECT id FROM operations NOT INDEXED WHERE id >= ? AND id < ? LIMIT 1", (prefix, prefix + "~")
        ).fetchone()
        if found is None:
            return NotFound(message)
        return StoreError(
            f"state dir {self.state_dir}: {self.db_path.name} is damaged: operation {found[0]} is there, but the"
            f" index of operations does not find it (bytes changed in its pages)"
        )

    def _unusable(self, e: sqlite3.DatabaseError, what: str = "read or written") -> StoreError:
        """What SQLite raised as the store's one-line error: a damaged database file, one locked by another
        process, or else a read or write that failed (``what``: "read", "written"; the disk full, an I/O
        error): ``StoreFailed``, which may be tried again."""
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        d, name = self.state_dir, self.db_path.name
        if damaged(e):
            return StoreError(f"state dir {d}: {name} is not a usable Outlast database ({e})")
        if code == sqlite3.SQLITE_BUSY:  # "database is locked" said neither by whom nor what to do
            holder, stopped = self._lock_holder()
            return (StoreHeld if stopped else StoreError)(f"state dir {d}: {name} is locked: {holder}")
        if code == sqlite3.SQLITE_FULL:
            return StoreFailed(
                f"state dir {d}: its file system is full{_left(d)}: {name} cannot be written; free some space there,"
                " then run this again",
                str(e),
            )
        return StoreFailed(f"state dir {d}: {name} cannot be {what} ({e})", str(e))

    def _lock_holder(self) -> tuple[str, bool]:
        """Who has kept the write lock for the busy timeout, and what to do, for the line that says the store is
        locked; and whether that process is stopped. An ``outlast`` process whose disk stalls its commit's fsync,
        or one stopped inside its commit (SIGSTOP, a paused container), was called "a sqlite3 shell or a database
        browser?"."""
        import socket  # here: said after a 30s wait; no command's start pays for it

        from ...processes import command_of, stopped_note

        waited = f"for {BUSY_TIMEOUT:g}s"
        holders = [p for p in write_lock_holders(self.db_path) if p != os.getpid()]
        if not holders:
            return (
                f"another process has kept a write transaction open on it {waited} (a sqlite3 shell or a database"
                " browser?); end it"
            ), False
        pid = holders[0]
        who = f"process {pid}" + (f" ({command})" if (command := command_of(pid)) else "")
        note = stopped_note(socket.gethostname(), pid)
        if note is not None and note.startswith("stopped"):
            return f"{who} holds its write lock, and is {note}; nothing was written", True
        if command is not None and command.split(" ", 1)[0] == "outlast":
            return (
                f"{who} has held its write lock {waited} (a disk slow to sync? the process hung?); nothing was"
                " written: try again once it lets go"
            ), False
        return f"{who} has kept a write transaction open on it {waited}; nothing was written: end it", False

    # ---- opening and closing -------------------------------------------------------------------

    async def open(self) -> None:
        self._opened += 1
        if self._opened > 1:
            return
        self._worker = worker = SqliteWorker()
        try:
            await self._run(self._open_sync)
        except BaseException as e:
            self._opened = 0
            # Cancelled (Ctrl-C) while the open waits on its disk: not joined here, on the event loop's thread,
            # for up to 30 s (a `pause` stopped by Ctrl-C twice on a disk whose commit hung stayed 30 s).
            worker.stop(wait=30.0 if isinstance(e, Exception) else 0)
            self._worker = None
            raise

    def open_here(self) -> None:
        """Open the store in this thread, without its SQLite thread or an event loop, for one write
        (``write_here``) by a process that runs no engine (the quick path of ``outlast submit``): the same
        opening as ``open`` (``_open_sync``: the state dir and its files checked, made, or refused alike)."""
        try:
            self._open_sync()
        except sqlite3.DatabaseError as e:  # as ``_run`` says what the store's thread raised
            raise self._unusable(e) from None

    def close_here(self) -> None:
        """Close a store opened by ``open_here``."""
        for op_id in list(self._held):
            self._unlock(op_id)
        self._spares.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def unheld_running_here(self) -> bool:
        """Whether an operation is marked running whose lock no process holds, read on a store opened by
        ``open_here``: an orphan, perhaps, which only an engine's recovery (``find_orphans``) tells and marks."""
        try:
            running = self._db.execute("SELECT id FROM operations WHERE status='running'").fetchall()
        except sqlite3.DatabaseError as e:
            raise self._unusable(e) from None
        return any(op_id not in self._held and not lock_held(self._lock_file(op_id)) for (op_id,) in running)

    def _open_sync(self) -> None:
        d = self.state_dir
        known_full, self._full_file = self._full_file is not None, None
        if (unfit := unfit_here()) is not None:
            raise StoreError(f"state dir {d}: {unfit}")
        if (refused := refusal(d)) is not None:  # before anything is made or changed, by reads too
            raise StoreError(refused)
        self.read_only = on_read_only_fs(d)
        try:
            mode = stat.S_IMODE(os.stat(d).st_mode) if not self.read_only and d.is_dir() else None
        except OSError:
            mode = None
        if mode is not None and not mode & stat.S_IWUSR:
            # Made read-only by its owner (chmod a-w, to keep it as it is): it was narrowed to 0700, write
            # added, and written to.
            self.read_only = True
            self._read_only_why = (f"is read-only (mode {mode:o}: no write for its owner)", f"chmod u+w {d}")
        if self.read_only:
            log.warning(
                "state dir %s %s: read as it is; nothing can be run or changed, and an operation whose process"
                " is gone is not marked interrupted",
                d,
                self._read_only_why[0],
            )
        else:
            try:
                existed = d.is_dir()
                private_dirs(d)  # and its missing parents, 0700 whatever the umask
                if not existed and (refused := refusal(d)) is not None:  # another user's, made since the look
                    raise StoreError(refused)
                if stat.S_IMODE(d.stat().st_mode) == 0o700:
                    pass  # private already: nothing to narrow, nothing to say
                elif not existed or _only_ours(d):
                    os.chmod(d, 0o700)
                else:
                    # Someone else's directory (OUTLAST_STATE_DIR=/, a home, a web root by a typo): narrowed,
                    # `outlast ls` alone made / 0700, and every other user lost the whole file system.
                    log.warning(
                        "state dir %s holds files that are not Outlast's: its mode is left as it is (Outlast"
                        " narrows only its own directories to 0700); if it is the directory you meant, chmod"
                        " 700 it",
                        d,
                    )
            except FileExistsError:  # mkdir's own words were "File exists", naming nothing wrong
                if d.is_symlink():  # not "a file": a link whose target is gone, or a loop
                    raise StoreError(
                        f"state dir {d} is a symbolic link to nothing (a loop, or its target is gone): give a directory"
                    ) from None
                raise StoreError(f"state dir {d} is a file, not a directory: give a directory") from None
            except NotADirectoryError:
                raise StoreError(f"state dir {d}: a part of its path is a file, not a directory") from None
            except OSError as e:
                raise StoreError(f"state dir {d}: {e.strerror or e}{_default_said(d)}") from None
            if not d.is_dir():
                raise StoreError(f"state dir {d} is not a directory")
            private_dir(d, self.log_dir.name)
            private_dir(d, self.lock_dir.name)
            Spares.sweep(self.lock_dir)  # those of processes killed since (their close never ran)
            sweep_dead_pid_temps(d, [f"{self.db_path.name}{OWNER_SUFFIX}"])  # a note_owner killed mid-write
        if (why := stale_wal(self.db_path)) is not None:
            raise StoreError(f"state dir {d}: {why}")
        # A regular file or none (refusal): SQLite opens the journal, WAL and shared-memory files beside the
        # database as it finds them, and a FIFO at outlast.db-journal made every command wait for ever.
        try:
            found: os.stat_result | None = os.lstat(self.db_path)
        except OSError:
            found = None
        if found is not None and found.st_nlink > 1 and not self.read_only:
            self._remove_unfinished()  # its other link a new database's name, left by a process killed (refusal)
        if found is not None and found.st_size > 0:
            self._refuse_newer(self._peek_version())
        creating = found is None
        first: sqlite3.DatabaseError | OSError | None = None
        while True:
            try:
                if found is None:
                    self._create_db()
                elif found.st_size == 0:
                    # Not a new store: SQLite would take it as one, and every record would be gone unsaid.
                    raise sqlite3.DatabaseError("the file is empty (0 bytes)")
                if self.read_only:
                    uri = read_only_uri(self.db_path)
                    self._immutable = uri.endswith("immutable=1")
                    conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False)
                else:
                    # SQLite gives the -wal and -shm files the database file's mode: 0600 for all three.
                    make_private(self.db_path, Path(f"{self.db_path}-wal"), Path(f"{self.db_path}-shm"))
                    conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=FULL")
                    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
                    conn.execute("PRAGMA wal_autocheckpoint=0")  # the worker folds the WAL in when idle (worker.py)
                conn.text_factory = _lenient_text
                self._conn = conn
                worker = self._worker  # none when opened in this thread (open_here)
                if worker is not None:
                    worker.conn = conn
                st = os.stat(self.db_path)
                self._file = (st.st_dev, st.st_ino)
                if worker is not None:
                    worker.guard = self._same_file
                has_meta = conn.execute("SELECT name FROM sqlite_master WHERE name='meta'").fetchone() is not None
                if not has_meta:
                    if conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None:
                        raise sqlite3.DatabaseError("it holds other tables than Outlast's")
                    if self.read_only:
                        raise sqlite3.DatabaseError("it holds no tables")
                version = schema_version(conn) if has_meta else None
                if (version or 0) <= SCHEMA_VERSION:  # a newer Outlast's is refused below: nothing in it changed
                    if not self.read_only:
                        # The WAL is open now (those reads), and no write of this file is in it yet.
                        note_owner(self.db_path)
                    if version is None and not self.read_only:
                        # A database file with nothing in it (nothing to lose), or made by an older version, whose
                        # schema was created statement by statement and could be cut off by a kill: the rest is
                        # created now (IF NOT EXISTS: nothing present is touched).
                        init_schema(conn)
                        version = schema_version(conn)
            except (sqlite3.DatabaseError, OSError) as e:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if first is None and not creating and not self.read_only and (known_full or self._no_room(e)):
                    # A full disk (bytes or inodes): SQLite could not make the WAL or shared-memory files a
                    # read-write open needs, and every command, `ls` and `logs` too, said only that. What is
                    # stored is read as on a read-only file system; what would write says why it cannot.
                    # Known full (a look for room, _look_again), any failure is read so: the space could be
                    # freed between SQLite's failure and the look here, which then found room and left the
                    # store closed for good (a dashboard said "cannot be opened (disk I/O error)" until
                    # restarted); read as it was, it looks again a second later.
                    first = e
                    self.read_only = True
                    self._read_only_why = (
                        f"cannot be written: its file system is full{_left(d)}",
                        "free some space there",
                    )
                    continue
                if first is not None:
                    self.read_only = False
                raise self._unopened(first or e, creating) from None
            break
        if first is not None:
            self._full_file = _identity(self.db_path)
            self._room_looked = time.monotonic()
            if not known_full:
                log.warning(
                    "state dir %s %s: read as it is; nothing can be run or changed, and an operation whose"
                    " process is gone is not marked interrupted",
                    d,
                    self._read_only_why[0],
                )
        elif known_full:
            log.warning("state dir %s has room again: its operations can be run and changed", d)
        if (version or 0) > SCHEMA_VERSION:
            conn.close()
            self._conn = None
            self._refuse_newer(version)
        with contextlib.suppress(sqlite3.OperationalError):  # read-only: listing still works, submitting says why
            ensure_current(conn)

    def _no_room(self, e: sqlite3.DatabaseError | OSError) -> bool:
        """Whether ``e``, opening a database file that is there, is its file system having no room (few bytes
        or no inode left), not a damaged or locked file."""
        if isinstance(e, sqlite3.DatabaseError) and not isinstance(self._unusable(e), StoreFailed):
            return False
        return self._full()

    def _full(self) -> bool:
        """Whether the state dir's file system has too few bytes or no inode left to write the store."""
        free = free_bytes(self.state_dir)
        return (free is not None and free < FULL_BELOW) or no_inodes(self.state_dir)

    def _look_again(self) -> None:
        """For a store opened read-only on a full disk (``_full_file``), before each job on its thread: open
        the file again once another process changed it (or a WAL holds writes: read as it was, it would be
        stale, or torn by a checkpoint), or once there is room (a ``statvfs`` at most once a second): read
        as it is now, and written again where there is room. A dashboard started on a full disk listed the
        operations of its start for good, and refused every write, until restarted."""
        try:
            wal = self._immutable and os.path.lexists(f"{self.db_path}-wal")  # read through one, SQLite reads it
            changed = wal or _identity(self.db_path) != self._full_file
        except OSError:
            return  # gone or unreadable: _same_file and SQLite's own access say what
        if not changed:
            now = time.monotonic()
            if now - self._room_looked < 1.0:
                return
            self._room_looked = now
            if self._full():
                return
        self.read_only = False
        self._open_again(fold=False)

    def _peek_version(self) -> int | None:
        """The schema version ``outlast.db`` says, read without writing anything (not even SQLite's WAL
        and shared-memory files when no WAL holds writes: ``read_only_uri``); None when it cannot be read
        so (opening it says why)."""
        try:
            conn = sqlite3.connect(read_only_uri(self.db_path), uri=True, timeout=5.0, isolation_level=None)
        except sqlite3.Error:
            return None
        try:
            return schema_version(conn)
        except (sqlite3.Error, ValueError):
            return None
        finally:
            conn.close()

    def _refuse_newer(self, version: int | None) -> None:
        """Refuse a state dir written by a newer Outlast, before anything in it is changed (its owner note
        among them): bad input changes nothing stored."""
        if (version or 0) > SCHEMA_VERSION:
            raise StoreError(
                f"state dir {self.state_dir} was written by a newer Outlast (schema {version}; this version"
                f" reads up to {SCHEMA_VERSION}): upgrade Outlast or use another --state-dir"
            )

    def _unopened(self, e: sqlite3.DatabaseError | OSError, creating: bool) -> StoreError:
        """Why the database could not be opened (or made), in one line. Only a damaged file is called
        unusable: a full disk made a sound database "not a usable Outlast database (disk I/O error)" (its
        shared-memory file could not be sized), which reads as "delete it"."""
        d, name = self.state_dir, self.db_path.name
        if isinstance(e, sqlite3.DatabaseError) and not creating:
            bad = self._unusable(e)
            if not isinstance(bad, StoreFailed):  # damaged, or locked
                return bad
        what = "created" if creating else "opened"
        free = free_bytes(d)
        if (free is not None and free < FULL_BELOW) or no_inodes(d):
            # No inode left, however many bytes: SQLite's "unable to open database file" (its WAL and
            # shared-memory files could not be made) named nothing wrong.
            return StoreError(
                f"state dir {d}: its file system is full{_left(d)}: {name} cannot be {what};"
                " free some space there, then run this again"
            )
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return StoreError(f"state dir {d}: {name} cannot be {what} ({why})")

    def _same_file(self, write: bool) -> None:
        """Whether ``outlast.db`` is still the file this store opened, checked before each job (one ``stat``).

        Deleted with its state dir, or replaced (a backup restored over it), the file SQLite has open is
        one nobody reads again: a run "completed" there was found nowhere, and a worker's look for work
        saw none of what was submitted since. Holding no operation, this store opens the file now at the
        path (made anew if there is none), as a process starting now would. Holding some, their records
        are in the file it has: a write is refused (the engine's store outage: the attempts stop as
        interrupted, said in one line), a read still answers from it; the file put back lets writes go on."""
        if self._full_file is not None:
            self._look_again()
        try:
            st = os.stat(self.db_path)
            what = None if (st.st_dev, st.st_ino) == self._file else "replaced by another file"
        except FileNotFoundError:
            what = self._gone_how()
        except OSError:
            return  # unreadable for another reason: SQLite's own access says what
        if what is None:
            return
        if not self._held:
            self._reopen(what)
        elif write:
            raise self._changed(what)

    def _changed(self, what: str) -> StoreError:
        """The error of a write refused because ``outlast.db`` was ``what`` ("deleted", "replaced by another
        file", "moved to PATH") while this process held operations: StoreLost when deleted (their records went
        with it). Moved (the state dir renamed), the records are where it went, and resumable there: it was
        said as deleted, "cannot be resumed"."""
        if what.startswith("moved to "):
            return StoreMoved(
                f"state dir {self.state_dir}: {self.db_path.name} was {what} while this process had it open"
                f" with {len(self._held)} operation(s) running; nothing more is written from here",
                str(Path(what.removeprefix("moved to ")).parent),
            )
        error = StoreLost if what == "deleted" else StoreError
        return error(
            f"state dir {self.state_dir}: {self.db_path.name} was {what} while this process had it open"
            f" with {len(self._held)} operation(s) running; nothing more is written to the one it has"
        )

    def _lost(self) -> StoreError | None:
        """StoreLost when ``outlast.db`` is gone while this process holds operations (StoreError when it was
        moved: the state dir renamed). Asked where a file beside it was not found (a log, a lock file): under
        ``rm -rf`` of the state dir that failure can come first, and it said "No such file or directory" and
        "resumable" for records that are gone."""
        if not self._held or os.path.lexists(self.db_path):
            return None
        return self._changed(self._gone_how())

    def _gone_how(self) -> str:
        """What became of the file this store opened, once no file is at its path: "deleted", or "moved to
        PATH" while it still has a name elsewhere (the state dir renamed)."""
        moved = _moved_to(self._file)
        return "deleted" if moved is None else f"moved to {moved}"

    def _reopen(self, what: str) -> None:
        """Open the database file now at the path in place of the one this store had (see _same_file).

        The WAL holds writes of the file before, which SQLite would lay over the new one: they are folded
        into the file before (still open here) and the WAL emptied first. Where other processes still
        write the file before, it is not, and the new file is refused (walpair) until they are gone: the
        store stays closed, says why to every call, and the next job tries again."""
        self._open_again(fold=True)
        log.warning(
            "state dir %s: %s was %s while this process had it open; using the one there now",
            self.state_dir,
            self.db_path.name,
            what,
        )

    def _open_again(self, fold: bool) -> None:
        """Close the connection (``fold``: its WAL folded into its file first) and open the file at the path;
        when that fails, the store stays closed and says why to every call."""
        old, self._conn = self._conn, None
        if self._worker is not None:
            self._worker.conn = None
        if old is not None:
            if fold:
                with contextlib.suppress(sqlite3.Error):
                    old.execute("PRAGMA busy_timeout=0")  # never wait behind another process's transaction
                    old.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            with contextlib.suppress(sqlite3.Error):
                old.close()
        try:
            self._open_sync()
        except StoreError as e:
            self._closed_why = str(e)
            raise
        self._closed_why = None

    def _create_db(self) -> None:
        """A new database, built beside the path and linked into place whole: a process that finds
        ``outlast.db`` never finds it half made (an empty one is refused as damaged)."""
        tmp = self.state_dir / f"{NEW_DB_PREFIX}{os.getpid()}-{threading.get_ident()}"
        try:
            # 0600 from the start (SQLite gives its -wal and -shm the same mode), and made new: a link planted at
            # this name was followed, and the file it named made a database. Something else of ours or not, or
            # a link there: another name (the pid first in it still, for _remove_unfinished).
            os.close(create_new(tmp))
        except FileExistsError:
            tmp = self.state_dir / f"{NEW_DB_PREFIX}{os.getpid()}-{time.time_ns()}"  # no longer (statedir)
            os.close(create_new(tmp))
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                init_schema(conn)
            finally:
                conn.close()  # the last connection folds the WAL into the file and removes it
            try:
                os.link(tmp, self.db_path)
            except FileExistsError:
                pass  # another process made it first: use that one
            except OSError:  # a file system without hard links
                if not self.db_path.exists():
                    os.rename(tmp, self.db_path)
            else:
                tmp.unlink()  # at once: outlast.db with two links is a copy's to another open (statedir.being_made)
            dir_fd = os.open(self.state_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            self._remove_unfinished()
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def _remove_unfinished(self) -> None:
        """Remove the new databases (and their -wal and -shm) that processes killed while they built one left
        beside ``outlast.db``: the cleanup above never ran in them, and nothing else looks there. Only a gone
        process's (its pid is in the name): a live one may be building its own now."""
        prefix = NEW_DB_PREFIX
        try:
            names = os.listdir(self.state_dir)
        except OSError:
            return
        for name in names:
            pid = name[len(prefix) :].split("-", 1)[0] if name.startswith(prefix) else ""
            if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(self.state_dir / name)

    async def close(self) -> None:
        self._opened = max(0, self._opened - 1)
        if self._opened or self._worker is None:
            return
        for op_id in list(self._held):
            self._unlock(op_id)
        worker, self._worker = self._worker, None
        worker.guard = None  # closing it must not open the file now at the path (_same_file)
        await worker.run(self._spares.close)
        conn, self._conn = self._conn, None
        if conn is not None:
            await worker.run(conn.close)
        try:
            await off_loop(worker.stop)
        except RuntimeError as e:
            if str(e) != NO_THREAD:
                raise
            # No thread to wait with (ulimit -u, as the program ends): its connection is closed and it is a
            # daemon; told to stop, it ends by itself. This raised, and `outlast run` of a completed operation
            # ended in exit 70, "internal error".
            worker.stop(wait=0)

    # ---- the locks this process holds ------------------------------------------------------------

    def _lock_file(self, op_id: str) -> Path:
        """Where operation ``op_id``'s lock file is."""
        return self.lock_dir / f"{op_id}.lock"

    def _try_lock(self, op_id: str) -> int | None:
        """``try_lock`` of the operation's lock file; the locks directory made again if it was deleted (a
        "stale lock" cleanup): else every claim, and a running operation's heartbeat, failed as a store
        outage, which stopped the work. A lock file that cannot be made or opened (no inode left on the
        file system, an I/O error) is the store failing a write, said as such: it was a raw OSError, an
        internal error (exit 70) after the operation was submitted."""
        try:
            try:
                return try_lock(self._lock_file(op_id), self._spares)
            except FileNotFoundError:
                if (lost := self._lost()) is not None:
                    raise lost from None
                private_dir(self.state_dir, self.lock_dir.name)  # not the state dir: its loss is _same_file's
                return try_lock(self._lock_file(op_id), self._spares)
        except PermissionError as e:
            path = self._lock_file(op_id)
            if not (os.path.lexists(path) and os.access(self.lock_dir, os.W_OK | os.X_OK)):
                raise self._lock_unopened(op_id, e) from None
            # A lock file of another user's (a run as root in this state dir): whether its attempt still runs
            # cannot be told, so it is taken as held, and said once. Every command failed on it (exit 8),
            # submit and ls among them, and the operation showed running for ever with nothing said.
            if path not in _UNOPENABLE_SAID:
                _UNOPENABLE_SAID.add(path)
                owner = owner_of(path)
                log.warning(
                    "state dir %s: %s/%s cannot be opened (%s%s), so whether operation %s still runs cannot be"
                    " told: it is left as it is; if no process of that user runs it, delete that file",
                    self.state_dir,
                    self.lock_dir.name,
                    path.name,
                    e.strerror,
                    f": it belongs to {owner}" if owner else "",
                    op_id,
                )
            return None
        except OSError as e:
            raise self._lock_unopened(op_id, e) from None

    def _lock_unopened(self, op_id: str, e: OSError) -> OSError | StoreFailed:
        """The error to raise for a lock file that cannot be made or opened: ``e`` itself when the machine ran
        short (no descriptor or memory left, which its callers say as such), else the store failing a write."""
        if ran_short(e) is not None:
            return e
        d, name = self.state_dir, f"{self.lock_dir.name}/{op_id}.lock"
        why = e.strerror or str(e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreFailed(
                f"state dir {d}: its file system is full{_left(d)}: {name} cannot be made; free some space"
                " there, then run this again",
                why,
            )
        return StoreFailed(f"state dir {d}: {name} cannot be opened ({why})", why)

    def _lock(self, op_id: str) -> bool:
        if op_id in self._held:
            return True
        fd = self._try_lock(op_id)
        if fd is None:
            return False
        self._held[op_id] = fd
        return True

    def _unlock(self, op_id: str) -> None:
        fd = self._held.pop(op_id, None)
        if fd is not None:
            unlock(self._lock_file(op_id), fd, self._spares)

    def _unlock_unless_running(self, op_id: str, epoch: int | None = None) -> None:
        """Let go after a commit, unless a later job of the same commit group claimed the operation
        again (a resume and the scheduler's claim committed together): that lock is the new attempt's.

        With ``epoch``: keep it only for a running attempt other than that one (a final status that
        failed to be written leaves the record running with our epoch: let go, so it is found orphaned)."""
        if op_id in self._held:
            row = self._db.execute("SELECT status, epoch FROM operations WHERE id=?", (op_id,)).fetchone()
            if row is None or row[0] != "running" or (epoch is not None and row[1] == epoch):
                self._unlock(op_id)

    # ---- reading a record ------------------------------------------------------------------------

    @staticmethod
    def _load(raw: str, ckpt_seq: int | None) -> Operation:
        op = Operation.model_validate_json(raw)
        op.checkpoint_seq = ckpt_seq  # derived, so a checkpoint does not rewrite the record
        return op

    def _row_op(self, conn: sqlite3.Connection, op_id: str) -> Operation:
        row = conn.execute(f"SELECT record, {CHECKPOINT_SEQ} FROM operations o WHERE id=?", (op_id,)).fetchone()
        if row is None:
            raise self._not_found(conn, op_id, f"no operation {op_id}")
        try:
            return self._load(*row)
        except ValueError as e:
            raise StoreError(f"operation {op_id}: stored record is malformed ({e.__class__.__name__})") from None


_UNOPENABLE_SAID: set[Path] = set()
"""Lock files said to be another user's (``_try_lock``): once each, not at every look for work."""


def _moved_to(identity: tuple[int, int] | None) -> str | None:
    """Where the file of ``identity`` (device, inode), which this process has open, has a name now, when its
    old one is gone: the path of the descriptor that has it open (Linux's ``/proc``), while it has a name
    (a deleted file has none). None when deleted, or when it cannot be told."""
    if identity is None:
        return None
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in fds:
        link = f"/proc/self/fd/{fd}"
        try:
            st = os.stat(link)
            if (st.st_dev, st.st_ino) == identity and st.st_nlink > 0:
                return os.readlink(link)
        except OSError:
            continue
    return None


def _identity(db: Path) -> tuple[int, int, int, int]:
    """The file at ``db``: device, inode, size and time of its last change."""
    st = os.stat(db)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _nothing() -> None:
    """A job that does nothing (its thread's guard runs before it)."""


def _left(d: Path) -> str:
    """What is left on the file system of the state dir ``d``, for the line saying it is full: " (12KB free)",
    or that no file can be made there (every inode in use, bytes free or not); "" when it cannot be told."""
    if no_inodes(d):
        return " (no inode free: no file can be made there)"
    free = free_bytes(d)
    return f" ({size(free)} free)" if free is not None else ""


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts; so does one that cannot be asked)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _lenient_text(raw: bytes) -> str:
    """TEXT as str; bytes that are not UTF-8 (a damaged page) become U+FFFD instead of an error
    that quotes them raw, so the validation of what was read decides (and says it in one line)."""
    return raw.decode("utf-8", "replace")
