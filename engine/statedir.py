"""What a state directory must be before Outlast opens, makes or changes anything in it.

Checked by every command that opens the local store, those that only read included (``SqliteCore``'s open),
and by ``outlast ls``'s quick look (which leaves a refused one to that open, to say why). Standard library
only, and a few ``lstat`` calls: every command's start pays for it.

Refused, in one line naming the path, what is wrong and what to do (the store's error: exit 8), before
anything in the state dir is made or changed:

- a state dir whose path is too long for SQLite (its files' paths over 512 bytes): said before it, or its
  ``logs`` and ``locks``, were made;
- a state dir that is not the effective user's (as ssh refuses a ``~/.ssh`` that is not yours): its owner's
  queued work (``command`` operations) would run as this user, root too, and the files made there would lock
  its owner out, or be theirs to read; a state dir that is a link to a directory of one's own is used (a link
  someone else owns, not root, is refused: they could point it elsewhere at any time);
- a symbolic link at ``logs``, ``locks``, ``detached`` or ``outputs``, or one of them not the user's: its
  owner, or whoever can change the link, would read what is written there (a command's output) or
  choose where it goes;
- a symbolic link (or anything but a regular file) at ``outlast.db`` or its ``-journal``, ``-wal`` or ``-shm``:
  through a link SQLite opens, and Outlast narrows to 0600, whatever file it names; a dangling one made the
  database wherever it pointed. One of them not the user's (left by outlast run as root there) is refused
  with its owner named, not "Operation not permitted";
- an ``outlast.db`` with another hard link (a ``cp -al`` snapshot of the state dir): SQLite keeps a WAL beside
  each path, so the two lose each other's acknowledged writes, or corrupt the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .paths import DETACHED

DB_NAME = "outlast.db"
DB_FILES = (DB_NAME, f"{DB_NAME}-journal", f"{DB_NAME}-wal", f"{DB_NAME}-shm")
"""The database and the files SQLite opens beside it as it finds them (the journal: its hot-journal check)."""
NEW_DB_PREFIX = f".{DB_NAME}.new-"
"""The names a new database is built under (``.outlast.db.new-PID-THREAD``, or ``-PID-NS``: numbers of 20 digits
at most) before it is linked to ``outlast.db``."""
SUBDIRS = ("logs", "locks", DETACHED, "outputs")
"""The directories Outlast keeps in a state dir."""


SQLITE_MAX_PATH = 512
"""The longest path of a file SQLite's unix VFS opens (its ``MAX_PATHNAME``), in bytes."""
LONGEST_NAME = len(f"/{NEW_DB_PREFIX}{4194304}-{2**64}-journal")
"""The longest name SQLite opens in a state dir, with the ``/`` before it: a new database's, built under
``.outlast.db.new-PID-THREAD`` (the largest pid and thread id), with its journal's suffix."""
MAX_STATE_DIR = SQLITE_MAX_PATH - LONGEST_NAME
"""Bytes of a state dir's absolute path, at most: a longer one failed with SQLite's "unable to open database
file", after its ``logs`` and ``locks`` were made."""


def refusal(state_dir: Path) -> str | None:
    """Why the state dir at ``state_dir`` must not be opened, in one line; None when it may (or is not there:
    the store's open makes it, or says what is in its place)."""
    try:
        if (why := _too_long(state_dir, os.path.abspath(state_dir))) is not None:
            return why
        st = os.lstat(state_dir)
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in (os.geteuid(), 0):
                return _foreign_link(state_dir, st.st_uid)
            st = os.stat(state_dir)
            if (why := _too_long(state_dir, os.path.realpath(state_dir))) is not None:  # SQLite resolves links
                return why
    except OSError:  # not there (made by the open), a link to nothing, a path through a file, a relative one in
        return None  # a working directory removed: the open says what is wrong
    if not stat.S_ISDIR(st.st_mode):
        return None  # a file: the open says so
    if st.st_uid != os.geteuid():
        return foreign_state_dir(state_dir, st.st_uid)
    for name in SUBDIRS:
        try:
            st = os.lstat(state_dir / name)
        except OSError:
            continue  # made when needed
        if (why := subdir_problem(state_dir, name, st)) is not None:
            return why
    for name in DB_FILES:
        try:
            st = os.lstat(state_dir / name)
        except OSError:
            continue  # not there
        if (why := _not_a_file(state_dir, name, st)) is not None:
            return why
    return None


def _too_long(state_dir: Path, path: str) -> str | None:
    """Why a state dir whose absolute path (links resolved or not) is ``path`` is too long for SQLite; None."""
    length = len(os.fsencode(path))
    if length <= MAX_STATE_DIR:
        return None
    return (
        f"state dir {state_dir}: its path is {length} bytes long, and SQLite opens no file whose path is longer than"
        f" {SQLITE_MAX_PATH} bytes, which leaves {MAX_STATE_DIR} bytes for the state dir (the names of the files in"
        " it take the rest); use a shorter path"
    )


def foreign_state_dir(state_dir: Path, uid: int) -> str:
    """The line refusing a state dir that user ``uid`` owns, not this process's effective user."""
    return (
        f"state dir {state_dir} belongs to {whose(uid)}, not to you ({_me()}): work queued there would"
        f" run as you, and the files you made there would lock its owner out; run outlast as {_as(uid)}, or use a"
        " state dir of your own"
    )


def subdir_problem(state_dir: Path, name: str, st: os.stat_result) -> str | None:
    """Why the state dir's directory ``name`` cannot be used (``st``: its ``lstat``): a symbolic link, or
    another user's; None otherwise (a file in its place is said where it is made: ``files.private_dir``)."""
    if stat.S_ISLNK(st.st_mode):
        return (
            f"state dir {state_dir}: {name} is a symbolic link (to {_target(state_dir / name)}): Outlast keeps its"
            f" {name} in the state dir itself, never where a link points (whoever can change the link could read,"
            " or choose, where what is written there goes); move the link out of the way"
        )
    if stat.S_ISDIR(st.st_mode) and st.st_uid != os.geteuid():
        return (
            f"state dir {state_dir}: {name} belongs to {whose(st.st_uid)}, not to you ({_me()}):"
            f" its owner could read or change what Outlast writes in it (was outlast run as {_as(st.st_uid)}"
            " here?); move it out of the way (it is made again)"
        )
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
    if st.st_uid != os.geteuid():
        return (
            f"state dir {state_dir}: {name} belongs to {whose(st.st_uid)}, not to you ({_me()}):"
            f" Outlast opens only its user's own files (was outlast run as {_as(st.st_uid)} here?); have it"
            f" given to you (chown, as root), or run outlast as {_as(st.st_uid)}"
        )
    if name == DB_NAME and st.st_nlink > 1 and not being_made(state_dir, st) and not _one_link_now(state_dir, st):
        return (
            f"state dir {state_dir}: {name} has {st.st_nlink} hard links (another path names the same file: a copy"
            " made with cp -al or ln?), and SQLite keeps a WAL beside each path: writes through one are lost, or"
            " corrupt the file, when the other is used; give this state dir a copy of its own (cp -a, not cp -al"
            " or ln), or remove the other link"
        )
    return None


def _one_link_now(state_dir: Path, st: os.stat_result) -> bool:
    """Whether ``outlast.db`` is now the same file (``st``) with one link: the name it was built under was
    unlinked between the look that saw two and ``being_made``'s (another process made the state dir at that
    moment, and the open beside it was refused as a ``cp -al`` copy)."""
    try:
        now = os.lstat(state_dir / DB_NAME)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) and now.st_nlink == 1


def being_made(state_dir: Path, st: os.stat_result) -> bool:
    """Whether the other link of ``outlast.db`` (``st``) is the name a new database was built under, beside it
    in ``state_dir``: linked into place a moment ago (unlinked next), or left by a process killed between the
    two. Not a copy's: the store opens it."""
    try:
        with os.scandir(state_dir) as entries:
            for e in entries:
                if e.name.startswith(NEW_DB_PREFIX):
                    other = e.stat(follow_symlinks=False)
                    if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                        return True
    except OSError:
        pass
    return False


def _foreign_link(state_dir: Path, uid: int) -> str:
    return (
        f"state dir {state_dir} is a symbolic link (to {_target(state_dir)}) that belongs to {whose(uid)}, not to"
        f" you ({_me()}): its owner could point it at another directory at any time; give the"
        " directory itself (or a link of your own)"
    )


def whose(uid: int) -> str:
    """A user as a message names them: "alice (uid 1001)", or "uid 1001" when the system has no name for it."""
    name = _user(uid)
    return f"{name} (uid {uid})" if name is not None else f"uid {uid}"


def _me() -> str:
    """This process's effective user, as a message names it after "you": "root, uid 0"."""
    uid = os.geteuid()
    name = _user(uid)
    return f"{name}, uid {uid}" if name is not None else f"uid {uid}"


def _as(uid: int) -> str:
    """How a message says to run something as user ``uid``: "alice", or "uid 1001"."""
    return _user(uid) or f"uid {uid}"


def _user(uid: int) -> str | None:
    import pwd  # here: only a refusal names a user

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _target(link: Path) -> str:
    """What the symbolic link ``link`` names, for a message."""
    try:
        return os.readlink(link)
    except OSError:
        return "?"
