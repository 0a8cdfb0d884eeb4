"""The flock that holds a running operation of the SQLite store: ``locks/ID.lock``, released by the
kernel when its process dies, so any engine can tell an orphan from a live operation."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from ...files import NotRegular, move_aside, open_regular

log = logging.getLogger("outlast.store")

_HELD: set[int] = set()
"""The fds of the locks this process holds, closed in any child forked from it (``_forget``)."""


def _forget() -> None:
    """In a child forked from this process: close its copies of the lock fds (not unlock them, which
    would let go for the parent too). A flock belongs to the open file, which a fork shares: a child
    (each pool worker of multiprocessing's default start on Linux) held its parent's operations on,
    so that after the parent was killed they stayed running, never found orphaned, while it lived."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget)


def try_lock(path: Path) -> int | None:
    """An exclusive flock on the lock file at ``path`` (made if missing): its fd, or None while
    another process holds it.

    The lock is the file *at the path*: the holder deletes it when letting go (``unlock``), so a
    process that opened the path just before may get the flock on the deleted file while another
    makes and locks a new one. Such a lock is checked for (the open file has no name left: a lock
    file is only ever made at its path and deleted, never renamed or linked, so a file that still
    has a name is the one at the path) and taken again on the file that is."""
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.fstat(fd).st_nlink > 0:
                _HELD.add(fd)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # let go of and deleted since we opened it


def _open_lock(path: Path) -> int:
    """The lock file at ``path``, opened (made 0600 if missing). Anything else at the path (a directory, a
    symbolic link, a FIFO: made by hand, or a cleanup gone wrong) is moved aside first: a directory there
    failed every claim of the whole queue as a store outage, since the queue's head was always that
    operation; a link was followed to wherever it pointed."""
    while True:
        try:
            return open_regular(path, os.O_RDWR | os.O_CREAT, follow=False)
        except NotRegular:
            aside = move_aside(path)
            log.warning("lock file %s was not a regular file; moved to %s", path, aside.name)


def close_lock(fd: int) -> None:
    """Let go of a lock taken with ``try_lock`` and leave its file (the operation is still held by the
    record: the caller marks it). Closing the fd by hand left it among the fds a forked child closes, and
    the next file opened under that number (a pipe to a pool worker, a log) was closed in every child."""
    _HELD.discard(fd)
    os.close(fd)


def unlock(path: Path, fd: int) -> None:
    """Let go of a lock taken with ``try_lock``: delete the file while still holding it, then close."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    _HELD.discard(fd)
    os.close(fd)
