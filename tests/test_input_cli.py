"""Bad input on the command line: one line naming what is wrong, an exit code from the table, nothing
stored, nothing leaked, nothing printed raw to a terminal (issue 13)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli_exit import ExitCode
from tests.fixtures_cli import Cli, until


def one_line(r: subprocess.CompletedProcess, code: int = ExitCode.USAGE) -> str:
    """The single stderr line of a refused command, after checking its exit code."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def nothing_stored(cli: Cli) -> None:
    r = cli("ls", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


# ---- 1: deep JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [30_000, 100])
def test_params_json_nested_too_deep_is_one_line(cli: Cli, depth: int) -> None:
    deep = "[" * depth + "]" * depth
    line = one_line(cli("submit", "demo", "--params-json", f'{{"a": {deep}}}'))
    assert "nested deeper than 32 levels" in line, line
    nothing_stored(cli)


# ---- 2: plugins -----------------------------------------------------------------------------------

PLUGINS = {
    "bad_raise": 'raise RuntimeError("boom at import")\n',
    "bad_syntax": "def (:\n",
    "bad_exit": "import sys\nsys.exit(3)\n",
}


@pytest.mark.parametrize("command", [["submit", "demo"], ["ls"], ["types"]])
@pytest.mark.parametrize("module", ["bad_raise", "bad_syntax", "bad_exit", "", "../x", "no_such_module_here"])
def test_a_broken_plugin_is_one_line_exit_2_everywhere(
    cli: Cli, tmp_path: Path, module: str, command: list[str]
) -> None:
    for name, text in PLUGINS.items():
        (tmp_path / f"{name}.py").write_text(text)
    env = {**cli.env, "PYTHONPATH": str(tmp_path)}
    line = one_line(cli("--plugin", module, *command, env=env))
    assert f"plugin {module!r}" in line, line
    if module == "bad_raise":
        assert "boom at import" in line
    if module == "bad_exit":
        assert "exit" in line
    nothing_stored(cli)


def test_a_broken_plugin_from_the_environment_is_refused_too(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "bad_raise.py").write_text(PLUGINS["bad_raise"])
    env = {**cli.env, "PYTHONPATH": str(tmp_path), "OUTLAST_PLUGINS": "bad_raise"}
    assert "bad_raise" in one_line(cli("ls", env=env))
