"""The SQLite store's schema: tables, indexes and the version a database file says it was written with.

Public so that tools (benchmarks, an inspection script) build or read the same tables as the store.
One row per operation holds the record as JSON (``record``) beside the columns the queue and listings
sort and filter on; checkpoints keep their listing info, payload and checksum, and ``deltas`` every
checkpoint's item delta (all kept: the resume point's done set is their union); ``failures`` the items
that failed and are not done since; ``handles`` the short number each operation was given (AUTOINCREMENT:
never reused after a delete, so a handle someone wrote down never names another operation).
"""

from __future__ import annotations

import sqlite3

from ...models import Priority
from .. import quick

SCHEMA_VERSION = 2
"""The newest schema this version reads and writes; a database file with a newer one is refused (every
version refuses one newer than its own, in one line, before anything is changed).

2 (2026-12-07): the tables of 1, with records older versions mishandle: a stored timeout profile with
``checkpoint_every``, which versions before 2026-12-01 refuse (each operation they took ended ``failed``
with a validation error), and fields they drop when they rewrite a record (``crashes`` and ``crash_seq``:
beside one older worker, or one older ``outlast ls``, the crash-loop guard never stopped; ``orphaned_epoch``,
``handle``, ``idempotency_key``). A store is upgraded to it by the first process of this version that opens it
to write; older versions then refuse it, where they ran its work wrongly.

Raise it when a record or table changes in a way an older version would mishandle (a field it must not drop,
a value it refuses); what older versions read and write correctly (a table or index they do not use) does not
need it."""

SCHEMA = """
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
CREATE INDEX IF NOT EXISTS ops_claim ON operations(status, rank, queued_at, id) WHERE status='queued';
CREATE INDEX IF NOT EXISTS ops_type_created ON operations(type, created_at);
CREATE INDEX IF NOT EXISTS ops_created ON operations(created_at);
CREATE INDEX IF NOT EXISTS ops_control ON operations(control) WHERE control IS NOT NULL;
CREATE INDEX IF NOT EXISTS ops_status_created ON operations(status, created_at, id);
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
CREATE TABLE IF NOT EXISTS handles(handle INTEGER PRIMARY KEY AUTOINCREMENT, op_id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS idempotency(key TEXT PRIMARY KEY, op_id TEXT NOT NULL UNIQUE) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failures(
    op_id TEXT NOT NULL,
    key TEXT NOT NULL,
    error TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY(op_id, key)
) WITHOUT ROWID;
"""

CHECKPOINT_SEQ = quick.CHECKPOINT_SEQ
"""The newest checkpoint's seq of operation ``o`` (derived when read: a checkpoint never rewrites the record);
one text with the quick read's."""

RANKS = sorted({p.rank for p in Priority})
"""The ``rank`` column's values, highest priority first."""


def init_schema(conn: sqlite3.Connection) -> None:
    """The whole schema in one transaction, the version row last: all of it or none (idempotent)."""
    conn.executescript(
        f"BEGIN IMMEDIATE;{SCHEMA};INSERT OR IGNORE INTO meta VALUES('schema_version', '{SCHEMA_VERSION}');COMMIT;"
    )


ADDED = {
    "handles": "CREATE TABLE IF NOT EXISTS handles(handle INTEGER PRIMARY KEY AUTOINCREMENT,"
    " op_id TEXT NOT NULL UNIQUE)",
    "ops_status_created": "CREATE INDEX IF NOT EXISTS ops_status_created ON operations(status, created_at, id)",
    "idempotency": "CREATE TABLE IF NOT EXISTS idempotency(key TEXT PRIMARY KEY, op_id TEXT NOT NULL UNIQUE)"
    " WITHOUT ROWID",
}
"""What schema 1 gained after stores were made with it: additive, so older versions still read the file
(their operations just have no handle; the index and the idempotency keys they do not use). The index
lists one status newest first without sorting all of it: the newest 100 of 100,000 queued took 360 ms,
which a dashboard read every second while the queue moved."""

CLAIM_INDEX = "CREATE INDEX ops_claim ON operations(status, rank, queued_at, id) WHERE status='queued'"
"""The claim's index holds the queued operations only (it was every operation's), and ``ops_status_queued``
(status, queued_at) is gone, which nothing read that ``ops_claim`` or ``ops_status_created`` did not read as
well: every index an operation's row is in is written again when its status changes. A claim and a settle
wrote 12.6 WAL pages, now 6.4; a submit 11.8, now 10.7. Older versions read a store changed so: their
statements name ``ops_claim`` only where they ask for ``status='queued'``, which a partial index serves."""


def _changes(present: dict[str, str | None]) -> list[str]:
    """The statements that bring a store whose tables and indexes are ``present`` (name -> SQL) up to today."""
    out = [sql for name, sql in ADDED.items() if name not in present]
    if "ops_status_queued" in present:
        out.append("DROP INDEX ops_status_queued")
    if "WHERE" not in (present.get("ops_claim") or ""):
        out += ["DROP INDEX IF EXISTS ops_claim", CLAIM_INDEX]
    return out


def ensure_current(conn: sqlite3.Connection) -> None:
    """Bring a store made before today's schema up to it (``ADDED``, ``CLAIM_INDEX``, the version row): one
    transaction, nothing when it is current."""
    changes = _changes(dict(conn.execute("SELECT name, sql FROM sqlite_master").fetchall()))
    if (schema_version(conn) or 0) < SCHEMA_VERSION:
        changes.append(f"UPDATE meta SET value='{SCHEMA_VERSION}' WHERE key='schema_version'")
    if changes:
        try:
            conn.executescript(f"BEGIN IMMEDIATE;{';'.join(changes)};COMMIT;")
        except sqlite3.Error:
            if conn.in_transaction:  # a read-only or full disk: leave no transaction open behind
                conn.execute("ROLLBACK")
            raise


def schema_version(conn: sqlite3.Connection) -> int | None:
    """The version the database says it was written with (None: no version row)."""
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else None
