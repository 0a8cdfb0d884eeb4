"""``outlast submit`` on the local store queues its operation without an engine (``store.quick.quick_create``,
called by ``cli.work.quick_submit``): the store's own open and insert, and the engine's own checks and
record (``submission.new_operation``), with no event loop, store thread or Engine. It must store what the
engine's submit stores, answer and fail as it does, and leave to the engine what only the engine does."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.cli import work
from tests.fixtures_cli import REPO, Cli, main_here

IGNORED = frozenset({"id", "created_at", "queued_at", "updated_at"})
"""What two submits of one spec may store differently: the id and the time of the submit."""

SPECS = [
    ["command", "--params-json", '{"command": "true"}'],
    ["command", "-p", "command=echo hi", "-p", "shell=true", "--priority", "high", "--name", "named"],
    ["demo", "-p", "items=3", "-p", "seconds=0", "--profile", "checkpoint_interval=5", "--items", "7"],
    ["demo", "--timeout", "30", "--idempotency-key", "cron-0400", "--priority", "low"],
    # @migrate_timeout_operation's item estimate
    ["--plugin", "tests.ops_for_tests", "submit", "migrated_population", "-p", "source=here"],
]


def _args(spec: list[str]) -> list[str]:
    return spec if "submit" in spec else ["submit", *spec]


def stored(state_dir: Path) -> dict[str, Any]:
    """Every row a submit writes (operations, handles, idempotency keys), each operation's record parsed,
    read straight from the database file."""
    conn = sqlite3.connect(state_dir / "outlast.db")
    conn.row_factory = sqlite3.Row
    try:
        ops = []
        for row in conn.execute("SELECT * FROM operations ORDER BY created_at"):
            op = dict(row)
            op["record"] = json.loads(op["record"])
            ops.append(op)
        handles = [dict(r) for r in conn.execute("SELECT * FROM handles")]
        keys = [dict(r) for r in conn.execute("SELECT * FROM idempotency")]
    finally:
        conn.close()
    return {"operations": ops, "handles": handles, "idempotency": keys}


def without_ids_and_times(rows: dict[str, Any]) -> dict[str, Any]:
    ops = []
    for op in rows["operations"]:
        record = {k: v for k, v in op["record"].items() if k not in IGNORED}
        record["progress"] = {k: v for k, v in record["progress"].items() if k != "operation_id"}
        ops.append({**{k: v for k, v in op.items() if k not in IGNORED}, "record": record})
    return {
        "operations": ops,
        "handles": [{k: v for k, v in h.items() if k != "op_id"} for h in rows["handles"]],
        "idempotency": [{k: v for k, v in i.items() if k != "op_id"} for i in rows["idempotency"]],
    }


@pytest.fixture
def quick_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """What each ``quick_submit`` of this process returned (None: it left the submit to the engine)."""
    calls: list[Any] = []
    real = work.quick_submit

    def spy(*args: Any) -> Any:
        calls.append(result := real(*args))
        return result

    monkeypatch.setattr(work, "quick_submit", spy)
    yield calls


def _clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


Answer = tuple[subprocess.CompletedProcess[str], dict[str, Any]]


def both(
    state_dir: Path,
    args: list[str],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    setup: Callable[[Path], object] = lambda d: None,
) -> tuple[Answer, Answer]:
    """``outlast ARGS`` by the quick path, then by the engine's, each on a state dir made anew by ``setup``
    at the same path (a param naming a file in it is the same param both times): answers and rows."""
    out = []
    for quick in (True, False):
        _clear(state_dir)
        setup(state_dir)
        if quick:
            r = main_here(args, env, REPO)
        else:
            with monkeypatch.context() as m:
                m.setattr(work, "quick_submit", lambda *a: None)  # the engine's path, as before the quick one
                r = main_here(args, env, REPO)
        db, journal = state_dir / "outlast.db", state_dir / "outlast.db-journal"
        if journal.exists() and not journal.is_file():
            journal.unlink()  # a FIFO there: reading the database would wait for ever on it
        rows = stored(state_dir) if db.is_file() and db.stat().st_size and b"SQLite" in db.read_bytes()[:16] else {}
        out.append((r, rows))
    return out[0], out[1]


def same_answer(r: subprocess.CompletedProcess[str], ids: list[str]) -> tuple[int, str, str]:
    """The answer with the ids and times it names taken out."""

    def norm(text: str) -> str:
        for op_id in ids:
            text = text.replace(op_id, "ID")
        text = re.sub(r'"(created_at|queued_at|updated_at)": [0-9.e+]+', r'"\1": T', text)
        return text

    return r.returncode, norm(r.stdout), norm(r.stderr)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: " ".join(s))
def test_the_quick_path_and_the_engines_store_the_same_row(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, quick_calls: list[Any], spec: list[str]
) -> None:
    (quick, q_rows), (full, e_rows) = both(cli.state_dir, ["--json", *_args(spec)], cli.env, monkeypatch)
    assert quick.returncode == 0 and full.returncode == 0, (quick, full)
    assert len(quick_calls) == 1 and quick_calls[0] is not None, "the quick path was not taken"
    assert len(q_rows["operations"]) == len(e_rows["operations"]) == 1
    assert without_ids_and_times(q_rows) == without_ids_and_times(e_rows)
    q_id, e_id = q_rows["operations"][0]["id"], e_rows["operations"][0]["id"]
    assert json.loads(quick.stdout)["id"] == q_id and json.loads(full.stdout)["id"] == e_id
    assert same_answer(quick, [q_id]) == same_answer(full, [e_id])
    # The times of the record are the submit's, one moment, as the engine's are.
    record = q_rows["operations"][0]["record"]
    assert record["created_at"] == record["queued_at"] == record["updated_at"] == q_rows["operations"][0]["queued_at"]


def test_a_submit_to_a_store_in_use_stores_the_same_as_the_engines(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, quick_calls: list[Any]
) -> None:
    """On a store holding operations (the handles count on): one submit each way."""

    def in_use(state_dir: Path) -> None:
        with monkeypatch.context() as m:
            m.setattr(work, "quick_submit", lambda *a: None)
            for i in range(3):
                assert cli.here("submit", "demo", "-p", f"items={i}").returncode == 0

    (quick, q_rows), (full, e_rows) = both(
        cli.state_dir, ["submit", "demo", "-p", "items=9"], cli.env, monkeypatch, in_use
    )
    assert quick.returncode == full.returncode == 0 and quick_calls == [quick_calls[0]] and quick_calls[0] is not None
    assert without_ids_and_times(q_rows) == without_ids_and_times(e_rows)
    assert [op["record"]["handle"] for op in q_rows["operations"]] == [1, 2, 3, 4]


def _newer_schema(state_dir: Path) -> None:
    conn = sqlite3.connect(state_dir / "outlast.db")
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()


def _damaged(state_dir: Path) -> None:
    (state_dir / "outlast.db").write_bytes(b"this is not a database" * 300)


def _a_file(state_dir: Path) -> None:
    shutil.rmtree(state_dir)
    state_dir.write_text("a file")


def _a_fifo_wal(state_dir: Path) -> None:
    import os

    os.mkfifo(state_dir / "outlast.db-journal")


REFUSED = {
    "unknown type": (None, ["submit", "no_such_type"]),
    "bad params": (None, ["submit", "demo", "-p", "items=many"]),
    "a params key the type does not take": (None, ["submit", "command", "-p", "command=true", "-p", "nope=1"]),
    "kb_optimization without its default kb (the state dir context)": (None, ["submit", "kb_optimization"]),
    "a newer schema": (_newer_schema, ["submit", "demo"]),
    "a damaged database": (_damaged, ["submit", "demo"]),
    "the state dir a file": (_a_file, ["submit", "demo"]),
    "a FIFO beside the database": (_a_fifo_wal, ["submit", "demo"]),
    "a newer schema and bad params (the store's error first)": (_newer_schema, ["submit", "demo", "-p", "items=x"]),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_what_is_refused_is_refused_alike_and_stores_nothing(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    spoil, args = REFUSED[case]

    def setup(state_dir: Path) -> None:
        with monkeypatch.context() as m:
            m.setattr(work, "quick_submit", lambda *a: None)
            assert cli.here("submit", "demo", "-p", "items=1").returncode == 0  # a store in use
        if spoil is not None:
            spoil(state_dir)

    (quick, q_rows), (full, e_rows) = both(cli.state_dir, args, cli.env, monkeypatch, setup)
    assert quick.returncode != 0 and quick.stderr, quick
    assert (quick.returncode, quick.stdout, quick.stderr) == (full.returncode, full.stdout, full.stderr)
    assert bool(q_rows) == bool(e_rows)
    if q_rows:
        assert without_ids_and_times(q_rows) == without_ids_and_times(e_rows)
        assert len(q_rows["operations"]) == 1  # the one before, nothing more


def test_an_idempotency_key_used_before_is_answered_by_the_engine(cli: Cli, quick_calls: list[Any]) -> None:
    """The quick path finds the key taken before it writes anything, and leaves the answer to the engine
    (the first operation as it stands, or the key refused for another request)."""
    args = ("submit", "demo", "-p", "items=2", "--idempotency-key", "nightly")
    first, again = cli.here(*args), cli.here(*args)
    assert first.returncode == again.returncode == 0 and again.stdout == first.stdout
    assert quick_calls[0] is not None and quick_calls[1] is None
    assert "submitted before with this idempotency key" in again.stderr
    refused = cli.here("submit", "demo", "-p", "items=3", "--idempotency-key", "nightly")
    assert refused.returncode == 7 and first.stdout.strip() in refused.stderr
    # Said where a script's author looks for 7 (it was in no table): --help's codes, the README's, the option's.
    assert re.search(r"^\s+7  .*idempotency key reused", cli.here("--help").stdout, re.M)
    assert re.search(r"^\| 7 \|.*--idempotency-key", (REPO / "README.md").read_text(), re.M)
    assert "used for other work is exit 7" in " ".join(cli.here("submit", "--help").stdout.split())
    assert len(stored(cli.state_dir)["operations"]) == 1


def test_a_worker_started_afterwards_runs_what_the_quick_path_wrote(cli: Cli) -> None:
    r = cli("submit", "demo", "-p", "items=3", "-p", "seconds=0", "--name", "quick")
    assert r.returncode == 0, r.stderr
    op_id = r.stdout.strip()
    w = cli("worker", "--exit-when-idle")
    assert w.returncode == 0, w.stderr
    op = cli.op(op_id)
    assert (op.status.value, op.progress.done, op.name) == ("completed", 3, "quick")


def test_a_running_worker_picks_up_a_quick_submit(cli: Cli) -> None:
    cli.start("worker")
    r = cli("submit", "demo", "-p", "items=2", "-p", "seconds=0")
    assert r.returncode == 0, r.stderr
    op = cli.wait_status(r.stdout.strip(), {"completed"}, timeout=40)
    assert op.progress.done == 2


def test_an_orphan_is_left_to_the_engine_which_marks_it_interrupted(cli: Cli, quick_calls: list[Any]) -> None:
    """An engine opening the store marks an operation whose process is gone interrupted: a submit did so
    before the quick path, and still does (the quick path sees an unheld lock and steps aside)."""
    p = cli.start("--state-dir", str(cli.state_dir), "run", "demo", "-p", "items=1000", "-p", "seconds=0.05")
    op_id = p.wait_line(lambda ln: " submitted: " in ln).split()[1]
    cli.wait_status(op_id, {"running"})
    r = cli.here("submit", "demo")  # its process alive: the quick path
    assert r.returncode == 0 and quick_calls[-1] is not None
    p.kill()
    assert cli.op(op_id).status.value == "running"
    r = cli.here("submit", "demo")
    assert r.returncode == 0 and quick_calls[-1] is None, r.stderr
    assert cli.op(op_id).status.value == "interrupted"
    assert f"operation {op_id} was left running" in r.stderr


def test_submit_runs_no_engine_and_no_event_loop(cli: Cli) -> None:
    """The quick path is taken by the console script: neither the engine nor the store's async parts load."""
    code = (
        "import sys\n"
        "from engine.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
        "heavy = [m for m in ('engine.engine', 'engine.store.sqlite.store', 'engine.threads', 'aiofiles')"
        " if m in sys.modules]\n"
        "print(f'RC={rc} HEAVY={heavy}')\n"
    )
    for args in (["submit", "demo"], ["submit", "command", "--params-json", '{"command": "true"}']):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=cli.env, cwd=REPO)
        assert r.stdout.strip().splitlines()[-1] == "RC=0 HEAVY=[]", (r.stdout, r.stderr)


def test_the_cycle_collector_is_on_after_a_submit_however_it_ends(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A submit pauses Python's cycle collector while it starts (``engine.cli.collector_paused``), and turns it back
    on whatever happens: a process that goes on (the engine's path, or a program calling ``main``) collects."""
    import gc

    assert gc.isenabled()
    for args in (["submit", "demo"], ["submit", "demo", "-p", "items=x"], ["submit", "no_such_type"]):
        cli.here(*args)
        assert gc.isenabled(), args
    with monkeypatch.context() as m:
        m.setattr(work, "quick_submit", lambda *a: None)
        assert cli.here("submit", "demo").returncode == 0
    assert gc.isenabled()
