"""Fault suite: Ctrl-Z (SIGTSTP) of a process writing the local store, with other processes on it.

Stopped by the terminal's default action, a busy worker was inside a write transaction 42 times in 60,
holding the database's write lock for as long as it stayed stopped: every other process on the state
dir waited on it (30 s), then failed its writes as a store outage, which stops running work. A real
worker, real signals, and a second connection that must get the write lock at once each time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import psutil

from engine import Engine, OperationSpec, load_settings, open_store
from tests.fixtures_cli import Cli, until
from tests.test_retry_clock import FAKETIME

STOPS = 30


def process_state(pid: int) -> str:
    """The one-letter state of process ``pid`` (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def queue_demos(state: Path, n: int) -> None:
    """``n`` trivial demo operations queued in ``state``."""
    settings = load_settings(state_dir=state)
    async with Engine(store=open_store(state), settings=settings, run_queue=False) as engine:
        spec = OperationSpec(type="demo", params={"items": 1, "seconds": 0})
        for start in range(0, n, 500):
            await asyncio.gather(*(engine.submit(spec) for _ in range(min(500, n - start))))


def write_lock_taken(state: Path) -> str | None:
    """Why another connection cannot take the state dir's write lock at once (None: it can)."""
    conn = sqlite3.connect(state / "outlast.db", timeout=0.5, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        return str(e)
    finally:
        conn.close()
    return None


def test_ctrl_z_never_stops_a_busy_worker_inside_a_store_write(cli: Cli) -> None:
    state = cli.state_dir
    asyncio.run(queue_demos(state, 8000))
    worker = cli.start("worker", "-c", "50")
    worker.wait_line(lambda ln: "completed" in ln)
    pid = worker.popen.pid
    held = []
    for i in range(STOPS):
        worker.signal(signal.SIGTSTP)
        deadline = time.monotonic() + 5
        while process_state(pid) != "T":
            assert time.monotonic() < deadline, f"Ctrl-Z {i + 1} did not stop the worker"
            time.sleep(0.005)
        if (why := write_lock_taken(state)) is not None:
            held.append(f"Ctrl-Z {i + 1}: {why}")
        worker.signal(signal.SIGCONT)
        time.sleep(0.03)
    assert not held, f"stopped holding the write lock {len(held)} times in {STOPS}: {held[:3]}"
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0, worker.err[-3:]
    assert not any("cannot be written" in ln for ln in worker.err), worker.err[-3:]


def test_work_whose_process_is_stopped_is_said_so_by_ls_show_and_watch(cli: Cli) -> None:
    """A worker stopped (SIGSTOP, Ctrl-Z) holds its work: listed running, with the rate and ETA it last
    stored ("eta 19s" for minutes), and a watch went silent. ``ls``, ``show`` and ``watch`` now say the
    process is stopped and how to go on; ``show`` says how old its rate and ETA are."""
    sub = cli("submit", "demo", "-p", "items=80", "-p", "seconds=0.03")
    assert sub.returncode == 0, sub.stderr
    op_id = sub.stdout.strip()
    worker = cli.start("worker", "--exit-when-idle")
    until(lambda: (op := cli.op(op_id)).status.value == "running" and op.progress.done >= 5, 30, what="progress")
    pid = worker.popen.pid
    said = f"stopped (Ctrl-Z or SIGSTOP): kill -CONT {pid} to go on"
    os.kill(pid, signal.SIGSTOP)
    try:
        until(lambda: process_state(pid) == "T", 10, what="the worker stopped")
        listed = cli("ls")
        assert listed.returncode == 0 and said in listed.stdout, listed.stdout
        shown = cli("show", op_id)
        assert shown.returncode == 0, shown.stderr
        assert re.search(rf"^worker\s+\S+:{pid}: {re.escape(said)}$", shown.stdout, re.M), shown.stdout
        if FAKETIME is not None:  # 30 s later by the wall clock, as a person reading it then
            env = {**cli.env, "LD_PRELOAD": FAKETIME, "FAKETIME": "+30s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
            later = cli("show", op_id, env=env)
            assert re.search(r"^eta\s+\S+\s+\(as of 3\d?s ago\)$", later.stdout, re.M), later.stdout
        watch = cli.start("watch", op_id)
        until(lambda: any(said in ln for ln in watch.err), 15, what="watch says the worker is stopped")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert watch.wait(60) == 0, watch.err[-5:]
    assert worker.wait(60) == 0
    assert cli.op(op_id).status.value == "completed"
    assert sum(said in ln for ln in watch.err) == 1, watch.err


ITEMS_SH = """#!/bin/sh
i=$(printf '%s' "${OUTLAST_CHECKPOINT:-}" | sed -n 's/.*"next": *\\([0-9]*\\).*/\\1/p')
i=${i:-0}
while [ "$i" -lt "$2" ]; do
  echo "$i" >> "$1"
  i=$((i + 1))
  echo "::outlast checkpoint {\\"next\\": $i}"
  sleep 0.02
done
"""


def test_ctrl_z_stops_the_command_with_outlast_and_fg_continues_it(cli: Cli, tmp_path: Path) -> None:
    """A command runs in a session of its own, which the terminal's SIGTSTP does not reach: after a Ctrl-Z
    of ``outlast run`` it went on doing items nobody checkpointed (129 -> 287 in 5 s), and a SIGKILL of the
    stopped run then cost all of them, done again by the resume. The command stops with it, goes on after
    ``fg``, and a kill while stopped costs at most the item in flight."""
    script, out = tmp_path / "items.sh", tmp_path / "done.txt"
    script.write_text(ITEMS_SH)
    script.chmod(0o755)
    n = 150
    argv = json.dumps({"argv": [str(script), str(out), str(n)]})
    runner = cli.start("run", "command", "--params-json", argv)
    op_id = runner.wait_line(lambda ln: " running " in ln).split()[1]
    pid = runner.popen.pid

    def lines() -> int:
        return len(out.read_text().splitlines()) if out.exists() else 0

    def command_pids() -> list[int]:
        """The command's process (not its watcher, ``outlast-watch``, which a Ctrl-Z leaves running)."""
        return [c.pid for c in psutil.Process(pid).children() if "outlast-watch" not in c.cmdline()]

    watchers = [c for c in psutil.Process(pid).children() if "outlast-watch" in c.cmdline()]
    assert len(watchers) == 1, watchers

    until(lambda: lines() >= 20, 30, what="items done")
    for round_ in range(2):  # Ctrl-Z, then fg; then Ctrl-Z again and a SIGKILL of the stopped run
        os.kill(pid, signal.SIGTSTP)
        until(lambda: process_state(pid) == "T", 10, what="outlast stopped")
        stopped = command_pids()
        # A process in a disk write (state D, a loaded machine) takes the stop as the write ends: waited for.
        until(lambda s=stopped: all(process_state(c) == "T" for c in s), 10, what="the command stopped")
        assert stopped
        at = lines()
        time.sleep(0.5)  # items are 0.02 s apart: a command not stopped adds about 25
        assert lines() == at, (at, lines())
        if round_ == 0:
            os.kill(pid, signal.SIGCONT)  # fg
            until(lambda at=at: lines() >= at + 20, 30, what="items done after fg")
    assert process_state(watchers[0].pid) != "T"  # left running: it must see the engine die
    stored = asyncio.run(stored_state(cli.state_dir, op_id))["checkpoint"]["next"]  # read while it is stopped
    os.kill(pid, signal.SIGKILL)
    runner.wait()
    # The engine's death ends the watcher's input: it kills the command, stopped as it is, and exits. Stopped
    # with the engine, it stayed stopped for ever (parent 1, a session of its own: no SIGCONT reaches it), and
    # the command's processes stayed stopped until the next outlast process opened the store.
    until(lambda: not any(psutil.pid_exists(p) for p in [*stopped, watchers[0].pid]), 10, what="command killed")
    resumed = cli("resume", op_id)
    assert resumed.returncode == 0, resumed.stderr
    done = out.read_text().splitlines()
    assert sorted(set(done), key=int) == [str(i) for i in range(n)]
    # Done again: what came after the newest checkpoint stored before the kill (the checkpoint lines the engine
    # had not read yet when it stopped), nothing done while it was stopped.
    assert len(done) - n == at - stored, (len(done) - n, at, stored)


async def stored_state(state: Path, op_id: str) -> dict[str, Any]:
    """The state of ``op_id``'s newest checkpoint in the store."""
    store = open_store(state)
    await store.open()
    try:
        found = await store.load_checkpoint(op_id)
        assert found is not None
        return found[0].state
    finally:
        await store.close()
