"""Private files: everything Outlast writes is its user's alone, 0600 files and 0700 directories.

Modes are given where each file is created (never a process-wide umask: the commands an operation
runs keep the user's own), so moving or sharing a state directory exposes nothing.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import StoreError

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_opener(path: str | os.PathLike[str], flags: int) -> int:
    """For ``open(path, mode, opener=private_opener)``: a file that is created is created 0600."""
    return os.open(path, flags, FILE_MODE)


def create_private(path: Path) -> None:
    """``path`` exists afterwards, created 0600 if it did not (for files others open, like SQLite's)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))


def make_private(*paths: Path) -> None:
    """Narrow existing files to 0600 (a state dir written by an older version); missing ones are skipped."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(p).st_mode & 0o077:
                os.chmod(p, FILE_MODE)


def private_dir(state_dir: Path, name: str) -> Path:
    """``state_dir / name``, made 0700 if missing (never the state dir itself, nor its parents). A file in
    its place (or anything else that stops it) is a StoreError in one line, not an internal error: "File
    exists" named neither the directory nor what to do."""
    path = state_dir / name
    try:
        path.mkdir(mode=DIR_MODE, exist_ok=True)
    except FileExistsError:
        raise StoreError(
            f"state dir {state_dir}: {name} is not a directory (a file is in its place): move it out of the way"
        ) from None
    except OSError as e:
        raise StoreError(f"state dir {state_dir}: cannot make {name} ({e.strerror or e})") from None
    return path


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
