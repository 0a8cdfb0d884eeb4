"""Following an operation from the command line (``run``, ``watch``, ``logs -f``, the detached runner):
signals while a retry waits out its backoff, readers that go away, and the hints a follower prints."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from engine.exitcodes import ExitCode
from tests import zygote
from tests.fixtures_cli import CLI, REPO, Cli, alive, until

PLUGIN = ["--plugin", "tests.ops_for_tests"]


def _flaky(flaky_file: Path, backoff: float, items: int = 6, seconds: float = 0.0) -> list[str]:
    """A ledger that fails once with a transient error after item 2, retried after ``backoff`` seconds."""
    return [
        "ledger",
        *("-p", f"items={items}", "-p", f"seconds={seconds}", "-p", "fail_at=2", "-p", f"flaky_file={flaky_file}"),
        *("--profile", f"retry={json.dumps({'backoff_base': backoff, 'jitter': 0})}"),
    ]


def _waiting_out_backoff(cli: Cli, op_id: str) -> bool:
    op = cli.op(op_id)
    return op.status.value == "queued" and op.retries == 1 and op.not_before is not None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_retry_waits_out_its_backoff_pauses_it(cli: Cli, tmp_path: Path, sig: int) -> None:
    """``outlast run`` following its operation queued for a retry (30 s backoff) took Ctrl-C, and Ctrl-C
    again, SIGTERM, SIGHUP, and went on waiting for ever: a draining engine neither claimed the retry
    nor paused it. A signal pauses it now, as it pauses a running one: exit 6, resumable."""
    proc = cli.start(*PLUGIN, "run", *_flaky(tmp_path / "flaky", backoff=30))
    op_id = proc.wait_line(lambda ln: "submitted" in ln).split()[1]
    until(lambda: _waiting_out_backoff(cli, op_id), 30, what="the retry waiting out its backoff")
    proc.signal(sig)
    assert proc.wait(15) == 6, (proc.out[-3:], proc.err)  # a hang: TimeoutExpired here
    assert proc.out[-1].endswith(f" with: outlast --plugin tests.ops_for_tests resume {op_id}"), proc.out[-3:]
    assert f"{op_id} paused at 3/6 items" in proc.out[-2] and "Error" not in proc.out[-2], proc.out[-2]
    assert cli.op(op_id).status.value == "paused"
    r = cli(*PLUGIN, "--json", "resume", op_id)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"] == {"sum": sum(range(6))}


def test_the_detached_runner_paused_by_a_signal_while_a_retry_waits(cli: Cli, tmp_path: Path) -> None:
    """The same loop runs ``--detach``'s process: SIGTERM (systemd, a shutdown) left it waiting for ever."""
    r = cli(*PLUGIN, "--json", "run", *_flaky(tmp_path / "flaky", backoff=30), "--detach")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    op_id, pid = out["id"], out["pid"]
    try:
        until(lambda: _waiting_out_backoff(cli, op_id), 30, what="the retry waiting out its backoff")
        os.kill(pid, signal.SIGTERM)
        until(lambda: not alive(pid), 15, what="the detached runner's exit")
    finally:
        if alive(pid):  # hung: not left behind the test
            os.kill(pid, signal.SIGKILL)
    assert cli.op(op_id).status.value == "paused"
    log = (cli.state_dir / "detached" / f"{op_id}.log").read_text()
    assert f"resume {op_id}" in log.splitlines()[-1], log[-300:]


def test_a_retry_claimed_by_a_worker_is_followed_there_and_a_signal_stops_following(cli: Cli, tmp_path: Path) -> None:
    """A worker may claim the retry when it is due, before ``run`` does: ``run`` followed it as its own,
    and a signal then neither paused it (another process runs it) nor ended the follow. It is followed
    as the worker's now: a signal stops following (130), and the worker goes on."""
    proc = cli.start(*PLUGIN, "run", *_flaky(tmp_path / "flaky", backoff=3, items=400, seconds=0.05))
    op_id = proc.wait_line(lambda ln: "submitted" in ln).split()[1]
    until(lambda: _waiting_out_backoff(cli, op_id), 30, what="the retry waiting out its backoff")
    os.kill(proc.popen.pid, signal.SIGSTOP)  # so that the worker, not this run, claims the retry
    try:
        worker = cli.start(*PLUGIN, "worker")
        claimed = lambda: getattr(cli.op(op_id).worker, "pid", None) == worker.popen.pid  # noqa: E731
        until(claimed, 30, what="the worker running the retry")
    finally:
        os.kill(proc.popen.pid, signal.SIGCONT)
    proc.signal(signal.SIGINT)
    assert proc.wait(15) == 130, (proc.out[-3:], proc.err)
    assert any(f"stopped following {op_id}" in ln for ln in proc.err), proc.err
    assert cli.op(op_id).status.value == "running"  # the worker goes on with it
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


BUSY = "while :; do echo tick; sleep 0.05; done"
"""A command that logs a line every 50 ms: its follower writes all the time (EPIPE at its next line)."""
QUIET = "echo hello; sleep 120"
"""A command that logs one line, then nothing: its follower writes nothing once the reader has it."""


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["watch", "{id}"], BUSY),
        (["--json", "watch", "{id}"], BUSY),
        (["watch"], BUSY),
        (["logs", "--follow", "{id}"], BUSY),
        (["watch", "{id}"], QUIET),
        (["logs", "--follow", "{id}"], QUIET),
    ],
)
def test_a_follower_whose_reader_went_away_ends_at_once(
    cli: Cli, tmp_path: Path, args: list[str], command: str
) -> None:
    """``outlast watch ID | head -1`` (and ``--json watch``, ``watch`` of all, ``logs --follow``) went on
    following for as long as the operation ran, its output dropped: a follower's work is only its output.
    It ends now when the reader is gone (even while it has nothing to write), with 141, as ``tail -f``
    does, and leaves the operation running."""
    r = cli("--json", "run", "command", "-p", f"command={command}", "-p", "shell=true", "--detach")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    op_id, pid = out["id"], out["pid"]
    try:
        until(lambda: cli.op(op_id).status.value == "running", 30, what="the detached run running")
        _head_one(cli, tmp_path, [a.format(id=op_id) for a in args])
        assert cli.op(op_id).status.value == "running"  # left as it was
    finally:
        cli.here("cancel", op_id)
        until(lambda: not alive(pid), 30, what="the detached runner's exit")


def _head_one(cli: Cli, tmp_path: Path, args: list[str]) -> None:
    """``outlast ARGS | head -1``: head reads a line and exits; the follower must end at once with 141."""
    err = tmp_path / "follower.err"
    with open(err, "w") as err_file:
        follower = zygote.popen([*args], stdout=subprocess.PIPE, stderr=err_file, env=cli.env, cwd=REPO)
    try:
        assert follower.stdout is not None
        head = subprocess.run(["head", "-1"], stdin=follower.stdout, capture_output=True, text=True, timeout=30)
        follower.stdout.close()  # only head held the pipe's reading end: now nobody does
        assert head.stdout.strip(), head
        assert follower.wait(10) == ExitCode.READER_GONE, err.read_text()  # a hang: TimeoutExpired here
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(10)
    assert err.read_text() == ""  # no traceback, no "Exception ignored" from the final flush


def test_every_hint_of_a_detached_run_names_the_store_it_used(cli: Cli, tmp_path: Path) -> None:
    """``run --detach`` and ``resume --detach`` said "follow with: outlast watch ID", the detached log
    "resume with: outlast resume ID", and a stopped watch "outlast watch ID follows it again", all without
    the --state-dir given: pasted, each looked in the default store and found nothing."""
    other = tmp_path / "elsewhere"
    at = ["--state-dir", str(other)]
    # 7 s of work: the watch, its stop and the pause come before its end on a loaded machine too (with 4 s
    # the pause once found it completed, under a full suite beside two other test runs)
    r = cli(*at, "run", "demo", "-p", "items=350", "-p", "seconds=0.02", "--detach")
    assert r.returncode == 0, r.stderr
    op_id = r.stdout.strip()
    try:
        hint = r.stderr.strip().split("follow with: ", 1)[1]
        assert hint == f"outlast --state-dir {other} watch {op_id}", r.stderr
        watch = cli.start(*shlex.split(hint)[1:])  # pasted, with the default state dir in the environment
        watch.wait_line(lambda ln: " running " in ln)
        watch.signal(signal.SIGINT)
        assert watch.wait(15) == ExitCode.WATCH_STOPPED, watch.err
        assert f"({hint} follows it again)" in watch.out[-1], watch.out[-1]

        r = cli(*at, "pause", "--wait", "30", op_id)
        assert r.returncode == 0, r.stderr
        log = other / "detached" / f"{op_id}.log"
        until(lambda: "resume" in log.read_text().splitlines()[-1], 30, what="the detached log's last line")
        assert log.read_text().splitlines()[-1].endswith(f" with: outlast --state-dir {other} resume {op_id}")

        r = cli(*at, "resume", op_id, "--detach")
        assert r.returncode == 0, r.stderr
        hint = r.stderr.strip().split("follow with: ", 1)[1]
        assert hint == f"outlast --state-dir {other} watch {op_id}", r.stderr
        assert cli(*shlex.split(hint)[1:]).returncode == 0  # followed to its completion
    finally:
        cli.here(*at, "cancel", op_id)  # a failed check leaves no detached run behind


def test_a_hint_naming_a_state_dir_with_control_characters_pastes_as_printed(cli: Cli, tmp_path: Path) -> None:
    """A state dir whose name holds a newline, an escape, a quote and a byte that is not UTF-8: the hint
    printed it quoted with each control character written ``\\x1b`` (and the byte ``\\udce9``) inside plain
    quotes, which a shell reads as those four characters: pasted, it made a new, empty state dir ("no
    operation matches"). It is now ``$'...'`` with escapes a shell reads back: one line, no escape sent to
    the terminal, and pasted into bash it resumes the operation."""
    other = os.fsdecode(bytes(tmp_path) + b"/a b\n\x1b[31m'q\xe9")
    at = ["--state-dir", other]
    r = cli(*at, "submit", "demo", "-p", "items=3")
    assert r.returncode == 0, r.stderr
    op_id = r.stdout.strip()
    r = cli(*at, "pause", op_id)
    assert r.returncode == 0, r.stderr
    line = (r.stdout + r.stderr).strip()
    assert "\n" not in line and "\x1b" not in line and line.isascii(), line
    hint = line.split("resume with: ", 1)[1]
    assert hint.startswith("outlast --state-dir $'") and hint.endswith(f" resume {op_id}"), hint
    cmd = " ".join(shlex.quote(w) for w in CLI)
    before = sorted(os.listdir(tmp_path))
    pasted = subprocess.run(
        ["bash", "-c", f'outlast() {{ {cmd} "$@"; }}; {hint} --queue'],
        capture_output=True,
        text=True,
        env=cli.env,
        cwd=REPO,
        timeout=60,
    )
    assert pasted.returncode == 0, pasted.stderr
    assert sorted(os.listdir(tmp_path)) == before  # no other state dir made
    r = cli(*at, "--json", "ls")
    assert r.returncode == 0 and [(o["id"], o["status"]) for o in json.loads(r.stdout)] == [(op_id, "queued")], r


def test_a_hint_naming_a_relative_state_dir_pastes_from_anywhere(cli: Cli, tmp_path: Path) -> None:
    """``outlast --state-dir state run ... --detach`` wrote "resume with: outlast --state-dir state resume ID"
    in its detached log: read and pasted from another directory, it looked in another store (made anew,
    empty: "no operation matches"). A hint names the state dir by its absolute path."""
    here = tmp_path / "here"
    here.mkdir()
    r = zygote.run(
        ["--state-dir", "state", "submit", "demo", "-p", "items=3"],
        cwd=here,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    op_id = r.stdout.strip()
    r = zygote.run(
        ["--state-dir", "state", "pause", op_id],
        cwd=here,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    hint = (r.stdout + r.stderr).strip().split("resume with: ", 1)[1]
    assert hint == f"outlast --state-dir {here / 'state'} resume {op_id}", hint
    r = cli(*shlex.split(hint)[1:], "--queue")  # pasted elsewhere (the repository)
    assert r.returncode == 0, r.stderr


def test_a_resume_queued_for_a_worker_names_the_worker_for_its_store(cli: Cli, tmp_path: Path) -> None:
    """``resume --queue`` said "a running `outlast worker` picks it up": a worker of the default store."""
    other = tmp_path / "elsewhere"
    op_id = cli("--state-dir", str(other), "-q", "submit", "demo", "-p", "items=3").stdout.strip()
    assert cli("--state-dir", str(other), "pause", op_id).returncode == 0
    r = cli("--state-dir", str(other), "resume", op_id, "--queue")
    assert r.returncode == 0, r.stderr
    assert f"a running `outlast --state-dir {other} worker` picks it up" in r.stdout, r.stdout


def test_watching_work_queued_with_no_worker_says_so_once_and_goes_on_waiting(cli: Cli) -> None:
    """``outlast watch ID`` of an operation queued while no worker runs on the store said nothing and
    waited for ever: over SSH nobody could tell it would never start. One line on stderr says so, with the
    command that starts a worker, and the watch goes on: a worker started then runs it, and the watch ends."""
    r = cli(*PLUGIN, "-q", "submit", "ledger", "-p", "items=3")
    assert r.returncode == 0, r.stderr
    op_id = r.stdout.strip()
    watch = cli.start(*PLUGIN, "watch", op_id)
    said = lambda: [ln for ln in watch.err if "no worker" in ln]  # noqa: E731
    until(said, 30, what="the line saying no worker runs")
    assert said() == [
        f"{op_id} is queued and no worker seems to be running on this store (nothing claimed it in 3 s);"
        " start one with: outlast --plugin tests.ops_for_tests worker (still waiting)"
    ], watch.err
    assert watch.popen.poll() is None  # still waiting: a worker may come
    worker = cli.start(*PLUGIN, "worker")
    assert watch.wait(30) == ExitCode.OK, (watch.out[-3:], watch.err)
    assert len(said()) == 1, watch.err
    assert not any(ln.startswith(op_id) and "no worker" in ln for ln in watch.out), watch.out  # stdout: the lines
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0


def test_watching_all_with_nothing_active_says_so_once(cli: Cli) -> None:
    """``outlast watch`` (all active operations) with none active printed nothing at all, off a terminal, until
    something ran: a blank screen that looked hung. One line on stderr says it waits; stdout stays the lines,
    and a run that starts then is shown."""
    watch = cli.start("watch")
    note = "no active operations: waiting for some (Ctrl-C stops watching)"
    until(lambda: note in watch.err, 30, what="the line saying nothing is active")
    r = cli("run", "demo", "-p", "items=5", "-p", "seconds=0.2")
    assert r.returncode == 0, r.stderr
    op_id = r.stdout.split()[1]
    watch.wait_line(lambda ln: op_id in ln and " completed " in ln)
    until(lambda: watch.err.count(note) == 2, 30, what="the line again once it settled")
    watch.signal(signal.SIGINT)
    assert watch.wait(30) == ExitCode.WATCH_STOPPED, watch.err
    assert not any(note in ln for ln in watch.out), watch.out


def test_a_watch_whose_operation_is_deleted_under_it_says_it_is_gone(cli: Cli) -> None:
    """The record removed while ``watch`` follows it (the store emptied, a row deleted): it said "no operation
    ID", exit 3, the answer to a mistyped id. It says the operation it was following is gone."""
    import sqlite3

    sub = cli("submit", "demo", "-p", "items=1000")
    assert sub.returncode == 0, sub.stderr
    op_id = sub.stdout.strip()
    watch = cli.start("watch", op_id)
    watch.wait_line(lambda ln: op_id in ln)
    db = sqlite3.connect(cli.state_dir / "outlast.db")
    with db:
        db.execute("DELETE FROM operations WHERE id=?", (op_id,))
    db.close()
    assert watch.wait(30) == ExitCode.NOT_FOUND
    assert watch.err == [
        f"outlast: {op_id} is gone from the store (removed by outlast clean or rm, or the store emptied) before its"
        " end was seen; it was last seen queued"  # no worker runs it
    ], watch.err
