"""backup_operation's reading side: every source file is reached from a descriptor of the source's root, one
directory at a time without following a symlink, so a directory swapped for a link after the listing never
makes the backup read from outside the source. And the destination check that ``os.access`` cannot make:
a kernel pseudo file system (``/proc``, ``/sys``) says "writable" and takes no directory.

``Source.of`` does what cleanup's ``_parent`` does (cleanup.py), keeping the last directory open for a
batch of siblings; the two could share one helper.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

from ..files import NotRegular
from ._common import libc_function

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_A_DIR = {errno.ELOOP, errno.ENOTDIR, errno.EMLINK}
"""What opening a symlink (ELOOP; EMLINK on the BSDs) or a file (ENOTDIR) with ``DIR_FLAGS`` raises."""
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


class NotFollowed(OSError):
    """A directory on a source file's path is no longer a real directory (a symlink, a file): not followed."""


class Source:
    """Reaches the directory holding a source file from a descriptor of the source's root, keeping the last
    one open: a batch's files are sorted, so mostly siblings cost one ``openat`` each. One per thread, closed
    by that thread (``with``): a descriptor shared with a thread an attempt left running (a forced stop does
    not stop a thread) could be closed under it, and its number reused for another directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root_fd = -1  # opened at the first ``of``: a root gone since the listing is each file's error
        self.rel = ""
        self.fd = -1

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._drop()
        if self.root_fd != -1:
            os.close(self.root_fd)
            self.root_fd = self.fd = -1

    def _drop(self) -> None:
        """Close the directory kept, unless it is the root."""
        if self.fd != self.root_fd:
            os.close(self.fd)
        self.fd, self.rel = self.root_fd, ""

    def of(self, rel: str) -> tuple[int, str]:
        """(descriptor of the directory holding ``rel``, its last name): valid until the next call. NotFollowed
        when a directory on the way is not a real directory, another OSError when it is gone."""
        if self.root_fd == -1:
            self.root_fd = self.fd = os.open(self.root, DIR_FLAGS)
        head, _, name = rel.rpartition("/")
        if name in ("", ".", ".."):
            raise NotFollowed(errno.ELOOP, "not a name in the source", rel)
        if head == self.rel:
            return self.fd, name
        if self.rel and head.startswith(self.rel + "/"):  # below the one kept: go on from there
            start, parts = self.fd, head[len(self.rel) + 1 :].split("/")
        else:
            self._drop()
            if not head:
                return self.root_fd, name
            start, parts = self.root_fd, head.split("/")
        fd = start
        try:
            for part in parts:
                if part in ("", ".", ".."):  # never in a listing; would climb out of the root
                    raise NotFollowed(errno.ELOOP, "not a name in the source", rel)
                try:
                    sub = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in _NOT_A_DIR:
                        raise NotFollowed(
                            e.errno, "a directory on its path is no longer a real directory", rel
                        ) from None
                    raise
                if fd != start:
                    os.close(fd)
                fd = sub
        except BaseException:
            if fd != start:
                os.close(fd)
            raise
        if start != self.root_fd:
            os.close(start)
        self.fd, self.rel = fd, head
        return fd, name

    def open(self, rel: str) -> int:
        """``rel`` opened for reading (``open_file``): the caller closes it."""
        d, name = self.of(rel)
        return open_file(d, name)

    def open_dir(self, rel: str) -> int:
        """The directory ``rel`` (``""``: the root) opened, not followed if it is a link (NotFollowed): the
        caller closes it."""
        if not rel:
            if self.root_fd == -1:
                self.root_fd = self.fd = os.open(self.root, DIR_FLAGS)
            return os.dup(self.root_fd)
        d, name = self.of(rel)
        try:
            return os.open(name, DIR_FLAGS, dir_fd=d)
        except OSError as e:
            if e.errno in _NOT_A_DIR:
                raise NotFollowed(e.errno, "not a real directory any more", rel) from None
            raise

    def lstat_dir(self, rel: str) -> os.stat_result:
        """The directory ``rel`` (not ``""``) as its parent lists it, not followed: for one that cannot be
        opened (mode 000), whose mode and times its copy still takes."""
        d, name = self.of(rel)
        return os.stat(name, dir_fd=d, follow_symlinks=False)


def open_file(dir_fd: int, name: str) -> int:
    """A source file opened for reading without following a link or waiting: NotRegular when it is no
    regular file (a link, a FIFO swapped in after the listing, which made ``open`` wait for ever)."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.EISDIR, errno.ELOOP):
            raise NotRegular(e.errno, "not a regular file", name) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegular(errno.EINVAL, "not a regular file", name)
    os.set_blocking(fd, True)
    return fd


def same_version(a: os.stat_result, b: os.stat_result) -> bool:
    """``a`` and ``b`` are the same file with the same bytes, as far as its size and mtime tell (what tar
    checks to say "file changed as we read it")."""
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


# ---- the destination ---------------------------------------------------------------------------------------

_PSEUDO = {
    0x9FA0: "proc",
    0x62656572: "sysfs",
    0x27E0EB: "cgroup",
    0x63677270: "cgroup2",
    0x64626720: "debugfs",
    0x74726163: "tracefs",
    0x73636673: "securityfs",
    0xCAFE4A11: "bpf",
    0x6165676C: "pstore",
    0x62656570: "configfs",
    0x42494E4D: "binfmt_misc",
    0x65735543: "fusectl",
    0x1CD1: "devpts",
    0xDE5E81E4: "efivarfs",
}
"""Kernel file systems (statfs's f_type) where ``os.access`` says writable and no directory can be made."""

_STATFS = libc_function("statfs")
if _STATFS is not None:
    _STATFS.argtypes = [ctypes.c_char_p, ctypes.c_void_p]


def pseudo_fs(path: Path) -> str | None:
    """The name of the kernel pseudo file system ``path`` (an existing directory) is on; None for a real one,
    or when it cannot be told (not Linux)."""
    if _STATFS is None:
        return None
    buf = ctypes.create_string_buffer(512)  # struct statfs: f_type first, a long
    if _STATFS(os.fsencode(path), buf) != 0:
        return None
    return _PSEUDO.get(ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF)
