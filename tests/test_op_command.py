"""command: progress, steps and checkpoints from a real child's output; a SIGKILLed worker takes its child with
it and the resumed child goes on from OUTLAST_CHECKPOINT; cancel kills the whole process group; bad params."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Engine, OperationSpec, ProgressReported, Settings, Status
from engine.operations import command as command_module
from engine.operations.command import OutputLines
from tests.fixtures_cli import Cli, until
from tests.fixtures_engine import make_engine
from tests.fixtures_engine import until as until_async
from tests.fixtures_ops import bad_params, checkpoint_state, kill_worker_when, resume, run_json, submit

# A resumable script in the only protocol it knows: ::outlast lines out, OUTLAST_CHECKPOINT in.
WORKER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    ledger, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    with open(ledger + ".pid", "w") as fh:
        fh.write(str(os.getpid()))
    cp = json.loads(os.environ.get("OUTLAST_CHECKPOINT") or "{}")
    start = cp.get("next", 0) if os.environ.get("OUTLAST_RESUME") == "1" else 0
    total = cp.get("sum", 0)
    print("::outlast step crunching", flush=True)
    for i in range(start, n):
        time.sleep(pause)
        total += i
        with open(ledger, "a") as fh:
            fh.write(f"{i}\\n")
        print(f"::outlast progress {i + 1}/{n}", flush=True)
        if (i + 1) % 10 == 0:
            print("::outlast checkpoint " + json.dumps({"next": i + 1, "sum": total}), flush=True)
    print(f"sum {total}", flush=True)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def test_sigkilled_worker_then_resume_from_outlast_checkpoint(cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(WORKER_SCRIPT)
    n = 100
    whole_ledger, ledger = tmp_path / "whole.ledger", tmp_path / "job.ledger"
    code, whole, err = run_json(
        cli,
        "run",
        "command",
        "--params-json",
        json.dumps({"argv": [sys.executable, str(script), str(whole_ledger), str(n), "0"]}),
    )
    assert code == 0, err
    op_id = submit(cli, "command", {"argv": [sys.executable, str(script), str(ledger), str(n), "0.03"]})
    # The record's progress is written at the engine's progress flush (every second), not at each checkpoint:
    # wait for both before the kill, so the assertion below is about what was parsed, not about timing.
    killed = kill_worker_when(
        cli,
        op_id,
        lambda op: (
            op.progress.total is not None and checkpoint_state(cli, op_id).get("checkpoint", {}).get("next", 0) >= 20
        ),
    )
    assert killed.progress.step == "crunching" and killed.progress.total == n
    checkpointed = checkpoint_state(cli, op_id)["checkpoint"]["next"]
    child = int((tmp_path / "job.ledger.pid").read_text())
    until(lambda: not _alive(child), 10, what="the command died with its worker")
    before = ledger.read_text().split()
    assert len(before) < n
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    items = ledger.read_text().split()
    assert sorted(set(items), key=int) == [str(i) for i in range(n)]
    assert all(items.count(str(i)) == 1 for i in range(checkpointed)), "an item before the checkpoint was redone"
    assert final["result"] == whole["result"]
    assert final["result"]["checkpoint"] == {"next": n, "sum": sum(range(n))}
    assert f"sum {sum(range(n))}" in cli("logs", op_id).stdout


def test_the_lines_before_a_checkpoint_are_in_the_log_when_the_worker_is_killed_after_it(
    cli: Cli, tmp_path: Path
) -> None:
    """Log lines were written on the engine's clock, a checkpoint at once: a worker SIGKILLed between the two
    lost the lines the command printed before its ``::outlast checkpoint``, and the resume, going on past them,
    never printed them again. They are written before the checkpoint is."""
    script = tmp_path / "job.sh"
    script.write_text(
        'if [ -n "$OUTLAST_RESUME" ]; then echo resumed; exit 0; fi\n'
        "echo 'line 1'; echo 'line 2'; echo 'line 3'\n"
        """echo '::outlast checkpoint {"next": 4}'\n"""
        "sleep 60\n"
    )
    op_id = submit(cli, "command", {"argv": ["sh", str(script)]})
    kill_worker_when(cli, op_id, lambda op: checkpoint_state(cli, op_id).get("checkpoint") == {"next": 4})
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    logged = [ln.split(maxsplit=2)[-1] for ln in cli("logs", op_id).stdout.splitlines()]
    assert [m for m in logged if m.startswith("line") or m == "resumed"] == ["line 1", "line 2", "line 3", "resumed"]


async def test_a_failed_command_is_said_without_an_exception_type_or_a_line_of_outlast(
    engine: Engine, tmp_path: Path
) -> None:
    """`outlast run command -p command=false` failed with "RuntimeError: exit code 1 (at command.py:333)":
    an exception type and a line of Outlast's own, read as a bug in Outlast, for a program's exit code."""
    cases = (
        ({"command": "false"}, "exit code 1"),
        ({"command": "echo oops >&2; exit 3", "shell": True}, "exit code 3; last output: oops"),
        (
            {"argv": [str(tmp_path / "missing")]},
            f"cannot start {str(tmp_path / 'missing')!r}: No such file or directory",
        ),
    )
    for params, error in cases:
        op = await engine.submit(OperationSpec(type="command", params=params))
        final = await engine.wait(op.id, timeout=30)
        assert final.status is Status.FAILED
        assert final.error == error, final.error


async def test_progress_from_output_and_failure_with_last_lines(engine: Engine, tmp_path: Path) -> None:
    code = "import sys\nfor i in range(1, 5): print(f'step {i} of 4')\nprint('boom', file=sys.stderr)\nsys.exit(3)"
    op = await engine.submit(
        OperationSpec(
            type="command",
            params={"argv": [sys.executable, "-c", code], "progress_regex": r"step (?P<done>\d+) of (?P<total>\d+)"},
        )
    )
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.FAILED
    assert "exit code 3" in final.error and "boom" in final.error and "step 4 of 4" in final.error
    assert (final.progress.done, final.progress.total) == (4, 4)
    # A command string without a shell: split like one. It fails: a success counts as all done.
    line = "sh -c \"printf '%s\\n' 'files 7/20' '[ 45%]'; exit 5\""
    op = await engine.submit(OperationSpec(type="command", params={"command": line}))
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.FAILED and final.progress.metrics["lines"] == 2, final
    assert (final.progress.done, final.progress.total) == (450, 1000)  # the last line wins: 45.0 %


async def test_output_is_a_sign_of_life(engine: Engine) -> None:
    """A command that prints without progress patterns for longer than stall_timeout is not stalled."""
    code = "import time\nfor i in range(12):\n    print('working', flush=True)\n    time.sleep(0.1)"
    spec = OperationSpec(type="command", params={"argv": [sys.executable, "-c", code]}, profile={"stall_timeout": 0.6})
    final = await engine.wait((await engine.submit(spec)).id, timeout=30)
    assert final.status is Status.COMPLETED, final.status_message
    assert final.result["lines"] == 12 and final.progress.metrics["lines"] == 12


async def test_cancel_kills_the_process_group(engine: Engine, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    cmd = f"sleep 300 & echo $! > {pids}; echo started; sleep 300"
    op = await engine.submit(OperationSpec(type="command", params={"command": cmd, "shell": True}))
    await until_async(lambda: pids.exists() and pids.read_text().strip(), timeout=20)
    grandchild = int(pids.read_text())
    await engine.cancel(op.id)
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.CANCELLED, final
    await until_async(lambda: not _alive(grandchild), timeout=10)


async def test_a_process_in_a_session_of_its_own_neither_holds_up_a_pause_nor_outlives_it(
    settings: Settings, tmp_path: Path
) -> None:
    """``setsid`` takes a process out of the command's group, yet it keeps the command's output open: the
    pause waited for the output's end until the grace period (10 s by default) forced it, and the process
    ran on afterwards. With a 60 s grace period, the pause now takes effect at once and nothing is left."""
    pids = tmp_path / "pids"
    cmd = f"setsid sh -c 'echo $$ > {pids}; exec sleep 300' & echo started; sleep 300"
    async with make_engine(settings.model_copy(update={"grace_period": 60.0})) as engine:
        op = await engine.submit(OperationSpec(type="command", params={"command": cmd, "shell": True}))
        await until_async(lambda: pids.exists() and pids.read_text().strip(), timeout=20)
        escaped = int(pids.read_text())
        assert os.getsid(escaped) == escaped  # a session of its own: not in the command's process group
        await engine.pause(op.id)
        final = await engine.wait(op.id, timeout=20)
        assert final.status is Status.PAUSED and "forced" not in (final.status_message or ""), final
        await until_async(lambda: not _alive(escaped), timeout=10)
        said = f"left running in a session of their own (pid {escaped})"
        await until_async(lambda: _logged(engine, op.id, said), timeout=10)  # logged after the final status


async def test_a_command_that_exits_leaving_background_work_completes_and_takes_it_along(
    engine: Engine, tmp_path: Path
) -> None:
    """The command exits 0 while a background job (its process group) and a ``setsid`` one (a session of
    their own) keep its output open: it used to wait for them (here 300 s, up to the deadline). Now its
    output counts as ended HELD_OPEN seconds after it exited, and both are killed."""
    pids = tmp_path / "pids"
    cmd = f"sleep 300 & echo $! > {pids}; setsid sh -c 'echo $$ >> {pids}; exec sleep 300' & echo started"
    op = await engine.submit(OperationSpec(type="command", params={"command": cmd, "shell": True}))
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED and final.result["exit_code"] == 0, final
    left = [int(p) for p in pids.read_text().split()]
    assert len(left) == 2
    await until_async(lambda: not any(_alive(p) for p in left), timeout=10)
    await until_async(lambda: _logged(engine, op.id, "kept its output open"), timeout=10)


async def _logged(engine: Engine, op_id: str, text: str) -> bool:
    records, _ = await engine.logs(op_id)
    return any(text in r.message for r in records)


def test_bad_params(cli: Cli, tmp_path: Path) -> None:
    bad_params(cli, "command", {"argv": ["true"], "progress_regex": "(unclosed"}, "progress_regex does not compile")
    bad_params(cli, "command", {"argv": ["true"], "command": "true"}, "either argv")
    bad_params(cli, "command", {"argv": ["true"], "cwd": str(tmp_path / "nope")}, "cwd")


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                state, _ppid, pgrp = (d / "stat").read_text().rsplit(") ", 1)[1].split()[:3]
            except (OSError, IndexError, ValueError):
                continue
            if int(pgrp) == pgid and state != "Z":
                out.append(int(d.name))
    return out


def _kill_watcher(op_id: str) -> bool:
    """SIGKILL the watcher (``outlast-watch``) of ``op_id``'s command; True when there was one."""
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"outlast-watch" in argv and op_id.encode() in argv:
            os.kill(int(d.name), signal.SIGKILL)
            return True
    return False


def test_sigkilled_worker_leaves_no_shell_grandchild_running_beside_the_resume(cli: Cli, tmp_path: Path) -> None:
    """``sh -c 'sleep; echo'``: the shell dies with its SIGKILLed worker, but its ``sleep`` lives on with
    parent 1 when the watcher that kills the group went too; the resume must not start a second copy
    beside it (the old group is killed first)."""
    pgfile = tmp_path / "pgid"
    cmd = f"echo $$ >> {pgfile}; sleep 777; echo done"
    op_id = submit(cli, "command", {"command": cmd, "shell": True})

    def started(op: object) -> bool:  # the shell has written its pid (the file is made before it is written)
        pids = pgfile.read_text().split() if pgfile.exists() else []
        if not (pids and any(_group(int(pids[0])))):
            return False
        # The watcher that kills the group when the worker dies is killed first, as by the OOM killer
        # taking every process of a cgroup: what is left for the resume to find.
        return _kill_watcher(op_id)

    kill_worker_when(cli, op_id, started)
    old = int(pgfile.read_text().split()[0])
    until(lambda: not _alive(old), 10, what="the shell died with its worker")
    assert _group(old), "the grandchild sleep should have outlived its worker (else this test tests nothing)"
    resumed = cli.start("resume", op_id)
    try:
        until(lambda: len(pgfile.read_text().split()) == 2, 40, what="the resumed command started")
        assert _group(old) == [], "a process of the killed attempt still runs beside the resume"
        new = int(pgfile.read_text().split()[1])
        assert _group(new), "the resumed command runs"
        said = lambda: any("left running by attempt 1" in ln for ln in cli("logs", op_id).stdout.splitlines())  # noqa: E731
        until(said, 20, what=f"one log line says what was killed: {cli('logs', op_id).stdout}")
        assert cli("cancel", op_id).returncode == 0
        assert resumed.wait(30) == 4
        until(lambda: not _group(new), 10, what="the cancelled command's group is gone")
    finally:
        resumed.kill()
        for pgid in map(int, pgfile.read_text().split()):  # never leave a sleep behind, even on failure
            for pid in _group(pgid):
                os.kill(pid, signal.SIGKILL)


async def test_outlast_directives_are_protocol_not_log_lines(engine: Engine, tmp_path: Path) -> None:
    """48 of ~50 log lines of one run were the command's own ::outlast directives, logged as output."""
    ledger = tmp_path / "ledger"
    op = await engine.submit(
        OperationSpec(type="command", params={"argv": [sys.executable, "-c", WORKER_SCRIPT, str(ledger), "20", "0"]})
    )
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED and final.progress.done == 20
    records, _ = await engine.logs(op.id)
    messages = [r.message for r in records]
    assert "sum 190" in messages
    assert not any(m.lstrip().startswith("::outlast") for m in messages), messages


def test_logs_follow_on_a_quiet_operation_says_what_it_waits_for(cli: Cli) -> None:
    op_id = cli("-q", "submit", "demo", "-p", "items=5").stdout.strip()  # queued: nothing logs
    follow = cli.start("logs", op_id, "--follow")
    until(lambda: any("waiting for new log lines" in ln for ln in follow.err), 20, what="the waiting line")
    assert follow.out == []  # stdout stays the log
    cli("cancel", op_id)
    assert follow.wait() != 0
    assert sum("waiting for new log lines" in ln for ln in follow.err) == 1


EOLS = [b"\n", b"\r\n", b"\r"]
"""How a command ends a line: a newline, CR LF, or a carriage return alone (a line written over)."""
_TEXT = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.tuples(_TEXT, st.sampled_from(EOLS)), max_size=30),
    unfinished=_TEXT,
    cuts=st.lists(st.integers(1, 50), min_size=1, max_size=20),
    line_max=st.sampled_from([8, 1 << 20]),
)
def test_output_is_split_into_the_lines_the_command_wrote(
    parts: list[tuple[bytes, bytes]], unfinished: bytes, cuts: list[int], line_max: int
) -> None:
    """The output read a chunk at a time (cut anywhere, here by ``cuts``) gives every line with its end
    (a newline, CR LF, or a carriage return alone: a progress bar written over), the unfinished last
    one as it is, and a line longer than LINE_MAX as LINE_MAX-sized pieces."""
    data = b"".join(body + eol for body, eol in parts) + unfinished
    # The lines of the whole output at once (a CR then an LF is one CR LF, however it was generated).
    lines, pos = [], 0
    for m in re.finditer(rb"\r\n|\n|\r", data):
        lines.append((data[pos : m.start()], m.group()))
        pos = m.end()
    last = data[pos:]
    if not last and lines and lines[-1][1] == b"\r":  # written over, then the end: its last state stays
        last = lines.pop()[0]
    want = []
    for body, eol in [*lines, *([(last, b"")] if last else [])]:
        while len(body) >= line_max:
            want.append(body[:line_max])
            body = body[line_max:]
        if body or eol:
            want.append(body + eol)

    async def go() -> list[bytes]:
        stream = asyncio.StreamReader()
        rest, i = data, 0
        while rest:
            n = cuts[i % len(cuts)]
            stream.feed_data(rest[:n])
            rest, i = rest[n:], i + 1
        stream.feed_eof()
        out = OutputLines(stream, SimpleNamespace(cancelled=False), lambda: False)  # type: ignore[arg-type]
        got = []
        while line := await out.next():
            got.append(line)
        assert await out.next() == b"", "the end stays the end"
        return got

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(command_module, "LINE_MAX", line_max)
        mp.setattr(command_module, "CHUNK", 7)
        assert asyncio.run(go()) == want


async def test_a_progress_bar_written_over_in_place_is_progress_and_a_sign_of_life(engine: Engine) -> None:
    """curl, wget, rsync, pv and tqdm redraw one line with carriage returns: for 4 s no newline came, so a
    download making steady progress was stopped as stalled after stall_timeout, with no progress shown.
    Each state counts as progress and as a sign of life; the log keeps the state a newline leaves."""
    code = (
        "import sys, time\n"
        "for i in range(0, 101, 4):\n"
        "    sys.stdout.write(f'\\rdownloading {i}%'); sys.stdout.flush(); time.sleep(0.1)\n"
        "print()\nprint('done')"
    )
    seen: list[float] = []
    engine.subscribe(lambda ev: seen.append(ev.progress.percent) if isinstance(ev, ProgressReported) else None)
    spec = OperationSpec(
        type="command",
        params={"argv": [sys.executable, "-c", code]},
        profile={"stall_timeout": 1.0, "progress_report_interval": 0.2},
    )
    final = await engine.wait((await engine.submit(spec)).id, timeout=30)
    assert final.status is Status.COMPLETED, final.status_message
    assert final.result["lines"] == 2
    records, _ = await engine.logs(final.id)
    assert [r.message for r in records] == ["downloading 100%", "done"]
    assert any(0 < (p or 0) < 100 for p in seen), "no progress was shown while it ran"


async def test_output_whose_line_has_not_ended_is_a_sign_of_life(engine: Engine) -> None:
    """A command printing a dot every 0.1 s, with no newline for 5 s, was stopped as stalled after a
    stall_timeout of 2 s: only a whole line restarted the stall clock. A line's pieces do now; the same
    progress line again and again is still no progress."""
    code = (
        "import sys, time\nfor i in range(50):\n    sys.stdout.write('.'); sys.stdout.flush(); time.sleep(0.1)\nprint()"
    )
    spec = OperationSpec(type="command", params={"argv": [sys.executable, "-c", code]}, profile={"stall_timeout": 2})
    final = await engine.wait((await engine.submit(spec)).id, timeout=60)
    assert final.status is Status.COMPLETED, final.status_message
    assert final.result["lines"] == 1 and final.progress.metrics["partial_line_bytes"] == 0, final
    same = "import time\nwhile True:\n    print('::outlast progress 5/10', flush=True); time.sleep(0.1)"
    spec = OperationSpec(type="command", params={"argv": [sys.executable, "-c", same]}, profile={"stall_timeout": 1})
    final = await engine.wait((await engine.submit(spec)).id, timeout=60)
    assert final.status is Status.TIMED_OUT and "stalled" in (final.status_message or ""), final


async def test_a_command_that_prints_without_end_fills_its_log_only_to_the_limit(settings: Settings) -> None:
    """``yes`` for an hour wrote 2.5 bytes of log per byte of output until the disk was full. Past the
    attempt's log_limit the lines are counted and only the last 1,000 written, after one line saying so;
    the operation's own counts see every line."""
    settings = settings.model_copy(update={"log_limit": 20_000})
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="command", params={"argv": ["seq", "1", "50000"]}))
        final = await engine.wait(op.id, timeout=60)
        assert final.status is Status.COMPLETED and final.result["lines"] == 50_000
        records, _ = await engine.store.read_logs(op.id)
    lines = [r.message for r in records if r.message.isdigit()]
    reached = [i for i, r in enumerate(records) if "reached its limit" in r.message]
    past = [r.message for r in records if "came past the log limit" in r.message]
    assert len(reached) == 1 and len(past) == 1, [r.message for r in records if not r.message.isdigit()]
    kept = sum(r.message.isdigit() for r in records[: reached[0]])
    assert 200 < kept < 400  # 20,000 bytes at the size of a line and its record
    assert lines[:kept] == [str(i) for i in range(1, kept + 1)]
    assert lines[-1000:] == [str(i) for i in range(49_001, 50_001)]
    assert past[0].startswith(f"{50_000 - kept:,} log lines (") and "the last 1,000 follow" in past[0], past
    assert len(records) < kept + 1000 + 20  # the engine's own few lines besides


@pytest.mark.parametrize("byte", ["\\0", "\\033", "\\351"], ids=["nul", "escape", "latin1"])
async def test_the_log_limit_bounds_the_bytes_of_the_log_file_whatever_the_command_prints(
    settings: Settings, byte: str
) -> None:
    """log_limit counted characters: a NUL or an escape code is one, and six in the file (``\\u0000``), a byte
    that is not UTF-8 four (``\\xe9``, five): ``head -c 200M /dev/zero`` wrote a log of 400 MB under the limit
    of 64 MB. The file takes the limit, and the tail written at the end its budget, in bytes."""
    settings = settings.model_copy(update={"log_limit": 20_000})
    line = f"printf '{byte}%.0s' $(seq 1 300); echo"
    script = f"for i in $(seq 1 200); do {line}; done"
    async with make_engine(settings) as engine:
        op = await engine.submit(OperationSpec(type="command", params={"command": script, "shell": True}))
        final = await engine.wait(op.id, timeout=60)
        assert final.status is Status.COMPLETED and final.result["lines"] == 200, final
        records, _ = await engine.store.read_logs(op.id)
        size = (engine.store.log_dir / f"{op.id}.jsonl").stat().st_size  # type: ignore[attr-defined]
    assert any("came past the log limit" in r.message for r in records)
    assert size <= 2 * 20_000 + 2_000, size  # the limit, the tail's budget (the limit, when smaller) and two lines


async def test_a_log_file_that_cannot_grow_keeps_whole_records_and_says_what_was_not_written(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A file size limit (``ulimit -f``: EFBIG) on the log: the write was taken for a store outage ("the store
    cannot be written ... stops as interrupted", which never happened), the file ended in half a record, and
    70% of the output, its last lines with them, was dropped without a word. Now every record in the file is
    whole, the lines not written are counted and said on the process's error output, and the operation, whose
    store was never at fault, completes."""
    import logging
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = 1 << 20
    async with make_engine(settings) as engine:  # the store's files are made before the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            with caplog.at_level(logging.WARNING, "outlast"):
                op = await engine.submit(OperationSpec(type="command", params={"argv": ["seq", "1", "60000"]}))
                final = await engine.wait(op.id, timeout=60)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        records, _ = await engine.store.read_logs(op.id)
    assert final.status is Status.COMPLETED and final.result["lines"] == 60_000, final
    log_file = settings.state_dir / "logs" / f"{op.id}.jsonl"
    text = log_file.read_text()
    assert 0 < len(text) <= limit and text.endswith("\n")
    assert all(json.loads(line) for line in text.splitlines())  # not one record cut in half
    written = [r.message for r in records if r.message.isdigit()]
    assert written == [str(i) for i in range(1, len(written) + 1)] and len(written) > 1000
    said = [r.getMessage() for r in caplog.records if op.id in r.getMessage()]
    assert not any("cannot be written" in m for m in said), said
    counted = [m for m in said if "log lines were not written: its log file could not grow (File too large" in m]
    assert len(counted) == 1, said
    lost = int(counted[0].split(": ")[1].split(" ")[0].replace(",", ""))
    assert 60_000 - len(written) <= lost <= 60_000 - len(written) + 10, (lost, len(written))


async def test_progress_written_just_before_a_pause_counts_with_the_checkpoint_after_it(
    engine: Engine, tmp_path: Path
) -> None:
    """What a paused command wrote before it was killed is read for its last ``::outlast checkpoint``: its
    progress lines were passed over, so the pause said "paused at 44/100" with the checkpoint at next=45, and the
    resume "resuming from checkpoint N (44 items done)" while the command went on at 45. Here the event loop is
    held (the engine reads nothing) while the command writes its last two lines, and the pause is asked before
    it reads again: they are in the pipe, unread, as the stop kills the command. (Written by a process left
    running after the kill, as this test did first, they came too late for the drain's 0.1 s on a loaded
    machine.)"""
    go, written = tmp_path / "go", tmp_path / "written"
    cmd = (
        'if [ "$OUTLAST_RESUME" = 1 ]; then echo "from $OUTLAST_CHECKPOINT"; exit 0; fi; '
        'echo "::outlast progress 44/100"; echo "::outlast checkpoint {\\"next\\": 44}"; '
        f"while [ ! -e {go} ]; do sleep 0.02; done; "
        'printf "::outlast progress 45/100\\n::outlast checkpoint {\\"next\\": 45}\\n"; '
        f"touch {written}; exec sleep 300"
    )
    op = await engine.submit(OperationSpec(type="command", params={"command": cmd, "shell": True}))
    await until_async(lambda: _at(engine, op.id, 44), timeout=20)
    go.touch()
    deadline = time.monotonic() + 20
    while not written.exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # blocking on purpose: the engine must not read the lines before the pause
    assert written.exists()
    await engine.pause(op.id)  # the stop is asked before its first await: before the engine reads again
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.PAUSED, final
    newest = max(await engine.checkpoints(op.id), key=lambda c: c.seq)
    assert newest.processed_items == 45 and final.progress.done == 45, (newest, final.progress)
    await engine.resume(op.id)
    final = await engine.wait(op.id, timeout=20)
    assert final.status is Status.COMPLETED, final
    await until_async(lambda: _logged(engine, op.id, "(45 items done)"), timeout=10)
    assert await _logged(engine, op.id, 'from {"next": 45}')


async def _at(engine: Engine, op_id: str, done: int) -> bool:
    op = await engine.get(op_id)
    return op is not None and op.progress.done == done


async def test_output_bytes_that_are_not_utf8_are_logged_as_written_out(engine: Engine) -> None:
    """Decoded with "replace", Latin-1 output ``caf\\xe9`` was logged ``caf\\ufffd``: which byte it was was
    lost. Each such byte is ``\\xNN`` now, as a file name's is; UTF-8 text is as it was."""
    script = "import sys; sys.stdout.buffer.write(b'caf\\xe9 \\xff\\xfe caf\\xc3\\xa9\\n')"
    op = await engine.submit(OperationSpec(type="command", params={"argv": [sys.executable, "-c", script]}))
    final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED
    records, _ = await engine.logs(op.id)
    assert [r.message for r in records] == ["caf\\xe9 \\xff\\xfe café"]


def test_a_long_line_without_a_slash_or_a_percent_sign_is_not_searched_for_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """N/M and NN% were searched for in every line: on a megabyte line of binary output (``head -c 200M
    /dev/zero``) the two searches took 35 ms, most of the engine's time (200 MB in 49 s), the command waiting
    on its full pipe. A line without the character a search needs is not searched; one with it still is."""
    searched: list[str] = []

    class Counted:
        def __init__(self, rx: re.Pattern[str]) -> None:
            self.rx = rx

        def search(self, line: str) -> re.Match[str] | None:
            searched.append(line[:10])
            return self.rx.search(line)

    monkeypatch.setattr(command_module, "_FRACTION", Counted(command_module._FRACTION))
    monkeypatch.setattr(command_module, "_PERCENT", Counted(command_module._PERCENT))
    reported: list[tuple[int | None, int | None]] = []
    ctx = SimpleNamespace(progress=lambda done=None, total=None, **_: reported.append((done, total)))
    parser = command_module._Parser(ctx, None)  # type: ignore[arg-type]
    parser.feed("\0" * (1 << 20))
    assert searched == [] and reported == []
    parser.feed("copied 3/10 files")
    parser.feed("50% done")
    assert reported == [(3, 10), (500, 1000)]
