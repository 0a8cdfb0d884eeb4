"""The flock that holds a running operation of the SQLite store: ``locks/ID.lock``, released by the
kernel when its process dies, so any engine can tell an orphan from a live operation.

A lock file let go of is kept by its process as a spare (``Spares``): renamed ``locks/.spare-PID-STORE-N`` by a
link and an unlink, still flocked, and linked to the next claimed operation's path in place of a new file.
No inode is made or freed per claim: on ext4 without a journal each new inode is searched past every one
freed in the last minute (``recently_deleted``), which cost a claim 25-270 us of the store's thread here."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import resource
from pathlib import Path

from ...files import NotRegular, move_aside, open_regular

log = logging.getLogger("outlast.store")

_HELD: set[int] = set()
"""The fds of the locks this process holds, closed in any child forked from it (``_forget``)."""


WAL_WRITE_LOCK = 120
"""The byte of ``outlast.db-shm`` that SQLite locks (a POSIX ``fcntl`` lock) for as long as a write transaction of
the database lasts in WAL mode, its commit's fsync included (``WALINDEX_LOCK_OFFSET``, slot 0)."""


def write_lock_holders(db_path: Path) -> list[int]:
    """The processes that hold SQLite's write lock on ``db_path`` (a WAL database) now, read from ``/proc/locks``
    (Linux; empty elsewhere, or when none does). Not asked with ``F_GETLK`` on the ``-shm`` file: this process
    would open it, and closing any descriptor of a file lets go of every POSIX lock the process holds on it,
    its own SQLite connection's included."""
    try:
        st = os.stat(f"{db_path}-shm")
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in lines:
        # "1: POSIX  ADVISORY  WRITE 8544 fe:00:3047476 120 120"; a waiter's line has "->" after its number
        f = line.split()
        if len(f) != 8 or f[1] != "POSIX" or f[3] != "WRITE" or f[5] != where:
            continue
        with contextlib.suppress(ValueError):
            covers = int(f[6]) <= WAL_WRITE_LOCK and (f[7] == "EOF" or int(f[7]) >= WAL_WRITE_LOCK)
            if covers and (pid := int(f[4])) > 0 and pid not in pids:
                pids.append(pid)
    return pids


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


def try_lock(path: Path, spares: Spares | None = None) -> int | None:
    """An exclusive flock on the lock file at ``path`` (made if missing, from one of ``spares`` when there
    is one): its fd, or None while another process holds it.

    The lock is the file *at the path*: the holder lets go of it by taking it away from the path (deleting
    it, or renaming it a spare), so a process that opened the path just before may get the flock on a file
    no longer there while another makes and locks a new one. Such a lock is checked for (the file the path
    names now is another one, or none) and taken again on the file that is."""
    if spares is not None and (fd := spares.place(path)) is not None:
        return fd
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if at_path(path, fd):
                _HELD.add(fd)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # let go of and taken away since we opened it


def at_path(path: Path, fd: int) -> bool:
    """Whether the file open as ``fd`` is the one at ``path`` now (not one deleted or renamed since)."""
    try:
        there = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)


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


def unlock(path: Path, fd: int, spares: Spares | None = None) -> None:
    """Let go of a lock taken with ``try_lock``: the file taken away from the path while still held (kept
    as one of ``spares``, still flocked, or deleted), then closed unless kept. Only our own file is taken
    away: deleting whatever was at the path let a third process lock a new file there beside the holder of
    the one deleted (two attempts of one operation, each holding "its" lock)."""
    if spares is not None and spares.keep(path, fd):
        return
    with contextlib.suppress(OSError):
        if at_path(path, fd):  # ours deleted by hand meanwhile, the file there now is another process's lock
            os.unlink(path)
    _HELD.discard(fd)
    os.close(fd)


SPARE = ".spare-"
"""The names of spares in the locks directory: ``.spare-PID-STORE-N`` (never ``*.lock``: no operation's)."""

_numbers = itertools.count()


def _spares_allowed() -> int:
    """How many spares a store keeps: 64, fewer under a low ``ulimit -n`` (each is an open descriptor)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 64 if soft == resource.RLIM_INFINITY else max(0, min(64, soft // 32))


class Spares:
    """Lock files this store let go of, kept flocked under a name of their own (``SPARE``) to be the
    lock files of its next claims: ``place`` links one to an operation's path (never over a file there),
    ``keep`` takes a released one back. Every spare is flocked by this process for as long as it is one, so
    a process that opened an operation's path just before it was let go of meets a held file (as it did
    before the file was deleted), and ``try_lock`` tells a file at the path from one taken away by its
    inode. Spares of a process that died are free: ``sweep`` deletes them. Used on the store's thread only."""

    def __init__(self, lock_dir: Path) -> None:
        self.dir = lock_dir
        self.allowed = _spares_allowed()
        self._kept: list[tuple[str, int]] = []
        self._prefix = os.path.join(lock_dir, f"{SPARE}{os.getpid()}-{next(_numbers)}-")
        self._free: list[str] = []
        """Names of spares placed since, given again first: the same few names whatever runs (a listing of
        the state dir before and after a run finds the same files)."""
        self._named = 0

    def __len__(self) -> int:
        return len(self._kept)

    def place(self, path: Path) -> int | None:
        """A spare's fd, linked to ``path`` and no longer a spare; None: none kept, or a file is at ``path``
        (``try_lock`` opens that one)."""
        while self._kept:
            name, fd = self._kept[-1]
            try:
                os.link(name, path)
            except FileExistsError:
                return None
            except FileNotFoundError:  # the spare deleted by hand (or the locks directory): not one now
                self._kept.pop()
                self._free.append(name)
                _close(fd)
                continue
            except OSError:  # no hard links here: no spares either
                self.close()
                return None
            self._kept.pop()
            with contextlib.suppress(OSError):
                os.unlink(name)
                self._free.append(name)
            return fd
        return None

    def keep(self, path: Path, fd: int) -> bool:
        """Keep the lock file at ``path``, held as ``fd``, as a spare: renamed, still flocked. False when it
        is not kept (enough spares, or it cannot be: the caller deletes and closes it)."""
        if len(self._kept) >= self.allowed:
            return False
        if self._free:
            name = self._free.pop()
        else:
            name = f"{self._prefix}{self._named}"
            self._named += 1
        try:
            os.link(path, name)
        except FileExistsError:  # not ours (put there by hand): never given again
            return False
        except OSError:  # the file deleted by hand, no hard links here: let go of as before
            self._free.append(name)
            return False
        try:
            if not at_path(Path(name), fd):  # ours was deleted by hand and another file made at the path
                raise FileNotFoundError(name)
            os.unlink(path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(name)
                self._free.append(name)
            return False
        self._kept.append((name, fd))
        return True

    def close(self) -> None:
        """Delete every spare (while still held), then let go."""
        kept, self._kept = self._kept, []
        for name, fd in kept:
            with contextlib.suppress(OSError):
                os.unlink(name)
                self._free.append(name)
            _close(fd)

    @staticmethod
    def sweep(lock_dir: Path) -> None:
        """Delete the spares left in ``lock_dir`` by processes that died (killed: their ``close`` never ran):
        a spare whose flock is free is no live store's."""
        try:
            names = [n for n in os.listdir(lock_dir) if n.startswith(SPARE)]
        except OSError:
            return
        for name in names:
            path = os.path.join(lock_dir, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if at_path(Path(path), fd):
                    os.unlink(path)
            except OSError:
                pass  # held: a live store's spare
            finally:
                os.close(fd)


def _close(fd: int) -> None:
    _HELD.discard(fd)
    with contextlib.suppress(OSError):
        os.close(fd)
