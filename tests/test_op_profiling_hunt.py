"""performance_profiling, performance_testing and the test-suite runner under a relative --state-dir: the
programs they start run in another directory (the script's, the suite's), and were handed paths into the
state directory relative to where outlast was started."""

from __future__ import annotations

import json
import os
import pstats
import subprocess
import sys
from pathlib import Path

import pytest

from tests import zygote
from tests.fixtures_cli import REPO, Cli
from tests.fixtures_ops import bad_params, run_json


def _run(cwd: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OUTLAST_STATE_DIR", None)
    r = zygote.run(
        ["--state-dir", "state", "--json", "run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_profile_with_a_relative_state_dir(tmp_path: Path) -> None:
    prog = tmp_path / "prog"
    prog.mkdir()
    (prog / "work.py").write_text("def f():\n    return sum(range(1000))\n\nfor _ in range(50):\n    f()\n")
    (tmp_path / "here").mkdir()
    rec = _run(tmp_path / "here", "performance_profiling", "-p", f"script={prog / 'work.py'}", "-p", "sampler=none")
    assert rec["status"] == "completed" and rec["result"]["runs"] == 1, rec
    assert Path(rec["result"]["pstats"]).is_absolute()
    assert sorted(p.name for p in prog.iterdir()) == ["work.py"]  # nothing written beside the program


def test_timed_tests_with_a_relative_state_dir(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_x.py").write_text("def test_a():\n    pass\n")
    (tmp_path / "here").mkdir()
    rec = _run(
        tmp_path / "here", "performance_testing", "-p", f"path={suite}", "-p", "repeats=1", "-p", "warmup=0",
        "-p", f"python={sys.executable}",
    )  # fmt: skip
    assert rec["status"] == "completed", rec
    assert sorted(p.name for p in suite.iterdir() if p.name not in ("__pycache__", ".pytest_cache")) == ["test_x.py"]


def test_a_suite_with_a_relative_state_dir(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_x.py").write_text("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    (tmp_path / "here").mkdir()
    rec = _run(tmp_path / "here", "comprehensive_test_suite", "-p", f"path={suite}", "-p", f"python={sys.executable}")
    assert rec["status"] == "completed", rec
    assert sorted(p.name for p in suite.iterdir() if p.name not in ("__pycache__", ".pytest_cache")) == ["test_x.py"]


@pytest.mark.parametrize("type_", ["performance_profiling", "performance_testing", "comprehensive_test_suite"])
@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        ({"env": {"A=B": "x"}}, "'A=B' is not a variable name"),
        ({"env": {"": "x"}}, "'' is not a variable name"),
        ({"env": {"K": "a\0b"}}, "K contains a NUL character"),
        ({"args": ["-x", "a\0b"]}, "args[1] contains a NUL character"),
    ],
)
def test_what_no_program_can_be_given_is_refused_at_submit(
    cli: Cli, tmp_path: Path, type_: str, extra: dict, expect: str
) -> None:
    """Stored, they failed each run at its start ("embedded null byte") and the operation "no run finished"."""
    (tmp_path / "work.py").write_text("pass\n")
    target = {"script": str(tmp_path / "work.py")} if type_ == "performance_profiling" else {"path": str(tmp_path)}
    bad_params(cli, type_, {**target, **extra}, expect)


def test_no_profiled_run_says_why(cli: Cli, tmp_path: Path) -> None:
    """The operation's error was "no run finished" alone: the cause only in a log line."""
    (tmp_path / "work.py").write_text("pass\n")
    params = {"script": str(tmp_path / "work.py"), "sampler": "none", "python": "/bin/false"}
    code, rec, err = run_json(cli, "run", "performance_profiling", "--params-json", json.dumps(params))
    assert code == 1 and rec["status"] == "failed", (rec, err)
    assert rec["error"].startswith("no run finished; the first failed: run-1: no profile written (exit code 1)")


def test_a_module_is_run_where_it_was_submitted_from(tmp_path: Path) -> None:
    """A worker started elsewhere ran ``python -m MODULE`` in its own directory: runpy's ImportError, exit
    code 1 (recorded, not judged), and the operation completed with a profile of nothing."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "hunt_mod.py").write_text("def work():\n    return sum(range(1000))\n\nwork()\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OUTLAST_STATE_DIR", None)
    state = str(tmp_path / "state")

    def outlast(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return zygote.run(["--state-dir", state, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)

    r = outlast(project, "-q", "submit", "performance_profiling", "-p", "module=hunt_mod", "-p", "sampler=none")
    assert r.returncode == 0, r.stderr
    op_id = r.stdout.strip()
    r = outlast(elsewhere, "worker", "--exit-when-idle")
    assert r.returncode == 0, r.stderr
    rec = json.loads(outlast(elsewhere, "--json", "show", op_id).stdout)
    assert rec["status"] == "completed" and rec["result"]["exit_codes"] == [0], rec
    stats = pstats.Stats(rec["result"]["pstats"]).stats  # type: ignore[attr-defined]
    assert any(file.endswith("hunt_mod.py") and name == "work" for file, _line, name in stats)
