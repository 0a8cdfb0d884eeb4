"""What a state directory must be before Outlast opens, makes or changes anything in it.

Checked by every command that opens the local store, those that only read included (``SqliteCore``'s open),
and by ``outlast ls``'s quick look (which leaves a refused one to that open, to say why). Standard library
only, and a few ``lstat`` calls: every command's start pays for it.

Refused, in one line naming the path, what is wrong and what to do (the store's error: exit 8), before
anything in the state dir is made or changed:

- a symbolic link (or anything but a regular file) at ``outlast.db`` or its ``-journal``, ``-wal`` or ``-shm``:
  through a link SQLite opens, and Outlast narrows to 0600, whatever file it names; a dangling one made the
  database wherever it pointed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DB_NAME = "outlast.db"
DB_FILES = (DB_NAME, f"{DB_NAME}-journal", f"{DB_NAME}-wal", f"{DB_NAME}-shm")
"""The database and the files SQLite opens beside it as it finds them (the journal: its hot-journal check)."""


def refusal(state_dir: Path) -> str | None:
    """Why the state dir at ``state_dir`` must not be opened, in one line; None when it may (or is not there:
    the store's open makes it, or says what is in its place)."""
    for name in DB_FILES:
        try:
            st = os.lstat(state_dir / name)
        except OSError:
            continue  # not there; or the state dir is not a directory, which the open says
        if (why := _not_a_file(state_dir, name, st)) is not None:
            return why
    return None


def _not_a_file(state_dir: Path, name: str, st: os.stat_result) -> str | None:
    """Why ``name``, one of the database's files, cannot be used as it is (``st``: its ``lstat``)."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return (
            f"state dir {state_dir}: {name} is a symbolic link (to {_target(state_dir / name)}): Outlast opens"
            " its database's files in the state dir itself, never through a link (the file it names would be"
            " changed, or made); put the file itself there, or move the link out of the way"
        )
    if not stat.S_ISREG(mode):
        kind = "directory" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "special file"
        return f"state dir {state_dir}: {name} is not a regular file (a {kind}): move it out of the way"
    return None


def _target(link: Path) -> str:
    """What the symbolic link ``link`` names, for a message."""
    try:
        return os.readlink(link)
    except OSError:
        return "?"
