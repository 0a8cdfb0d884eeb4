"""Helpers shared by the built-in operations: where outputs go, path checks."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import math
import os
import sqlite3
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..files import free_bytes
from ..humanize import size

if TYPE_CHECKING:  # an annotation only: worker processes import this module without the engine
    from ..context import OperationContext

SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "__pycache__",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "site-packages",
    }
)


FULL_BELOW = 1 << 20
"""Bytes left on a file system below which an I/O error writing there is taken for a full disk."""


def disk_full(e: BaseException, what: str, path: str | Path) -> str | None:
    """One line saying ``what`` failed because the disk holding ``path`` is full, when ``e`` (or the error it
    was raised from or during) says so: SQLite's SQLITE_FULL, ENOSPC or EDQUOT, or an I/O error on a file system
    with less than FULL_BELOW left (SQLite's "disk I/O error" when a WAL's shared memory cannot be sized).
    None otherwise. SQLite's own words ("database or disk is full", "disk I/O error") named no file, and came
    with the handler's line, as if Outlast had a bug."""
    full = io = False
    seen: set[int] = set()
    err: BaseException | None = e
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        code = getattr(err, "sqlite_errorcode", None) if isinstance(err, sqlite3.Error) else None
        if code is not None:
            full |= code & 0xFF == sqlite3.SQLITE_FULL
            io |= code & 0xFF == sqlite3.SQLITE_IOERR
        elif isinstance(err, OSError):
            full |= err.errno in (errno.ENOSPC, errno.EDQUOT)
            io |= err.errno == errno.EIO
        err = err.__cause__ or err.__context__  # a KbError raised "from None" still has its context
    free = free_bytes(Path(path).parent)
    if not (full or (io and free is not None and free < FULL_BELOW)):
        return None
    left = f" ({size(free)} left)" if free is not None else ""
    return f"{what}: its disk is full{left}; free some space there"


def output_dir(ctx: OperationContext) -> Path:
    """Where an operation puts what it makes: ``ctx.output_dir`` (``outputs`` in the state directory)."""
    return ctx.output_dir


CHANGE_SLACK = 0.0
"""Seconds before ``reading_since`` from which a file's change time counts as a change. None: a file written
before the run began has a ctime before it (the kernel stamps a change from a clock that lags, never leads,
``time.time()``), and with a slack of 2 s each resume read again every file written in the 2 s before the run
(a checkout or a build followed at once by a scan: all of them). What is missed: a file read and changed again
within the clock's tick after the start (about 4 ms), or within the first second on a file system that keeps
times by the second (ext3's small inodes, FAT)."""


def reading_since(ctx: OperationContext) -> float | None:
    """When the operation's first attempt began reading its tree, kept in its state (set by the first call, before
    any item is done), as this process's wall clock reads that moment now (``since_in_this_clock``); None for an
    operation resumed from a checkpoint written before it was kept."""
    st = ctx.state
    if "reading_since" not in st:
        if ctx.done_keys:
            return None
        st.update(reading_mark())
    return since_in_this_clock(float(st["reading_since"]), st.get("reading_since_boot"))


def reading_mark() -> dict[str, Any]:
    """Now, for a state's ``reading_since``: the wall clock, and where this boot's clock stands (a resume then
    takes changes from this moment on, whatever either process's wall clock said: ``since_in_this_clock``)."""
    return {"reading_since": time.time(), "reading_since_boot": _boot_clock()}


def since_in_this_clock(since: float, boot: Any) -> float:
    """``since`` (a wall time kept by an earlier attempt) or, when earlier, that moment as this process's wall clock
    reads it now: now less the time since then by this boot's clock (``boot``, from ``_boot_clock`` then).

    A file's ctime is the kernel's wall clock at the change; ``since`` was the wall clock of the process that began
    reading. When that clock was ahead (a clock stepped back by NTP since, a process under libfaketime), a change
    made after the kill had a ctime before ``since``, was taken for none, and a resumed backup ended "completed"
    with the copy of the file before the change. The earlier of the two counts every change (a few files more may
    be read again); another boot since (a reboot, another machine) leaves ``since`` as it was."""
    now_boot = _boot_clock()
    if not (isinstance(boot, list) and len(boot) == 2 and now_boot is not None and boot[0] == now_boot[0]):
        return since
    try:
        ran = now_boot[1] - float(boot[1])
    except (TypeError, ValueError):
        return since
    if not math.isfinite(ran) or ran < 0:  # not this boot's clock as kept: nothing to go by
        return since
    return min(since, time.time() - ran)


def _boot_clock() -> list[Any] | None:
    """[this boot's id, seconds since it by a clock no step of the wall clock moves]; None where there is none."""
    from ..processes import boot_id  # here: the module imports asyncio, which `submit`'s quick path never loads

    boot = boot_id()
    if boot is None or not hasattr(time, "CLOCK_BOOTTIME"):
        return None
    return [boot, time.clock_gettime(time.CLOCK_BOOTTIME)]


def changed_since(root: str | Path, rels: Iterable[str], since: float) -> set[str]:
    """The files of ``rels`` (relative to ``root``) whose inode changed since ``since`` (its ctime, which no one
    sets back: new content, a mode, a rename, even an mtime put back by hand; or an mtime in the future).

    A file an earlier attempt read, then changed before the resume, was kept as that attempt read it: a
    security scan missed a key added to it, an analysis kept its old functions and imports. Gone files are
    left out: the end of the run drops what the listing no longer has."""
    cut = since - CHANGE_SLACK
    out = set()
    for rel in rels:
        try:
            st = os.lstat(os.path.join(root, rel))
        except OSError:
            continue
        if st.st_ctime >= cut or st.st_mtime >= cut:
            out.add(rel)
    return out


READ_CHUNK = 1 << 20


def read_upto(fh: Any, limit: int, size: int) -> bytes:
    """At most ``limit`` bytes of the file ``fh`` from where it is, ``size`` the size its stat gave: one read of
    ``size + 1`` bytes (a read that comes short is the end), then reads of READ_CHUNK at most. One read of
    ``limit + 1`` bytes allocated that much for every file (64 MB for each document of a knowledge base), and
    a file of /proc or /sys, whose stat says 0 bytes, refused a read that large (ENOMEM): a scan of one failed
    on every file ("Cannot allocate memory")."""
    first = min(limit, size + 1)
    data = fh.read(first)
    if len(data) < first or len(data) >= limit:
        return data
    parts = [data]
    n = len(data)
    while n < limit and (more := fh.read(min(READ_CHUNK, limit - n))):
        parts.append(more)
        n += len(more)
    return b"".join(parts)


def not_blank(value: str, name: str) -> str:
    """``value`` unless it is empty or only whitespace (a ValueError naming ``name``).

    ``Path("")`` is ``.``: ``-p root=$ROOT`` with ROOT unset named the current directory, and cleanup
    deleted there, backup copied it."""
    if not str(value).strip():
        raise ValueError(f"{name} is empty: give a path (an unset shell variable?)")
    return value


def existing_dir(value: str, name: str) -> str:
    """``value`` as an absolute path to an existing directory, or a ValueError naming ``name``."""
    p = Path(not_blank(value, name)).expanduser()
    if not p.is_dir():
        raise ValueError(f"{name} {value!r} is not an existing directory")
    return str(p.resolve())


def existing_path(value: str, name: str) -> str:
    """``value`` as an absolute path to something that exists, or a ValueError naming ``name``."""
    p = Path(not_blank(value, name)).expanduser()
    if not p.exists():
        raise ValueError(f"{name} {value!r} does not exist")
    return str(p.resolve())


def optional_dir(value: str | None, name: str) -> str | None:
    return None if value is None else existing_dir(value, name)


SQLITE_MAGIC = b"SQLite format 3\0"
JSON_MAGIC = b"{"


def check_output_file(value: str | None, name: str, magic: bytes | None = None, kind: str = "") -> str | None:
    """``value`` as an absolute path when an output file can be written there, else a ValueError naming
    ``name``.

    Checked before anything is stored: not a directory, a writable directory to go in, and an existing
    file only when it is empty or of the expected ``kind`` (its first bytes are ``magic``), so a typo
    cannot overwrite a source file or a document. Absolute because the params are stored: a relative
    path was read against the directory of whichever process ran the operation (a worker started
    elsewhere, a resume typed in another directory), so an index was half in one file, half in another.
    """
    if value is None:
        return None
    p = Path(not_blank(value, name)).expanduser()
    if p.is_dir():
        raise ValueError(f"{name} {value!r} is a directory: expected a file path")
    parent = p.resolve().parent
    if not parent.is_dir():
        raise ValueError(f"{name} {value!r}: its directory does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {value!r}: its directory is not writable")
    if p.exists():
        if not p.is_file():
            raise ValueError(f"{name} {value!r} exists and is not a regular file")
        if not os.access(p, os.W_OK):
            raise ValueError(f"{name} {value!r} exists and is not writable")
        if magic is not None and not _empty_or_starts_with(p, magic):
            raise ValueError(f"{name} {value!r} exists and is not {kind}: remove it or choose another path")
    return str(p.resolve())


def check_output_dir(value: str, name: str) -> str:
    """``value`` resolved when a directory can be created or written there, else a ValueError."""
    dest = Path(not_blank(value, name)).expanduser().resolve()
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"{name} {value!r} exists and is not a directory")
    nearest = dest
    while not nearest.exists():
        nearest = nearest.parent
    if not nearest.is_dir():
        raise ValueError(f"{name} {value!r}: {str(nearest)!r} is not a directory")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {value!r}: {str(nearest)!r} is not writable")
    return str(dest)


def _empty_or_starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(256).lstrip()
    except OSError:
        return False
    return not head or head.startswith(magic)


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NOT_A_DIR = {errno.ELOOP, errno.ENOTDIR, errno.EMLINK}
"""What opening a symlink (ELOOP; EMLINK on the BSDs) or a file (ENOTDIR) with ``DIR_FLAGS`` raises."""


class NotFollowed(Exception):
    """A directory on an item's path is no longer a real directory (a symlink, a file): it is not followed."""


@contextlib.contextmanager
def parent_of(root_fd: int, rel: str) -> Iterator[tuple[int, str]]:
    """(descriptor of the directory holding ``rel``, its last name), reached from ``root_fd`` one directory at
    a time without following a symlink, so the item is inside the root whatever was swapped in since the
    listing. Raises NotFollowed for a component that is not a real directory, OSError for others (gone)."""
    *dirs, name = rel.split("/")
    fd = root_fd
    try:
        for part in [*dirs, name]:
            if part in ("", ".", ".."):  # never in a listing; would climb out of the root
                raise NotFollowed(rel)
        for part in dirs:
            try:
                sub = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in NOT_A_DIR:
                    raise NotFollowed(rel) from None
                raise
            if fd != root_fd:
                os.close(fd)
            fd = sub
        yield fd, name
    finally:
        if fd != root_fd:
            os.close(fd)


class NotInTree(Exception):
    """A listed file that is no longer a regular file inside the tree when it is opened (a skip's reason)."""


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    return os.path.join(os.path.realpath(root), "")


def open_in_tree(root: str | Path, rel: str) -> tuple[Any, os.stat_result]:
    """File ``rel`` of the tree at ``root`` opened for reading, and its fstat; NotInTree when it is not a
    regular file inside the tree by then (OSError as ``open`` raises it otherwise).

    The listing saw a regular file, but a directory on its path may have been swapped for a symlink since:
    opened by name, it read a file outside the tree (indexed, analysed or scanned under the tree's name).
    The opened file itself is checked (its path, as the kernel has it, is under the root), never a name
    looked up again; a symlink in its place is not followed, and a FIFO is not waited on."""
    try:
        fd = os.open(os.path.join(root, rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotInTree("symlink") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotInTree("not a regular file")
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc (macOS): the directories on its path, as they are now
            real = os.path.realpath(os.path.join(root, rel))
        if not real.startswith(_real_root(os.fspath(root))):
            raise NotInTree("outside the tree (a directory on its path became a symlink since the listing)")
        return os.fdopen(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise


SUBMODULE = (
    "a git repository of its own (a submodule or a nested clone): not read; run the operation on it to include it"
)


def not_regular(path: str | os.PathLike[str], mode: int) -> str:
    """Why a listed entry that is no regular file is skipped, in words a user can act on: git lists a submodule
    as one entry, a directory (the walk lists files only), and "not a regular file" told nobody why."""
    if not stat.S_ISDIR(mode):
        return "not a regular file"
    if os.path.lexists(os.path.join(path, ".git")):  # a checked-out submodule: a .git file or directory
        return SUBMODULE
    return "a directory, not a file (a git submodule not checked out, or replaced since the listing)"


def is_venv(d: Path) -> bool:
    """A virtualenv directory has a pyvenv.cfg (a directory we may not look into is not one)."""
    try:
        return (d / "pyvenv.cfg").exists()
    except OSError:
        return False


PACKAGE_NAMES = frozenset({"venv"})
"""The SKIP_DIRS names that are also a Python package's (the standard library's ``venv``, a project's module
that makes environments): a directory of that name holding an ``__init__.py`` (or a stub package's
``__init__.pyi``: typeshed's ``stdlib/venv``) is source, not an environment."""
PACKAGE_INITS = ("__init__.py", "__init__.pyi")


def skipped_dir(d: Path) -> bool:
    """Whether a listing leaves directory ``d`` out: a name of SKIP_DIRS (but a package of PACKAGE_NAMES),
    or a virtualenv by any name."""
    if d.name in SKIP_DIRS:
        if d.name not in PACKAGE_NAMES:
            return True
        try:
            if not any((d / init).is_file() for init in PACKAGE_INITS):
                return True
        except OSError:
            return True
    return is_venv(d)


def skipped_path(rel: str, listed: frozenset[str] | set[str]) -> bool:
    """Whether ``rel`` (a file of a listing made without looking at the disk, as git's) lies under a directory
    that ``skipped_dir`` leaves out, by its name: one of PACKAGE_NAMES is a package when ``listed`` holds its
    ``__init__.py`` (or ``.pyi``)."""
    parts = rel.split("/")[:-1]
    for i, name in enumerate(parts):
        if name in SKIP_DIRS and (
            name not in PACKAGE_NAMES
            or not any(f"{'/'.join(parts[: i + 1])}/{init}" in listed for init in PACKAGE_INITS)
        ):
            return True
    return False


def libc_function(name: str) -> Any:
    """A Linux libc function by name (syncfs, prctl), or None elsewhere or when it is missing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


_SYNCFS = libc_function("syncfs")


def sync_tree(path: Path) -> None:
    """Flush everything written to ``path``'s file system to disk: one syncfs(2) on Linux, else sync(2).

    Cheaper than an fsync per file when many small files were written (one journal commit for all).
    """
    if _SYNCFS is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if _SYNCFS(fd) == 0:
                return
        finally:
            os.close(fd)
    os.sync()


@contextlib.contextmanager
def peek(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the SQLite database at ``path`` that leaves nothing beside it.

    Opened read-only (``mode=ro``), a database in WAL mode whose ``-wal`` file was gone (its last
    connection had closed) got an empty ``-wal`` and ``-shm`` that no one removed: refusing another
    program's database as an output left two files by it. With no ``-wal`` the file itself holds every
    committed row, so it is read as immutable (no lock, no side file); with one (or a rollback journal
    to be read), as it is: the side files are there already."""
    con = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        yield con
    finally:
        con.close()


def read_only_uri(path: Path) -> str:
    """The URI ``peek`` opens ``path`` by: read-only, and immutable (no lock, no side file) when no ``-wal``
    or rollback journal is beside it."""
    real = path.resolve()
    uri = f"file:{quote(str(real))}?mode=ro"
    if not any(os.path.lexists(f"{real}-{side}") for side in ("wal", "journal")):
        uri += "&immutable=1"
    return uri


WIDE_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def wide_text(data: bytes) -> str | None:
    """The text of a file in UTF-16 or UTF-32 that begins with its byte order mark (without the mark); None for
    anything else (a binary file)."""
    for bom, codec in WIDE_BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec).lstrip("\ufeff")
            except UnicodeDecodeError:
                return None
    return None
