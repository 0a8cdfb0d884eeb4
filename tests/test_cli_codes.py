"""Exit codes, bad input, id prefixes, read commands, and what the headless face imports."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.exitcodes import ExitCode
from tests import zygote
from tests.fixtures_cli import CLI, REPO, Cli


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_help_documents_every_exit_code(cli: Cli) -> None:
    r = cli("--help")
    assert r.returncode == 0
    for code in ExitCode:
        assert re.search(rf"^\s+{int(code)}  \S", r.stdout, re.M), code
    readme = (REPO / "README.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} |" in readme, f"README lacks exit code {int(code)}"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_output_a_full_disk_could_not_take_is_exit_74_not_0(cli: Cli) -> None:
    """``outlast ls --json > out.json`` on a full disk exited 0 with the file incomplete (output errors were
    dropped, as for a reader that went away); what click prints itself, the help and the version, ended "internal
    error", exit 70. A closed pipe is still not an error of the command's."""
    assert cli("-q", "submit", "demo", "-p", "items=1").returncode == 0
    for args in (("ls",), ("--json", "ls"), ("types",), ("--help",), ("--version",), ("ls", "--help")):
        with open("/dev/full", "w") as full:
            r = zygote.run([*args], stdout=full, stderr=subprocess.PIPE, text=True, env=cli.env, timeout=60)
        assert r.returncode == ExitCode.OUTPUT_LOST, (args, r.returncode, r.stderr)
        assert r.stderr.strip().splitlines() == [
            "outlast: standard output could not be written (No space left on device): what this command printed is"
            " incomplete"
        ], r.stderr
    cmd = " ".join(CLI) + " --json ls | head -c 1 >/dev/null; echo ${PIPESTATUS[0]}"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=cli.env, timeout=60, cwd=REPO)
    assert r.stdout.strip() == "0" and r.stderr == "", (r.stdout, r.stderr)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_submit_whose_id_cannot_be_printed_says_it_on_its_error_output(cli: Cli) -> None:
    """``outlast submit ... > id.txt`` on a full disk queued the operation and exited 74 without its id: a script
    that submitted again on that exit queued the work twice. The id is said on the error output too."""
    with open("/dev/full", "w") as full:
        r = zygote.run(["submit", "demo", "-p", "items=1"], stdout=full, stderr=subprocess.PIPE, text=True, env=cli.env)
    assert r.returncode == ExitCode.OUTPUT_LOST, (r.returncode, r.stderr)
    queued = [op["id"] for op in json.loads(cli("--json", "ls").stdout)]
    assert len(queued) == 1 and f"outlast: queued as {queued[0]};" in r.stderr, (queued, r.stderr)


@pytest.mark.parametrize("options", [[], ["-q"], ["--state-dir", "/tmp"]])
def test_without_a_terminal_no_command_is_a_usage_error(cli: Cli, options: list[str]) -> None:
    """Without a terminal, bare ``outlast`` (a cron line whose ``$CMD`` came out empty) printed the help and
    exited 0: the mistake was invisible to cron. One line naming it now, and exit 2."""
    r = cli.here(*options)
    assert (r.returncode, r.stdout) == (ExitCode.USAGE, "")
    line = one_line_error(r)
    assert "no command given" in line and "the dashboard needs a terminal" in line and "--help" in line, line
    assert "Exit codes:" in cli.here("--help").stdout


def test_outcome_codes_failed_timed_out_conflict(cli: Cli) -> None:
    fail = ["-p", "seconds=0", "-p", "fail_every=1", "--profile", "failure_threshold=0"]
    r = cli("run", "demo", "-p", "items=10", *fail)
    assert r.returncode == ExitCode.FAILED, r.stdout + r.stderr
    r = cli(
        "--json",
        "run",
        "demo",
        "-p",
        "items=200",
        "-p",
        "seconds=0.05",
        "--profile",
        "base_timeout=0.3",
        "--profile",
        "max_timeout=0.5",
        "--profile",
        "per_item_timeout=0",
    )
    assert r.returncode == ExitCode.TIMED_OUT, r.stdout + r.stderr
    op = json.loads(r.stdout)
    assert op["status"] == "timed_out"
    assert "outlast resume" in r.stderr  # the hint goes to stderr so stdout stays one JSON document

    done = json.loads(cli("--json", "run", "demo", "-p", "items=1", "-p", "seconds=0").stdout)
    r = cli("resume", done["id"])
    assert r.returncode == ExitCode.CONFLICT
    assert "completed" in one_line_error(r)
    r = cli.here("cancel", done["id"])
    assert r.returncode == ExitCode.CONFLICT
    one_line_error(r)


def test_a_missing_choice_lists_the_choices_on_its_one_line(cli: Cli) -> None:
    """click lays them out on lines of their own, shown as 'Choose from:\\n\\thigh,\\n\\tnormal,\\n\\tlow'."""
    r = cli.here("priority", "1")
    assert r.returncode == ExitCode.USAGE
    line = one_line_error(r)
    assert "Choose from: high, normal, low (see:" in line, line
    assert "\\" not in line


def test_queued_work_is_cancelled_paused_reprioritised_and_resumed_without_a_worker(cli: Cli) -> None:
    a = cli.here("submit", "demo", "-p", "items=5").stdout.strip()
    b = cli.here("submit", "--priority", "low", "demo").stdout.strip()
    r = cli.here("--json", "priority", b, "HIGH")
    assert r.returncode == 0 and json.loads(r.stdout)["priority"] == "high"
    assert cli.here("pause", a).returncode == 0
    assert cli.op(a).status.value == "paused"
    r = cli.here("cancel", b)
    assert r.returncode == 0 and cli.op(b).status.value == "cancelled"
    r = cli.here("priority", b, "low")
    assert r.returncode == ExitCode.CONFLICT
    one_line_error(r)
    r = cli.here("--json", "resume", a, "--queue")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "queued"
    ls = json.loads(cli.here("ls", "--json", "--status", "queued").stdout)
    assert [o["id"] for o in ls] == [a]


@pytest.mark.parametrize(
    ("sig", "code"),
    [
        (signal.SIGINT, ExitCode.WATCH_STOPPED),
        # 128 + the signal, as a shell reports it: SIGTERM exited 130, which says Ctrl-C
        (signal.SIGTERM, ExitCode.WATCH_TERMINATED),
        (signal.SIGHUP, ExitCode.WATCH_HUNG_UP),
    ],
)
def test_watch_and_logs_follow_stop_on_a_signal_with_128_plus_it(cli: Cli, sig: int, code: ExitCode) -> None:
    assert int(code) == 128 + sig
    # An operation with log lines, queued again with no worker to run it.
    r = cli("--json", "run", "demo", "-p", "items=5", "-p", "seconds=0", "-p", "fail_every=1")
    op_id = json.loads(r.stdout)["id"]
    assert cli.here("resume", "--queue", op_id).returncode == 0
    for args, ready in ((["watch", op_id], " queued "), (["logs", "--follow", op_id], "failed on purpose")):
        p = cli.start(*args)
        p.wait_line(lambda ln, ready=ready: ready in ln)  # it is up and following
        p.signal(sig)
        assert p.wait() == code, (args, p.err)
    assert cli.op(op_id).status.value == "queued"  # left alone


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["run", "demo", "--param", "items"], ExitCode.USAGE, "KEY=VALUE"),
        (["submit", "no_such_type"], ExitCode.USAGE, "unknown operation type"),
        (["submit", "demo", "--params-json", "{not json"], ExitCode.USAGE, "not valid JSON"),
        (["submit", "demo", "--params-json", "[1]"], ExitCode.USAGE, "JSON object"),
        # A key given twice was silently the last, where a repeated -p is refused: refused the same way.
        (["submit", "demo", "--params-json", '{"items": 2, "items": 3}'], ExitCode.USAGE, "'items' given more"),
        (["submit", "demo", "-p", 'env={"A": 1, "A": 2}'], ExitCode.USAGE, "'A' given more than once"),
        (["submit", "demo", "--params-json", '{"items": 2}', "-p", "items=7"], ExitCode.USAGE, "'items' given in"),
        (["submit", "demo", "--priority", "urgent"], ExitCode.USAGE, "urgent"),
        (["submit", "demo", "-p", "items=-3"], ExitCode.USAGE, "items"),
        (["submit", "demo", "-p", "colour=red"], ExitCode.USAGE, "colour"),
        (["submit", "demo", "--profile", "checkpoint_interval=-1"], ExitCode.USAGE, "checkpoint_interval"),
        (["submit", "demo", "--timeout", "0"], ExitCode.USAGE, "--timeout"),
        (["ls", "--status", "sleeping"], ExitCode.USAGE, "sleeping"),
        (["show", "ABC!"], ExitCode.USAGE, "invalid operation id"),
        # A type or an id with a byte that is not UTF-8 (as a shell passes $'\xff'): the query of the type
        # failed (exit 70), and the id was quoted as '\udcff'; a pasted id was quoted whole.
        (["ls", "-t", "caf\udce9"], ExitCode.USAGE, "unknown operation type 'caf\\xe9'"),
        (["ls", "--json", "-t", "demo", "-t", "\udcff"], ExitCode.USAGE, "unknown operation type '\\xff'"),
        (["show", "\udcff"], ExitCode.USAGE, "invalid operation id '\\xff': expected"),
        (["logs", "a" * 5000], ExitCode.USAGE, f"invalid operation id '{'a' * 40}…': expected"),
        # The test's state dir is not made (nothing here writes): a read says so, and makes none.
        (["show", "0000000000000"], ExitCode.NOT_FOUND, "no state directory at"),
        (["nonsense"], ExitCode.USAGE, "nonsense"),
        (["--config", "missing.toml", "ls"], ExitCode.USAGE, "missing.toml"),
        (["--plugin", "no_such_plugin_module", "submit", "demo"], ExitCode.USAGE, "no_such_plugin_module"),
        (["resume", "--checkpoint", "x", "0000"], ExitCode.USAGE, "--checkpoint"),
    ],
)
def test_bad_input_is_one_line_a_code_and_stores_nothing(cli: Cli, args: list[str], code: int, says: str) -> None:
    r = cli.here(*args)
    assert r.returncode == code, r.stdout + r.stderr
    assert says in one_line_error(r)
    assert json.loads(cli.here("ls", "--json").stdout) == []


def test_bad_config_file_and_environment(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("max_concurrent = 'many'\n")
    r = cli.here("--config", str(bad), "ls")
    assert r.returncode == ExitCode.USAGE
    assert "max_concurrent" in one_line_error(r)
    r = cli.here("ls", env={**cli.env, "OUTLAST_AUTO_RESUME": "perhaps"})
    assert r.returncode == ExitCode.USAGE
    assert "OUTLAST_AUTO_RESUME" in one_line_error(r)


def test_an_outlast_workers_that_is_no_count_is_one_line_and_runs_nothing(cli: Cli, tmp_path: Path) -> None:
    """OUTLAST_WORKERS=abc or -1 was passed over without a word, and ² (a digit to str.isdigit, none to
    int) failed the index it ran with "ValueError: invalid literal for int() ... (at _pool.py:43)"."""
    (tmp_path / "a.py").write_text("x = 1\n")
    for value in ("²", "abc", "-1"):
        r = cli("run", "codebase_indexing", "-p", f"root={tmp_path}", env={**cli.env, "OUTLAST_WORKERS": value})
        assert r.returncode == ExitCode.USAGE, (value, r.stderr)
        assert f"OUTLAST_WORKERS={value!r}: expected a whole number" in one_line_error(r)
    assert json.loads(cli.here("ls", "--json").stdout) == []


def test_corrupt_state_dir_is_a_store_error(cli: Cli, tmp_path: Path) -> None:
    d = tmp_path / "corrupt"
    d.mkdir()
    (d / "outlast.db").write_bytes(b"this is not a database" * 100)
    for args in (["ls"], ["submit", "demo"], ["run", "demo"]):
        r = cli.here("--state-dir", str(d), *args)
        assert r.returncode == ExitCode.STORE, r.stderr
        assert "not a usable Outlast database" in one_line_error(r)


def test_id_prefixes_resolve_like_git(cli: Cli) -> None:
    ids = [cli.here("submit", "demo").stdout.strip() for _ in range(3)]
    assert len(set(ids)) == 3
    for op_id in ids:
        others = [o for o in ids if o != op_id]
        n = next(k for k in range(1, 14) if all(not o.startswith(op_id[:k]) for o in others))
        r = cli.here("--json", "show", op_id[:n])
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["id"] == op_id
    common = next(ids[0][:k] for k in range(13, 0, -1) if all(i.startswith(ids[0][:k]) for i in ids))
    r = cli.here("show", common)
    assert r.returncode == ExitCode.USAGE
    assert "ambiguous" in one_line_error(r)
    r = cli.here("cancel", "zzzz")
    assert r.returncode == ExitCode.NOT_FOUND
    one_line_error(r)


def test_read_commands(cli: Cli) -> None:
    r = cli("--json", "run", "demo", "-p", "items=30", "-p", "seconds=0", "-p", "fail_every=10")
    op = json.loads(r.stdout)
    assert r.returncode == 0, r.stderr
    text = cli.here("show", op["id"][:9]).stdout
    assert "completed" in text and "27/30 items, 3 failed" in text and "result" in text
    shown = json.loads(cli.here("show", "--json", op["id"]).stdout)
    assert shown["checkpoints"] and shown["checkpoints"][0]["valid"]
    logs = json.loads(cli.here("logs", "--json", op["id"]).stdout)
    assert any("failed on purpose" in rec["message"] for rec in logs)
    assert "SEQ" in cli.here("checkpoints", op["id"]).stdout
    assert op["id"] in cli.here("ls").stdout
    types = {t["type"]: t for t in json.loads(cli.here("types", "--json").stdout)}
    assert types["demo"]["runnable"] and types["codebase_indexing"]["profile"]["base_timeout"] == 3600
    with_plugin = {t["type"] for t in json.loads(cli("--plugin", "tests.ops_for_tests", "types", "--json").stdout)}
    assert {"ledger", "silent"} <= with_plugin
    cfg = json.loads(cli.here("--state-dir", str(cli.state_dir), "config", "--json").stdout)
    assert cfg["origins"]["state_dir"] == "argument" and cfg["origins"]["max_concurrent"] == "default"
    assert "FROM" in cli.here("config").stdout


class _Terminal(io.StringIO):
    """A standard output that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("env", "escapes"), [({}, True), ({"TERM": "dumb"}, False), ({"NO_COLOR": "1"}, False)])
def test_a_dumb_terminal_gets_no_escape_sequences(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], escapes: bool
) -> None:
    """On a ``TERM=dumb`` terminal ``ls`` drew its short ids in bold, and ``run`` chose the live panel, which
    rich draws there once, at the end: no styles and plain lines there, as with NO_COLOR (which keeps the panel)."""
    from engine.cli import main as cli_main
    from engine.cli.common import App

    op_id = cli.here("submit", "demo").stdout.strip()
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(SystemExit) as exited:
        cli_main(["ls"])
    listed = out.getvalue()
    assert exited.value.code == 0 and (op_id in listed) is not escapes and "queued" in listed, repr(listed)
    assert ("\x1b[" in listed) is escapes, repr(listed)
    assert App().mode == ("plain" if env.get("TERM") == "dumb" else "live")


def test_dashboard_without_a_terminal_is_one_clear_line(cli: Cli) -> None:
    r = cli("tui")  # stdin and stdout are not terminals here
    assert r.returncode == ExitCode.USAGE
    assert "the dashboard needs a terminal" in one_line_error(r)


def test_a_watch_only_dashboard_where_no_store_is_makes_none(cli: Cli, tmp_path: Path) -> None:
    """``outlast --state-dir /typo tui --watch-only`` made a whole store there and showed it empty, as the read
    commands did before they stopped making stores. It only shows, so it says there is none (exit 3, before it
    asks for a terminal) and leaves nothing; where a store is, it goes on to the terminal check."""
    typo = tmp_path / "typo"
    r = cli("--state-dir", str(typo), "tui", "--watch-only")
    assert r.returncode == ExitCode.NOT_FOUND and not typo.exists(), r
    assert one_line_error(r).startswith(f"outlast: no state directory at {typo} (from --state-dir)"), r.stderr
    typo.mkdir()
    r = cli("--state-dir", str(typo), "tui", "--watch-only")
    assert r.returncode == ExitCode.NOT_FOUND and os.listdir(typo) == [], r
    assert "holds no outlast.db; a dashboard --watch-only makes none" in one_line_error(r), r.stderr
    assert cli("-q", "submit", "demo").returncode == 0  # the fixture's store, made
    r = cli("tui", "--watch-only")
    assert r.returncode == ExitCode.USAGE and "the dashboard needs a terminal" in one_line_error(r), r


def test_dashboard_that_cannot_be_imported_is_one_clear_line(cli: Cli) -> None:
    # On a real terminal (a pty), the import itself fails, as with a broken install.
    code = "import sys, engine.cli as c\nsys.modules['tui.app'] = None\nc.main(['--state-dir', sys.argv[1], 'tui'])\n"
    master, slave = os.openpty()
    try:
        r = subprocess.run(
            [sys.executable, "-c", code, str(cli.state_dir)],
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == ExitCode.USAGE
    assert "the dashboard is not available" in one_line_error(r)


def test_dashboard_whose_error_output_is_no_terminal_is_one_clear_line(cli: Cli, tmp_path: Path) -> None:
    """``outlast 2>log`` on a terminal: Textual draws on standard error, so the dashboard ran unseen, the
    terminal blank, its frames in the file, running queued work, its keys answered blind."""
    assert cli("-q", "submit", "demo").returncode == 0
    master, slave = os.openpty()
    try:
        with open(tmp_path / "log", "w") as log:
            r = zygote.run(["tui"], stdin=slave, stdout=slave, stderr=log, env=cli.env, cwd=REPO, timeout=30)
    finally:
        os.close(slave)
        os.close(master)
    text = (tmp_path / "log").read_text()
    assert r.returncode == ExitCode.USAGE, text[-300:]
    assert text.startswith("outlast: the dashboard draws on standard error, which is not the terminal here")
    assert text.count("\n") == 1 and "\x1b" not in text
    [op] = json.loads(cli("ls", "--json").stdout)
    assert op["status"] == "queued"  # nothing ran it


@pytest.mark.parametrize("args", [["--help"], ["ls"], ["show", "PREFIX"], ["ls", "--json"]])
def test_headless_commands_import_neither_textual_nor_rich(cli: Cli, args: list[str]) -> None:
    op_id = cli.here("submit", "demo").stdout.strip()
    args = [op_id[:8] if a == "PREFIX" else a for a in args]
    code = (
        "import sys\n"
        "from engine.cli import main\n"
        f"sys.argv = ['outlast', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'tui'))\n"
        "print('RC', rc, 'BAD', bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli.env, cwd=REPO)
    assert r.stdout.strip().splitlines()[-1] == "RC 0 BAD []", r.stdout + r.stderr


def test_console_script_is_installed_and_versioned(cli: Cli) -> None:
    r = cli("--version")
    assert r.returncode == 0 and "outlast" in r.stdout
    assert CLI[-1] == "engine.cli"


def test_ls_shows_the_type_under_type_and_the_name_under_name(cli: Cli) -> None:
    """`ls -t demo` listed TYPE `W1` (the --name), and `ls -t W1` found nothing: the column lied."""
    assert cli("-q", "run", "demo", "-p", "items=2", "-p", "seconds=0", "--name", "W1").returncode == 0
    header, row = cli.here("ls", "-t", "demo").stdout.splitlines()[:2]
    cols = header.split()
    assert cols[:5] == ["#", "ID", "STATUS", "TYPE", "NAME"]
    cells = row.split()
    assert cells[3] == "demo" and cells[4] == "W1"


def test_ls_of_an_unknown_type_is_a_usage_error_naming_it(cli: Cli) -> None:
    """``outlast ls -t nosuch`` (a typo) exited 0 with "no operations", as if there were none of a real type.
    A known type with none stored still lists nothing with 0, and so does a plugin's type whose plugin is
    not loaded now while operations of it are stored (they are listed)."""
    for args in (["ls", "-t", "nosuch"], ["--json", "ls", "-t", "nosuch"], ["ls", "-t", "demo", "-t", "nosuch"]):
        r = cli.here(*args)
        assert r.returncode == ExitCode.USAGE and r.stdout == "", (args, r.returncode, r.stdout)
        line = one_line_error(r)
        assert "unknown operation type 'nosuch'" in line and "demo" in line and "outlast types" in line, line
    r = cli.here("ls", "-t", "codebase_indexing")
    assert r.returncode == 0 and r.stderr.strip() == "no operations", r.stderr
    submitted = cli("-q", "--plugin", "tests.ops_for_tests", "submit", "ledger", "-p", "items=1")
    assert submitted.returncode == 0, submitted.stderr
    for args in (["ls", "-t", "ledger"], ["--json", "ls", "-t", "ledger"]):
        r = cli(*args)
        assert r.returncode == 0 and submitted.stdout.strip() in r.stdout, (args, r.stdout, r.stderr)


def test_show_says_elapsed_is_the_resumed_attempts(cli: Cli) -> None:
    """After a resume, show's elapsed (and the dashboard's) counts from the new attempt's start, which read
    as the whole run's time: it says which attempt it is."""
    first = json.loads(cli("--json", "run", "demo", "-p", "items=4", "-p", "seconds=0", "-p", "fail_every=1").stdout)
    assert first["status"] == "failed", first
    assert re.search(r"^elapsed +\d+s$", cli.here("show", first["id"]).stdout, re.M)
    assert cli("-q", "resume", first["id"]).returncode == ExitCode.FAILED
    shown = cli.here("show", first["id"]).stdout
    assert re.search(r"^elapsed +\d+s in attempt 2$", shown, re.M), shown


def test_a_terminal_that_cannot_show_a_name_gets_it_escaped_not_an_internal_error(cli: Cli) -> None:
    """Under an ASCII (or latin-1) stdout, ``outlast run --name "✓ done"`` died after its submit with
    "internal error: UnicodeEncodeError" (exit 70), leaving a queued operation nobody ran, and
    ``outlast ls`` died the same way from then on."""
    env = {**cli.env, "PYTHONIOENCODING": "ascii"}
    r = cli("run", "demo", "--name", "\u2713 done \u00e9", "-p", "items=2", "-p", "seconds=0", env=env)
    assert r.returncode == 0, r.stderr
    assert "\\u2713 done" in r.stdout and "completed" in r.stdout
    listed = cli("ls", env=env)
    assert listed.returncode == 0 and "\\u2713 done" in listed.stdout, listed.stderr
    # JSON stays JSON: the stream's "\\xNN" escapes (its errors="backslashreplace") are not JSON ones.
    dumped = cli("--json", "ls", env=env)
    assert dumped.returncode == 0 and dumped.stdout.isascii(), dumped.stderr
    assert json.loads(dumped.stdout)[0]["name"] == "\u2713 done \u00e9", dumped.stdout


def test_the_c_locale_without_utf8_mode_gets_names_escaped_not_an_internal_error(cli: Cli) -> None:
    """``LC_ALL=C PYTHONUTF8=0``: stdout is ASCII with ``surrogateescape``, which raised as ``strict``
    does: ``ls`` was an internal error, and ``resume`` died after claiming, leaving the operation queued."""
    assert cli("-q", "submit", "demo", "--name", "caf\u00e9 \u2603", "-p", "items=2").returncode == 0
    env = {**cli.env, "LC_ALL": "C", "PYTHONUTF8": "0"}
    env.pop("PYTHONIOENCODING", None)
    listed = cli("ls", env=env)
    assert listed.returncode == 0 and "caf\\xe9 \\u2603" in listed.stdout, listed.stderr
    shown = cli("--json", "show", "1", env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "caf\u00e9 \u2603", shown.stdout
    r = cli("resume", "1", env=env)
    assert r.returncode == 0 and "completed" in r.stdout, r.stderr
    # A UTF-8 argument this locale cannot decode: refused (nothing stored), saying so and what to change.
    refused = cli("submit", "demo", "--name", "\u00fcn\u00ef", env=env)
    assert refused.returncode == ExitCode.USAGE, refused.stderr
    line = one_line_error(refused)
    assert "locale could not decode" in line and "ascii" in line and "PYTHONUTF8=1" in line, line


def test_quiet_run_says_why_it_failed_in_one_line_on_stderr(cli: Cli) -> None:
    """``outlast -q run`` ("nothing but errors") printed nothing when the operation failed: a cron job
    mailed an empty message, and the reason took an ``outlast show``. A completed run says nothing more.
    Its stdout is the operation's id ("and ids"), as ``-q submit``'s: it printed none, so a script could not
    keep it; so do ``-q rerun`` and ``-q resume`` (the full id of a handle), in the foreground or queued."""
    r = cli("-q", "run", "command", "-p", "command=sh -c 'exit 3'")
    (failed_id,) = r.stdout.splitlines()
    assert r.returncode == 1 and cli.op(failed_id).status.value == "failed"
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"{failed_id} failed: ") and "exit" in line, line
    ok = cli("-q", "run", "command", "-p", "command=sh -c 'exit 0'")
    assert (ok.returncode, ok.stderr) == (0, "") and cli.op(ok.stdout.strip()).status.value == "completed"
    again = cli("-q", "rerun", ok.stdout.strip())
    assert (again.returncode, again.stderr) == (0, "") and again.stdout.strip() not in ("", ok.stdout.strip())
    paused = cli.here("-q", "submit", "demo", "-p", "items=2", "-p", "seconds=0").stdout.strip()
    assert cli.here("-q", "pause", paused).stdout == ""
    handle = str(cli.op(paused).handle)
    assert cli.here("-q", "resume", handle, "--queue").stdout == f"{paused}\n"  # queued again
    assert cli.here("-q", "resume", handle, "--queue").stdout == f"{paused}\n"  # already queued
    resumed = cli("-q", "resume", handle)
    assert (resumed.returncode, resumed.stdout, resumed.stderr) == (0, f"{paused}\n", "")


@pytest.mark.parametrize(
    "args",
    [
        ["run", "demo", "-p", "items=2", "-p", "seconds=0", "--json"],
        ["submit", "demo", "-p", "items=2", "--json"],
        ["ls", "--json"],
    ],
)
def test_json_after_the_command_works_as_before_it(cli: Cli, args: list[str]) -> None:
    """`outlast run demo ... --json` said "No such option"; only `outlast --json run ...` worked."""
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout.strip().splitlines()[-1])
    assert isinstance(data, dict | list)


def test_pause_resume_cancel_take_json_after_the_command(cli: Cli) -> None:
    op_id = cli.here("-q", "submit", "demo", "-p", "items=5").stdout.strip()
    for action in (["pause", op_id], ["resume", op_id, "--queue"], ["cancel", op_id]):
        r = cli(*action, "--json")
        assert r.returncode == 0, (action, r.stderr)
        assert json.loads(r.stdout.strip().splitlines()[-1])["id"] == op_id


def test_ctrl_c_on_watch_says_the_operation_goes_on_and_never_that_it_pauses(cli: Cli) -> None:
    """Watching never pauses the job; the last line said "pausing at the next safe point"."""
    op_id = cli("-q", "run", "demo", "-p", "items=400", "-p", "seconds=0.05", "--detach").stdout.strip()
    watch = cli.start("watch", op_id)
    watch.wait_line(lambda ln: op_id in ln)
    watch.signal(signal.SIGINT)
    assert watch.wait() == ExitCode.WATCH_STOPPED
    out = "\n".join(watch.out)
    assert "pausing" not in out
    assert f"stopped watching; {op_id} goes on running" in out
    assert cli.op(op_id).status.value == "running"
    cli.here("cancel", op_id)


def test_rerun_starts_a_completed_operation_afresh_with_params_changed(cli: Cli) -> None:
    """`resume` of a completed operation is exit 7; rerun makes a new one from the same spec."""
    first = json.loads(
        cli("--json", "run", "demo", "-p", "items=3", "-p", "seconds=0", "--name", "n1", "--priority", "high").stdout
    )
    refused = cli.here("resume", first["id"])
    assert refused.returncode == ExitCode.CONFLICT
    assert "a completed operation is final: rerun it" in one_line_error(refused)  # the way on, named
    r = cli("rerun", first["id"][:10], "-p", "items=4", "--json")
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout.strip().splitlines()[-1])
    assert again["id"] != first["id"] and again["status"] == "completed"
    assert (again["type"], again["name"], again["priority"]) == ("demo", "n1", "high")
    assert again["params"] == {**first["params"], "items": 4} and again["result"]["items"] == 4
    before = cli.here("ls", "--json").stdout
    bad = cli.here("rerun", first["id"], "-p", "items=-1")
    assert bad.returncode == ExitCode.USAGE and len(bad.stderr.strip().splitlines()) == 1
    assert cli.here("ls", "--json").stdout == before  # nothing stored


def test_rerun_with_a_timeout_key_replaces_a_fixed_timeout_as_resume_does(cli: Cli) -> None:
    """Work that hit its `--timeout` run again with `--profile max_timeout=...` kept the fixed timeout, the
    profile given silently ignored for the deadline (a resume with the same key replaces it). A key given by
    its seed name beside the stored one's (`per_file_timeout`, `per_item_timeout`) is the same key."""
    first = cli.here("submit", "demo", "-p", "items=3", "--timeout", "5", "--profile", "per_item_timeout=2").stdout
    cli.here("cancel", first.strip())
    kept = cli.here("rerun", first.strip(), "--queue", "--profile", "stall_timeout=9")
    assert kept.returncode == 0, kept.stderr
    assert cli.op(kept.stdout.strip()).timeout == 5  # no timeout key: the fixed one stands
    r = cli.here("rerun", first.strip(), "--queue", "--profile", "max_timeout=7200", "--profile", "per_file_timeout=3")
    assert r.returncode == 0, r.stderr
    again = cli.op(r.stdout.strip())
    assert again.timeout is None and again.profile["max_timeout"] == 7200 and again.profile["per_item_timeout"] == 3
    assert again.effective_timeout == again.profile["base_timeout"], again


def test_control_commands_ask_the_lifecycle_which_action_applies(cli: Cli) -> None:
    """Each refusal is the lifecycle's one line (exit 7) naming the statuses that allow the action, and
    rerun applies to settled operations only (it made a second copy of queued work)."""
    from engine.lifecycle import ACTIONS, Action, Status

    queued = cli.here("submit", "demo", "-p", "items=3").stdout.strip()
    before = cli.here("ls", "--json").stdout
    r = cli.here("rerun", queued)
    assert r.returncode == ExitCode.CONFLICT
    assert one_line_error(r) == (
        f"outlast: operation {queued} is queued: only paused, completed, failed, cancelled, timed_out, interrupted "
        "operations can be run again"
    )
    r = cli.here("resume", queued, "--checkpoint", "1")  # queued is run as it is (test_cli_run), not from a checkpoint
    assert r.returncode == ExitCode.CONFLICT and "is queued, not stopped" in one_line_error(r)
    assert cli.here("ls", "--json").stdout == before  # nothing stored
    assert cli.here("cancel", queued).returncode == 0
    for action, args, verb in (
        ("pause", [], "paused"),
        ("priority", ["high"], "re-prioritised"),
        ("cancel", [], "cancelled"),
    ):
        r = cli.here(action, queued, *args)
        allowed = ", ".join(s.value for s in Status if s in ACTIONS[Action(action)])
        assert r.returncode == ExitCode.CONFLICT, (action, r.stderr)
        assert one_line_error(r).endswith(f"is cancelled: only {allowed} operations can be {verb}")


def test_ctrl_c_on_watch_of_queued_work_says_it_stays_queued(cli: Cli) -> None:
    """Nobody runs it (no worker): stopping the watch said it "goes on running"."""
    op_id = cli.here("-q", "submit", "demo", "-p", "items=5").stdout.strip()
    watch = cli.start("watch", op_id)
    watch.wait_line(lambda ln: op_id in ln and "queued" in ln)
    watch.signal(signal.SIGINT)
    assert watch.wait() == ExitCode.WATCH_STOPPED
    out = "\n".join(watch.out)
    assert f"stopped watching; {op_id} stays queued" in out, out
    assert cli.op(op_id).status.value == "queued"


def test_a_cancel_whose_operation_another_command_resumed_says_so(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """``outlast cancel X`` while another shell runs ``outlast resume X``: the cancel took effect, the resume
    started attempt 2 between two of the cancel's looks, and the cancel waited for that attempt to end and
    said X "became completed before the cancel took effect". The store's answers are played here in that
    order (the race itself is a tenth of a second wide)."""
    import contextlib
    import time

    from engine import Operation, Status
    from engine.cli import control

    now = time.time()
    base = Operation(id="06bjf7x6y3cz7", type="demo", created_at=now, queued_at=now, updated_at=now)
    running = base.model_copy(update={"status": Status.RUNNING, "attempt": 1})
    resumed = base.model_copy(update={"status": Status.RUNNING, "attempt": 2})
    done = base.model_copy(update={"status": Status.COMPLETED, "attempt": 2})
    looks = iter([running, resumed, done, done])

    class Engine:
        async def resolve(self, op_id: str) -> str:
            return base.id

        async def get(self, op_id: str) -> Operation:
            return next(looks)

        async def cancel(self, op_id: str) -> Operation:
            return running

    @contextlib.asynccontextmanager
    async def session(settings: object, recover: bool = True, create: bool = True) -> Any:
        yield Engine()

    monkeypatch.setattr(control, "session", session)
    r = cli.here("cancel", base.id)
    assert r.returncode == ExitCode.CONFLICT, (r.stdout, r.stderr)
    line = one_line_error(r)
    assert "attempt 1 ended and another command resumed it (attempt 2, now running)" in line, line
