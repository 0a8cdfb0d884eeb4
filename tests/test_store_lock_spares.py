"""Local store: lock files let go of are kept as spares (``locks/.spare-PID-STORE-N``, still flocked) and linked to
the next claims' paths, so no inode is made or freed per claim; spares are deleted at close, and those of a
process killed are deleted by the next store opened on the state dir, never a live process's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine import Status, open_store
from engine.models import Operation, WorkerInfo, new_id
from engine.store.sqlite import locks
from tests.conftest import REPO

RUNNING = frozenset({Status.RUNNING})


def _spares(state: Path) -> list[Path]:
    return sorted(p for p in (state / "locks").iterdir() if p.name.startswith(locks.SPARE))


def _queued() -> Operation:
    now = time.time()
    return Operation(id=new_id(), type="demo", created_at=now, queued_at=now, updated_at=now)


async def test_a_claim_takes_the_lock_file_the_last_settle_let_go_of(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = open_store(state)
    await store.open()
    me = WorkerInfo(host="test", pid=os.getpid())
    try:
        first, second = _queued(), _queued()
        for op in (first, second):
            await store.create(op)
        claimed = await store.claim(me, time.time(), 0, op_id=first.id)
        assert claimed is not None
        made = (state / "locks" / f"{first.id}.lock").stat().st_ino
        await store.transition(first.id, Status.COMPLETED, epoch=claimed.epoch, expect=RUNNING)
        [spare] = _spares(state)  # the settled operation's lock file, under another name, still held
        assert spare.stat().st_ino == made and not (state / "locks" / f"{first.id}.lock").exists()
        assert locks.try_lock(spare) is None, "a spare must stay flocked by its store"
        claimed = await store.claim(me, time.time(), 0, op_id=second.id)
        assert claimed is not None
        assert (state / "locks" / f"{second.id}.lock").stat().st_ino == made and not _spares(state)
        await store.transition(second.id, Status.COMPLETED, epoch=claimed.epoch, expect=RUNNING)
        assert _spares(state) == [spare]  # its name given again: the store's files are the same after a run
    finally:
        await store.close()
    assert list((state / "locks").iterdir()) == []


HOLDER = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from engine import Status, open_store
    from engine.models import Operation, WorkerInfo, new_id

    async def main(state):
        store = open_store(state)
        await store.open()
        now = time.time()
        op = Operation(id=new_id(), type="demo", created_at=now, queued_at=now, updated_at=now)
        await store.create(op)
        claimed = await store.claim(WorkerInfo(host="holder", pid=os.getpid()), now, 0, op_id=op.id)
        await store.transition(op.id, Status.COMPLETED, epoch=claimed.epoch, expect=frozenset({Status.RUNNING}))
        print("ready", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_a_killed_process_s_spares_are_deleted_by_the_next_open_never_a_live_one_s(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(state)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        [spare] = _spares(state)
        other = open_store(state)
        await other.open()  # the spare's process lives: its spare is left alone
        await other.close()
        assert _spares(state) == [spare]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert _spares(state) == [spare]  # nothing deleted it: its process's close never ran
        other = open_store(state)
        await other.open()
        assert _spares(state) == []
        await other.close()
    finally:
        proc.kill()
        proc.wait(30)


@pytest.mark.parametrize("rival_holds", [True, False])
def test_a_lock_taken_on_a_file_made_a_spare_meanwhile_is_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rival_holds: bool
) -> None:
    """Between our open and our flock, the holder lets go of the file (renamed a spare) and is killed (its
    spare left, free), and a rival makes and locks a new file at the path. The file we flocked still has a
    name, the spare's: counting its names took it for the file at the path (two holders); the inode at the
    path decides now."""
    path = tmp_path / "op.lock"
    holder_spares = locks.Spares(tmp_path)
    holder = locks.try_lock(path, holder_spares)
    assert holder is not None
    real_flock = locks.fcntl.flock
    rival: list[int] = []

    def flock_after_the_race(fd: int, how: int) -> None:
        if not rival:
            locks.unlock(path, holder, holder_spares)  # kept as a spare: renamed, still held
            os.close(holder)  # the holder is killed: its spare stays, free
            rival.append(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            real_flock(rival[0], locks.fcntl.LOCK_EX | locks.fcntl.LOCK_NB)
            if not rival_holds:
                os.close(rival[0])  # the rival only probed: the new file stays, unlocked
        real_flock(fd, how)

    monkeypatch.setattr(locks.fcntl, "flock", flock_after_the_race)
    fd = locks.try_lock(path)
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(locks.SPARE)]) == 1
    if rival_holds:
        assert fd is None
        os.close(rival[0])
    else:
        assert fd is not None
        assert os.fstat(fd).st_ino == path.stat().st_ino, "the lock is on a file that is not at the path"
        locks.unlock(path, fd)


def test_a_file_another_process_made_at_the_path_is_never_kept_as_a_spare(tmp_path: Path) -> None:
    """Our lock file deleted by hand, another process made and locked a new one at the path before we let go:
    keeping "the file at the path" as our spare kept that process's file under our name, and the next claim
    linked it to its own path while holding ours. Nor is it deleted: a third process would make and lock a
    new file at the path while that process still held the one deleted."""
    spares = locks.Spares(tmp_path)
    path, other_path = tmp_path / "a.lock", tmp_path / "b.lock"
    fd = locks.try_lock(path, spares)
    assert fd is not None
    path.unlink()  # a "stale lock" cleanup
    theirs = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    locks.fcntl.flock(theirs, locks.fcntl.LOCK_EX | locks.fcntl.LOCK_NB)
    try:
        locks.unlock(path, fd, spares)
        assert len(spares) == 0
        assert path.stat().st_ino == os.fstat(theirs).st_ino, "their lock file was deleted from under them"
        mine = locks.try_lock(other_path, spares)
        assert mine is not None and os.fstat(mine).st_ino == other_path.stat().st_ino
        locks.unlock(other_path, mine, spares)
    finally:
        os.close(theirs)
        spares.close()
