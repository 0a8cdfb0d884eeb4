"""A lock file in the state dir that belongs to another user (what a run as root there left behind, before
such a run was refused).

The check runs the store in a forked child that has become ``nobody``, in a state dir that is that user's,
holding a lock file root made (0600): it made every command fail (exit 8), ``submit`` and ``ls`` among
them, with the operation running for ever and nothing saying whose file it was. (A log of another user's,
or a link in a log's place: test_state_dir_trust.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from engine import WorkerInfo, open_store
from engine.models import Status
from engine.store import Store
from tests.fixtures_engine import queued_record

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes files as root and reads them as another user")


@pytest.fixture
def state() -> Iterator[Path]:
    """A state dir of ``nobody``'s, in a directory that user can reach (pytest's own is root's, 0700)."""
    top = Path(tempfile.mkdtemp(prefix="outlast-other-user-"))
    top.chmod(0o755)
    try:
        yield top / "state"
    finally:
        shutil.rmtree(top)


def give_to_nobody(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        os.lchown(p, NOBODY, NOBODY)


def as_nobody(state: Path, check: Callable[[Store, list[str]], Awaitable[None]]) -> list[str]:
    """Run ``check`` on the store at ``state`` in a child that has become ``nobody``; the log lines it wrote
    (warnings and up), or the child's traceback as a failure."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            said: list[str] = []

            class Keep(logging.Handler):
                def emit(self, record: logging.LogRecord) -> None:
                    said.append(record.getMessage())

            logging.getLogger("outlast").addHandler(Keep(logging.WARNING))

            async def go() -> None:
                store = open_store(state)
                await store.open()
                try:
                    await check(store, said)
                finally:
                    await store.close()

            asyncio.run(go())
            os.write(write, "\n".join(said).encode())
        except BaseException:
            os.write(write, ("FAILED\n" + traceback.format_exc()).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and not out.startswith("FAILED"), out
    return out.splitlines()


async def _running(state: Path) -> str:
    """An operation claimed by a process that is gone (as root's killed worker leaves it), made as root."""
    store = open_store(state)
    await store.open()
    try:
        op = queued_record()
        await store.create(op)
        assert await store.claim(WorkerInfo(host="gone", pid=1), time.time(), 300.0, op_id=op.id) is not None
        return op.id
    finally:
        await store.close()


def test_a_lock_file_of_another_users_leaves_its_operation_alone_and_says_what_to_do(state: Path) -> None:
    op_id = asyncio.run(_running(state))
    give_to_nobody(state)
    root_lock = state / "locks" / f"{op_id}.lock"
    root_lock.touch()
    os.chown(root_lock, 0, 0)
    root_lock.chmod(0o600)

    async def check(store: Store, said: list[str]) -> None:
        queued = queued_record()
        await store.create(queued)  # the store goes on: other work is submitted and claimed
        assert await store.find_orphans() == []  # not taken for dead: whether root's attempt runs is unknown
        assert (await store.get(op_id)).status is Status.RUNNING
        claimed = await store.claim(WorkerInfo(host="test", pid=os.getpid()), time.time(), 300.0)
        assert claimed is not None and claimed.id == queued.id
        await store.find_orphans()

    said = as_nobody(state, check)
    about = [s for s in said if f"locks/{op_id}.lock cannot be opened" in s]
    assert len(about) == 1, said  # said once, not at every look
    assert "it belongs to root (uid 0)" in about[0] and "delete that file" in about[0], about
