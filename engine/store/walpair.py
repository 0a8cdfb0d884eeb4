"""Which database file the SQLite WAL beside ``outlast.db`` was written for (standard library only: the
quick listing reads it too).

SQLite lays the frames of ``outlast.db-wal`` over whatever file is called ``outlast.db`` when it opens
it. A copy of the database put back over it (a backup restored after a crash), or a new one made after it
was deleted, while the WAL still held writes of the file before, silently took those writes: the
restored operations became the ones of the file they replaced, or its pages a mix of both. So the store
notes, once SQLite has opened both, which database file and which WAL file (device, inode) go together,
in ``outlast.db-owner``; a database that is not the noted one beside the noted WAL is refused while that
WAL holds writes. Both files copied together (a whole state directory restored, or read where it was
copied to) are both new: they were written together, and are opened as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..files import replace_note

OWNER_SUFFIX = "-owner"
_WAL_HEADER = 32
"""Bytes of a WAL's header: a WAL no longer than this holds no writes."""

_NOTE_MAX = 128
"""Bytes of a note (four decimal numbers); a longer file is a damaged one, taken as no note."""

_Id = tuple[int, int]


def _identity(path: Path | str) -> _Id | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _noted(db: Path) -> tuple[_Id, _Id] | None:
    """(database, WAL) as last noted; None when unknown (a store from before this note, or no note)."""
    try:
        fd = os.open(f"{db}{OWNER_SUFFIX}", os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put there never blocks
        try:
            head = os.read(fd, _NOTE_MAX + 1)  # a damaged note of any size costs one short read
        finally:
            os.close(fd)
        if len(head) > _NOTE_MAX:
            return None
        a, b, c, d = (int(x) for x in head.split())
    except (OSError, ValueError):
        return None
    return (a, b), (c, d)


def stale_wal(db: Path) -> str | None:
    """Why ``db`` must not be opened as it is (the WAL beside it holds writes of another file), or None."""
    wal = Path(f"{db}-wal")
    try:
        st = os.stat(wal)
    except FileNotFoundError:
        return None
    noted = _noted(db)
    if st.st_size <= _WAL_HEADER or noted is None or (st.st_dev, st.st_ino) != noted[1]:
        return None
    now = _identity(db)
    if now == noted[0]:
        return None
    what = "missing" if now is None else "not the file it was written for (replaced or restored since)"
    return (
        f"{db.name} is {what}, and {wal.name} holds writes of the one before, which SQLite would lay over it;"
        f" to use this {db.name}, stop every outlast process on this state dir, then move {wal.name} and"
        f" {db.name}-shm out of it; to keep those writes, put the {db.name} they belong to back"
    )


def note_owner(db: Path) -> None:
    """Note ``db`` and the WAL beside it as a pair (once SQLite has opened both); a read-only state dir
    keeps the note it has."""
    db_id, wal_id = _identity(db), _identity(f"{db}-wal")
    if db_id is None or wal_id is None or _noted(db) == (db_id, wal_id):
        return
    path = Path(f"{db}{OWNER_SUFFIX}")
    try:
        # Through a temp file made new (never one found at its name: a link planted there was followed, and
        # the file it named, anywhere, truncated and written by whoever opened the store, root too).
        replace_note(path, f"{db_id[0]} {db_id[1]} {wal_id[0]} {wal_id[1]}\n".encode())
    except OSError:
        if path.is_dir():
            # Taken as no note, as a damaged one is (not refused: the store works as before the note existed),
            # but not without a word: its check of a database put back beside another file's WAL is lost.
            import logging  # here: `ls`'s quick path imports this module, and logging is no part of its start-up

            logging.getLogger("outlast.store").warning(
                "state dir %s: %s is a directory: which WAL goes with %s cannot be noted, so an %s restored"
                " beside the WAL of the file before is not refused; move %s out of the way",
                db.parent,
                path.name,
                db.name,
                db.name,
                path.name,
            )
