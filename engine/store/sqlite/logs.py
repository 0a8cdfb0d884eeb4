"""Control requests and logs of the SQLite store.

A cancel or pause is a column of the operation's row (``control``), read by the running engine's
poll. Logs are one JSON-lines file per operation (``logs/ID.jsonl``, 0600), appended to by the
process that runs it; a partly written last line is left for the next read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
from pathlib import Path
from typing import BinaryIO

import aiofiles

from ...errors import StoreError
from ...files import NotRegular, move_aside, open_regular, owner_of, private_dir
from ...models import ControlAction, LogRecord, validate_id
from ...offload import off_loop
from ...threads import engine_executor
from .core import SqliteCore

log = logging.getLogger("outlast.store")

LOG_RESERVE_MIN = 1 << 20
LOG_RESERVE_MAX = 64 << 20
"""The bounds of the space the logs leave free on the state dir's file system (``log_room``)."""


class ControlLogsMixin(SqliteCore):
    """Control requests and log records (part of LocalStore)."""

    async def request_control(self, op_id: str, action: ControlAction) -> ControlAction | None:
        def do(conn: sqlite3.Connection) -> ControlAction | None:
            # A pause never replaces a cancel asked before it (the cancel gives it up; the pause would keep it).
            cur = conn.execute(
                "UPDATE operations SET control=CASE WHEN control='cancel' THEN control ELSE ? END"
                " WHERE id=? AND status='running'",
                (action, op_id),
            )
            if cur.rowcount != 1:  # not running: nothing stored (no RETURNING: SQLite 3.34 lacks it)
                return None
            row = conn.execute("SELECT control FROM operations WHERE id=?", (op_id,)).fetchone()
            return "cancel" if row is not None and row[0] == "cancel" else action

        return await self._txn(do)

    async def pending_controls(self, op_ids: list[str]) -> dict[str, ControlAction]:
        if not op_ids:
            return {}
        wanted = set(op_ids)
        rows = await self._run(
            lambda: self._db.execute("SELECT id, control FROM operations WHERE control IS NOT NULL").fetchall()
        )
        return {i: c for i, c in rows if i in wanted}

    async def clear_control(self, op_id: str) -> None:
        await self._txn(lambda c: c.execute("UPDATE operations SET control=NULL WHERE id=?", (op_id,)))

    def log_room(self) -> int | None:
        """Bytes the operation logs may still take on the state dir's file system: what is free less what is
        kept for the store's own writes (checkpoints, statuses: an eighth of the file system, 1 MB to 64 MB);
        below 0 when less is free. None when it cannot be told. A command printing on a small disk filled it
        with its log (under the log limit, 64 MB), and its own record could not be written: the resume filled
        it again, and every command said the disk was full until space was freed by hand."""
        try:
            st = os.statvfs(self.log_dir)
        except OSError:
            return None
        if st.f_blocks == 0:
            return None  # a file system that counts no blocks (some network ones): nothing to go by
        free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
        return free - min(LOG_RESERVE_MAX, max(LOG_RESERVE_MIN, st.f_blocks * st.f_frsize // 8))

    def _log_path(self, op_id: str) -> Path:
        return self.log_dir / f"{validate_id(op_id)}.jsonl"

    async def append_logs(self, op_id: str, records: list[LogRecord]) -> None:
        if not records:
            return
        text = "".join(r.model_dump_json(exclude={"operation_id"}) + "\n" for r in records)
        lock = self._log_locks.get(op_id)
        if lock is None:
            self._log_locks[op_id] = lock = asyncio.Lock()
        async with lock:
            try:
                await self._append(op_id, text)
            except FileNotFoundError:
                # The logs directory deleted under a run (to free space): made again, and the lines go on
                # in a new file. Not made, every append failed as a store outage, which stopped the run.
                if (lost := self._lost()) is not None:  # the whole state dir, outlast.db with it
                    raise lost from None
                await off_loop(private_dir, self.state_dir, self.log_dir.name)  # not the state dir
                await self._append(op_id, text)
            except NotRegular as e:
                path = self._log_path(op_id)
                aside = await off_loop(move_aside, path)
                log.warning(
                    "operation %s: its log %s was %s; moved to %s, a new one begun",
                    op_id,
                    path,
                    e.strerror,
                    aside.name,
                )
                await self._append(op_id, text)

    async def _append(self, op_id: str, text: str) -> None:
        # On the engine's threads: on the loop's default executor, a log line waited behind a handler's calls
        # that never returned (``threads.off_loop``). Not ``async with``: aiofiles closes on the default one.
        # Unbuffered bytes, and a write that fails part-way is taken back: a file that could not grow (a file
        # size limit, ``ulimit -f``: EFBIG) ended in half a record, which no reader takes.
        # A record left unfinished at the end (its writer SIGKILLed in the middle of a large write, which the
        # kernel cuts short) is ended first: appended to, it made this batch's first record one damaged line,
        # left out by every reader (a resumed attempt's "resuming from checkpoint" line).
        path, pool, data = self._log_path(op_id), engine_executor(), text.encode("utf-8")
        f = await aiofiles.open(path, "a+b", buffering=0, opener=_no_link, executor=pool)
        try:
            end, torn = await asyncio.get_running_loop().run_in_executor(pool, _end_of, f.fileno())
            if torn:
                data = b"\n" + data
            try:
                while data:
                    data = data[await f.write(data) or 0 :]
            except OSError:
                with contextlib.suppress(OSError):
                    await f.truncate(end)
                raise
        finally:
            await f.close()

    async def read_logs(
        self, op_id: str, offset: int = 0, limit: int | None = None, *, first: int | None = None
    ) -> tuple[list[LogRecord], int]:
        """Records after ``offset``: at most ``READ_MAX`` bytes of them (call again from the returned offset
        for the rest), or with ``limit`` the last ``limit`` (read from the end of the file backwards). A
        log grows with every line a command prints: reading all of a 70 MB one to show its last lines took
        17 s and 1.4 GB."""
        path = self._log_path(op_id)
        try:
            if limit is not None:
                records, end = await off_loop(_tail, path, offset, limit)
            else:
                records, end = await off_loop(_read_from, path, offset, first)
        except FileNotFoundError:
            return [], offset
        except PermissionError as e:  # a log of this user's made unreadable: an internal error, exit 70
            owner = await off_loop(owner_of, path)
            raise StoreError(
                f"state dir {self.state_dir}: {self.log_dir.name}/{path.name} cannot be read ({e.strerror}"
                f"{f'; it belongs to {owner}' if owner else ''})"
            ) from None
        except NotRegular as e:  # moved aside by the next append of the process running it (append_logs)
            if path not in _SAID:
                _SAID.add(path)
                log.warning("operation %s: its log %s is %s; not read", op_id, path, e.strerror)
            return [], offset
        for rec in records:
            rec.operation_id = op_id
        return records, end


_SAID: set[Path] = set()
"""Logs said once to be no regular file (a dashboard reads a log every second)."""

READ_MAX = 4 << 20
"""Bytes of log read by one ``read_logs`` without a limit (a following reader catches up over calls)."""

CHUNK = 64 << 10
"""Bytes read at a time from the end of a log for its last lines."""


def _end_of(fd: int) -> tuple[int, bool]:
    """The size of the log open at ``fd``, and whether its last record is unfinished (no newline ends it)."""
    end = os.lseek(fd, 0, os.SEEK_END)
    return end, end > 0 and os.pread(fd, 1, end - 1) != b"\n"


def _no_link(path: str | os.PathLike[str], flags: int) -> int:
    """A log opened as a regular file of this user's, never through a symbolic link (NotRegular: moved aside by
    the next append, as the README says): root's worker appended a command's output to any file a link there
    named. One another user owns (left by outlast run as root here before it refused to) was a store outage
    that stopped the run, and for ``outlast logs`` an internal error."""
    try:
        fd = open_regular(path, flags, follow=False)
    except PermissionError:
        try:
            uid = os.lstat(path).st_uid
        except OSError:
            uid = os.geteuid()
        if uid != os.geteuid():
            raise NotRegular(errno.EPERM, f"another user's file (uid {uid})", str(path)) from None
        raise
    if (uid := os.fstat(fd).st_uid) != os.geteuid():
        os.close(fd)
        raise NotRegular(errno.EPERM, f"another user's file (uid {uid})", str(path))
    return fd


def _parse(lines: list[bytes]) -> list[LogRecord]:
    """The records of whole lines; a line that is not a record (damaged) is left out."""
    out = []
    for line in lines:
        try:
            out.append(LogRecord.model_validate_json(line))
        except ValueError:
            continue
    return out


def _within(f: BinaryIO, offset: int) -> int:
    """``offset``, or 0 when the file is shorter: it is a new one (the logs directory deleted under a run, a log
    that was no regular file moved aside), begun since the offset was read from the old one. A follower
    (``outlast logs -f``, the dashboard) kept reading past its end and never showed a line of it."""
    return offset if offset <= os.fstat(f.fileno()).st_size else 0


def _read_from(path: Path, offset: int, first: int | None = None) -> tuple[list[LogRecord], int]:
    """The whole lines in the ``READ_MAX`` bytes after ``offset`` (more, up to the end of a line longer
    than that), or only the first ``first`` records of them; a partly written last line is read next time."""
    with os.fdopen(_no_link(path, os.O_RDONLY), "rb") as f:
        offset = _within(f, offset)
        f.seek(offset)
        data = f.read(READ_MAX)
        if len(data) == READ_MAX and b"\n" not in data:  # one line longer than READ_MAX: read on to its end
            parts = [data]
            while more := f.read(CHUNK):
                parts.append(more)
                if b"\n" in more:
                    break
            data = b"".join(parts)
    end = data.rfind(b"\n") + 1
    if first is None:
        return _parse(data[:end].splitlines()), offset + end
    records: list[LogRecord] = []
    pos = 0
    while pos < end and len(records) < first:
        stop = data.index(b"\n", pos) + 1
        records += _parse([data[pos : stop - 1]])
        pos = stop
    return records, offset + pos


def _tail(path: Path, offset: int, limit: int) -> tuple[list[LogRecord], int]:
    """The last ``limit`` records after ``offset`` (read backwards from the end of the file, a chunk at a
    time, until there are enough whole lines), and the offset just past the last whole line."""
    with os.fdopen(_no_link(path, os.O_RDONLY), "rb") as f:
        offset = _within(f, offset)
        size = f.seek(0, 2)
        if size <= offset:
            return [], offset
        pos, chunks, newlines, need = size, [], 0, max(limit, 0)
        while True:
            # ``need`` + 1 newlines hold ``need`` whole lines after the last one (the first may be cut).
            while pos > offset and newlines <= need:
                start = max(offset, pos - CHUNK)
                f.seek(start)
                chunk = f.read(pos - start)
                chunks.append(chunk)
                pos, newlines = start, newlines + chunk.count(b"\n")
            buf = b"".join(reversed(chunks))
            cut = buf.rfind(b"\n") + 1
            body = buf[:cut] if pos == offset else buf[buf.find(b"\n") + 1 : cut]
            records: list[LogRecord] = []
            for line in reversed(body.splitlines()):
                if len(records) >= need:
                    break
                records += _parse([line])
            if len(records) >= need or pos == offset:
                break
            need += need - len(records)  # damaged lines among them: read further back
        records.reverse()
        return records[-limit:] if limit > 0 else [], pos + cut
