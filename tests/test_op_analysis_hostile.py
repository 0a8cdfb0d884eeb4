"""Hostile cases for the analysis operations that write a results database (codebase_indexing,
code_analysis, dependency_analysis, semantic_analysis with a root): the database deleted or replaced
between attempts, two operations on one output, another program's database, a FIFO in its place."""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, OperationSpec, Status
from tests.fixtures_analysis import tables
from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params, run_json, submit

OPS = {
    # type: (module, the function that stores a batch, the tables compared, columns naming the writer)
    "codebase_indexing": ("indexing", "analyze_batch", ("files", "symbols", "imports")),
    "code_analysis": ("code_analysis", "_process_batch", ("files", "functions")),
    "dependency_analysis": ("dependency_analysis", "_process_batch", ("modules", "imports")),
    "semantic_analysis": ("semantic_analysis", "_batch", ("sem_docs", "sem_keywords", "sem_topics")),
}
WRITER = ("seen", "analysed_by", "made_by")


def make_tree(root: Path, n: int = 12) -> None:
    for i in range(n):
        (root / f"p{i // 4}").mkdir(parents=True, exist_ok=True)
        (root / f"p{i // 4}" / f"m{i:02d}.py").write_text(
            f"import os\n\n# note {i} alpha beta\ndef f{i}(a):\n    if a:\n        return {i}\n    return a\n"
        )


async def _run(engine: Engine, op_type: str, params: dict[str, Any], **profile: Any) -> Any:
    op = await engine.submit(OperationSpec(type=op_type, params=params, profile=profile))
    return await engine.wait(op.id, timeout=60)


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("database", "index", "results")}


@pytest.mark.parametrize("op_type", list(OPS))
async def test_a_results_database_deleted_between_attempts_is_filled_again(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op_type: str
) -> None:
    """Resumed into a fresh database (the one of the first attempt deleted), the files done before were
    skipped: "completed" with a third of the tree. Now every file is analysed again."""
    names = OPS[op_type][2]
    root = tmp_path / "tree"
    make_tree(root)
    whole = await _run(engine, op_type, {"root": str(root), "output": str(tmp_path / "whole.db")})
    assert whole.status is Status.COMPLETED, whole.error
    db = tmp_path / "out.db"
    first = await _first_attempt_fails_after_a_batch(
        engine, monkeypatch, op_type, {"root": str(root), "output": str(db)}
    )
    final = await _resume_into_a_deleted_db(engine, first.id, db)
    assert final.status is Status.COMPLETED, final.error
    assert _comparable(final.result) == _comparable(whole.result)
    assert tables(db, *names, drop=WRITER) == tables(tmp_path / "whole.db", *names, drop=WRITER)


async def _resume_into_a_deleted_db(engine: Engine, op_id: str, db: Path) -> Any:
    """Delete the results database (and its WAL and shared memory) the first attempt wrote, resume, and wait."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{db}{suffix}"):
            os.unlink(f"{db}{suffix}")
    await engine.resume(op_id)
    return await engine.wait(op_id, timeout=60)


async def _first_attempt_fails_after_a_batch(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, op_type: str, params: dict[str, Any]
) -> Any:
    """Run ``op_type`` with batches of 4 files; its second batch raises, so it fails with 4 files done."""
    modname, fn_name, _names = OPS.get(op_type) or ("security_scan", "_scan_batch", ())
    mod = importlib.import_module(f"engine.operations.{modname}")
    monkeypatch.setattr(mod, "BATCH", 4)
    if hasattr(mod, "THREAD_BATCH"):  # security_scan's batches in the engine's own thread
        monkeypatch.setattr(mod, "THREAD_BATCH", 4)
    real = getattr(mod, fn_name)
    calls = []

    def second_batch_breaks(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the first attempt ends here")
        return real(*a, **kw)

    monkeypatch.setattr(mod, fn_name, second_batch_breaks)
    first = await _run(engine, op_type, params)
    assert first.status is Status.FAILED and first.progress.done == 4, (first.status, first.progress)
    monkeypatch.setattr(mod, fn_name, real)
    return first


@pytest.mark.parametrize("op_type", list(OPS))
async def test_files_renamed_or_deleted_between_attempts_are_not_counted(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op_type: str
) -> None:
    """A file done by the first attempt and renamed before the resume was counted twice (its old name's
    rows, written by this very operation, survived the end's sweep), and one deleted was still counted:
    the result mixed the old tree with the new. Now it is the new tree's."""
    root = tmp_path / "tree"
    make_tree(root)
    db = tmp_path / "out.db"
    first = await _first_attempt_fails_after_a_batch(
        engine, monkeypatch, op_type, {"root": str(root), "output": str(db)}
    )
    (root / "p0" / "m00.py").rename(root / "p2" / "renamed.py")  # done by the first attempt
    (root / "p0" / "m01.py").unlink()  # done by the first attempt
    await engine.resume(first.id)
    final = await engine.wait(first.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    whole = await _run(engine, op_type, {"root": str(root), "output": str(tmp_path / "whole.db")})
    names = OPS[op_type][2]
    assert tables(db, *names, drop=WRITER) == tables(tmp_path / "whole.db", *names, drop=WRITER)
    drop = ("database", "index", "results", "removed", "reused", "analysed")
    assert {k: v for k, v in final.result.items() if k not in drop} == {
        k: v for k, v in whole.result.items() if k not in drop
    }


def _other_programs_db(path: Path) -> list[tuple[Any, ...]]:
    """A database of another program whose tables look like an old index's (``symbols`` without a parent
    column, and ``meta``): its rows."""
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE symbols (name TEXT); CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
        "INSERT INTO symbols VALUES ('precious'); INSERT INTO meta VALUES ('owner', 'someone');"
    )
    con.commit()
    con.close()
    return _rows(path)


def _rows(path: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY 1")]
        return [(n, *r) for n in names for r in con.execute(f"SELECT * FROM {n}")]
    finally:
        con.close()


def _wal_db(path: Path) -> dict[str, bytes]:
    """Another program's database in WAL mode, closed (SQLite removed its ``-wal`` and ``-shm``): what its
    directory holds, byte for byte."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript("CREATE TABLE samples (name TEXT); INSERT INTO samples VALUES ('precious');")
    con.close()
    return {p.name: p.read_bytes() for p in path.parent.iterdir()}


@pytest.mark.parametrize("op_type", [*OPS, "monitoring_collection"])
def test_refusing_another_programs_wal_database_leaves_nothing_beside_it(
    cli: Cli, tmp_path: Path, op_type: str
) -> None:
    """Read to be told its kind, read-only, it got an empty ``-wal`` and ``-shm`` that stayed after the
    refusal: refusing it must change nothing on disk."""
    other = tmp_path / "out" / "app.db"
    other.parent.mkdir()
    before = _wal_db(other)
    params: dict[str, Any] = {"output": str(other)}
    params.update({"interval": 0.01, "duration": 0.02} if op_type == "monitoring_collection" else {"root": "."})
    bad_params(cli, op_type, params, "another program's database")
    assert {p.name: p.read_bytes() for p in other.parent.iterdir()} == before


def test_indexing_refuses_another_programs_database(cli: Cli, tmp_path: Path) -> None:
    """Accepted for its SQLite header, it lost its tables: dropped as an index from before symbols had
    parents."""
    other = tmp_path / "app.db"
    before = _other_programs_db(other)
    bad_params(cli, "codebase_indexing", {"root": str(tmp_path), "output": str(other)}, "another program's database")
    assert _rows(other) == before


@pytest.mark.parametrize("op_type", list(OPS))
def test_an_output_that_became_another_programs_database_after_submission_is_left_alone(
    cli: Cli, tmp_path: Path, op_type: str
) -> None:
    """Checked only when the operation was submitted: by its run, the path was a symlink to another
    program's database, which the run wrote into (an index dropped its tables)."""
    root = tmp_path / "tree"
    make_tree(root, 3)
    out = tmp_path / "out.db"
    op_id = submit(cli, op_type, {"root": str(root), "output": str(out)})
    other = tmp_path / "app.db"
    before = _other_programs_db(other)
    out.symlink_to(other)
    r = cli("worker", "--exit-when-idle", timeout=60)
    assert r.returncode == 0, r.stderr
    op = cli.op(op_id)
    assert op.status is Status.FAILED and "another program's database" in (op.error or ""), (op.status, op.error)
    assert _rows(other) == before


def test_a_fifo_in_place_of_the_output_at_run_time_does_not_hang(cli: Cli, tmp_path: Path) -> None:
    """Its open for writing waited for a reader, for ever, in a thread no stop reaches."""
    root = tmp_path / "tree"
    make_tree(root, 3)
    out = tmp_path / "out.db"
    op_id = submit(cli, "code_analysis", {"root": str(root), "output": str(out)})
    os.mkfifo(out)
    r = cli("worker", "--exit-when-idle", timeout=30)
    assert r.returncode == 0, r.stderr
    op = cli.op(op_id)
    assert op.status is Status.FAILED and "not a regular file" in (op.error or ""), (op.status, op.error)


@pytest.mark.parametrize("op_type", list(OPS))
async def test_an_output_another_operation_is_writing_is_refused(engine: Engine, tmp_path: Path, op_type: str) -> None:
    """Two operations writing one database at once: each one's end dropped the rows the other had stored
    (files not "seen" by it), and a resume skipped them. The second now fails, saying why."""
    root = tmp_path / "tree"
    make_tree(root, 3)
    out = tmp_path / "out.db"
    out.touch()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the run of another operation holds it
        op = await _run(engine, op_type, {"root": str(root), "output": str(out)})
    finally:
        os.close(fd)
    assert op.status is Status.FAILED and "being written by another operation" in (op.error or ""), op.error
    assert op.attempt == 1  # not retried: EAGAIN behind it read as the machine running short


@pytest.mark.parametrize("fmt", ["json", "both"])
def test_security_scan_never_overwrites_a_json_file_that_is_not_its_report(cli: Cli, tmp_path: Path, fmt: str) -> None:
    """Starting with "{" was enough to be taken for a report: output=package.json was replaced."""
    (tmp_path / "a.py").write_text("x = 1\n")
    mine = tmp_path / "package.json"
    mine.write_text('{\n  "name": "myapp",\n  "version": "1.0.0"\n}\n')
    bad_params(cli, "security_scan", {"root": str(tmp_path), "output": str(mine), "format": fmt}, "not a report")
    assert mine.read_text().startswith('{\n  "name": "myapp"')


def test_security_scan_writes_over_its_own_reports(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    for _ in range(2):  # the second run replaces the first one's .json and .sarif
        r = cli("run", "security_scan", "-p", f"root={tmp_path}", "-p", f"output={tmp_path}/r.sarif")
        assert r.returncode == 0, r.stderr
    assert b"outlast-security-scan" in (tmp_path / "r.json").read_bytes()


async def test_monitoring_says_which_samples_a_deleted_database_lost(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumed into a fresh database, the samples done before were passed over in silence: "completed"
    with 6 samples of 10 and nothing saying where the others went. They cannot be taken again (their
    time is past): the result counts them as lost."""
    from engine.operations import monitoring

    real, calls = monitoring._store, []

    def fifth_store_breaks(*a: Any) -> None:
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("the first attempt ends here")
        real(*a)

    monkeypatch.setattr(monitoring, "_store", fifth_store_breaks)
    db = tmp_path / "m.sqlite"
    params = {"interval": 0.01, "duration": 0.1, "output": str(db)}
    first = await _run(engine, "monitoring_collection", params, failure_threshold=0)
    assert first.status is Status.FAILED and first.progress.done == 4, (first.status, first.progress)
    final = await _resume_into_a_deleted_db(engine, first.id, db)
    assert final.status is Status.COMPLETED, final.error
    assert final.result["samples"] == 6 and final.result["lost_samples"] == 4, final.result
    con = sqlite3.connect(db)
    assert [s for (s,) in con.execute("SELECT seq FROM samples ORDER BY seq")] == list(range(4, 10))
    con.close()


def test_monitoring_refuses_another_programs_database(cli: Cli, tmp_path: Path) -> None:
    other = tmp_path / "app.db"
    con = sqlite3.connect(other)
    con.executescript("CREATE TABLE samples (name TEXT); INSERT INTO samples VALUES ('precious');")
    con.close()
    before = _rows(other)
    params = {"interval": 0.01, "duration": 0.02, "output": str(other)}
    bad_params(cli, "monitoring_collection", params, "another program's database")
    assert _rows(other) == before


def test_semantic_analysis_refuses_another_programs_or_another_operations_database(cli: Cli, tmp_path: Path) -> None:
    """Only its SQLite header was checked: its sem_* tables were written beside another program's, or an
    index's."""
    root = tmp_path / "tree"
    make_tree(root, 3)
    other = tmp_path / "app.db"
    before = _other_programs_db(other)
    bad_params(cli, "semantic_analysis", {"root": str(root), "output": str(other)}, "another program's database")
    assert _rows(other) == before
    index = tmp_path / "index.db"  # as codebase_indexing writes one
    con = sqlite3.connect(index)
    con.executescript(
        "CREATE TABLE files (path TEXT PRIMARY KEY); CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
        "INSERT INTO files VALUES ('a.py'); INSERT INTO meta VALUES ('kind', 'codebase_indexing');"
    )
    con.close()
    before = _rows(index)
    bad_params(cli, "semantic_analysis", {"root": str(root), "output": str(index)}, "a codebase_indexing database")
    assert _rows(index) == before


def test_semantic_analysis_writes_again_its_results_and_those_of_earlier_versions(cli: Cli, tmp_path: Path) -> None:
    """Its own results file is written again (it says its kind), and so is one written before results said
    their kind (only sem_* tables and the run's token)."""
    root = tmp_path / "tree"
    make_tree(root, 3)
    out = tmp_path / "sem.db"
    params = {"root": str(root), "output": str(out)}
    for _ in range(2):
        code, rec, err = run_json(cli, "run", "semantic_analysis", "--params-json", json.dumps(params))
        assert code == 0 and rec["status"] == "completed", (rec, err)
    con = sqlite3.connect(out)
    assert dict(con.execute("SELECT key, value FROM meta")) == {"kind": "semantic_analysis"}
    con.execute("DROP TABLE meta")  # as an earlier version left it
    con.commit()
    con.close()
    code, rec, err = run_json(cli, "run", "semantic_analysis", "--params-json", json.dumps(params))
    assert code == 0 and rec["status"] == "completed" and rec["result"]["reused"] == 3, (rec, err)


def test_a_gitignore_line_git_passes_over_does_not_fail_the_listing(tmp_path: Path) -> None:
    """A bare "!" (or a line ending in a lone backslash) is no pattern to git; pathspec raised on it, and
    every operation listing the tree (indexing, scans, analyses) failed before its first file."""
    from engine.operations._walk import walk_listing

    (tmp_path / ".gitignore").write_text("!\nignored.py\n\\\n")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "ignored.py").write_text("y = 2\n")
    assert sorted(walk_listing(tmp_path, [])) == [".gitignore", "a.py"]


async def test_security_scan_reports_a_file_renamed_between_attempts_once(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its findings, kept by file name in the checkpointed state, stayed under the old name while the new
    name was scanned again: each finding twice in the report."""
    root = tmp_path / "tree"
    make_tree(root)
    (root / "p0" / "m00.py").write_text("import subprocess\nsubprocess.call('ls', shell=True)\n")
    out = tmp_path / "scan.json"
    params = {"root": str(root), "output": str(out), "format": "json", "rules": ["B602"]}
    first = await _first_attempt_fails_after_a_batch(engine, monkeypatch, "security_scan", params)
    (root / "p0" / "m00.py").rename(root / "p2" / "renamed.py")
    (root / "p0" / "m01.py").unlink()
    await engine.resume(first.id)
    final = await engine.wait(first.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    whole = await _run(engine, "security_scan", {**params, "output": str(tmp_path / "whole.json")})
    assert final.result["findings"] == whole.result["findings"] == 1, final.result
    drop = ("reports", "bytes")
    assert {k: v for k, v in final.result.items() if k not in drop} == {
        k: v for k, v in whole.result.items() if k not in drop
    }


def test_a_directory_swapped_for_a_symlink_after_the_listing_is_not_read_through(tmp_path: Path) -> None:
    """Each operation's per-file step opened the listed name, following a directory on its path that had
    become a symlink: a file outside the tree was indexed, analysed or scanned under the tree's name."""
    from engine.operations import _index_files, code_analysis, dependency_analysis, security_scan, semantic_analysis

    root, outside = tmp_path / "tree", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "x.py").write_text("import os\n")
    outside.mkdir()
    (outside / "x.py").write_text("import subprocess\nsubprocess.call('ls', shell=True)\n# outside the tree\n")
    (root / "sub").rename(tmp_path / "sub-was")  # listed, then swapped for a symlink
    (root / "sub").symlink_to(outside)
    rel = "sub/x.py"
    row, err = _index_files.analyze(root, rel, None)
    assert err is None and row is not None and row[0] == "skip" and "outside the tree" in row[1], row
    import lizard  # type: ignore[import-untyped]

    analyzer = lizard.FileAnalyzer(lizard.get_extensions([]))
    got = code_analysis._analyze(analyzer, root, rel, 1 << 20)
    assert got[0] == "skip" and "outside the tree" in got[1], got
    got = dependency_analysis._analyze(root, root, rel)
    assert got[0] == "skip" and "outside the tree" in got[1], got
    text, _sha, why = semantic_analysis._tree_text(root, rel)
    assert text is None and why is not None and "outside the tree" in why, why
    _rel, kind, payload = security_scan.scan_file(root, rel, frozenset({"B602"}), 1 << 20)
    assert kind == "skip" and "outside the tree" in payload, (kind, payload)


def test_profiling_refuses_a_directory_holding_files_it_would_replace(cli: Cli, tmp_path: Path) -> None:
    """Any writable directory was taken as output: output=. in a project replaced its profile.txt."""
    script = tmp_path / "work.py"
    script.write_text("print(1)\n")
    (tmp_path / "profile.txt").write_text("my notes\n")
    params = {"script": str(script), "sampler": "none", "output": str(tmp_path)}
    bad_params(cli, "performance_profiling", params, "profile.txt")
    assert (tmp_path / "profile.txt").read_text() == "my notes\n"


async def test_profiling_runs_again_a_run_whose_statistics_were_deleted_between_attempts(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merge opened every done run's statistics: one deleted between attempts failed every resume
    (FileNotFoundError), for ever. The run is taken again."""
    from engine.operations import profiling

    script = tmp_path / "work.py"
    script.write_text("def f():\n    return sum(range(100))\n\nf()\n")
    out = tmp_path / "prof"
    real, calls = profiling._run, []

    async def second_run_breaks(*a: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the first attempt ends here")
        return await real(*a)

    monkeypatch.setattr(profiling, "_run", second_run_breaks)
    params = {"script": str(script), "runs": 3, "sampler": "none", "output": str(out)}
    first = await _run(engine, "performance_profiling", params, failure_threshold=0)
    assert first.status is Status.FAILED and first.progress.done == 1, (first.status, first.progress)
    monkeypatch.setattr(profiling, "_run", real)
    (out / "run-1.pstats").unlink()
    await engine.resume(first.id)
    final = await engine.wait(first.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    assert final.result["runs"] == 3 and (out / "run-1.pstats").is_file()


def test_an_output_inside_the_tree_is_not_read_as_part_of_it(cli: Cli, tmp_path: Path) -> None:
    """An index inside the indexed tree indexed itself, its WAL and its shared memory (read while being
    written: a different size and hash every run), and a scan's report was scanned by the next run."""
    indexed, scanned = tmp_path / "indexed", tmp_path / "scanned"
    for d in (indexed, scanned):
        d.mkdir()
        (d / "a.py").write_text("x = 1\n")
    for _ in range(2):
        code, rec, err = run_json(
            cli, "run", "codebase_indexing", "-p", f"root={indexed}", "-p", f"output={indexed}/index.sqlite"
        )
        assert code == 0, err
        assert rec["result"]["files"] == 1, rec["result"]
        code, rec, err = run_json(
            cli, "run", "security_scan", "-p", f"root={scanned}", "-p", f"output={scanned}/scan.sarif"
        )
        assert code == 0, err
        assert rec["result"]["files"] == 1, rec["result"]


async def test_load_testing_against_a_server_that_never_answers_ends_near_its_duration(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each slice waits for its requests in flight: with a server that never answers every slice lasted
    `timeout`, so duration=60 with timeout=600 ran 10 hours. A run later than one timeout past its
    duration sends no more slices, and says so."""
    from engine.operations import load_test

    sent: list[float] = []

    async def slice_of_timeouts(p: Any, addr: str, length: float, budget: Any, *_: Any) -> Any:
        sent.append(length)
        stats = load_test.SliceStats()
        stats.requests = p.concurrency
        stats.errors = {"timeout": p.concurrency}
        return stats, length + p.timeout  # what waiting on a silent server costs, without the wait

    monkeypatch.setattr(load_test, "run_slice", slice_of_timeouts)
    params = {"url": "http://127.0.0.1:9/", "duration": 10, "timeout": 5, "concurrency": 2}
    op = await _run(engine, "load_testing", params)
    assert op.status is Status.COMPLETED, op.error
    assert len(sent) == 3 and op.result["slices_not_sent"] == 7, (sent, op.result)
    assert op.result["seconds"] == 18.0 and op.result["errors"] == {"timeout": 6}


async def test_indexing_indexes_again_a_file_changed_between_attempts(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file indexed by the first attempt and modified before the resume kept its old row: the index
    mixed the tree before the interruption with the tree after it."""
    root = tmp_path / "tree"
    make_tree(root)
    db = tmp_path / "out.db"
    params = {"root": str(root), "output": str(db)}
    first = await _first_attempt_fails_after_a_batch(engine, monkeypatch, "codebase_indexing", params)
    (root / "p0" / "m00.py").write_text("import json\n\ndef changed(a, b):\n    return a\n\n\nclass C:\n    pass\n")
    await engine.resume(first.id)
    final = await engine.wait(first.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    whole = await _run(engine, "codebase_indexing", {"root": str(root), "output": str(tmp_path / "whole.db")})
    names = OPS["codebase_indexing"][2]
    assert tables(db, *names, drop=WRITER) == tables(tmp_path / "whole.db", *names, drop=WRITER)
    assert final.result["symbols"] == whole.result["symbols"]


@pytest.mark.parametrize(
    ("op_type", "params", "expect"),
    [
        ("monitoring_collection", {"interval": "nan"}, "interval: nan is not a finite number (allowed"),
        ("load_testing", {"url": "http://127.0.0.1:80/", "rate": "nan"}, "rate: nan is not a finite number"),
        ("load_testing", {"url": "http://127.0.0.1:0/"}, "port 0"),
        ("monitoring_collection", {"pids": [999_999_999]}, "pids: no process 999999999"),
    ],
)
def test_hostile_params_say_what_is_wrong(cli: Cli, op_type: str, params: dict[str, Any], expect: str) -> None:
    """nan was refused as "less than or equal to 86400"; port 0 was loaded for the whole duration (every
    request failed to connect); a missing pid was named "pids: pids: ..."."""
    bad_params(cli, op_type, params, expect)


# ---- security_scan's libraries read the file it opened -----------------------------------------------------

OUTSIDE_PY = (
    'import subprocess\nsubprocess.call("ls " + name, shell=True)\naws_access_key_id = "AKIAIOSFODNN7EXAMPLE"\n'
)


@pytest.mark.parametrize("swap", ["symlink out of the tree", "FIFO"])
def test_security_scan_s_libraries_read_the_file_it_opened_not_a_name_swapped_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str
) -> None:
    """bandit and detect-secrets opened ``root/rel`` by name after the scan had opened and checked it: a file
    swapped for a symlink in between had them report what a file outside the tree holds under the tree's
    name, and one swapped for a FIFO blocked the scan's thread for good. They read the checked file now."""
    import threading

    import engine.operations.security_scan as scan_mod
    from engine.operations._scan_rules import select_rules

    root, outside = tmp_path / "tree", tmp_path / "outside.py"
    root.mkdir()
    (root / "app.py").write_text("x = 1\n")
    outside.write_text(OUTSIDE_PY)
    opened = scan_mod.open_in_tree

    def open_then_swap(at: Any, rel: str) -> Any:
        out = opened(at, rel)
        (root / rel).unlink()
        if swap == "FIFO":
            os.mkfifo(root / rel)
        else:
            (root / rel).symlink_to(outside)
        return out

    monkeypatch.setattr(scan_mod, "open_in_tree", open_then_swap)
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(scan_mod.scan_file(root, "app.py", select_rules([]), 1 << 20)))
    t.daemon = True
    t.start()
    t.join(30)
    if t.is_alive():  # let the blocked open go (a writer for the FIFO), then fail
        os.close(os.open(root / "app.py", os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
        pytest.fail("the scan's thread blocked on a FIFO put in the scanned file's place")
    rel, kind, payload = got[0]
    assert (rel, kind) == ("app.py", "ok"), got
    assert payload[1] == [], f"findings of a file outside the tree reported as app.py's: {payload[1]}"
    # The same scan of the outside file finds both, so the empty list above is not a scan that found nothing.
    monkeypatch.setattr(scan_mod, "open_in_tree", opened)
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "app.py").write_text(OUTSIDE_PY)
    found = scan_mod.scan_file(tmp_path / "control", "app.py", select_rules([]), 1 << 20)[2][1]
    rules = {f["rule"] if isinstance(f, dict) else f.rule for f in found}
    assert {"B602", "AWSKeyDetector"} <= rules, rules


def test_the_names_given_to_the_libraries_leave_nothing_behind(tmp_path: Path) -> None:
    """Each name is removed after its file, and what a process killed in the middle of one left (a pool worker
    of a stopped scan) is removed when a scan starts; a live process's is not."""
    import subprocess
    import sys

    from engine.operations import _scan_libs

    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    if base is None:
        pytest.skip("no /dev/shm: the names are made in the temporary directory")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = Path(base, f"outlast-scan-{int(gone.stdout)}-left")
    live = Path(base, f"outlast-scan-{os.getppid()}-live")
    for d in (dead, live):
        (d / "pkg").mkdir(parents=True, exist_ok=True)
        (d / "pkg" / "m.py").symlink_to("/proc/self/fd/0")
    try:
        f = tmp_path / "a.py"
        f.write_text("x = 1\n")
        with open(f, "rb") as fh, _scan_libs.opened_as(fh, "pkg/a.py", f) as name:
            assert name.read_bytes() == b"x = 1\n" and name.name == "a.py" and name.parent.name == "pkg"
        assert not name.parent.parent.exists()
        _scan_libs.sweep_names()  # as a scan starting
        assert not dead.exists() and live.exists()
    finally:
        import shutil

        shutil.rmtree(dead, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)
