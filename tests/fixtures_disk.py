"""A small real file system to fill: the fault suite's full disk, and the API's store outage."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 5 MB tmpfs, unmounted (with anything mounted on it) afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = mount("-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt))
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        for target in (mnt / "state", mnt):
            if os.path.ismount(target):
                subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def fill(mnt: Path) -> Path:
    """Write zeros until the file system is full; the file to delete to free the space."""
    path = mnt / "fill"
    chunk = b"\0" * (1 << 16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return path


def fill_inodes(mnt: Path) -> Path:
    """Leave the tmpfs at ``mnt`` no inode to make a file with (bytes still free): remounted with room for a
    few more files than it holds, then empty files made until none can be. The directory to delete (with
    ``shutil.rmtree``) to give them back."""
    st = os.statvfs(mnt)
    r = mount("-o", f"remount,nr_inodes={st.f_files - st.f_ffree + 8}", str(mnt))
    if r.returncode != 0:
        pytest.skip(f"cannot limit the tmpfs's inodes here: {r.stderr.strip()}")
    spent = mnt / "inodes"
    spent.mkdir()
    for i in range(64):
        try:
            os.close(os.open(spent / str(i), os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            return spent
    raise AssertionError("the tmpfs still makes files")


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped): what a writer killed mid-write leaves named."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def leave_temps(left: dict[str, Path]) -> None:
    """Write each temp file as a killed ``atomic_write`` left it, an hour old unless its key says "fresh"."""
    old = time.time() - 3600
    for what, path in left.items():
        path.write_bytes(b"{" * 500)
        if "fresh" not in what:
            os.utime(path, (old, old))
