"""The dashboard in a real terminal (tmux): keys launch a demo, cancel it, resume it to completion.

The screen is read with ``capture-pane -p`` (polling with a deadline); the outcome is checked
in the store through ``outlast ls --json``: the operation completed on its second attempt with
the sum of every item exactly once (nothing redone, nothing lost across the cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests import zygote
from tests.fixtures_cli import REPO, Cli, until
from tests.test_fault_ctrl_z import process_state, queue_demos, write_lock_taken

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

ITEMS = 150
"""At 0.05 s an item (the demo's default) the work takes 7.5 s: time to cancel it on the way."""


class Terminal:
    """A private tmux server running one command in a 120x40 window."""

    def __init__(self, command: str, size: tuple[int, int] = (120, 40)) -> None:
        self.tmux = ["tmux", "-L", f"outlast-tui-{uuid.uuid4().hex[:10]}"]
        x, y = (str(n) for n in size)
        subprocess.run([*self.tmux, "new-session", "-d", "-x", x, "-y", y, "-c", str(REPO), command], check=True)

    def screen(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout

    def keys(self, *keys: str) -> None:
        """One key at a time, as a person types (a burst can split an escape sequence's timing)."""
        for key in keys:
            subprocess.run([*self.tmux, "send-keys", key], check=True)
            time.sleep(0.1)

    def burst(self, *keys: str) -> None:
        """Every key in one send-keys: they reach the dashboard together, as over a slow SSH link."""
        subprocess.run([*self.tmux, "send-keys", *keys], check=True)

    def wait(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first match of ``pattern`` on the screen, polling until ``timeout``."""
        try:
            return until(lambda: re.search(pattern, self.screen()), timeout, every=0.1, what=f"screen shows {pattern}")
        except AssertionError as e:
            raise AssertionError(f"{e}; the screen:\n{self.screen()}") from None

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


def dashboard(cli: Cli, size: tuple[int, int] = (120, 40), plugins: tuple[str, ...] = ()) -> Terminal:
    env = " ".join(
        f"{k}={shlex.quote(v)}" for k, v in os.environ.items() if k.startswith(("OUTLAST_", "XDG_")) or k == "PATH"
    )
    state = shlex.quote(str(cli.state_dir))
    more = " ".join(shlex.quote(a) for a in plugins)
    outlast = f"{shlex.quote(sys.executable)} -m engine.cli --state-dir {state} {more} tui"
    return Terminal(f"env {env} {outlast}; echo EXIT=$?; sleep 60", size)


def test_dashboard_launches_cancels_and_resumes_a_demo_to_completion(cli: Cli) -> None:
    term = dashboard(cli)
    try:
        term.wait("press n to launch")
        term.keys("n")
        term.wait("Launch an operation")
        term.keys("Enter")  # open the type list, find demo by typing, pick it
        term.wait(r"codebase_indexing")  # the list is open (the closed form shows only the first type)
        term.keys("d", "e", "Enter")
        term.wait(r"type\s+demo")
        term.keys("Tab", "End", "BSpace", "BSpace", "BSpace", *str(ITEMS))
        term.wait(rf"items\s+{ITEMS}\s")
        term.keys("Enter")  # enter in a field launches

        row = rf"([0-9a-z]{{13}}) demo\s+running .*?(\d+)/{ITEMS}"
        op_id = term.wait(row).group(1)
        until(lambda: (m := re.search(row, term.screen())) and int(m.group(2)) >= 3, 30, what="progress shown")
        term.keys("c")
        term.wait(rf"Cancel demo \({op_id}\)\?")
        term.keys("y")
        term.wait(rf"{op_id} demo\s+cancelled")
        cancelled = cli.op(op_id)
        assert cancelled.status.value == "cancelled" and 0 < cancelled.progress.done < ITEMS

        term.keys("r")
        term.wait(rf"{op_id} demo\s+running", 20)
        term.wait(rf"{op_id} demo\s+completed .*{ITEMS}/{ITEMS}", 40)
        assert "Traceback" not in term.screen()

        listed = cli("ls", "--json")
        assert listed.returncode == 0, listed.stderr
        ops = json.loads(listed.stdout)
        (op,) = [o for o in ops if o["id"] == op_id]
        assert op["status"] == "completed" and op["attempt"] == 2
        assert op["result"] == {"sum": sum(range(ITEMS)), "items": ITEMS, "failures": 0}

        term.keys("q")  # nothing runs any more: quits without asking
        term.wait(r"EXIT=0", 20)
    finally:
        term.close()


def test_launch_form_typed_in_one_burst_at_80x24_stores_what_was_typed(cli: Cli) -> None:
    """The form submitted the value validated before the last keys when the submit key came in the
    same burst (root=/ launched instead of the typed path). Typed here in one send-keys, submit included."""
    term = dashboard(cli, (80, 24))
    try:
        term.wait("press n to launch")
        term.keys("n")
        term.wait("Launch an operation")
        term.keys("Enter")
        term.wait(r"codebase_indexing")
        term.keys("d", "e", "Enter")
        term.wait(r"type\s+demo")
        term.keys("Tab")  # the first param (items) has the focus
        term.burst("End", *["BSpace"] * 6, *"4217", "Tab", "End", *["BSpace"] * 6, *"0.001", "C-s")

        def stored() -> dict | None:
            ops = json.loads(cli("ls", "--json").stdout or "[]")
            return ops[0] if ops else None

        op = until(stored, 20, what="an operation stored")
        assert op["type"] == "demo"
        assert op["params"]["items"] == 4217 and op["params"]["seconds"] == 0.001, op["params"]
        term.wait(r"demo\s+(running|completed)", 20)
        assert "Traceback" not in term.screen()
    finally:
        term.close()


def test_what_quitting_paused_is_said_with_a_resume_that_pastes_as_printed(cli: Cli, tmp_path: Path) -> None:
    """Quit with p, the dashboard said "go on with `outlast resume ID`": pasted after `outlast --state-dir DIR`
    (the id put in), it looked in the default store, "no operation matches", exit 3. The line now names the
    operation and carries the global options the dashboard was started with, as every hint of the command
    line does; pasted in another directory, with OUTLAST_STATE_DIR naming another store, it resumes it."""
    other = tmp_path / "other state"
    sub = cli("--state-dir", str(other), "submit", "demo", "-p", "items=600", "-p", "seconds=0.05")
    assert sub.returncode == 0, sub.stderr
    op_id = sub.stdout.strip()
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in cli.env.items() if k.startswith(("OUTLAST_", "XDG_")))
    outlast = f"{shlex.quote(sys.executable)} -m engine.cli --state-dir {shlex.quote(str(other))} tui"
    term = Terminal(f"env {env} PATH={shlex.quote(os.environ['PATH'])} {outlast}; echo EXIT=$?; sleep 60")
    try:
        term.wait(rf"{op_id} demo\s+running")
        term.keys("q")
        term.wait(r"Pause \(p\)")
        term.keys("p")
        term.wait(r"EXIT=0", 30)
        # -J: the line as printed, its parts the terminal wrapped joined again
        said = subprocess.run([*term.tmux, "capture-pane", "-p", "-J"], capture_output=True, text=True).stdout
    finally:
        term.close()
    hint = re.search(r"go on with `([^`]*)`", said)
    assert hint and op_id in hint.group(1), said
    argv = shlex.split(hint.group(1))
    assert argv[0] == "outlast", argv
    pasted = zygote.run([*argv[1:], "--detach"], env=cli.env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert pasted.returncode == 0, (hint.group(1), pasted.stderr)
    assert cli("--state-dir", str(other), "cancel", op_id).returncode == 0


def _dashboard_pid(cli: Cli) -> int:
    """The pid of the dashboard running on ``cli``'s state dir (found by its command line)."""

    def find() -> int | None:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = (proc / "cmdline").read_bytes().split(b"\0")
                    if str(cli.state_dir).encode() in argv and b"tui" in argv:
                        return int(proc.name)
        return None

    return until(find, 10, what="the dashboard's process")


def test_ctrl_z_suspends_the_dashboard_between_store_writes_and_fg_brings_it_back(cli: Cli) -> None:
    """Ctrl-Z did nothing in the dashboard (its terminal is raw: a key, no SIGTSTP), and Textual's own
    suspend stops the process wherever it is: inside a write of the store too, where every other
    process on the state dir waits on the database's lock. Here the dashboard runs a queue of trivial
    operations (a write every few milliseconds); each Ctrl-Z must stop it with the terminal given
    back and the write lock free, and SIGCONT (what fg sends) must bring the screen back."""
    asyncio.run(queue_demos(cli.state_dir, 3000))
    term = dashboard(cli)
    try:
        term.wait(r"demo\s+completed")
        pid = _dashboard_pid(cli)
        held = []
        for i in range(8):
            term.keys("C-z")
            until(lambda: process_state(pid) == "T", 10, every=0.01, what=f"Ctrl-Z {i + 1} stopped the dashboard")
            assert "Outlast" not in term.screen(), "the terminal was not given back before the stop"
            if (why := write_lock_taken(cli.state_dir)) is not None:
                held.append(f"Ctrl-Z {i + 1}: {why}")
            os.kill(pid, signal.SIGCONT)
            term.wait(r"Outlast .*operations", 10)
        assert not held, f"stopped holding the write lock {len(held)} times in 8: {held[:3]}"
        term.keys("?")
        term.wait(r"s\s+Cycle the sort")  # the help: keys still reach it after the last fg
        assert "Traceback" not in term.screen()
    finally:
        term.close()


@pytest.mark.parametrize("how", ["the terminal closed", "SIGKILL"])
def test_work_the_dashboard_runs_survives_a_dropped_session_and_a_kill(cli: Cli, tmp_path: Path, how: str) -> None:
    """The dashboard runs queued work in its own engine. A dropped SSH session (tmux gone: SIGHUP) pauses it
    with a checkpoint, so its resume runs no item twice; a SIGKILL leaves it to the next process, which
    resumes from the newest checkpoint, running again only the items done after it. Either way every item
    runs, and the result is the uninterrupted one."""
    items, log = 200, tmp_path / "items.log"
    plugin = ("--plugin", "tests.ops_for_tests")
    params = ("-p", f"items={items}", "-p", "seconds=0.03", "-p", "slow_attempts=1", "-p", f"log_file={log}")
    sub = cli(*plugin, "submit", "ledger", *params, "--profile", "checkpoint_interval=0.5")
    assert sub.returncode == 0, sub.stderr
    op_id = sub.stdout.strip()
    term = dashboard(cli, plugins=plugin)
    try:
        term.wait(rf"{op_id} ledger\s+running")
        until(lambda: log.exists() and len(log.read_text().split()) >= 40, 30, what="40 items run")
        until(lambda: cli.op(op_id).checkpoint_seq, 30, what="a checkpoint")
        if how == "SIGKILL":
            pane = subprocess.run([*term.tmux, "display", "-p", "#{pane_pid}"], capture_output=True, text=True).stdout
            engine = subprocess.run(["pgrep", "-P", pane.strip()], capture_output=True, text=True).stdout.split()
            assert len(engine) == 1, engine
            os.kill(int(engine[0]), signal.SIGKILL)
        term.close()
        cli.wait_status(op_id, {"paused"} if how != "SIGKILL" else {"running"}, 30)
        listed = cli("--json", "checkpoints", op_id)
        assert listed.returncode == 0, listed.stderr
        newest = max(json.loads(listed.stdout), key=lambda cp: cp["seq"])
        before = [int(x) for x in log.read_text().split()]
        assert sorted(before) == list(range(len(before))), "items ran out of order or twice before the stop"
    finally:
        term.close()
    resumed = cli(*plugin, "--json", "resume", op_id, timeout=90)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = cli.op(op_id)
    assert final.status.value == "completed" and final.result == {"sum": sum(range(items))}, final
    ran = [int(x) for x in log.read_text().split()]
    assert sorted(set(ran)) == list(range(items)), "an item never ran"
    again = len(ran) - items
    if how == "SIGKILL":  # only the items done after the newest checkpoint the kill left
        assert again == len(before) - newest["processed_items"], (again, len(before), newest)
    else:
        assert again == 0, f"{again} items ran twice after a pause"
