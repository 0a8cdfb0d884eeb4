"""The SQLite store's schema across versions: a store made before today's indexes is brought up to them
when opened, keeps its queue order, and stays readable by the statements older versions run."""

from __future__ import annotations

import ast
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest

from engine.models import Operation, Priority, Status, StoreError, WorkerInfo, new_id
from engine.store import LocalStore
from engine.store.sqlite import core
from engine.store.sqlite.core import sqlite_unfit
from engine.store.sqlite.schema import SCHEMA


def _op(priority: Priority, at: float) -> Operation:
    return Operation(id=new_id(), type="demo", priority=priority, created_at=at, queued_at=at, updated_at=at)


def _indexes(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"))


async def test_a_store_with_the_old_claim_indexes_gets_todays_and_claims_in_the_same_order(tmp_path: Path) -> None:
    """The claim's index was every operation's and ``ops_status_queued`` was beside it: both were written at
    every status change. Opened now, the store holds the partial index only, in one transaction; claims still
    come by priority then age, the queue depth is the same, and the statement an older version claims with
    (``INDEXED BY ops_claim`` for ``status='queued'``) still runs on the changed file."""
    state = tmp_path / "state"
    store = LocalStore(state)
    await store.open()
    now = time.time()
    ops = [_op(p, now - 100 + i) for i, p in enumerate([Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.NORMAL])]
    for op in ops:
        await store.create(op)
    await store.close()
    db = state / "outlast.db"
    with sqlite3.connect(db) as conn:  # as a store made by the version before this one
        conn.execute("DROP INDEX ops_claim")
        conn.execute("CREATE INDEX ops_claim ON operations(status, rank, queued_at, id)")
        conn.execute("CREATE INDEX ops_status_queued ON operations(status, queued_at)")
    assert "WHERE" not in _indexes(db)["ops_claim"]

    store = LocalStore(state)
    await store.open()
    try:
        indexes = _indexes(db)
        assert "ops_status_queued" not in indexes and "WHERE status='queued'" in indexes["ops_claim"], indexes
        assert (await store.queue_depth()) == {Priority.HIGH: 1, Priority.NORMAL: 2, Priority.LOW: 1}
        worker = WorkerInfo(host="test", pid=os.getpid())
        claimed = []
        for _ in ops:
            got = await store.claim(worker, time.time(), 1e9)  # aging past any wait: priority first
            assert got is not None
            claimed.append(got.id)
            await store.transition(got.id, Status.COMPLETED, epoch=got.epoch)
        assert claimed == [ops[2].id, ops[1].id, ops[3].id, ops[0].id]
        assert await store.claim(worker, time.time(), 1e9) is None
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE operations SET status='queued' WHERE id=?", (ops[0].id,))
        older = (
            "SELECT queued_at, id FROM operations INDEXED BY ops_claim WHERE status='queued' AND rank=?"
            " ORDER BY queued_at, id LIMIT 8"
        )
        assert [r[1] for r in conn.execute(older, (Priority.LOW.rank,))] == [ops[0].id]


async def test_a_new_store_is_made_current_and_opening_it_again_changes_nothing(tmp_path: Path) -> None:
    """What a new store is made with is what an opened one is brought up to: the two never disagree (else
    every open would drop and build an index again, a write each time)."""
    state = tmp_path / "state"
    db = state / "outlast.db"

    def layout() -> list[tuple[str, int, str]]:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT name, rootpage, sql FROM sqlite_master ORDER BY name").fetchall()

    async def open_and_close() -> None:
        store = LocalStore(state)
        await store.open()
        await store.close()

    await open_and_close()
    first = layout()
    await open_and_close()
    assert layout() == first
    names = {name: sql for name, _root, sql in first}
    assert "ops_status_queued" not in names and "WHERE status='queued'" in names["ops_claim"]
    assert all(name in SCHEMA for name in names if not name.startswith("sqlite_"))


class _NoJson:
    """A connection to an SQLite built without its JSON functions (before 3.38 they were a build option)."""

    def execute(self, sql: str) -> None:
        raise sqlite3.OperationalError("no such function: json_set")

    def close(self) -> None:
        pass


async def test_an_sqlite_without_json_functions_is_refused_in_one_line_before_anything_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's statements need ``json_set`` and ``json_each``: with an SQLite lacking them the store
    was made and then every write failed with "no such function". Now opening says so first."""
    assert sqlite_unfit() is None  # this machine's SQLite has them
    why = sqlite_unfit(lambda _path: _NoJson())  # type: ignore[arg-type, return-value]
    assert why is not None and f"SQLite {sqlite3.sqlite_version} has no JSON functions" in why
    assert "--store redis://" in why
    monkeypatch.setattr(core, "unfit_here", lambda: why)
    state = tmp_path / "state"
    with pytest.raises(StoreError) as refused:
        await LocalStore(state).open()
    assert str(refused.value) == f"state dir {state}: {why}" and "\n" not in str(refused.value)
    assert not state.exists()


def _store_strings(pattern: str) -> list[str]:
    """Every string constant of the local store's modules that ``pattern`` finds (case-insensitive)."""
    found = re.compile(pattern, re.IGNORECASE)
    root = Path(core.__file__).parent
    out = []
    for path in [*root.glob("*.py"), root.parent / "quick.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and found.search(node.value):
                out.append(f"{path.name}:{node.lineno}: {node.value[:80]!r}")
    return out


def test_the_local_store_asks_nothing_of_sqlite_newer_than_rhel_9_has() -> None:
    """RHEL 9 (and Rocky, Alma) build Python's sqlite3 against SQLite 3.34, where ``RETURNING`` (3.35),
    ``DROP COLUMN`` (3.35), ``->>`` and ``unixepoch()`` (3.38) fail: every submit failed on the first."""
    assert not _store_strings(r"\bRETURNING\b|->>|\bunixepoch\s*\(|\bDROP\s+COLUMN\b")


def test_the_local_store_binds_no_numbered_placeholder_by_position() -> None:
    """``?1``, ``?2`` bound from a tuple: a DeprecationWarning on Python 3.12 and 3.13 and an error
    (ProgrammingError) from 3.14, where every checkpoint would have failed. Named placeholders are bound
    from a dict."""
    assert not _store_strings(r"\?\d")


def _everything(d: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every path under ``d`` (``d`` itself too): its bytes (None for a directory) and its mtime."""
    found = {".": (None, d.stat().st_mtime_ns)}
    for p in d.rglob("*"):
        found[str(p.relative_to(d))] = (None if p.is_dir() else p.read_bytes(), p.stat().st_mtime_ns)
    return found


async def test_a_state_dir_of_a_newer_outlast_is_refused_and_changed_in_nothing(tmp_path: Path) -> None:
    """Opening a state dir written by a newer Outlast rewrote outlast.db-owner (the WAL's owner note)
    before the refusal: a command refused for bad input still changed a file. Now nothing is changed."""
    state = tmp_path / "state"
    store = LocalStore(state)
    await store.open()
    await store.close()
    with sqlite3.connect(state / "outlast.db") as conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.close()
    before = _everything(state)
    time.sleep(0.01)
    with pytest.raises(StoreError, match="newer Outlast"):
        await LocalStore(state).open()
    assert _everything(state) == before


def _version(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])


async def test_a_store_of_schema_1_is_upgraded_by_a_writer_so_older_versions_refuse_it(tmp_path: Path) -> None:
    """Records of schema 2 are ones older versions (all of them refuse a newer schema) ran wrongly: every
    operation failed with a validation error under a worker before 2026-12-01, and beside any older process
    the crash-loop guard never stopped. A process that opens a store to write marks it 2; a read-only one reads
    a store of 1 as it is, changing nothing."""
    from engine.store.sqlite.schema import SCHEMA_VERSION

    assert SCHEMA_VERSION == 2
    state = tmp_path / "state"
    store = LocalStore(state)
    await store.open()
    op = _op(Priority.NORMAL, time.time())
    await store.create(op)
    await store.close()
    db = state / "outlast.db"
    assert _version(db) == "2"  # a new store
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    conn.close()
    state.chmod(0o555)  # its owner made it read-only: read as it is
    try:
        reader = LocalStore(state)
        await reader.open()
        assert (await reader.get(op.id)).id == op.id
        await reader.close()
        assert _version(db) == "1"
    finally:
        state.chmod(0o700)
    writer = LocalStore(state)
    await writer.open()
    assert (await writer.get(op.id)).id == op.id
    await writer.close()
    assert _version(db) == "2"


def test_a_handle_asked_of_a_read_only_store_an_older_version_made_is_not_found(tmp_path: Path) -> None:
    """A store made before handles existed, read-only (not brought up to date): `show 1` said the database
    could not be read ("no such table: handles", exit 8); its operations have no handle: not found, exit 3."""
    from engine.exitcodes import ExitCode
    from tests.fixtures_cli import CliAt

    state = tmp_path / "state"
    cli = CliAt(state)
    made = cli("-q", "submit", "demo")
    assert made.returncode == 0, made.stderr
    with sqlite3.connect(state / "outlast.db") as conn:
        conn.execute("DROP TABLE handles")
        conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    conn.close()
    state.chmod(0o555)
    try:
        r = cli("show", "1")
        assert r.returncode == ExitCode.NOT_FOUND, (r.returncode, r.stderr)
        assert "no operation has handle 1" in r.stderr, r.stderr
        assert cli("show", made.stdout.strip()).returncode == 0
    finally:
        state.chmod(0o700)
