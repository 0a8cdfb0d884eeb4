"""An operation killed (SIGKILL) at each SQL statement that creates its output database is resumed to the same
result as an uninterrupted run (found by test_fault_kill: an index killed between its tables and its ``kind``
row was refused by the resume as "another program's database", for ever).

The kill is exact (the tests.sqlite_die plugin kills the process as the N-th statement on the database starts),
at statements from the first that is not a PRAGMA to the end of the creation's transaction, and one past it:
three of them by default (OUTLAST_FAULT_SEED, else random; printed with a failure), every one with
OUTLAST_SOAK=1."""

from __future__ import annotations

import importlib
import json
import os
import random
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests import zygote
from tests.fixtures_cli import REPO

OPS = ["codebase_indexing", "code_analysis", "dependency_analysis", "monitoring_collection", "semantic_analysis"]
SOAK = os.environ.get("OUTLAST_SOAK") == "1"
SEED = int(os.environ.get("OUTLAST_FAULT_SEED") or random.SystemRandom().randrange(2**32))
KILLED = [op for op in OPS if op != "dependency_analysis"]
"""Killed at each statement: dependency_analysis creates its database as code_analysis does (``open_db``)."""
LEFT = ["codebase_indexing", "monitoring_collection", "semantic_analysis"]
"""Given a database an earlier version left: one kind of each legacy rule (the check is ``check_kind``'s)."""


def _params(op: str, root: Path, db: Path) -> str:
    if op == "monitoring_collection":
        return json.dumps({"interval": 0.02, "duration": 0.1, "output": str(db)})
    return json.dumps({"root": str(root), "output": str(db)})


def _outlast(state: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return zygote.run(
        ["--state-dir", str(state), "--plugin", "tests.sqlite_die", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )


def _ids(state: Path) -> list[str]:
    con = sqlite3.connect(state / "outlast.db")
    try:
        return [r[0] for r in con.execute("SELECT id FROM operations")]
    finally:
        con.close()


def _counts(db: Path) -> dict[str, int]:
    """Rows by table, but the run's token (one row, its value differs between runs)."""
    con = sqlite3.connect(db)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {n: con.execute(f"SELECT COUNT(*) FROM {n}").fetchone()[0] for n in names if n != "outlast_run"}
    finally:
        con.close()


@pytest.mark.parametrize("op", KILLED)
def test_a_kill_at_each_statement_creating_the_output_database_is_resumed(op: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("import os\n\n\ndef f(x):\n    return os.sep + x\n")
    (root / "pkg" / "b.py").write_text("from pkg import f\n\n\nclass B:\n    def g(self):\n        return f('b')\n")
    base = {k: v for k, v in os.environ.items() if k != "OUTLAST_DEBUG"}

    ref_db, trace = tmp_path / "ref.sqlite", tmp_path / "ref.trace"
    env = {**base, "OUTLAST_TEST_DIE_DB": str(ref_db), "OUTLAST_TEST_DIE_TRACE": str(trace)}
    done = _outlast(tmp_path / "ref-state", ["run", op, "--params-json", _params(op, root, ref_db)], env)
    assert done.returncode == 0, done.stderr
    statements = trace.read_text().splitlines()
    created = statements.index("COMMIT") + 1  # the creation's transaction, ended
    assert any(s.startswith("INSERT OR REPLACE INTO meta") for s in statements[:created]), statements[:created]
    want = _counts(ref_db)

    first = next(i for i, s in enumerate(statements) if not s.startswith("PRAGMA")) + 1  # a kill before: empty

    points = list(range(first, created + 2))
    if not SOAK:  # three of them, by the seed (printed with a failure): every one with OUTLAST_SOAK=1
        points = sorted(random.Random(f"{SEED}-{op}").sample(points, min(3, len(points))))
    for at in points:
        state, db = tmp_path / f"state-{at}", tmp_path / f"out-{at}.sqlite"
        env = {**base, "OUTLAST_TEST_DIE_DB": str(db), "OUTLAST_TEST_DIE_AT": str(at)}
        killed = _outlast(state, ["run", op, "--params-json", _params(op, root, db)], env)
        assert killed.returncode == -9, (
            f"seed {SEED}: not killed at statement {at} ({statements[at - 1]}): {killed.stderr}"
        )
        (op_id,) = _ids(state)
        resumed = _outlast(state, ["resume", op_id], base)
        assert resumed.returncode == 0, (
            f"seed {SEED}: killed as statement {at} started ({statements[at - 1]}): {resumed.stderr}"
        )
        assert _counts(db) == want, f"seed {SEED}: killed as statement {at} started ({statements[at - 1]})"


SCHEMAS = {
    "codebase_indexing": ("engine.operations.indexing", "SCHEMA"),
    "code_analysis": ("engine.operations.code_analysis", "SCHEMA"),
    "dependency_analysis": ("engine.operations.dependency_analysis", "SCHEMA"),
    "monitoring_collection": ("engine.operations.monitoring", "SCHEMA"),
    "semantic_analysis": ("engine.operations.semantic_analysis", "SEM_SCHEMA"),
}


@pytest.mark.parametrize("with_meta", [False, True], ids=["tables", "tables-and-meta"])
@pytest.mark.parametrize("op", LEFT)
def test_a_database_killed_before_its_kind_by_an_earlier_version_is_written_again(
    op: str, with_meta: bool, tmp_path: Path
) -> None:
    """The versions that created the tables and the kind in two transactions left, killed between them, a
    database of the kind's tables, all empty, with no kind: every resume refused it as another program's,
    for ever. It holds nothing of anyone's: it is written into."""
    module, name = SCHEMAS[op]
    root = tmp_path / "root"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("import os\n\n\ndef f(x):\n    return os.sep + x\n")
    base = {k: v for k, v in os.environ.items() if k != "OUTLAST_DEBUG"}
    ref_db = tmp_path / "ref.sqlite"
    done = _outlast(tmp_path / "ref-state", ["run", op, "--params-json", _params(op, root, ref_db)], base)
    assert done.returncode == 0, done.stderr

    db = tmp_path / "left.sqlite"
    con = sqlite3.connect(db)
    con.executescript(getattr(importlib.import_module(module), name))
    if with_meta:
        con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    con.commit()
    con.close()
    again = _outlast(tmp_path / "state", ["run", op, "--params-json", _params(op, root, db)], base)
    assert again.returncode == 0, again.stderr
    assert _counts(db) == _counts(ref_db)
