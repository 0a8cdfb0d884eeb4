"""Handlers that will not stop, and threads they leave behind, never keep a process from ending.

Real ``outlast`` processes run the handlers of ``tests/ops_misbehaving.py``; each item body writes its
index to a ledger file, so the tests see whether a body ran after a stop, and (after a resume) that each
item ran exactly once, as in an uninterrupted run.

- A handler that catches the stop and goes on (``except BaseException: continue`` around its loop) kept
  running items after ``outlast pause`` and four signals, and ended completed three minutes later.
- A handler that also catches the forced cancel and waits for ever kept its operation ``running`` and its
  process alive for good.
- A non-daemon thread a handler started kept ``outlast run`` and ``outlast worker`` from exiting after
  they said they were done.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .fixtures_cli import Cli, Proc, until

PLUGIN = ("--plugin", "tests.ops_misbehaving")


def ledger(path: Path) -> list[int]:
    """The item indexes the bodies wrote, in order (an item run twice is there twice)."""
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


def stopped_at(path: Path) -> int:
    """The items run so far, once the ledger has stayed the same for half a second (no body runs any more:
    one that did would have written about five items, at 0.1 s an item)."""
    before = len(ledger(path))
    time.sleep(0.5)
    after = len(ledger(path))
    assert after == before, f"item bodies still run after the stop: {before} then {after}"
    return after


def resume_to_the_end(cli: Cli, op_id: str, path: Path, n: int) -> None:
    """Resume in the foreground: completed, and each item ran exactly once over both attempts."""
    done = cli(*PLUGIN, "resume", op_id, timeout=60)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert sorted(ledger(path)) == list(range(n)), ledger(path)  # an uninterrupted run's ledger


def start_run(cli: Cli, handler: str, log: Path, n: int) -> tuple[Proc, str]:
    """``outlast run HANDLER`` of ``n`` items of 0.1 s writing ``log``: the process and its operation's id,
    once five items have run."""
    proc = cli.start(*PLUGIN, "run", handler, "-p", f"log={log}", "-p", f"n={n}", "-p", "d=0.1")
    op_id = proc.wait_line(lambda ln: "submitted" in ln).split()[1]
    until(lambda: len(ledger(log)) >= 5, 30, what="five items")
    return proc, op_id


def ends_within(proc: Proc, seconds: float, what: Callable[[], str]) -> int:
    """``proc``'s exit code, once it has exited within ``seconds``; else AssertionError saying ``what()``."""
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(what()) from None


@pytest.fixture
def short_grace(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grace period of 1 s, and 1 s before a handler that ignores its forced cancel is abandoned. After
    ``state_dir``, which clears every ``OUTLAST_`` variable: before it, this was cleared too, and each test
    waited out the default 10 s."""
    monkeypatch.setenv("OUTLAST_GRACE_PERIOD", "1")
    monkeypatch.setenv("OUTLAST_ABANDON_AFTER", "1")


@pytest.mark.usefixtures("short_grace")
def test_a_handler_that_swallows_a_pause_runs_no_item_after_it(cli: Cli, tmp_path: Path) -> None:
    log, n = tmp_path / "ledger", 60
    proc, op_id = start_run(cli, "mb_swallow", log, n)
    t0 = time.monotonic()
    asked = cli("pause", op_id, "--no-wait")
    assert asked.returncode == 0, asked.stderr
    rc = proc.wait(40)
    took = time.monotonic() - t0
    op = cli.op(op_id)
    assert op.status.value == "paused", (op.status.value, op.status_message)
    assert rc == 6, (rc, proc.err)
    assert "ignored the stop" in (op.status_message or ""), op.status_message
    assert took < 25, took  # the grace period and abandon_after (1 s each), on a loaded machine
    ran = stopped_at(log)
    assert ran < n, ran
    resume_to_the_end(cli, op_id, log, n)


@pytest.mark.usefixtures("short_grace")
def test_a_handler_that_ignores_the_forced_cancel_is_abandoned_and_run_exits(cli: Cli, tmp_path: Path) -> None:
    log, n = tmp_path / "ledger", 60
    proc, op_id = start_run(cli, "mb_forever", log, n)
    t0 = time.monotonic()
    assert cli("pause", op_id, "--no-wait").returncode == 0
    rc = ends_within(proc, 30, lambda: f"outlast run still running 30s after the pause: {cli.op(op_id).status.value}")
    took = time.monotonic() - t0
    op = cli.op(op_id)
    assert (op.status.value, rc) == ("paused", 6), (op.status_message, proc.err)
    assert "ignored the stop" in (op.status_message or ""), op.status_message
    assert took < 25, took  # the grace period and abandon_after (1 s each), on a loaded machine
    assert "for 1s, the cancel that forced it: abandoned" in cli("logs", op_id).stdout  # OUTLAST_ABANDON_AFTER
    stopped_at(log)
    resume_to_the_end(cli, op_id, log, n)


@pytest.mark.usefixtures("short_grace")
@pytest.mark.parametrize("handler", ["mb_swallow", "mb_forever"])
def test_sigterm_ends_a_run_whose_handler_ignores_the_stop(cli: Cli, tmp_path: Path, handler: str) -> None:
    """A handler that swallows the stop and goes on, or also ignores the forced cancel: paused, no item after."""
    log, n = tmp_path / "ledger", 60
    proc, op_id = start_run(cli, handler, log, n)
    proc.signal(signal.SIGTERM)
    rc = ends_within(proc, 30, lambda: f"outlast run still running 30s after SIGTERM: {cli.op(op_id).status.value}")
    op = cli.op(op_id)
    assert (op.status.value, rc) == ("paused", 6), (op.status_message, proc.err)
    stopped_at(log)
    resume_to_the_end(cli, op_id, log, n)


@pytest.mark.usefixtures("short_grace")
def test_a_worker_abandons_a_handler_that_ignores_a_pause_and_exits_when_idle(cli: Cli, tmp_path: Path) -> None:
    log, n = tmp_path / "ledger", 60
    sub = cli(*PLUGIN, "-q", "submit", "mb_forever", "-p", f"log={log}", "-p", f"n={n}", "-p", "d=0.1")
    assert sub.returncode == 0, sub.stderr
    op_id = sub.stdout.strip()
    proc = cli.start(*PLUGIN, "worker", "--exit-when-idle")
    until(lambda: len(ledger(log)) >= 5, 30, what="five items")
    assert cli("pause", op_id, "--no-wait").returncode == 0
    rc = ends_within(proc, 30, lambda: f"the worker still running 30s after the pause: {cli.op(op_id).status.value}")
    assert rc == 0, proc.err
    assert any("worker stopped" in ln for ln in proc.out), proc.out
    op = cli.op(op_id)
    assert op.status.value == "paused", op.status_message
    stopped_at(log)
    resume_to_the_end(cli, op_id, log, n)


def test_run_exits_with_its_code_past_a_thread_the_handler_left(cli: Cli, tmp_path: Path) -> None:
    log = tmp_path / "ledger"
    proc = cli.start(*PLUGIN, "run", "mb_thread", "-p", f"log={log}")
    rc = ends_within(proc, 30, lambda: f"outlast run still running 30s in: {proc.out[-2:]}")
    assert rc == 0, proc.err
    assert any("completed" in ln for ln in proc.out), proc.out
    said = [ln for ln in proc.err if "a thread the handler started is still running: exiting without it" in ln]
    assert len(said) == 1, proc.err


def test_worker_exits_when_idle_past_a_thread_the_handler_left(cli: Cli, tmp_path: Path) -> None:
    log = tmp_path / "ledger"
    assert cli(*PLUGIN, "-q", "submit", "mb_thread", "-p", f"log={log}").returncode == 0
    proc = cli.start(*PLUGIN, "worker", "--exit-when-idle")
    rc = ends_within(proc, 30, lambda: f"the worker still running 30s in: {proc.out[-2:]}")
    assert rc == 0, proc.err
    assert any("worker stopped" in ln for ln in proc.out), proc.out
    assert any("a thread the handler started is still running: exiting without it" in ln for ln in proc.err), proc.err


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.usefixtures("short_grace")
def test_the_dashboard_quits_past_a_handler_that_ignores_the_forced_cancel(cli: Cli, tmp_path: Path) -> None:
    """q, then p (pause and quit): the screen went blank, the handler ran on, and the process never ended."""
    from tests.test_tui_tmux import Terminal

    log, n = tmp_path / "ledger", 100
    sub = cli(*PLUGIN, "-q", "submit", "mb_forever", "-p", f"log={log}", "-p", f"n={n}", "-p", "d=0.1")
    assert sub.returncode == 0, sub.stderr
    op_id = sub.stdout.strip()
    env = " ".join(
        f"{k}={shlex.quote(v)}" for k, v in os.environ.items() if k.startswith(("OUTLAST_", "XDG_")) or k == "PATH"
    )
    outlast = f"{shlex.quote(sys.executable)} -m engine.cli {' '.join(PLUGIN)} tui"
    term = Terminal(f"env {env} {outlast}; echo EXIT=$?; sleep 60")
    try:
        until(lambda: len(ledger(log)) >= 5, 30, what="five items")
        term.keys("q")
        term.wait(r"Pause \(p\)")
        term.keys("p")
        t0 = time.monotonic()
        try:
            term.wait("EXIT=", 30)
        except AssertionError:
            status = cli.op(op_id).status.value
            raise AssertionError(f"the dashboard still running 30s after pause and quit: {status}") from None
        took = time.monotonic() - t0
        assert "EXIT=0" in term.screen(), term.screen()
        assert took < 25, took
    finally:
        term.close()
    op = cli.op(op_id)
    assert op.status.value == "paused", op.status_message
    assert "ignored the stop" in (op.status_message or ""), op.status_message
    stopped_at(log)
    resume_to_the_end(cli, op_id, log, n)


@pytest.mark.usefixtures("short_grace")
@pytest.mark.parametrize("command", ["run", "worker"])
def test_a_handler_holding_the_event_loop_is_stopped_as_stalled_where_it_stands(cli: Cli, command: str) -> None:
    """``time.sleep(20)`` on the event loop with a stall_timeout of 1 s: no tick of the clock could stop it, and
    it was timed out as stalled only once the sleep returned, with an item done after it (one that never
    returns, never). Past its stall timeout and grace period it is stopped where it stands, as a second signal
    stops it: timed out as stalled, before its first item."""
    clock = ("--plugin", "tests.ops_clock")
    args = ("sleeper", "-p", "hold=20", "-p", "items=3", "--profile", "stall_timeout=1")
    if command == "run":
        r = cli(*clock, "-q", "run", *args, timeout=60)
        op_id = r.stdout.strip().splitlines()[0]
    else:
        op_id = cli(*clock, "-q", "submit", *args).stdout.strip()
        r = cli(*clock, "worker", "--exit-when-idle", timeout=60)
    op = cli.op(op_id)
    assert op.status.value == "timed_out" and op.progress.done == 0, (op.status_message, r.stdout, r.stderr)
    assert "stalled" in op.status_message and "held the event loop" in op.status_message, op.status_message


@pytest.mark.parametrize("then", ["return", "raise"])
def test_a_handler_that_catches_a_second_ctrl_c_where_it_holds_the_loop_is_stopped_not_completed(
    cli: Cli, tmp_path: Path, then: str
) -> None:
    """Blocking work on the loop (``time.sleep``) in ``try: ... except BaseException: return partial``: the second
    Ctrl-C breaks into it where it stands, and it returned: "completed at 0/5 items", exit 0, its items never
    run and the operation not resumable (or, raising an error of its own, failed, exit 1). It is paused by
    force, and a resume runs every item."""
    log = tmp_path / "ledger"
    held = tmp_path / "held"
    args = ("-p", f"log={log}", "-p", "n=5", "-p", f"then={then}", "-p", f"held={held}")
    proc = cli.start(*PLUGIN, "run", "mb_blocks_and_returns", *args)
    op_id = proc.wait_line(lambda ln: "submitted" in ln).split()[1]
    until(held.exists, 30, what="the handler holding the loop")
    time.sleep(0.7)  # the loop held past half a second: what a second signal breaks into
    proc.signal(signal.SIGINT)
    time.sleep(0.2)  # within a tenth of a second it is the same signal again
    proc.signal(signal.SIGINT)
    code = ends_within(proc, 30, lambda: f"still running: {proc.out[-3:]} {proc.err}")
    op = cli.op(op_id)
    assert (code, op.status.value) == (6, "paused"), (code, op.status_message, proc.err)
    assert op.result is None and "forced: the handler held the event loop" in (op.status_message or "")
    assert ledger(log) == []
    done = cli(*PLUGIN, "resume", op_id, timeout=60)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert sorted(ledger(log)) == list(range(5))
