"""``outlast`` as PID 1 of a PID namespace (a container started without an init): the init of the namespace,
to which every process a command leaves behind is handed. It never reaped them: a worker that ran five
commands, each leaving a process in the background, held ten zombies for as long as it ran, each a slot of
the container's pids limit. The first process now stays the init (reaping, passing signals on) and a child of
it runs the command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_cli import REPO, Cli, until


def _unshare() -> list[str] | None:
    """How to start a command as PID 1 of a new PID namespace here (as root, or in a user namespace), or None."""
    if shutil.which("unshare") is None:
        return None
    for how in (["unshare", "--pid", "--fork", "--mount-proc"], ["unshare", "-r", "--pid", "--fork", "--mount-proc"]):
        if subprocess.run([*how, "true"], capture_output=True, timeout=30).returncode == 0:
            return how
    return None


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of each child of ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append((int(stat.parent.name), fields[0]))
    return out


def test_as_pid_1_what_commands_leave_behind_is_reaped(cli: Cli, state_dir: Path) -> None:
    how = _unshare()
    if how is None:
        pytest.skip("no PID namespace can be made here (unshare)")
    background = "(sleep 0.1; exit 0) >/dev/null 2>&1 & echo started"
    ids = [
        cli("-q", "submit", "command", "-p", f"command={background}", "-p", "shell=true").stdout.strip()
        for _ in range(3)
    ]
    worker = subprocess.Popen(
        [*how, sys.executable, "-m", "engine.cli", "worker"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli.env,
        cwd=REPO,
        text=True,
    )
    try:
        init = until(lambda: [p for p, _s in _children(worker.pid)])[0]  # the namespace's PID 1

        def all_done() -> bool:
            listed = json.loads(cli("ls", "--json").stdout)
            return all(o["status"] == "completed" for o in listed if o["id"] in ids) and len(listed) == 3

        until(all_done)
        # What each command left in the background ended by now, handed to the namespace's init: reaped.
        until(lambda: not [p for p, s in _children(init) if s == "Z"], timeout=10.0)
        os.kill(init, signal.SIGTERM)  # as `docker stop` does: passed on to the worker, which stops
        _, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, err
