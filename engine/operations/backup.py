"""backup_operation: copy a tree preserving modes, times and symlinks, verified by sha256, resumable mid-file.

Each file is written to a partial in ``.outlast-partials/`` at the destination root (``_partial``: a name no
source file can take there, so no copy is ever renamed over another's partial) and renamed into place only
when complete (and verified), so no half-written file ever sits under its final name; the directory is
removed when the backup ends. Under a file system mounted inside the destination, the partial is made at the
top of that one instead (a rename does not cross file systems), and each such file system is synced with the
destination's own. A large file is
copied in chunks; after every ``chunk_checkpoint`` bytes the offset is saved in ``ctx.state`` with a
checkpoint, and a resume continues from that offset once the partial's size agrees. A manifest (path, size,
mode, sha256) is written to ``.outlast-manifest.json`` at the destination root.

The destination is the backup's own: an entry of the wrong kind there (a symlink, a file or a directory
where the source now has something else) is replaced, never written through. Source files are reached from
a descriptor of the source's root one directory at a time, opened without following links or waiting (a
directory swapped for a link, or a FIFO swapped in, is skipped: ``_backup_source``). A file whose size, mtime
or inode changed while it was copied is copied again (COPY_TRIES in all), then failed: a copy is sealed only
when the source was the same file before and after it. Holes are copied as holes, and the listing is
iterative (no recursion limit). What cannot be listed or made is an item failure; the rest is copied.

Names that are one file in the source (hard links: same st_dev and st_ino, the names found in the tree) are
one file in the destination, copied once (``Links``): the first name is copied, the others are made hard links
to its copy when placed, journaled (and in the manifest, ``link``) as links, so that a resume links them too.
A destination that refuses a link gets a copy of that name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..context import OperationContext
from ..errors import InvalidInput
from ..files import TEMP_NAME, NotRegular, atomic_write, cut_torn_line, private_opener
from ..registry import operation
from ._backup_source import NotFollowed, Source, open_file, pseudo_fs, same_version
from ._common import changed_since, check_output_dir, existing_dir, libc_function, reading_since, sync_tree

CHUNK = 4 << 20
ZEROS = bytes(CHUNK)
MANIFEST = ".outlast-manifest.json"
JOURNAL = ".outlast-manifest.partial"
STAGING = ".outlast-partials"
"""The directory at the destination root where every file is written before it is renamed into place."""
RESERVED = frozenset({MANIFEST, JOURNAL, STAGING})
"""Names at the destination root that are the backup's own files: not copied from the source's root."""
SMALL_BATCH = 128
COPY_TRIES = 3
"""Copies of a file that changes while it is copied, before it is failed."""
GONE = "gone since the listing"
NOT_REGULAR = "not a regular file any more"
NOT_FOLLOWED = "a directory on its path is no longer a real directory (a symlink?): not followed"
KERNEL_FS = "a kernel file system: its files' sizes are not what they hold (a copy would be empty)"
SKIPS = frozenset({GONE, NOT_REGULAR, NOT_FOLLOWED})
"""Outcomes of a copy that are skips (the source changed since the listing), not failures."""
CHANGED = f"changed while it was copied, {COPY_TRIES} times: not copied (the next backup tries again)"


class BackupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="directory to back up")
    destination: str = Field(
        description="directory to copy into (created; must not be, be inside or contain the source)"
    )
    verify: bool = Field(
        default=True, description="re-read every copy as it is written and compare it with the source's bytes"
    )
    chunk_checkpoint: int = Field(
        default=64 << 20, ge=CHUNK, le=1 << 40, description="bytes between checkpoints inside one large file"
    )

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        v = existing_dir(v, "source")
        if (kind := pseudo_fs(Path(v))) is not None:
            raise ValueError(f"{v!r} is on {kind}, {KERNEL_FS}")
        return v

    @field_validator("destination")
    @classmethod
    def _dest(cls, v: str, info: ValidationInfo) -> str:
        """Both paths are resolved (symlinks followed): a destination that is the source, lies inside it (the
        copy would copy itself) or contains it (the copy would overwrite the source) is refused."""
        dest = Path(check_output_dir(v, "destination"))
        nearest = dest
        while not nearest.exists():
            nearest = nearest.parent
        if (kind := pseudo_fs(nearest)) is not None:  # os.access says writable; no directory can be made there
            raise ValueError(
                f"{v!r}: {str(nearest)!r} is on {kind}, a kernel file system: no backup can be written there"
            )
        src = info.data.get("source")
        if src is not None:
            if dest == Path(src):
                raise ValueError(f"{v!r} is the source {src!r} itself")
            if dest.is_relative_to(src):
                raise ValueError(f"{v!r} is inside source {src!r}")
            if Path(src).is_relative_to(dest):
                raise ValueError(f"{v!r} contains source {src!r}: the copy would overwrite the source")
        return str(dest)


@dataclass
class Listing:
    """What the source holds, as relative POSIX paths, sorted: directories, entries (files and symlinks,
    with the files' sizes), special files (FIFOs, sockets, devices: not copied) and what could not be
    listed or examined (path, why)."""

    dirs: list[str] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    special: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    own: list[str] = field(default_factory=list)
    """Names at the source root that the backup's own files take at the destination root."""
    inodes: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    """The files (and symlinks) with more than one name (st_nlink > 1), by (st_dev, st_ino): their names found
    in the tree."""
    kernel: list[tuple[str, str]] = field(default_factory=list)
    """Directories where a kernel file system (proc, sysfs ...) is mounted, and its name: made, not listed."""


def _list(src: Path) -> Listing:
    """List ``src`` with an explicit stack (Python 3.11's os.walk recursed once per level: a tree 1200 deep
    died of RecursionError). A directory that cannot be listed (no permission, a path past PATH_MAX) is
    named in ``unreadable`` instead of failing the listing; the source root itself must be listable."""
    out = Listing()
    stack = [("", os.stat(src).st_dev)]
    while stack:
        rel_d, dev = stack.pop()
        try:
            with os.scandir(os.path.join(src, rel_d) if rel_d else src) as it:
                found = list(it)
        except FileNotFoundError:
            if not rel_d:
                raise
            continue  # gone since its parent was listed
        except OSError as e:
            if not rel_d:
                raise
            out.unreadable.append((rel_d, f"cannot list this directory: {e.strerror or e}"))
            continue
        for ent in found:
            rel = f"{rel_d}/{ent.name}" if rel_d else ent.name
            if not rel_d and ent.name in RESERVED:
                out.own.append(rel)
                continue
            try:
                if ent.is_dir(follow_symlinks=False):
                    out.dirs.append(rel)
                    # A file system mounted here: a kernel one (the /proc of a chroot, a bind of /sys) gives
                    # sizes of 0 for files that hold text: copied, every one of them was an empty file.
                    sub = ent.stat(follow_symlinks=False).st_dev
                    if sub != dev and (kind := pseudo_fs(Path(ent.path))) is not None:
                        out.kernel.append((rel, kind))
                    else:
                        stack.append((rel, sub))
                elif ent.is_symlink():
                    out.entries.append(rel)
                    lst = ent.stat(follow_symlinks=False)
                    if lst.st_nlink > 1:  # names of one symlink (``ln`` of a link): one link in the copy too
                        out.inodes.setdefault((lst.st_dev, lst.st_ino), []).append(rel)
                elif ent.is_file(follow_symlinks=False):
                    est = ent.stat(follow_symlinks=False)
                    out.sizes[rel] = est.st_size
                    out.entries.append(rel)
                    if est.st_nlink > 1:
                        out.inodes.setdefault((est.st_dev, est.st_ino), []).append(rel)
                else:
                    out.special.append(rel)
            except FileNotFoundError:
                continue
            except OSError as err:
                out.unreadable.append((rel, f"cannot examine: {err.strerror or err}"))
    out.dirs.sort()
    out.entries.sort()
    out.special.sort()
    out.unreadable.sort()
    return out


def _under(rel: str, dirs: Collection[str]) -> bool:
    """``rel`` lies below one of ``dirs``."""
    i = rel.find("/")
    while i != -1:
        if rel[:i] in dirs:
            return True
        i = rel.find("/", i + 1)
    return False


def _remove(path: Path | str) -> None:
    """Remove the destination's own old entry at ``path`` without following a link (a directory with all
    it holds); nothing there is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _ensure_dir(path: Path) -> None:
    """``path`` is a real directory afterwards, that its owner may write into. A symlink or a file in its
    place (left by an earlier backup, when the source had one there) is replaced: a stale link written
    through sent the copy, and the directory's mode, outside the destination."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path)
        return
    if not stat.S_ISDIR(st.st_mode):
        _remove(path)
        os.mkdir(path)
    elif st.st_mode & 0o300 != 0o300:  # an earlier backup gave it a read-only mode: the last pass sets it again
        os.chmod(path, stat.S_IMODE(st.st_mode) | 0o700)


def _make_dirs(dst: Path, dirs: list[str]) -> dict[str, str]:
    """Make ``dst`` and every directory of ``dirs`` (sorted: parents first) in it; the ones that could not be
    made, with why (below one of them nothing is tried); and the staging directory (``_partial``)."""
    try:
        dst.mkdir(parents=True, exist_ok=True)
        _ensure_dir(dst)
    except OSError as e:
        raise InvalidInput(f"destination {str(dst)!r} cannot be made: {e.strerror or e}") from None
    _ensure_dir(dst / STAGING)
    failed: dict[str, str] = {}
    for d in dirs:
        if _under(d, failed):
            continue
        try:
            _ensure_dir(dst / d)
        except OSError as e:
            failed[d] = f"cannot make this directory in the destination: {e.strerror or e}"
    return failed


def _partial(dst: Path, rel: str) -> Path:
    """Where ``rel`` is written before it is renamed into place: a short name in the staging directory at the
    destination root, the same in every attempt (a resume finds it). Beside the file, a source file holding
    that name (a tree that holds an interrupted backup) had its copy renamed over the partial of the file it
    was named after: that file got the other's bytes, silently. No source file lands in the staging
    directory (its name is reserved at the root). A short name: ``.NAME.outlast-partial`` of a 239..255-byte
    name passed NAME_MAX."""
    digest = hashlib.sha256(os.fsencode(rel)).hexdigest()[:32]
    return _staging(dst, rel) / f"{digest}.outlast-partial"


def _staging(dst: Path, rel: str) -> Path:
    """The staging directory for ``rel``: on the mount its directory is on, since a partial is renamed into
    place and a rename does not cross mounts (a file under a file system, or a bind mount, inside the
    destination failed "Invalid cross-device link"). The root's ``STAGING``, or at the deepest mount point
    inside the destination above ``rel``, a directory named for this destination (``mount_staging``)."""
    parent = os.path.dirname(rel)
    if parent and (mounts := _mounts_now(dst)):  # none (the common case): no realpath, an lstat per component
        root = os.path.realpath(dst)
        under = [m for m in mounts if f"{root}/{parent}/".startswith(f"{m}/")]
        if under:
            return dst / os.path.relpath(max(under, key=lambda m: len(str(m))), root) / mount_staging(dst)
    return dst / STAGING


_MOUNTS: dict[Path, tuple[float, list[Path]]] = {}
"""``mounts_in`` by destination, read again after a second: ``_partial`` asks for every file."""


def _mounts_now(dst: Path) -> list[Path]:
    now = time.monotonic()
    seen = _MOUNTS.get(dst)
    if seen is None or now - seen[0] > 1.0:
        seen = _MOUNTS[dst] = (now, mounts_in(dst))
    return seen[1]


def mount_staging(dst: Path) -> str:
    """The staging directory's name at the top of a file system mounted inside the destination: ``STAGING``
    and a digest of the destination, a name no source file takes by chance (the root's ``STAGING`` is reserved;
    a mounted directory's names are the source's)."""
    return f"{STAGING}-{hashlib.sha256(os.fsencode(dst)).hexdigest()[:16]}"


def mounts_in(dst: Path) -> list[Path]:
    """The file systems mounted inside the destination (from /proc/self/mountinfo; none elsewhere): each is
    synced as the destination's own is, and its staging directory removed at the end."""
    root = os.path.realpath(dst)
    out = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split(" ", 5)[4])  # "\040": a space
            if point != root and point.startswith(root.rstrip("/") + "/"):
                out.append(Path(point))
    return out


def sync_all(dst: Path, mounts: list[Path] | None = None) -> None:
    """``sync_tree`` of the destination's file system and of each one mounted inside it (``mounts_in``, read
    now when not given): a file under a mount had its bytes unsynced when it was counted done."""
    sync_tree(dst)
    for m in mounts_in(dst) if mounts is None else mounts:
        with contextlib.suppress(FileNotFoundError):  # unmounted (or never made) since
            sync_tree(m)


def _create(path: Path | str) -> BinaryIO:
    """``path`` created afresh for writing, whatever was there (a link there is replaced, not followed)."""
    _remove(path)
    return open(path, "xb")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while b := fh.read(CHUNK):
            h.update(b)
    return h.hexdigest()


def _hash_zeros(h: hashlib._Hash, n: int) -> None:
    while n > 0:
        k = min(n, CHUNK)
        h.update(memoryview(ZEROS)[:k])
        n -= k


def _pwrite_all(fd: int, data: bytes | memoryview, at: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


_SYNC_FILE_RANGE = libc_function("sync_file_range")
if _SYNC_FILE_RANGE is not None:
    _SYNC_FILE_RANGE.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, at: int, n: int) -> None:
    """Start writing ``n`` bytes at ``at`` to disk, without waiting (Linux): the fsync at the end of a large
    file's chunk then waits for the last blocks only, not for all of them."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, at, n, SYNC_FILE_RANGE_WRITE)


class Differs(OSError):
    """The copy, read back, is not what was read from the source."""


BIG_BLOCK = 1 << 20
"""A verified block of this many bytes or more is copied by ``_Blocks``; a smaller one (a small file's) as it is
read, where a thread's hop and a buffer of CHUNK bytes would cost more than they save."""
_SPARE: list[tuple[bytearray, bytearray]] = []
"""The two buffers of CHUNK bytes that the last ``_Blocks`` left for the next (one pair kept, 8 MB: a backup
copies one large range at a time): memory never touched costs a page fault per page, on some machines as
much as the copy's own writing."""


class _Blocks:
    """A large range's blocks, each read into a buffer kept between blocks and hashed in a helper thread while
    the caller writes it to the copy (``_send``), reads it back and compares it with the bytes read (``verify``).
    The hash and the copy are of the same bytes, those read once from the source. One copy at a time; closed
    (``with``), the helper thread has ended, so nothing uses the buffers any more."""

    def __init__(self) -> None:
        try:
            self.data, self.back = _SPARE.pop()  # atomic: another backup's thread may take it first
        except IndexError:
            self.data, self.back = bytearray(CHUNK), bytearray(CHUNK)
        self.hasher = ThreadPoolExecutor(1, thread_name_prefix="outlast-backup-hash")

    def __enter__(self) -> _Blocks:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.hasher.shutdown(wait=True)
        if not _SPARE:
            _SPARE.append((self.data, self.back))

    def copy(self, fi: int, fo: int, at: int, k: int, h: hashlib._Hash) -> int:
        """Copy up to ``k`` bytes at ``at`` (at most CHUNK), verified, fed to ``h``; the bytes copied (0: none left)."""
        n = os.preadv(fi, [memoryview(self.data)[:k]], at)
        if not n:
            return 0
        data = memoryview(self.data)[:n]
        hashed = self.hasher.submit(h.update, data)  # hashlib lets go of the GIL for a block this size
        try:
            _send(fi, fo, data, at)
            self.verify(fi, fo, n, at)
        finally:
            hashed.result()
        return n

    def verify(self, fi: int, fo: int, n: int, at: int) -> None:
        """The copy holds the ``n`` bytes read at ``at`` (Differs if not). A copy that differs from them while
        the source no longer holds them either (rewritten since they were read, and copied again for that:
        ``same_version``) is given them (``_pwrite_all``) and checked again."""
        if self.holds(fo, n, at):
            return
        if not self.holds(fi, n, at):
            _pwrite_all(fo, memoryview(self.data)[:n], at)
            if self.holds(fo, n, at):
                return
        raise Differs(errno.EIO, f"verification failed: the copy read back differs at byte {at}")

    def holds(self, fd: int, n: int, at: int) -> bool:
        """``fd`` holds the ``n`` bytes read at ``at``: read into the second buffer and compared as two whole
        buffers, the only comparison at memcmp's speed (memoryviews compare item by item, 30 times slower)."""
        back = memoryview(self.back)
        if os.preadv(fd, [back[:n]], at) != n:
            return False
        if n < CHUNK:  # the same bytes after the block's end in both
            back[n:] = memoryview(self.data)[n:]
        return self.data == self.back


def _send(fi: int, fo: int, data: memoryview, at: int) -> None:
    """Write ``data``, just read from ``fi`` at ``at``, at ``at`` in ``fo``: by the kernel from ``fi``
    (``os.sendfile``: a copy inside the page cache, several times faster here than a ``pwrite`` of the same
    bytes; never a shared extent or a server-side copy, as ``copy_file_range`` may make), else from ``data``.
    The source may have changed since ``data`` was read: ``_Blocks.verify`` tells."""
    done = 0
    with contextlib.suppress(OSError):  # no sendfile between these two files: written from data
        os.lseek(fo, at, os.SEEK_SET)
        while done < len(data) and (m := os.sendfile(fo, fi, at + done, len(data) - done)):
            done += m
    if done < len(data):  # the rest, or the source cut since it was read
        _pwrite_all(fo, data[done:], at + done)


def _check(fo: int, data: bytes | memoryview, at: int) -> None:
    """The copy holds ``data`` at ``at``, read back (Differs if not)."""
    if os.pread(fo, len(data), at) != data:
        raise Differs(errno.EIO, f"verification failed: the copy read back differs at byte {at}")


def _copy_range(
    fi: int, fo: int, start: int, length: int | None, h: hashlib._Hash, verify: bool = False, flush: bool = False
) -> int:
    """Copy bytes ``start`` .. ``start + length`` (to the end when None) of ``fi`` to the same offsets of ``fo``,
    fed to ``h``; returns the bytes copied (0 at the end). Holes of the source (SEEK_DATA/SEEK_HOLE) are left
    holes in the copy and hashed as the zeros they read as: a sparse file is not copied fully allocated.

    ``verify``: every block written is read back from the copy and compared with the bytes read from the
    source (the holes with zeros): what the hash of the copy, read back again, compared with the source's
    hash, byte for byte, without hashing the bytes twice. ``flush``: each block's writing to disk is started
    as soon as it is written (``_start_writeback``). Verified blocks of BIG_BLOCK bytes and more are copied by
    ``_Blocks``: the same bytes hashed, written and compared, the hashing beside the writing."""
    with contextlib.ExitStack() as stack:
        return _copy_blocks(fi, fo, start, length, h, verify, flush, stack)


def _copy_blocks(
    fi: int,
    fo: int,
    start: int,
    length: int | None,
    h: hashlib._Hash,
    verify: bool,
    flush: bool,
    stack: contextlib.ExitStack,
) -> int:
    """``_copy_range``'s copy; the large blocks' helper (``_Blocks``) is entered on ``stack`` at the first."""
    size = os.fstat(fi).st_size
    stop = size if length is None else min(size, start + length)
    pos = start
    holes: list[tuple[int, int]] = []
    blocks: _Blocks | None = None
    while pos < stop:
        try:
            data_at = min(os.lseek(fi, pos, os.SEEK_DATA), stop)
            hole_at = min(os.lseek(fi, data_at, os.SEEK_HOLE), stop) if data_at < stop else stop
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos: a hole to the end
                data_at = hole_at = stop
            else:  # no hole support here: all data
                data_at, hole_at = pos, stop
        _hash_zeros(h, data_at - pos)
        if verify and data_at > pos:
            holes.append((pos, data_at))
        pos = data_at
        while pos < hole_at:
            k = min(CHUNK, hole_at - pos)
            if k >= BIG_BLOCK and verify:
                if blocks is None:
                    blocks = stack.enter_context(_Blocks())
                n = blocks.copy(fi, fo, pos, k, h)
            else:
                b = os.pread(fi, k, pos)
                n = len(b)
                if n:
                    h.update(b)
                    _pwrite_all(fo, b, pos)
                    if verify:
                        _check(fo, b, pos)
            if not n:  # truncated since the fstat
                stop = pos
                break
            if flush:
                _start_writeback(fo, pos, n)
            pos += n
    if os.fstat(fo).st_size != pos:
        os.ftruncate(fo, pos)  # a trailing hole, or a longer old partial
    for at, end in holes:  # read back once the copy is as long as the source
        while at < end:
            k = min(CHUNK, end - at)
            _check(fo, ZEROS if k == CHUNK else ZEROS[:k], at)  # bytes: compared with a memoryview, 90 times slower
            at += k
    return pos - start


def _create_fd(path: str) -> int:
    """``path`` created afresh for reading and writing, whatever was there (a link there is replaced, not
    followed): the common case, nothing there, costs one ``open``."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o666)
    except FileExistsError:
        _remove(path)
        return os.open(path, flags, 0o666)


def _copy_xattrs(fi: int, fo: int) -> None:
    """shutil's copy of extended attributes (what ``copystat`` does), between open descriptors."""
    try:
        names = os.listxattr(fi)
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.ENODATA, errno.EINVAL):
            raise
        return
    for name in names:
        try:
            os.setxattr(fo, name, os.getxattr(fi, name))
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.ENODATA, errno.EINVAL):
                raise


def _copy_owner(target: int | str | Path, st: os.stat_result) -> None:
    """Give ``target`` (a descriptor, or a path not followed) the owner and group of ``st``, as ``cp -a`` does:
    both as root, the group alone where a user may (one of their groups), nothing and no error otherwise. A
    backup run as root gave every copy root's owner, so a restored home directory belonged to root. Before
    the mode is set: a chown clears setuid and setgid."""
    for uid in (st.st_uid, -1):
        try:
            if isinstance(target, int):
                os.fchown(target, uid, st.st_gid)
            else:
                os.chown(target, uid, st.st_gid, follow_symlinks=False)
            return
        except PermissionError:
            continue


class Changed(OSError):
    """The source file changed while it was copied, every time it was copied (``COPY_TRIES``)."""


def _write_partial(source: Source, rel: str, tmp: str, verify: bool) -> tuple[int, str]:
    """Copy a whole file (or symlink) to its partial name, not yet synced; returns (bytes, sha256 or 'symlink').

    The file is reached from the source's root without following a link (``Source``). It is verified
    (``verify``: read back as it is written, see ``_copy_range``) and given its source's times, extended
    attributes and mode (``shutil.copystat``'s order) through the descriptors already open, before it is
    renamed into place: no path is opened or looked up twice. A file whose size, mtime or inode (one fstat
    before the copy, one after) changed meanwhile is copied again; Changed when it changed every time: a
    file rewritten while it was read was copied torn, and sealed with its new mtime."""
    d, name = source.of(rel)
    try:
        fi = open_file(d, name)
    except NotRegular:
        st = os.stat(name, dir_fd=d, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            raise
        _remove(tmp)
        os.symlink(os.readlink(name, dir_fd=d), tmp)
        _copy_owner(tmp, st)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)  # the link's own times
        return 0, "symlink"
    try:
        for _ in range(COPY_TRIES):
            before = os.fstat(fi)
            fo = _create_fd(tmp)
            try:
                h = hashlib.sha256()
                try:
                    n = _copy_range(fi, fo, 0, None, h, verify)
                except Differs as e:
                    os.unlink(tmp)
                    raise OSError(f"{e.strerror} from {source.root / rel}") from None
                st = os.fstat(fi)  # after the read, as copystat saw it
                if not same_version(before, st) or n != st.st_size:
                    continue  # changed while it was read: copied again
                os.utime(fo, ns=(st.st_atime_ns, st.st_mtime_ns))
                _copy_xattrs(fi, fo)
                _copy_owner(fo, st)
                os.chmod(fo, stat.S_IMODE(st.st_mode))
            finally:
                os.close(fo)
            return n, h.hexdigest()
        os.unlink(tmp)
        raise Changed(errno.EAGAIN, CHANGED, rel)
    finally:
        os.close(fi)


def _place(tmp: str, dst: Path) -> None:
    """Rename a finished partial into place (over a directory an earlier backup left there: the destination's
    own); its directory is made again if it went away since ``_make_dirs``."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(dst).st_mode):
            shutil.rmtree(dst)
    try:
        os.replace(tmp, dst)
    except FileNotFoundError:
        if not os.path.lexists(tmp):
            raise
        os.makedirs(dst.parent, exist_ok=True)
        os.replace(tmp, dst)


def _source_stat(src: Path, rel: str) -> os.stat_result:
    """The stat of the source file ``rel``, opened as it is read (``Source``, ``open_file``)."""
    with Source(src) as source:
        fi = source.open(rel)
    try:
        return os.fstat(fi)
    finally:
        os.close(fi)


def _seal(src: Path, rel: str, copied: os.stat_result, size: int, dst: Path) -> bool:
    """Give a large file's partial (its ``size`` bytes fsynced, chunk by chunk) its source's mode, times and
    extended attributes and rename it into place, durably (the file and its directory synced, so it is on
    disk under its final name before it counts as done, as a batch of small files is) if the source is
    still the version ``copied`` was taken of, at the start of the copy, and is ``size`` bytes long: False,
    nothing done, when it is not. Sealed regardless, a file rewritten during its copy was stored torn
    (old bytes, then new) and one that grew was cut, both with the source's new mtime, as completed."""
    with Source(src) as source:
        fi = source.open(rel)
    try:
        st = os.fstat(fi)
        if not same_version(copied, st) or st.st_size != size:
            return False
        tmp = _partial(dst, rel)
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            _copy_xattrs(fi, fd)
            _copy_owner(fd, st)
            os.chmod(fd, stat.S_IMODE(st.st_mode))
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        os.close(fi)
    _place(str(tmp), dst / rel)
    fd = os.open((dst / rel).parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


Outcome = tuple[str, int, str | None, str]
"""(path, bytes copied, why it was not (None: copied), sha256 or 'symlink')."""
MODE_KEPT = 0o1777
"""The mode bits a copy has for sure (a chmod by a user outside the file's group drops setgid, silently)."""
LINKED = "hard link"
"""A name of a batch (``Written``) to be made a hard link to its group's copy when placed, not copied."""
Written = tuple[list[tuple[str, str, int, str]], list[Outcome]]
"""A batch written to its partials, not yet renamed: (path, partial, bytes, sha256), and the outcomes of the
files that could not be copied."""


def _copy_batch(src: Path, dst: Path, rels: list[str], verify: bool) -> list[Outcome]:
    """Copy small files into place (``_write_batch``, a sync, ``_place_batch``): not yet durable (see there)."""
    written = _write_batch(src, dst, rels, verify)
    sync_all(dst)
    return _place_batch(dst, written)


def _write_batch(src: Path, dst: Path, rels: list[str], verify: bool, linked: Collection[str] = ()) -> Written:
    """Write small files to their partials, each verified and given its source's mode and times. The caller
    syncs the file system before any of them is renamed into place (``_place_batch``): no file is under its
    final name before its bytes are on disk. A name of ``linked`` is not written: it is to be made a hard link
    to its group's copy when the batch is placed (an entry ``LINKED``, after the batch's copies).

    One sync of the destination's file system per batch instead of an fsync per file. It also makes the
    renames and the journal of the batch before durable: the caller counts a batch's files done only
    after the next sync (the next batch's, or its own), so what a checkpoint lists as done is on disk
    under its final name. Killed before that sync, the batch is not done and is copied again (over the
    copies already in place).
    """
    written: list[tuple[str, str, int, str]] = []
    out: list[Outcome] = []
    later: list[tuple[str, str, int, str]] = []
    with Source(src) as source:
        for rel in rels:
            if rel in linked:
                later.append((rel, "", 0, LINKED))
                continue
            try:
                tmp, n, sha = _write_one(source, dst, rel, verify)
                written.append((rel, tmp, n, sha))
            except OSError as e:
                out.append((rel, 0, _why(e, src, rel), ""))
    return written + later, out


def _write_one(source: Source, dst: Path, rel: str, verify: bool) -> tuple[str, int, str]:
    """``_write_partial`` of ``rel`` to its partial (made again if the staging directory went away since it
    was made): (partial, bytes, sha256 or 'symlink')."""
    tmp = str(_partial(dst, rel))
    try:
        n, sha = _write_partial(source, rel, tmp, verify)
    except FileNotFoundError:  # the staging directory went away since it was made: make it again
        if os.path.isdir(os.path.dirname(tmp)):
            raise
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        n, sha = _write_partial(source, rel, tmp, verify)
    return tmp, n, sha


def _why(e: OSError, src: Path, rel: str) -> str:
    """The outcome of a copy of ``rel`` that raised ``e``: a skip (``SKIPS``) or why it failed."""
    if isinstance(e, NotRegular):
        return NOT_REGULAR
    if isinstance(e, NotFollowed):
        return NOT_FOLLOWED
    if isinstance(e, Changed):
        return CHANGED
    gone = isinstance(e, FileNotFoundError) and not os.path.lexists(src / rel)
    return GONE if gone else f"{type(e).__name__}: {e}"


def _place_batch(dst: Path, batch: Written, links: Links | None = None) -> list[Outcome]:
    """Rename a written batch into place and journal it (not synced: see ``_write_batch``); its outcomes. Its
    ``LINKED`` names are made hard links to their groups' copies, or copied when that cannot be (``Links``)."""
    written, out = batch
    group = links.group if links is not None else {}
    lines: list[tuple[str, str, int] | tuple[str, str, int, str]] = []
    with contextlib.ExitStack() as stack:
        source: Source | None = None
        for rel, tmp, n, sha in written:
            try:
                if sha == LINKED:
                    assert links is not None
                    if source is None:
                        source = stack.enter_context(Source(links.src))
                    target, n, sha = links.place(source, dst, rel)
                    if target is not None:
                        out.append((rel, 0, None, ""))
                        lines.append((rel, "", 0, target))
                        continue
                else:
                    _place(tmp, dst / rel)
                    if rel in group and links is not None:
                        links.copied(rel)
                out.append((rel, n, None, sha))
                lines.append((rel, sha, n))
            except OSError as e:
                if sha == LINKED and links is not None:  # its copy, made instead, failed as a copy does
                    out.append((rel, 0, _why(e, links.src, rel), ""))
                else:
                    out.append((rel, 0, f"{type(e).__name__}: {e}", ""))
    _journal(dst, lines)
    return out


class Links:
    """The names of the source that are hard links to one file (same st_dev and st_ino, found in the tree),
    and which of them are made hard links to another's copy in the destination instead of being copied.

    A group's first name is copied as any file is; its next names are linked to the copy of the one before
    that is in place (``leader``): on a resume, the last of them counted done (whatever it was linked to, it
    is the group's copy). A name is linked only when it is, in the source, still the file the leader's name
    is, and the leader's copy has the source's size, mtime and mode (the copy of this version of it); it is
    copied otherwise, and when the destination refuses the link (EPERM, EMLINK, EXDEV...: said once an
    attempt). A copy made of a name still of its group becomes the group's copy for the names after it.
    The link is made in the staging directory and renamed into place, as a copy is."""

    def __init__(self, src: Path, verify: bool) -> None:
        self.src = src
        self.verify = verify
        self.names: dict[tuple[int, int], list[str]] = {}
        """Each group's names, sorted, by its (st_dev, st_ino) at the listing."""
        self.group: dict[str, tuple[int, int]] = {}
        """Each name of a group: the group's (st_dev, st_ino)."""
        self.linked: set[str] = set()
        """The names not done yet that are to be linked, not copied (the copy's steps skip them)."""
        self.leader: dict[tuple[int, int], str] = {}
        """Each group's name in place in the destination that the next names are linked to."""
        self.refused: str | None = None
        """The first link the destination refused (said once, then None again: ``said``)."""
        self.said = False

    @classmethod
    def of(
        cls,
        src: Path,
        verify: bool,
        inodes: dict[tuple[int, int], list[str]],
        failed_dirs: Collection[str],
        done: Callable[[str], bool],
    ) -> Links:
        """The groups of ``inodes`` (two names or more, none under ``failed_dirs``), and their names to link:
        every name not ``done`` after the first copy (a name done, or the first name not done). A file with
        names outside the tree too: its names inside are linked together, the others are not the backup's."""
        links = cls(src, verify)
        for key, found in inodes.items():
            names = sorted(n for n in found if not _under(n, failed_dirs)) if len(found) > 1 else []
            if len(names) < 2:
                continue
            links.names[key] = names
            for n in names:
                links.group[n] = key
            was = [n for n in names if done(n)]
            todo = [n for n in names if not done(n)]
            if was:
                links.leader[key] = was[-1]
            links.linked.update(todo if was else todo[1:])
        return links

    def copied(self, rel: str) -> None:
        """``rel`` was copied into place: the copy its group's next names are linked to."""
        key = self.group.get(rel)
        if key is not None:
            self.leader[key] = rel

    def place(self, source: Source, dst: Path, rel: str) -> tuple[str | None, int, str]:
        """Make ``rel`` a hard link to its group's copy: (the name linked to, 0, ""); or copy it into place
        (synced: no sync of the batch covers it before its rename) when that cannot be done: (None, bytes,
        sha256). A failed copy raises, as ``_write_one`` does."""
        target, adopt = self.link(source, dst, rel)
        if target is not None:
            return target, 0, ""
        tmp, n, sha = _write_one(source, dst, rel, self.verify)
        if sha != "symlink":
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _place(tmp, dst / rel)
        if adopt:
            self.copied(rel)
        return None, n, sha

    def link(self, source: Source, dst: Path, rel: str) -> tuple[str | None, bool]:
        """``rel`` made a hard link, in place, to its group's copy: (the name linked to, True); or (None, whether
        a copy of ``rel`` would be the group's copy) when it is not: no copy in place yet, ``rel`` not the
        file it was, the copy not of the version ``rel`` is now, or the link refused."""
        key = self.group[rel]
        leader = self.leader.get(key)
        try:
            d, name = source.of(rel)
            now = os.stat(name, dir_fd=d, follow_symlinks=False)
        except OSError:
            return None, False  # its copy says what became of it
        kind = stat.S_IFMT(now.st_mode)  # a file, or a symlink with several names
        adopt = kind in (stat.S_IFREG, stat.S_IFLNK) and (now.st_dev, now.st_ino) == key
        if leader is None or not adopt:
            return None, adopt
        try:
            d, name = source.of(leader)
            was = os.stat(name, dir_fd=d, follow_symlinks=False)
            copy = os.lstat(dst / leader)
        except OSError:
            return None, True
        if (
            (was.st_dev, was.st_ino) != key
            or stat.S_IFMT(copy.st_mode) != kind
            or (copy.st_size, copy.st_mtime_ns, copy.st_mode & MODE_KEPT)
            != (now.st_size, now.st_mtime_ns, now.st_mode & MODE_KEPT)
        ):
            return None, True
        tmp = _partial(dst, rel)
        tmp = tmp.with_name(f"link-{tmp.name}")  # not the copy's partial: a large one's is kept for a resume
        try:
            _remove(tmp)
            os.link(dst / leader, tmp, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.ENOENT and self.refused is None and not self.said:
                self.refused = f"{rel}: {e.strerror or e}"
            return None, True
        _place(str(tmp), dst / rel)
        if os.path.lexists(tmp):  # ``rel`` was that link already: the rename did nothing
            os.unlink(tmp)
        if self.verify and os.lstat(dst / rel).st_ino != copy.st_ino:
            raise Differs(errno.EIO, f"verification failed: {rel} is not a hard link to {leader} in the destination")
        return leader, True

    def say(self, ctx: OperationContext) -> None:
        """Say, once an attempt, that the destination refused a link (the names are copied instead)."""
        if self.refused is not None:
            ctx.log.warning(
                f"the destination refused a hard link ({self.refused}): names hard-linked in the source are"
                " copied instead where it refuses"
            )
            self.refused, self.said = None, True


def _journal(dst: Path, done: Sequence[tuple[str, str, int] | tuple[str, str, int, str]]) -> None:
    """Append copied files (path, sha256, bytes copied) to the manifest journal (the checkpoint stays small;
    duplicates: last wins); a name made a hard link: (path, "", 0, the name linked to)."""
    with open(dst / JOURNAL, "a", opener=private_opener) as fh:
        fh.writelines(json.dumps(x) + "\n" for x in done)


Known = dict[str, tuple[str, int, str | None]]
"""What the journal or the manifest says of each name: (sha256 or 'symlink', size, the name it is a hard link
to or None)."""


def _read_journal(dst: Path) -> Known:
    """The journal's files: path -> (sha256, size, linked to); empty when there is none."""
    out: Known = {}
    with contextlib.suppress(FileNotFoundError), open(dst / JOURNAL) as fh:
        for line in fh:
            try:
                rel, sha, size, *link = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash: its file is not done and is copied again
            out[rel] = (sha, size, link[0] if link else None)
    return out


def _read_manifest(dst: Path, digest: str) -> Known | None:
    """The files of the manifest this operation wrote (its sha256 is ``digest``); None when it is not that."""
    try:
        data = (dst / MANIFEST).read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != digest:
        return None
    return {rel: (v["sha256"], v["size"], v.get("link")) for rel, v in json.loads(data)["files"].items()}


def _describe_copy(path: Path) -> tuple[str, int, None] | None:
    """(sha256 or 'symlink', size, None) of a copy in the destination, read back; None when it is not there."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "symlink", 0, None
    return (_sha(path), st.st_size, None) if stat.S_ISREG(st.st_mode) else None


def _open_partial(dst: Path, rel: str, offset: int) -> tuple[int, hashlib._Hash]:
    """Prepare ``rel``'s partial for appending at ``offset`` (0 if it does not agree); returns (offset, hash so
    far)."""
    (dst / rel).parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(dst, rel)
    tmp.parent.mkdir(exist_ok=True)
    h = hashlib.sha256()
    if offset and not tmp.is_symlink() and tmp.is_file() and tmp.stat().st_size >= offset:
        with open(tmp, "r+b") as fo:
            fo.truncate(offset)
        with open(tmp, "rb") as fi:
            left = offset
            while left:
                b = fi.read(min(CHUNK, left))
                if not b:
                    break
                h.update(b)
                left -= len(b)
        return offset, h
    _create(tmp).close()
    return 0, hashlib.sha256()


def _append(
    src: Path, rel: str, copied: os.stat_result, dst: Path, offset: int, length: int, h: hashlib._Hash, verify: bool
) -> int:
    """Copy up to ``length`` bytes from ``offset`` of the source file ``rel`` into its partial (fsynced;
    ``verify``: each block read back as it is written); returns bytes copied. Changed, nothing copied, when
    the source is no longer the version ``copied`` was taken of (its copy is started again); a copy that
    differs is removed (OSError)."""
    tmp = _partial(dst, rel)
    with Source(src) as source:
        fi = source.open(rel)
    try:
        if not same_version(copied, os.fstat(fi)):
            raise Changed(errno.EAGAIN, "changed since its copy started", rel)
        with open(tmp, "r+b") as fo:
            try:
                n = _copy_range(fi, fo.fileno(), offset, length, h, verify, flush=True)
            except Differs as e:
                tmp.unlink(missing_ok=True)
                raise OSError(f"{e.strerror} from {src / rel}") from None
            os.fsync(fo.fileno())
    finally:
        os.close(fi)
    return n


def _set_dir_stats(src: Path, dst: Path, dirs: list[str]) -> list[str]:
    """Give directories their source's mode, times and extended attributes (``""``: the root). The source's
    are read first, each directory reached as files are (``Source``: by path, a directory above swapped for a
    link gave its copy the mode and times of one outside the source), in the listing's order (parents first:
    the directory kept open is mostly on the way); then set deepest first, a parent's mode last (0o500 there
    would forbid the rest). Returns what could not be done, with why: a source directory renamed since the
    listing is a warning, not the failure of a backup whose files are all copied."""
    problems: list[str] = []
    found: list[tuple[str, os.stat_result, list[tuple[str, bytes]]]] = []
    with Source(src) as source:
        for d in dirs:
            try:
                fd = source.open_dir(d)
                try:
                    found.append((d, os.fstat(fd), _read_xattrs(fd)))
                finally:
                    os.close(fd)
            except NotFollowed:
                problems.append(f"{d or '.'}: {NOT_FOLLOWED}")
            except PermissionError as e:  # one that cannot be read (mode 000): its mode and times from its parent
                try:  # (it was made 0755 at the destination, more open than the source)
                    st = source.lstat_dir(d) if d else os.stat(src)
                except OSError:
                    problems.append(f"{d or '.'}: {e.strerror or e}")
                else:
                    if stat.S_ISDIR(st.st_mode):
                        found.append((d, st, []))  # its extended attributes cannot be read
            except OSError as e:
                problems.append(f"{d or '.'}: {GONE if isinstance(e, FileNotFoundError) else e.strerror or e}")
    for d, st, attrs in reversed(found):
        t = dst / d if d else dst
        try:
            if stat.S_ISDIR(os.lstat(t).st_mode):
                os.utime(t, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
                _write_xattrs(t, attrs)
                _copy_owner(t, st)
                os.chmod(t, stat.S_IMODE(st.st_mode))  # a directory, just seen: ours
        except OSError as e:
            problems.append(f"{d or '.'}: {GONE if isinstance(e, FileNotFoundError) else e.strerror or e}")
    return problems


def _read_xattrs(fd: int) -> list[tuple[str, bytes]]:
    """The extended attributes of the open ``fd`` (none where the file system has none)."""
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.ENODATA, errno.EINVAL):
            raise
        return []
    out: list[tuple[str, bytes]] = []
    for name in names:
        with contextlib.suppress(OSError):  # removed since the listing, or not readable by us
            out.append((name, os.getxattr(fd, name)))
    return out


def _write_xattrs(path: Path, attrs: list[tuple[str, bytes]]) -> None:
    """Set ``attrs`` on ``path`` (not followed), as ``shutil.copystat`` does: what may not be set is left."""
    for name, value in attrs:
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.ENODATA, errno.EINVAL):
                raise


def _manifest_files(
    dst: Path, entries: list[str], known: Known, done: Collection[str], links: Links | None = None
) -> dict[str, dict[str, str | int]]:
    """The manifest's files: every entry copied, with the sha256 and size of the bytes copied; a name made a
    hard link, with those of the copy it is linked to and that copy's name (``link``: the name that was
    copied, whatever name the link was made to). A done entry missing from ``known`` (its record lost) is
    described by reading its copy back, or as a link when its copy is one file with a name of its group
    before it."""
    files: dict[str, dict[str, str | int]] = {}
    for rel in entries:
        got = known.get(rel)
        if got is None and rel in done:
            if links is not None and rel in links.group and (same := _same_file(dst, rel, links, files)):
                files[rel] = same
                continue
            got = _describe_copy(dst / rel)
        if got is None:
            continue
        sha, size, link = got
        if link is None:
            files[rel] = {"sha256": sha, "size": size}
            continue
        seen = {rel}
        while (to := known.get(link)) is not None and to[2] is not None and to[2] not in seen:
            seen.add(link)
            link = to[2]
        copy = to if to is not None and to[2] is None else _describe_copy(dst / link)
        if copy is None:  # the copy linked to is no longer there (nor its link): what the name is now
            if (copy := _describe_copy(dst / rel)) is not None:
                files[rel] = {"sha256": copy[0], "size": copy[1]}
            continue
        files[rel] = {"sha256": copy[0], "size": copy[1], "link": link}
    return files


def _same_file(dst: Path, rel: str, links: Links, files: dict[str, dict[str, str | int]]) -> dict[str, str | int]:
    """The manifest's entry of ``rel`` as a link, when its copy is one file with that of a name of its group
    before it (already in ``files``); empty when it is not."""
    try:
        ino = os.lstat(dst / rel).st_ino
    except OSError:
        return {}
    for name in links.names[links.group[rel]]:
        if name == rel:
            break
        got = files.get(name)
        if got is not None and got["sha256"] != "symlink":
            with contextlib.suppress(OSError):
                if os.lstat(dst / name).st_ino == ino:
                    return {"sha256": got["sha256"], "size": got["size"], "link": got.get("link", name)}
    return {}


def _remove_manifest_temps(dst: Path, entries: list[str]) -> None:
    """Remove the manifest's temporary files an attempt killed while it wrote the manifest left at the
    destination's root (the copy then differed from an uninterrupted one by that file); a source file of
    that name, copied there, stays."""
    copied = set(entries)
    with os.scandir(dst) as it:
        for entry in it:
            m = TEMP_NAME.fullmatch(entry.name)
            if m and m["name"] == MANIFEST and entry.name not in copied:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _write_manifest(src: Path, dst: Path, files: dict[str, dict[str, str | int]]) -> str:
    """Write the manifest; its sha256. In a thread: json's ``indent`` takes the pure-Python encoder, 15-40 ms
    for 5,000 files, which held the event loop."""
    text = json.dumps({"source": str(src), "files": files}, indent=1).encode()
    atomic_write(dst / MANIFEST, text)
    return hashlib.sha256(text).hexdigest()


@operation("backup_operation", params=BackupParams, description="copy a tree, verified and resumable")
async def backup(ctx: OperationContext, p: BackupParams) -> dict:
    """Copy source to destination; the result gives files (names backed up), bytes (copied: a name made a hard
    link to another's copy adds none), links (such names) and the manifest path."""
    src, dst = Path(p.source), Path(p.destination)
    ctx.progress(step="listing")
    listing = await asyncio.to_thread(_list, src)
    failed_dirs = await asyncio.to_thread(_make_dirs, dst, listing.dirs)
    # One failure per path: a directory past PATH_MAX can be neither listed nor made.
    for rel, why in {**failed_dirs, **dict(listing.unreadable)}.items():
        ctx.fail(rel, why)
    dirs = [d for d in listing.dirs if d not in failed_dirs and not _under(d, failed_dirs)]
    entries = [e for e in listing.entries if not _under(e, failed_dirs)]
    sizes = listing.sizes
    for rel in listing.special:
        ctx.skip(rel, "not a regular file, directory or symlink")
    for rel, kind in listing.kernel:
        ctx.skip(rel, f"{kind} is mounted here, {KERNEL_FS}: only the directory is made")
    for rel in listing.own:  # copied, it would be overwritten by (or overwrite) the manifest or its journal
        ctx.skip(rel, "the name of the backup's own file at the destination root")
    st = ctx.state
    st.setdefault("bytes", 0)
    since = reading_since(ctx)
    if not ctx.resuming:
        await asyncio.to_thread((dst / JOURNAL).unlink, missing_ok=True)
    else:  # glued to the line this attempt appends first, a torn one hid that copy's record
        await asyncio.to_thread(cut_torn_line, dst / JOURNAL)
    links = Links.of(src, p.verify, listing.inodes, failed_dirs, ctx.is_done)
    linked = links.linked
    # A name linked to another's copy copies no bytes (only a group's first name is counted).
    bytes_total = (
        sum(sizes.get(e, 0) for e in entries)
        - sum(sizes.get(n, 0) for names in links.names.values() for n in names[1:])
        + st.get("copied_instead", 0)
    )
    ctx.progress(total=len(entries), step="copying", bytes_total=bytes_total, bytes=st["bytes"])
    grouped = {n for names in links.names.values() for n in names}
    again = await _changed_copies(ctx, src, dst, entries, since, grouped)
    steps = _steps([e for e in entries if e in again or not ctx.is_done(e)], sizes, p.chunk_checkpoint)
    mounts = await asyncio.to_thread(mounts_in, dst)  # synced with the destination's own file system
    placed: list[Outcome] = []
    """A batch renamed into place that no sync has covered since: counted done after the next one."""
    ahead: asyncio.Future[Written] | None = None
    """The next batch, being written meanwhile (another thread): its partials only, never renamed."""
    try:
        for k, step in enumerate(steps):
            if isinstance(step, str):
                if placed:
                    await asyncio.to_thread(sync_all, dst, mounts)
                    await _count(ctx, placed, linked)
                    placed = []
                if step in again and ctx.is_done(step):  # copied before, changed since: done, so not an item
                    await _copy_large_again(ctx, p, src, dst, step)
                    continue
                async for big in ctx.items([step]):
                    try:
                        adopt = True
                        if big in linked:
                            target, adopt = await asyncio.to_thread(_link_large, links, dst, big)
                            links.say(ctx)
                            if target is not None:
                                continue
                        before = st["bytes"]
                        await _copy_large(ctx, p, src, dst, big)
                        if adopt:
                            links.copied(big)
                        if big in linked:
                            _copied_instead(ctx, st["bytes"] - before)
                    except NotRegular:
                        ctx.skip(big, NOT_REGULAR)
                    except NotFollowed:
                        ctx.skip(big, NOT_FOLLOWED)
                    except Changed:
                        ctx.fail(big, CHANGED)
                    except FileNotFoundError:
                        if os.path.lexists(src / big):
                            raise
                        ctx.skip(big, GONE)
                continue
            written = await (ahead or asyncio.to_thread(_write_batch, src, dst, step, p.verify, linked))
            ahead = None
            if k + 1 < len(steps) and not isinstance(nxt := steps[k + 1], str):
                ahead = asyncio.ensure_future(asyncio.to_thread(_write_batch, src, dst, nxt, p.verify, linked))
            try:
                await asyncio.to_thread(sync_all, dst, mounts)  # this batch's bytes, the renames of the one before
                if placed:
                    await _count(ctx, placed, linked)
            except BaseException:  # a stop, too many failures: no partial is left behind (nor counted)
                await _settle(dst, written, ahead, links)
                ahead = None
                raise
            placed = await asyncio.to_thread(_place_batch, dst, written, links)
            links.say(ctx)
    except BaseException:
        if ahead is not None:  # its thread must not go on writing partials once this attempt is over
            with contextlib.suppress(BaseException):
                await ahead
        raise
    if placed:
        await asyncio.to_thread(sync_all, dst, mounts)
        await _count(ctx, placed, linked)
    files = await _finish(ctx, src, dst, dirs, entries, links)
    return {
        "files": len(files),
        "bytes": sum(int(v["size"]) for v in files.values() if "link" not in v),
        "links": sum(1 for v in files.values() if "link" in v),
        "failures": ctx.failures,
        "manifest": str(dst / MANIFEST),
    }


async def _changed_copies(
    ctx: OperationContext,
    src: Path,
    dst: Path,
    entries: list[str],
    since: float | None,
    grouped: Collection[str],
) -> set[str]:
    """The files an earlier attempt copied that changed in the source since the backup began reading it, or
    whose copy is gone from the destination since: they are copied again (a copy is written over the one in
    place, and journaled again; a large one by ``_copy_large_again``). A name of a group of hard links
    (``grouped``: copied again, it would no longer be the file its group's other names are linked to) changed
    since is said in the log to be a copy of the file before the change. Left as they were, a resumed backup
    was "completed" with copies older than its source, or with no copy at all of a file deleted from the
    destination between the two attempts."""
    done = [e for e in entries if ctx.is_done(e)] if ctx.done_keys else []
    gone = await asyncio.to_thread(_gone_copies, dst, done) if done else set()
    if gone:
        ctx.log.info(f"{len(gone)} files copied before the interruption are gone from the destination: copied again")
    if since is None:
        return gone
    changed = await asyncio.to_thread(changed_since, src, done, since) if done else set()
    stale = sorted(e for e in changed if e in grouped)
    if stale:
        shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        ctx.log.warning(
            f"{len(stale)} files copied before the interruption changed in the source since: their copies are of "
            f"the file before the change ({shown}); the next backup copies them again"
        )
    again = changed.difference(stale)
    if again:
        ctx.log.info(f"{len(again)} files copied before the interruption changed in the source since: copied again")
    return again | gone


def _gone_copies(dst: Path, done: list[str]) -> set[str]:
    """The names of ``done`` with nothing at the destination (a symlink's own name counts)."""
    return {rel for rel in done if not os.path.lexists(dst / rel)}


async def _copy_large_again(ctx: OperationContext, p: BackupParams, src: Path, dst: Path, rel: str) -> None:
    """A large file an earlier attempt copied, changed since: copied again (``_copy_large``), not as an item
    (it is done). One that cannot be is said in the log; its copy stays the one of the file before."""
    try:
        await _copy_large(ctx, p, src, dst, rel)
    except (NotRegular, NotFollowed, Changed, FileNotFoundError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        ctx.log.warning(f"{rel} changed since an earlier attempt copied it and was not copied again ({why})")


def _link_large(links: Links, dst: Path, rel: str) -> tuple[str | None, bool]:
    """``Links.link`` of a large file's name, made durable and journaled as a large file's copy is (``_seal``):
    it is counted done at once."""
    with Source(links.src) as source:
        target, adopt = links.link(source, dst, rel)
    if target is not None:
        fd = os.open((dst / rel).parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _journal(dst, [(rel, "", 0, target)])
    return target, adopt


def _steps(pending: list[str], sizes: dict[str, int], large: int) -> list[str | list[str]]:
    """The copy in order: a large file alone (its path), small ones in batches of up to SMALL_BATCH (a list)."""
    steps: list[str | list[str]] = []
    for rel in pending:
        if sizes.get(rel, 0) > large:
            steps.append(rel)
        elif steps and isinstance(steps[-1], list) and len(steps[-1]) < SMALL_BATCH:
            steps[-1].append(rel)
        else:
            steps.append([rel])
    return steps


async def _settle(dst: Path, written: Written, ahead: asyncio.Future[Written] | None, links: Links) -> None:
    """Leaving the copy early: the batch being written meanwhile is waited for (its thread would otherwise go
    on writing partials under a later attempt), then both are synced and renamed into place, not counted."""
    batches = [written]
    if ahead is not None:
        with contextlib.suppress(Exception):  # its files are not done: a resume copies them again
            batches.append(await ahead)
    await asyncio.to_thread(sync_all, dst)
    for batch in batches:
        await asyncio.to_thread(_place_batch, dst, batch, links)


async def _count(ctx: OperationContext, results: list[Outcome], linked: Collection[str] = ()) -> None:
    """Count a batch's files, on disk under their final names: done, skipped or failed. A name of ``linked``
    that was copied instead adds its bytes to the total (``_copied_instead``)."""
    st = ctx.state
    async for rel, n, err, _sha in ctx.items(results, key=lambda r: r[0]):
        if err in SKIPS:  # deleted or replaced since the listing: not a failure
            ctx.skip(rel, err)
            continue
        if err is not None:
            ctx.fail(rel, err)
            continue
        st["bytes"] += n
        ctx.step = rel
        ctx.metrics["bytes"] = st["bytes"]
        if n and rel in linked:
            _copied_instead(ctx, n)


def _copied_instead(ctx: OperationContext, n: int) -> None:
    """A name that was to be a link was copied (``n`` bytes): the bytes to copy, counted without it, grow."""
    ctx.state["copied_instead"] = ctx.state.get("copied_instead", 0) + n
    ctx.metrics["bytes_total"] = ctx.metrics.get("bytes_total", 0) + n


async def _finish(
    ctx: OperationContext, src: Path, dst: Path, dirs: list[str], entries: list[str], links: Links | None = None
) -> dict[str, dict[str, str | int]]:
    """The end, in an order where a SIGKILL anywhere resumes to the same manifest and modes: directory modes
    and times; the manifest; a checkpoint saying the manifest holds what the journal held; the journal's
    removal; the root's mode and times (the removal changed its mtime). Removed before, the journal left a
    resume with no record of the files copied before the kill. Every step can be done again."""
    st = ctx.state
    known = await asyncio.to_thread(_read_journal, dst)
    if "manifest" in st:  # an attempt reached the end before: its manifest has what its journal had
        before = await asyncio.to_thread(_read_manifest, dst, st["manifest"])
        if before is None:
            ctx.log.warning("the manifest changed since this backup wrote it: reading the copies back")
        known = {**(before or {}), **known}
    for m in await asyncio.to_thread(mounts_in, dst):  # before the directories' times are set: it changes them
        await asyncio.to_thread(_remove, m / mount_staging(dst))
    problems = await asyncio.to_thread(_set_dir_stats, src, dst, dirs)
    files = await asyncio.to_thread(_manifest_files, dst, entries, known, ctx.done_keys, links)
    st["manifest"] = await asyncio.to_thread(_write_manifest, src, dst, files)
    await ctx.checkpoint(next_step="manifest written", now=True)
    await asyncio.to_thread((dst / JOURNAL).unlink, missing_ok=True)
    await asyncio.to_thread(_remove, dst / STAGING)  # what a failed copy or a killed attempt left there
    await asyncio.to_thread(_remove_manifest_temps, dst, entries)
    problems += await asyncio.to_thread(_set_dir_stats, src, dst, [""])
    for problem in problems:
        ctx.log.warning(f"directory mode and times not set: {problem}")
    return files


async def _copy_large(ctx: OperationContext, p: BackupParams, src: Path, dst: Path, rel: str) -> None:
    """Copy one large file in chunks, saving the offset with a checkpoint every chunk_checkpoint bytes.

    The copy is sealed only when the source is, at its end, the version (inode, size, mtime) it was at its
    start (``_seal``); a chunk finding it changed stops the copy early (``_append``). Changed, the file is
    copied again from its start, COPY_TRIES times in all, then Changed is raised (an item failure). Each
    thread opens what it reads itself (``Source``): a forced stop leaves no descriptor shared with one."""
    st = ctx.state
    base = st["bytes"]
    ctx.step = rel
    for _ in range(COPY_TRIES):
        sst = await asyncio.to_thread(_source_stat, src, rel)
        ident = [rel, sst.st_size, sst.st_mtime_ns, sst.st_ino]
        part = st.get("partial") or {}
        # Go on from the saved offset only if the source is the file it was taken from.
        offset = part.get("offset", 0) if part.get("source") == ident else 0
        offset, h = await asyncio.to_thread(_open_partial, dst, rel, offset)
        if offset:
            ctx.log.info(f"resuming {rel} at byte {offset}")
        try:
            while offset < sst.st_size:
                n = await asyncio.to_thread(_append, src, rel, sst, dst, offset, p.chunk_checkpoint, h, p.verify)
                if n == 0:
                    break
                offset += n
                st["partial"] = {"source": ident, "offset": offset}
                ctx.progress(bytes=base + offset)  # progress inside the item: the stall clock starts again
                if offset < sst.st_size:  # and in the percent: 0 of 1 items for the whole of a disk image's copy
                    ctx.fraction = offset / sst.st_size
                # Saved at once with the file not yet done: a resume re-enters it at this offset.
                await ctx.checkpoint(next_step=f"copying {rel}", now=True)
            # Verified as it was copied (``_append``): the bytes before ``offset`` at a resume were verified by
            # the attempt that copied them (and the hash so far was read back from them).
            sha = h.hexdigest()
            if await asyncio.to_thread(_seal, src, rel, sst, offset, dst):
                st.pop("partial", None)
                st["bytes"] = base + offset
                await asyncio.to_thread(_journal, dst, [(rel, sha, offset)])
                return
        except Changed:
            pass
        st.pop("partial", None)
        ctx.progress(bytes=base)
        ctx.fraction = 0.0
        ctx.log.warning(f"{rel} changed while it was copied: copying it again from its start")
    await asyncio.to_thread(_partial(dst, rel).unlink, missing_ok=True)
    raise Changed(errno.EAGAIN, CHANGED, rel)
