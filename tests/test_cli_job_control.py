"""`outlast run` and `watch` under a shell's job control and a terminal that hangs up (a real tmux).

The live display turns the terminal's echo off while it runs; a change of the terminal's modes from a
background job stops the process (SIGTTOU). `outlast run ... &` sat stopped before its first item, and a
run sent to the background with Ctrl-Z and `bg` ended stopped, never exiting. A terminal closed under
`run` or `watch` (a dropped SSH session) left its modes unrestorable (EIO, a `termios.error`, which is no
OSError): both ended "internal error", exit 70, instead of 6 and 129.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures_cli import REPO, Cli, until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

OUTLAST = f"{shlex.quote(sys.executable)} -m engine.cli"

SESSION = """\
import os, signal, subprocess, sys
err = None if sys.argv[2] == "-" else open(sys.argv[2], "w")
child = subprocess.Popen(sys.argv[4:], stderr=err)
open(sys.argv[1] + ".pids", "w").write(f"{os.getpid()} {child.pid}")
if sys.argv[3] == "forward":  # as a login shell does at a hang-up: passed on to its jobs
    signal.signal(signal.SIGHUP, lambda *_: child.send_signal(signal.SIGHUP))
else:  # a session whose leader keeps it from its jobs (no signal: only the terminal is gone)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
rc = child.wait()
open(sys.argv[1] + ".new", "w").write(str(rc))
os.rename(sys.argv[1] + ".new", sys.argv[1])
"""
"""The program a closed window's session leader runs: ``outlast ARGS`` under it, its exit code and error
output (``-``: on the terminal) written to files (a shell would die with its terminal before it could say)."""


class Terminal:
    """One tmux server of its own, its panes running commands with the test's environment."""

    def __init__(self) -> None:
        self.tmux = ["tmux", "-L", f"outlast-jobs-{uuid.uuid4().hex[:10]}"]
        self.env = " ".join(
            f"{k}={shlex.quote(v)}" for k, v in os.environ.items() if k.startswith(("OUTLAST_", "XDG_")) or k == "PATH"
        )

    def open(self, name: str, command: str) -> None:
        """A window ``name`` running ``command`` (in the repository, with the test's environment)."""
        args = ["new-session", "-d", "-s", name, "-x", "120", "-y", "40", "-c", str(REPO)]
        subprocess.run([*self.tmux, *args, f"env {self.env} {command}"], check=True)

    def shell(self, name: str) -> None:
        """An interactive bash, with job control, in window ``name``."""
        self.open(name, "bash --norc --noprofile -i")

    def type(self, name: str, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", name, *keys], check=True)

    def screen(self, name: str) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout

    def close(self, name: str) -> None:
        """Close window ``name`` as a dropped SSH session does: its processes get SIGHUP, its terminal EIO."""
        subprocess.run([*self.tmux, "kill-session", "-t", name], check=True)

    def stop(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


@pytest.fixture
def term() -> Iterator[Terminal]:
    t = Terminal()
    yield t
    t.stop()


def exit_shown(term: Terminal, name: str) -> str | None:
    """The exit code the shell in window ``name`` echoed (a string: "0" is true for ``until``), or None."""
    m = re.search(r"^EXIT=(\d+)", term.screen(name), re.M)
    return m.group(1) if m else None


def test_run_started_in_the_background_runs_to_its_end(cli: Cli, term: Terminal) -> None:
    term.shell("bg")
    term.type("bg", f"{OUTLAST} run demo -p items=20 -p seconds=0.02 & wait $!; echo EXIT=$?", "Enter")
    code = until(lambda: exit_shown(term, "bg"), 60, what="the background run to end or stop")
    # Stopped by SIGTTOU, `wait` returned 150 (128 + 22) and the run sat there before its first item.
    assert code == "0", term.screen("bg")
    op_id = re.search(r"([0-9a-z]{13})\s+completed at 20/20", term.screen("bg"))
    assert op_id is not None, term.screen("bg")
    assert cli.op(op_id.group(1)).status.value == "completed"


def test_run_sent_to_the_background_exits(cli: Cli, term: Terminal) -> None:
    term.shell("fg")
    term.type("fg", f"{OUTLAST} run demo -p items=60 -p seconds=0.05", "Enter")
    until(lambda: re.search(r"items [1-9]\d*/60", term.screen("fg")), 60, what="the live panel")
    term.type("fg", "C-z")
    until(lambda: "Stopped" in term.screen("fg"), 30, what="Ctrl-Z to stop the run")
    term.type("fg", "bg; wait %1; echo EXIT=$?", "Enter")
    code = until(lambda: exit_shown(term, "fg"), 60, what="the run in the background to end or stop")
    # Its last act, giving the terminal's echo back from the background, stopped it (SIGTTOU): 150.
    assert code == "0", term.screen("fg")


@pytest.mark.parametrize(
    ("what", "hangup", "expected"),
    [
        ("run", "forward", 6),
        ("run", "none", 0),
        ("watch ID", "forward", 129),
        ("watch", "forward", 129),
        ("watch", "none", 141),
    ],
    ids=["run", "run-no-signal", "watch-id", "watch-all", "watch-all-no-signal"],
)
def test_terminal_closed_under_the_live_display(
    cli: Cli, term: Terminal, tmp_path: Path, what: str, hangup: str, expected: int
) -> None:
    session = tmp_path / "session.py"
    session.write_text(SESSION)
    rc_file, err_file = tmp_path / "rc", tmp_path / "err"
    demo = "run demo -p items=8 -p seconds=0.5"
    if what == "run":
        args = demo
    else:
        runner = cli.start(*demo.split())
        op_id = runner.wait_line(lambda ln: " submitted: " in ln, 60).split()[1]
        args = f"watch {op_id}" if what == "watch ID" else "watch"
    py = shlex.quote(sys.executable)
    term.open("t", f"{py} {session} {rc_file} {err_file} {hangup} {py} -m engine.cli {args}")
    until(lambda: re.search(r" [1-7]/8", term.screen("t")), 60, what="the live display")
    term.close("t")
    try:
        until(rc_file.exists, 60, what=f"{what} to exit")
    finally:  # the session's leader outlives its terminal when it ignores the hang-up: never left behind
        for pid in Path(f"{rc_file}.pids").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    err = err_file.read_text()
    # The terminal's modes could not be given back (termios.error): "internal error", 70; or, with no signal,
    # the output to the gone terminal taken for a file left incomplete: 74; or `watch`, of every active
    # operation, went on drawing on the gone terminal for ever.
    assert int(rc_file.read_text()) == expected, err
    assert "internal error" not in err and "Traceback" not in err, err
    if what == "run":
        listed = json.loads(cli("ls", "--json").stdout)
        status = "paused" if hangup == "forward" else "completed"
        assert [op["status"] for op in listed] == [status]


@pytest.mark.parametrize(("hangup", "expected"), [("forward", 129), ("none", 0)])
def test_dashboard_whose_terminal_closed_pauses_its_work(
    cli: Cli, term: Terminal, tmp_path: Path, hangup: str, expected: int
) -> None:
    """The dashboard draws on stderr: its error output stays the terminal. Closed with a SIGHUP passed on, it
    pauses its work and exits 129; closed without one (the leader ignores it), it runs on until stopped
    (SIGTERM), when its last line, saying what it paused, went to the gone terminal: "internal error", 70."""
    assert cli("-q", "submit", "demo", "-p", "items=400", "-p", "seconds=0.05").returncode == 0
    session = tmp_path / "session.py"
    session.write_text(SESSION)
    rc_file = tmp_path / "rc"
    py = shlex.quote(sys.executable)
    term.open("d", f"{py} {session} {rc_file} - {hangup} {py} -m engine.cli")
    until(lambda: re.search(r"\d+ of 400", term.screen("d")), 60, what="the dashboard running the work")
    term.close("d")
    pids = until(lambda: Path(f"{rc_file}.pids").read_text().split(), 10, what="the session's pids")
    try:
        if hangup == "none":
            os.kill(int(pids[1]), signal.SIGTERM)
        until(rc_file.exists, 60, what="the dashboard to exit")
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    assert int(rc_file.read_text()) == expected
    [op] = json.loads(cli("ls", "--json").stdout)
    assert op["status"] == "paused", op
