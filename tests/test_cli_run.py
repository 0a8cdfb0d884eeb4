"""`outlast run` / `resume` / `worker` driven as real processes: completion, plain output, signals, detach."""

from __future__ import annotations

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

from tests.conftest import REPO
from tests.fixtures_cli import Cli, Proc, alive, until

DEMO = ["run", "demo", "-p", "seconds=0.03"]


def test_run_to_completion_with_json(cli: Cli) -> None:
    r = cli("--json", "run", "demo", "-p", "items=20", "-p", "seconds=0.01")
    assert r.returncode == 0, r.stderr
    op = json.loads(r.stdout)
    assert op["status"] == "completed"
    assert op["result"]["sum"] == sum(range(20))
    assert op["progress"]["done"] == 20


def test_run_without_terminal_prints_plain_lines(cli: Cli) -> None:
    r = cli(*DEMO, "-p", "items=40", "--profile", "progress_report_interval=0.2", "--name", "plain-run")
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout  # no escape codes in a pipe
    lines = r.stdout.splitlines()
    running = [ln for ln in lines if " running " in ln and "items" in ln]
    assert len(running) >= 2, r.stdout  # one line per progress report
    assert any(re.search(r"\d+\.\d%\s+\d+/40 items", ln) for ln in running)
    assert "plain-run" in lines[-2] or "plain-run" in r.stdout
    assert re.search(r"completed at 40/40 items", lines[-1]), lines[-1]


EXTENDED = ["--profile", "base_timeout=1", "--profile", "per_item_timeout=0", "--profile", "max_timeout=60"]
"""A profile whose deadline a demo of 150 items at 0.02 s passes, and is extended by its rate."""


def test_an_extension_of_the_deadline_is_printed_once_and_shown_by_show(cli: Cli) -> None:
    """`outlast run` in a pipe printed each extension twice (its log line, then the event's), and `outlast show`
    said "timeout 1s" beside a run of 3 s completed, nothing of the extension."""
    r = cli(*DEMO[:2], "-p", "items=150", "-p", "seconds=0.02", *EXTENDED)
    assert r.returncode == 0, r.stderr
    said = [ln for ln in r.stdout.splitlines() if "deadline extended" in ln]
    shown = cli("show", "1")
    assert shown.returncode == 0, shown.stderr
    timeout = next(ln for ln in shown.stdout.splitlines() if ln.startswith("timeout"))
    extensions = json.loads(cli("--json", "show", "1").stdout)["extensions"]
    assert len(said) == extensions >= 1, r.stdout
    assert f"extended {extensions}x" in timeout, shown.stdout


def test_run_into_a_file_prints_log_lines_only_to_the_log_limit(cli: Cli) -> None:
    """``outlast run ... >> job.log`` printed every line of a handler that logs without end, those the stored
    log does not keep among them (305 MB beside a stored log of 66 MB): the log limit protects that file too."""
    r = cli("run", "command", "-p", 'argv=["seq", "1", "50000"]', env={**cli.env, "OUTLAST_LOG_LIMIT": "20000"})
    assert r.returncode == 0, r.stderr
    printed = [ln for ln in r.stdout.splitlines() if ln.split()[-1:] and ln.split()[-1].isdigit() and " INFO " in ln]
    assert 100 < len(printed) < 400, len(printed)  # 20,000 bytes at the size of a line and its record
    said = [ln for ln in r.stdout.splitlines() if "its log reached the log limit" in ln]
    assert len(said) == 1 and "are not printed" in said[0], r.stdout[-2000:]
    assert re.search(r"completed", r.stdout.splitlines()[-1]), r.stdout[-500:]


def test_run_into_a_file_prints_to_the_log_limit_in_bytes_when_the_output_is_binary(cli: Cli) -> None:
    """The limit counted characters: a NUL the command prints is one, and printed as ``\\x00`` (four bytes;
    six in the log file): ``head -c 200M /dev/zero`` printed 264 MB into the file under a limit of 64 MB."""
    script = "for i in $(seq 1 300); do head -c 300 /dev/zero; echo; done"
    env = {**cli.env, "OUTLAST_LOG_LIMIT": "20000"}
    r = cli("run", "command", "-p", f"command={script}", "-p", "shell=true", env=env)
    assert r.returncode == 0, r.stderr
    printed = [ln for ln in r.stdout.splitlines() if " INFO " in ln and "\\x00" in ln]
    assert printed and sum(len(ln) + 1 for ln in printed) <= 20_000, len(printed)
    assert sum("its log reached the log limit" in ln for ln in r.stdout.splitlines()) == 1, r.stdout[-2000:]


def test_a_signal_sent_to_the_process_and_its_group_is_one_stop_not_two(cli: Cli) -> None:
    """``timeout -s HUP`` and ``kill -- -PGID`` signal the process and then its group: the two, delivered
    apart, were a first and a second signal, and the second forced the stop (the item cut off, its final
    checkpoint skipped). The same signal again within a tenth of a second is the same stop."""
    proc = cli.start("run", "demo", "-p", "items=3", "-p", "seconds=1", "--profile", "progress_report_interval=0.2")
    proc.wait_line(lambda ln: " running " in ln)
    proc.signal(signal.SIGHUP)
    time.sleep(0.02)  # the first one handled, as the group's copy comes after it
    proc.signal(signal.SIGHUP)
    assert proc.wait() == 6, proc.err  # paused
    said = "\n".join(proc.out + proc.err)
    assert "forced" not in said and "cut off" not in said, said
    assert re.search(r"paused at 1/3 items .*checkpoint", said), said


@pytest.mark.parametrize("how", ["close", "none"])
def test_a_handler_closing_or_removing_sys_stdout_leaves_the_runs_own_output_alone(cli: Cli, how: str) -> None:
    """``sys.stdout.close()`` or ``sys.stdout = None`` in a handler (as daemonizing code does): ``outlast run``
    ended in "internal error" (exit 70), or with exit 1 and nothing said, its operation paused. The run writes
    on its own descriptor then: the operation completes and the run says so, exit 0."""
    r = cli("--plugin", "tests.ops_for_tests", "run", "closes_stdout", "-p", f"how={how}")
    assert r.returncode == 0, r
    assert "completed" in r.stdout.splitlines()[-1] and "Traceback" not in r.stderr, r


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_handler_taking_the_stop_signals_for_itself_does_not_keep_the_run_from_pausing(cli: Cli, sig: int) -> None:
    """A handler (or a library it uses) that took SIGTERM on the loop and ignored SIGINT: the process ignored
    every stop after it, the work could only be killed. They are put back, said once, and the run pauses."""
    proc = cli.start("--plugin", "tests.ops_for_tests", "run", "takes_stop_signals")
    proc.wait_line(lambda ln: " running " in ln)
    time.sleep(0.5)  # its handlers in place, and taken back at a tick of the clock
    proc.signal(sig)
    assert proc.wait(20) == 6, proc.out + proc.err  # paused, not the 10 s of work run to its end
    said = [ln for ln in proc.err if "was replaced" in ln]
    assert len(said) == 2 and all("put back" in ln for ln in said), proc.err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_signal_during_run_pauses_with_checkpoint_then_resume_completes(cli: Cli, sig: int) -> None:
    n = 100
    proc = cli.start(
        "run", "demo", "-p", "seconds=0.02", "-p", f"items={n}", "--profile", "progress_report_interval=0.2"
    )
    line = proc.wait_line(lambda ln: bool(re.search(rf" running .* ([1-9]\d*)/{n} items", ln)))
    op_id = line.split()[1]
    proc.signal(sig)
    assert proc.wait() == 6, proc.err  # paused
    assert f"outlast resume {op_id}" in "\n".join(proc.out + proc.err)
    paused = cli.op(op_id)
    assert paused.status.value == "paused"
    assert paused.checkpoint_seq and paused.progress.done < n
    done_before = paused.progress.done

    if sig == signal.SIGINT:  # in the foreground, by id prefix
        r = cli("--json", "resume", op_id[:10])
    else:  # back into the queue, for a worker that stops when idle
        r = cli("resume", op_id, "--queue")
        assert r.returncode == 0 and "queued again" in r.stdout, r.stderr
        r = cli("worker", "--exit-when-idle")
    assert r.returncode == 0, r.stderr
    final = cli.op(op_id)
    assert final.status.value == "completed"
    assert final.result["sum"] == sum(range(n))
    assert final.attempt == 2
    logs = cli("logs", op_id)
    assert f"resuming from checkpoint {paused.checkpoint_seq}" in logs.stdout
    assert done_before > 0


def test_run_started_with_sighup_ignored_goes_on_after_a_hang_up(cli: Cli) -> None:
    """`nohup outlast run ... &` then logout: SIGHUP, ignored as the process started, stays ignored and the
    work completes (it was paused: "the terminal hung up")."""
    proc = Proc(
        ["run", "demo", "-p", "seconds=0.02", "-p", "items=30", "--profile", "progress_report_interval=0.1"],
        cli.env,
        real=True,  # a fork from the zygote cannot start with a disposition of its own
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )
    cli.procs.append(proc)
    proc.wait_line(lambda ln: " running " in ln)
    proc.signal(signal.SIGHUP)
    assert proc.wait() == 0, proc.err
    assert "completed at 30/30 items" in proc.out[-1], proc.out


def test_cancel_and_pause_from_other_processes_stop_a_running_operation(cli: Cli) -> None:
    # One operation run in the foreground by `outlast run`, two more by a worker.
    runner = cli.start(*DEMO, "-p", "items=2000", "--profile", "progress_report_interval=0.2")
    run_id = runner.wait_line(lambda ln: " running " in ln).split()[1]
    a = cli("submit", "demo", "-p", "items=2000", "-p", "seconds=0.03").stdout.strip()
    b = cli("submit", "demo", "-p", "items=2000", "-p", "seconds=0.03").stdout.strip()
    worker = cli.start("worker", "--concurrency", "2")
    cli.wait_status(a, {"running"})
    cli.wait_status(b, {"running"})

    r = cli("cancel", "--wait", "60", a)
    assert r.returncode == 0, r.stderr
    assert f"{a} cancelled" in r.stdout
    r = cli("--json", "pause", "--wait", "60", b)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "paused"
    assert cli.op(b).checkpoint_seq

    r = cli("cancel", "--wait", "60", run_id)
    assert r.returncode == 0, r.stderr
    assert runner.wait() == 4  # the foreground run reports cancelled

    assert worker.popen.poll() is None  # the worker goes on
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert any(f"{a} cancelled" in ln for ln in worker.out)


def test_pause_from_another_process_ends_a_foreground_run_with_the_paused_code(cli: Cli) -> None:
    runner = cli.start(*DEMO, "-p", "items=2000")
    run_id = runner.wait_line(lambda ln: "submitted" in ln).split()[1]
    cli.wait_status(run_id, {"running"})
    r = cli("pause", "--wait", "60", run_id)
    assert r.returncode == 0 and "resume with" in r.stdout, r.stderr
    assert runner.wait() == 6


def test_detach_returns_at_once_and_the_operation_completes_without_a_terminal(cli: Cli) -> None:
    r = cli("--json", "run", "demo", "-p", "items=100", "-p", "seconds=0.03", "--detach")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    op_id, pid = out["id"], out["pid"]
    try:
        # Returned while the operation still has most of its work ahead.
        assert cli.op(op_id).status.value in ("queued", "running")
        assert os.getsid(pid) == pid  # its own session: no controlling terminal, survives a hang-up
        w = cli("watch", op_id)  # followed from here by polling the store
        assert w.returncode == 0, w.stderr
        assert any(" running " in ln for ln in w.stdout.splitlines())
        assert cli.op(op_id).status.value == "completed"
        log = cli.state_dir / "detached" / f"{op_id}.log"
        # The worker writes its last line after the status is durable (which `watch` saw): wait for it.
        until(lambda: "completed" in log.read_text(), 30, what="the detached log's final line")
        until(lambda: not alive(pid), 30, what="detached process exit")
        assert cli("rm", op_id).returncode == 0
        assert not log.exists()  # removed with the operation's other logs (it stayed for ever)
    finally:
        until(lambda: not alive(pid), 30, what="detached process exit")


def test_a_reader_that_goes_away_does_not_stop_the_run(cli: Cli) -> None:
    proc = cli.start(*DEMO, "-p", "items=40", "--profile", "progress_report_interval=0.1")
    op_id = proc.wait_line(lambda ln: "submitted" in ln).split()[1]
    proc.popen.stdout.close()  # like `outlast run ... | head -1`
    assert proc.wait() == 0, proc.err
    assert cli.op(op_id).status.value == "completed"
    assert not [ln for ln in proc.err if "Traceback" in ln or "Exception" in ln], proc.err


def test_the_resume_hint_pastes_as_printed_and_the_pause_says_why(cli: Cli, tmp_path: Path) -> None:
    """With --state-dir elsewhere, the printed `outlast resume ID` looked in the default store and said
    "no operation matches" without naming the store; and every pause said "the engine stopped"."""
    other = tmp_path / "elsewhere"
    proc = cli.start("--state-dir", str(other), "run", "demo", "-p", "seconds=0.02", "-p", "items=100")
    line = proc.wait_line(lambda ln: "submitted" in ln)
    op_id = line.split()[1]
    proc.wait_line(lambda ln: " running " in ln)
    proc.signal(signal.SIGINT)
    assert proc.wait() == 6, proc.err
    hint = next(ln for ln in proc.out + proc.err if ln.startswith("resume") and "with: " in ln).split("with: ", 1)[1]
    assert hint == f"outlast --state-dir {other} resume {op_id}"
    missing = cli("resume", op_id)  # the default store (none there): the message names the store it searched
    assert missing.returncode != 0 and f"no state directory at {cli.state_dir} " in missing.stderr
    pasted = cli(*shlex.split(hint)[1:], "--json")
    assert pasted.returncode == 0, pasted.stderr
    r = cli("--state-dir", str(other), "--json", "show", op_id)
    record = json.loads(r.stdout)
    assert record["status"] == "completed" and record["attempt"] == 2


def test_a_pause_by_signal_says_which_signal(cli: Cli) -> None:
    proc = cli.start("run", "demo", "-p", "seconds=0.02", "-p", "items=300")
    op_id = proc.wait_line(lambda ln: "submitted" in ln).split()[1]
    proc.wait_line(lambda ln: " running " in ln)
    proc.signal(signal.SIGINT)
    assert proc.wait() == 6, proc.err
    assert cli.op(op_id).status_message.startswith("paused: Ctrl-C (SIGINT)")


def test_a_stop_forced_by_a_second_ctrl_c_says_so_not_that_a_grace_period_ran_out(cli: Cli) -> None:
    """Ctrl-C twice: the second forces the stop at once, and the status line said "(forced after 10s grace
    period)", a grace period that never ran out. It says what forced it now. An item of 30 s: no safe
    point comes between the two signals, so the stop is forced, never reached."""
    proc = cli.start("--plugin", "tests.ops_for_tests", "run", "ledger", "-p", "items=3", "-p", "seconds=30")
    op_id = proc.wait_line(lambda ln: "submitted" in ln).split()[1]
    proc.wait_line(lambda ln: " running " in ln)
    proc.signal(signal.SIGINT)
    proc.wait_line(lambda ln: "pausing at its next safe point" in ln)  # the first one was heard
    time.sleep(0.2)  # as a second press comes: within a tenth of a second it is the same signal again
    proc.signal(signal.SIGINT)
    assert proc.wait(15) == 6, proc.err
    message = cli.op(op_id).status_message or ""
    assert message.startswith("paused: Ctrl-C (SIGINT) (forced by a second Ctrl-C)"), message
    assert "grace" not in message and "forced by a second Ctrl-C" in proc.out[-2], proc.out[-3:]
    assert "stopped by force: a second Ctrl-C came before a safe point" in cli("logs", op_id).stdout


def test_every_type_reports_in_a_pipe_at_the_same_cadence(cli: Cli) -> None:
    """An index (its profile reports every 30 s) printed only a start and an end line into a pipe over
    19 s, while the demo printed a line a second: the pipe's cadence no longer follows the profile."""
    proc = cli.start(
        "run", "demo", "-p", "items=60", "-p", "seconds=0.05", "--profile", "progress_report_interval=30"
    )  # fmt: skip
    assert proc.wait() == 0, proc.err
    running = [ln for ln in proc.out if " running " in ln]
    assert len(running) >= 2, proc.out  # about 3 s of work: a line a second, not one every 30 s


def test_a_stopped_run_does_not_count_the_stop_as_a_stall(cli: Cli, tmp_path: Path) -> None:
    """Ctrl-Z (SIGTSTP) or SIGSTOP freezes ``outlast run`` and its command. The stall clock ran on through
    the stop, so after ``fg`` the operation was stopped as stalled (timed_out) although it went on at
    once. The time the process was stopped now counts toward no stall, deadline or grace period."""
    script, pid_file = tmp_path / "tick.py", tmp_path / "tick.pid"
    script.write_text(
        "import os, sys, time\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "for i in range(10):\n"
        "    print(i, flush=True)\n"
        "    time.sleep(0.3)\n"
    )
    argv = json.dumps({"argv": [sys.executable, str(script), str(pid_file)]})
    proc = cli.start("run", "command", "--params-json", argv, "--profile", "stall_timeout=3")
    ticker = int(until(lambda: pid_file.exists() and pid_file.read_text(), 30, what="the command's pid"))
    proc.wait_line(lambda ln: " running " in ln)
    # The process tree stopped (kill -STOP, a paused container): the command first, so that all its output
    # is read before the engine stops, and it comes back a second after the engine, so that no output can
    # race the stall check. The engine sees 1.5 s of silence besides the 4 s it was stopped.
    os.kill(ticker, signal.SIGSTOP)
    time.sleep(0.5)
    os.kill(proc.popen.pid, signal.SIGSTOP)
    time.sleep(4)
    os.kill(proc.popen.pid, signal.SIGCONT)
    time.sleep(1)
    with contextlib.suppress(ProcessLookupError):  # gone if the operation was stopped as stalled
        os.kill(ticker, signal.SIGCONT)
    assert proc.wait() == 0, proc.out[-3:] + proc.err
    assert "completed" in proc.out[-1] and "lines" in proc.out[-1], proc.out[-1]


def test_a_cancel_of_work_whose_process_is_stopped_says_so_at_once(cli: Cli) -> None:
    """``outlast cancel`` of work whose process was stopped (Ctrl-Z, SIGSTOP) waited its 10 s, then said "still
    running after 10s", though nothing would act on it until the process went on. It says so at once, how
    to go on, and the cancel lands once the process is continued."""
    runner = cli.start(*DEMO, "-p", "items=4000")
    op_id = runner.wait_line(lambda ln: " running " in ln).split()[1]
    for _ in range(50):
        os.kill(runner.popen.pid, signal.SIGSTOP)
        try:
            r = cli("cancel", op_id)
        finally:
            os.kill(runner.popen.pid, signal.SIGCONT)
        if r.returncode != 8:
            break
        # Stopped while it held the store's write lock: the cancel is refused, says so, and writes nothing.
        assert "holds its write lock, and is stopped (Ctrl-Z or SIGSTOP): kill -CONT" in r.stderr, r.stderr
        assert cli.op(op_id).status.value == "running"
        time.sleep(0.05)
    assert r.returncode == 0, r.stderr
    said = f"cancel requested in {cli.op(op_id).worker}, which is stopped (Ctrl-Z or SIGSTOP): kill -CONT"
    assert said in r.stdout and "still running" not in r.stdout, r.stdout
    assert runner.wait() == 4
    assert cli.op(op_id).status.value == "cancelled"


def test_a_huge_result_is_abridged_for_people_and_whole_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    """A handler may return megabytes (every path it touched): ``outlast run`` printed all of it on its last
    line, and ``show`` in its result row. People get the first RESULT_CHARS and where the whole is."""
    from engine import Operation, Status
    from engine.cli import format as fmt
    from engine.cli.run import report_final
    from engine.models import new_id

    now = time.time()
    result = {"paths": [f"src/file_{i:06d}.py" for i in range(20_000)]}
    op = Operation(id=new_id(), type="t", status=Status.COMPLETED, created_at=now, queued_at=now, updated_at=now)
    op.result = result
    report_final(op, "text")
    line = capsys.readouterr().out.strip()
    assert len(line) < fmt.RESULT_CHARS + 300 and f"outlast show {op.id} --json has all" in line, line[-300:]
    assert "characters" in line
    row = next(r for r in fmt.show_text(op, []).splitlines() if r.startswith("result"))
    assert len(row) < fmt.RESULT_CHARS + 300
    report_final(op, "json")
    assert json.loads(capsys.readouterr().out)["result"] == result


def test_show_says_a_status_once() -> None:
    """A stop's message starts with its status: ``show`` printed "status  paused: paused: Ctrl-C (SIGINT)"."""
    from engine import Operation, Status
    from engine.cli import format as fmt
    from engine.models import new_id

    now = time.time()
    op = Operation(id=new_id(), type="t", status=Status.PAUSED, created_at=now, queued_at=now, updated_at=now)
    op.status_message = "paused: Ctrl-C (SIGINT); checkpoint 3"
    row = next(r for r in fmt.show_text(op, []).splitlines() if r.startswith("status"))
    assert row.split(None, 1)[1] == "paused: Ctrl-C (SIGINT); checkpoint 3", row


def test_show_of_work_queued_again_names_the_start_and_worker_as_the_attempt_befores() -> None:
    """Queued again (attempt 2), ``show`` said "started 22:37" and "worker host:pid", the attempt before's,
    as if a worker ran this attempt: it was a dead process, and no worker had taken the work yet."""
    from engine import Operation, Status
    from engine.cli import format as fmt
    from engine.models import WorkerInfo, new_id

    now = time.time()
    op = Operation(id=new_id(), type="t", status=Status.QUEUED, created_at=now, queued_at=now, updated_at=now)
    op.attempt, op.started_at, op.worker = 2, now - 60, WorkerInfo(host="box", pid=4242)
    rows = dict(r.split(None, 1) for r in fmt.show_text(op, []).splitlines() if r.startswith(("started", "worker")))
    assert rows["worker"] == "-  (attempt 1: box:4242)", rows
    assert rows["started"].startswith("-  (attempt 1: "), rows
    op.attempt = 1
    op.started_at = op.worker = None
    rows = dict(r.split(None, 1) for r in fmt.show_text(op, []).splitlines() if r.startswith(("started", "worker")))
    assert rows == {"started": "-", "worker": "-"}, rows


@pytest.mark.parametrize("closed", [">&-", ">&- 2>&-", "<&- >&- 2>&-"])
def test_commands_run_with_their_standard_streams_closed(cli: Cli, closed: str) -> None:
    """Started with stdout closed (``outlast worker >&-``, a daemonizer), Python's ``sys.stdout`` is None:
    every command died with an internal error (exit 70) before any work ran. The closed streams go to
    /dev/null now, so the next file opened (the store) cannot take their descriptor."""
    import subprocess

    script = f'exec "$0" -m engine.cli run demo -p items=3 -p seconds=0 {closed}'
    r = subprocess.run(["sh", "-c", script, sys.executable], env=cli.env, cwd=REPO, timeout=60, check=False)
    assert r.returncode == 0
    listed = json.loads(cli("--json", "ls").stdout)
    assert [(o["type"], o["status"]) for o in listed] == [("demo", "completed")]


def test_a_follower_of_an_operation_whose_runner_died_ends_with_it_interrupted(cli: Cli) -> None:
    """``outlast watch`` and ``outlast logs -f`` of an operation whose process was SIGKILLed went on
    showing it running, frozen, for ever (a Ctrl-C then said "it goes on running"): they looked for
    orphans once, when they started. Now they look every 2 s, as every engine does: both end with the
    operation interrupted (exit 6), and watch says why and how to resume it."""
    script = "for i in $(seq 1 4000); do echo line $i; sleep 0.02; done"
    r = cli("--json", "run", "command", "-p", f"command={json.dumps(script)}", "-p", "shell=true", "--detach")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    op_id, pid = out["id"], out["pid"]
    until(lambda: cli.op(op_id).status.value == "running", 30, what="the detached run running")
    watch, follow = cli.start("watch", op_id), cli.start("logs", "-f", op_id)
    watch.wait_line(lambda ln: " running " in ln)
    follow.wait_line(lambda ln: "line " in ln)  # both past their first look for orphans
    os.killpg(pid, signal.SIGKILL)  # the runner and its command
    assert watch.wait(30) == 6, (watch.out[-3:], watch.err)
    assert follow.wait(30) == 6, follow.err
    assert any(f"{op_id} interrupted at" in ln and "stopped" in ln for ln in watch.out), watch.out[-3:]
    assert watch.out[-1] == f"resume with: outlast resume {op_id}", watch.out[-3:]
    assert cli.op(op_id).status.value == "interrupted"


def test_a_resume_in_a_pipe_says_resumed_not_submitted(cli: Cli) -> None:
    """Each `outlast resume` began with "ID TYPE submitted: Ctrl-C pauses ...", as if a new run had been queued."""
    stopped = cli("submit", "demo", "-p", "items=3", "-p", "seconds=0").stdout.strip()
    assert cli("cancel", stopped).returncode == 0
    queued = cli("submit", "demo", "-p", "items=3", "-p", "seconds=0").stdout.strip()
    for op_id, how in ((stopped, "resumed"), (queued, "started")):
        r = cli("resume", op_id)
        assert r.returncode == 0, r.stderr
        first = r.stdout.splitlines()[0]
        assert f" {op_id} demo {how}: Ctrl-C pauses with a checkpoint" in first, first


def test_resume_of_a_queued_operation_nobody_runs_runs_it(cli: Cli) -> None:
    """`outlast resume ID` of a queued operation (submitted, or requeued after its runner died) refused,
    "is queued" (exit 7), and left it waiting for a worker nobody had started. It runs it here now, or in
    the background with --detach; --queue says it is queued already."""
    first = cli("submit", "demo", "-p", "items=7", "-p", "seconds=0").stdout.strip()
    r = cli("--json", "resume", first)
    assert r.returncode == 0, r.stderr
    op = json.loads(r.stdout)
    assert op["status"] == "completed" and op["attempt"] == 1 and op["result"]["sum"] == sum(range(7))

    second = cli("submit", "demo", "-p", "items=5", "-p", "seconds=0").stdout.strip()
    r = cli("resume", second, "--queue")
    assert r.returncode == 0 and "is already queued" in r.stdout, (r.stdout, r.stderr)
    assert cli.op(second).status.value == "queued"
    r = cli("resume", second, "--detach")
    # "running in the background (pid N)", or, done before the command looked, "completed in the background"
    assert r.returncode == 0 and "in the background (pid " in r.stderr, r.stderr
    until(lambda: cli.op(second).status.value == "completed", 30, what="the detached run completed")


def test_a_detached_run_does_not_copy_its_log_into_the_detached_file(cli: Cli) -> None:
    """The detached runner echoed every log line of its operation into ``detached/ID.log``: 62 MB for 30 MB
    of a command's output, while the operation's own log was capped at 2 MB (OUTLAST_LOG_LIMIT)."""
    r = cli("run", "command", "-p", "command=seq -f line-%g 1 300", "--detach")
    assert r.returncode == 0, r.stderr
    op_id = r.stdout.strip()
    until(lambda: cli.op(op_id).status.value == "completed", 30, what="the detached run completed")
    log = cli.state_dir / "detached" / f"{op_id}.log"
    until(lambda: "completed" in log.read_text(), 30, what="the detached log's final line")
    logged = cli("logs", op_id).stdout.splitlines()
    text = log.read_text()
    assert f"logs {op_id}" in text  # where the log lines are
    assert not [ln for ln in logged if ln and ln in text], "log lines copied into the detached file"


def test_ls_names_the_worker_running_an_operation(cli: Cli) -> None:
    """The README's `outlast ls` shows every worker's operations "with host:pid": the table had no column
    for it, so on a store shared by workers nobody could tell which one held a running operation. Both ways
    of reading the store (the default quick read, and through an engine, as a plugin makes it) show it."""
    proc = cli.start("run", "demo", "-p", "items=400", "-p", "seconds=0.05")
    try:
        line = proc.wait_line(lambda ln: " running " in ln)
        op_id = line.split()[1]
        worker = f"{cli.op(op_id).worker}"
        assert worker.endswith(f":{proc.popen.pid}"), worker
        for extra in ([], ["--plugin", "engine.operations.demo"]):
            r = cli(*extra, "ls")
            assert r.returncode == 0, r.stderr
            header, row = r.stdout.splitlines()[:2]
            assert "WORKER" in header.split(), r.stdout
            assert op_id in row and worker in row.split(), r.stdout
    finally:
        proc.signal(signal.SIGINT)
        proc.wait()
    r = cli("ls")
    assert "WORKER" not in r.stdout, r.stdout  # a column only while something runs
