"""Recovery: SIGKILL of a real process, corrupt checkpoints, bad input, store versions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from engine import (
    Conflict,
    Engine,
    InvalidInput,
    NotFound,
    OperationSpec,
    Settings,
    Status,
    StoreError,
    load_settings,
    open_store,
)
from engine.models import Operation, WorkerInfo, new_id
from engine.store.base import checksum
from engine.store.sqlite import LocalStore
from tests.conftest import REPO
from tests.fixtures_cli import CliAt
from tests.fixtures_cli import until as until_sync
from tests.fixtures_engine import make_engine, until
from tests.test_retry_clock import FAKETIME

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from engine import Engine, load_settings, open_store

    async def main():
        s = load_settings(state_dir=sys.argv[1], plugins=["tests.ops_for_tests"])
        async with Engine(store=open_store(s.state_dir), settings=s) as e:
            await e.wait(sys.argv[2])

    asyncio.run(main())
    """
)


def _count(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().split():
            counts[line] = counts.get(line, 0) + 1
    return counts


async def test_sigkill_mid_run_then_resume(settings: Settings, tmp_path: Path) -> None:
    """A child runs 300 items; SIGKILL mid-way; the op is found interrupted, resumes and finishes
    with the uninterrupted result, every item done, none before the last checkpoint done twice."""
    log = tmp_path / "items.log"
    n = 300
    async with make_engine(settings, run_queue=False) as engine:
        op = await engine.submit(
            OperationSpec(
                type="ledger",
                params={"items": n, "seconds": 0.004, "log_file": str(log)},
                profile={"checkpoint_interval": 0.1},
            )
        )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(settings.state_dir), op.id], cwd=REPO, env=env)
    try:
        async with make_engine(settings, run_queue=False) as watcher:
            await until(lambda: sum(_count(log).values()) >= n // 2, timeout=60)
            await until(lambda: watcher.checkpoints(op.id), timeout=30)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    before_resume = _count(log)
    assert sum(before_resume.values()) < n, "the child finished before it was killed"

    async with make_engine(settings) as engine:  # opening the store finds the orphan
        rec = await engine.get(op.id)
        assert rec.status is Status.INTERRUPTED
        assert "stopped" in rec.status_message
        _cp, ledger = await engine.store.load_checkpoint(op.id)
        checkpointed = set(ledger.done)
        assert checkpointed and len(checkpointed) < n
        await engine.resume(op.id)
        final = await engine.wait(op.id, timeout=60)

    assert final.status is Status.COMPLETED
    assert final.result == {"sum": sum(range(n))}  # what an uninterrupted run returns
    counts = _count(log)
    assert set(counts) == {str(i) for i in range(n)}
    assert all(counts[k] == 1 for k in checkpointed), "an item before the last checkpoint was redone"
    redone = [k for k, c in counts.items() if c > 1]
    assert all(k not in checkpointed for k in redone)


async def test_a_forked_child_does_not_keep_a_killed_workers_operation_running(
    settings: Settings, tmp_path: Path
) -> None:
    """A child forked by the handler (a multiprocessing pool's worker) shared its parent's lock: with
    the parent SIGKILLed the operation stayed running, never found orphaned, while the child lived."""
    pid_file = tmp_path / "child.pid"
    async with make_engine(settings, run_queue=False) as engine:
        op = await engine.submit(OperationSpec(type="forker", params={"pid_file": str(pid_file)}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", CHILD, str(settings.state_dir), op.id], cwd=REPO, env=env)
    child = 0
    try:
        await until(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
        child = int(pid_file.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        os.kill(child, 0)  # still alive
        async with make_engine(settings, run_queue=False) as engine:  # opening the store finds the orphan
            rec = await engine.get(op.id)
            assert rec.status is Status.INTERRUPTED, rec.status
    finally:
        if parent.poll() is None:
            parent.kill()
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


async def test_files_opened_after_an_orphan_is_found_stay_open_in_a_forked_child(tmp_path: Path) -> None:
    """Finding an orphan takes its lock for a moment and closes it: that close left the fd among those a
    forked child closes (locks held by its parent), so the next file opened under the same number (the
    lowest free one) was closed in every child forked after: a multiprocessing pool's pipe, a log."""
    import time

    from engine import WorkerInfo
    from engine.models import Operation, new_id

    state = tmp_path / "state"
    holder = open_store(state)
    await holder.open()
    now = time.time()
    op = Operation(id=new_id(), type="ledger", created_at=now, queued_at=now, updated_at=now)
    await holder.create(op)
    assert await holder.claim(WorkerInfo(host="test", pid=1), now, 300.0, op_id=op.id) is not None
    await holder.close()  # lets go of the lock and leaves the record running: an orphan
    finder = open_store(state)
    await finder.open()
    try:
        assert [o.id for o in await finder.find_orphans()] == [op.id]
        opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]  # the first takes the freed number
        try:
            pid = os.fork()
            if pid == 0:  # the child: are the files its parent opened still open here?
                try:
                    for fd in opened:
                        os.fstat(fd)
                except OSError:
                    os._exit(1)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, "a file opened after the orphan was closed in the child"
        finally:
            for fd in opened:
                os.close(fd)
    finally:
        await finder.close()


async def _killed_after_a_checkpoint(
    settings: Settings, before_kill: Callable[[subprocess.Popen[bytes], Engine, str], Awaitable[None]] | None = None
) -> str:
    """A ledger of 200 items run by a child process, SIGKILLed once it has a checkpoint (``before_kill``
    first, given the child, an engine on the store and the operation's id); the operation's id. The child
    stops taking items after its first explicit checkpoint (item 10) and waits for the kill: it ran its 2 s
    to the end before a poller late by that much (a loaded machine) killed or stopped it."""
    async with make_engine(settings, run_queue=False) as engine:
        op = await engine.submit(
            OperationSpec(
                type="ledger",
                # the resume runs at full speed, and does not stall
                params={"items": 200, "seconds": 0.01, "slow_attempts": 1, "explicit_every": 10, "stall_after": [1]},
                profile={"checkpoint_interval": 0.1},
            )
        )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(settings.state_dir), op.id], cwd=REPO, env=env)
    try:
        async with make_engine(settings, run_queue=False) as other:
            await until(lambda: other.checkpoints(op.id), timeout=60)
            if before_kill is not None:
                await before_kill(child, other, op.id)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    return op.id


async def test_auto_resume_of_orphans(settings: Settings, tmp_path: Path) -> None:
    op_id = await _killed_after_a_checkpoint(settings)
    async with make_engine(settings, auto_resume=True) as engine:
        final = await engine.wait(op_id, timeout=60)
        assert final.status is Status.COMPLETED and final.attempt == 2
        assert final.result == {"sum": sum(range(200))}


async def test_an_orphan_resumed_by_auto_resume_keeps_its_place_in_the_queue(settings: Settings) -> None:
    """auto_resume (Redis workers always) queued an operation whose process died as if submitted then: behind
    work submitted after it, which ran first, and a worker killed again and again (the OOM killer) kept sending
    it to the back. Queued where it was, as work a stopped worker hands back is."""
    later: list[str] = []

    async def submit_later(child: subprocess.Popen[bytes], other: Engine, op_id: str) -> None:
        await other.store.set_slots(1)  # the child, running the orphan-to-be, takes none of them
        for _ in range(2):
            later.append((await other.submit(OperationSpec(type="ledger", params={"items": 1}))).id)

    op_id = await _killed_after_a_checkpoint(settings, submit_later)
    async with make_engine(settings, auto_resume=True) as engine:
        finals = [await engine.wait(i, timeout=60) for i in (op_id, *later)]
        assert [f.status for f in finals] == [Status.COMPLETED] * 3 and finals[0].attempt == 2
        assert finals[0].started_at is not None and finals[1].started_at is not None
        assert finals[0].started_at < finals[1].started_at, "the orphan ran after work queued behind it"


@pytest.mark.parametrize(("action", "status"), [("cancel", Status.CANCELLED), ("pause", Status.PAUSED)])
async def test_a_cancel_or_pause_asked_before_its_process_died_is_kept_by_recovery(
    settings: Settings, action: str, status: Status
) -> None:
    """Asked to cancel (or pause) while its process was stopped, then the process died: recovery marked
    the operation interrupted, which dropped the request, and auto_resume (Redis workers always) ran it
    to completed while `outlast cancel` had said it was asked."""

    async def ask(child: subprocess.Popen[bytes], other: Engine, op_id: str) -> None:
        os.kill(child.pid, signal.SIGSTOP)  # it cannot act on the request
        await other.store.request_control(op_id, action)  # type: ignore[arg-type]

    op_id = await _killed_after_a_checkpoint(settings, ask)
    async with make_engine(settings, auto_resume=True) as engine:
        final = await engine.wait(op_id, timeout=30)
        assert final.status is status and final.attempt == 1, (final.status, final.status_message)
        assert "as asked" in (final.status_message or "")
        assert not await engine.store.pending_controls([op_id])


def test_a_worker_with_auto_resume_resumes_an_orphan_that_a_read_only_command_found_first(tmp_path: Path) -> None:
    """``auto_resume = true``: the process running an operation is SIGKILLed and ``outlast ls`` (or a ``watch``,
    every 2 s) finds it first. It leaves it interrupted: it runs no queue (it used to queue it again for
    nobody, and ``outlast resume`` then refused it, "is queued"). A worker then found no orphan (it was
    interrupted already), and the operation stayed interrupted for ever, though auto_resume was on: whether
    it was resumed depended on who looked first. The worker now resumes it."""
    config = tmp_path / "config.toml"
    config.write_text("auto_resume = true\n")
    cli = CliAt(tmp_path / "state", OUTLAST_CONFIG=str(config))
    plugin = ("--plugin", "tests.ops_for_tests")
    try:
        run = cli.start(*plugin, "run", "ledger", "-p", "items=300", "-p", "seconds=0.01", "-p", "slow_attempts=1")
        op_id = run.wait_line(lambda ln: " submitted: " in ln).split()[1]
        cli.wait_status(op_id, {"running"})
        run.kill()
        for command in (("ls", "--json"), ("show", "--json", op_id)):
            r = cli(*plugin, *command)
            assert r.returncode == 0, r.stderr
            assert cli.op(op_id).status is Status.INTERRUPTED, command  # not queued for nobody
        worker = cli.start(*plugin, "worker", "--exit-when-idle")
        assert worker.wait(60) == 0
        final = cli.op(op_id)
        assert final.status is Status.COMPLETED and final.attempt == 2, final.status_message
        assert final.result == {"sum": sum(range(300))}
    finally:
        cli.close()


def test_an_operation_whose_process_dies_at_every_attempt_is_no_longer_resumed(tmp_path: Path) -> None:
    """A handler that kills its own process (``os._exit``, a crashing C extension) was resumed by every
    auto_resume worker restarted after it, for ever, each time taking the worker and the work beside it down.
    After its retry policy's max_attempts (3) deaths in a row with no newer checkpoint, it is left interrupted,
    saying why and how to go on; the neighbour, which checkpoints as it goes, finishes."""
    config = tmp_path / "config.toml"
    config.write_text("auto_resume = true\n[profiles.ledger]\ncheckpoint_interval = 0.1\n")
    cli = CliAt(tmp_path / "state", OUTLAST_CONFIG=str(config))
    plugin = ("--plugin", "tests.ops_for_tests")
    try:
        poison = cli(*plugin, "-q", "submit", "dies", "--profile", "checkpoint_interval=0.1").stdout.strip()
        good = cli(*plugin, "-q", "submit", "ledger", "-p", "items=60", "-p", "seconds=0.05").stdout.strip()
        for _ in range(8):
            cli(*plugin, "worker", "--concurrency", "2", "--exit-when-idle", timeout=60)
            if cli.op(good).status is Status.COMPLETED:
                break
        parked = cli.op(poison)
        assert cli.op(good).status is Status.COMPLETED, cli.op(good).status_message
        assert parked.status is Status.INTERRUPTED, (parked.status, parked.attempt, parked.status_message)
        assert "not resumed automatically" in (parked.status_message or ""), parked.status_message
        assert f"outlast resume {poison}" in (parked.status_message or ""), parked.status_message
        assert parked.attempt == parked.crashes == 3, parked  # three deaths: none resumed after the third
    finally:
        cli.close()


def test_a_command_whose_worker_is_killed_once_is_resumed_by_the_next_worker(tmp_path: Path) -> None:
    """A command's profile runs a failing command once (``max_attempts`` 1), and that was also its limit of
    deaths in a row: the first ``kill -9`` of its worker left it interrupted for good under auto_resume, its line
    saying it died "at every attempt" (a long-lived worker restarted by systemd stranded every command it ran)."""
    config = tmp_path / "config.toml"
    config.write_text("auto_resume = true\n")
    cli = CliAt(tmp_path / "state", OUTLAST_CONFIG=str(config))
    try:
        op_id = cli("-q", "submit", "command", "-p", "command=sleep 2").stdout.strip()
        worker = cli.start("worker")
        cli.wait_status(op_id, {"running"})
        worker.kill()
        again = cli.start("worker", "--exit-when-idle")
        assert again.wait(60) == 0, again.err
        done = cli.op(op_id)
        assert done.status is Status.COMPLETED and done.attempt == 2, (done.status, done.status_message)
    finally:
        cli.close()


async def test_only_an_attempt_found_orphaned_and_left_so_is_resumed_by_auto_resume(settings: Settings) -> None:
    """``left_orphaned`` lists an interrupted operation whose record says it was found orphaned at the epoch it
    still has; not one run again since (a newer epoch), nor one interrupted for another reason."""
    async with make_engine(settings, run_queue=False) as engine:
        store = engine.store
        assert isinstance(store, LocalStore)
        ids = []
        for mark in ("this attempt", "an older attempt", None):
            op = await engine.submit(OperationSpec(type="ledger", params={"items": 1}))
            claimed = await store.claim(engine.worker, time.time(), 0.0, op_id=op.id)
            assert claimed is not None
            epoch = {"this attempt": claimed.epoch, "an older attempt": claimed.epoch - 1, None: None}[mark]
            await store.transition(op.id, Status.INTERRUPTED, epoch=claimed.epoch, orphaned_epoch=epoch)
            await store.release(op.id, claimed.epoch)
            ids.append(op.id)
        assert await store.left_orphaned() == ids[:1]


async def _two_checkpoints(engine: Engine) -> str:
    op = await engine.submit(OperationSpec(type="ledger", params={"items": 20, "explicit_every": 5}))
    await engine.wait(op.id, timeout=20)
    assert [c.seq for c in await engine.checkpoints(op.id)] == [4, 3, 2, 1]
    return op.id


@pytest.mark.parametrize("damage", ["checksum", "undecodable"])
async def test_corrupt_newest_checkpoint_is_skipped(
    engine: Engine, settings: Settings, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    op_id = await _two_checkpoints(engine)
    db = sqlite3.connect(settings.state_dir / "outlast.db")
    if damage == "checksum":
        db.execute("UPDATE checkpoints SET payload=? WHERE op_id=? AND seq=4", (b'{"state":{"sum":-1}}', op_id))
    else:  # a checksum that matches bytes that are not a checkpoint
        garbage = b"\x00not json"
        items = db.execute("SELECT items FROM deltas WHERE op_id=? AND seq=4", (op_id,)).fetchone()[0]
        db.execute(
            "UPDATE checkpoints SET payload=?, checksum=? WHERE op_id=? AND seq=4",
            (garbage, checksum(garbage, items), op_id),
        )
    db.commit()
    db.close()
    with caplog.at_level(logging.WARNING, logger="outlast.store"):
        cp, ledger = await engine.store.load_checkpoint(op_id)
    assert cp.seq == 3
    assert ledger.done == {str(i) for i in range(15)}
    assert cp.state == {"sum": sum(range(15))}
    assert any("checkpoint 4" in r.getMessage() for r in caplog.records)
    listing = {c.seq: c.valid for c in await engine.checkpoints(op_id)}
    assert listing[3] is True and listing[4] is (damage != "checksum")


async def test_resume_from_chosen_older_checkpoint(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "items.log"
    op = await engine.submit(
        OperationSpec(type="ledger", params={"items": 20, "explicit_every": 5, "log_file": str(log)})
    )
    await engine.wait(op.id, timeout=20)
    with pytest.raises(Conflict, match="completed"):  # completed work never resumes
        await engine.resume(op.id, checkpoint=2)
    # Make it resumable the way a user would meet it: cancelled after running.
    op2 = await engine.submit(
        OperationSpec(type="ledger", params={"items": 400, "seconds": 0.01, "explicit_every": 20, "slow_attempts": 1})
    )
    await until(lambda: engine.live(op2.id) and engine.live(op2.id).done >= 70)
    await engine.cancel(op2.id)
    await engine.wait(op2.id, timeout=20)
    # Not found (404, exit 3) as GET .../checkpoints/SEQ and `outlast resume --checkpoint` say it, not bad input.
    with pytest.raises(NotFound, match=r"has no checkpoint 99 \(has: 1, 2, "):
        await engine.resume(op2.id, checkpoint=99)
    newest = max(c.seq for c in await engine.checkpoints(op2.id))
    with sqlite3.connect(settings.state_dir / "outlast.db") as db:
        db.execute("UPDATE checkpoints SET checksum='0' WHERE op_id=? AND seq=?", (op2.id, newest))
    db.close()
    with pytest.raises(NotFound, match=rf"has no valid checkpoint {newest}: it fails its checksum \(valid: 1, 2, "):
        await engine.resume(op2.id, checkpoint=newest)
    assert (await engine.get(op2.id)).status is Status.CANCELLED  # nothing changed
    await engine.resume(op2.id, checkpoint=2)
    final = await engine.wait(op2.id, timeout=60)
    assert final.status is Status.COMPLETED and final.result == {"sum": sum(range(400))}
    logs, _ = await engine.logs(op2.id)
    assert any("resuming from checkpoint 2 (40 items done)" in r.message for r in logs)


def test_a_resume_queued_from_an_older_checkpoint_is_listed_at_that_checkpoint(tmp_path: Path) -> None:
    """``outlast resume ID --checkpoint 1 --queue``: until a worker ran it, ``ls`` and ``show`` gave the newest
    checkpoint's progress (25/30 items, 83.3%), not the 10/30 it goes on from. Listed as it will resume."""
    cli = CliAt(tmp_path / "state", OUTLAST_PLUGINS="tests.ops_for_tests")
    params = json.dumps({"items": 30, "explicit_every": 10, "fail_at": 24})  # checkpoints at 10, 20 and 25 items
    r = cli("--json", "run", "ledger", "--params-json", params, "--profile", "retry.max_attempts=1")
    assert r.returncode == 1, r.stderr
    op_id = json.loads(r.stdout.splitlines()[-1])["id"]
    cps = {c["seq"]: c for c in json.loads(cli("--json", "checkpoints", op_id).stdout)}
    assert (cps[1]["processed_items"], max(c["processed_items"] for c in cps.values())) == (10, 25), cps
    assert cli("-q", "resume", op_id, "--checkpoint", "1", "--queue").returncode == 0
    listed = json.loads(cli("--json", "ls").stdout)
    shown = json.loads(cli("--json", "show", op_id).stdout)
    for rec in (listed[0], shown):
        assert rec["status"] == "queued" and rec["resume_seq"] == 1, rec
        assert (rec["progress"]["done"], rec["progress"]["total"]) == (10, 30), rec["progress"]
    plain = cli("ls").stdout
    assert "33.3%" in plain and "10/30" in plain and "83.3%" not in plain, plain


async def test_bad_input_stores_nothing(engine: Engine, settings: Settings, tmp_path: Path) -> None:
    cases = [
        ({"type": "no_such_type"}, "unknown operation type 'no_such_type'"),
        ({"type": "demo", "params": {"items": -1}}, "items"),
        ({"type": "demo", "params": {"bogus": 1}}, "bogus"),
        ({"type": "demo", "timeout": -5}, "timeout"),
        ({"type": "demo", "profile": {"checkpoint_interval": -1}}, "checkpoint_interval"),
        ({"type": "Bad/Type"}, "type"),
        ({"type": "demo", "priority": "urgent"}, "priority"),
    ]
    for spec, needle in cases:
        with pytest.raises(InvalidInput) as exc:
            await engine.submit(spec)
        msg = str(exc.value)
        assert needle in msg and "\n" not in msg, msg
    for bad_id in ("../x", "", "ABC", "x" * 40, "0123456789abc/"):
        with pytest.raises(InvalidInput, match="invalid operation id"):
            await engine.get(bad_id)
    assert await engine.list() == []
    assert not any((settings.state_dir / "logs").iterdir())


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("max_concurrent = 'lots'\n", "key 'max_concurrent'"),
        ("max_concurrent = [\n", "invalid TOML"),
        ("colour = 'red'\n", "key 'colour': unknown setting"),
        ("[profiles.codebase_indexing]\nbase_timeout = -5\n", "base_timeout"),
    ],
)
def test_malformed_config_one_line(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    with pytest.raises(InvalidInput) as exc:
        load_settings(config_file=cfg, env={})
    msg = str(exc.value)
    assert str(cfg) in msg and needle in msg and "\n" not in msg, msg


def test_bad_environment_names_the_variable() -> None:
    with pytest.raises(InvalidInput, match="OUTLAST_MAX_CONCURRENT"):
        load_settings(env={"OUTLAST_MAX_CONCURRENT": "0"})


async def test_newer_schema_refused(settings: Settings) -> None:
    async with make_engine(settings, run_queue=False):
        pass
    db = sqlite3.connect(settings.state_dir / "outlast.db")
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer Outlast"):
        async with make_engine(settings):
            pass


async def test_corrupt_database_is_one_line(settings: Settings) -> None:
    settings.state_dir.mkdir(parents=True)
    (settings.state_dir / "outlast.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable Outlast database"):
        async with make_engine(settings):
            pass


async def test_state_dir_permissions(settings: Settings) -> None:
    async with open_store(settings.state_dir):
        pass
    assert (settings.state_dir.stat().st_mode & 0o777) == 0o700


async def test_logs_are_json_lines(engine: Engine, settings: Settings) -> None:
    op = await engine.submit(OperationSpec(type="demo", params={"items": 4, "seconds": 0, "fail_every": 2}))
    await engine.wait(op.id, timeout=20)
    records, offset = await engine.logs(op.id)
    assert any("item failed: 1" in r.message for r in records)
    assert (settings.state_dir / "logs" / f"{op.id}.jsonl").stat().st_size == offset
    more, offset2 = await engine.logs(op.id, offset=offset)
    assert more == [] and offset2 == offset


async def test_many_processes_share_one_state_dir(settings: Settings) -> None:
    """Two engines in one state dir never run one operation twice."""
    async with make_engine(settings, run_queue=False) as submitter:
        ids = [
            (await submitter.submit(OperationSpec(type="ledger", params={"items": 3, "seconds": 0.01}))).id
            for _ in range(12)
        ]
    runners: dict[str, list[str]] = {"a": [], "b": []}
    a, b = make_engine(settings), make_engine(settings)
    for name, e in (("a", a), ("b", b)):  # before they start: an engine claims as soon as it starts
        e.subscribe(
            lambda ev, name=name: (
                runners[name].append(ev.operation_id) if getattr(ev, "status", None) is Status.RUNNING else None
            )
        )
    async with a, b:
        for i in ids:
            assert (await a.wait(i, timeout=30)).status is Status.COMPLETED
    ran = runners["a"] + runners["b"]
    assert sorted(ran) == sorted(ids)
    await asyncio.sleep(0)


# ---- a lock file deleted by hand under a live process ---------------------------------------------


@pytest.mark.parametrize("deleted", ["files", "directory"])
def test_a_lock_file_deleted_under_a_running_worker_does_not_make_its_operation_an_orphan(
    tmp_path: Path, deleted: str
) -> None:
    """``rm locks/*`` (a "stale lock" cleaned up, a temp cleaner) while a worker ran an operation: the next
    ``outlast ls`` found it unlocked, marked it interrupted ("the process running it stopped", which was
    alive) and the worker's attempt stopped, its work since the last checkpoint lost. Now the live process
    is asked first, and the worker makes its lock file again; the operation completes. ``rm -rf locks``:
    the worker's heartbeat failed as a store outage, which stopped the run once it outlasted its limit."""
    state = tmp_path / "state"
    cli = CliAt(state, OUTLAST_STORE_OUTAGE_LIMIT="1")
    try:
        worker = cli.start("worker", "-c", "1")
        items = 250 if deleted == "directory" else 120  # 5 s: past the 2.5 s wait below; else 2.4 s
        op_id = cli("-q", "submit", "demo", "-p", f"items={items}", "-p", "seconds=0.02").stdout.strip()
        cli.wait_status(op_id, {"running"})
        if deleted == "directory":
            shutil.rmtree(state / "locks")
            time.sleep(2.5)  # heartbeats, and past the outage limit, before any other process makes it
        else:
            for lock in (state / "locks").iterdir():
                lock.unlink()
        listed = cli("ls", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [o["status"] for o in json.loads(listed.stdout)] == ["running"]
        assert cli.wait_status(op_id, {"completed", "interrupted"}, timeout=60).status == Status.COMPLETED
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.err
        said = [ln for ln in worker.err if "lock file" in ln]
        assert len(said) == 1 and "its lock file was deleted while it ran; made again" in said[0], worker.err
        assert not any("cannot be written" in ln for ln in worker.err), worker.err
    finally:
        cli.close()


@pytest.mark.skipif(FAKETIME is None, reason="libfaketime is not installed")
def test_a_lock_file_deleted_under_a_stopped_worker_does_not_make_its_operation_an_orphan(tmp_path: Path) -> None:
    """A worker stopped (Ctrl-Z, SIGSTOP) while its lock files were deleted cannot make them again until it is
    continued: once the lock file the next look made had been free for RELOCK_WINDOW (30 s; here an `outlast
    ls` whose clock is a minute ahead), its live work was marked interrupted ("the process running it
    stopped"), to be run beside it once continued. It stays running; continued, the worker finishes it."""
    state = tmp_path / "state"
    trace = tmp_path / "items"
    cli = CliAt(state, OUTLAST_PLUGINS="tests.ops_for_tests")
    later = {
        **cli.env,
        "LD_PRELOAD": str(FAKETIME),
        "FAKETIME": "+60s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    try:
        worker = cli.start("worker", "-c", "1")
        params = json.dumps({"items": 150, "seconds": 0.01, "log_file": str(trace)})
        op_id = cli("-q", "submit", "ledger", "--params-json", params).stdout.strip()
        until_sync(lambda: trace.exists() and len(trace.read_text().split()) > 5, 30, what="items run")
        worker.signal(signal.SIGSTOP)
        try:
            for lock in (state / "locks").iterdir():
                lock.unlink()
            for env in (cli.env, later):  # the first look makes the lock file again; the second finds it old
                listed = cli("--json", "ls", env=env)
                assert listed.returncode == 0, listed.stderr
                assert [o["status"] for o in json.loads(listed.stdout)] == ["running"], listed.stderr
        finally:
            worker.signal(signal.SIGCONT)
        assert cli.wait_status(op_id, {"completed", "interrupted"}, timeout=60).status == Status.COMPLETED
        ran = trace.read_text().split()
        assert sorted(ran, key=int) == [str(i) for i in range(150)], "an item ran twice, or not at all"
    finally:
        cli.close()


async def test_an_operation_whose_process_is_alive_is_not_an_orphan_but_a_pid_taken_since_is(tmp_path: Path) -> None:
    """Found unlocked, an operation is an orphan unless the process its record names is alive on this host
    and started before it claimed the operation: a pid reused by a process started later (or a zombie)
    is not the one that ran it."""
    state = tmp_path / "state"
    holder, finder = open_store(state), open_store(state)
    older = subprocess.Popen(["sleep", "60"])
    try:
        await holder.open()
        await finder.open()
        ops = []
        for _ in range(2):
            now = time.time()
            op = Operation(id=new_id(), type="demo", created_at=now, queued_at=now, updated_at=now)
            await holder.create(op)
            ops.append(op)
        host = socket.gethostname()
        alive = await holder.claim(WorkerInfo(host=host, pid=older.pid), time.time(), 300.0, op_id=ops[0].id)
        newer = subprocess.Popen(["sleep", "60"])
        # Claimed (as its record says) 5 s before `newer` began: that pid is another process than the one that ran it.
        reused = await holder.claim(WorkerInfo(host=host, pid=newer.pid), time.time() - 5, 300.0, op_id=ops[1].id)
        assert alive is not None and reused is not None
        for lock in (state / "locks").iterdir():
            lock.unlink()  # the holder still has its flocks, on files no longer at the path
        assert [o.id for o in await finder.find_orphans()] == [ops[1].id]
        older.kill()
        older.wait()
        assert {o.id for o in await finder.find_orphans()} == {ops[0].id, ops[1].id}
        newer.kill()
        newer.wait()
    finally:
        older.kill()
        await finder.close()
        await holder.close()


async def test_a_live_process_is_told_by_its_start_since_boot_not_by_the_wall_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its lock file deleted, a live operation was told from an orphan by its process's start on the
    wall clock: after the clock stepped forward the process seemed to start after its claim, so `outlast
    ls` marked it interrupted and a worker ran it beside it. The kernel's start since boot decides now.
    And a lock file left free for long while its process lives is another state dir's (this one a copy):
    the operation stayed running here for as long as that process lived."""
    from engine.processes import process_start
    from engine.store.sqlite import liveness

    state = tmp_path / "state"
    holder, finder = open_store(state), open_store(state)
    live = subprocess.Popen(["sleep", "60"])
    try:
        await holder.open()
        await finder.open()
        boot, start = process_start(live.pid) or (None, None)
        assert boot is not None
        ops = []
        for _ in range(2):
            now = time.time()
            op = Operation(id=new_id(), type="demo", created_at=now, queued_at=now, updated_at=now)
            await holder.create(op)
            ops.append(op)
        host = socket.gethostname()
        # Claimed an hour "before" its process started by today's clock (the clock stepped forward since).
        worker = WorkerInfo(host=host, pid=live.pid, boot=boot, start=start)
        assert await holder.claim(worker, time.time() - 3600, 300.0, op_id=ops[0].id) is not None
        other = WorkerInfo(host=host, pid=live.pid, boot=boot, start=start + 1)  # the pid, taken since
        assert await holder.claim(other, time.time(), 300.0, op_id=ops[1].id) is not None
        for lock in (state / "locks").iterdir():
            lock.unlink()  # the holder still has its flocks, on files no longer at the path
        assert [o.id for o in await finder.find_orphans()] == [ops[1].id]
        # The lock file, made again (by that look) and left free past the window: not the process's own.
        monkeypatch.setattr(liveness, "RELOCK_WINDOW", 0.2)
        time.sleep(0.5)
        assert {o.id for o in await finder.find_orphans()} == {ops[0].id, ops[1].id}
    finally:
        live.kill()
        live.wait()
        await finder.close()
        await holder.close()


@pytest.mark.parametrize(("action", "status"), [("cancel", Status.CANCELLED), ("pause", Status.PAUSED)])
async def test_a_cancel_or_pause_asked_as_recovery_marks_the_orphan_interrupted_is_kept(
    settings: Settings, action: str, status: Status
) -> None:
    """Recovery read the orphan's pending requests (none), then marked it interrupted; a cancel (or pause)
    asked in between found it still running, stored its request and said "cancel requested", and the mark
    dropped the request: auto_resume ran the operation to completed (found writing test_fault_race's checks).
    The request is read in the same atomic step as the mark."""
    op_id = await _killed_after_a_checkpoint(settings)
    asking = open_store(settings.state_dir)

    async def none() -> list[Operation]:
        return []

    asking.find_orphans = none  # type: ignore[method-assign]  # the asker leaves the orphan to the recovery
    recovering = open_store(settings.state_dir)
    real, entered = recovering.transition, asyncio.Event()

    async def slow(op_id: str, to: Status, **kw: Any) -> Operation:
        if to is Status.INTERRUPTED:  # the window, held open: the requests are read, the mark not yet written
            entered.set()
            await asyncio.sleep(0.5)
        return await real(op_id, to, **kw)

    recovering.transition = slow  # type: ignore[method-assign]

    async def recover() -> Operation:
        async with Engine(store=recovering, settings=settings, auto_resume=True) as engine:
            return await engine.wait(op_id, timeout=30)

    async with Engine(store=asking, settings=settings, run_queue=False) as asker:
        settled = asyncio.ensure_future(recover())
        await asyncio.wait_for(entered.wait(), 20)
        await getattr(asker, action)(op_id)
        final = await settled
    assert final.status is status and final.attempt == 1, (final.status, final.status_message)
