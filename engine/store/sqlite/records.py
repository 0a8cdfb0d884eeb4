"""Operation records of the SQLite store: create, read, list, transition, claim, live fields.

A write takes SQLite's write lock (BEGIN IMMEDIATE, group-committed by the worker); a claim also
takes the operation's flock (core), so several processes can share one state directory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from ...errors import ControlChanged, KeyTaken
from ...lifecycle import CANCEL_WINS
from ...models import (
    ACTIVE,
    Conflict,
    ControlAction,
    InvalidInput,
    NotFound,
    Operation,
    Priority,
    StaleAttempt,
    Status,
    StoreError,
    WorkerInfo,
    check_transition,
    handle_of,
    refused_change,
    validate_id,
    validate_id_prefix,
)
from ...text import clean_json_text, model_json
from ..base import check_slots, parse_slots, stopped_instead
from .core import SqliteCore
from .locks import try_lock, unlock
from .schema import CHECKPOINT_SEQ, RANKS

log = logging.getLogger("outlast.store")

_BY_RANK = {p.rank: p for p in Priority}
"""A priority by its ``rank`` column value."""

_OWNED = (
    ("operations", "id"),
    ("checkpoints", "op_id"),
    ("deltas", "op_id"),
    ("failures", "op_id"),
    ("handles", "op_id"),
    ("idempotency", "op_id"),
)
"""The rows of one operation: what deleting it removes (with its log file)."""


def _apply(op: Operation, fields: dict[str, Any]) -> Operation:
    """``op`` with ``fields`` set. Callers are the engine and stores, passing typed values, so no
    re-validation here (it cost most of a transition); records are validated when read back."""
    unknown = set(fields) - set(Operation.model_fields)
    if unknown:
        raise ValueError(f"unknown operation fields: {sorted(unknown)}")
    return op.model_copy(update={**fields, "updated_at": time.time()})


def _heads(typed: bool) -> str:
    """The first 8 claimable operations of each priority level, in one statement (one step of the SQLite
    thread instead of one per level: each step lets go of the GIL and waits to get it back); ``typed``:
    of the types in a JSON list only."""
    of_types = " AND type IN (SELECT value FROM json_each(?))" if typed else ""
    return " UNION ALL ".join(
        "SELECT * FROM (SELECT rank, queued_at, id FROM operations INDEXED BY ops_claim"
        " WHERE status='queued' AND rank=? AND (not_before IS NULL OR not_before <= ?"
        # a retry whose backoff began after now: the clock went back since (Operation.retry_due); a
        # damaged record must not make every claim fail (json_extract raises on what is not JSON)
        " OR (CASE WHEN json_valid(record) THEN json_extract(record, '$.backoff_from') END) > ?)"
        f"{of_types} ORDER BY queued_at, id LIMIT 8)"
        for _ in RANKS
    )


_HEADS, _TYPED_HEADS = _heads(False), _heads(True)


@functools.lru_cache(maxsize=8)
def _types_json(types: frozenset[str]) -> str:
    """The type list a claim filters by, as the JSON array its statement reads (the same set each claim)."""
    return json.dumps(sorted(types))


def _slots_full(conn: sqlite3.Connection) -> bool:
    """Whether the store's slots (``meta`` 'slots') are all in use: read inside the claim's write
    transaction, so the count of running operations cannot change before the claim commits."""
    row = conn.execute("SELECT value FROM meta WHERE key='slots'").fetchone()
    slots = parse_slots(row[0]) if row else None
    if slots is None:
        return False
    (running,) = conn.execute("SELECT COUNT(*) FROM operations WHERE status='running'").fetchone()
    return bool(running >= slots)


def record_with_handle(op: Operation, handle: int) -> str:
    """``model_json`` of ``op`` with its handle set: without a copy of the Operation when it has none yet (a
    submit's), its dump's null handle replaced (the id before it, validated, has nothing to escape)."""
    if op.handle is None:
        text = model_json(op)
        null = f'{{"id":"{op.id}","handle":null,'
        if text.startswith(null):
            return f'{{"id":"{op.id}","handle":{handle},{text[len(null) :]}'
    return model_json(op.model_copy(update={"handle": handle}))


def _put(conn: sqlite3.Connection, op: Operation) -> None:
    """Write ``op`` back; a settled operation's pending control (pause, cancel) goes with it, in the same
    statement (a second one costs the SQLite thread another wait for the GIL)."""
    conn.execute(
        "UPDATE operations SET status=?, rank=?, queued_at=?, not_before=?, epoch=?, record=?,"
        " control=CASE WHEN ? THEN control END WHERE id=?",
        (
            op.status.value,
            Priority(op.priority).rank,
            op.queued_at,
            op.not_before,
            op.epoch,
            model_json(op),
            op.status in ACTIVE,
            op.id,
        ),
    )


def creating(op: Operation) -> Callable[[sqlite3.Connection], int]:
    """The write that stores the new operation ``op`` (its id checked first): ``_insert``. The one write of
    a new operation: ``RecordsMixin.create`` runs it on the store's thread (a group commit), and the quick
    path of ``outlast submit`` (``quick.quick_create``) in a transaction of its own (``SqliteCore.write_here``)."""
    validate_id(op.id)
    return functools.partial(_insert, op)


def _insert(op: Operation, conn: sqlite3.Connection) -> int:
    """Insert ``op`` in the write transaction open on ``conn``: its idempotency key (KeyTaken, before
    anything is written, when another operation of the store has it), its handle and its row; the handle."""
    if op.idempotency_key is not None:
        row = conn.execute("SELECT op_id FROM idempotency WHERE key=?", (op.idempotency_key,)).fetchone()
        if row is not None:
            if conn.execute("SELECT 1 FROM operations WHERE id=?", (row[0],)).fetchone():
                raise KeyTaken(op.idempotency_key, row[0])  # before anything is written
            # Its operation was removed by a version that kept no keys: the key is free.
            conn.execute("DELETE FROM idempotency WHERE key=?", (op.idempotency_key,))
        conn.execute("INSERT INTO idempotency(key, op_id) VALUES(?, ?)", (op.idempotency_key, op.id))
    # lastrowid, not RETURNING: that needs SQLite 3.35 (RHEL 9's Python has 3.34, where every submit would fail)
    handle = conn.execute("INSERT INTO handles(op_id) VALUES(?)", (op.id,)).lastrowid
    if handle is None:  # an INTEGER PRIMARY KEY is the rowid: never, unless the table was changed
        raise sqlite3.DatabaseError("the handles table gave no handle")
    conn.execute(
        "INSERT INTO operations(id, type, status, rank, queued_at, not_before, created_at, epoch, record)"
        " VALUES(?,?,?,?,?,?,?,?,?)",
        (
            op.id,
            op.type,
            op.status.value,
            Priority(op.priority).rank,
            op.queued_at,
            op.not_before,
            op.created_at,
            op.epoch,
            record_with_handle(op, handle),
        ),
    )
    return int(handle)


class RecordsMixin(SqliteCore):
    """Records, the queue and claims (part of LocalStore)."""

    async def create(self, op: Operation, fresh: bool = False) -> int | None:
        return await self._txn(creating(op))

    async def get(self, op_id: str) -> Operation:
        validate_id(op_id)
        return await self._run(lambda: self._row_op(self._db, op_id))

    async def list_operations(
        self,
        statuses: list[Status] | None = None,
        types: list[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Operation]:
        where: list[str] = []
        args: list[Any] = []
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += [Status(s).value for s in statuses]
        if types:
            where.append(f"type IN ({','.join('?' * len(types))})")
            args += list(types)
        sql = f"SELECT id, record, {CHECKPOINT_SEQ} FROM operations o"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            # A page: its ids first, sorted from the index alone, then only their records (and newest seq).
            # Sorted whole, every page read every record of those statuses and looked up each one's newest
            # checkpoint: 0.7 s a page of `outlast clean` with 100,000 operations, 89 s for a dry run.
            page = "SELECT id, created_at FROM operations" + (" WHERE " + " AND ".join(where) if where else "")
            sql = (
                f"SELECT o.id, o.record, {CHECKPOINT_SEQ} FROM ({page} ORDER BY created_at DESC, id DESC"
                " LIMIT ? OFFSET ?) k JOIN operations o ON o.id = k.id ORDER BY k.created_at DESC, k.id DESC"
            )
            args += [limit, offset]

        def do() -> list[Operation]:
            out = []
            for op_id, raw, seq in self._db.execute(sql, args):
                try:
                    out.append(self._load(raw, seq))
                except ValueError:
                    log.warning("operation %s: stored record is malformed; skipped", op_id)
            return out

        return await self._run(do)

    async def resolve(self, prefix: str) -> str:
        validate_id_prefix(prefix)
        if (handle := handle_of(prefix)) is not None:

            def by_handle() -> tuple[str] | None:
                try:
                    return self._db.execute("SELECT op_id FROM handles WHERE handle=?", (handle,)).fetchone()
                except sqlite3.OperationalError:  # no such table: a read-only store an older version made,
                    # whose operations have no handle (it said the database could not be read, exit 8)
                    if self._db.execute("SELECT 1 FROM sqlite_master WHERE name='handles'").fetchone() is None:
                        return None
                    raise

            row = await self._run(by_handle)
            if row is None:
                raise NotFound(f"no operation has handle {handle} in state dir {self.state_dir}")
            return str(row[0])

        def do() -> str:
            rows = self._db.execute(
                "SELECT id FROM operations WHERE id >= ? AND id < ? ORDER BY id LIMIT 6",
                (prefix, prefix + "~"),
            ).fetchall()
            if not rows:
                raise self._not_found(
                    self._db, prefix, f"no operation matches id {prefix!r} in state dir {self.state_dir}"
                )
            for (found,) in rows:  # read from the index: a damaged copy of an id is no id the user typed wrong
                try:
                    validate_id(found)
                except InvalidInput:
                    raise StoreError(
                        f"state dir {self.state_dir}: {self.db_path.name} is damaged: the index of operations holds"
                        f" {found!a}, which is no operation id (bytes changed in its pages)"
                    ) from None
            if len(rows) > 1:
                shown = ", ".join(r[0] for r in rows[:5])
                raise InvalidInput(f"id prefix {prefix!r} is ambiguous: {shown}{', ...' if len(rows) > 5 else ''}")
            return str(rows[0][0])

        return await self._run(do)

    async def counts(self) -> dict[Status, int]:
        rows = await self._run(
            lambda: self._db.execute("SELECT status, COUNT(*) FROM operations GROUP BY status").fetchall()
        )
        return {Status(s): n for s, n in rows}

    async def counts_by_type(self) -> dict[tuple[Status, str], int]:
        """Operations per (status, type), for metrics (one indexed GROUP BY)."""
        rows = await self._run(
            lambda: self._db.execute("SELECT status, type, COUNT(*) FROM operations GROUP BY status, type").fetchall()
        )
        return {(Status(s), t): n for s, t, n in rows}

    async def queue_depth(self) -> dict[Priority, int]:
        def do() -> dict[Priority, int]:
            # The rank column (written from the priority with every record): counted in the claim index,
            # no record read (json_extract over 97,000 queued records took 296 ms, this 7).
            out = {p: 0 for p in Priority}
            for rank, n in self._db.execute(
                "SELECT rank, COUNT(*) FROM operations INDEXED BY ops_claim WHERE status='queued' GROUP BY rank"
            ):
                if rank in _BY_RANK:  # else a damaged row: left out, as a listing leaves it out
                    out[_BY_RANK[rank]] += n
            return out

        return await self._run(do)

    async def queued_priorities(self) -> dict[str, Priority]:
        def do() -> dict[str, Priority]:
            rows = self._db.execute("SELECT id, rank FROM operations INDEXED BY ops_claim WHERE status='queued'")
            return {op_id: _BY_RANK[rank] for op_id, rank in rows if rank in _BY_RANK}

        return await self._run(do)

    async def transition(
        self,
        op_id: str,
        to: Status,
        *,
        epoch: int | None = None,
        expect: frozenset[Status] | None = None,
        if_cancelled: str | None = None,
        if_paused: str | None = None,
        expect_control: frozenset[ControlAction | None] | None = None,
        **fields: Any,
    ) -> Operation:
        validate_id(op_id)

        def do(conn: sqlite3.Connection) -> Operation:
            op = self._row_op(conn, op_id)
            if epoch is not None and op.epoch != epoch:
                raise StaleAttempt(f"operation {op_id}: attempt epoch {epoch} was replaced by {op.epoch}")
            if expect is not None and op.status not in expect:
                raise Conflict(refused_change(op.id, op.status, to))
            check_transition(op.status, to)
            changes = {**fields, "status": to}
            cancel_wins = if_cancelled is not None and to in CANCEL_WINS and op.status is Status.RUNNING
            pause_wins = if_paused is not None and to is Status.QUEUED and op.status is Status.RUNNING
            if expect_control is not None or cancel_wins or pause_wins:
                (control,) = conn.execute("SELECT control FROM operations WHERE id=?", (op_id,)).fetchone()
                if expect_control is not None and control not in expect_control:
                    asked = control or "nothing"
                    raise ControlChanged(f"operation {op_id}: asked to {asked} since its requests were read")
                if cancel_wins and if_cancelled is not None and control == "cancel":  # asked while it settled: it wins
                    changes.update(stopped_instead(Status.CANCELLED, if_cancelled, changes))
                elif pause_wins and if_paused is not None and control == "pause":  # a retry it keeps from running
                    changes.update(stopped_instead(Status.PAUSED, if_paused, changes))
            new = _apply(op, changes)
            _put(conn, new)
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
            new = _apply(op, fields)
            _put(conn, new)
            return new

        return await self._txn(do)

    async def delete(self, op_id: str, *, expect: frozenset[Status]) -> None:
        validate_id(op_id)

        def do(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT status FROM operations WHERE id=?", (op_id,)).fetchone()
            if row is None:
                raise NotFound(f"no operation {op_id}")
            if row[0] not in {s.value for s in expect}:
                raise Conflict(f"operation {op_id} is {row[0]}: not deleted")
            for table, column in _OWNED:
                conn.execute(f"DELETE FROM {table} WHERE {column}=?", (op_id,))

        def after() -> None:
            # Once the delete is durable: its log file, and a lock file a dead holder left.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.log_dir / f"{op_id}.jsonl")
            lock = self._lock_file(op_id)
            if op_id not in self._held and lock.exists() and (fd := try_lock(lock)) is not None:
                unlock(lock, fd)

        await self._txn(do, after=after)

    async def claim(
        self,
        worker: WorkerInfo,
        now: float,
        aging: float,
        op_id: str | None = None,
        types: frozenset[str] | None = None,
    ) -> Operation | None:
        args: list[int | float | str]
        if types is None:
            sql, args = _HEADS, [a for rank in RANKS for a in (rank, now, now)]
        else:
            of_types = _types_json(types)
            sql, args = _TYPED_HEADS, [a for rank in RANKS for a in (rank, now, now, of_types)]

        def do(conn: sqlite3.Connection) -> Operation | None:
            if _slots_full(conn):
                return None
            if op_id is not None:
                rows = conn.execute("SELECT id FROM operations WHERE id=? AND status='queued'", (op_id,)).fetchall()
            else:
                # Queue order: FIFO inside a priority; each level is worth `aging` seconds of waiting.
                # One indexed head per level (aging is constant within a level), merged here: ordering
                # the whole queue by the expression would sort every queued row per claim.
                heads = sorted((queued_at + rank * aging, cand) for rank, queued_at, cand in conn.execute(sql, args))
                rows = [(cand,) for _, cand in heads[:8]]
            for (cand,) in rows:
                if not self._lock(cand):
                    continue  # another process is still finishing it
                op = self._row_op(conn, cand)
                new = _apply(
                    op,
                    {
                        "status": Status.RUNNING,
                        "epoch": op.epoch + 1,
                        "worker": worker,
                        "started_at": now,
                        "finished_at": None,
                        "not_before": None,
                        "backoff_from": None,
                        "error": None,
                        "status_message": None,
                    },
                )
                _put(conn, new)
                return new
            return None

        def undo() -> None:
            # A lock taken for a claim that did not commit must not linger.
            for held in list(self._held):
                row = self._db.execute("SELECT status FROM operations WHERE id=?", (held,)).fetchone()
                if row is None or row[0] != "running":
                    self._unlock(held)

        return await self._txn(do, undo)

    async def get_slots(self) -> int | None:
        row = await self._run(lambda: self._db.execute("SELECT value FROM meta WHERE key='slots'").fetchone())
        return parse_slots(row[0]) if row else None

    async def set_slots(self, n: int | None) -> None:
        slots = check_slots(n)

        def do(conn: sqlite3.Connection) -> None:
            if slots is None:
                conn.execute("DELETE FROM meta WHERE key='slots'")
            else:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('slots', ?)", (str(slots),))

        await self._txn(do)

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
            # ensure_ascii=False: escaped, a lone surrogate was stored and then refused by every reader
            args = [now, *(clean_json_text(json.dumps(v, ensure_ascii=False)) for v in fields.values()), op_id, epoch]
            rows.append((f"json_set(record, '$.updated_at', ?{paths})", args))

        def do(conn: sqlite3.Connection) -> None:
            for expr, args in rows:
                conn.execute(f"UPDATE operations SET record={expr} WHERE id=? AND epoch=? AND status='running'", args)

        await self._txn(do)
