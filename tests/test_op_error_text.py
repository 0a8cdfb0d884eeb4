"""The built-in operations' run-time refusals read as what they are: the user's to act on, not a bug.

An outside tester's first hour: a second code_analysis of a tree one already analysed failed with
"ValueError: output '...' is being written by another operation: ... (at _results_db.py:146)", and every
suite with a failing test with "TestsFailed: 1 of 2 tests failed ... (at test_suite.py:586)": the form
README gives a bug of Outlast's (an exception's type and the handler's line). The error is the message."""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

import pytest

from engine import Engine, OperationSpec, Status
from tests.fixtures_cli import Cli
from tests.fixtures_ops import submit
from tests.test_op_analysis_hostile import make_tree
from tests.test_op_test_suite_hostile import run, write_suite

BUG_FORM = re.compile(r"^[A-Za-z]+(Error|Exception|Failed|NotRun): |\(at \w+\.py:\d+\)")


def said_plainly(error: str | None) -> bool:
    return bool(error) and not BUG_FORM.search(error or "")


@pytest.mark.parametrize("op_type", ["codebase_indexing", "code_analysis", "dependency_analysis"])
async def test_an_output_in_use_fails_with_its_message_alone(engine: Engine, tmp_path: Path, op_type: str) -> None:
    root = tmp_path / "tree"
    make_tree(root, 3)
    out = tmp_path / "out.db"
    out.touch()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another operation's run holds it
        op = await engine.submit(OperationSpec(type=op_type, params={"root": str(root), "output": str(out)}))
        op = await engine.wait(op.id, timeout=60)
    finally:
        os.close(fd)
    assert op.status is Status.FAILED and op.attempt == 1, (op.status, op.attempt)
    assert op.error == (
        f"output {str(out)!r} is being written by another operation: wait for it or choose another output"
    ), op.error


def test_params_refused_when_the_attempt_starts_fail_with_the_check_alone(cli: Cli, tmp_path: Path) -> None:
    """Params are checked again as an attempt starts: a FIFO made at the output's path since the submit was
    "InvalidInput: code_analysis params: ... (at attempt.py:159)"."""
    root = tmp_path / "tree"
    make_tree(root, 3)
    out = tmp_path / "out.db"
    op_id = submit(cli, "code_analysis", {"root": str(root), "output": str(out)})
    os.mkfifo(out)
    r = cli("worker", "--exit-when-idle", timeout=60)
    assert r.returncode == 0, r.stderr
    op = cli.op(op_id)
    assert op.status is Status.FAILED and said_plainly(op.error), op.error
    assert op.error == f"code_analysis params: output: output {str(out)!r} exists and is not a regular file", op.error


async def test_a_suite_with_a_failing_test_fails_with_the_counts_alone(engine: Engine, tmp_path: Path) -> None:
    suite = write_suite(tmp_path, {"test_a.py": "def test_a(): assert False\ndef test_b(): pass\n"})
    op = await run(engine, suite)
    assert op.status is Status.FAILED, (op.status, op.result)
    assert said_plainly(op.error) and "1 of 2 tests failed" in (op.error or ""), op.error


async def test_a_suite_that_collects_nothing_fails_with_the_reason_alone(engine: Engine, tmp_path: Path) -> None:
    suite = write_suite(tmp_path, {"test_a.py": "def test_a(): pass\n"})
    op = await run(engine, suite, args=["-k", "nothing_matches_this"])
    assert op.status is Status.FAILED, (op.status, op.result)
    assert said_plainly(op.error) and op.error.startswith("pytest collected no tests in"), op.error


async def test_a_cleanup_refused_when_it_runs_says_why_alone(engine: Engine) -> None:
    """A root inside the state dir is refused as the cleanup runs: "ValueError: root ... (at cleanup.py:552)"."""
    state = Path(engine.settings.state_dir)
    params = {"root": str(state), "patterns": ["*.tmp"], "older_than_days": 0, "dry_run": False}
    rec = await engine.wait((await engine.submit(OperationSpec(type="cleanup_operation", params=params))).id, 30)
    assert rec.status is Status.FAILED and said_plainly(rec.error), rec.error
    assert (rec.error or "").startswith(f"root {state} is inside Outlast's own directory"), rec.error
