"""Private files: everything Outlast writes is its user's alone, 0600 files and 0700 directories.

Modes are given where each file is created (never a process-wide umask: the commands an operation
runs keep the user's own), so moving or sharing a state directory exposes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import StoreError
from .statedir import foreign_state_dir, subdir_problem, whose

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_opener(path: str | os.PathLike[str], flags: int) -> int:
    """For ``open(path, mode, opener=private_opener)``: a file that is created is created 0600."""
    return os.open(path, flags, FILE_MODE)


def state_opener(path: str | os.PathLike[str], flags: int) -> int:
    """``private_opener`` for a file in the state dir (a detached run's output): never through a symbolic link
    (ELOOP), which would have its owner choose the file written."""
    return os.open(path, flags | os.O_NOFOLLOW, FILE_MODE)


def create_private(path: Path) -> None:
    """``path`` exists afterwards, created 0600 if it did not (for files others open, like SQLite's)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))


NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""How a file at a name of Outlast's choosing (a temp file) is made: never one already there, nor through a link."""


def create_new(path: Path, mode: int = FILE_MODE) -> int:
    """A descriptor (write-only) of a new file made at ``path`` (``mode`` less the umask), for a temp file whose
    name others can guess (``.NAME.PID``): opened so, a symbolic link planted at that name made a process (root)
    truncate and write whatever file it pointed to. A stale one of ours there (a regular file of this user's, with
    no other link: a killed process that had this pid left it) is removed and the file made anew; anything else
    there is FileExistsError, left as it is (the caller writes elsewhere, or not at all)."""
    try:
        return os.open(path, NEW_FILE, mode)
    except FileExistsError:
        st = os.lstat(path)
        if not (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1):
            raise
        os.unlink(path)
    return os.open(path, NEW_FILE, mode)


def replace_note(path: Path, data: bytes, stem: str | None = None) -> None:
    """Put a small note at ``path`` whole (a cache, the WAL's owner): written to ``.STEM.PID`` beside it (``stem``:
    its name unless given; ``create_new``: never a file or link found there), then renamed over it; not synced
    (``atomic_write`` would sync: a note lost to a crash is only made again). OSError when it could not be put
    there. ``sweep_dead_pid_temps`` of ``stem`` removes what a writer killed before its rename left."""
    tmp = path.with_name(f".{stem or path.name}.{os.getpid()}")
    fd = create_new(tmp)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # ours: made above
        raise


def make_private(*paths: Path) -> None:
    """Narrow existing files to 0600 (a state dir written by an older version); missing ones are skipped, and
    so is anything but a regular file: never changed through a symbolic link (``outlast ls`` as root made the
    file a user's link named 0600, anywhere)."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                chmod_here(p, FILE_MODE)


def chmod_here(path: Path, mode: int) -> None:
    """``chmod`` of the file at ``path`` itself, never of what a symbolic link put there since names (not
    opened to ``fchmod`` it: closing a descriptor of a database file would let go of SQLite's locks on it)."""
    try:
        os.chmod(path, mode, follow_symlinks=False)
    except NotImplementedError:  # a link (lchmod: links have no mode here), or a C library without it
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            os.chmod(path, mode)


def private_dirs(path: Path, again: bool = True) -> bool:
    """``path.mkdir(parents=True, exist_ok=True)`` (its errors too: a file in the way), each directory it makes
    0700 whatever the umask, as the XDG spec asks of the base directories it names (with a umask of 000, the
    default state dir's ``~/.local`` and ``~/.local/state`` were made 0777); those already there are left as
    they are. Whether ``path`` itself was made here.

    Tried once more (``again``) after its parents were made: a directory that refuses it ("No such file or
    directory" with the parent there: ``HOME=/proc/none``, a parent removed meanwhile) raised it, where
    trying for ever ended ``outlast types`` in a RecursionError, an internal error."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileNotFoundError:
        if path.parent == path or not again:
            raise
        from .paths import home

        if path.parent == home():
            # HOME=/nonexistent (cron, a service account: "no home"): as root, the default state dir and cache
            # were made under a /nonexistent made for them, where nobody looks.
            raise FileNotFoundError(
                errno.ENOENT, f"HOME ({path.parent}) does not exist, and Outlast does not make it"
            ) from None
        private_dirs(path.parent)
        return private_dirs(path, again=False)
    except OSError:
        if not path.is_dir():
            raise
        return False
    if stat.S_IMODE(os.lstat(path).st_mode) != DIR_MODE:  # the umask took some of it away: made, so ours to set
        chmod_here(path, DIR_MODE)
    return True


def private_dir(state_dir: Path, name: str) -> Path:
    """``state_dir / name``, made 0700 if missing (never the state dir itself, nor its parents). A file in
    its place (or anything else that stops it) is a StoreError in one line, not an internal error: "File
    exists" named neither the directory nor what to do. So is a state dir, or a ``name`` there, that is not
    this user's, or a symbolic link at ``name`` (``statedir``): nothing is made in another user's directory,
    nor written where they (or a link) choose."""
    path = state_dir / name
    with contextlib.suppress(OSError):  # not there: said by the mkdir below
        if (owner := os.stat(state_dir).st_uid) != os.geteuid():
            raise StoreError(foreign_state_dir(state_dir, owner))
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    except OSError as e:
        raise StoreError(f"state dir {state_dir}: cannot make {name} ({e.strerror or e})") from None
    try:
        st = os.lstat(path)
    except OSError as e:
        raise StoreError(f"state dir {state_dir}: cannot make {name} ({e.strerror or e})") from None
    if (why := subdir_problem(state_dir, name, st)) is not None:
        raise StoreError(why)
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(
            f"state dir {state_dir}: {name} is not a directory (a file is in its place): move it out of the way"
        )
    return path


class NotRegular(OSError):
    """Something other than a regular file where the store keeps one (a FIFO, a directory, a link)."""


def open_regular(path: str | os.PathLike[str], flags: int, *, follow: bool = True) -> int:
    """``os.open`` of a file the store keeps (made 0600 when ``flags`` create it) that never waits and opens
    nothing but a regular file: a FIFO put in its place with nobody at the other end made the opener wait
    for ever, and a directory there failed as a store outage. NotRegular for anything else; ``follow=False``
    refuses a symbolic link too (a lock file must never be made wherever a link points)."""
    extra = os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags | extra, FILE_MODE)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.EISDIR, errno.ELOOP):  # a FIFO with no reader; a directory; a link
            raise NotRegular(e.errno, "not a regular file", str(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegular(errno.EINVAL, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return fd


def move_aside(path: Path) -> Path:
    """Rename what is at ``path`` to ``NAME.not-a-file-TIME`` beside it (kept for a person to look at), so a
    file can be made there; the new path."""
    aside = path.with_name(f"{path.name}.not-a-file-{time.time_ns()}")
    os.replace(path, aside)
    return aside


def owner_of(path: str | os.PathLike[str]) -> str:
    """Who owns what is at ``path`` (not followed), as a message names them: "alice (uid 1000)"; "" when it
    cannot be told. For the lines that say a file cannot be opened: "Permission denied" alone did not say
    whose the file was, nor that deleting it was the way out."""
    try:
        return whose(os.lstat(path).st_uid)
    except OSError:
        return ""


TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<ns>\d+)\.tmp")
"""The name ``atomic_write`` gives its temp file: ``.NAME.PID.NS.tmp`` beside ``NAME``."""


def left_by_the_dead(name: str, directory: Path, older_than: float = 60.0) -> bool:
    """Whether ``name`` in ``directory`` is a temp file ``atomic_write`` left when its process was killed
    mid-write: its writer's pid runs no process here, and it has not changed for ``older_than`` seconds
    (a writer on another host of a shared directory is not seen here; a minute is no write's time)."""
    m = TEMP_NAME.fullmatch(name)
    return m is not None and _writer_gone(int(m["pid"]), directory / name, older_than)


def _writer_gone(pid: int, path: Path, older_than: float) -> bool:
    """Whether the file at ``path``, named for the writer ``pid``, is one that writer cannot finish: ``pid``
    runs no process here and the file has not changed for ``older_than`` seconds."""
    try:
        os.kill(pid, 0)
        return False  # alive (or another user's): its write may be under way
    except ProcessLookupError:
        pass
    except (PermissionError, OverflowError):
        return False
    try:
        return time.time() - os.lstat(path).st_mtime > older_than
    except OSError:
        return False


def sweep_dead_temps(directory: Path, names: Iterable[str], of: Callable[[str], bool]) -> None:
    """Remove, among ``names`` in ``directory``, the temp files ``atomic_write`` left when its process was
    killed mid-write (``left_by_the_dead``), of the files ``of`` says are the caller's: a directory shared
    with other programs keeps their files, whatever they are called. One per kill otherwise stays for ever."""
    for name in names:
        if (
            name.startswith(".")
            and (m := TEMP_NAME.fullmatch(name))
            and of(m["name"])
            and left_by_the_dead(name, directory)
        ):
            with contextlib.suppress(OSError):
                os.unlink(directory / name)


def sweep_dead_pid_temps(directory: Path, files: Iterable[str], older_than: float = 60.0) -> None:
    """Remove the temp files ``.FILE.PID`` in ``directory``, of the ``files`` named, that a writer killed
    between writing and renaming one left (its pid runs no process here and the file has not changed for
    ``older_than`` seconds): the small notes written so (a cache, the WAL's owner) are not synced, which
    ``atomic_write`` would cost them, and one per kill otherwise stays for ever. Best effort."""
    stems = set(files)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        stem, _, pid = name[1:].rpartition(".")
        if not (name.startswith(".") and stem in stems and pid.isascii() and pid.isdigit()):
            continue
        if _writer_gone(int(pid), directory / name, older_than):
            with contextlib.suppress(OSError):
                os.unlink(directory / name)


def atomic_write(
    path: Path,
    data: bytes,
    sync_dir: bool = True,
    mode: int = FILE_MODE,
    gid: int | None = None,
    replace: bool = True,
) -> bool:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never a part: a temp file
    beside it (``mode`` exactly, whatever the umask; group ``gid`` where allowed), synced, renamed over it;
    the directory synced too unless the caller syncs it once for several (``sync_dir=False``).
    With ``replace=False`` a file already at ``path`` is kept (the new one hard-linked in its place only if
    none is there, in one step; where hard links are refused, looked for just before the rename): False
    then, and nothing written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}.tmp")
    try:
        with open(tmp, "xb", opener=private_opener) as fh:
            if mode != FILE_MODE:
                os.fchmod(fh.fileno(), mode)
            if gid is not None and os.fstat(fh.fileno()).st_gid != gid:
                with contextlib.suppress(OSError):
                    os.fchown(fh.fileno(), -1, gid)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        elif not _link_new(tmp, path):
            os.unlink(tmp)
            return False
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return True


def _link_new(tmp: Path, path: Path) -> bool:
    """``tmp`` put at ``path`` unless a file is there (False: ``tmp`` left for the caller)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(path):  # no hard links on this file system: a look just before the rename
            return False
        os.replace(tmp, path)
        return True
    os.unlink(tmp)
    return True


def fsync_dir(path: Path) -> None:
    """Make the names in directory ``path`` (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_keeping_mode(path: Path, data: bytes) -> Path:
    """Replace the file at ``path`` with ``data`` atomically, as an editor that cares would: through a
    symbolic link to the file it names (a dotfiles link stays a link, and the real file changes), with the
    file's own mode (a 0600 file that holds a password stays 0600; a new file is 0600), its group kept
    when it can be. The temp file is made beside the real file, so the rename never crosses file
    systems, and synced before it. The real file's path."""
    target = Path(os.path.realpath(path))
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise NotRegular(errno.EINVAL, "not a regular file", str(path))
    mode = stat.S_IMODE(st.st_mode) if st is not None else FILE_MODE
    with contextlib.suppress(OSError):  # what an earlier write killed midway left beside it
        sweep_dead_temps(target.parent, os.listdir(target.parent), lambda name: name == target.name)
    atomic_write(target, data, sync_dir=False, mode=mode, gid=st.st_gid if st is not None else None)
    with contextlib.suppress(OSError):  # the rename itself made durable, where the file system allows
        fsync_dir(target.parent)
    return target


def write_private(path: Path, text: str) -> None:
    """``path.write_text(text)``, created 0600."""
    with open(path, "w", encoding="utf-8", opener=private_opener) as fh:
        fh.write(text)


def free_bytes(path: Path) -> int | None:
    """Bytes this process may still write on ``path``'s file system (root may use the reserved blocks);
    None when it cannot be told."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def no_inodes(path: Path) -> bool:
    """Whether ``path``'s file system has no file left to make (every inode in use: a tmpfs's ``nr_inodes``,
    millions of small files), however many bytes it has free: "No space left on device" with space left."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_files > 0 and (st.f_ffree if os.geteuid() == 0 else st.f_favail) == 0


class TooLarge(OSError):
    """A file read with ``read_limited`` holds more than its limit."""


def read_limited(path: Path, limit: int = 1 << 20) -> bytes:
    """The bytes of a small file someone names (a config file), without hanging on what is not one: a FIFO
    with nobody writing it made every command wait for ever, and ``/dev/zero`` read until memory ran out.
    A pipe someone writes (``--config <(make-config)``) is read to its end; more than ``limit`` bytes is
    TooLarge. OSError for the rest, as ``open`` says it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        # Opened without waiting for a writer; read with waiting: a FIFO nobody writes reads as empty.
        os.set_blocking(fd, True)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        parts: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            size += len(chunk)
        raise TooLarge(27, f"larger than {limit:,} bytes", str(path))
    finally:
        os.close(fd)


def read_regular(path: Path, limit: int = 1 << 20) -> bytes | None:
    """``read_limited`` of a regular file; None for anything else, unread (a pipe read here would be empty
    for the read that matters: ``--config <(make-config)`` was read twice, and applied as empty), and for
    what cannot be read."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        return read_limited(path, limit)
    except OSError:
        return None


def cut_torn_line(path: Path) -> bool:
    """Cut a last line a kill left without its newline from a JSON-lines file appended to across attempts;
    whether one was cut. Left there, the next attempt's first line was glued to it: one line neither reader
    could parse, and the record it held was lost with the fragment (a cleanup's manifest then missed a file
    it had removed). Fsynced, as the lines are. A missing file has nothing to cut."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)  # as the appends open it
    except FileNotFoundError:
        return False
    try:
        end = os.fstat(fd).st_size
        pos = end
        while pos > 0:
            start = max(0, pos - (1 << 16))
            chunk = os.pread(fd, pos - start, start)
            if pos == end and chunk.endswith(b"\n"):
                return False
            if (nl := chunk.rfind(b"\n")) >= 0:
                pos = start + nl + 1
                break
            pos = start
        if pos == end:
            return False
        os.ftruncate(fd, pos)
        os.fsync(fd)
        return True
    finally:
        os.close(fd)
