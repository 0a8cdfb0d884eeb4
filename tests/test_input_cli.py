"""Bad input on the command line: one line naming what is wrong, an exit code from the table, nothing
stored, nothing leaked, nothing printed raw to a terminal (issue 13).

Answered in this process (``cli.here``) but where a plugin, a detached child or the console script
itself is the point: test_input_fuzz_cli checks that the script answers the same."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine import OperationSpec
from engine.exitcodes import ExitCode
from tests.fixtures_cli import CLI, REPO, Cli, main_here, until


def one_line(r: subprocess.CompletedProcess, code: int = ExitCode.USAGE) -> str:
    """The single stderr line of a refused command, after checking its exit code."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def nothing_stored(cli: Cli) -> None:
    r = cli.here("ls", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


# ---- 1: deep JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [30_000, 100])
def test_params_json_nested_too_deep_is_one_line(cli: Cli, depth: int) -> None:
    deep = "[" * depth + "]" * depth
    line = one_line(cli.here("submit", "demo", "--params-json", f'{{"a": {deep}}}'))
    assert "nested deeper than 32 levels" in line, line
    nothing_stored(cli)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["ls", "--state-dir", "elsewhere"], "--state-dir"),
        (["run", "demo", "--store", "x"], "--store"),
        (["show", "1", "-q"], "-q"),
    ],
)
def test_a_global_option_after_the_command_says_where_it_goes(cli: Cli, args: list[str], option: str) -> None:
    """``outlast ls --state-dir X`` said "No such option: '--state-dir'. Did you mean '--status'?", which sent
    a user after another option; it is one of the options given before the command."""
    line = one_line(cli.here(*args))
    command = args[0]
    assert f"{option} is one of outlast's global options: give it before the command" in line, line
    assert f"(outlast {option} ... {command})" in line and "Did you mean" not in line, line
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


# ---- 3: outputs checked before anything is stored -------------------------------------------------


def _bad_outputs(tmp_path: Path) -> dict[str, tuple[str, list[str]]]:
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n")
    text = tmp_path / "notes.txt"
    text.write_text("not a database, not a report\n")
    file_dest = tmp_path / "plain-file"
    file_dest.write_text("x")
    return {
        "index into a directory": ("output", ["codebase_indexing", "-p", f"root={root}", "-p", f"output={tmp_path}"]),
        "index over a text file": ("output", ["codebase_indexing", "-p", f"root={root}", "-p", f"output={text}"]),
        "index under a file": ("output", ["codebase_indexing", "-p", f"root={root}", "-p", f"output={text}/x.db"]),
        "scan into a directory": ("output", ["security_scan", "-p", f"root={root}", "-p", f"output={tmp_path}"]),
        "scan over a text file": (
            "output",
            ["security_scan", "-p", f"root={root}", "-p", "format=json", "-p", f"output={text}"],
        ),
        "backup over a file": (
            "destination",
            ["backup_operation", "-p", f"source={root}", "-p", f"destination={file_dest}"],
        ),
        "backup under a file": (
            "destination",
            ["backup_operation", "-p", f"source={root}", "-p", f"destination={file_dest}/sub"],
        ),
    }


def test_outputs_of_the_wrong_kind_are_refused_before_anything_is_stored(cli: Cli, tmp_path: Path) -> None:
    for what, (field, args) in _bad_outputs(tmp_path).items():
        line = one_line(cli.here("submit", *args))
        assert field in line, (what, line)
    assert (tmp_path / "notes.txt").read_text() == "not a database, not a report\n"
    nothing_stored(cli)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_output_directory_is_refused(cli: Cli, tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    for args in (
        ["codebase_indexing", "-p", f"root={root}", "-p", f"output={locked}/i.db"],
        ["security_scan", "-p", f"root={root}", "-p", f"output={locked}/r"],
        ["backup_operation", "-p", f"source={root}", "-p", f"destination={locked}/b"],
    ):
        assert "writable" in one_line(cli.here("submit", *args))
    nothing_stored(cli)


def test_an_existing_index_and_report_are_accepted_and_another_programs_files_refused(cli: Cli, tmp_path: Path) -> None:
    """An index or a report an earlier run wrote is written again; another program's database or JSON file
    at that path is refused in one line (indexing dropped its tables, the scan replaced a package.json)."""
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n")
    db, report = tmp_path / "index.sqlite", tmp_path / "report.json"
    index = ("codebase_indexing", "-p", f"root={root}", "-p", f"output={db}")
    scan = ("security_scan", "-p", f"root={root}", "-p", "format=json", "-p", f"output={report}")
    assert cli("-q", "run", *index).returncode == 0 and cli("-q", "run", *scan).returncode == 0
    assert cli.here("submit", *index).returncode == 0
    assert cli.here("submit", *scan).returncode == 0
    theirs_db, theirs_json = tmp_path / "theirs.sqlite", tmp_path / "package.json"
    sqlite3.connect(theirs_db).execute("create table t (x)").connection.close()
    theirs_json.write_text('{"name": "app"}\n')
    for args in (
        ("codebase_indexing", "-p", f"root={root}", "-p", f"output={theirs_db}"),
        ("security_scan", "-p", f"root={root}", "-p", "format=json", "-p", f"output={theirs_json}"),
    ):
        r = cli.here("submit", *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert theirs_json.read_text() == '{"name": "app"}\n'


# ---- 4: non-finite and absurd numbers -------------------------------------------------------------

BAD_NUMBERS = [
    ["--profile", "max_timeout=1e999"],
    ["--profile", "checkpoint_interval=NaN"],
    ["--profile", "stall_timeout=-Infinity"],
    ["--profile", "retry.backoff_max=1e999"],
    ["--profile", "base_timeout=1e15"],
    ["--timeout", "inf"],
    ["--timeout", "1e999"],
    ["--timeout", "nan"],
    ["--timeout", "1e12"],
    ["--items", "1000000000000000000"],
    ["-p", "seconds=1e999"],
    ["-p", "items=1e999"],
    ["--params-json", '{"seconds": NaN}'],
    ["--params-json", '{"x": [1, Infinity]}'],
]


@pytest.mark.parametrize("args", BAD_NUMBERS, ids=lambda a: " ".join(a))
def test_non_finite_and_absurd_numbers_are_one_line(cli: Cli, args: list[str]) -> None:
    one_line(cli.here("submit", "demo", *args))
    nothing_stored(cli)


@pytest.mark.parametrize(
    "args",
    [
        ["ls", "--limit", str(2**63)],
        ["logs", "0", "--limit", str(2**63)],
        ["resume", "0", "--queue", "--checkpoint", str(2**64)],
        ["cancel", "0", "--wait", "nan"],
        ["pause", "0", "--wait", "inf"],
    ],
    ids=lambda a: " ".join(a[:1] + a[-2:]),
)
def test_absurd_numbers_in_other_commands_are_one_line(cli: Cli, args: list[str]) -> None:
    """Found by the fuzzer: ls --limit 2**63 reached SQLite and exited 70 (OverflowError)."""
    assert "Invalid value" in one_line(cli.here(*args))


@pytest.mark.parametrize(
    "args",
    [
        ["comprehensive_test_suite", "-p", "path=tests", "-p", "collect_timeout=1e300"],
        ["comprehensive_test_suite", "-p", "path=tests", "-p", "timeout_per_test=1e12"],
        ["security_scan", "-p", "root=.", "-p", "max_file_size=1e15"],
        ["backup_operation", "-p", "source=tests", "-p", "destination=/nonexistent-x", "-p", "chunk_checkpoint=1e15"],
    ],
    ids=lambda a: a[-1],
)
def test_absurd_params_of_the_builtins_are_one_line(cli: Cli, args: list[str]) -> None:
    key = args[-1].split("=")[0]
    assert key in one_line(cli.here("submit", *args))
    nothing_stored(cli)


def test_a_newline_in_a_params_key_stays_on_the_one_line(cli: Cli) -> None:
    """The error names the key, and the key held a newline: printed raw, it made a second line
    (found by test_input_fuzz_cli, seed 2851614311)."""
    line = one_line(
        cli.here("submit", "backup_operation", "--params-json", '{"source": {"a\\nb": 9223372036854775808}}')
    )
    assert "source.a\\nb: 9.22e+18 is out of range" in line, line
    nothing_stored(cli)


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["-p", "items=1" + "0" * 111], "1e+111"),
        (["-p", "items=1" + "0" * 400], "1e+400"),
        (["--params-json", '{"items": 1' + "0" * 400 + "}"], "1e+400"),
        (["-p", "items=-123" + "0" * 5000], "-1.23e+5002"),
        (["--params-json", '{"items": -1' + "0" * 5000 + "}"], "-1e+5000"),
    ],
    ids=["111", "400", "400 json", "5000", "5000 json"],
)
def test_an_integer_past_64_bits_is_one_line_at_any_size(cli: Cli, args: list[str], shown: str) -> None:
    """Past 1.8e308 the message's format made a float of it: "internal error: OverflowError", exit 70; past
    4,300 digits JSON's reader said "use sys.set_int_max_str_digits()"."""
    line = one_line(cli.here("submit", "demo", *args))
    assert line == f"outlast: operation spec: params: items: {shown} is out of range (|n| < 2**63)", line
    nothing_stored(cli)


def test_a_non_finite_profile_in_the_config_file_is_one_line(cli: Cli, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[profiles.demo]\nmax_timeout = inf\n")
    line = one_line(cli.here("--config", str(cfg), "submit", "demo"))
    assert "max_timeout" in line and "c.toml" in line


def test_a_profile_that_is_no_table_is_said_so(cli: Cli, tmp_path: Path) -> None:
    """``[profiles]`` with ``demo = 5`` said "[profiles.demo] ?: Extra inputs are not permitted": a key
    named ``?`` that no file holds."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[profiles]\ndemo = 5\n")
    line = one_line(cli.here("--config", str(cfg), "submit", "demo"))
    assert "c.toml" in line and "profiles.demo" in line and "table" in line and "?" not in line, line
    nothing_stored(cli)


@pytest.mark.parametrize("command", [["types"], ["config"], ["ls"], ["submit", "codebase_indexing", "-p", "root=."]])
def test_a_profile_for_no_such_type_is_refused_naming_the_nearest(cli: Cli, tmp_path: Path, command: list[str]) -> None:
    """``[profiles.codebase_indexin]`` (a misspelt type) was kept and never used: the user's 24-hour limit was
    not applied to codebase_indexing, and ``outlast types`` said nothing (h137, finding 3)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[profiles.codebase_indexin]\nmax_timeout = 86400\n")
    line = one_line(cli.here("--config", str(cfg), *command))
    assert line.startswith(f"outlast: {cfg}: [profiles.codebase_indexin]: no such operation type"), line
    assert "did you mean codebase_indexing?" in line, line
    nothing_stored(cli)


def test_a_profile_for_a_type_nothing_is_near_lists_the_known_ones(cli: Cli, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[profiles."x\\ny"]\nmax_timeout = 86400\n')
    line = one_line(cli.here("--config", str(cfg), "types"))
    assert "[profiles.'x\\ny']: no such operation type (known: backup_operation, " in line, line
    assert 'plugins = ["MODULE"]' in line, line


PLUGIN_TYPE = """
from engine import operation

@operation("nightly_sync")
async def sync(ctx, params):
    return {}
"""


def test_a_profile_for_a_plugin_type_counts_once_its_plugin_is_loaded(cli: Cli, tmp_path: Path) -> None:
    """The check runs after the plugins are imported: a config's ``plugins``, ``--plugin``, or one installed
    (an entry point, imported only to look for a name no built-in type has); without it, refused."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sync_ops.py").write_text(PLUGIN_TYPE)
    env = {**cli.env, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
    profile = "[profiles.nightly_sync]\nmax_timeout = 86400\n"
    cfg = tmp_path / "c.toml"

    def types(*args: str) -> subprocess.CompletedProcess:
        return cli("--config", str(cfg), *args, "types", env=env)

    cfg.write_text(profile)
    line = one_line(types())
    assert "[profiles.nightly_sync]: no such operation type (known: " in line, line
    assert 'plugins = ["MODULE"]' in line, line

    for how, text, args in (
        ("config", 'plugins = ["sync_ops"]\n' + profile, ()),
        ("--plugin", profile, ("--plugin", "sync_ops")),
    ):
        cfg.write_text(text)
        r = types(*args)
        assert r.returncode == 0, (how, r.stderr)
        row = next(ln for ln in r.stdout.splitlines() if ln.startswith("nightly_sync "))
        assert "1d00h" in row, (how, row)  # its max_timeout: the profile is the one applied

    info = site / "sync_ops-0.1.dist-info"  # installed: an entry point
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sync_ops\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[outlast.operations]\nsync = sync_ops\n")
    cfg.write_text(profile)
    r = types()
    assert r.returncode == 0, r.stderr
    assert "1d00h" in next(ln for ln in r.stdout.splitlines() if ln.startswith("nightly_sync "))


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("max_concurrent = true", "key 'max_concurrent': true is not a number (expected a whole number, 1 <="),
        ("checkpoints_keep = false", "key 'checkpoints_keep': false is not a number"),
        ("grace_period = true", "key 'grace_period': true is not a number (expected a number, 0 <="),
        ("max_memory_percent = true", "key 'max_memory_percent': true is not a number"),
        ("log_limit = false", "key 'log_limit': false is not a number"),
        ("auto_resume = 1", "key 'auto_resume': 1 is not true or false"),
        ("auto_resume = 0.0", "key 'auto_resume': 0.0 is not true or false"),
        ('auto_resume = "yes"', "key 'auto_resume': \"yes\" is not true or false"),
        ('max_concurrent = "3"', "key 'max_concurrent': \"3\" is not a number (a TOML string: expected a whole"),
        ('grace_period = "10"', "key 'grace_period': \"10\" is not a number (a TOML string"),
        ('[profiles.demo]\nbase_timeout = "10"', '[profiles.demo] base_timeout: "10" is not a number'),
    ],
)
def test_a_boolean_for_a_number_or_a_number_for_a_switch_is_refused(
    cli: Cli, tmp_path: Path, written: str, said: str
) -> None:
    """Read as pydantic's lax mode reads them, ``max_concurrent = true`` ran one at a time and ``auto_resume = 1``
    resumed (h137, finding 3)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(written + "\n")
    line = one_line(cli.here("--config", str(cfg), "config"))
    assert line.startswith(f"outlast: {cfg}: {said}"), line


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({"OUTLAST_AUTO_RESUME": "1"}, ("auto_resume", True)),
        ({"OUTLAST_AUTO_RESUME": "off"}, ("auto_resume", False)),
        ({"OUTLAST_MAX_CONCURRENT": "5"}, ("max_concurrent", 5)),
        ({"OUTLAST_GRACE_PERIOD": "2.5"}, ("grace_period", 2.5)),
        ({"OUTLAST_MAX_CONCURRENT": "true"}, None),
        ({"OUTLAST_GRACE_PERIOD": "false"}, None),
        ({"OUTLAST_AUTO_RESUME": "2"}, None),
    ],
)
def test_the_environment_keeps_its_forms_and_refuses_a_switch_for_a_number(
    cli: Cli, env: dict[str, str], shown: tuple[str, object] | None
) -> None:
    r = cli.here("--json", "config", env={**cli.env, **env})
    if shown is None:
        assert next(iter(env)) in one_line(r)
        return
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["settings"][shown[0]] == shown[1], r.stdout


# ---- 5: store URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "",
        "redis://127.0.0.1:1/abc",
        "redis://127.0.0.1:1/0/1",
        "redis://127.0.0.1:1/-1",
        "redis://127.0.0.1:1/0?retry_for=-1",
        "redis://127.0.0.1:1/0?retry_for=nan",
        "redis://127.0.0.1:1/0?retry_for=inf",
        "redis://127.0.0.1:1/0?lease_ttl=0",
        "redis://127.0.0.1:1/0?lease_ttl=abc",
        "redis://127.0.0.1:99999/0",
        "redis://:sekrit@127.0.0.1:1/abc",
    ],
)
def test_a_bad_store_url_is_one_line(cli: Cli, url: str) -> None:
    for env_too in (False, True):
        if env_too:
            if not url:
                continue  # an empty environment variable means unset
            r = cli.here("ls", env={**cli.env, "OUTLAST_STORE": url})
        else:
            r = cli.here("--store", url, "ls")
        line = one_line(r)
        assert "store" in line, line
        assert "sekrit" not in line


# ---- 6: secrets -----------------------------------------------------------------------------------


def test_the_redis_password_is_never_printed(cli: Cli, tmp_path: Path) -> None:
    url = "redis://user:sekrit-pw@127.0.0.1:1/0?retry_for=0"
    for env, args in (
        (cli.env, ["--store", url, "config"]),
        (cli.env, ["--store", url, "--json", "config"]),
        ({**cli.env, "OUTLAST_STORE": url}, ["config"]),
        ({**cli.env, "OUTLAST_STORE": url}, ["--json", "config"]),
        (cli.env, ["--store", url, "ls"]),
        (cli.env, ["--store", url, "submit", "demo"]),
    ):
        r = cli.here(*args, env=env)
        assert "sekrit" not in r.stdout + r.stderr, (args, r.stdout, r.stderr)
        if args[-1] == "config":
            assert r.returncode == 0 and "127.0.0.1:1" in r.stdout, r.stdout + r.stderr


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_detached_child_gets_the_password_in_its_environment_not_its_command_line(cli: Cli, redis_factory) -> None:
    server = redis_factory(password="sekrit-pw")
    url = server.url
    assert "sekrit-pw" in url
    r = cli("--store", url, "--json", "run", "demo", "-p", "items=400", "-p", "seconds=0.05", "--detach")
    assert r.returncode == 0, r.stderr
    pid, op_id = json.loads(r.stdout)["pid"], json.loads(r.stdout)["id"]
    try:
        cmd = until(lambda: _cmdline(pid), 10, what="child command line")
        assert "_run-one" in cmd and "sekrit" not in cmd, cmd
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"sekrit-pw" in environ  # how the child reaches the store
        until(lambda: cli("--store", url, "show", op_id).stdout.count("running"), 30, what="running")
        shown = cli("--store", url, "show", op_id)
        assert "sekrit" not in shown.stdout + shown.stderr
    finally:
        cli("--store", url, "cancel", op_id)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


# ---- 7: terminal escapes --------------------------------------------------------------------------

EVIL = "\x1b]0;owned\x07\x1b[2J\x1b[Hfake\rline\nnext\x9b31m\x00\x7f"


def _no_raw_controls(text: str) -> None:
    bad = [c for c in text if (ord(c) < 32 and c not in "\n") or 0x7F <= ord(c) <= 0x9F]
    assert not bad, repr(text)


def test_a_blank_name_is_no_name(cli: Cli) -> None:
    """``--name "$UNSET"`` or spaces stored a blank label: ``ls`` showed an empty name column, ``show`` an empty
    name, and the API a name of three spaces. It is no name, as when none is given."""
    for blank in ("", "   ", "\u3000"):
        r = cli.here("--json", "submit", "demo", "--name", blank, "-p", "items=1", "-p", "seconds=0")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["name"] is None, (blank, r.stdout)


def test_a_name_that_reverses_the_line_is_refused_and_nothing_is_stored(cli: Cli, state_dir: Path) -> None:
    """U+202E (right-to-left override) and the other bidirectional overrides and isolates were taken in a name
    where every other control character is refused: stored, a name such as ``report\u202eexe.txt`` reads
    as another on any face that does not escape it (the JSON's consumers)."""
    for bad in ("\u202e", "\u202a", "\u2066", "\u2069"):
        r = cli.here("submit", "demo", "--name", f"report{bad}txt.exe", "-p", "items=1", "-p", "seconds=0")
        assert r.returncode == 2, (bad, r)
        assert f"control character U+{ord(bad):04X}" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r
    assert cli.here("--json", "ls").stdout.strip() in ("", "[]")
    r = cli.here("--json", "submit", "demo", "--name", "rapport été שלום 🎉", "-p", "items=1")
    assert r.returncode == 0 and json.loads(r.stdout)["name"] == "rapport été שלום 🎉", r


def test_a_tag_without_a_key_is_refused() -> None:
    """``{"tags": {"": "x"}}`` was stored: a tag no filter can name, shown as ``=x``."""
    for key in ("", " ", "\u3000"):
        with pytest.raises(ValidationError, match="key is empty or blank"):
            OperationSpec(type="demo", tags={key: "x"})
    assert OperationSpec(type="demo", tags={"team": ""}).tags == {"team": ""}


def test_control_characters_in_stored_text_are_escaped_on_the_terminal(cli: Cli, state_dir: Path) -> None:
    r = cli.here("submit", "demo", "--name", EVIL.replace("\x00", ""), "-p", "items=1", "-p", "seconds=0")
    assert r.returncode == 2 and "control character U+001B" in r.stderr, r  # a label is one line of text
    assert len(r.stderr.strip().splitlines()) == 1 and "\x1b" not in r.stderr
    r = cli.here("submit", "demo", "--name", "plain", "-p", "items=1", "-p", "seconds=0")
    assert r.returncode == 0, r.stderr
    op_id = r.stdout.strip()
    # Stored strings the CLI did not choose: written behind its back, as another client (an older version)
    # could.
    db = sqlite3.connect(state_dir / "outlast.db")
    raw = json.loads(db.execute("select record from operations where id=?", (op_id,)).fetchone()[0])
    raw.update(name=EVIL.replace("\x00", ""), status="failed", error=EVIL, status_message=EVIL)
    raw.update(finished_at=raw["created_at"])
    raw["progress"]["step"] = EVIL
    db.execute("update operations set record=?, status='failed' where id=?", (json.dumps(raw), op_id))
    db.commit()
    db.close()
    logs = state_dir / "logs" / f"{op_id}.jsonl"
    logs.write_text(json.dumps({"ts": 1.0, "level": "info", "message": EVIL, "operation_id": op_id}) + "\n")
    for args in (["ls"], ["show", op_id], ["logs", op_id], ["ls", "--json"], ["show", op_id, "--json"]):
        r = cli.here(*args)
        assert r.returncode == 0, (args, r.stderr)
        _no_raw_controls(r.stdout)
        _no_raw_controls(r.stderr)
        assert "owned" in r.stdout, r.stdout  # escaped, not dropped
    ls = cli.here("ls").stdout.splitlines()
    assert len(ls) == 2, ls  # the newline in the name does not fake a row
    # Run again as a new operation: the stored name comes along escaped (a spec refuses the raw one, and
    # the operation could not be run again at all).
    r = cli.here("--json", "rerun", op_id, "--queue")
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert again["name"] == json.loads(json.dumps(EVIL.replace("\x00", "").encode("unicode_escape").decode()))


def test_one_escape_function_for_every_face() -> None:
    from engine.humanize import printable

    assert printable("plain é 名") == "plain é 名"
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("a\nb\tc") == "a\\nb\\tc"
    assert printable("a\nb", keep_newlines=True) == "a\nb"
    assert printable("\x9b\x7f") == "\\x9b\\x7f"


# ---- 9: limits on fields --------------------------------------------------------------------------


def _nest(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "args, limit",
    [
        (["--name", "n" * 201], "200"),
        (["--params-json", json.dumps({"blob": "x" * 70_000})], "65536"),
        (["--params-json", json.dumps({"a": _nest(40)})], "32"),
        ([arg for i in range(40) for arg in ("--profile", f"k{i}=1")], "32"),
        (["--profile", "k" * 65 + "=1"], "64"),
    ],
    ids=["name", "params size", "params depth", "profile keys", "profile key length"],
)
def test_field_limits_are_one_line_naming_the_limit(cli: Cli, args: list[str], limit: str) -> None:
    line = one_line(cli.here("submit", "demo", *args))
    assert limit in line, line
    nothing_stored(cli)


def test_tag_limits_in_the_model() -> None:
    from pydantic import ValidationError

    from engine.models import MAX_TAG_CHARS, MAX_TAGS, OperationSpec

    OperationSpec(type="demo", tags={f"k{i}": "v" for i in range(MAX_TAGS)})
    with pytest.raises(ValidationError, match=str(MAX_TAGS)):
        OperationSpec(type="demo", tags={f"k{i}": "v" for i in range(MAX_TAGS + 1)})
    with pytest.raises(ValidationError, match=str(MAX_TAG_CHARS)):
        OperationSpec(type="demo", tags={"k": "v" * (MAX_TAG_CHARS + 1)})


@pytest.mark.parametrize(
    "args",
    [
        ["--state-dir", "", "ls"],
        ["--store", "", "ls"],
        ["--state-dir", " ", "submit", "demo"],
        ["--config", "", "ls"],
        ["--config", "", "submit", "demo"],
    ],
)
def test_an_empty_store_or_state_dir_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str]) -> None:
    """An empty path is not the working directory: before, `--state-dir "" ls` made outlast.db there, and
    `--config ""` read the default config file (or said that one was not found)."""
    r = main_here(args, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "empty" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "demo", "-p", "nope=1"],
        ["run", "demo", "-p", "items=-1"],
        ["run", "demo", "-p", "items=-1", "--detach"],
        ["submit", "demo", "--profile", "base_timeout=-1"],
    ],
    ids=" ".join,
)
def test_bad_input_on_a_new_state_dir_makes_no_store(tmp_path: Path, args: list[str]) -> None:
    """A bad param or profile is refused before a store is made for it: the store was opened (and made)
    first, so a typo on a new state dir left the directory, a database and its files behind."""
    state = tmp_path / "state"
    r = main_here(["--state-dir", str(state), *args], cwd=tmp_path)
    one_line(r)
    assert not state.exists()


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["ls"], {"OUTLAST_STATE_DIR": "~nosuchuser0/x"}, "OUTLAST_STATE_DIR"),
        (["--json", "ls"], {"OUTLAST_STATE_DIR": "~nosuchuser0/x"}, "OUTLAST_STATE_DIR"),
        (["submit", "demo"], {"OUTLAST_STATE_DIR": "~nosuchuser0/x"}, "OUTLAST_STATE_DIR"),
        (["--state-dir", "~nosuchuser0/x", "ls"], {}, "--state-dir"),
        (["ls"], {"OUTLAST_CONFIG": "~nosuchuser0/c.toml"}, "OUTLAST_CONFIG"),
        (["--config", "~nosuchuser0/c.toml", "submit", "demo"], {}, "--config"),
        (["submit", "demo"], {"OUTLAST_CHECKPOINT_MIRROR": "~nosuchuser0/m"}, "OUTLAST_CHECKPOINT_MIRROR"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_a_home_of_no_such_user_is_one_line(tmp_path: Path, args: list[str], env: dict[str, str], named: str) -> None:
    """``~nouser/x`` cannot be expanded: it was an internal error (exit 70) at every command."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
    base["OUTLAST_STATE_DIR"] = str(tmp_path / "state")
    r = main_here(args, env={**base, **env}, cwd=tmp_path)
    line = one_line(r)
    assert named in line and "'~nosuchuser0': no such user" in line, line
    assert not (tmp_path / "state").exists()


def _ids(cli: Cli) -> list[str]:
    r = cli.here("--json", "ls")  # a read around the command under test: answered in this process
    assert r.returncode == 0, r.stderr
    return [op["id"] for op in json.loads(r.stdout)]


@pytest.mark.parametrize("name", ["logs", "locks", "detached", "outputs"])
def test_a_file_in_place_of_a_state_dir_directory_is_one_line_naming_it(cli: Cli, state_dir: Path, name: str) -> None:
    """A file where the state dir keeps a directory (a cleanup script, a mistaken ``> logs``): "state dir
    X: File exists", which named neither; in place of ``detached``, ``run --detach`` was an internal error
    after the operation was queued, which left it for nobody to run. Now one line naming the directory,
    exit 8, nothing stored; where only some operations use it (``outputs``), the ones that do stop there."""
    assert cli("run", "demo", "-p", "items=1", "-p", "seconds=0").returncode == 0
    before = _ids(cli)
    if (state_dir / name).is_dir():
        (state_dir / name).rmdir()
    (state_dir / name).write_text("not a directory\n")
    want = f"state dir {state_dir}: {name} is not a directory (a file is in its place): move it out of the way"
    if name == "outputs":  # used by the operations that write reports and indexes: they stop, resumable
        r = cli("run", "code_analysis", "-p", f"root={state_dir / 'logs'}")
        assert r.returncode == ExitCode.STORE and f"({want})" in r.stdout, (r.stdout, r.stderr)
        return
    r = cli("run", "demo", "-p", "items=1", "--detach")
    assert r.returncode == ExitCode.STORE, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [f"outlast: {want}"], r.stderr
    (state_dir / name).unlink()
    assert _ids(cli) == before  # nothing queued


@pytest.mark.parametrize("where", ["file", "under a file", "dangling link", "link loop"])
def test_a_state_dir_that_is_a_file_is_one_line_saying_so(cli: Cli, tmp_path: Path, where: str) -> None:
    """``OUTLAST_STATE_DIR`` naming a file (a typo, ``/dev/null``): "state dir X: File exists", mkdir's
    words; under a file, "Not a directory". A symbolic link to nothing (its target removed, or a loop) was
    said to be "a file"."""
    afile = tmp_path / "afile"
    afile.write_text("a file\n")
    target = afile if where == "file" else afile / "state"
    if "link" in where:
        target = tmp_path / "link"
        target.symlink_to(tmp_path / ("link" if where == "link loop" else "gone"))
    env = {**cli.env, "OUTLAST_STATE_DIR": str(target)}
    for args in (["ls"], ["submit", "demo"]):
        line = one_line(cli.here(*args, env=env), ExitCode.STORE)
        assert line == {
            "file": f"outlast: state dir {target} is a file, not a directory: give a directory",
            "under a file": f"outlast: state dir {target}: a part of its path is a file, not a directory",
        }.get(
            where,
            f"outlast: state dir {target} is a symbolic link to nothing (a loop, or its target is gone):"
            " give a directory",
        ), line
    assert afile.read_text() == "a file\n"


@pytest.mark.parametrize("kind", ["FIFO", "directory"])
def test_a_database_path_that_is_no_regular_file_is_one_line_and_left_alone(
    cli: Cli, state_dir: Path, kind: str
) -> None:
    """``outlast.db`` a FIFO was "not a usable Outlast database (the file is empty (0 bytes))", a directory
    "unable to open database file", which it also narrowed to 0600."""
    state_dir.mkdir(parents=True, exist_ok=True)
    db = state_dir / "outlast.db"
    os.mkfifo(db) if kind == "FIFO" else db.mkdir(mode=0o755)
    mode = db.stat().st_mode
    for args in (("ls",), ("run", "demo", "-p", "items=1")):
        r = cli(*args)
        assert r.returncode == ExitCode.STORE, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"outlast: state dir {state_dir}: outlast.db is not a regular file (a {kind}): move it out of the way"
        ]
    assert db.stat().st_mode == mode


@pytest.mark.parametrize("suffix", ["-journal", "-wal", "-shm"])
def test_a_fifo_beside_the_database_is_one_line_not_a_hang(cli: Cli, state_dir: Path, suffix: str) -> None:
    """SQLite opens the journal (its hot-journal check), WAL and shared-memory files it finds beside the
    database: a FIFO at ``outlast.db-journal`` made ``ls``, ``run`` and every other command wait for ever."""
    assert cli.here("-q", "submit", "demo", "-p", "items=1").returncode == 0  # the commands below are the test
    fifo = state_dir / f"outlast.db{suffix}"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    for args in (("ls",), ("--json", "ls"), ("run", "demo", "-p", "items=1")):
        r = cli(*args, timeout=30)
        assert r.returncode == ExitCode.STORE, (args, r.returncode, r.stderr)
        assert r.stderr.strip().splitlines() == [
            f"outlast: state dir {state_dir}: outlast.db{suffix} is not a regular file (a FIFO): move it out of the way"
        ], r.stderr
    fifo.unlink()
    assert len(json.loads(cli.here("--json", "ls").stdout)) == 1  # nothing queued meanwhile


def test_a_config_given_through_a_pipe_is_applied_once_read(cli: Cli, tmp_path: Path) -> None:
    """``outlast --config <(make-config) ...``: the file was read twice (once to remember it checked, once
    to load it), the pipe was empty the second time, and the settings were silently the defaults."""
    cmd = " ".join(shlex.quote(a) for a in CLI) + " --json --config <(printf 'max_concurrent = 2\\n') config"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60, cwd=REPO, env=cli.env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["settings"]["max_concurrent"] == 2, r.stdout


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_config_that_is_no_file_neither_hangs_nor_fills_memory(cli: Cli, tmp_path: Path, kind: str) -> None:
    """A FIFO named as the config file, with nobody writing it, made every command wait for ever; a device
    (``/dev/zero``) was read until memory ran out. Now the FIFO reads as an empty file and the device is
    refused in one line, at most 1 MB read."""
    if kind == "fifo":
        path = tmp_path / "config.toml"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    r = cli("--config", str(path), "ls", timeout=20)
    if kind == "fifo":
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == ExitCode.USAGE
        assert r.stderr.strip() == "outlast: /dev/zero: cannot read config file: larger than 1,048,576 bytes"


def test_a_name_with_a_trailing_newline_is_refused_like_any_other_bad_name(cli: Cli, tmp_path: Path) -> None:
    """Python's ``$`` also matches before a final newline: an id, type, namespace, module, age or migration
    identifier with "\\n" appended passed its check (``GET /api/operations/ID%0A`` said "no operation ID\\n"
    instead of "invalid operation id"). Each check now ends at the string's end."""
    from engine import InvalidInput, open_store
    from engine.cli.control import AGE
    from engine.models import ID_PREFIX_RE, OperationSpec, new_id, validate_id

    op = new_id()
    assert validate_id(op) and ID_PREFIX_RE.match("06b") and AGE.match("7d")
    for bad in (lambda: validate_id(op + "\n"), lambda: open_store("redis://127.0.0.1:1/0", namespace="t\n")):
        with pytest.raises(InvalidInput):
            bad()
    assert not ID_PREFIX_RE.match("06b\n") and not AGE.match("7d\n")
    with pytest.raises(ValueError, match="type"):
        OperationSpec(type="demo\n")
    before = cli("ls", "--json").stdout
    for args in (["show", op + "\n"], ["--plugin", "os\n", "types"]):
        r = cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (args, r.stderr)
    assert cli("ls", "--json").stdout == before


def test_numbers_past_pythons_digit_limit_are_bad_input_not_an_internal_error(cli: Cli, tmp_path: Path) -> None:
    """int() refuses a text of more than 4,300 digits with a ValueError: a config file holding such a number
    (tomllib raises it as it is) and ``outlast slots`` were "internal error" (exit 70)."""
    digits = "1" * 5000
    config = tmp_path / "big.toml"
    config.write_text(f"max_concurrent = {digits}\n")
    assert "big.toml" in one_line(cli.here("--config", str(config), "ls"))
    assert "store slots" in one_line(cli.here("slots", digits))
    nothing_stored(cli)


def test_a_config_file_with_a_byte_order_mark_is_read_and_kept_so(cli: Cli, tmp_path: Path) -> None:
    """A BOM (some editors write one) made any config file 'invalid TOML: Invalid statement (at line 1,
    column 1)', a character nobody sees; saving a setting into it keeps it."""
    from engine.config import load_settings, save_setting

    config = tmp_path / "bom.toml"
    config.write_bytes(b"\xef\xbb\xbfmax_concurrent = 2\n")
    r = cli.here("--config", str(config), "config")
    assert r.returncode == 0, r.stderr
    assert load_settings(config, env={}).max_concurrent == 2
    save_setting("theme", "outlast-dark", config)
    assert config.read_bytes() == b'\xef\xbb\xbfmax_concurrent = 2\ntheme = "outlast-dark"\n'
    assert load_settings(config, env={}).theme == "outlast-dark"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--profile", "stall_timeout=true"], "stall_timeout: true is not a number"),
        (["--profile", "failure_threshold=false"], "failure_threshold: false is not a number"),
        (["--profile", "retry.max_attempts=true"], "max_attempts: true is not a number"),
    ],
)
def test_a_bool_for_a_profile_number_is_refused_not_read_as_one(cli: Cli, args: list[str], named: str) -> None:
    """pydantic reads ``true`` as 1: ``--profile stall_timeout=true`` was stored as a one-second stall timeout
    (the operation timed out as stalled at once), exit 0, nothing said."""
    line = one_line(cli.here("submit", "demo", "-p", "items=1", *args))
    assert named in line, line
    nothing_stored(cli)
