"""migration_operation against a hostile tester: a run SIGKILLed inside a migration's statement (a hot rollback
journal, or a WAL file, left behind) resumes; a ``*.sql`` entry that is not a regular file is refused, never
left out; a table named like an SQL keyword works and one named like SQLite's own is refused, with nothing
made on disk."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
from pathlib import Path

import pytest

from engine import Engine, InvalidInput, OperationSpec, Status
from engine.operations import migration
from engine.registry import get_handler
from tests.fixtures_cli import Cli, until
from tests.fixtures_ops import bad_params, resume, run_json

ROWS = 400_000
"""Rows the long migration inserts in one statement: seconds of work, so the kill lands inside it."""


def write_migrations(d: Path) -> None:
    d.mkdir()
    (d / "1_init.sql").write_text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);\n")


def wal_database(db: Path) -> None:
    """An empty database in WAL mode (a migration cannot switch it: it runs inside a transaction)."""
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    con.close()


def add_long_ones(d: Path) -> None:
    (d / "2_fill.sql").write_text(
        f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {ROWS})\n"
        "  INSERT INTO t(v) SELECT 'row-' || x FROM c;\n"
    )
    (d / "3_more.sql").write_text("CREATE TABLE u (a); INSERT INTO u VALUES (3);\n")


def dump(db: Path) -> dict:
    con = sqlite3.connect(db)
    try:
        return {
            "migrations": con.execute("SELECT name, checksum FROM schema_migrations ORDER BY rowid").fetchall(),
            "schema": con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall(),
            "t": con.execute("SELECT COUNT(*), MIN(v), MAX(v), SUM(id) FROM t").fetchone(),
            "u": con.execute("SELECT a FROM u").fetchall(),
        }
    finally:
        con.close()


def run_migrations(cli: Cli, mig: Path, db: Path) -> dict:
    code, rec, err = run_json(
        cli, "run", "migration_operation", "--params-json", json.dumps({"directory": str(mig), "database": str(db)})
    )
    assert code == 0, err
    return rec


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
def test_sigkill_inside_a_migration_statement_resumes(cli: Cli, tmp_path: Path, wal: bool) -> None:
    """Killed inside 2_fill's statement, the run left a hot rollback journal: every resume was refused ("its
    stored params no longer validate (... attempt to write a readonly database)", exit 8) because validation
    read the database read-only, which cannot roll a hot journal back; a new run was refused too. The resume
    now rolls it back and applies 2_fill again, then 3_more: the database equals an uninterrupted run's."""
    mig, whole, killed = tmp_path / "m", tmp_path / "whole.sqlite", tmp_path / "killed.sqlite"
    write_migrations(mig)
    add_long_ones(mig)
    if wal:
        wal_database(whole)
        wal_database(killed)
    run_migrations(cli, mig, whole)
    params = {"directory": str(mig), "database": str(killed)}
    runner = cli.start("run", "migration_operation", "--params-json", json.dumps(params))
    # Inside 2_fill's statement: its uncommitted pages reach the disk (spilled into the database file, its
    # old pages in the journal; or WAL frames), more than 1_init ever writes, and it has seconds left to run.
    journal, written = (Path(f"{killed}-wal"), Path(f"{killed}-wal")) if wal else (Path(f"{killed}-journal"), killed)
    until(lambda: journal.exists() and written.exists() and written.stat().st_size > 1 << 20, 60, every=0.005)
    os.kill(runner.popen.pid, signal.SIGKILL)
    runner.wait(10)
    assert journal.exists() and journal.stat().st_size > 0  # what the kill left: a hot journal, or a WAL
    if wal:  # read-only: a reader ignores the WAL's uncommitted frames (and writes nothing)
        con = sqlite3.connect(f"file:{killed}?mode=ro", uri=True)
        assert con.execute("SELECT name FROM schema_migrations").fetchall() == [("1_init.sql",)]
        con.close()
    op_id = json.loads(cli("--json", "ls").stdout)[0]["id"]
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert final["result"]["applied"] == ["1_init.sql", "2_fill.sql", "3_more.sql"], final["result"]
    assert not Path(f"{killed}-journal").exists()
    assert dump(killed) == dump(whole)
    assert dump(whole)["t"][0] == ROWS


def test_a_hot_journal_is_rolled_back_by_validation_only(tmp_path: Path) -> None:
    """Validation reads the database read-only; it writes (rolls a hot journal back) only when that is the
    only consistent reading. A journal-less database is left byte for byte as it was."""
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "1.sql").write_text("CREATE TABLE a (x);")
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, checksum TEXT, applied_at REAL)")
    con.commit()
    con.close()
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    get_handler("migration_operation").parse_params({"directory": str(mig), "database": str(db)})
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.sqlite", "m"]


@pytest.mark.parametrize("kind", ["dangling link", "directory", "fifo"])
def test_a_sql_entry_that_is_not_a_regular_file_is_refused(cli: Cli, tmp_path: Path, kind: str) -> None:
    """2_b.sql, a dangling symbolic link (or a directory, or a FIFO, which must never be opened: it would
    hang), was left out: 1_a.sql and 3_c.sql were applied and the run completed. Refused at validation now,
    one line naming it, nothing stored, no database made."""
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "1_a.sql").write_text("CREATE TABLE a (x);")
    (mig / "3_c.sql").write_text("CREATE TABLE c (x);")
    entry = mig / "2_b.sql"
    if kind == "dangling link":
        entry.symlink_to(tmp_path / "shared" / "2_b.sql")
        expect = "migration 2_b.sql is a symbolic link to nothing"
    elif kind == "directory":
        entry.mkdir()
        expect = "migration 2_b.sql is not a regular file"
    else:
        os.mkfifo(entry)
        expect = "migration 2_b.sql is not a regular file"
    bad_params(cli, "migration_operation", {"directory": str(mig), "database": str(db)}, expect)
    assert not db.exists()
    (tmp_path / "real.sql").write_text("CREATE TABLE b (x);")
    if kind == "dangling link":  # a link to a regular file is a migration as before
        (tmp_path / "shared").mkdir()
        (tmp_path / "real.sql").rename(tmp_path / "shared" / "2_b.sql")
        rec = run_migrations(cli, mig, db)
        assert rec["result"]["applied"] == ["1_a.sql", "2_b.sql", "3_c.sql"], rec


async def test_table_named_like_a_keyword_works_and_sqlite_names_are_refused(engine: Engine, tmp_path: Path) -> None:
    """table=order passed validation, made an empty database file, then failed: 'near "order": syntax error'.
    The name is quoted now; SQLite's own names (sqlite_master) are refused before anything is made."""
    mig = tmp_path / "m"
    mig.mkdir()
    (mig / "1_a.sql").write_text("CREATE TABLE a (x);")
    spec = get_handler("migration_operation")
    db = tmp_path / "s.sqlite"
    for table in ("sqlite_master", "SQLITE_sequence", "sqlite_x"):
        with pytest.raises(InvalidInput, match=re.escape(f"table {table!r}: names beginning with sqlite_")):
            spec.parse_params({"directory": str(mig), "database": str(db), "table": table})
    assert not db.exists()
    for table in ("order", "select"):
        params = {"directory": str(mig), "database": str(tmp_path / f"{table}.sqlite"), "table": table}
        for applied in (["1_a.sql"], []):  # the second run reads the table back: nothing left to apply
            op = await engine.submit(OperationSpec(type="migration_operation", params=params))
            rec = await engine.wait(op.id, timeout=60)
            assert rec.status is Status.COMPLETED and rec.result["applied"] == applied, rec.error
            assert rec.result["recorded"] == 1
        spec.parse_params(params)  # validation reads it too


def test_sqlite_table_name_refused_by_the_cli_with_nothing_made(cli: Cli, tmp_path: Path) -> None:
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "1_a.sql").write_text("CREATE TABLE a (x);")
    params = {"directory": str(mig), "database": str(db), "table": "sqlite_master"}
    bad_params(cli, "migration_operation", params, "table 'sqlite_master': names beginning with sqlite_ are")
    assert not db.exists()


def test_a_table_name_taken_by_an_index_or_a_view_is_refused(tmp_path: Path) -> None:
    """It passed validation (PRAGMA table_info of an index is empty: "no table yet"), then the run's CREATE
    TABLE failed: "there is already an index named ..."."""
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "1_a.sql").write_text("CREATE TABLE a (x);")
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (name, checksum)")
    con.execute("CREATE INDEX i ON t (name)")
    con.execute("CREATE VIEW v AS SELECT name, checksum FROM t")
    con.commit()
    con.close()
    spec = get_handler("migration_operation")
    for table, kind in (("i", "an index"), ("V", "a view")):
        with pytest.raises(InvalidInput, match=re.escape(f"table {table!r}: {str(db)!r} has {kind} of that name")):
            spec.parse_params({"directory": str(mig), "database": str(db), "table": table})


def test_a_hot_journal_that_cannot_be_rolled_back_is_said_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the rollback itself fails (a folder the user cannot write), the one line says what is in the way,
    not only SQLite's "attempt to write a readonly database"."""
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "1.sql").write_text("CREATE TABLE a (x);")
    sqlite3.connect(db).execute("CREATE TABLE b (x)").connection.close()

    def refused(database: str, table: str, mode: str) -> dict[str, str]:
        e = sqlite3.OperationalError("attempt to write a readonly database")
        e.sqlite_errorcode = sqlite3.SQLITE_READONLY_ROLLBACK if mode == "ro" else sqlite3.SQLITE_READONLY  # type: ignore[attr-defined]
        raise e

    monkeypatch.setattr(migration, "_read_applied", refused)
    with pytest.raises(InvalidInput, match=re.escape("left db.sqlite-journal, which must be rolled back")):
        get_handler("migration_operation").parse_params({"directory": str(mig), "database": str(db)})


@pytest.mark.parametrize("listing", [("1_a.sql", "01_a.sql", "0_init.sql"), ("01_a.sql", "1_a.sql", "0_init.sql")])
def test_names_of_equal_numbers_have_one_order_whatever_the_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listing: tuple[str, ...]
) -> None:
    """``1_a.sql`` and ``01_a.sql`` are equal in natural order: they were applied in the order the directory
    listed them, which differs between file systems (a tmpfs lists the newest first), so the same migrations
    ran in two orders on two machines. The name decides between them."""
    for name in listing:
        (tmp_path / name).write_text(f"SELECT '{name}';\n")
    monkeypatch.setattr(migration, "sql_files", lambda d: [d / name for name in listing])
    assert [m.name for m in migration.load_migrations(tmp_path)] == ["0_init.sql", "01_a.sql", "1_a.sql"]
