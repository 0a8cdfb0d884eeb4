"""migration_operation: a worker SIGKILLed between (or inside) migrations resumes at the next unapplied one and
never applies one twice (each is recorded in its own transaction); changed or unfit migrations are refused."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import Engine, InvalidInput, Operation, OperationSpec, Status
from engine.registry import get_handler
from tests.fixtures_cli import Cli, CliAt
from tests.fixtures_ops import (
    as_user_who_cannot_read,
    bad_params,
    done_keys,
    kill_worker_when,
    nothing_stored,
    resume,
    run_json,
    submit,
)
from tests.test_op_error_text import said_plainly
from tests.zygote import CLI, REPO

COUNT = 24


def make_migrations(d: Path) -> None:
    """Migrations that fail if run twice (CREATE TABLE) and leave a trace of each run (the log table)."""
    d.mkdir()
    (d / "0001_log.sql").write_text("-- the log; of runs\nCREATE TABLE log (n INTEGER, note TEXT);\n")
    for i in range(2, COUNT + 1):
        (d / f"{i:04d}_t{i}.sql").write_text(
            f"CREATE TABLE t{i} (x INTEGER);\n"
            f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)\n"
            f"  INSERT INTO t{i} SELECT x FROM c;\n"
            f"INSERT INTO log VALUES ({i}, 'semi;colon');\n"
            f"CREATE TRIGGER g{i} AFTER INSERT ON t{i} BEGIN INSERT INTO log VALUES (-1, 'x'); END;\n"
        )


def applied(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def contents(db: Path) -> dict:
    con = sqlite3.connect(db)
    try:
        return {
            "migrations": con.execute("SELECT name, checksum FROM schema_migrations ORDER BY rowid").fetchall(),
            "log": con.execute("SELECT n, note FROM log ORDER BY rowid").fetchall(),
            "schema": con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall(),
            "rows": [con.execute(f"SELECT COUNT(*), SUM(x) FROM t{i}").fetchone() for i in range(2, COUNT + 1)],
        }
    finally:
        con.close()


def migrated_whole(cli: Cli, tmp_path: Path) -> tuple[Path, Path, Path, dict]:
    """The test's migrations, applied by an uninterrupted run to ``whole.sqlite``: the directory, that database,
    the one a killed run is to write (``killed.sqlite``) and the uninterrupted run's record."""
    mig = tmp_path / "migrations"
    make_migrations(mig)
    whole, killed = tmp_path / "whole.sqlite", tmp_path / "killed.sqlite"
    code, ref, err = run_json(
        cli, "run", "migration_operation", "--params-json", json.dumps({"directory": str(mig), "database": str(whole)})
    )
    assert code == 0, err
    return mig, whole, killed, ref


def test_sigkill_mid_run_resumes_at_the_next_unapplied_migration(cli: Cli, tmp_path: Path) -> None:
    """No checkpoint is taken before the kill (checkpoint_interval=3600): what was applied is known from the
    migrations table alone, and the resume applies exactly the rest, equal to an uninterrupted run."""
    mig, whole, killed, ref = migrated_whole(cli, tmp_path)
    op_id = submit(
        cli, "migration_operation", {"directory": str(mig), "database": str(killed)}, "checkpoint_interval=3600"
    )
    # The worker stands still once the 6th migration is committed (tests.migration_stands): the kill comes
    # mid-run however late it comes (waiting for 6 applied, it could come after all 24 on a loaded machine).
    standing = CliAt(
        cli.state_dir, OUTLAST_PLUGINS="tests.migration_stands", OUTLAST_TEST_MIGRATION_STANDS="0006_t6.sql"
    )
    kill_worker_when(standing, op_id, lambda op: applied(killed) >= 6)
    before = applied(killed)
    assert before == 6, before
    assert cli.op(op_id).checkpoint_seq is None  # the table, not a checkpoint, says what is applied
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert contents(killed) == contents(whole)
    assert [n for n, _ in contents(killed)["log"]] == list(range(2, COUNT + 1))  # each applied once, in order
    want = {k: v for k, v in ref["result"].items() if k != "database"}
    assert {k: v for k, v in final["result"].items() if k != "database"} == want
    assert want["applied"] == [p.name for p in sorted(mig.glob("*.sql"))] and want["recorded"] == COUNT


def test_a_database_restored_between_two_attempts_gets_every_migration(cli: Cli, tmp_path: Path) -> None:
    """The database put back as it was before the run (a backup restored) between the kill and the resume: the
    migrations the first attempt applied were done items, skipped by the resume, which "completed" a database
    without them (here it failed on the first one that needed the log table)."""
    mig, whole, killed, _ = migrated_whole(cli, tmp_path)
    op_id = submit(cli, "migration_operation", {"directory": str(mig), "database": str(killed)}, "checkpoint_every=1")
    kill_worker_when(cli, op_id, lambda op: len(done_keys(cli.state_dir, op.id)) >= 3)
    assert applied(killed) < COUNT
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{killed}{suffix}").unlink(missing_ok=True)  # restored: the database of before the run, none
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert contents(killed) == contents(whole)
    assert [n for n, _ in contents(killed)["log"]] == list(range(2, COUNT + 1))  # each applied once, in order


async def test_natural_order_and_a_second_run_applies_only_new_ones(engine: Engine, tmp_path: Path) -> None:
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "10_b.sql").write_text("INSERT INTO t VALUES ('10');")
    (mig / "2_a.sql").write_text("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('2');")
    params = {"directory": str(mig), "database": str(db)}
    rec = await run(engine, params)
    assert rec.status is Status.COMPLETED and rec.result["applied"] == ["2_a.sql", "10_b.sql"], rec.error
    (mig / "11_c.sql").write_text("INSERT INTO t VALUES ('11')")  # no final semicolon
    rec = await run(engine, params)
    assert rec.status is Status.COMPLETED and rec.result["applied"] == ["11_c.sql"], rec.error
    assert rec.result["recorded"] == 3 and rec.progress.done == 3
    con = sqlite3.connect(db)
    assert [r[0] for r in con.execute("SELECT v FROM t ORDER BY rowid")] == ["2", "10", "11"]
    con.close()


async def test_a_failing_migration_is_rolled_back_with_its_record(engine: Engine, tmp_path: Path) -> None:
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "1.sql").write_text("CREATE TABLE t (v INTEGER);")
    (mig / "2.sql").write_text("INSERT INTO t VALUES (1); INSERT INTO nowhere VALUES (2);")
    rec = await run(engine, {"directory": str(mig), "database": str(db)})
    assert rec.status is Status.FAILED and "2.sql" in rec.error and "nowhere" in rec.error, rec.error
    con = sqlite3.connect(db)
    assert [r[0] for r in con.execute("SELECT name FROM schema_migrations")] == ["1.sql"]
    assert con.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0  # the first INSERT went with the failure
    con.close()
    (mig / "2.sql").write_text(f"ATTACH '{tmp_path}/other.sqlite' AS o; CREATE TABLE o.x (a);")  # another file
    rec = await run(engine, {"directory": str(mig), "database": str(db)})
    assert rec.status is Status.FAILED and "ATTACH and VACUUM INTO are refused" in rec.error, rec.error
    assert not (tmp_path / "other.sqlite").exists()


async def test_down_migrations_are_not_applied(engine: Engine, tmp_path: Path) -> None:
    """A folder in golang-migrate's layout (``N_x.up.sql`` beside ``N_x.down.sql``) had its down migrations
    applied as migrations, each just before its own up one: a down migration of data (``DELETE FROM users``)
    emptied the table, and the run said completed (an outside tester's find). They are left out, said in the
    log; a down migration alone, and a file holding its own down part (goose, dbmate), are refused."""
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "1_users.up.sql").write_text("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('alice');")
    (mig / "1_users.down.sql").write_text("DROP TABLE IF EXISTS users;")
    (mig / "2_seed.up.sql").write_text("INSERT INTO users VALUES ('bob');")
    (mig / "2_seed.down.sql").write_text("DELETE FROM users;")
    params = {"directory": str(mig), "database": str(db)}
    rec = await run(engine, params)
    assert rec.status is Status.COMPLETED, rec.error
    assert rec.result["applied"] == ["1_users.up.sql", "2_seed.up.sql"], rec.result
    con = sqlite3.connect(db)
    assert [r[0] for r in con.execute("SELECT name FROM users ORDER BY rowid")] == ["alice", "bob"]
    con.close()
    logs = " ".join(r.message for r in (await engine.store.read_logs(rec.id))[0])
    assert "2 down migration(s) left out" in logs, logs
    spec = get_handler("migration_operation")
    (mig / "3_x.down.sql").write_text("DELETE FROM users;")
    with pytest.raises(InvalidInput, match=re.escape("3_x.down.sql is a down migration with no 3_x.up.sql")):
        spec.parse_params(params)
    (mig / "3_x.down.sql").unlink()
    (mig / "3_goose.sql").write_text("-- +goose Up\nCREATE TABLE t (x);\n-- +goose Down\nDROP TABLE t;\n")
    with pytest.raises(InvalidInput, match=re.escape("3_goose.sql holds the part that undoes it (+goose Down)")):
        spec.parse_params(params)


async def test_sql_files_in_any_case_are_migrations(engine: Engine, tmp_path: Path) -> None:
    """``001_init.SQL`` (an upper-case extension, as written where file names ignore case) was left out in
    silence: a folder of them applied nothing and completed. Every case of ``.sql`` is a migration, in natural
    order with the rest; a down migration in upper case beside its up one is left out as any other."""
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "001_init.SQL").write_text("CREATE TABLE t (v TEXT);")
    (mig / "002_a.sql").write_text("INSERT INTO t VALUES ('2');")
    (mig / "010_b.Sql").write_text("INSERT INTO t VALUES ('10');")
    (mig / "011_c.UP.SQL").write_text("INSERT INTO t VALUES ('11');")
    (mig / "011_c.DOWN.SQL").write_text("DELETE FROM t;")
    (mig / "notes.txt").write_text("not a migration")
    rec = await run(engine, {"directory": str(mig), "database": str(db)})
    assert rec.status is Status.COMPLETED, rec.error
    assert rec.result["applied"] == ["001_init.SQL", "002_a.sql", "010_b.Sql", "011_c.UP.SQL"], rec.result
    con = sqlite3.connect(db)
    assert [r[0] for r in con.execute("SELECT v FROM t ORDER BY rowid")] == ["2", "10", "11"]
    con.close()
    logs = " ".join(r.message for r in (await engine.store.read_logs(rec.id))[0])
    assert "1 down migration(s) left out, as rollbacks are not applied: 011_c.DOWN.SQL" in logs, logs


def test_a_directory_that_cannot_be_listed_is_refused(cli: Cli, tmp_path: Path) -> None:
    """A folder of migrations this user cannot list was a folder of none: the run applied nothing and completed."""
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "1_a.sql").write_text("CREATE TABLE a (x);")
    params = json.dumps({"directory": str(mig), "database": str(db)})
    r = as_user_who_cannot_read(
        [*CLI, "run", "migration_operation", "--params-json", params], mig, cwd=REPO, env=cli.env
    )
    mig.chmod(0o755)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"directory {str(mig)!r}: cannot be listed (Permission denied)"), lines
    nothing_stored(cli)


async def run(engine: Engine, params: dict) -> Operation:
    op = await engine.submit(OperationSpec(type="migration_operation", params=params))
    return await engine.wait(op.id, timeout=60)


def test_bad_params(cli: Cli, tmp_path: Path) -> None:
    """One line, exit 2, nothing stored: a migration changed since it was applied (through the CLI), and
    the other refusals (through the params model the CLI and the API both use)."""
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "1_a.sql").write_text("CREATE TABLE a (x);")
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, checksum TEXT, applied_at REAL)")
    con.execute("INSERT INTO schema_migrations VALUES ('1_a.sql', ?, 0)", (hashlib.sha256(b"old").hexdigest(),))
    con.commit()
    con.close()
    ok = {"directory": str(mig), "database": str(db)}
    bad_params(cli, "migration_operation", ok, "migration 1_a.sql was changed after it was applied")
    spec = get_handler("migration_operation")
    (tmp_path / "notes.txt").write_text("not a database\n")
    (mig / "1_a.sql").write_bytes(b"old")  # unchanged now
    spec.parse_params(ok)
    for params, expect in [
        ({**ok, "directory": str(tmp_path / "nope")}, "directory"),
        ({**ok, "table": "x; DROP TABLE a"}, "table"),
        ({**ok, "database": str(tmp_path / "notes.txt")}, "not an SQLite database"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(expect)):
            spec.parse_params(params)
    (mig / "2_b.sql").write_text("CREATE TABLE b (x);\n  commit;\n")
    with pytest.raises(InvalidInput, match=re.escape("2_b.sql controls transactions itself (COMMIT)")):
        spec.parse_params(ok)
    (mig / "2_b.sql").unlink()
    # A name whose bytes are not UTF-8 failed mid-run (UnicodeEncodeError recording it), after the ones before.
    (mig / os.fsdecode(b"3_c\xff.sql")).write_text("CREATE TABLE c (x);")
    with pytest.raises(InvalidInput, match=re.escape("migration 3_c\\xff.sql: its file name is not UTF-8: rename it")):
        spec.parse_params(ok)


Locked = tuple[dict[str, str], Path, sqlite3.Connection]


@pytest.fixture
def locked(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> Iterator[Locked]:
    """A database with 1.sql applied and 2.sql pending, whose write lock another connection holds (BEGIN
    IMMEDIATE and a write, never committed) until the test ends; a grace period of 1 s for the runs."""
    monkeypatch.setenv("OUTLAST_GRACE_PERIOD", "1")
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "1.sql").write_text("CREATE TABLE t (x INTEGER);")
    params = {"directory": str(mig), "database": str(db)}
    assert cli("-q", "run", "migration_operation", "--params-json", json.dumps(params)).returncode == 0
    (mig / "2.sql").write_text("INSERT INTO t VALUES (2);")
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (0)")
    try:
        yield params, db, other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


def names(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT name FROM schema_migrations ORDER BY rowid")]
    finally:
        con.close()


def test_ctrl_c_while_another_writer_holds_the_lock_pauses_at_once(cli: Cli, locked: Locked) -> None:
    """Stopped while it waited for another writer's lock, the run was cancelled by force after the grace
    period, and its connection closed under the thread still waiting in it: the process hung until the lock
    came free, then died with SIGSEGV. Now the wait is given up at the stop: paused at once, nothing
    applied, and the resume applies the migration."""
    params, db, other = locked
    runner = cli.start("run", "migration_operation", "--params-json", json.dumps(params))
    op_id = runner.wait_line(lambda ln: " running " in ln).split()[1]
    time.sleep(1.0)  # waiting for the lock
    start = time.monotonic()
    runner.signal(signal.SIGINT)
    assert runner.wait(timeout=10) == 6, runner.err  # paused (it hung here, then crashed, before)
    assert time.monotonic() - start < 4
    assert not [ln for ln in runner.err if "Traceback" in ln or "WARNING" in ln], runner.err
    assert cli.op(op_id).status is Status.PAUSED and names(db) == ["1.sql"]
    other.execute("ROLLBACK")
    final = resume(cli, op_id)
    assert final["status"] == "completed" and final["result"]["applied"] == ["2.sql"], final
    con = sqlite3.connect(db)
    assert [r[0] for r in con.execute("SELECT x FROM t")] == [2]
    con.close()


def test_a_worker_cancelling_a_migration_that_waits_for_a_lock_lives_on(cli: Cli, locked: Locked) -> None:
    """In `outlast worker`, the same crash took every operation of the worker down with it."""
    params, db, other = locked
    op_id = submit(cli, "migration_operation", params, here=False)  # the lock is this process's
    worker = cli.start("worker", "--concurrency", "1")
    cli.wait_status(op_id, {"running"})
    time.sleep(1.0)  # waiting for the lock
    assert cli("cancel", op_id).returncode == 0
    cli.wait_status(op_id, {"cancelled"}, timeout=3)  # it stayed running until the lock came free, before
    other.execute("ROLLBACK")
    time.sleep(0.5)  # it crashed here, before
    assert worker.popen.poll() is None and names(db) == ["1.sql"]


def test_a_table_that_cannot_record_migrations_is_said_as_the_table(cli: Cli, tmp_path: Path) -> None:
    """The refusal names the table, not the directory it was found through (it read 'directory: table ...')."""
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "1_a.sql").write_text("CREATE TABLE a (x);")
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE documents (x)")
    con.commit()
    con.close()
    params = {"directory": str(mig), "database": str(db), "table": "documents"}
    bad_params(cli, "migration_operation", params, "params: table 'documents' in ")


def test_a_migration_added_out_of_order_is_refused_naming_it(cli: Cli, tmp_path: Path) -> None:
    """A file added later whose name sorts before migrations already applied (from a branch merged late) was
    applied silently after them. It is refused, at submit and at run time, naming it and the applied one."""
    mig, db = tmp_path / "m", tmp_path / "db.sqlite"
    mig.mkdir()
    (mig / "1_a.sql").write_text("CREATE TABLE a (v TEXT);")
    (mig / "3_c.sql").write_text("CREATE TABLE c (v TEXT);")
    params = {"directory": str(mig), "database": str(db)}
    code, rec, err = run_json(cli, "run", "migration_operation", "--params-json", json.dumps(params))
    assert code == 0 and rec["result"]["applied"] == ["1_a.sql", "3_c.sql"], (rec, err)
    op_id = submit(cli, "migration_operation", params)  # nothing to apply yet: accepted
    (mig / "2_b.sql").write_text("CREATE TABLE b (v TEXT);")
    said = "migration 2_b.sql is not applied yet and sorts before 3_c.sql, which is: it would run out of order"
    bad_params(CliAt(tmp_path / "other"), "migration_operation", params, said)
    r = cli("worker", "--exit-when-idle", timeout=60)
    assert r.returncode == 0, r.stderr
    op = cli.op(op_id)
    assert op.status is Status.FAILED and said in (op.error or ""), (op.status, op.error)
    assert said_plainly(op.error), op.error
    con = sqlite3.connect(db)
    assert [n for (n,) in con.execute("SELECT name FROM schema_migrations ORDER BY 1")] == ["1_a.sql", "3_c.sql"]
    assert con.execute("SELECT 1 FROM sqlite_master WHERE name='b'").fetchone() is None
    con.close()
    (mig / "2_b.sql").rename(mig / "4_b.sql")  # as the refusal asks
    code, rec, err = run_json(cli, "run", "migration_operation", "--params-json", json.dumps(params))
    assert code == 0 and rec["result"]["applied"] == ["4_b.sql"], (rec, err)
