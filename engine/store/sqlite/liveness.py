"""Liveness of the SQLite store: a running operation is held by its flock (locks.py), which the kernel
keeps while its process lives and releases when it dies; an operation marked running whose lock
anyone can take is an orphan."""

from __future__ import annotations

from ...models import Operation
from .core import SqliteCore
from .locks import close_lock


class LivenessMixin(SqliteCore):
    """Holding, letting go of, and finding orphaned operations (part of LocalStore)."""

    async def release(self, op_id: str, epoch: int | None = None) -> None:
        # Usually let go already by the final transition's commit; a running record is a newer
        # attempt's (the flock carries no epoch), so the lock stays with it.
        if op_id in self._held:
            await self._run(self._unlock_unless_running, op_id, epoch)

    async def heartbeat(self, op_ids: list[str]) -> None:
        return None  # the kernel keeps an flock alive as long as its process lives

    async def find_orphans(self) -> list[Operation]:
        def do() -> list[Operation]:
            out = []
            conn = self._db
            for (op_id,) in conn.execute("SELECT id FROM operations WHERE status='running'").fetchall():
                if op_id in self._held:
                    continue
                if self._lock(op_id):
                    try:
                        row = conn.execute("SELECT status FROM operations WHERE id=?", (op_id,)).fetchone()
                        if row and row[0] == "running":
                            out.append(self._row_op(conn, op_id))
                    finally:
                        # Keep no lock: the caller marks it interrupted with the epoch it read.
                        close_lock(self._held.pop(op_id))
            return out

        return await self._run(do)
