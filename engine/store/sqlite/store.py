"""The embedded store: one SQLite database (WAL, synchronous=FULL) in a 0700 state directory.

All SQLite calls run on one thread per store (never on the event loop). Several
processes share one state directory: writes take SQLite's write lock with
BEGIN IMMEDIATE, and a running operation is also held by an flock on
``locks/ID.lock`` that the kernel releases when its process dies, so any
engine can tell an orphan from a live operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiofiles

from ...files import create_private, make_private, private_opener
from ...models import (
    ACTIVE,
    Checkpoint,
    Conflict,
    ControlAction,
    InvalidInput,
    ItemFailure,
    LogRecord,
    NotFound,
    Operation,
    Priority,
    StaleAttempt,
    Status,
    StoreError,
    WorkerInfo,
    check_transition,
    validate_id,
    validate_id_prefix,
)
from ..base import ROOT, Chain, ItemDelta, Ledger, checksum, decode_payload, encode_payload, link, restore, resume_note
from .worker import SqliteWorker

log = logging.getLogger("outlast.store")
T = TypeVar("T")

SCHEMA_VERSION = 1
_RANK = {"high": 0, "normal": 1, "low": 2}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS operations(
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    rank INTEGER NOT NULL,
    queued_at REAL NOT NULL,
    not_before REAL,
    created_at REAL NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    control TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ops_status_queued ON operations(status, queued_at);
CREATE INDEX IF NOT EXISTS ops_claim ON operations(status, rank, queued_at, id);
CREATE INDEX IF NOT EXISTS ops_type_created ON operations(type, created_at);
CREATE INDEX IF NOT EXISTS ops_created ON operations(created_at);
CREATE INDEX IF NOT EXISTS ops_control ON operations(control) WHERE control IS NOT NULL;
CREATE TABLE IF NOT EXISTS checkpoints(
    op_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    created_at REAL NOT NULL,
    info TEXT NOT NULL,
    payload BLOB NOT NULL,
    checksum TEXT NOT NULL,
    PRIMARY KEY(op_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deltas(
    op_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    items BLOB NOT NULL,
    PRIMARY KEY(op_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failures(
    op_id TEXT NOT NULL,
    key TEXT NOT NULL,
    error TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY(op_id, key)
) WITHOUT ROWID;
"""


_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
"""SQLite's primary result codes for a damaged database file."""

_CKPT_SEQ = "(SELECT MAX(seq) FROM checkpoints c WHERE c.op_id = o.id)"


def _rank(priority: Priority | str) -> int:
    return _RANK[priority.value if isinstance(priority, Priority) else priority]


class LocalStore:
    """The default store (see module doc)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir).expanduser()
        self.url = str(self.state_dir)
        self.db_path = self.state_dir / "outlast.db"
        self.log_dir = self.state_dir / "logs"
        self.lock_dir = self.state_dir / "locks"
        self._worker: SqliteWorker | None = None
        self._conn: sqlite3.Connection | None = None
        self._held: dict[str, int] = {}
        self._log_locks: dict[str, asyncio.Lock] = {}
        self._opened = 0

    # ---- plumbing ----------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the SQLite thread (a read, or plumbing)."""
        assert self._worker is not None, "store is not open"
        try:
            return await self._worker.run(fn, *args)
        except sqlite3.DatabaseError as e:
            raise self._unusable(e) from None

    async def _txn(
        self,
        fn: Callable[[sqlite3.Connection], T],
        undo: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
    ) -> T:
        """Run ``fn(conn)`` as a durable write, group-committed with concurrent writes."""
        assert self._worker is not None, "store is not open"
        try:
            return await self._worker.run_txn(fn, undo, after)
        except sqlite3.DatabaseError as e:
            raise self._unusable(e) from None

    def _unusable(self, e: sqlite3.DatabaseError) -> Exception:
        """A damaged database file as the one-line store error; other SQLite errors (locked, full,
        read-only, I/O) as they are."""
        if type(e) is sqlite3.DatabaseError or (getattr(e, "sqlite_errorcode", 0) & 0xFF) in _DAMAGED:
            return StoreError(f"state dir {self.state_dir}: {self.db_path.name} is not a usable Outlast database ({e})")
        return e

    async def open(self) -> None:
        self._opened += 1
        if self._opened > 1:
            return
        self._worker = SqliteWorker()
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._opened = 0
            self._worker.stop()
            self._worker = None
            raise

    def _open_sync(self) -> None:
        d = self.state_dir
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)
            self.log_dir.mkdir(exist_ok=True, mode=0o700)
            self.lock_dir.mkdir(exist_ok=True, mode=0o700)
        except OSError as e:
            raise StoreError(f"state dir {d}: {e.strerror or e}") from None
        if not d.is_dir():
            raise StoreError(f"state dir {d} is not a directory")
        try:
            if not self.db_path.exists():
                self._create_db()
            elif self.db_path.stat().st_size == 0:
                # Not a new store: SQLite would take it as one, and every record would be gone unsaid.
                raise sqlite3.DatabaseError("the file is empty (0 bytes)")
            # SQLite gives the -wal and -shm files the database file's mode: 0600 for all three.
            make_private(self.db_path, Path(f"{self.db_path}-wal"), Path(f"{self.db_path}-shm"))
            conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.text_factory = _lenient_text
            self._conn = conn
            assert self._worker is not None
            self._worker.conn = conn
            if conn.execute("SELECT name FROM sqlite_master WHERE name='meta'").fetchone() is None:
                if conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None:
                    raise sqlite3.DatabaseError("it holds other tables than Outlast's")
                self._init_schema(conn)  # a database file with nothing in it: nothing to lose
            ver = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if ver is None:
                # Made by an older version, whose schema was created statement by statement and could be
                # cut off by a kill: the rest is created now (IF NOT EXISTS: nothing present is touched).
                self._init_schema(conn)
                ver = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            raise StoreError(f"state dir {d}: {self.db_path.name} is not a usable Outlast database ({e})") from None
        version = int(ver[0]) if ver else 0
        if version > SCHEMA_VERSION:
            conn.close()
            self._conn = None
            raise StoreError(
                f"state dir {d} was written by a newer Outlast (schema {version}; this version reads up to "
                f"{SCHEMA_VERSION}): upgrade Outlast or use another --state-dir"
            )

    @staticmethod
    def _init_schema(conn: sqlite3.Connection) -> None:
        """The whole schema in one transaction, the version row last: all of it or none."""
        conn.executescript(  # idempotent: IF NOT EXISTS everywhere
            f"BEGIN IMMEDIATE;{_SCHEMA};INSERT OR IGNORE INTO meta VALUES('schema_version', '{SCHEMA_VERSION}');COMMIT;"
        )

    def _create_db(self) -> None:
        """A new database, built beside the path and linked into place whole: a process that finds
        ``outlast.db`` never finds it half made (an empty one is refused as damaged)."""
        tmp = self.state_dir / f".{self.db_path.name}.new-{os.getpid()}-{threading.get_ident()}"
        try:
            create_private(tmp)  # 0600 from the start; SQLite gives its -wal and -shm the same mode
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                self._init_schema(conn)
            finally:
                conn.close()  # the last connection folds the WAL into the file and removes it
            try:
                os.link(tmp, self.db_path)
            except FileExistsError:
                pass  # another process made it first: use that one
            except OSError:  # a file system without hard links
                if not self.db_path.exists():
                    os.rename(tmp, self.db_path)
            dir_fd = os.open(self.state_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    async def close(self) -> None:
        self._opened = max(0, self._opened - 1)
        if self._opened or self._worker is None:
            return
        for op_id in list(self._held):
            self._unlock(op_id)
        worker, self._worker = self._worker, None
        conn, self._conn = self._conn, None
        if conn is not None:
            await worker.run(conn.close)
        await asyncio.to_thread(worker.stop)

    async def __aenter__(self) -> LocalStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- records -------------------------------------------------------------------------------

    @staticmethod
    def _load(raw: str, ckpt_seq: int | None) -> Operation:
        op = Operation.model_validate_json(raw)
        op.checkpoint_seq = ckpt_seq  # derived, so a checkpoint does not rewrite the record
        return op

    def _row_op(self, conn: sqlite3.Connection, op_id: str) -> Operation:
        row = conn.execute(f"SELECT record, {_CKPT_SEQ} FROM operations o WHERE id=?", (op_id,)).fetchone()
        if row is None:
            raise NotFound(f"no operation {op_id}")
        try:
            return self._load(*row)
        except ValueError as e:
            raise StoreError(f"operation {op_id}: stored record is malformed ({e.__class__.__name__})") from None

    def _put(self, conn: sqlite3.Connection, op: Operation) -> None:
        conn.execute(
            "UPDATE operations SET status=?, rank=?, queued_at=?, not_before=?, epoch=?, record=? WHERE id=?",
            (
                op.status.value,
                _rank(op.priority),
                op.queued_at,
                op.not_before,
                op.epoch,
                op.model_dump_json(),
                op.id,
            ),
        )

    async def create(self, op: Operation) -> None:
        validate_id(op.id)

        def do(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO operations(id, type, status, rank, queued_at, not_before, created_at, epoch, record)"
                " VALUES(?,?,?,?,?,?,?,?,?)",
                (
                    op.id,
                    op.type,
                    op.status.value,
                    _rank(op.priority),
                    op.queued_at,
                    op.not_before,
                    op.created_at,
                    op.epoch,
                    op.model_dump_json(),
                ),
            )

        await self._txn(do)

    async def get(self, op_id: str) -> Operation:
        validate_id(op_id)
        return await self._run(lambda: self._row_op(self._conn, op_id))  # type: ignore[arg-type]

    async def list(
        self,
        statuses: list[Status] | None = None,
        types: list[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Operation]:
        where, args = [], []
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += [Status(s).value for s in statuses]
        if types:
            where.append(f"type IN ({','.join('?' * len(types))})")
            args += list(types)
        sql = f"SELECT id, record, {_CKPT_SEQ} FROM operations o"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]

        def do() -> list[Operation]:
            out = []
            for op_id, raw, seq in self._conn.execute(sql, args):  # type: ignore[union-attr]
                try:
                    out.append(self._load(raw, seq))
                except ValueError:
                    log.warning("operation %s: stored record is malformed; skipped", op_id)
            return out

        return await self._run(do)

    async def resolve(self, prefix: str) -> str:
        validate_id_prefix(prefix)

        def do() -> str:
            rows = self._conn.execute(  # type: ignore[union-attr]
                "SELECT id FROM operations WHERE id >= ? AND id < ? ORDER BY id LIMIT 6",
                (prefix, prefix + "~"),
            ).fetchall()
            if not rows:
                raise NotFound(f"no operation matches id {prefix!r} in state dir {self.state_dir}")
            if len(rows) > 1:
                shown = ", ".join(r[0] for r in rows[:5])
                raise InvalidInput(f"id prefix {prefix!r} is ambiguous: {shown}{', ...' if len(rows) > 5 else ''}")
            return rows[0][0]

        return await self._run(do)

    async def counts(self) -> dict[Status, int]:
        rows = await self._run(
            lambda: self._conn.execute("SELECT status, COUNT(*) FROM operations GROUP BY status").fetchall()  # type: ignore[union-attr]
        )
        return {Status(s): n for s, n in rows}

    async def counts_by_type(self) -> dict[tuple[Status, str], int]:
        """Operations per (status, type), for metrics (one indexed GROUP BY)."""
        rows = await self._run(
            lambda: self._conn.execute("SELECT status, type, COUNT(*) FROM operations GROUP BY status, type").fetchall()  # type: ignore[union-attr]
        )
        return {(Status(s), t): n for s, t, n in rows}

    async def queue_depth(self) -> dict[Priority, int]:
        def do() -> dict[Priority, int]:
            out = {p: 0 for p in Priority}
            for (raw,) in self._conn.execute(  # type: ignore[union-attr]
                "SELECT json_extract(record, '$.priority') FROM operations WHERE status='queued'"
            ):
                out[Priority(raw)] += 1
            return out

        return await self._run(do)

    @staticmethod
    def _apply(op: Operation, fields: dict[str, Any]) -> Operation:
        """``op`` with ``fields`` set. Callers are the engine and stores, passing typed values, so no
        re-validation here (it cost most of a transition); records are validated when read back."""
        unknown = set(fields) - set(Operation.model_fields)
        if unknown:
            raise ValueError(f"unknown operation fields: {sorted(unknown)}")
        return op.model_copy(update={**fields, "updated_at": time.time()})

    async def transition(
        self,
        op_id: str,
        to: Status,
        *,
        epoch: int | None = None,
        expect: frozenset[Status] | None = None,
        **fields: Any,
    ) -> Operation:
        validate_id(op_id)

        def do(conn: sqlite3.Connection) -> Operation:
            op = self._row_op(conn, op_id)
            if epoch is not None and op.epoch != epoch:
                raise StaleAttempt(f"operation {op_id}: attempt epoch {epoch} was replaced by {op.epoch}")
            if expect is not None and op.status not in expect:
                raise_conflict(op, to)
            check_transition(op.status, to)
            new = self._apply(op, {**fields, "status": to})
            self._put(conn, new)
            if to not in ACTIVE:
                conn.execute("UPDATE operations SET control=NULL WHERE id=?", (op_id,))
            return new

        # Leaving `running` makes this process's lock on it stale: let go once that is durable
        # (before the commit, another process would see it running and unlocked: an orphan).
        after = None if to is Status.RUNNING else (lambda: self._unlock_unless_running(op_id))
        return await self._txn(do, after=after)

    async def update(self, op_id: str, *, epoch: int | None = None, **fields: Any) -> Operation:
        validate_id(op_id)

        def do(conn: sqlite3.Connection) -> Operation:
            op = self._row_op(conn, op_id)
            if epoch is not None and op.epoch != epoch:
                raise StaleAttempt(f"operation {op_id}: attempt epoch {epoch} was replaced by {op.epoch}")
            new = self._apply(op, fields)
            self._put(conn, new)
            return new

        return await self._txn(do)

    async def claim(self, worker: WorkerInfo, now: float, aging: float, op_id: str | None = None) -> Operation | None:

        def do(conn: sqlite3.Connection) -> Operation | None:
            if op_id is not None:
                rows = conn.execute("SELECT id FROM operations WHERE id=? AND status='queued'", (op_id,)).fetchall()
            else:
                # Queue order: FIFO inside a priority; each level is worth `aging` seconds of waiting.
                # One indexed head query per level (aging is constant within a level), merged here:
                # ordering the whole queue by the expression would sort every queued row per claim.
                heads: list[tuple[float, str]] = []
                for rank in _RANK.values():
                    heads += [
                        (queued_at + rank * aging, cand)
                        for queued_at, cand in conn.execute(
                            "SELECT queued_at, id FROM operations INDEXED BY ops_claim"
                            " WHERE status='queued' AND rank=? AND (not_before IS NULL OR not_before <= ?)"
                            " ORDER BY queued_at, id LIMIT 8",
                            (rank, now),
                        )
                    ]
                rows = [(cand,) for _, cand in sorted(heads)[:8]]
            for (cand,) in rows:
                if not self._lock(cand):
                    continue  # another process is still finishing it
                op = self._row_op(conn, cand)
                new = self._apply(
                    op,
                    {
                        "status": Status.RUNNING,
                        "epoch": op.epoch + 1,
                        "worker": worker,
                        "started_at": now,
                        "finished_at": None,
                        "not_before": None,
                        "error": None,
                        "status_message": None,
                    },
                )
                self._put(conn, new)
                return new
            return None

        def undo() -> None:
            # A lock taken for a claim that did not commit must not linger.
            for held in list(self._held):
                row = self._conn.execute("SELECT status FROM operations WHERE id=?", (held,)).fetchone()  # type: ignore[union-attr]
                if row is None or row[0] != "running":
                    self._unlock(held)

        return await self._txn(do, undo)

    async def save_live(self, updates: list[tuple[str, int, dict[str, Any]]]) -> None:
        if not updates:
            return
        now = time.time()
        rows = []
        for op_id, epoch, fields in updates:
            unknown = set(fields) - set(Operation.model_fields)
            if unknown:  # names go into the SQL text below: only known field names pass
                raise ValueError(f"unknown operation fields: {sorted(unknown)}")
            paths = "".join(f", '$.{k}', json(?)" for k in fields)
            args = [now, *(json.dumps(v) for v in fields.values()), op_id, epoch]
            rows.append((f"json_set(record, '$.updated_at', ?{paths})", args))

        def do(conn: sqlite3.Connection) -> None:
            for expr, args in rows:
                conn.execute(f"UPDATE operations SET record={expr} WHERE id=? AND epoch=? AND status='running'", args)

        await self._txn(do)

    # ---- liveness ------------------------------------------------------------------------------

    def _lock(self, op_id: str) -> bool:
        if op_id in self._held:
            return True
        fd = try_lock(self.lock_dir / f"{op_id}.lock")
        if fd is None:
            return False
        self._held[op_id] = fd
        return True

    def _unlock(self, op_id: str) -> None:
        fd = self._held.pop(op_id, None)
        if fd is not None:
            unlock(self.lock_dir / f"{op_id}.lock", fd)

    def _unlock_unless_running(self, op_id: str, epoch: int | None = None) -> None:
        """Let go after a commit, unless a later job of the same commit group claimed the operation
        again (a resume and the scheduler's claim committed together): that lock is the new attempt's.

        With ``epoch``: keep it only for a running attempt other than that one (a final status that
        failed to be written leaves the record running with our epoch: let go, so it is found orphaned)."""
        if op_id in self._held:
            row = self._conn.execute("SELECT status, epoch FROM operations WHERE id=?", (op_id,)).fetchone()  # type: ignore[union-attr]
            if row is None or row[0] != "running" or (epoch is not None and row[1] == epoch):
                self._unlock(op_id)

    async def release(self, op_id: str, epoch: int | None = None) -> None:
        # Usually let go already by the final transition's commit; a running record is a newer
        # attempt's (the flock carries no epoch), so the lock stays with it.
        if op_id in self._held:
            await self._run(self._unlock_unless_running, op_id, epoch)

    async def heartbeat(self, op_ids: list[str]) -> None:
        return None  # the kernel keeps an flock alive as long as its process lives

    async def find_orphans(self) -> list[Operation]:
        def do() -> list[Operation]:
            out = []
            rows = self._conn.execute("SELECT id FROM operations WHERE status='running'").fetchall()  # type: ignore[union-attr]
            for (op_id,) in rows:
                if op_id in self._held:
                    continue
                if self._lock(op_id):
                    try:
                        row = self._conn.execute(  # type: ignore[union-attr]
                            "SELECT status FROM operations WHERE id=?", (op_id,)
                        ).fetchone()
                        if row and row[0] == "running":
                            out.append(self._row_op(self._conn, op_id))  # type: ignore[arg-type]
                    finally:
                        # Keep no lock: the caller marks it interrupted with the epoch it read.
                        fd = self._held.pop(op_id)
                        os.close(fd)
            return out

        return await self._run(do)

    # ---- checkpoints ---------------------------------------------------------------------------

    async def save_checkpoint(self, cp: Checkpoint, delta: ItemDelta, keep: int) -> Checkpoint:
        payload = encode_payload(cp)
        now = time.time()
        fail_rows = [(cp.operation_id, k, e, cp.epoch, now) for k, e in delta.failed.items()]
        saved: list[Checkpoint] = []

        def do(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT epoch FROM operations WHERE id=?", (cp.operation_id,)).fetchone()
            if row is None:
                raise NotFound(f"no operation {cp.operation_id}")
            if row[0] != cp.epoch:
                raise StaleAttempt(
                    f"operation {cp.operation_id}: checkpoint from epoch {cp.epoch}, held by epoch {row[0]}"
                )
            # Link this delta to the one before it (read in this transaction: the attempt holds the op).
            prev = ROOT
            if cp.seq > 1:
                before = conn.execute(
                    "SELECT items FROM deltas WHERE op_id=? AND seq=?", (cp.operation_id, cp.seq - 1)
                ).fetchone()
                prev = link(_as_bytes(before[0])) if before else "missing"
            items = delta.encode(prev)
            cs = checksum(payload, items)
            done = cp.model_copy(update={"checksum": cs, "size": len(payload) + len(items)})
            info = done.model_dump_json(exclude={"state", "context_data", "metadata", "next_step"})
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES(?,?,?,?,?,?,?)",
                (cp.operation_id, cp.seq, cp.epoch, cp.created_at, info, payload, cs),
            )
            conn.execute("INSERT OR REPLACE INTO deltas VALUES(?,?,?)", (cp.operation_id, cp.seq, items))
            if fail_rows:
                conn.executemany("INSERT OR REPLACE INTO failures VALUES(?,?,?,?,?)", fail_rows)
            has_failures = (
                bool(fail_rows)
                or conn.execute("SELECT 1 FROM failures WHERE op_id=? LIMIT 1", (cp.operation_id,)).fetchone()
                is not None
            )
            if delta.done and has_failures:
                # An item that failed before and is done now is no longer a failure.
                conn.execute(
                    "DELETE FROM failures WHERE op_id=? AND key IN (SELECT value FROM json_each(?))",
                    (cp.operation_id, json.dumps(delta.done)),
                )
            if has_failures:
                n_fail = conn.execute("SELECT COUNT(*) FROM failures WHERE op_id=?", (cp.operation_id,)).fetchone()[0]
                conn.execute(
                    "UPDATE operations SET record=json_set(record, '$.item_failures', ?) WHERE id=?",
                    (n_fail, cp.operation_id),
                )
            conn.execute("DELETE FROM checkpoints WHERE op_id=? AND seq <= ?", (cp.operation_id, cp.seq - keep))
            saved[:] = [done]

        await self._txn(do)
        return saved[0]

    def _chain(self, op_id: str) -> Chain:
        """The operation's deltas, followed from seq 1 until a link breaks (or a page cannot be read)."""
        conn = self._conn
        assert conn is not None

        def rows() -> Iterator[tuple[Any, Any]]:
            try:
                yield from conn.execute("SELECT seq, items FROM deltas WHERE op_id=? ORDER BY seq", (op_id,))
            except sqlite3.DatabaseError as e:
                log.warning("operation %s: item deltas unreadable after some point (%s)", op_id, e)

        return Chain(rows())

    def _checkpoint_rows(self, op_id: str, seq: int | None) -> list[tuple[Any, ...]]:
        """(seq, info, payload, checksum) newest first; rows on an unreadable page are left out."""
        conn = self._conn
        assert conn is not None
        sql = "SELECT seq, info, payload, checksum FROM checkpoints WHERE op_id=?"
        args: list[Any] = [op_id]
        if seq is not None:
            sql += " AND seq <= ?"
            args.append(seq)
        try:
            return conn.execute(sql + " ORDER BY seq DESC", args).fetchall()
        except sqlite3.DatabaseError:
            pass
        # A damaged page: read the seqs one by one, keeping what is readable.
        out = []
        top = seq if seq is not None else self._max_seq(op_id)
        for s in range(top, 0, -1):
            with contextlib.suppress(sqlite3.DatabaseError):
                out += conn.execute(
                    "SELECT seq, info, payload, checksum FROM checkpoints WHERE op_id=? AND seq=?", (op_id, s)
                ).fetchall()
        return out

    def _max_seq(self, op_id: str) -> int:
        conn = self._conn
        assert conn is not None
        for table in ("checkpoints", "deltas"):
            with contextlib.suppress(sqlite3.DatabaseError):
                row = conn.execute(f"SELECT MAX(seq) FROM {table} WHERE op_id=?", (op_id,)).fetchone()
                if row and isinstance(row[0], int):
                    return row[0]
        return 0

    async def load_checkpoint(self, op_id: str, seq: int | None = None) -> tuple[Checkpoint, Ledger] | None:
        validate_id(op_id)

        def do() -> tuple[Checkpoint, Ledger] | None:
            rows = self._checkpoint_rows(op_id, seq)
            if not rows:
                return None
            chain = self._chain(op_id)
            skipped: list[str] = []
            found: tuple[Checkpoint, Ledger] | None = None
            for s, info, payload, cs in rows:
                if not chain.verifies(s, payload, cs):
                    why = (
                        f"follows a broken chain ({chain.broken})"
                        if isinstance(s, int) and s > len(chain) and chain.broken
                        else "fails its checksum"
                    )
                    skipped.append(f"checkpoint {s} {why}")
                    continue
                try:
                    cp = restore(Checkpoint.model_validate_json(info), payload)
                    if cp.seq != s or cp.operation_id != op_id:
                        raise ValueError("checkpoint info names another checkpoint")
                    found = cp, chain.ledger(s)
                    break
                except ValueError as e:
                    skipped.append(f"checkpoint {s} is unreadable ({_plain(e)})")
            if skipped:
                log.warning(resume_note(op_id, skipped, found[0].seq if found else None))
            return found

        return await self._run(do)

    async def checkpoints(self, op_id: str) -> list[Checkpoint]:
        validate_id(op_id)

        def do() -> list[Checkpoint]:
            out = []
            chain = self._chain(op_id)
            for s, info, payload, cs in self._checkpoint_rows(op_id, None):
                try:
                    cp = Checkpoint.model_validate_json(info)
                except ValueError:
                    continue
                valid = chain.verifies(s, payload, cs)
                next_step = None
                if valid:
                    with contextlib.suppress(ValueError):
                        next_step = decode_payload(payload).get("next_step")
                out.append(cp.model_copy(update={"valid": valid, "next_step": next_step}))
            return out

        return await self._run(do)

    async def discard_checkpoints_after(self, op_id: str, seq: int) -> None:
        def do(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM checkpoints WHERE op_id=? AND seq > ?", (op_id, seq))
            conn.execute("DELETE FROM deltas WHERE op_id=? AND seq > ?", (op_id, seq))

        await self._txn(do)

    async def item_failures(self, op_id: str) -> list[ItemFailure]:
        rows = await self._run(
            lambda: self._conn.execute(  # type: ignore[union-attr]
                "SELECT key, error, attempt, at FROM failures WHERE op_id=? ORDER BY at", (op_id,)
            ).fetchall()
        )
        return [ItemFailure(key=k, error=e, attempt=a, at=t) for k, e, a, t in rows]

    # ---- control -------------------------------------------------------------------------------

    async def request_control(self, op_id: str, action: ControlAction) -> None:
        def do(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE operations SET control=? WHERE id=? AND status='running'", (action, op_id))

        await self._txn(do)

    async def pending_controls(self, op_ids: list[str]) -> dict[str, ControlAction]:
        if not op_ids:
            return {}
        wanted = set(op_ids)
        rows = await self._run(
            lambda: self._conn.execute(  # type: ignore[union-attr]
                "SELECT id, control FROM operations WHERE control IS NOT NULL"
            ).fetchall()
        )
        return {i: c for i, c in rows if i in wanted}

    async def clear_control(self, op_id: str) -> None:
        await self._txn(lambda c: c.execute("UPDATE operations SET control=NULL WHERE id=?", (op_id,)))

    # ---- logs ----------------------------------------------------------------------------------

    def _log_path(self, op_id: str) -> Path:
        return self.log_dir / f"{validate_id(op_id)}.jsonl"

    async def append_logs(self, op_id: str, records: list[LogRecord]) -> None:
        if not records:
            return
        text = "".join(r.model_dump_json(exclude={"operation_id"}) + "\n" for r in records)
        lock = self._log_locks.setdefault(op_id, asyncio.Lock())
        async with lock, aiofiles.open(self._log_path(op_id), "a", encoding="utf-8", opener=private_opener) as f:
            await f.write(text)

    async def read_logs(self, op_id: str, offset: int = 0, limit: int | None = None) -> tuple[list[LogRecord], int]:
        path = self._log_path(op_id)
        try:
            async with aiofiles.open(path, "rb") as f:
                await f.seek(offset)
                data = await f.read()
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n") + 1  # a partly written last line is read next time
        out = []
        for line in data[:end].splitlines():
            try:
                rec = LogRecord.model_validate_json(line)
            except ValueError:
                continue
            rec.operation_id = op_id
            out.append(rec)
        if limit is not None:
            out = out[-limit:] if limit > 0 else []
        return out, offset + end


def try_lock(path: Path) -> int | None:
    """An exclusive flock on the lock file at ``path`` (made if missing): its fd, or None while
    another process holds it.

    The lock is the file *at the path*: the holder deletes it when letting go (``unlock``), so a
    process that opened the path just before may get the flock on the deleted file while another
    makes and locks a new one. Such a lock is checked for (the open file is no longer the one at
    the path) and taken again on the file that is."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            here, mine = os.stat(path), os.fstat(fd)
            if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
        except FileNotFoundError:
            pass  # let go of and deleted since we opened it
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def unlock(path: Path, fd: int) -> None:
    """Let go of a lock taken with ``try_lock``: delete the file while still holding it, then close."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)


def _lenient_text(raw: bytes) -> str:
    """TEXT as str; bytes that are not UTF-8 (a damaged page) become U+FFFD instead of an error
    that quotes them raw, so the validation of what was read decides (and says it in one line)."""
    return raw.decode("utf-8", "replace")


def _as_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _plain(e: BaseException) -> str:
    """An error's message fit for one log line: printable, short (stored bytes may be anything)."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(e).splitlines()[0] if str(e)) or type(e).__name__
    return text[:120]


def raise_conflict(op: Operation, to: Status) -> None:
    raise Conflict(f"operation {op.id} is {op.status.value}: cannot make it {to.value}")
