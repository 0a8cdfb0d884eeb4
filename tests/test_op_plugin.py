"""The example plugin under scripts/: loaded with --plugin and through its entry point, run through the CLI."""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params, run_json

PLUGIN_DIR = REPO / "scripts" / "example_plugin"
MODULE = "outlast_example.operations"


@pytest.fixture
def plugin_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(PLUGIN_DIR))


def test_plugin_with_flag(cli: Cli, tmp_path: Path, plugin_path: None) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("the cat and the dog\n")
    (tmp_path / "b.md").write_text("The end. the END\n")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9\n")
    (tmp_path / "skip.py").write_text("the the the the\n")
    code, rec, err = run_json(cli, "--plugin", MODULE, "run", "wordcount", "-p", f"root={tmp_path}", "-p", "top=2")
    assert code == 0, err
    assert rec["result"] == {"files": 2, "words": 9, "top": [["the", 4], ["end", 2]]}
    assert rec["item_failures"] == 1
    code, rec, err = run_json(
        cli, "--plugin", MODULE, "run", "notes_population", "--params-json", '{"docs": ["A", "b"]}'
    )
    assert code == 0 and rec["result"] == {"added": 2, "documents": ["a", "b"]}, err
    assert (rec["progress"]["done"], rec["progress"]["total"]) == (2, 2)
    types = {t["type"]: t for t in json.loads(cli("--plugin", MODULE, "--json", "types").stdout)}
    assert types["wordcount"]["runnable"] and not types["wordcount"]["builtin"]
    assert types["codebase_indexing"]["builtin"] and types["backup_operation"]["builtin"]
    assert types["cleanup_operation"]["runnable"] and types["cleanup_operation"]["builtin"]
    r = cli("run", "wordcount", "-p", f"root={tmp_path}")  # without --plugin
    assert r.returncode == 2 and "unknown operation type 'wordcount'" in r.stderr, r.stderr


def test_plugin_bad_params(cli: Cli, tmp_path: Path, plugin_path: None) -> None:
    bad_params(cli, "wordcount", {"root": str(tmp_path / "nope")}, "is not an existing directory", "--plugin", MODULE)


def test_plugin_through_its_entry_point(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `pip install scripts/example_plugin` leaves behind: a dist-info with the entry point."""
    dist = tmp_path / "site" / "outlast_example_plugin-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: outlast-example-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[outlast.operations]\nexample = {MODULE}\n")
    monkeypatch.setenv("PYTHONPATH", f"{PLUGIN_DIR}:{tmp_path / 'site'}")
    types = {t["type"]: t for t in json.loads(cli("--json", "types").stdout)}
    assert types["wordcount"]["runnable"] and types["notes_population"]["runnable"]
    r = cli("-q", "run", "wordcount", "-p", f"root={PLUGIN_DIR}")
    assert r.returncode == 0, r.stderr


def test_resume_without_the_plugin_is_refused_and_changes_nothing(cli: Cli, tmp_path: Path, plugin_path: None) -> None:
    """``outlast resume ID`` with the plugin's --plugin forgotten queued the operation, and its attempt
    failed at once ("unknown operation type"): a mistake in the command changed the record (paused ->
    failed). Now one line says what to add, exit 2, and the operation stays as it was."""
    for i in range(6):
        (tmp_path / f"{i}.txt").write_text("a b c\n")
    runner = cli.start("--plugin", MODULE, "run", "wordcount", "-p", f"root={tmp_path}", "-p", "seconds=0.4")
    op_id = runner.wait_line(lambda ln: " running " in ln).split()[1]
    runner.signal(signal.SIGINT)
    assert runner.wait() == 6, runner.err  # paused
    for how in ((), ("--detach",)):
        r = cli("resume", op_id, *how)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "no plugin loaded here runs that type" in r.stderr and "--plugin MODULE" in r.stderr, r.stderr
        assert cli.op(op_id).status.value == "paused"
    code, rec, err = run_json(cli, "--plugin", MODULE, "resume", op_id)
    assert code == 0 and rec["status"] == "completed" and rec["result"]["files"] == 6, err


def _hinted(line: str) -> list[str]:
    """The arguments of the command a line's "resume with: outlast ..." names, without the word outlast."""
    command = line.split(" with: outlast ", 1)[1].split(" (", 1)[0]
    return shlex.split(command)


def test_the_resume_hint_names_a_command_that_works_where_it_is_printed(
    cli: Cli, tmp_path: Path, plugin_path: None
) -> None:
    """``outlast pause ID`` (and ``show``, and a run's last line) said "resume with: outlast resume ID" for a type
    no plugin loaded in that process runs, and that command was refused ("no plugin loaded here runs that type",
    exit 2). Without the plugin the hint is ``resume ID --queue``; with it, the plain resume, with its --plugin."""
    for i in range(6):
        (tmp_path / f"{i}.txt").write_text("a b c\n")
    runner = cli.start("--plugin", MODULE, "run", "wordcount", "-p", f"root={tmp_path}", "-p", "seconds=0.4")
    op_id = runner.wait_line(lambda ln: " running " in ln).split()[1]
    r = cli("pause", op_id)
    assert r.returncode == 0 and r.stdout.count("\n") == 1, (r.stdout, r.stderr)
    assert _hinted(r.stdout) == ["resume", op_id, "--queue"], r.stdout
    assert "no plugin loaded here runs 'wordcount'" in r.stdout, r.stdout
    assert runner.wait() == 6, runner.err
    shown = cli("show", op_id).stdout
    assert _hinted(shown) == ["resume", op_id, "--queue"], shown
    watched = cli("watch", op_id)  # a run's or a watch's last line
    assert watched.returncode == 6 and _hinted(watched.stdout.splitlines()[-1]) == ["resume", op_id, "--queue"]
    shown = cli("--plugin", MODULE, "show", op_id).stdout
    assert _hinted(shown) == ["--plugin", MODULE, "resume", op_id], shown
    r = cli(*_hinted(cli("show", op_id).stdout))  # the hint, as printed: it works
    assert r.returncode == 0 and cli.op(op_id).status.value == "queued", r.stderr


def test_a_plugin_that_prints_as_it_is_imported_leaves_stdout_to_the_command(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``print()`` at a plugin's import (a debugging line left in) came before the command's own output on
    stdout: ``--json ls`` was no JSON, and ``ID=$(outlast -q submit ...)`` held the line before the id."""
    (tmp_path / "chatty_ops.py").write_text(
        "print('loading chatty_ops')\nfrom engine import operation\n"
        "@operation('chatty')\nasync def chatty(ctx, p):\n    return {}\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    r = cli("--plugin", "chatty_ops", "-q", "submit", "chatty")
    assert r.returncode == 0 and r.stdout.strip().isalnum(), (r.stdout, r.stderr)
    assert "loading chatty_ops" in r.stderr, r.stderr
    r = cli("--plugin", "chatty_ops", "--json", "ls")
    assert r.returncode == 0 and [o["type"] for o in json.loads(r.stdout)] == ["chatty"], (r.stdout, r.stderr)


def test_a_resume_after_the_plugins_params_model_changed_names_the_plugin(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin's new version renamed a param: the resume of an operation submitted before said only that its
    "stored params no longer validate" (exit 8, as a damaged store), which sent its author looking at the store."""
    plugin = tmp_path / "evolving_ops.py"
    model = "from pydantic import BaseModel\nfrom engine import operation\nclass P(BaseModel):\n    {}: int = 3\n"
    handler = "@operation('evolving', params=P)\nasync def evolving(ctx, p):\n    return {{}}\n"
    plugin.write_text(model.format("n") + handler.format())
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    op_id = cli("--plugin", "evolving_ops", "-q", "submit", "evolving", "-p", "n=4").stdout.strip()
    assert cli("--plugin", "evolving_ops", "cancel", op_id).returncode == 0
    plugin.write_text(
        model.format("count").replace("class P(BaseModel):", "class P(BaseModel, extra='forbid'):") + handler.format()
    )
    r = cli("--plugin", "evolving_ops", "resume", op_id)
    assert r.returncode == 8 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "its stored params no longer validate" in r.stderr and "n: Extra inputs are not permitted" in r.stderr
    assert "did the params model of evolving_ops change since it was submitted?" in r.stderr, r.stderr
    assert cli.op(op_id).status.value == "cancelled"  # nothing changed


def test_a_resume_queued_without_the_plugin_names_a_worker_that_has_it(cli: Cli, plugin_path: None) -> None:
    """``resume --queue`` without ``--plugin`` said "a running `outlast worker` picks it up": such a worker
    leaves a plugin's operations queued, so the hint named a command that would never run it."""
    op_id = cli("--plugin", MODULE, "-q", "submit", "wordcount", "-p", f"root={REPO}").stdout.strip()
    assert cli("pause", op_id).returncode == 0
    r = cli("resume", op_id, "--queue")
    assert r.returncode == 0, r.stderr
    assert "a running worker with the plugin of 'wordcount' picks it up" in r.stdout, r.stdout
    r = cli("resume", op_id, "--queue")  # already queued
    assert "is already queued; a running worker with the plugin of 'wordcount'" in r.stdout, r.stdout
    assert cli("--plugin", MODULE, "pause", op_id).returncode == 0
    r = cli("--plugin", MODULE, "resume", op_id, "--queue")
    assert f"a running `outlast --plugin {MODULE} worker` picks it up" in r.stdout, r.stdout


def test_what_a_handler_prints_leaves_stdout_to_the_command_with_quiet_or_json(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ID=$(outlast -q run TYPE)``: a handler's ``print()`` (a library's write to descriptor 1, a child process
    that inherits it) landed on stdout after the id, and ``outlast --json run`` was no JSON. With -q or --json
    they go to stderr, for ``run`` and ``worker``; stdout holds the command's own output alone."""
    (tmp_path / "noisy_ops.py").write_text(
        "import os, subprocess, sys\nfrom engine import operation\n"
        "@operation('noisy')\nasync def noisy(ctx, p):\n"
        "    print('print line')\n    sys.stdout.flush()\n    os.write(1, b'fd line\\n')\n"
        "    subprocess.run([sys.executable, '-c', 'print(\"child line\")'], check=True)\n"
        "    return {'ok': 1}\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    noise = ["print line", "fd line", "child line"]
    r = cli("--plugin", "noisy_ops", "-q", "run", "noisy")
    assert r.returncode == 0 and len(r.stdout.split()) == 1, (r.stdout, r.stderr)
    assert all(n in r.stderr for n in noise), r.stderr
    op_id = r.stdout.strip()
    assert cli.op(op_id).status.value == "completed"
    r = cli("--plugin", "noisy_ops", "--json", "run", "noisy")
    assert r.returncode == 0 and all(n not in r.stdout for n in noise), (r.stdout, r.stderr)
    assert [json.loads(line) for line in r.stdout.splitlines()][-1]["status"] == "completed", r.stdout
    assert cli("--plugin", "noisy_ops", "-q", "submit", "noisy").returncode == 0
    r = cli("--plugin", "noisy_ops", "--json", "worker", "--exit-when-idle")
    assert r.returncode == 0 and all(n not in r.stdout for n in noise), (r.stdout, r.stderr)
    assert all(json.loads(line) for line in r.stdout.splitlines()), r.stdout
    assert all(n in r.stderr for n in noise), r.stderr
