"""``--param`` values of params typed as text are taken as typed. Read as JSON, ``-p command=true`` was the
boolean, refused as "Input should be a valid string": the command ``true`` (or a directory named ``2024``)
could not be given that way. Every other param is still read as JSON when it is JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from engine.exitcodes import ExitCode
from tests.fixtures_cli import Cli

PLUGIN = ("--plugin", "tests.ops_for_tests")


def params_of(cli: Cli, op_id: str) -> dict[str, Any]:
    r = cli.here(*PLUGIN, "--json", "show", op_id)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["params"]  # type: ignore[no-any-return]


def submitted(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_text_param_is_what_was_typed_and_others_are_json(cli: Cli) -> None:
    op = submitted(cli.here("submit", "command", "-p", "command=true", "-p", "tail=5"))
    assert (params_of(cli, op)["command"], params_of(cli, op)["tail"]) == ("true", 5)
    op = submitted(cli.here("submit", "command", "-p", "command=42", "-p", 'env={"A": "1"}'))
    assert (params_of(cli, op)["command"], params_of(cli, op)["env"]) == ("42", {"A": "1"})
    # A JSON string is read as before: the quotes are not part of the command.
    op = submitted(cli.here("submit", "command", "-p", 'command="echo hi"'))
    assert params_of(cli, op)["command"] == "echo hi"
    # A rerun's changed params are read the same way.
    assert cli.here("cancel", op).returncode == 0
    again = submitted(cli.here("rerun", op, "--queue", "-p", "command=false"))
    assert params_of(cli, again)["command"] == "false"
    # A handler without a params model gets JSON values, as before.
    op = submitted(cli.here(*PLUGIN, "submit", "thread_blocker", "-p", "n=5", "-p", "flag=true"))
    assert params_of(cli, op) == {"n": 5, "flag": True}


def test_a_number_for_a_number_param_is_still_checked(cli: Cli) -> None:
    before = json.loads(cli.here("ls", "--json").stdout)
    r = cli.here("submit", "command", "-p", "command=true", "-p", "tail=x")
    assert r.returncode == ExitCode.USAGE and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        "outlast: command params: tail: Input should be a valid integer, unable to parse string as an integer"
    ]
    assert json.loads(cli.here("ls", "--json").stdout) == before


def test_a_param_given_twice_is_refused_naming_it_and_nothing_is_stored(cli: Cli) -> None:
    """``-p n=1 -p n=2`` was silently ``n=2``: which one was meant is a guess. Refused, one line naming
    the key, on ``run`` and ``submit`` alike (and a ``--profile`` key given twice), nothing stored."""
    for args in (
        ("submit", "command", "-p", "command=true", "-p", "tail=1", "-p", "tail=2"),
        ("run", "command", "-p", "command=true", "-p", "command=false"),
        ("--json", "submit", "command", "-p", "command=true", "-p", " command=true"),
        ("submit", "command", "-p", "command=true", "--profile", "max_timeout=5", "--profile", "max_timeout=6"),
    ):
        r = cli.here(*args)
        assert r.returncode == ExitCode.USAGE and r.stdout == "", (args, r.stdout, r.stderr)
        key = "max_timeout" if "--profile" in args else args[-1].split("=")[0].strip()
        assert len(r.stderr.strip().splitlines()) == 1 and f"'{key}' given more than once" in r.stderr, r.stderr
        assert json.loads(cli.here("ls", "--json").stdout) == []


def test_words_split_from_a_line_are_what_was_typed(cli: Cli, tmp_path: Path) -> None:
    """``-p argv=true`` (the command ``true``) and a profiled script's ``-p args=1000`` were read as JSON, a
    boolean and a number, and refused as "Input should be a valid list", where ``-p command=true`` worked.
    A line is split as a shell would, a JSON list is that list, a JSON string is split as before."""
    for typed, argv in [
        ("argv=true", ["true"]),
        ("argv=2024", ["2024"]),
        ("argv=echo 'a b'", ["echo", "a b"]),
        ('argv=["echo", "a b"]', ["echo", "a b"]),
        ('argv="echo x"', ["echo", "x"]),
        ("argv=[ -d / ]", ["[", "-d", "/", "]"]),
    ]:
        op = submitted(cli.here("submit", "command", "-p", typed))
        assert params_of(cli, op)["argv"] == argv, typed
    (tmp_path / "x.py").write_text("pass\n")
    op = submitted(cli.here("submit", "performance_profiling", "-p", f"script={tmp_path / 'x.py'}", "-p", "args=1000"))
    assert params_of(cli, op)["args"] == ["1000"]
