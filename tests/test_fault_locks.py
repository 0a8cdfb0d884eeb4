"""Fault suite (e): processes racing for the same lock files of the local store.

A running operation is held by an flock on its lock file; letting go deletes the file. A process
that opened the path just before could take the flock on the deleted file while another created
and locked a new one: two holders at once, and `find_orphans` declared a live attempt interrupted
(with auto_resume, run twice). Real processes, real files; seeded; ``OUTLAST_SOAK=1`` runs longer.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine import Conflict, Engine, OperationSpec, Settings, Status, open_store
from tests.conftest import REPO
from tests.fixtures_engine import make_engine, until

SOAK = bool(os.environ.get("OUTLAST_SOAK"))
SEED = int(os.environ.get("OUTLAST_FAULT_SEED") or random.randrange(1 << 30))
P = ["--plugin", "tests.ops_for_tests"]
CLI_ARGS = ["-m", "engine.cli", *P]
SECONDS = 60.0 if SOAK else 1.0
"""How long the lock probers race. A normal run's is a short look (2 s let the race go unseen three runs in
three with the inode check taken out of ``locks.try_lock``); the race itself is made to happen every time by
test_a_lock_taken_on_a_file_deleted_meanwhile_is_not_held, and OUTLAST_SOAK=1 races a minute."""

HOLDER = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from engine import Status, open_store
    from engine.models import WorkerInfo

    async def main(state, ids, seconds):
        store = open_store(state)
        await store.open()
        me = WorkerInfo(host="holder", pid=os.getpid())
        cycles = busy = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for op_id in ids:
                op = await store.claim(me, time.time(), 0, op_id=op_id)
                if op is None:
                    busy += 1  # a prober holds the lock of the queued operation for a moment: retry
                    continue
                await asyncio.sleep(0.2)  # the attempt runs
                await store.transition(op_id, Status.PAUSED, epoch=op.epoch, expect=frozenset({Status.RUNNING}))
                await store.transition(op_id, Status.QUEUED, expect=frozenset({Status.PAUSED}))
                cycles += 1
        await store.close()
        print(json.dumps({"cycles": cycles, "busy": busy}))

    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])))
    """
)

PROBER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from engine import open_store

    async def main(state, seconds):
        store = open_store(state)
        await store.open()
        probes = 0
        orphans = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            orphans += [op.id for op in await store.find_orphans()]
            probes += 1
        await store.close()
        print(json.dumps({"probes": probes, "orphans": orphans}))

    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
    """
)


STRACE = shutil.which("strace")


RECOVERER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from engine import Engine, load_settings, open_store

    async def main(state, seconds):
        s = load_settings(state_dir=state, plugins=["tests.ops_for_tests"])
        async with Engine(store=open_store(state), settings=s, run_queue=False, auto_resume=True) as engine:
            found = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                found += [op.id for op in await engine.recover()]
        print(json.dumps({"recovered": found}))

    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
    """
)


def spawn(
    args: list[str], env: dict[str, str] | None = None, slow_flock: bool = False, delay_us: int = 1_000_000
) -> subprocess.Popen:
    """A real process (``args`` after the interpreter). ``slow_flock``: every flock it calls waits
    ``delay_us`` first (strace delays the system call), as a loaded machine may stall a process between
    opening a lock file and locking it: the window in which the file can be let go of, deleted and
    replaced."""
    cmd = [sys.executable, *args]
    if slow_flock and STRACE:
        inject = f"inject=flock:delay_enter={delay_us}"
        cmd = [STRACE, "-qq", "-f", "-o", os.devnull, "-e", "trace=flock", "-e", inject, *cmd]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def finish(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=SECONDS + 120)
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.timeout(SECONDS * 3 + 120)
async def test_probers_never_find_a_live_attempt_orphaned(settings: Settings) -> None:
    """One process claims and lets go of operations as fast as it can (each let-go deletes the lock
    file); others look for orphans all the while. The holder never dies, so no orphan may be found."""
    async with make_engine(settings, run_queue=False) as engine:
        ids = [(await engine.submit(OperationSpec(type="demo", params={"items": 1}))).id for _ in range(1)]
    state = str(settings.state_dir)
    holder = spawn(["-c", HOLDER, state, json.dumps(ids), str(SECONDS)])
    probers = [spawn(["-c", PROBER, state, str(SECONDS)], slow_flock=i > 0) for i in range(4)]
    held = finish(holder)
    probed = [finish(p) for p in probers]
    orphans = [o for p in probed for o in p["orphans"]]
    assert held["cycles"] > 0 and all(p["probes"] > 0 for p in probed)
    assert orphans == [], (held, probed)
    async with make_engine(settings, run_queue=False) as engine:
        assert {(await engine.get(i)).status for i in ids} == {Status.QUEUED}


def _count(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text().split() if path.exists() else []:
        counts[line] = counts.get(line, 0) + 1
    return counts


@pytest.mark.timeout(600 if SOAK else 240)
async def test_two_workers_with_pauses_never_orphan_a_live_attempt(settings: Settings, tmp_path: Path) -> None:
    """Two ``outlast worker`` processes (auto_resume on; one's flock calls stalled by strace) share a
    state dir while this process pauses and resumes their operations all the time, so lock files are
    let go of, deleted and made again under both. No process dies here: no attempt may be declared
    orphaned, every item runs exactly once, and every result is the uninterrupted one."""
    seed = SEED
    rng = random.Random(seed)
    n_ops, items = (12, 300) if SOAK else (4, 80)
    logs = [tmp_path / f"items-{i}.log" for i in range(n_ops)]
    env = {**os.environ, "OUTLAST_STATE_DIR": str(settings.state_dir), "OUTLAST_AUTO_RESUME": "1"}
    async with make_engine(settings, run_queue=False) as ctl:
        ids = [
            (
                await ctl.submit(
                    OperationSpec(type="ledger", params={"items": items, "seconds": 0.03, "log_file": str(log)})
                )
            ).id
            for log in logs
        ]
        workers = [
            spawn([*CLI_ARGS, "worker", "--concurrency", "2"], env=env, slow_flock=i == 1, delay_us=300_000)
            for i in range(2)
        ]
        # A third engine looks for orphans all the while, as every engine does every 2 s (stalled too).
        recoverer = spawn(
            ["-c", RECOVERER, str(settings.state_dir), "1e9"], env=env, slow_flock=True, delay_us=3_000_000
        )
        pauses = 0
        try:
            end = time.monotonic() + (480 if SOAK else 150)
            while time.monotonic() < end:
                ops = [await ctl.get(i) for i in ids]
                if all(op.status is Status.COMPLETED for op in ops):
                    break
                running = [op.id for op in ops if op.status is Status.RUNNING and rng.random() < 0.7]
                cycled = await asyncio.gather(*(_pause_and_resume(ctl, op_id) for op_id in running))
                pauses += sum(cycled)
                await asyncio.sleep(rng.random() * 0.1)
        finally:
            for w in [*workers, recoverer]:
                os.killpg(w.pid, signal.SIGTERM)  # the worker, and strace in front of it
            errs = [w.communicate(timeout=60)[1] for w in [*workers, recoverer]]
        why = f"seed {seed}, {pauses} pauses"
        print(why)
        assert pauses > 0, why
        assert not [ln for e in errs for ln in e.splitlines() if "left running by" in ln], f"{why}: {errs}"
        for op_id, log in zip(ids, logs, strict=True):
            op = await ctl.get(op_id)
            assert op.status is Status.COMPLETED, f"{why}: {op_id} {op.status.value}"
            assert op.result == {"sum": sum(range(items))}, f"{why}: {op_id} {op.result}"
            ran = _count(log)
            assert ran == {str(k): 1 for k in range(items)}, f"{why}: {op_id} items run twice or never: {ran}"


async def _pause_and_resume(engine: Engine, op_id: str) -> bool:
    """Pause a running operation, wait until it stopped, queue it again; whether it was paused."""
    try:
        await engine.pause(op_id)
    except Conflict:
        return False
    await until(lambda: _settled(engine, op_id), 60)
    if (await engine.get(op_id)).status is not Status.PAUSED:
        return False
    await engine.resume(op_id)
    return True


async def _settled(engine: Engine, op_id: str) -> bool:
    return (await engine.get(op_id)).status is not Status.RUNNING


@pytest.mark.parametrize("rival_holds", [True, False])
def test_a_lock_taken_on_a_file_deleted_meanwhile_is_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rival_holds: bool
) -> None:
    """The race itself, made to happen every time: between our open and our flock, the holder lets go
    (deletes the file) and a rival makes and locks a new one at the path. Our flock on the deleted
    file must not count: with the rival holding the new file we get nothing; once it let go too we
    hold the file that is at the path."""
    from engine.store.sqlite import locks

    path = tmp_path / "op.lock"
    holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    real_flock = locks.fcntl.flock
    rival: list[int] = []

    def flock_after_the_race(fd: int, how: int) -> None:
        if not rival:
            locks.unlock(path, holder)  # the holder lets go: the file we opened has no name now
            rival.append(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            real_flock(rival[0], locks.fcntl.LOCK_EX | locks.fcntl.LOCK_NB)
            if not rival_holds:
                os.close(rival[0])  # the rival only probed: the new file stays, unlocked
        real_flock(fd, how)

    monkeypatch.setattr(locks.fcntl, "flock", flock_after_the_race)
    fd = locks.try_lock(path)
    if rival_holds:
        assert fd is None
        os.close(rival[0])
    else:
        assert fd is not None
        assert os.fstat(fd).st_ino == path.stat().st_ino, "the lock is on a file that is not at the path"
        locks.unlock(path, fd)


@pytest.mark.parametrize("kind", ["directory", "symlink", "fifo"])
async def test_something_other_than_a_file_at_a_lock_path_is_moved_aside(
    settings: Settings, tmp_path: Path, kind: str
) -> None:
    """A directory made at a queued operation's lock path failed its every claim as a store outage and,
    as it stayed the queue's head, every claim of the whole queue: nothing ran again. A symbolic link there
    was followed (the lock file made or locked wherever it pointed). Now it is moved aside and the
    operation runs; the link's target is untouched."""
    target = tmp_path / "elsewhere"
    target.write_text("not Outlast's\n")
    async with make_engine(settings, run_queue=False) as engine:
        first = await engine.submit(OperationSpec(type="ledger", params={"items": 2}))
        second = await engine.submit(OperationSpec(type="ledger", params={"items": 2}))
        lock = Path(settings.state_dir) / "locks" / f"{first.id}.lock"
        {"directory": lock.mkdir, "symlink": lambda: lock.symlink_to(target), "fifo": lambda: os.mkfifo(lock)}[kind]()
    async with make_engine(settings) as engine:
        for op in (first, second):
            assert (await asyncio.wait_for(engine.wait(op.id), 30)).status is Status.COMPLETED
    assert target.read_text() == "not Outlast's\n"
    [aside] = [p for p in lock.parent.iterdir() if p.name.startswith(f"{lock.name}.not-a-file-")]
    assert aside.is_symlink() if kind == "symlink" else (aside.is_dir() if kind == "directory" else aside.is_fifo())


def test_a_fifo_at_an_orphans_lock_path_does_not_hang_outlast_ls(tmp_path: Path) -> None:
    """``outlast ls`` probes each running operation's lock to tell a live run from an orphan; it opened a
    FIFO put there to read, and with no process holding it open (the runner dead) waited for a writer for
    ever. Now the probe never waits; the full path moves the FIFO aside and marks the orphan interrupted."""
    state = tmp_path / "state"
    env = {**os.environ, "OUTLAST_STATE_DIR": str(state)}
    env.pop("OUTLAST_DEBUG", None)

    def outlast(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "engine.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=30
        )  # no --plugin: with one, ``ls`` takes the full path, not the quick listing

    r = outlast("--json", "run", "demo", "-p", "items=2000", "-p", "seconds=0.02", "--detach")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    op_id, pid = out["id"], out["pid"]
    lock = state / "locks" / f"{op_id}.lock"

    async def done() -> int:  # read in this process: a process started for each look cost more than the rest
        async with open_store(state) as store:
            return (await store.get(op_id)).progress.done

    deadline = time.monotonic() + 30
    while asyncio.run(done()) < 5:  # running, and said so
        assert time.monotonic() < deadline, "the detached run never ran"
        time.sleep(0.05)
    os.killpg(pid, signal.SIGKILL)
    lock.unlink()
    os.mkfifo(lock)
    r = outlast("ls")  # the quick listing (``--json`` takes the full path)
    assert r.returncode == 0, r.stderr
    [row] = r.stdout.splitlines()[1:]
    assert op_id in row and " interrupted " in row, r.stdout
