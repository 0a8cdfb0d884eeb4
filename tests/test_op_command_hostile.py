"""command against hostile commands: what they leave running, what they print, what they are given."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

from engine import Engine, LogRecord, Operation, OperationSpec, Settings, Status
from engine.operations.command import CommandParams
from tests.fixtures_cli import Cli, until
from tests.fixtures_engine import make_engine
from tests.fixtures_engine import until as until_async
from tests.fixtures_ops import bad_params, kill_worker_when, run_json, submit


def _alive(pid: int, since: int | None = None) -> bool:
    """``pid`` runs (not a zombie) and, with ``since``, is still the process that started then (``_start``): a
    busy machine reuses a pid within seconds (pid_max 32768, every thread takes one)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and (since is None or int(fields[19]) == since)


def _start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError):
        return None


def _kill(pids: list[int]) -> None:
    """Never leave a test's process behind, even when the test fails."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


async def _logged(engine: Engine, op_id: str, text: str) -> bool:
    records, _ = await engine.logs(op_id)
    return any(text in r.message for r in records)


async def test_a_background_job_that_keeps_printing_ends_2s_after_the_command_exited(
    engine: Engine, tmp_path: Path
) -> None:
    """``(while :; do echo tick; sleep 0.5; done) & exit 0``: the output counted as ended only after 2 s of
    silence following the exit, which a chattering job never gives: the operation ran forever. It now ends
    HELD_OPEN seconds after the exit whatever still writes, and the job is killed."""
    pids = tmp_path / "pids"
    cmd = f"(echo $BASHPID $$ > {pids}; while :; do echo tick; sleep 0.2; done) & echo main-exits; exit 0"
    op = await engine.submit(OperationSpec(type="command", params={"argv": ["bash", "-c", cmd]}))
    try:
        started = time.monotonic()
        final = await engine.wait(op.id, timeout=15)
        assert final.status is Status.COMPLETED and final.result["exit_code"] == 0, final
        assert time.monotonic() - started < 10
        job = int(pids.read_text().split()[0])
        await until_async(lambda: not _alive(job), timeout=10)
        await until_async(lambda: _logged(engine, op.id, "kept its output open"), timeout=10)
    finally:
        if pids.exists():
            _kill([int(p) for p in pids.read_text().split()])


@pytest.mark.parametrize("stop", ["cancel", "pause", "timeout"])
async def test_a_command_that_closed_its_output_stops_at_once(settings: Settings, tmp_path: Path, stop: str) -> None:
    """``echo bye; exec >&- 2>&-; sleep``: the output ended, and the wait for the exit did not look at
    stops: cancel, pause and timeout each waited out the grace period, "forced". With a 60 s grace period
    each now takes effect at once."""
    pids = tmp_path / "pids"
    cmd = f"echo $$ > {pids}; echo bye; exec >&- 2>&-; sleep 300"
    async with make_engine(settings.model_copy(update={"grace_period": 60.0})) as engine:
        spec = OperationSpec(
            type="command", params={"command": cmd, "shell": True}, timeout=2.0 if stop == "timeout" else None
        )
        op = await engine.submit(spec)
        try:
            await until_async(lambda: pids.exists() and pids.read_text().strip(), timeout=20)
            shell = int(pids.read_text())
            if stop == "cancel":
                await engine.cancel(op.id)
            elif stop == "pause":
                await engine.pause(op.id)
            final = await engine.wait(op.id, timeout=15)
            want = {"cancel": Status.CANCELLED, "pause": Status.PAUSED, "timeout": Status.TIMED_OUT}[stop]
            assert final.status is want and "forced" not in (final.status_message or ""), final
            await until_async(lambda: not _alive(shell), timeout=10)
        finally:
            if pids.exists() and pids.read_text().strip():
                _kill([int(pids.read_text())])


async def _python_completed(engine: Engine, code: str) -> tuple[Operation, list[LogRecord]]:
    """Python ``code`` run as a command operation, completed: its final record and its log."""
    op = await engine.submit(OperationSpec(type="command", params={"argv": [sys.executable, "-c", code]}))
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED, final.error
    records, _ = await engine.logs(op.id)
    return final, records


async def test_output_that_only_looks_like_progress_or_a_checkpoint_fails_nothing(engine: Engine) -> None:
    """Each of these lines failed a command that exits 0: a fraction beyond a count ("must be at most
    2**63-1"), a checkpoint nested deeper than the parser recurses (RecursionError), or deeper than the
    result holding it could be written (left running, "final status not written"). NaN and Infinity are
    not JSON: such a checkpoint was kept and handed back on resume as ``OUTLAST_CHECKPOINT={"a": NaN}``.
    Each is now ignored (a checkpoint with the "invalid JSON" warning), and the command completes."""
    code = (
        "big = 18446744073709551615\n"
        "print(f'verified {big}/{big} blocks')\n"
        "print(f'::outlast progress {big}/{big}')\n"
        "print('::outlast checkpoint ' + '[' * 100000 + ']' * 100000)\n"
        "print('::outlast checkpoint {\"a\": ' + '[' * 500 + ']' * 500 + '}')\n"
        "print('::outlast checkpoint {\"a\": NaN}')\n"
        "print('::outlast checkpoint {\"b\": 1e999}')\n"
        "print('::outlast checkpoint {\"c\": -Infinity}')\n"
        "print('::outlast checkpoint {\"ok\": 1.5}')\n"
        "print('done')\n"
    )
    final, records = await _python_completed(engine, code)
    assert final.result["checkpoint"] == {"ok": 1.5} and final.result["lines"] == 2
    assert sum("invalid JSON ignored" in r.message for r in records) == 5


async def test_a_checkpoint_line_longer_than_a_line_may_be_is_said_so_not_invalid_json(engine: Engine) -> None:
    """Its valid JSON, cut at 1 MiB, was "::outlast checkpoint with invalid JSON ignored", and the pieces
    after the first were written to the log (and counted) as lines of output."""
    code = (
        "import json\n"
        "print('::outlast checkpoint ' + json.dumps({'done': list(range(300000))}))\n"
        "print('::outlast checkpoint {\"ok\": 1}')\n"
        "print('done')\n"
    )
    final, records = await _python_completed(engine, code)
    assert final.result["checkpoint"] == {"ok": 1} and final.result["lines"] == 1
    assert [r.message for r in records if r.level.upper() == "INFO"] == ["done"]
    (warning,) = [r.message for r in records if r.level.upper() == "WARNING"]
    assert "longer than 1 MiB" in warning and "invalid JSON" not in warning


async def test_a_progress_regex_matching_what_is_no_number_fails_nothing(engine: Engine) -> None:
    """A user's regex may match anything: its group was given to int() or float() as it was."""
    lines = "print('at abc'); print('at 99999999999999999999999'); print('at nan'); print('at 7')"
    for rx in [r"at (?P<pct>\w+)", r"at (?P<done>\w+)", r"at (\w+)"]:
        params = {"argv": [sys.executable, "-c", lines], "progress_regex": rx}
        final = await engine.wait((await engine.submit(OperationSpec(type="command", params=params))).id, timeout=30)
        assert final.status is Status.COMPLETED, (rx, final.error)


def test_params_that_could_never_run_are_refused_before_anything_is_stored(cli: Cli) -> None:
    """Each was stored, queued and run, then failed with a raw Python error ("No closing quotation",
    "embedded null byte", "illegal environment variable name", "Permission denied")."""
    bad_params(cli, "command", {"command": 'echo "unbalanced'}, "command: cannot be split into words")
    bad_params(cli, "command", {"argv": ["echo", "a\0b"]}, "argv: argv[1] contains a NUL character")
    bad_params(cli, "command", {"command": "echo a\0", "shell": True}, "command: contains a NUL character")
    bad_params(cli, "command", {"argv": ["env"], "env": {"A=B": "x"}}, "env: 'A=B' is not a variable name")
    bad_params(cli, "command", {"argv": ["env"], "env": {"": "x"}}, "env: '' is not a variable name")
    bad_params(cli, "command", {"argv": ["env"], "env": {"A": "x\0y"}}, "env: A contains a NUL character")
    # execve passes it, but `env` listed it as two lines, "A" and "B=x": no shell could name it either.
    bad_params(cli, "command", {"argv": ["env"], "env": {"A\nB": "x"}}, "env: 'A\\nB' is not a variable name")
    bad_params(cli, "command", {"argv": ["env"], "env": {"A\x1bB": "x"}}, "env: 'A\\x1bB' is not a variable name")
    bad_params(cli, "command", {"argv": [""]}, "argv: argv[0] is empty")
    bad_params(cli, "command", {"command": "'' x"}, "command: names no program")


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("rm -rf build; mkdir build", "';' is shell syntax"),
        ("make && make test", "'&&' is shell syntax"),
        ("ls | wc -l", "'|' is shell syntax"),
        ("pytest > out.txt", "'>' is shell syntax"),
        ("sleep 100 &", "'&' is shell syntax"),
        ("cp $HOME/a .", "'$HOME' is shell syntax"),
        ('echo "${USER}"', "'${' is shell syntax"),
        ("tar czf backup-$(date +%F).tgz src", "'$(' is shell syntax"),
    ],
)
def test_shell_syntax_in_a_command_run_with_no_shell_is_refused(cli: Cli, command: str, said: str) -> None:
    """Split into words with no shell, `rm -rf build; mkdir build` ran rm on build, then on a file named mkdir:
    another job than the one asked for. Refused before anything is stored, naming the way out."""
    bad_params(cli, "command", {"command": command}, f"command: {said}, but command runs with no shell")


def test_what_a_shell_would_leave_alone_runs_with_no_shell(cli: Cli, tmp_path: Path) -> None:
    """Quoted or escaped operators, an & inside a word (a URL's query), globs and a $ in single quotes are
    what the program gets without a shell: not refused. With shell=true the same line is the shell's."""
    for command in ["find . -name x -exec echo {} \\;", 'grep -E "a|b;c" f', "curl http://h/?a=1&b=2", "ls *.py"]:
        CommandParams(command=command)
    out = tmp_path / "out"
    argv = [sys.executable, "-c", "import sys; print(sys.argv[1:])", "a;b", "x|y", "$HOME", "`z`"]
    code, final, err = run_json(cli, "run", "command", "--params-json", json.dumps({"command": shlex.join(argv)}))
    assert code == 0 and final["status"] == "completed", err
    assert "['a;b', 'x|y', '$HOME', '`z`']" in cli("logs", final["id"]).stdout
    line = f"echo one; echo two > {out}"
    code, final, err = run_json(cli, "run", "command", "--params-json", json.dumps({"command": line, "shell": True}))
    assert code == 0 and out.read_text() == "two\n", err


@pytest.mark.parametrize(
    ("regex", "refused"),
    [
        (r"^(a+)+(?P<pct>\d+)$", True),  # the outside tester's: a cancel said "requested", and it ran on for good
        (r"(\s*\d+)*(?P<pct>\d+)%", True),
        (r"(?:a{1,3})+(?P<pct>\d+)", True),
        (r"(?:x|y+)*(?P<pct>\d+)", True),
        (r"(?P<done>\d+)/(?P<total>\d+)", False),
        (r"(?:(?P<pct>\d+)% )+", False),
        (r"(?>a+)+(?P<pct>\d+)", False),  # an atomic group, a possessive repetition: never backtracked into
        (r"(?:a++)+(?P<pct>\d+)", False),
        (r"(?:\d{2})+(?P<pct>\d+)", False),
    ],
)
def test_a_progress_regex_that_backtracks_for_ever_is_refused_at_submit(cli: Cli, regex: str, refused: bool) -> None:
    """``(a+)+`` on a line of forty a's and a '!' searched for hours, on the event loop: the engine froze for
    good (no stall timeout, no cancel, no other operation ran, no lease was renewed). Such a regex is
    refused in one line before anything is stored; one that shares no text between its repetitions runs."""
    params = {"argv": ["true"], "progress_regex": regex}
    if refused:
        bad_params(cli, "command", params, "progress_regex: it repeats a repetition with nothing between")
    else:
        r = cli("--json", "run", "command", "--params-json", json.dumps(params))
        assert r.returncode == 0, r.stderr


def test_a_progress_regex_slow_on_a_line_passes_the_line_over_and_goes_on(cli: Cli) -> None:
    """The check at submit lets through every regex that is not exponential on some line, and an ordinary
    one is quadratic on the wrong line (search tries it at every position): ``(?P<done>\\d+) of
    (?P<total>\\d+)`` on a line of 200,000 digits held the engine for hours (no cancel, no timeout); and
    ``^(?:a|aa)+$``, which the check does not see, on 60 a's and a b. Each line is passed over after half
    a second of CPU, said in the log, and the regex reads the lines after it."""
    regex = r"(?P<done>\d+) of (?P<total>\d+)|^(?:a|aa)+$"
    program = "print('1' * 200_000); print('a' * 60 + 'b'); print('3 of 4')"
    params = {"argv": [sys.executable, "-c", program], "progress_regex": regex}
    r = cli("--json", "run", "command", "--params-json", json.dumps(params), timeout=60)
    assert r.returncode == 0, r.stderr
    op_id = json.loads(r.stdout)["id"]
    logs = cli("logs", op_id).stdout
    assert logs.count("progress_regex took over 0.5s of CPU on one line of output") == 2, logs[-2000:]
    assert "its last progress at 3/4" in logs, logs[-2000:]


def test_a_progress_line_with_more_done_than_its_total_is_passed_over(cli: Cli) -> None:
    """``::outlast progress 5/3`` was stored as said: ``ls`` and the dashboard showed 5/3 items while it ran
    (an N/M line with N above M was passed over already), and so did a count alone above the total before."""
    lines = ["::outlast progress 1/3", "::outlast progress 5/3", "::outlast progress 2", "::outlast progress 7"]
    script = "; ".join(f"echo '{line}'" for line in lines) + "; exit 1"  # failed: its progress is kept as it was
    r = cli("--json", "run", "command", "--params-json", json.dumps({"command": script, "shell": True}))
    assert r.returncode == 1, r.stderr
    progress = json.loads(r.stdout)["progress"]
    assert (progress["done"], progress["total"]) == (2, 3), progress
    logs = cli("logs", json.loads(r.stdout)["id"]).stdout
    assert logs.count("more done than the total") == 1, logs


@pytest.mark.parametrize("before", ["Collecting deps: 100%", "step 3/10 done"], ids=["percent", "text"])
def test_a_count_alone_after_a_percentage_or_a_fraction_in_text_is_not_passed_over(cli: Cli, before: str) -> None:
    """A count alone was held to the last total whatever gave it: a pip line (``100%``: a total of 1000, per
    mille) or a line of text holding ``3/10`` made every ``::outlast progress 1500`` after it "more done than
    the total", passed over; and the command, working, its progress lines all passed over, was stopped as
    stalled. Only a total said as one (``::outlast progress N/M``, ``progress_regex``) holds a count alone."""
    counts = "; ".join(f"echo '::outlast progress {n}'; sleep 0.3" for n in range(1001, 1026))
    script = f"echo '{before}'; {counts}"
    r = cli(
        "--json",
        "run",
        "command",
        "--profile",
        "stall_timeout=4",
        "--params-json",
        json.dumps({"command": script, "shell": True}),
    )
    assert r.returncode == 0, r.stdout[-2000:]
    final = json.loads(r.stdout)
    assert final["status"] == "completed" and final["progress"]["done"] == 1025, final["progress"]
    assert "more done than the total" not in cli("logs", final["id"]).stdout


async def test_a_command_that_says_its_progress_is_not_read_for_fractions_or_percentages(engine: Engine) -> None:
    """A script saying ``::outlast progress 10/100`` and running a test suite (``[ 50%]``) and a copy (``copied
    3/4 files``): its progress went from 10/100 to 500/1000, then to 3/4. Once a command says its progress,
    that is its progress."""
    lines = ["::outlast progress 10/100", "tests: [ 50%]", "copied 3/4 files"]
    script = "; ".join(f"echo '{line}'" for line in lines) + "; exit 1"  # failed: its progress is kept as it was
    spec = OperationSpec(type="command", params={"command": script, "shell": True})
    final = await engine.wait((await engine.submit(spec)).id, timeout=60)
    assert final.status is Status.FAILED, final
    assert (final.progress.done, final.progress.total) == (10, 100), final.progress


@pytest.mark.parametrize("said", ["50%", "1e5", "3.7", "12abc", "0x10"])
async def test_a_progress_line_whose_count_is_no_whole_word_is_passed_over(engine: Engine, said: str) -> None:
    """``::outlast progress 50%`` was the count 50 (the README says it is passed over), ``1e5`` the count 1,
    ``3.7`` 3, ``12abc`` 12: the digits at the start were taken, the rest dropped without a word."""
    script = f"echo '::outlast progress {said}'; exit 1"  # failed: its progress is kept as it was
    final = await engine.wait(
        (await engine.submit(OperationSpec(type="command", params={"command": script, "shell": True}))).id, timeout=60
    )
    assert final.status is Status.FAILED and final.progress.done == 0, final.progress
    records, _ = await engine.store.read_logs(final.id)
    assert sum("not ::outlast progress N or N/M" in r.message for r in records) == 1, [r.message for r in records]


def test_a_progress_line_passed_over_is_quoted_as_printed(cli: Cli) -> None:
    """``::outlast progress 2/-1`` after a total of 0 was said as "progress 2/0 passed over", a line the
    command never printed; the warning quotes the line, control characters escaped, and says the numbers it
    compared. And ``2/-1`` was read as the count 2, its ``/-1`` dropped without a word: a line that is not
    ``N`` or ``N/M`` is passed over, said once."""
    program = (
        "print('::outlast progress 0/0'); print('::outlast progress 2\\x1b[K'); print('::outlast progress 2/-1');"
        " print('::outlast progress 50%'); print('::outlast progress 0/4 files')"
    )
    r = cli("--json", "run", "command", "--params-json", json.dumps({"argv": [sys.executable, "-c", program]}))
    assert r.returncode == 0, r.stderr
    final = json.loads(r.stdout)
    logs = cli("logs", final["id"]).stdout
    said = [ln for ln in logs.splitlines() if "more done than the total" in ln]
    assert len(said) == 1 and "progress line '::outlast progress 2\\x1b[K' passed over" in said[0], logs
    assert "(2 of 0;" in said[0] and "progress 2/0" not in logs, logs
    bad = [ln for ln in logs.splitlines() if "not ::outlast progress N or N/M" in ln]
    assert len(bad) == 1 and "'::outlast progress 2/-1'" in bad[0], logs
    assert final["progress"]["total"] == 4, final["progress"]  # "0/4 files": the words after it are no matter


def test_a_count_past_the_submitters_estimate_is_shown_without_a_total(cli: Cli) -> None:
    """``--items 3`` (an estimate) and a command that said ``::outlast progress 5``: listed at 5/3 items,
    100%, while it ran. The estimate still times the attempt; the progress shows 5 items of no known total,
    and a run that completes ends at 5/5."""
    for code, total in ((1, None), (0, 5)):
        script = f"echo '::outlast progress 5'; exit {code}"  # failed: its progress is kept as it was
        r = cli(
            "--json", "run", "command", "--items", "3", "--params-json", json.dumps({"command": script, "shell": True})
        )
        assert r.returncode == code, r.stderr
        final = json.loads(r.stdout)
        assert (final["progress"]["done"], final["progress"]["total"]) == (5, total), final["progress"]
        assert final["total_items"] == (3 if code else 5), final


async def test_a_script_without_a_shebang_fails_in_one_clear_line(engine: Engine, tmp_path: Path) -> None:
    """``OSError: [Errno 8] Exec format error`` came out raw."""
    script = tmp_path / "job.sh"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    final = await engine.wait((await engine.submit(OperationSpec(type="command", params={"argv": [str(script)]}))).id)
    assert final.status is Status.FAILED
    assert "not an executable format: add a #! line or run it through sh" in final.error, final.error
    assert "Errno" not in final.error


def _marked(op_id: str) -> list[int]:
    """Live processes whose environment marks them as started for ``op_id``."""
    mark = f"OUTLAST_OPERATION_ID={op_id}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if mark in (d / "environ").read_bytes().split(b"\0") and _alive(int(d.name)):
                    out.append(int(d.name))
    return out


async def test_a_respawning_daemon_leaves_nothing_behind(engine: Engine) -> None:
    """A daemon that starts a process in a session of its own every few ms: one scan for leftovers killed
    it and what it had started, but not what it started between the scan and the kill."""
    daemon = "setsid bash -c 'while :; do setsid sleep 1095 & sleep 0.002; done' >/dev/null 2>&1 &" * 2
    op = await engine.submit(OperationSpec(type="command", params={"argv": ["bash", "-c", daemon + " sleep 0.3"]}))
    try:
        final = await engine.wait(op.id, timeout=30)
        assert final.status is Status.COMPLETED, final
        await asyncio.sleep(0.3)  # what a missed respawner would start meanwhile
        assert _marked(op.id) == []
    finally:
        for _ in range(100):  # never leave the respawner behind, even when the test fails
            if not (left := _marked(op.id)):
                break
            _kill(left)


def _two_jobs(pids: Path) -> str:
    """A shell command with a background job in its process group and a ``setsid`` one, each pid in ``pids``."""
    return f"sleep 300 & echo $! >> {pids}; setsid sh -c 'echo $$ >> {pids}; exec sleep 300' & wait"


def _until_gone(pids: Path) -> None:
    """Both of ``_two_jobs``'s processes are gone (each the process that started then) within 10 s."""
    left = {p: _start(p) for p in map(int, pids.read_text().split())}
    until(
        lambda: not any(_alive(p, t) for p, t in left.items() if t), 10, what="the grandchildren died with their worker"
    )


def test_a_sigkilled_worker_takes_the_commands_grandchildren_with_it(cli: Cli, tmp_path: Path) -> None:
    """PDEATHSIG killed only the command's own process: its background job (its process group) and a
    ``setsid`` one ran on, parent 1, until the next ``outlast`` process opened the state directory. The
    watcher kills both when the worker dies, with no other ``outlast`` run."""
    pids = tmp_path / "pids"
    op_id = submit(cli, "command", {"command": _two_jobs(pids), "shell": True})
    try:
        kill_worker_when(cli, op_id, lambda op: pids.exists() and len(pids.read_text().split()) == 2)
        _until_gone(pids)
    finally:
        if pids.exists():
            _kill([int(p) for p in pids.read_text().split()])


def test_a_worker_killed_right_after_it_started_the_command_takes_the_grandchildren_too(
    cli: Cli, tmp_path: Path
) -> None:
    """The watcher learnt the command's process group from the engine once the spawn had returned: a worker
    SIGKILLed before that (the command already running and forking) left the watcher without a group, and
    it killed nothing. The command's process tells it before it execs now."""
    pids = tmp_path / "pids"
    submit(cli, "command", {"command": _two_jobs(pids), "shell": True})
    worker = cli.start("--plugin", "tests.ops_stall_after_spawn", "worker", "--concurrency", "1")
    try:
        until(lambda: pids.exists() and len(pids.read_text().split()) == 2, 30, what="the command's two jobs")
        os.kill(worker.popen.pid, signal.SIGKILL)  # while its loop stalls right after the spawn
        worker.popen.wait(10)
        _until_gone(pids)
    finally:
        worker.kill()
        if pids.exists():
            _kill([int(p) for p in pids.read_text().split()])


async def test_a_signal_death_names_the_signal_and_a_success_ends_at_100_percent(engine: Engine) -> None:
    """ "exit code -11" said nothing of a crash; a command that succeeded after printing 50% ended
    "completed at 500/1000 items"."""
    op = await engine.submit(OperationSpec(type="command", params={"command": "echo x; kill -SEGV $$", "shell": True}))
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.FAILED and final.error.startswith("killed by SIGSEGV"), final.error
    assert "last output: x" in final.error and "-11" not in final.error
    op = await engine.submit(OperationSpec(type="command", params={"command": "echo at 50%", "shell": True}))
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED and (final.progress.done, final.progress.total) == (1000, 1000)
    assert await _logged(engine, op.id, "exited 0 with its last progress at 500/1000: counted as all done")


async def test_output_written_before_the_exit_is_all_read_however_far_behind_the_reader_is(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that prints a burst and exits (``seq 1 400000``: 2.6 MB) left the engine reading for
    longer than HELD_OPEN + DRAIN after its exit: the output was taken as held open by something left in
    the background (nothing was), the reading cut there, and the last 18,000 lines were never logged nor
    counted, the last one cut in half, the operation "completed". Here each line costs the reader a slow
    progress_regex search and the command's pipe holds all it writes, so it exits at once and the reader
    is seconds behind (the windows are made short so that a few seconds do): every line is read, and
    nothing is said to have held the output open."""
    import engine.operations.command as command

    monkeypatch.setattr(command, "HELD_OPEN", 0.2)
    monkeypatch.setattr(command, "DRAIN", 0.2)
    rx = r"(?P<pct>\d+)%"  # against a line of digits: a search of quadratic cost, bounded by the line
    line = "1" * 200
    started = time.perf_counter()
    for _ in range(5):
        re.search(rx, line)
    cost = (time.perf_counter() - started) / 5
    n = max(2400, min(4000, int(2.0 / max(cost, 1e-6))))  # 7 to 12 reads of 64 KiB, about 2 s of reading
    code = (
        "import fcntl, sys\n"
        "fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, 1 << 20)\n"  # all of it fits: written, the command exits
        f"sys.stdout.write(('1' * 200 + '\\n') * {n})\n"
        "print('done')\n"
    )
    params = {"argv": [sys.executable, "-c", code], "progress_regex": rx}
    op = await engine.submit(OperationSpec(type="command", params=params))
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED and final.result["lines"] == n + 1, (n, final.result)
    records, _ = await engine.logs(op.id)
    assert [r.message for r in records if r.level.upper() == "INFO"][-1] == "done"
    assert not [r.message for r in records if "kept its output open" in r.message]


async def test_a_holder_in_a_session_of_its_own_printing_now_and_then_ends_with_the_drain(
    engine: Engine, tmp_path: Path
) -> None:
    """What was written before a held-open output's holders were killed is read to its end, but a holder in
    a session of its own (killed only when the attempt ends) that prints every 50 ms is no backlog: the
    output still counts as ended DRAIN seconds later, and the holder is killed."""
    pids = tmp_path / "pids"
    cmd = f"setsid sh -c 'echo $$ > {pids}; while :; do echo tick; sleep 0.05; done' & echo main-exits; exit 0"
    op = await engine.submit(OperationSpec(type="command", params={"command": cmd, "shell": True}))
    try:
        final = await engine.wait(op.id, timeout=15)  # a hang: TimeoutError here
        assert final.status is Status.COMPLETED and final.result["exit_code"] == 0, final
        await until_async(lambda: pids.exists() and not _alive(int(pids.read_text())), timeout=10)
    finally:
        if pids.exists() and pids.read_text().strip():
            _kill([int(pids.read_text())])
