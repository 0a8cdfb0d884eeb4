"""Property-based fuzzing of the command line and of stored records (issue 13).

Generated arguments for every command that answers at once, generated params for every operation type
``outlast types`` lists, and generated garbage in stored operation rows. Every answer: an exit code from
the documented table (never 70, "a bug"), no traceback, one line on stderr when refused, no raw control
character on the terminal, and nothing stored by a refused command (``ls --json`` unchanged).

The CLI's ``main`` runs in this process (a subprocess per example would take a second each);
``test_in_process_answers_match_the_console_script`` checks that the real console script answers the
same. Short by default; ``OUTLAST_SOAK=1`` runs hundreds of examples; ``OUTLAST_FUZZ_SEED=N`` replays.
"""

from __future__ import annotations

import json
import math
import os
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, note, seed, settings
from hypothesis import strategies as st

from engine.exitcodes import ExitCode
from engine.models import MAX_SECONDS
from engine.profiles import RetryPolicy, TimeoutProfile
from engine.registry import handlers
from tests.fixtures_cli import Cli, main_here

SOAK = bool(os.environ.get("OUTLAST_SOAK"))
SEED = int(os.environ.get("OUTLAST_FUZZ_SEED") or random.randrange(1 << 32))
FUZZ = settings(
    max_examples=500 if SOAK else 30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
CODES = {int(c) for c in ExitCode} - {int(ExitCode.INTERNAL)}
"""The documented exit codes, except 'a bug in Outlast'."""


def run(*args: str) -> tuple[int, str, str]:
    """``outlast ARGS`` in this process: (exit code, stdout, stderr)."""
    r = main_here(args)
    return r.returncode, r.stdout, r.stderr


def raw_controls(text: str) -> list[str]:
    return [c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]


def check_answer(args: tuple[str, ...], code: int, out: str, err: str, notes: bool = True) -> None:
    if notes:
        note(f"seed {SEED} (OUTLAST_FUZZ_SEED={SEED} replays); args {args!r}")
        note(f"exit {code}; stdout {out[:500]!r}; stderr {err[:500]!r}")
    assert code in CODES, f"exit {code}: {err}"
    assert "Traceback" not in err + out
    assert not raw_controls(out) and not raw_controls(err)
    if code != 0:
        assert len(err.strip().splitlines()) == 1, err


def _numbers(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []


def accepted_sanely(args: tuple[str, ...], op: dict[str, Any]) -> None:
    """An accepted submission is stored as asked: a --timeout kept (not null), finite numbers, and an
    output that is neither a directory nor an existing file of another kind."""
    opts = dict(zip(args[2::2], args[3::2], strict=False))
    if "--timeout" in opts:
        assert op["timeout"] is not None and math.isfinite(op["timeout"]) and op["timeout"] <= MAX_SECONDS, op
        assert op["timeout"] == float(opts["--timeout"]), op
    for n in _numbers(op["params"]) + _numbers(op["profile"]):
        # Integers past 64 bits are refused (stores and clients cannot all keep them exact); a float is
        # a float at any finite size (a generated 9.223372036854776e+18, which is 2**63, was accepted).
        assert math.isfinite(n) and (isinstance(n, float) or abs(n) < 2**63), op
    output = op["params"].get("output")
    if output and op["type"] == "codebase_indexing":
        p = Path(output).expanduser()
        assert not p.is_dir() and (not p.exists() or not p.stat().st_size or p.read_bytes()[:6] == b"SQLite"), op


def listing() -> Any:
    code, out, err = run("ls", "--json", "--limit", "100000")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def fuzz_home(state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The state dir; the working directory moved to a scratch one (relative paths land there)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "file.txt").write_text("a file\n")
    (work / "dir").mkdir()
    return state_dir


# ---- strategies -----------------------------------------------------------------------------------

NASTY = [
    "",
    ".",
    "..",
    "/",
    "../x",
    "dir",
    "file.txt",
    "file.txt/x",
    "/dev/null",
    "\x1b]0;t\x07\x1b[2J",
    "a\nb",
    "\r",
    "\x9b31m",
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "-1",
    "0",
    "1e308",
    "99999999999999999999999",
    "[" * 50,
    "x" * 300,
    "${HOME}",
    "*",
    "redis://h/abc",
]
text = st.one_of(st.sampled_from(NASTY), st.text(max_size=20))
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**63, -(2**63) - 1, 1e-320, 1e300]),
)
leaf = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.recursive(
    leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8
)


def deep(n: int) -> str:
    return "[" * n + "]" * n


def _types() -> list[str]:
    code, out, err = run("types", "--json")
    assert code == 0, err
    return [t["type"] for t in json.loads(out)]


def _fields() -> dict[str, list[str]]:
    return {name: list(h.params.model_fields) for name, h in handlers().items()}


PROFILE_KEYS = [*TimeoutProfile.model_fields, *(f"retry.{k}" for k in RetryPolicy.model_fields), "retry"]


@st.composite
def submit_args(draw: st.DrawFn, types: list[str], fields: dict[str, list[str]]) -> tuple[str, ...]:
    """``submit TYPE`` with generated params (by -p and --params-json) and options."""
    runnable = sorted(fields)
    type_ = draw(st.one_of(st.sampled_from(runnable), st.sampled_from([*types, "nosuch_type", "BAD TYPE", ""])))
    keys = [*fields.get(type_, []), "unknown_key"]
    params = draw(st.dictionaries(st.sampled_from(keys), json_values, max_size=4))
    args: list[str] = ["submit", type_]
    how = draw(st.sampled_from(["-p", "--params-json", "raw"]))
    if how == "-p":
        for k, v in params.items():
            args += ["-p", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    elif how == "--params-json":
        args += ["--params-json", json.dumps(params)]
    else:
        args += [
            "--params-json",
            draw(st.sampled_from([deep(3000), deep(40), "{", "[]", "null", '{"a": NaN}', *NASTY])),
        ]
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from([*PROFILE_KEYS, "nosuch", ""]))
        args += ["--profile", f"{key}={draw(st.one_of(st.sampled_from(NASTY), numbers.map(str)))}"]
    if draw(st.booleans()):
        args += ["--timeout", draw(st.one_of(st.sampled_from(NASTY), numbers.map(str)))]
    if draw(st.booleans()):
        args += ["--items", draw(st.one_of(st.sampled_from(NASTY), numbers.map(str)))]
    if draw(st.booleans()):
        args += ["--priority", draw(st.sampled_from(["high", "LOW", "urgent", ""]))]
    if draw(st.booleans()):
        args += ["--name", draw(text)]
    return tuple(args)


@st.composite
def other_args(draw: st.DrawFn) -> tuple[str, ...]:
    """Commands that answer at once (no run, watch, --follow, resume without --queue, --detach)."""
    op_id = draw(st.one_of(text, st.sampled_from(["0", "06", "zzzzzzzzzzzzz", "0000000000000", "o" * 13])))
    command = draw(
        st.sampled_from(
            [
                ["ls"],
                ["ls", "--status", draw(text)],
                ["ls", "--limit", draw(numbers.map(str))],
                ["ls", "--type", draw(text)],
                ["show", op_id],
                ["logs", op_id, "--limit", draw(st.sampled_from(["1", "0", "-1", "x"]))],
                ["checkpoints", op_id],
                ["cancel", op_id, "--no-wait"],
                ["pause", op_id, "--wait", draw(st.sampled_from(["0", "-1", "nan", "inf", "x"]))],
                ["resume", op_id, "--queue", "--checkpoint", draw(st.sampled_from(["1", "-1", "x", "99"]))],
                ["types"],
                ["config"],
                ["nosuch-command"],
            ]
        )
    )
    globals_: list[str] = []
    if draw(st.booleans()):
        globals_.append("--json")
    if draw(st.booleans()):
        store = draw(
            st.sampled_from(
                [
                    "",
                    "redis://",
                    "redis://h/abc",
                    "redis://:sekrit@127.0.0.1:1/0?retry_for=0",
                    "redis://127.0.0.1:1/0?retry_for=-1",
                    "redis://127.0.0.1:99999/0",
                    "ftp://x",
                    "unix://",
                ]
            )
        )
        globals_ += ["--store", store]
    if draw(st.booleans()):
        globals_ += ["--plugin", draw(st.sampled_from(["", "../x", "nosuch_plugin_mod", "a..b", "1abc", "x/y"]))]
    return tuple(globals_ + command)


CONFIGS = [
    "max_concurrent = 0\n",
    "grace_period = inf\n",
    "aging_seconds = nan\n",
    "nosuch = 1\n",
    "[profiles.demo]\nmax_timeout = inf\n",
    "[profiles.demo]\nbase_timeout = 1e300\n",
    "store = 'redis://h/abc'\n",
    "plugins = ['../x']\n",
    "max_concurrent = true\n",
    "auto_resume = 1\n",
    "[profiles.codebase_indexin]\nmax_timeout = 86400\n",
    "not toml [\n",
    "\x00\x01",
]


# ---- the properties -------------------------------------------------------------------------------


def test_generated_submissions_are_answered_in_one_line_and_store_nothing_when_refused(fuzz_home: Path) -> None:
    types, fields = _types(), _fields()
    assert {"demo", "command", "codebase_indexing", "security_scan", "backup_operation"} <= set(types)

    @seed(SEED)
    @FUZZ
    @given(args=submit_args(types, fields))
    @example(args=("submit", "demo", "--profile", "retry=", "--profile", "retry.max_attempts=")).via("a soak")
    def prop(args: tuple[str, ...]) -> None:
        before = listing()
        code, out, err = run(*args)
        check_answer(args, code, out, err)
        after = listing()
        if code == 0:
            assert [o["id"] for o in after if o not in before] == [out.strip()]
            accepted_sanely(args, next(o for o in after if o["id"] == out.strip()))
        else:
            assert after == before

    prop()


def test_generated_commands_and_options_are_answered_in_one_line(fuzz_home: Path) -> None:
    code, out, _ = run("submit", "demo")
    assert code == 0
    run("pause", out.strip(), "--no-wait")  # one resumable operation for resume --queue to find

    @seed(SEED)
    @FUZZ
    @given(args=other_args())
    def prop(args: tuple[str, ...]) -> None:
        before = listing()
        code, out, err = run(*args)
        check_answer(args, code, out, err)
        if code != 0:
            assert listing() == before
        if "--plugin" in args:  # every plugin generated is broken: every command must say so
            assert code == ExitCode.USAGE, err
        if "--store" in args:  # every store generated is malformed, or unreachable with a password
            store = args[args.index("--store") + 1]
            if "sekrit" not in store or args[-1] not in ("types", "config"):  # those two never connect
                assert code in (ExitCode.USAGE, ExitCode.STORE), err
            assert "sekrit" not in out + err

    prop()


def test_generated_config_files_are_answered_in_one_line(fuzz_home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"

    @seed(SEED)
    @FUZZ
    @given(content=st.one_of(st.sampled_from(CONFIGS), st.text(max_size=40)), command=st.sampled_from(["ls", "config"]))
    def prop(content: str, command: str) -> None:
        cfg.write_text(content, encoding="utf-8", errors="surrogatepass")
        before = listing()
        code, out, err = run("--config", str(cfg), command)
        check_answer(("--config", content, command), code, out, err)
        assert listing() == before

    prop()


def test_generated_values_of_another_kind_in_a_config_file_are_refused_naming_the_key(tmp_path: Path) -> None:
    """Every number setting refuses ``true``/``false`` and the switch (``auto_resume``) refuses anything but
    them, naming the file and the key; a number of the right kind is taken as written. Read by
    ``load_settings`` (no command: a hundred examples cost well under a second)."""
    from engine.config import Settings, load_settings
    from engine.errors import InvalidInput

    cfg = tmp_path / "c.toml"
    numbers = [n for n, f in Settings.model_fields.items() if f.annotation in (int, float, float | None)]
    assert {"max_concurrent", "grace_period", "max_cpu_percent"} <= set(numbers)
    scalars = st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=20),  # each one TOML can hold
    )

    @seed(SEED)
    @FUZZ
    @given(key=st.sampled_from([*numbers, "auto_resume"]), value=scalars)
    def prop(key: str, value: Any) -> None:
        written = repr(value) if isinstance(value, float) else json.dumps(value, ensure_ascii=False)
        cfg.write_text(f"{key} = {written}\n", encoding="utf-8")
        wrong = isinstance(value, bool) if key in numbers else not isinstance(value, bool)
        try:
            settings = load_settings(config_file=cfg, env={})
        except InvalidInput as e:
            assert str(e).startswith(f"{cfg}: key '{key}': "), e
            assert "\n" not in str(e)
            if wrong:
                assert "is not a number" in str(e) or "is not true or false" in str(e), e
            return
        assert not wrong, (key, value, getattr(settings, key))
        got = getattr(settings, key)
        assert type(got) is not bool or key == "auto_resume", (key, value, got)
        assert got == value or (isinstance(value, str) and key in numbers), (key, value, got)

    prop()


# Fields of a stored record and the values written into them behind the engine's back.
RECORD_FIELDS = [
    "type",
    "name",
    "status",
    "status_message",
    "priority",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
    "updated_at",
    "attempt",
    "epoch",
    "deadline",
    "effective_timeout",
    "timeout_basis",
    "error",
    "result",
    "params",
    "tags",
    "worker",
    "progress",
    "progress.done",
    "progress.total",
    "progress.rate",
    "progress.eta",
    "progress.step",
    "progress.message",
    "progress.metrics",
]


EXTREMES = [1e300, -1e300, float("inf"), float("-inf"), float("nan"), -1, 0, 2**63, 1e20, -1e20, "", "\x1b[2J\r\n"]
"""What a garbled number or string field most likely breaks (time conversions, widths, escapes)."""
garbage = st.one_of(st.sampled_from(EXTREMES), json_values)


def _garble(record: dict[str, Any], field: str, value: Any) -> None:
    if "." in field:
        outer, inner = field.split(".")
        if isinstance(record.get(outer), dict):
            record[outer][inner] = value
    else:
        record[field] = value


def test_garbage_in_stored_records_is_shown_escaped_or_refused_in_one_line(fuzz_home: Path) -> None:
    code, out, err = run("submit", "demo", "--name", "victim")
    assert code == 0, err
    op_id = out.strip()
    db_path = fuzz_home / "outlast.db"
    with sqlite3.connect(db_path) as db:
        pristine = db.execute("select record from operations where id=?", (op_id,)).fetchone()[0]

    @seed(SEED)
    @FUZZ
    @given(
        changes=st.lists(st.tuples(st.sampled_from(RECORD_FIELDS), garbage), min_size=1, max_size=6),
        raw_text=st.one_of(st.none(), st.sampled_from(["", "{", "null", "[]", '{"id": 1}', "\x00"])),
        log=st.fixed_dictionaries({"ts": garbage, "level": garbage, "message": garbage, "fields": garbage}),
    )
    @example(changes=[("progress.done", math.inf)], raw_text=None, log={}).via("found in CI: ls's quick path")
    @example(changes=[("progress.total", -math.inf), ("handle", math.nan)], raw_text=None, log={})
    def prop(changes: list[tuple[str, Any]], raw_text: str | None, log: dict[str, Any]) -> None:
        record = json.loads(pristine)
        for field, value in changes:
            _garble(record, field, value)
        stored = raw_text if raw_text is not None else json.dumps(record)
        with sqlite3.connect(db_path) as db:
            db.execute("update operations set record=? where id=?", (stored, op_id))
        (fuzz_home / "logs" / f"{op_id}.jsonl").write_text(json.dumps(log) + "\nnot json\n")
        note(f"seed {SEED} (OUTLAST_FUZZ_SEED={SEED} replays); stored record {stored[:400]!r}; log line {log!r}")
        first = listing()  # may settle what the garbage claims is running (recovery), so it goes first
        for args in (["ls"], ["show", op_id], ["show", op_id, "--json"], ["logs", op_id], ["checkpoints", op_id]):
            code, out, err = run(*args)
            note(f"{args}: exit {code}; {out[:300]!r} {err[:300]!r}")
            assert code in CODES, err
            assert "Traceback" not in out + err
            assert not raw_controls(out) and not raw_controls(err)
            lines = err.strip().splitlines()
            warnings = [ln for ln in lines if ln.startswith("outlast: WARNING: ")]
            assert len(warnings) <= 1 and len(lines) - len(warnings) <= 1, err  # one garbled record
        assert listing() == first

    prop()


# ---- the real console script answers as main() does in-process -----------------------------------

SAMPLES = [
    ("submit", "demo", "--params-json", deep(30_000)),
    ("submit", "demo", "--timeout", "inf"),
    ("submit", "demo", "--profile", "max_timeout=1e999"),
    ("submit", "codebase_indexing", "-p", "root=.", "-p", "output=."),
    ("--store", "redis://h/abc", "ls"),
    ("--plugin", "../x", "ls"),
    ("show", "\x1b[2J"),
    ("submit", "demo", "--name", "n" * 201),
    ("run", "codebase_indexing", "--params-json", '{"root": "/no/such/dir"}'),  # fixtures_ops.bad_params's way
    ("run", "security_scan", "--params-json", '{"root": ".", "rules": ["no-such-rule"]}'),
]


def test_in_process_answers_match_the_console_script(cli: Cli) -> None:
    for args in SAMPLES:
        code, out, err = run(*args)
        check_answer(args, code, out, err, notes=False)
        r = cli(*args)
        assert (r.returncode, r.stderr) == (code, err), args
