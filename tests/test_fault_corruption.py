"""Fault suite (b): corrupt what the local store reads, then resume with the real command line.

Every case ends in one of two ways: a correct resume (the counted-item operation completes with the
result of an uninterrupted run: every item counted exactly once), or one clear line on stderr with
a documented exit code. Never a wrong "completed", never a traceback.

Randomised cases are seeded; the seed is printed (and named in every assertion). ``OUTLAST_SOAK=1``
runs many rounds (``OUTLAST_SOAK_ROUNDS`` of random bytes, 200 by default).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from engine import Engine, Operation, OperationSpec, Settings, open_store
from engine.exitcodes import ExitCode
from engine.models import Checkpoint, WorkerInfo
from engine.store.base import ItemDelta
from tests import zygote
from tests.fixtures_cli import Cli, until

P = ["--plugin", "tests.ops_for_tests"]
SOAK = bool(os.environ.get("OUTLAST_SOAK"))
SEED = int(os.environ.get("OUTLAST_FAULT_SEED") or random.randrange(1 << 30))
"""One seed for the randomised cases of a run (OUTLAST_FAULT_SEED=N repeats a run)."""
ROUNDS = int(os.environ.get("OUTLAST_SOAK_ROUNDS") or 200) if SOAK else 4
"""Rounds of random bytes (read here: each test's environment is cleared of OUTLAST_ variables)."""
DOCUMENTED = {int(c) for c in ExitCode}
EVERY = 10
"""Items per explicit checkpoint: checkpoint k holds items 0 .. k*EVERY-1."""


# ---- helpers --------------------------------------------------------------------------------------


def submit_ledger(cli: Cli, n: int, tmp_path: Path, stall_after: list[int], seconds: float = 0.0) -> str:
    """A counted-item operation that checkpoints every EVERY items (and not on a timer); its first attempts
    (one per ``stall_after`` entry: those killed mid-run) take ``seconds`` an item and wait for their kill once
    they wrote that many checkpoints, so that the kill cannot come too late; later ones run at full speed."""
    r = cli(
        *P,
        "submit",
        "ledger",
        "-p",
        f"items={n}",
        "-p",
        f"seconds={seconds}",
        "-p",
        f"slow_attempts={len(stall_after)}",
        "-p",
        f"stall_after={json.dumps(stall_after)}",
        "-p",
        f"explicit_every={EVERY}",
        "-p",
        f"log_file={tmp_path / 'items.log'}",
        "--profile",
        "checkpoint_interval=3600",
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def db(cli: Cli) -> sqlite3.Connection:
    return sqlite3.connect(cli.state_dir / "outlast.db", timeout=30)


def epoch(cli: Cli, op_id: str) -> int:
    with db(cli) as conn:
        return conn.execute("SELECT epoch FROM operations WHERE id=?", (op_id,)).fetchone()[0]


def attempt_checkpoints(cli: Cli, op_id: str, after_epoch: int) -> int:
    """Checkpoints written by the operation's running attempt, if that is newer than ``after_epoch``."""
    with db(cli) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM checkpoints c JOIN operations o ON o.id = c.op_id"
            " WHERE c.op_id=? AND c.epoch = o.epoch AND o.status='running' AND o.epoch > ?",
            (op_id, after_epoch),
        ).fetchone()
    return row[0]


def run_and_kill(cli: Cli, args: list[str], op_id: str, checkpoints: int) -> None:
    """Run ``args`` in the background and SIGKILL it once its attempt wrote ``checkpoints`` checkpoints."""
    before = epoch(cli, op_id)
    proc = cli.start(*P, *args)
    try:
        until(
            lambda: attempt_checkpoints(cli, op_id, before) >= checkpoints or proc.popen.poll() is not None,
            60,
            0.02,
            f"{checkpoints} checkpoints of {op_id}",
        )
        assert proc.popen.poll() is None, f"{args} ended early: {proc.err}"
    finally:
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(10)


def resume(cli: Cli, op_id: str) -> subprocess.CompletedProcess:
    return cli(*P, "resume", op_id, timeout=120)


def assert_correct_or_one_line(
    cli: Cli, r: subprocess.CompletedProcess, op_id: str, n: int, why: str
) -> Operation | None:
    """The outcome contract: completed with the uninterrupted result, or one clear line and a documented code."""
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, f"{why}\n{r.stderr}"
    assert r.returncode in DOCUMENTED, f"{why}: exit {r.returncode}\n{r.stderr}"
    if r.returncode == ExitCode.OK:
        op = cli.op(op_id)
        assert op.status.value == "completed", f"{why}: {op.status}"
        assert op.result == {"sum": sum(range(n))}, f"{why}: wrong result {op.result} (an item lost or counted twice)"
        assert op.progress.done == n and op.total_items == n, f"{why}: completed at {op.progress.done}/{op.total_items}"
        return op
    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    assert last.startswith("outlast: ") or r.returncode in (ExitCode.FAILED, ExitCode.PAUSED), f"{why}: {r.stderr}"
    assert all(ch.isprintable() for ch in last), f"{why}: raw bytes in {last!r}"
    return None


def kill_after(cli: Cli, op_id: str, checkpoints: int) -> None:
    run_and_kill(cli, ["_run-one", op_id], op_id, checkpoints)


# ---- item 1: one chain only ---------------------------------------------------------------------


def test_restart_from_scratch_abandons_the_old_chain(cli: Cli, tmp_path: Path) -> None:
    """Every checkpoint fails to verify: the resume restarts from scratch. Killed again, the next resume
    must follow the new chain only (it merged the abandoned deltas: 'completed at 90/120', exit 0)."""
    n = 120
    op_id = submit_ledger(cli, n, tmp_path, [5, 2])
    kill_after(cli, op_id, 5)  # old chain: >= 50 items
    with db(cli) as conn:
        conn.execute("UPDATE checkpoints SET payload=? WHERE op_id=?", (b'{"state":{"sum":"garbage"}}', op_id))
    run_and_kill(cli, ["resume", op_id], op_id, 2)  # new chain from scratch: ~20 items
    r = resume(cli, op_id)
    assert r.returncode == 0, r.stderr
    assert_correct_or_one_line(cli, r, op_id, n, "restart from scratch, killed, resumed")


# ---- item 2: the checksum covers the whole chain -------------------------------------------------


@pytest.mark.parametrize("damage", ["edit", "garbage", "delete", "edit_newest_info"])
def test_damaged_delta_falls_back_to_an_intact_checkpoint(cli: Cli, tmp_path: Path, damage: str) -> None:
    """An older checkpoint's delta edited, garbled or deleted: resume from the newest checkpoint whose
    whole chain verifies (or from scratch, said in one line), and complete with the right result."""
    n = 100
    op_id = submit_ledger(cli, n, tmp_path, [4])
    kill_after(cli, op_id, 4)
    with db(cli) as conn:
        if damage == "edit":  # valid JSON, two items fewer
            (raw,) = conn.execute("SELECT items FROM deltas WHERE op_id=? AND seq=2", (op_id,)).fetchone()
            edited = bytes(raw).replace(b'"10","11",', b"")
            assert edited != bytes(raw)
            conn.execute("UPDATE deltas SET items=? WHERE op_id=? AND seq=2", (edited, op_id))
        elif damage == "garbage":
            conn.execute("UPDATE deltas SET items=? WHERE op_id=? AND seq=2", (b"\x00\xff{[garbage", op_id))
        elif damage == "delete":
            conn.execute("DELETE FROM deltas WHERE op_id=? AND seq=2", (op_id,))
        else:  # the newest checkpoint says fewer items were processed
            conn.execute(
                "UPDATE checkpoints SET info=json_set(info, '$.processed_items', 3) WHERE op_id=?"
                " AND seq=(SELECT MAX(seq) FROM checkpoints WHERE op_id=?)",
                (op_id, op_id),
            )
    r = resume(cli, op_id)
    assert r.returncode == 0, r.stderr
    assert_correct_or_one_line(cli, r, op_id, n, f"delta damage {damage}")
    warned = [ln for ln in r.stderr.splitlines() if "checkpoint" in ln]
    # One line says what was skipped and where the resume starts (the listing info is not read).
    assert len(warned) == (damage != "edit_newest_info"), r.stderr


def test_a_read_that_fails_this_time_is_not_damage_and_cuts_no_chain(cli: Cli, tmp_path: Path) -> None:
    """The item deltas' read failing once (an I/O error, not a damaged page: tests.store_flaky fails the first
    statement that reads them) was taken for damage: the chain read as broken at its start, the resume began
    from scratch and discarded every checkpoint after it for good (a race on a failing disk ran 44 items
    again). Now the attempt is queued again after a backoff, as when the machine runs short, and goes on from
    the newest checkpoint; left interrupted, nothing would have resumed it."""
    n = 100
    op_id = submit_ledger(cli, n, tmp_path, [4])
    kill_after(cli, op_id, 4)
    # Marked interrupted first: the mark reads the checkpoints (their deltas too) for the progress it writes,
    # which would take the one failure meant for the resume's read.
    assert cli(*P, "ls").returncode == 0
    fails = tmp_path / "reads-fail"
    fails.touch()
    flaky = {
        "OUTLAST_TEST_FLAKY_FLAG": str(fails),
        "OUTLAST_TEST_FLAKY_ALL": "1",
        "OUTLAST_TEST_FLAKY_P": "1",
        "OUTLAST_TEST_FLAKY_ONCE": "1",
        "OUTLAST_TEST_FLAKY_MATCH": "FROM deltas",
    }
    ran = (tmp_path / "items.log").read_text().split()
    r = cli(*P, "--plugin", "tests.store_flaky", "resume", op_id, env={**cli.env, **flaky}, timeout=120)
    assert not fails.exists(), "no read of the deltas failed"
    assert_correct_or_one_line(cli, r, op_id, n, "resumed through a read that failed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "retry 1/4" in r.stdout + r.stderr and "the store failed: interrupted" in r.stdout + r.stderr
    again = (tmp_path / "items.log").read_text().split()[len(ran) :]
    assert "0" not in again and len(again) < n - 30, "resumed from scratch"


# ---- both stores: the same chain rules ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "redis"])
@pytest.mark.parametrize("damage", ["edit", "garbage", "delete", "restart"])
async def test_both_stores_follow_one_chain(
    request: pytest.FixtureRequest, settings: Settings, kind: str, damage: str
) -> None:
    """Five checkpoints; delta 3 edited (still valid JSON), garbled or deleted: checkpoints 3-5 no longer
    verify and the resume point is 2 with exactly the items of deltas 1-2. ``restart``: a new chain
    (seq 1 again) over the old one: the old checkpoints 2-5 are fenced off, not merged."""
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        store = open_store(server.url, namespace="t", checkpoint_mirror=None)
    else:
        store = open_store(settings.state_dir)
    async with Engine(store=store, settings=settings, run_queue=False) as engine:
        op_id = (await engine.submit(OperationSpec(type="ledger", params={"items": 3}))).id
        claimed = await store.claim(WorkerInfo(host="t", pid=1), time.time(), 300.0, op_id=op_id)
        assert claimed is not None

        async def save(seq: int, keys: list[str]) -> None:
            cp = Checkpoint(
                operation_id=op_id,
                seq=seq,
                epoch=claimed.epoch,
                created_at=time.time(),
                state={"seq": seq},
                processed_items=2 * seq,
            )
            await store.save_checkpoint(cp, ItemDelta(done=keys), 10)

        for seq in range(1, 6):
            await save(seq, [f"k{seq}a", f"k{seq}b"])
        if damage == "restart":
            await save(1, ["new"])
        elif kind == "local":
            with sqlite3.connect(settings.state_dir / "outlast.db") as conn:
                if damage == "delete":
                    conn.execute("DELETE FROM deltas WHERE op_id=? AND seq=3", (op_id,))
                else:
                    (raw,) = conn.execute("SELECT items FROM deltas WHERE op_id=? AND seq=3", (op_id,)).fetchone()
                    bad = bytes(raw).replace(b"k3a", b"k3z") if damage == "edit" else b"\x00\xff{"
                    conn.execute("UPDATE deltas SET items=? WHERE op_id=? AND seq=3", (bad, op_id))
        else:
            client = server.client()
            if damage == "delete":
                client.hdel(f"t:cd:{op_id}", "3")
            else:
                raw = client.hget(f"t:cd:{op_id}", "3")
                client.hset(f"t:cd:{op_id}", "3", raw.replace(b"k3a", b"k3z") if damage == "edit" else b"\x00\xff{")
        loaded = await store.load_checkpoint(op_id)
        assert loaded is not None
        cp, ledger = loaded
        listing = {c.seq: c.valid for c in await store.checkpoints(op_id)}
        if damage == "restart":
            assert (cp.seq, ledger.done, cp.state) == (1, {"new"}, {"seq": 1})
            assert listing == {1: True, 2: False, 3: False, 4: False, 5: False}
        else:
            assert (cp.seq, ledger.done, cp.state) == (2, {"k1a", "k1b", "k2a", "k2b"}, {"seq": 2})
            assert listing == {1: True, 2: True, 3: False, 4: False, 5: False}


# ---- item 12: a damaged database file -------------------------------------------------------------


def one_line(r: subprocess.CompletedProcess, why: str) -> str:
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, f"{why}\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"{why}: {r.stderr}"
    assert all(ch.isprintable() for ch in lines[0]), f"{why}: raw bytes in {lines[0]!r}"
    return lines[0]


def test_zero_length_database_is_refused(cli: Cli) -> None:
    """A 0-byte outlast.db is not a new store: every record would be gone without a word."""
    assert cli("submit", "demo").returncode == 0
    db_path = cli.state_dir / "outlast.db"
    db_path.write_bytes(b"")
    for args in (["ls"], ["submit", "demo"], ["worker", "--exit-when-idle"]):
        r = cli(*args)
        assert r.returncode == ExitCode.STORE, (args, r.stdout, r.stderr)
        assert "not a usable Outlast database" in one_line(r, str(args))
        assert db_path.stat().st_size == 0  # left as found


def test_a_new_state_dir_is_created_by_racing_processes(cli: Cli) -> None:
    """Refusing an empty file must not refuse a store that another process is creating right now."""
    procs = [
        zygote.popen(["ls"], env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)
    ]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err


def interrupted_store(cli: Cli, tmp_path: Path, n: int = 60) -> tuple[str, bytes]:
    """A state dir with two completed operations and an interrupted counted-item one with checkpoints;
    the database file's bytes (its WAL folded in)."""
    for _ in range(2):
        assert cli("run", "demo", "-p", "items=3", "-p", "seconds=0").returncode == 0
    op_id = submit_ledger(cli, n, tmp_path, [3])
    kill_after(cli, op_id, 3)
    assert cli("ls").returncode == 0  # marks it interrupted
    conn = sqlite3.connect(cli.state_dir / "outlast.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    wal = cli.state_dir / "outlast.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # everything is in the database file
    return op_id, (cli.state_dir / "outlast.db").read_bytes()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, bytes]:
    """One interrupted store per module (building it costs several processes): its state dir, the
    interrupted operation's id and the database file's bytes. Tests copy it."""
    base = tmp_path_factory.mktemp("pristine")
    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith("OUTLAST_") and var != "OUTLAST_REQUIRE_REDIS":
                mp.delenv(var)
        mp.setenv("OUTLAST_STATE_DIR", str(base / "state"))
        mp.setenv("XDG_CONFIG_HOME", str(base / "config"))
        builder = Cli(base / "state")
        try:
            op_id, image = interrupted_store(builder, base, PRISTINE_ITEMS)
        finally:
            builder.close()
    return base / "state", op_id, image


PRISTINE_ITEMS = 40


def from_pristine(cli: Cli, pristine: tuple[Path, str, bytes]) -> tuple[str, bytes]:
    """A copy of the module's interrupted store in this test's state dir."""
    src, op_id, image = pristine
    for attempt in range(3):
        try:
            shutil.copytree(src, cli.state_dir)
            break
        except shutil.Error:
            # The WAL vanished mid-copy (seen once in a soak): the builder's last process was closing the
            # store, which folds the WAL into the database and deletes it. Once closed, the dir is stable.
            shutil.rmtree(cli.state_dir, ignore_errors=True)
            if attempt == 2:
                raise
            time.sleep(0.5)
    return op_id, image


def put_back(cli: Cli, image: bytes) -> Path:
    path = cli.state_dir / "outlast.db"
    for extra in ("-wal", "-shm"):
        path.with_name(path.name + extra).unlink(missing_ok=True)
    path.write_bytes(image)
    return path


def resume_json(cli: Cli, op_id: str) -> subprocess.CompletedProcess:
    return cli("--json", *P, "resume", op_id, timeout=120)


def assert_outcome(r: subprocess.CompletedProcess, n: int, why: str) -> None:
    """Completed with the right result, or stopped with one clear last line and a documented code."""
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, f"{why}\n{r.stderr}"
    assert r.returncode in DOCUMENTED, f"{why}: exit {r.returncode}\n{r.stderr}"
    if r.returncode == ExitCode.OK:
        op = json.loads(r.stdout)
        assert op["status"] == "completed", f"{why}: {op}"
        assert op["result"] == {"sum": sum(range(n))}, f"{why}: wrong result {op['result']}"
        assert op["progress"]["done"] == n, f"{why}: completed at {op['progress']['done']}/{n}"
    else:
        lines = r.stderr.strip().splitlines()
        assert lines, f"{why}: exit {r.returncode} and nothing said"
        assert all(ch.isprintable() for ch in lines[-1]), f"{why}: raw bytes in {lines[-1]!r}"


def test_garbage_inside_checkpoint_rows_is_skipped(cli: Cli, pristine: tuple[Path, str, bytes]) -> None:
    """Bytes changed inside the stored checkpoints (not SQLite's own structure): the newest one's
    info is no longer UTF-8, the one before has garbage in its payload. The resume skips both and
    completes correctly (it marked the operation failed, with the raw bytes in its error line)."""
    n = PRISTINE_ITEMS
    op_id, image = from_pristine(cli, pristine)
    with sqlite3.connect(cli.state_dir / "outlast.db") as conn:
        rows = conn.execute(
            "SELECT CAST(info AS BLOB), payload FROM checkpoints WHERE op_id=? ORDER BY seq DESC LIMIT 2", (op_id,)
        ).fetchall()
    (newest_info, _), (_, older_payload) = rows
    damaged = bytearray(image)
    for needle, garbage in ((bytes(newest_info), b"\xff\xfe\x00\x80"), (bytes(older_payload), b"\x00\x9c\xff")):
        at = image.find(needle)
        assert at > 0 and image.find(needle, at + 1) < 0
        damaged[at + 20 : at + 20 + len(garbage)] = garbage
    put_back(cli, bytes(damaged))
    r = resume_json(cli, op_id)
    assert r.returncode == 0, r.stderr
    assert_outcome(r, n, "garbage in checkpoint rows")
    assert any("skipped checkpoint" in ln for ln in r.stderr.splitlines()), r.stderr


def test_damaged_checkpoint_page_is_one_line(cli: Cli, pristine: tuple[Path, str, bytes]) -> None:
    """The cells of the checkpoints table garbled, SQLite's structure with them: the resume completes
    correctly or stops with one clear line (exit 8), never raw bytes, never 'internal error'."""
    n = PRISTINE_ITEMS
    op_id, image = from_pristine(cli, pristine)
    with sqlite3.connect(cli.state_dir / "outlast.db") as conn:
        pages = [p for (p,) in conn.execute("SELECT pageno FROM dbstat WHERE name='checkpoints'")]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    rng = random.Random(SEED)
    path = put_back(cli, image)
    with open(path, "r+b") as f:
        for page in pages:  # the cell content area ends the page: overwrite its last quarter
            f.seek(page * page_size - page_size // 4)
            f.write(bytes(rng.randrange(256) for _ in range(page_size // 4)))
    r = resume_json(cli, op_id)
    assert_outcome(r, n, f"checkpoint cells garbled, seed {SEED}")
    assert r.returncode in (ExitCode.OK, ExitCode.STORE), f"OUTLAST_FAULT_SEED={SEED}: {r.stderr}"


@pytest.mark.timeout(7200 if SOAK else 120)
def test_random_bytes_in_the_database(cli: Cli, pristine: tuple[Path, str, bytes]) -> None:
    """Random bytes at seeded offsets (mostly pages 4-8, where the tables live in a small store):
    every command reads it and ends correctly or with one clear line; never internal error (70)."""
    n = PRISTINE_ITEMS
    op_id, image = from_pristine(cli, pristine)
    seed = SEED
    rounds = ROUNDS
    print(f"seed {seed}, {rounds} rounds")
    rng = random.Random(seed)
    for rnd in range(rounds):
        path = put_back(cli, image)
        hi = min(32768, len(image)) if rng.random() < 0.8 else len(image)
        with open(path, "r+b") as f:
            for _ in range(rng.choice([1, 8, 64])):
                f.seek(rng.randrange(12288 if hi > 12288 else 100, hi))
                f.write(bytes(rng.randrange(256) for _ in range(rng.choice([1, 16, 512]))))
        why = f"seed {seed} round {rnd}"
        for args in (["ls"], ["show", op_id], ["checkpoints", op_id], ["logs", op_id]):
            r = cli.here(*P, *args)
            assert "Traceback" not in r.stderr and "internal error" not in r.stderr, f"{why} {args}\n{r.stderr}"
            assert r.returncode in (ExitCode.OK, ExitCode.NOT_FOUND, ExitCode.STORE), f"{why} {args}\n{r.stderr}"
            if r.returncode:
                one_line(r, f"{why} {args}")
        r = resume_json(cli, op_id)
        assert_outcome(r, n, why)
        print(f"{why}: resume exit {r.returncode}")


# ---- every row type and file ----------------------------------------------------------------------


def _sql(cli: Cli, sql: str, *args: object) -> None:
    with sqlite3.connect(cli.state_dir / "outlast.db") as conn:
        conn.execute(sql, args)


def _with_log(cli: Cli, op_id: str) -> Path:
    path = cli.state_dir / "logs" / f"{op_id}.jsonl"
    line = b'{"ts": 1.0, "level": "info", "message": "a line of the log that is cut in its middle"}\n'
    with open(path, "ab") as f:
        f.write(line * 3)
    return path


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGES = {
    # operations rows
    "record garbage": lambda cli, i: _sql(cli, "UPDATE operations SET record=? WHERE id=?", b"\x00\xff{", i),
    "record not json": lambda cli, i: _sql(cli, "UPDATE operations SET record='{\"id\": 1' WHERE id=?", i),
    "record wrong status": lambda cli, i: _sql(
        cli, "UPDATE operations SET record=json_set(record, '$.status', 'exploded') WHERE id=?", i
    ),
    "status column garbage": lambda cli, i: _sql(cli, "UPDATE operations SET status='exploded' WHERE id=?", i),
    "priority garbage": lambda cli, i: _sql(
        cli, "UPDATE operations SET record=json_set(record, '$.priority', 'urgent') WHERE id=?", i
    ),
    # checkpoint rows
    "checkpoint info garbage": lambda cli, i: _sql(cli, "UPDATE checkpoints SET info=x'00ff7b' WHERE op_id=?", i),
    "checkpoint checksum empty": lambda cli, i: _sql(cli, "UPDATE checkpoints SET checksum='' WHERE op_id=?", i),
    "checkpoint seq shifted": lambda cli, i: _sql(cli, "UPDATE checkpoints SET seq=seq+100 WHERE op_id=?", i),
    "checkpoints deleted": lambda cli, i: _sql(cli, "DELETE FROM checkpoints WHERE op_id=?", i),
    "checkpoint payload truncated": lambda cli, i: _sql(
        cli, "UPDATE checkpoints SET payload=substr(payload, 1, 10) WHERE op_id=?", i
    ),
    # delta rows
    "deltas zero-length": lambda cli, i: _sql(cli, "UPDATE deltas SET items=x'' WHERE op_id=?", i),
    "deltas text type": lambda cli, i: _sql(cli, "UPDATE deltas SET items=CAST(items AS TEXT) || 'x' WHERE op_id=?", i),
    "deltas all deleted": lambda cli, i: _sql(cli, "DELETE FROM deltas WHERE op_id=?", i),
    "delta done is a string": lambda cli, i: _sql(
        cli, "UPDATE deltas SET items=json_set(items, '$.d', 'abc') WHERE op_id=? AND seq=1", i
    ),
    # files
    "log file garbage": lambda cli, i: (cli.state_dir / "logs" / f"{i}.jsonl").write_bytes(b"\x00\xff\n{]\n" * 50),
    "log file truncated": lambda cli, i: _truncate(_with_log(cli, i), 0.5),
    "log file zero-length": lambda cli, i: (cli.state_dir / "logs" / f"{i}.jsonl").write_bytes(b""),
    "lock file garbage": lambda cli, i: (cli.state_dir / "locks" / f"{i}.lock").write_bytes(os.urandom(100)),
    "lock file zero-length": lambda cli, i: (cli.state_dir / "locks" / f"{i}.lock").write_bytes(b""),
    "database truncated": lambda cli, i: _truncate(cli.state_dir / "outlast.db", 0.5),
    "database header only": lambda cli, i: _truncate(
        cli.state_dir / "outlast.db", 100 / (cli.state_dir / "outlast.db").stat().st_size
    ),
}


PROFILE_DAMAGES = {
    "a key with a changed byte": "json_set(json_remove(record, '$.profile.progress_report_interval'),"
    " '$.profile.progr\ufffdss_report_interval', 30.0)",
    "a value of the wrong type": "json_set(record, '$.profile.stall_timeout', 'soon')",
    "params": "json_set(record, '$.params.items', 'forty')",
}


@pytest.mark.parametrize("damage", list(PROFILE_DAMAGES))
def test_a_damaged_stored_profile_or_params_is_one_line_and_changes_nothing(
    cli: Cli, pristine: tuple[Path, str, bytes], damage: str
) -> None:
    """Found by the random-bytes soak (seed 20261209, round 104): one byte changed in a key of the stored
    timeout profile, and the resume marked the operation failed, with pydantic's multi-line error as its
    message. The store is damaged, not the operation: the resume says so in one line (exit 8, the
    store's code) and writes nothing. Params that no longer validate (damaged, or a plugin that changed
    them) are refused the same way."""
    op_id, _ = from_pristine(cli, pristine)
    _sql(cli, f"UPDATE operations SET record={PROFILE_DAMAGES[damage]} WHERE id=?", op_id)
    with sqlite3.connect(cli.state_dir / "outlast.db") as conn:
        before = conn.execute("SELECT * FROM operations WHERE id=?", (op_id,)).fetchone()
    r = resume_json(cli, op_id)
    assert r.returncode == ExitCode.STORE, r.stderr
    line = one_line(r, damage)
    assert ("stored params no longer validate" if damage == "params" else "stored timeout profile is damaged") in line
    assert op_id in line, line
    with sqlite3.connect(cli.state_dir / "outlast.db") as conn:
        assert conn.execute("SELECT * FROM operations WHERE id=?", (op_id,)).fetchone() == before


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_every_row_type_and_file(cli: Cli, pristine: tuple[Path, str, bytes], damage: str) -> None:
    """Each kind of damage to what the store reads ends in a correct resume or one clear line."""
    n = PRISTINE_ITEMS
    op_id, _ = from_pristine(cli, pristine)
    DAMAGES[damage](cli, op_id)
    reader = {"log": ["logs", op_id], "che": ["checkpoints", op_id], "del": ["checkpoints", op_id]}
    commands = [["ls"], ["show", op_id], ["checkpoints", op_id], ["logs", op_id]] if SOAK else [["ls"]]
    for args in [*commands, reader.get(damage[:3], ["show", op_id])]:
        r = cli.here(*P, *args)
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, f"{damage} {args}\n{r.stderr}"
        assert r.returncode in (ExitCode.OK, ExitCode.NOT_FOUND, ExitCode.STORE), f"{damage} {args}\n{r.stderr}"
        if r.returncode:
            one_line(r, f"{damage} {args}")
    assert_outcome(resume_json(cli, op_id), n, damage)


def test_a_damaged_copy_of_an_id_in_the_index_is_the_store_damaged_not_a_missing_operation(
    cli: Cli, pristine: tuple[Path, str, bytes]
) -> None:
    """Found by the random-bytes soak (exit 3 now and then): a byte changed in the primary-key index's copy of
    the operation's id, the table's row whole. 'resume ID' said "no operation matches id" (exit 3) and
    'show PREFIX' "invalid operation id" (exit 2) of a record that is there: the store is damaged, said in
    one line with the store's code (8), and nothing is written."""
    op_id, image = from_pristine(cli, pristine)
    with sqlite3.connect(cli.state_dir / "outlast.db") as conn:
        pages = [p for (p,) in conn.execute("SELECT pageno FROM dbstat WHERE name='sqlite_autoindex_operations_1'")]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    damaged = bytearray(image)
    spots = [
        at
        for page in pages
        for at in range((page - 1) * page_size, page * page_size)
        if image[at : at + len(op_id)] == op_id.encode()
    ]
    assert len(spots) == 1, spots
    damaged[spots[0] + len(op_id) - 1] = 0xFF
    path = put_back(cli, bytes(damaged))
    for args, code in ((["--json", "resume", op_id], ExitCode.STORE), (["show", op_id[:9]], ExitCode.STORE)):
        r = cli(*P, *args, timeout=120)
        line = one_line(r, str(args))
        assert r.returncode == code, (args, r.returncode, line)
        assert "outlast.db is damaged" in line and "index of operations" in line, line
    assert path.read_bytes() == bytes(damaged)  # nothing written
