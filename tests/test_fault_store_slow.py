"""A slow store: a disk whose fsync stalls for seconds under the local store (a loaded NFS, a failing disk, a VM's
host flushing). The tests.store_slow plugin holds a chosen statement inside its write transaction, as such a
commit holds it; strace's ``inject=fdatasync:delay_enter=`` showed the same by hand (the figures in the commits)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import signal
import sqlite3
import subprocess
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine import open_store
from engine.models import StoreError
from engine.store.sqlite import core as sqlite_core
from tests.conftest import REPO
from tests.fixtures_api import free_port
from tests.fixtures_cli import CLI, Cli, Proc, until
from tests.fixtures_engine import queued_record
from tests.fixtures_tui import OnAPty

PLUGIN = ["--plugin", "tests.store_slow"]


def _slow(cli: Cli, tmp_path: Path, seconds: float, times: int = 1) -> dict[str, str]:
    """The environment of a process whose next ``times`` checkpoint writes wait ``seconds`` inside their
    transaction; the flag file names it as each wait begins."""
    return {
        **cli.env,
        "OUTLAST_TEST_SLOW_MATCH": "INTO checkpoints",
        "OUTLAST_TEST_SLOW_SECONDS": str(seconds),
        "OUTLAST_TEST_SLOW_TIMES": str(times),
        "OUTLAST_TEST_SLOW_FLAG": str(tmp_path / "slow.flag"),
    }


def _held_run(
    cli: Cli,
    tmp_path: Path,
    config: str,
    slow: float,
    times: int = 1,
    items: int = 100,
    seconds: float = 0.02,
    real: bool = False,
) -> Proc:
    """``outlast run demo`` with ``config`` (an outlast.toml's text) whose checkpoint writes are held up (``_slow``),
    once the first of them is: killed at the end if the test fails before it ends. ``real``: the console script
    (its command line is read), not a fork of the tests' zygote."""
    path = tmp_path / "outlast.toml"
    path.write_text(config)
    args = ["--config", str(path), *PLUGIN, "run", "demo", "-p", f"items={items}", "-p", f"seconds={seconds}"]
    run = Proc(args, _slow(cli, tmp_path, slow, times), real=real)
    cli.procs.append(run)
    until(lambda: (tmp_path / "slow.flag").exists(), 30, every=0.02, what="a checkpoint held up")
    return run


def _resumes_to_the_right_sum(cli: Cli) -> None:
    """Operation 1 (demo, 100 items), left running by a process that exited on a hung store: found interrupted,
    resumed from its newest checkpoint, to the sum of an uninterrupted run."""
    r = cli("resume", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"sum": 4950' in r.stdout, r.stdout


def test_a_checkpoint_the_disk_holds_up_is_no_stall_of_the_handler(cli: Cli, tmp_path: Path) -> None:
    """The handler waits at its safe point while its checkpoint is written: that wait is the store's. Before, a
    demo making 50 items/s, its stall_timeout 1.5s, was stopped as stalled by a 3.5s commit (timed_out, exit 5)."""
    config = tmp_path / "outlast.toml"
    config.write_text("[profiles.demo]\nstall_timeout = 1.5\ncheckpoint_interval = 0.3\n")
    r = cli(
        "--config", str(config), *PLUGIN, "run", "demo", "-p", "items=40", "-p", "seconds=0.02",
        env=_slow(cli, tmp_path, 3.5),
    )  # fmt: skip
    assert (tmp_path / "slow.flag").exists(), "no checkpoint was held up: is tests.store_slow loaded?"
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"sum": 780' in r.stdout, r.stdout


def test_a_stop_reached_while_its_checkpoint_is_written_is_not_forced(cli: Cli, tmp_path: Path) -> None:
    """Ctrl-C while a checkpoint waits on the disk: the handler is at a safe point, and the stop is raised into it
    once the write ends, whatever the grace period. Before, the grace period ran out inside the write, the handler
    was cancelled where it stood, and the operation ended "paused (forced after 0.5s grace period)"."""
    run = _held_run(
        cli, tmp_path, "grace_period = 0.5\n[profiles.demo]\ncheckpoint_interval = 0.3\n", 2.5, items=100, seconds=0.02
    )
    run.signal(signal.SIGINT)
    assert run.wait(60) == 6, run.out + run.err
    ls = json.loads(cli("--json", "ls").stdout)
    op = ls[0] if isinstance(ls, list) else ls["operations"][0]
    shown = cli("show", op["id"]).stdout
    assert "paused" in shown and "forced" not in shown, shown
    r = cli("resume", op["id"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"sum": 4950' in r.stdout, r.stdout


async def test_a_write_lock_held_by_a_stopped_outlast_is_named_with_its_pid(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``outlast run`` stopped (SIGSTOP, a paused container) inside its checkpoint's commit holds the store's
    write lock: a write beside it waits the busy timeout, then says which process holds the lock and how to let
    it go on. Before, the line blamed "a sqlite3 shell or a database browser?" and said to end it."""
    monkeypatch.setattr(sqlite_core, "BUSY_TIMEOUT", 0.2)  # a command waits 30s; this one a moment
    run = _held_run(cli, tmp_path, "[profiles.demo]\ncheckpoint_interval = 0.3\n", 3, items=60, seconds=0.02, real=True)
    pid = run.popen.pid
    store = open_store(cli.state_dir)
    os.kill(pid, signal.SIGSTOP)
    try:
        await store.open()
        line = rf"outlast\.db is locked: process {pid} \(outlast .*run demo.*\) holds its write lock, and is stopped"
        with pytest.raises(StoreError, match=line + rf".*kill -CONT {pid} to go on; nothing was written"):
            await store.create(queued_record())
    finally:
        os.kill(pid, signal.SIGCONT)
        await store.close()
    assert run.wait(60) == 0, run.out + run.err


def test_a_stop_signal_while_the_disk_does_not_answer_exits_in_bounded_time(cli: Cli, tmp_path: Path) -> None:
    """A disk whose fsync does not return (a dead NFS server): every write on the way out waits behind it, and an
    ``outlast run`` asked to stop by three signals was still there a minute later. Once the store has not answered
    for store_outage_limit after a stop signal: one line, exit 8; the operation is found interrupted by the next
    command and resumes from its newest checkpoint."""
    run = _held_run(
        cli,
        tmp_path,
        "store_outage_limit = 1\n[profiles.demo]\ncheckpoint_interval = 0.3\n",
        120,
        items=100,
        seconds=0.005,
    )
    run.signal(signal.SIGTERM)
    assert run.wait(30) == 8, run.out + run.err
    assert any("has not answered for" in ln and "resume it then" in ln for ln in run.err), run.err
    _resumes_to_the_right_sum(cli)


def test_a_third_stop_signal_leaves_at_once_whatever_the_stop_waits_on(cli: Cli, tmp_path: Path) -> None:
    """A store_outage_limit set long (a slow NFS server is expected): Ctrl-C, Ctrl-C again (forced), and a third
    did nothing more; the user was left with kill -9. The third leaves at once in one line, exit 8 as the
    store has not answered for seconds (130 otherwise), at the cost of a SIGKILL."""
    config = "store_outage_limit = 600\n[profiles.demo]\ncheckpoint_interval = 0.3\n"
    run = _held_run(cli, tmp_path, config, 120, items=100, seconds=0.005)
    run.signal(signal.SIGINT)
    time.sleep(3.2)  # the store not answering for 3 s: the way out is exit 8
    run.signal(signal.SIGINT)
    time.sleep(0.3)
    run.signal(signal.SIGINT)
    assert run.wait(30) == 8, run.out + run.err
    said = [ln for ln in run.err if "a third stop signal (SIGINT): exiting without waiting for it" in ln]
    assert len(said) == 1 and "resume it then" in said[0], run.err
    _resumes_to_the_right_sum(cli)


def test_a_change_stopped_while_the_disk_does_not_answer_says_its_outcome_is_not_known(
    cli: Cli, tmp_path: Path
) -> None:
    """``outlast pause ID`` on a disk whose commit does not return: Ctrl-C twice ended it with "outlast: stopped",
    which reads as "not paused" of a pause the store may have taken. It says that nobody knows, and where to look."""
    op_id = cli("submit", "demo").stdout.strip()
    env = {**_slow(cli, tmp_path, 120), "OUTLAST_TEST_SLOW_MATCH": "COMMIT"}
    # Ctrl-C as a terminal sends it, whatever this test process inherited: a suite started in the background by
    # a non-interactive shell (nohup ... &) ignores SIGINT, and so would the command (an ignored SIGINT is kept).
    pause = Proc([*PLUGIN, "pause", op_id], env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    cli.procs.append(pause)
    until(lambda: (tmp_path / "slow.flag").exists(), 30, every=0.02, what="the pause's commit held up")
    pause.signal(signal.SIGINT)  # the first: the write under way is waited for
    time.sleep(0.5)
    pause.signal(signal.SIGINT)
    assert pause.wait(30) == 130, pause.out + pause.err
    assert [ln for ln in pause.err if ln] == [  # click ends the terminal's "^C" line first
        "outlast: stopped before the store answered: whether the pause was done is not known (outlast show ID, or ls,"
        " tells)"
    ], pause.err


async def test_a_write_beside_slow_commits_gets_its_turn(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk slow to sync, a run checkpointing at every item: each commit holds the write lock 1.5s, and its next
    one took it back within a millisecond, so a write of another process (SQLite's busy handler tries every 100 ms)
    waited out its busy timeout and failed "locked" (12s fsyncs under strace: ``outlast submit`` refused after 30s,
    2 runs of 2; now it is written after 11s). After a slow commit the lock is left free a moment."""
    monkeypatch.setattr(sqlite_core, "BUSY_TIMEOUT", 4.0)  # a command waits 30s: here, two slow commits or so
    run = _held_run(cli, tmp_path, "[profiles.demo]\ncheckpoint_every = 1\n", 1.5, times=0, items=8, seconds=0)
    store = open_store(cli.state_dir)
    await store.open()
    try:
        op = queued_record()
        await store.create(op)  # before: StoreError "outlast.db is locked"
    finally:
        await store.close()
    run.signal(signal.SIGKILL)


def test_a_live_view_ended_by_a_hung_store_gives_the_terminal_back(cli: Cli, tmp_path: Path) -> None:
    """The exit that does not unwind (above) left the terminal as ``outlast run``'s live view had made it: the
    cursor hidden and the echo off, so nothing the user typed next was shown. The view puts both back first."""
    config = tmp_path / "outlast.toml"
    config.write_text("store_outage_limit = 1\n[profiles.demo]\ncheckpoint_interval = 0.3\n")
    args = [*CLI, "--config", str(config), *PLUGIN, "run", "demo", "-p", "items=100", "-p", "seconds=0.02"]
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=_slow(cli, tmp_path, 120), cwd=REPO)
    os.close(slave)
    out = bytearray()
    try:
        until(lambda: (tmp_path / "slow.flag").exists(), 30, every=0.02, what="a checkpoint held up")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 8
        echo = termios.tcgetattr(master)[3] & termios.ECHO
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(master, 65536):
                out += chunk
    finally:
        proc.kill()
        os.close(master)
    assert b"has not answered for" in out, out[-2000:]
    assert out.rfind(b"\x1b[?25h") > out.rfind(b"\x1b[?25l") >= 0, out[-2000:]
    assert echo, "the terminal's echo was left off"


@pytest.mark.parametrize("leaving", ["at the store's limit", "on q again", "on SIGTERM again"])
def test_a_dashboard_quit_while_the_disk_does_not_answer_exits_and_gives_the_terminal_back(
    cli: Cli, tmp_path: Path, leaving: str
) -> None:
    """Pause and quit in the dashboard while a checkpoint's write never returns (a dead NFS server): the quit
    waited on the store for good, the screen frozen, where ``outlast run`` exits 8. It exits 8 too, once the
    store has not answered for store_outage_limit, or at once on q pressed again (which blanked the screen and
    exited 0 half a minute later, saying nothing): the terminal given back first (the main screen, the cursor,
    echo), then the line saying why, on it; the operation resumes from its newest checkpoint."""
    config = tmp_path / "outlast.toml"
    limit = 1 if leaving == "at the store's limit" else 600
    config.write_text(f"store_outage_limit = {limit}\n[profiles.demo]\ncheckpoint_interval = 0.3\n")
    r = cli("--config", str(config), "submit", "demo", "-p", "items=100", "-p", "seconds=0.005")
    assert r.returncode == 0, r.stdout + r.stderr
    term = OnAPty(["--config", str(config), *PLUGIN], _slow(cli, tmp_path, 120), rows=40, cols=120)  # the dashboard
    proc, master, out = term.proc, term.master, term.out
    try:
        until(lambda: (tmp_path / "slow.flag").exists(), 30, every=0.02, what="a checkpoint held up")
        if leaving == "on SIGTERM again":
            proc.send_signal(signal.SIGTERM)
        else:
            os.write(master, b"q")
            until(lambda: b"still runs in this dashboard" in out, 30, every=0.05, what="the quit dialog")
            os.write(master, b"p")
        if leaving != "at the store's limit":
            until(lambda: b"quitting: stopping 1 running operation" in out, 30, every=0.05, what="the quit said")
            time.sleep(3)  # the store not answering for 3 s: the way out is exit 8
            if leaving == "on q again":
                os.write(master, b"q")
            else:
                proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 8, bytes(out[-3000:])
        modes = termios.tcgetattr(master)[3]
        term.reader.join(5)
    finally:
        term.close()
    assert modes & termios.ECHO and modes & termios.ICANON, "the terminal's echo and line editing were left off"
    back = out.rfind(b"\x1b[?1049l")  # the main screen again
    assert back > out.rfind(b"\x1b[?1049h") >= 0, bytes(out[-3000:])
    assert out.rfind(b"\x1b[?25h") > out.rfind(b"\x1b[?25l"), bytes(out[-3000:])
    said = out.find(b"has not answered for" if leaving == "at the store's limit" else b"quit at once (")
    assert said > back and b"resume" in out[said:], bytes(out[-3000:])
    _resumes_to_the_right_sum(cli)


def test_an_api_server_stopped_while_the_disk_does_not_answer_exits_in_bounded_time(cli: Cli, tmp_path: Path) -> None:
    """``outlast serve`` handles its signals itself, and had no watch on the store: with a checkpoint's write
    that never returned, SIGTERM, and SIGTERM again, left it waiting on the disk for as long as the disk took.
    As ``outlast run``: one line, exit 8, once the store has not answered for store_outage_limit; the operation
    resumes from its newest checkpoint."""
    config = tmp_path / "outlast.toml"
    config.write_text("store_outage_limit = 1\n[profiles.demo]\ncheckpoint_interval = 0.3\n")
    r = cli("--config", str(config), "submit", "demo", "-p", "items=100", "-p", "seconds=0.005")
    assert r.returncode == 0, r.stdout + r.stderr
    serve = Proc(["--config", str(config), *PLUGIN, "serve", "--port", str(free_port())], _slow(cli, tmp_path, 120))
    cli.procs.append(serve)
    until(lambda: (tmp_path / "slow.flag").exists(), 30, every=0.02, what="a checkpoint held up")
    serve.signal(signal.SIGTERM)
    assert serve.wait(30) == 8, serve.out + serve.err
    assert any("has not answered for" in ln and "resume it then" in ln for ln in serve.err), serve.err
    _resumes_to_the_right_sum(cli)


async def test_an_open_cancelled_while_the_disk_holds_it_returns_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (a cancel) while the store's open waits on its disk: the open's clean-up joined its thread on the
    event loop's own thread for up to 30 s, so a command stopped by Ctrl-C twice stayed 30 s (found once in a
    short soak, a `pause` whose open's commit hung). The cancel returns at once; the thread ends by itself."""
    store = open_store(tmp_path / "state")
    held = threading.Event()
    released = threading.Event()
    connect = sqlite3.connect

    def hanging(database: Any, *args: Any, **kw: Any) -> sqlite3.Connection:
        """As ``tests.store_slow``: the first statement on the store's file waits, as a hung disk holds it."""
        con = connect(database, *args, **kw)
        if os.fsdecode(database).split("?")[0].endswith("/outlast.db"):
            con.set_trace_callback(lambda _sql: released.is_set() or bool(held.set()) or released.wait(60))
        return con

    monkeypatch.setattr(sqlite3, "connect", hanging)
    opening = asyncio.ensure_future(store.open())
    try:
        await asyncio.to_thread(held.wait, 10)
        began = time.monotonic()
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        took = time.monotonic() - began
    finally:
        released.set()
    assert took < 10, f"the cancel of an open waited {took:.0f}s for its thread"
