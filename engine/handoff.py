"""Who took work queued for a background process: that process, or a runner that claimed it first.

``outlast run --detach`` (and ``rerun``/``resume --detach``) and the dashboard's hand-over queue work and
start a process to run it. A worker already running on the same store may claim it first; the process
started then finds nothing to do and exits at once, and the pid printed for it named a process that was
gone (or, once reused, another one a ``kill PID`` would hit). The command that started it waits for the
claim (a fraction of a second: the start-up of the process) and says who runs the work.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable

from .models import Operation, Status

TAKE_WAIT = 5.0
"""Seconds a command that started a background runner waits to see who claimed its work. Past it (every
store slot in use, a slow start) the runner is said to be waiting, with its pid: it is alive."""


def run_by(op: Operation, pid: int) -> bool:
    """Whether ``op`` was claimed by process ``pid`` of this host."""
    worker = op.worker
    return op.status is not Status.QUEUED and worker is not None and worker.pid == pid and worker.host == host()


def host() -> str:
    return socket.gethostname()


async def wait_taken(
    get: Callable[[str], Awaitable[Operation]],
    op_ids: Iterable[str],
    runner: subprocess.Popen[bytes],
    timeout: float = TAKE_WAIT,
) -> dict[str, Operation]:
    """The records of ``op_ids`` (``get``: a store's or an engine's read) once none is queued, once the
    ``runner`` started for them has exited (read after its exit: what it did is in them), or at
    ``timeout``, whichever comes first."""
    ids = list(op_ids)
    end = time.monotonic() + timeout
    while True:
        exited = runner.poll() is not None
        ops = {op_id: await get(op_id) for op_id in ids}
        if exited or time.monotonic() >= end or all(op.status is not Status.QUEUED for op in ops.values()):
            return ops
        await asyncio.sleep(0.05)


def claimed(op: Operation, queued_epoch: int | None = None) -> bool:
    """Whether a process claimed ``op`` since it was queued (it runs it, or ran it and it settled), ``queued_epoch``
    being its epoch then, when known (each claim moves it on); else whether it runs, or its last attempt started
    after it was queued. Paused or cancelled while still queued, it was claimed by nobody, though its record still
    names the process of its attempt before (long gone, often): that one did not take it."""
    if op.worker is None or op.status is Status.QUEUED:
        return False
    if queued_epoch is not None:
        return op.epoch > queued_epoch
    return op.status is Status.RUNNING or (op.started_at is not None and op.started_at >= op.queued_at)


def taker(op: Operation, queued_epoch: int | None = None) -> str:
    """Who took ``op`` (not the runner started for it): ``worker host:pid``, or what became of it (``queued_epoch``:
    as for ``claimed``)."""
    if claimed(op, queued_epoch):
        return f"worker {op.worker}"
    return f"another command ({op.status.value})"
