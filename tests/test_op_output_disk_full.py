"""An operation writing its SQLite output on a full disk ends failed with one line naming the output file and
saying the disk is full (SQLite's own "database or disk is full", with the handler's line, read as a bug of
Outlast's and named no file); with space freed, the operation is resumed to the end."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures_cli import Cli
from tests.fixtures_disk import fill
from tests.fixtures_ops import run_json, submit


def _said_full(rec: dict, path: Path) -> None:
    assert rec["status"] == "failed", rec
    error = rec["error"]
    assert "\n" not in error and str(path) in error and "disk is full" in error, error
    assert "OperationalError" not in error and ".py:" not in error, error


def test_kb_population_on_a_full_disk(cli: Cli, small_fs: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# a\n\nfirst\n")
    kb = small_fs / "kb.sqlite"
    params = {"source": str(docs), "kb": str(kb)}
    code, rec, err = run_json(cli, "run", "kb_population", "--params-json", json.dumps(params))
    assert code == 0, err
    for i in range(40):  # more text than the room left
        (docs / f"d{i}.md").write_text(f"# doc {i}\n\n" + " ".join(f"word{i}x{j}" for j in range(4000)) + "\n")
    filler = fill(small_fs)
    try:
        code, rec, err = run_json(cli, "run", "kb_population", "--params-json", json.dumps(params))
        assert code != 0, rec
        _said_full(rec, kb)
    finally:
        filler.unlink()
    code, rec, err = run_json(cli, "resume", rec["id"])
    assert code == 0 and rec["status"] == "completed" and rec["result"]["documents"] == 41, (rec, err)


def test_monitoring_collection_on_a_full_disk(cli: Cli, small_fs: Path) -> None:
    db = small_fs / "m.sqlite"
    params = {"interval": 0.01, "duration": 0.05, "output": str(db)}
    code, rec, err = run_json(cli, "run", "monitoring_collection", "--params-json", json.dumps(params))
    assert code == 0, err
    op_id = submit(cli, "monitoring_collection", {**params, "duration": 1})
    for name in (f"{db}-wal", f"{db}-shm"):  # left (the WAL empty) by the submit's read-only look at it
        if Path(name).exists():
            assert name.endswith("-shm") or Path(name).stat().st_size == 0, name
            Path(name).unlink()
    filler = fill(small_fs)  # the run's look at its params (its kind) cannot read it either
    try:
        r = cli("worker", "--exit-when-idle", timeout=60)
        assert r.returncode == 0, r.stderr
        _said_full(cli.op(op_id).model_dump(mode="json"), db)
    finally:
        filler.unlink()
    code, rec, err = run_json(cli, "resume", op_id)
    assert code == 0 and rec["status"] == "completed", (rec, err)


def _full_then_resumed(cli: Cli, small_fs: Path, type_: str, params: dict, path: Path) -> dict:
    """Run ``type_`` with the disk under ``path`` full: it fails saying so; with the space freed, the resume ends
    completed. The resumed record."""
    filler = fill(small_fs)
    try:
        code, rec, err = run_json(cli, "run", type_, "--params-json", json.dumps(params))
        assert code == 1, (rec, err)
        _said_full(rec, path)
    finally:
        filler.unlink()
    code, rec, err = run_json(cli, "resume", rec["id"])
    assert code == 0 and rec["status"] == "completed", (rec, err)
    return rec


def test_tree_analyses_on_a_full_disk(cli: Cli, small_fs: Path, tmp_path: Path) -> None:
    """Their results databases on a full disk: SQLite's "database or disk is full" came out as
    "OperationalError: ... (at dependency_analysis.py:NNN)", naming no file."""
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    for i in range(5):
        (root / "pkg" / f"m{i}.py").write_text(f"import os\nfrom . import m{(i + 1) % 5}\n\n# module {i} of pkg\n")
    db = small_fs / "deps.sqlite"
    rec = _full_then_resumed(cli, small_fs, "dependency_analysis", {"root": str(root), "output": str(db)}, db)
    assert rec["result"]["modules"] >= 6, rec["result"]
    db = small_fs / "sem.sqlite"
    params = {"root": str(root), "output": str(db), "patterns": ["*.py"]}
    rec = _full_then_resumed(cli, small_fs, "semantic_analysis", params, db)
    assert rec["result"]["documents"] == 6, rec["result"]
    db = small_fs / "code.sqlite"
    rec = _full_then_resumed(cli, small_fs, "code_analysis", {"root": str(root), "output": str(db)}, db)
    assert rec["result"]["files"] == 6, rec["result"]
    db = small_fs / "index.sqlite"
    rec = _full_then_resumed(cli, small_fs, "codebase_indexing", {"root": str(root), "output": str(db)}, db)
    assert rec["result"]["files"] == 6, rec["result"]


def test_vector_indexing_and_kb_optimization_on_a_full_disk(cli: Cli, small_fs: Path, tmp_path: Path) -> None:
    """A knowledge base on a full disk: vector_indexing and kb_optimization said SQLite's words with their own
    line, as kb_population did before it said the disk was full."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"d{i}.md").write_text(f"# doc {i}\n\nsome words of document {i}\n\n# same\n\nthe very same text\n")
    kb = small_fs / "kb.sqlite"
    code, rec, err = run_json(
        cli, "run", "kb_population", "--params-json", json.dumps({"source": str(docs), "kb": str(kb)})
    )
    assert code == 0, err
    rec = _full_then_resumed(cli, small_fs, "vector_indexing", {"kb": str(kb)}, kb)
    assert rec["result"]["chunks"] == 12, rec["result"]
    rec = _full_then_resumed(cli, small_fs, "kb_optimization", {"kb": str(kb)}, kb)
    assert rec["result"]["duplicates"] == 5, rec["result"]
