"""The quick ``ls`` (table and ``--json``) against hostile stores: it prints what the full path prints, byte
for byte, or steps aside; it never writes. Answered in this process (``main_here``): the quick path is the
default environment, the full path the same with one setting (``OUTLAST_MAX_CONCURRENT``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_cli import main_here

FULL = {"OUTLAST_MAX_CONCURRENT": "3"}


def run(state_dir: Path, *args: str, full: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OUTLAST_STATE_DIR": str(state_dir), **(FULL if full else {})}
    return main_here(args, env)


def normalised(text: str) -> list[str]:
    return [re.sub(r"\s+", " ", re.sub(r"\S+ ago|just now", "AGO", line)).strip() for line in text.splitlines()]


def same(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    quick, full = run(state_dir, *args), run(state_dir, *args, full=True)
    assert (quick.returncode, normalised(quick.stdout), quick.stderr) == (
        full.returncode,
        normalised(full.stdout),
        full.stderr,
    ), args
    return quick


@pytest.fixture
def store(state_dir: Path) -> Path:
    """A store with two operations (one named), made in this process (submit stores; nothing runs)."""
    for extra in (["--name", "W1", "-p", "items=3"], ["-p", "items=2", "--priority", "low"]):
        r = run(state_dir, "submit", "demo", *extra)
        assert r.returncode == 0, r.stderr
    return state_dir


def files(d: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``d`` (and ``d``) by name: inode, size, mtime."""
    out = {}
    for p in [d, *sorted(d.rglob("*"))]:
        st = p.lstat()
        out[str(p.relative_to(d))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def test_quick_ls_makes_no_file_in_the_state_dir(store: Path) -> None:
    """A read-write connection made outlast.db-wal and -shm and removed them when it closed: the state dir
    was written (its mtime moved) by every quick ``ls``."""
    os.utime(store, ns=(1_000_000_000, 1_000_000_000))  # a time no write now can leave
    before = files(store)
    for args in (["ls"], ["ls", "--json"]):
        assert run(store, *args).returncode == 0
        assert files(store) == before, args


def test_quick_ls_leaves_a_dead_writers_wal_as_it_is(store: Path) -> None:
    """A WAL holding commits of a process that died: the quick read closed last and folded it into
    outlast.db (and removed it). It reads through it and leaves both files as they were."""
    code = (
        "import json, os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA wal_autocheckpoint=0')\n"
        "i, r = c.execute('SELECT id, record FROM operations ORDER BY created_at LIMIT 1').fetchone()\n"
        "r = json.loads(r); r['name'] = 'from the WAL'\n"
        "c.execute('UPDATE operations SET record=? WHERE id=?', (json.dumps(r, separators=(',', ':')), i))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(store / "outlast.db")], check=True)
    assert (store / "outlast.db-wal").stat().st_size > 32
    before = files(store)
    assert "from the WAL" in same(store, "ls").stdout
    # The full path (above, second) folded the WAL in; make it again for the quick path alone.
    subprocess.run([sys.executable, "-c", code, str(store / "outlast.db")], check=True)
    before = {k: v for k, v in files(store).items() if k not in (".", "outlast.db-shm")}
    for args in (["ls"], ["ls", "--json"]):
        out = run(store, *args)
        assert out.returncode == 0 and "from the WAL" in out.stdout
        after = {k: v for k, v in files(store).items() if k not in (".", "outlast.db-shm")}
        assert after == before, args


def rewrite(state_dir: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Replace the oldest operation's stored record with ``change(record)`` (an object, or raw text)."""
    db = sqlite3.connect(state_dir / "outlast.db")
    with db:
        op_id, raw = db.execute("SELECT id, record FROM operations ORDER BY created_at LIMIT 1").fetchone()
        new = change(json.loads(raw))
        db.execute(
            "UPDATE operations SET record=? WHERE id=?",
            (new if isinstance(new, str) else json.dumps(new, separators=(",", ":")), op_id),
        )
    db.close()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    *parents, last = path.split(".")

    def change(r: dict[str, Any]) -> dict[str, Any]:
        o = r
        for k in parents:
            o = o[k]
        o[last] = value
        return r

    return change


def _drop(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(r: dict[str, Any]) -> dict[str, Any]:
        del r[key]
        return r

    return change


def _nest(depth: int) -> Callable[[dict[str, Any]], str]:
    def change(r: dict[str, Any]) -> str:
        return json.dumps(r, separators=(",", ":")).replace(
            '"params":{', '"params":{"d":' + "[" * depth + "]" * depth + ",", 1
        )

    return change


@pytest.mark.parametrize(
    "change",
    [
        _set("priority", "bogus"),
        _set("priority", "HIGH"),
        _set("name", 5),
        _set("type", 7),
        _set("error", 3),
        _set("progress.done", 2.5),
        _set("progress", None),
        _set("worker", {"host": "h"}),
        _set("tags", {"team": 1}),
        _set("params", [1]),
        _set("name", "W\ud800"),
        _drop("created_at"),
        _nest(300),
        _set("checkpoint_seq", ""),  # the store replaces it by the derived one, after validating the stored one
    ],
    ids=lambda c: repr(c.__closure__[-1].cell_contents)[:30] if c.__closure__ else "?",
)
def test_quick_ls_table_shows_no_record_the_full_path_skips(store: Path, change: Callable[..., Any]) -> None:
    """The table was made from each record as read (``str()``, ``int()``, defaults): a record the model
    refuses (the full path skips it with a warning) was shown, with its priority "bogus", its name 5, its
    done 2.5 as 2, its missing creation time as "-"."""
    rewrite(store, change)
    for args in (["ls"], ["ls", "--json"]):
        out = same(store, *args)
        assert "stored record is malformed; skipped" in out.stderr, args


def test_quick_ls_nested_past_the_stack_is_the_full_paths_answer(store: Path) -> None:
    """``json.loads`` of a record nested 100,000 deep raised RecursionError: an internal error (exit 70)."""
    rewrite(store, _nest(100_000))
    for args in (["ls"], ["ls", "--json"]):
        out = same(store, *args)
        assert out.returncode == 0 and "malformed; skipped" in out.stderr, args


def test_quick_ls_on_a_read_only_file_system_says_so_as_the_full_path(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full path warns that a state dir on a read-only file system can change nothing (orphans stay
    running); the quick path listed it without a word."""
    from engine.store import quick
    from engine.store.sqlite import core

    monkeypatch.setattr(quick, "on_read_only_fs", lambda d: True)
    monkeypatch.setattr(core, "on_read_only_fs", lambda d: True)
    for args in (["ls"], ["ls", "--json"]):
        assert "read-only file system" in same(store, *args).stderr, args


@pytest.mark.parametrize("args", [["ls"], ["ls", "--json"], ["-q", "ls"]])
def test_quick_ls_of_a_state_dir_that_is_not_there_makes_none(tmp_path: Path, args: list[str]) -> None:
    """A read made the state dir, its database and files (a mistyped --state-dir left a store behind): the
    quick path answers "nothing" and makes nothing; it says what the full path says (which makes one)."""
    missing = tmp_path / "not" / "there"
    quick = run(missing, *args)
    assert not (tmp_path / "not").exists()
    full = run(missing, *args, full=True)
    assert (quick.returncode, quick.stdout, quick.stderr) == (full.returncode, full.stdout, full.stderr)
    # Where none can be made (below a file), the full path says why.
    (tmp_path / "file").write_text("")
    quick, full = run(tmp_path / "file" / "sd", *args), run(tmp_path / "file" / "sd", *args, full=True)
    assert (quick.returncode, quick.stderr) == (full.returncode, full.stderr) and quick.returncode == 8


@pytest.mark.parametrize("blank", [" ", "\t"])
def test_quick_ls_of_a_blank_state_dir_is_the_settings_error(tmp_path: Path, blank: str) -> None:
    """A state dir of spaces is refused by the settings (exit 2); the quick path took it as a directory
    named " " in the working directory, found no store there and listed nothing."""
    for args in (["ls"], ["ls", "--json"], ["--state-dir", blank, "ls"]):
        with contextlib.chdir(tmp_path):
            quick, full = run(Path(blank), *args), run(Path(blank), *args, full=True)
        assert (quick.returncode, quick.stdout, quick.stderr) == (full.returncode, full.stdout, full.stderr)
        assert quick.returncode == 2 and "empty" in quick.stderr, args
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("where", "what"),
    [("locks", "fifo"), ("locks", "file"), ("logs", "fifo"), ("logs", "file"), ("outlast.db-shm", "fifo")],
)
def test_quick_ls_leaves_a_misplaced_store_file_to_the_full_path(store: Path, where: str, what: str) -> None:
    """A FIFO or a file where the store keeps its locks or logs directory (or its shared-memory file, with
    no WAL): the full path says so (exit 8), the quick path listed the operations as if all were well."""
    path = store / where
    if path.is_dir():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)
    if what == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.write_text("")
        path.chmod(0o600)
    out = same(store, "ls")
    assert out.returncode == 8 and "ID" not in out.stdout, out.stderr


def test_quick_ls_table_reads_the_damaged_page_the_full_path_reads(store: Path) -> None:
    """The full path reads each operation's newest checkpoint (``checkpoint_seq``) as it lists; with the
    checkpoints table's page damaged it says the database is not usable (exit 8). The table's quick path
    did not read it, and listed as if all were well."""
    db = sqlite3.connect(store / "outlast.db")
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name='checkpoints'").fetchone()[0]
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(store / "outlast.db", "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\0" * page)
    for args in (["ls"], ["ls", "--json"]):
        out = same(store, *args)
        assert out.returncode == 8 and "not a usable Outlast database" in out.stderr, args


def test_quick_list_read_as_immutable_while_a_writer_came_is_not_trusted(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no WAL the file is read as ``immutable`` (no lock, no file made): a writer that opens it during
    the read (and folds its WAL in when it closes) may change pages under it, so that read is not used."""
    from engine.store import quick

    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(*args, **kwargs)
        writer = real(store / "outlast.db")  # a worker starting: a write, folded in at its close
        with writer:
            writer.execute("UPDATE operations SET record = json_set(record, '$.name', 'changed')")
        writer.close()
        return conn

    assert quick.quick_list(store, [], [], 10) is not None  # undisturbed: read
    monkeypatch.setattr(quick.sqlite3, "connect", connect)
    assert quick.quick_list(store, [], [], 10) is None


def test_quick_list_steps_aside_on_a_full_file_system(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a full file system the full path cannot open the store (SQLite makes its WAL and shared-memory
    files) and says so in one line (exit 8; seen on a full tmpfs); the quick path, which makes neither,
    listed as if all were well. A state dir that is not there lists nothing on any file system (the full path
    makes none there either: ``session``'s ``create``)."""
    from engine.store import quick

    assert quick.quick_list(store, [], [], 10) is not None
    assert quick.quick_list(store / "new", [], [], 10) == []
    monkeypatch.setattr(quick, "free_bytes", lambda path: quick.FULL_BELOW - 1)
    assert quick.quick_list(store, [], [], 10) is None
    assert quick.quick_list(store / "new", [], [], 10) == []


def test_quick_ls_of_a_linked_database_is_refused_as_the_full_path_refuses_it(store: Path, tmp_path: Path) -> None:
    """outlast.db a symbolic link: the quick path read the file it names (as immutable, without the WAL SQLite
    keeps beside that file), and the full path opened it through the link, and made it 0600. Both refuse it
    now, in the same line (exit 8), and read nothing through it."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (store / "outlast.db").rename(real / "outlast.db")
    (store / "outlast.db").symlink_to(real / "outlast.db")
    before = files(real)
    for args in (("ls",), ("--json", "ls")):
        r = same(store, *args)
        assert r.returncode == 8 and r.stdout == "", r
        assert r.stderr.startswith(f"outlast: state dir {store}: outlast.db is a symbolic link (to {real}/outlast.db)")
    assert files(real) == before


def _kinds() -> dict[str, Any]:
    from hypothesis import strategies as st

    text = st.one_of(st.text(max_size=8), st.sampled_from(["", "\x1b[2J", "a\nb", "\u202e", "\x00", "\u2028", "é"]))
    ints = st.one_of(st.integers(-3, 10**6), st.sampled_from([0, 2**63, -(2**70), 10**30]))
    floats = st.one_of(
        st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, -0.0, 5e-324, 1e22, 1.7e308])
    )
    leaf = st.none() | st.booleans() | ints | floats | text
    value = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3), max_leaves=6)
    return {
        "str": text,
        "int": ints,
        "float": floats,
        "dict": st.dictionaries(text, value, max_size=3),
        "tags": st.dictionaries(text, text, max_size=2),
        "any": value,
        "status": st.sampled_from(["queued", "completed", "failed", "paused", "interrupted", "Queued", "x"]),
        "priority": st.sampled_from(["low", "normal", "high", "critical", "HIGH"]),
        "wrong": value,
    }


def test_quick_ls_prints_what_the_full_path_prints_for_generated_records(store: Path) -> None:
    """Records of every field's kind (and now and then one of another): the table and the JSON of both
    paths are the same, byte for byte but the age column."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from engine.cli.quickjson import FIELDS, PROGRESS_FIELDS, WORKER_FIELDS

    kinds = _kinds()

    def of(kind: str) -> Any:
        if kind == "progress":
            return st.fixed_dictionaries({k: of(v) for k, v in PROGRESS_FIELDS.items()})
        if kind == "worker?":
            return st.none() | st.fixed_dictionaries({k: of(v) for k, v in WORKER_FIELDS.items()})
        if kind.endswith("?"):
            return st.none() | kinds[kind[:-1]]
        return kinds[kind]

    db = sqlite3.connect(store / "outlast.db", isolation_level=None)
    (op_id, raw), _ = db.execute("SELECT id, record FROM operations ORDER BY created_at").fetchall()
    fields = [f for f in FIELDS if f not in ("id", "type")]

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        changes=st.lists(st.sampled_from(fields), max_size=4),
        wrong=st.lists(st.sampled_from([*fields, None]), max_size=1),
        data=st.data(),
    )
    def check(changes: list[str], wrong: list[str | None], data: Any) -> None:
        record = json.loads(raw)
        for name in changes:
            record[name] = data.draw(of(FIELDS[name]))
        for name in wrong:
            if name is not None:
                record[name] = data.draw(kinds["wrong"])
        db.execute("UPDATE operations SET record=? WHERE id=?", (json.dumps(record, separators=(",", ":")), op_id))
        for args in (["ls"], ["ls", "--json"]):
            same(store, *args)

    try:
        check()
    finally:
        db.close()


def test_a_fifo_for_the_checked_configs_hangs_no_command(state_dir: Path, tmp_path: Path) -> None:
    """A FIFO in place of the cache of checked config files (``checked-configs.json``): with a config file,
    ``ls`` (which reads it to trust the file) and every command that loads the settings (which reads it to
    remember the file) waited for ever. Now it is no cache: the file is checked in full each time."""
    config = tmp_path / "config" / "outlast" / "config.toml"  # the default one (conftest's XDG_CONFIG_HOME)
    config.parent.mkdir(parents=True)
    config.write_text('theme = "outlast-light"\n')
    cache = tmp_path / "cache" / "outlast"
    cache.mkdir(parents=True)
    os.mkfifo(cache / "checked-configs.json")
    env = {**os.environ, "OUTLAST_STATE_DIR": str(state_dir)}
    for args in (["ls"], ["types"], ["ls"]):
        r = subprocess.run(
            [sys.executable, "-m", "engine.cli", *args], env=env, capture_output=True, text=True, timeout=20
        )
        assert r.returncode == 0, (args, r.stderr)
