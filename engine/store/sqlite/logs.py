"""Control requests and logs of the SQLite store.

A cancel or pause is a column of the operation's row (``control``), read by the running engine's
poll. Logs are one JSON-lines file per operation (``logs/ID.jsonl``, 0600), appended to by the
process that runs it; a partly written last line is left for the next read.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiofiles

from ...files import private_opener
from ...models import ControlAction, LogRecord, validate_id
from .core import SqliteCore


class ControlLogsMixin(SqliteCore):
    """Control requests and log records (part of LocalStore)."""

    async def request_control(self, op_id: str, action: ControlAction) -> None:
        def do(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE operations SET control=? WHERE id=? AND status='running'", (action, op_id))

        await self._txn(do)

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

    def _log_path(self, op_id: str) -> Path:
        return self.log_dir / f"{validate_id(op_id)}.jsonl"

    async def append_logs(self, op_id: str, records: list[LogRecord]) -> None:
        if not records:
            return
        text = "".join(r.model_dump_json(exclude={"operation_id"}) + "\n" for r in records)
        lock = self._log_locks.setdefault(op_id, asyncio.Lock())
        async with lock, aiofiles.open(self._log_path(op_id), "a", encoding="utf-8", opener=private_opener) as f:
            await f.write(text)

    async def read_logs(self, op_id: str, offset: int = 0, limit: int | None = None) -> tuple[list[LogRecord], int]:
        path = self._log_path(op_id)
        try:
            async with aiofiles.open(path, "rb") as f:
                await f.seek(offset)
                data = await f.read()
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n") + 1  # a partly written last line is read next time
        out = []
        for line in data[:end].splitlines():
            try:
                rec = LogRecord.model_validate_json(line)
            except ValueError:
                continue
            rec.operation_id = op_id
            out.append(rec)
        if limit is not None:
            out = out[-limit:] if limit > 0 else []
        return out, offset + end
