"""Checkpoints and item failures of the SQLite store.

A checkpoint is a row of ``checkpoints`` (listing info, payload, checksum; the newest N kept) and
one of ``deltas`` (its item delta, naming the one before it; all kept), written in one transaction
by the attempt that holds the operation. A resume follows the chain of deltas by the rules both
stores share (base.Chain); rows on a damaged page are skipped, not fatal.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from ...models import Checkpoint, ItemFailure, StaleAttempt, validate_id
from ...text import clean
from ..base import Chain, ItemDelta, Ledger, decode_payload, encode_payload, restore, resume_note, seal
from .core import SqliteCore, damaged

log = logging.getLogger("outlast.store")

_ROW = "SELECT seq, info, payload, checksum FROM checkpoints WHERE op_id=? AND seq=?"
_LISTED_ROW = (
    "SELECT seq, info, payload, checksum, json_valid(CAST(payload AS TEXT)), CASE WHEN json_valid(CAST(payload AS"
    " TEXT)) THEN json_extract(CAST(payload AS TEXT), '$.next_step') END FROM checkpoints WHERE op_id=? AND seq=?"
)
"""A checkpoint's row, with whether SQLite reads its payload as JSON and, if so, its next step (JSON text stored
as a blob: SQLite reads a blob as JSONB). A payload it does not read (NaN or Infinity, which Python's JSON
writes) is decoded in Python, as before."""
_COUNT_FAILURES = "UPDATE operations SET record=json_set(record, '$.item_failures', ?) WHERE id=?"
"""The record's count of the items its failures listing holds."""


class CheckpointsMixin(SqliteCore):
    """Saving, verifying and listing checkpoints (part of LocalStore)."""

    async def save_checkpoint(self, cp: Checkpoint, delta: ItemDelta, keep: int) -> Checkpoint:
        payload = encode_payload(cp)
        now = time.time()
        # A listing of failed items: a key that is a file name with undecodable bytes is listed as text.
        fail_rows = [(cp.operation_id, clean(k), clean(e), cp.epoch, now) for k, e in delta.failed.items()]
        saved: list[Checkpoint] = []

        def do(conn: sqlite3.Connection) -> None:
            # One read for the fencing epoch, the delta before this one (to link to: the attempt holds
            # the op, so it is stable in this transaction) and whether the op has item failures.
            row = conn.execute(
                # Named, not ?1 and ?2 with a tuple: Python 3.14 refuses numbered placeholders bound by position.
                "SELECT epoch, (SELECT items FROM deltas WHERE op_id=:op AND seq=:before),"
                " EXISTS(SELECT 1 FROM failures WHERE op_id=:op), status FROM operations WHERE id=:op",
                {"op": cp.operation_id, "before": cp.seq - 1},
            ).fetchone()
            if row is None:  # deleted under its attempt (by hand: `outlast rm` refuses a running one)
                raise StaleAttempt(
                    f"operation {cp.operation_id}: attempt epoch {cp.epoch} is over: the operation is gone from the"
                    " store; its writes are refused"
                )
            epoch, before, had_failures, status = row
            if epoch != cp.epoch:
                raise StaleAttempt(
                    f"operation {cp.operation_id}: checkpoint from epoch {cp.epoch}, held by epoch {epoch}"
                )
            if status != "running":  # the attempt has settled: a task its handler left running writes on
                raise StaleAttempt(
                    f"operation {cp.operation_id}: attempt epoch {epoch} is over: the operation is {status} now;"
                    " its writes are refused"
                )
            sealed = seal(cp, delta, before if cp.seq > 1 else None, payload)
            done = sealed.checkpoint
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES(?,?,?,?,?,?,?)",
                (cp.operation_id, cp.seq, cp.epoch, cp.created_at, sealed.info, payload, done.checksum),
            )
            conn.execute("INSERT OR REPLACE INTO deltas VALUES(?,?,?)", (cp.operation_id, cp.seq, sealed.delta))
            if fail_rows:
                conn.executemany("INSERT OR REPLACE INTO failures VALUES(?,?,?,?,?)", fail_rows)
            has_failures = bool(fail_rows) or bool(had_failures)
            if delta.done and has_failures:
                # An item that failed before and is done now is no longer a failure.
                conn.execute(
                    "DELETE FROM failures WHERE op_id=? AND key IN (SELECT value FROM json_each(?))",
                    (cp.operation_id, json.dumps([clean(k) for k in delta.done])),
                )
            if has_failures:
                n_fail = conn.execute("SELECT COUNT(*) FROM failures WHERE op_id=?", (cp.operation_id,)).fetchone()[0]
                conn.execute(_COUNT_FAILURES, (n_fail, cp.operation_id))
            if cp.seq > keep:
                conn.execute("DELETE FROM checkpoints WHERE op_id=? AND seq <= ?", (cp.operation_id, cp.seq - keep))
            saved[:] = [done]

        await self._txn(do)
        return saved[0]

    def _chain(self, op_id: str) -> Chain:
        """The operation's deltas, followed from seq 1 until a link breaks (or a page cannot be read)."""
        conn = self._db

        def rows() -> Iterator[tuple[Any, Any]]:
            try:
                yield from conn.execute("SELECT seq, items FROM deltas WHERE op_id=? ORDER BY seq", (op_id,))
            except sqlite3.DatabaseError as e:
                if not damaged(e):  # a read that failed this time (an I/O error): no break in the chain
                    raise
                log.warning("operation %s: item deltas unreadable after some point (%s)", op_id, e)

        return Chain(rows())

    def _checkpoint_rows(self, op_id: str, seq: int | None, next_step: bool = False) -> Iterator[tuple[Any, ...]]:
        """(seq, info, payload, checksum) newest first, one payload read at a time (a state of 50 MB, five
        kept: a resume or a listing held all five at once); rows on an unreadable page are left out.
        ``next_step``: each with its payload's next step too, read by SQLite's JSON functions (a listing
        decoded each whole payload in Python for it, several times the payload's size)."""
        conn = self._db
        sql = "SELECT seq FROM checkpoints WHERE op_id=?"
        args: list[Any] = [op_id]
        if seq is not None:
            sql += " AND seq <= ?"
            args.append(seq)
        try:
            seqs = [s for (s,) in conn.execute(sql + " ORDER BY seq DESC", args)]
        except sqlite3.DatabaseError as e:
            if not damaged(e):  # a read that failed this time: not a checkpoint to skip
                raise
            # A damaged page: the seqs one by one, keeping what is readable.
            seqs = list(range(seq if seq is not None else self._max_seq(op_id), 0, -1))
        one = _LISTED_ROW if next_step else _ROW
        for s in seqs:
            try:
                row = conn.execute(one, (op_id, s)).fetchone()
            except sqlite3.DatabaseError as e:
                if not damaged(e):
                    raise
                continue
            if row is not None:
                yield row

    def _max_seq(self, op_id: str) -> int:
        conn = self._db
        for table in ("checkpoints", "deltas"):
            try:
                row = conn.execute(f"SELECT MAX(seq) FROM {table} WHERE op_id=?", (op_id,)).fetchone()
            except sqlite3.DatabaseError as e:
                if not damaged(e):
                    raise
                continue
            if row and isinstance(row[0], int):
                return row[0]
        return 0

    async def load_checkpoint(self, op_id: str, seq: int | None = None) -> tuple[Checkpoint, Ledger] | None:
        validate_id(op_id)

        def do() -> tuple[Checkpoint, Ledger] | None:
            rows = self._checkpoint_rows(op_id, seq)
            newest = next(rows, None)
            if newest is None:
                return None
            chain = self._chain(op_id)
            skipped: list[str] = []
            found: tuple[Checkpoint, Ledger] | None = None
            for s, info, payload, cs in itertools.chain([newest], rows):
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
            for s, info, payload, cs, read, step in self._checkpoint_rows(op_id, None, next_step=True):
                try:
                    cp = Checkpoint.model_validate_json(info)
                except ValueError:
                    continue
                valid = chain.verifies(s, payload, cs)
                next_step = step if valid and isinstance(step, str) else None
                # SQLite wrote a lone surrogate's escape (a file name's byte that is not UTF-8) as bytes that are
                # not UTF-8 either, and reads no NaN: Python's decoder gives those back as they were saved.
                if valid and (not read or (next_step is not None and "\ufffd" in next_step)):
                    next_step = None
                    with contextlib.suppress(ValueError):
                        next_step = decode_payload(payload).get("next_step")
                out.append(cp.model_copy(update={"valid": valid, "next_step": next_step}))
            return out

        return await self._run(do)

    async def discard_checkpoints_after(self, op_id: str, seq: int, failed: dict[str, str] | None = None) -> None:
        now = time.time()
        keep = {clean(k): clean(e) for k, e in (failed or {}).items()}

        def do(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM checkpoints WHERE op_id=? AND seq > ?", (op_id, seq))
            conn.execute("DELETE FROM deltas WHERE op_id=? AND seq > ?", (op_id, seq))
            if failed is not None:
                try:
                    _list_failures(conn, op_id, keep, now)
                except sqlite3.DatabaseError as e:  # a damaged page of the listing: the cut above still holds
                    if not damaged(e):
                        raise
                    log.warning("operation %s: item failures not listed anew after the resume point (%s)", op_id, e)

        await self._txn(do)

    async def item_failures(self, op_id: str) -> list[ItemFailure]:
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT key, error, attempt, at FROM failures WHERE op_id=? ORDER BY at", (op_id,)
            ).fetchall()
        )
        return [ItemFailure(key=k, error=e, attempt=a, at=t) for k, e, a, t in rows]


def _plain(e: BaseException) -> str:
    """An error's message fit for one log line: printable, short (stored bytes may be anything)."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(e).splitlines()[0] if str(e)) or type(e).__name__
    return text[:120]


def _list_failures(conn: sqlite3.Connection, op_id: str, keep: dict[str, str], now: float) -> None:
    """List exactly ``keep`` (key -> error) as the operation's item failures: a failure listed already
    keeps its row, one missing is added under the operation's current attempt."""
    listed = {k for (k,) in conn.execute("SELECT key FROM failures WHERE op_id=?", (op_id,))}
    conn.executemany("DELETE FROM failures WHERE op_id=? AND key=?", [(op_id, k) for k in listed - set(keep)])
    row = conn.execute("SELECT epoch FROM operations WHERE id=?", (op_id,)).fetchone()
    epoch = row[0] if row else 0
    added = [(op_id, k, e, epoch, now) for k, e in keep.items() if k not in listed]
    conn.executemany("INSERT INTO failures VALUES(?,?,?,?,?)", added)
    if listed or keep:
        conn.execute(_COUNT_FAILURES, (len(keep), op_id))
