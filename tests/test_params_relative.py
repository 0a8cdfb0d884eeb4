"""Relative paths in params name what they named where they were typed, whoever runs the operation.

The params are stored and run by whichever process claims them: a worker started in another directory,
or `outlast resume` typed somewhere else. A path kept relative was read against that process's directory:
a resumed index went to another file (the first attempt's half left behind, every file indexed again),
a queued `command` ran `./migrate.sh` of another directory, or none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.registry import ensure_loaded, get_handler
from tests import zygote
from tests.fixtures_cli import REPO, Cli


def _outlast(cli: Cli, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``outlast ARGS`` run in ``cwd`` (this tree's code, wherever that is)."""
    env = {**cli.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), cli.env.get("PYTHONPATH")]))}
    return zygote.run([*args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_queued_work_runs_where_it_was_submitted(cli: Cli, tmp_path: Path) -> None:
    here, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (here / "src").mkdir(parents=True)
    elsewhere.mkdir()
    (here / "src" / "a.py").write_text("def f():\n    return 1\n")
    script = here / "migrate.sh"
    script.write_text("#!/bin/sh\npwd > ran-here\n")
    script.chmod(0o755)
    ids = []
    for args in (
        ["command", "--params-json", '{"argv": ["./migrate.sh"]}'],
        ["codebase_indexing", "-p", "root=src", "-p", "output=index.sqlite"],
    ):
        done = _outlast(cli, here, "-q", "submit", *args)
        assert done.returncode == 0, done.stderr
        ids.append(done.stdout.strip())
    worker = _outlast(cli, elsewhere, "worker", "--exit-when-idle")
    assert worker.returncode == 0, worker.stderr
    for op_id in ids:
        op = cli.op(op_id)
        assert op.status.value == "completed", (op_id, op.status, op.error)
    assert (here / "ran-here").read_text().strip() == str(here.resolve())
    assert (here / "index.sqlite").is_file()
    assert sorted(os.listdir(elsewhere)) == []


@pytest.mark.parametrize(
    ("type_", "params", "field"),
    [
        ("codebase_indexing", {"root": ".", "output": "index.sqlite"}, "output"),
        ("code_analysis", {"root": ".", "output": "metrics.sqlite"}, "output"),
        ("semantic_analysis", {"root": ".", "output": "sem.sqlite"}, "output"),
        ("security_scan", {"root": ".", "output": "scan.sarif"}, "output"),
        ("kb_population", {"source": ".", "kb": "kb.sqlite"}, "kb"),
        ("monitoring_collection", {"duration": 1, "output": "mon.sqlite"}, "output"),
        ("cleanup_operation", {"root": "sub", "patterns": ["*.tmp"], "manifest": "gone.jsonl"}, "manifest"),
        ("command", {"command": "true", "cwd": "."}, "cwd"),
        ("command", {"command": "true"}, "cwd"),
        ("comprehensive_test_suite", {"path": ".", "python": "./py"}, "python"),
    ],
)
def test_paths_in_params_are_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, type_: str, params: dict, field: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "py").symlink_to(sys.executable)  # a venv's python is a symlink: kept as one
    ensure_loaded()
    parsed = get_handler(type_).parse_params(json.loads(json.dumps(params)))
    value = getattr(parsed, field)
    assert os.path.isabs(value), (type_, field, value)
    given = params.get(field, ".")
    assert value == os.path.abspath(given) or value == str((tmp_path / given).resolve())


def in_deleted_dir(cli: Cli, gone: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m engine.cli ARGS`` in ``gone`` (made here), deleted once the shell is in it: a shell left in a
    directory removed since (a build directory wiped, a checkout that dropped it)."""
    gone.mkdir()
    env = {**cli.env, "PYTHONPATH": str(REPO)}
    shell = 'cd "$1" && rmdir "$1" && shift && exec "$@"'
    argv = ["sh", "-c", shell, "sh", str(gone), sys.executable, "-m", "engine.cli", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_commands_work_in_a_deleted_working_directory(cli: Cli, tmp_path: Path) -> None:
    """Every command but ``ls`` and ``--help`` was "internal error: FileNotFoundError" (exit 70) there: the key
    of the installed distributions made a relative ``sys.path`` entry (``python -m``'s "", an editable
    install's hook) absolute."""
    done = in_deleted_dir(cli, tmp_path / "gone", "submit", "demo")
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    shown = in_deleted_dir(cli, tmp_path / "gone", "--json", "show", done.stdout.strip())
    assert shown.returncode == 0 and json.loads(shown.stdout)["type"] == "demo", shown.stderr


def test_relative_params_in_a_deleted_working_directory_are_refused(cli: Cli, tmp_path: Path) -> None:
    """A relative root there was "its validator raised FileNotFoundError", naming nothing; a command stored
    no cwd, to run in whatever directory its worker had."""
    for params in (["command", "-p", "argv=ls"], ["codebase_indexing", "-p", "root=."]):
        refused = in_deleted_dir(cli, tmp_path / "gone", "submit", *params)
        assert refused.returncode == 2, refused.stderr
        assert "the current directory was deleted" in refused.stderr and len(refused.stderr.splitlines()) == 1
    listed = in_deleted_dir(cli, tmp_path / "gone", "--json", "ls")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed  # nothing stored
