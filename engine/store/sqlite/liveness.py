"""Liveness of the SQLite store: a running operation is held by its flock (locks.py), which the kernel
keeps while its process lives and releases when it dies; an operation marked running whose lock
anyone can take is an orphan, unless the process its record names is alive on this host (its lock file
was deleted by hand: a "stale lock" cleaned up, a temp cleaner), which makes the file again."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from ...models import Operation
from ...processes import process_start, stopped_note
from .core import SqliteCore
from .locks import at_path, close_lock

log = logging.getLogger("outlast.store")


RELOCK_WINDOW = 30.0
"""Seconds a free lock file may have existed while the process its record names lives: a holder makes its
deleted lock file again within a heartbeat (a second), so one free for longer is not its own."""


def _alive_here(op: Operation) -> bool:
    """Whether the process ``op``'s record says runs it is alive on this host and started before it
    claimed ``op`` (a pid taken by another process since started later; a zombie is dead). Not this
    process: a record naming it that it does not hold is one it let go (a final status it could not
    write: let go so that it is found orphaned)."""
    worker, started = op.worker, op.started_at
    if worker is None or started is None or worker.host != socket.gethostname() or worker.pid == os.getpid():
        return False
    if worker.boot is not None and worker.start is not None:
        # Who the pid is by the kernel's count since boot: the wall-clock test below took a live process
        # for a dead one after the clock stepped (its start recomputed from the new time came out after
        # its claim): with its lock file deleted, `outlast ls` stopped it, and a worker ran it beside it.
        return process_start(worker.pid) == (worker.boot, worker.start)
    import psutil  # here: a command that finds no orphan never needs it (about 7 ms at each start)

    try:
        proc = psutil.Process(worker.pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= started + 1.0
    except psutil.Error:
        return False


def _stopped_here(op: Operation) -> bool:
    """Whether the process ``op``'s record names is stopped on this host (Ctrl-Z, SIGSTOP): it makes its deleted
    lock file again only once continued, however long that takes."""
    worker = op.worker
    if worker is None:
        return False
    note = stopped_note(worker.host, worker.pid, worker.boot, worker.start)
    return note is not None and note.startswith("stopped")


class LivenessMixin(SqliteCore):
    """Holding, letting go of, and finding orphaned operations (part of LocalStore)."""

    async def release(self, op_id: str, epoch: int | None = None) -> None:
        # Usually let go already by the final transition's commit; a running record is a newer
        # attempt's (the flock carries no epoch), so the lock stays with it.
        if op_id in self._held:
            await self._run(self._unlock_unless_running, op_id, epoch)

    async def heartbeat(self, op_ids: list[str]) -> None:
        # The kernel keeps an flock as long as its process lives, but not its file: one deleted by hand
        # is made again, so that the quick listing and other processes see the operation held.
        if self._held:
            await self._run(self._relock)

    async def at_rest(self, fn: Callable[[], None]) -> None:
        await self._run(fn)  # a job of the store's thread runs between two group commits, never inside one

    def _relock(self) -> None:
        for op_id, fd in list(self._held.items()):
            if at_path(self._lock_file(op_id), fd):
                continue
            new = self._try_lock(op_id)
            if new is None:
                continue  # another process holds the file now at the path: the record fences this attempt
            self._held[op_id] = new
            close_lock(fd)
            log.warning("operation %s: its lock file was deleted while it ran; made again", op_id)

    async def left_orphaned(self) -> list[str]:
        """Operations interrupted when found orphaned and left so since (``Operation.orphaned_epoch`` is still
        their epoch): what a queue-running engine with ``auto_resume`` resumes. Another engine (``outlast ls``,
        a ``watch``) often finds an orphan first and runs no queue. (A Redis store queues every orphan again
        as it is found; its ``left_orphaned`` finds those an engine killed in between left.)"""

        def do() -> list[str]:
            rows = self._db.execute(
                "SELECT id FROM operations INDEXED BY ops_status_created WHERE status='interrupted'"
                " AND (CASE WHEN json_valid(record) THEN json_extract(record, '$.orphaned_epoch') END) = epoch"
                " ORDER BY created_at, id"
            )
            return [op_id for (op_id,) in rows]

        return await self._run(do)

    async def find_orphans(self) -> list[Operation]:
        def do() -> list[Operation]:
            out = []
            conn = self._db
            for (op_id,) in conn.execute("SELECT id FROM operations WHERE status='running'").fetchall():
                if op_id in self._held:
                    continue
                try:
                    made: float | None = os.stat(self._lock_file(op_id)).st_ctime
                except OSError:
                    made = None
                if self._lock(op_id):
                    try:
                        row = conn.execute("SELECT status FROM operations WHERE id=?", (op_id,)).fetchone()
                        if row and row[0] == "running":
                            op = self._row_op(conn, op_id)
                            # A lock file free for long, though its process lives: that process holds the
                            # lock of another state dir (this one a copy of it, made while it ran): the
                            # operation stayed running here for as long as that process lived. Not a
                            # stopped one (Ctrl-Z, SIGSTOP), which cannot make its deleted lock file again
                            # until continued: its live work was marked interrupted 30 s after a `rm
                            # locks/*`, and run beside it once continued.
                            stale = made is not None and time.time() - made > RELOCK_WINDOW and not _stopped_here(op)
                            if stale or not _alive_here(op):
                                out.append(op)
                    finally:
                        # Keep no lock: the caller marks it interrupted with the epoch it read.
                        close_lock(self._held.pop(op_id))
            return out

        return await self._run(do)
