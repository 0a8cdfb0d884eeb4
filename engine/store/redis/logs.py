"""Control requests and logs of the Redis store.

A cancel or pause is stored on the record (``_ctl``, read by the running engine's poll,
so a missed message is never a lost cancel) and published on the ``events`` channel.
Logs are a capped stream per operation (``log:ID``, the newest LOG_MAXLEN records). The records
of an operation this process runs are appended only while its attempt holds the operation (a
script checks its lease, as for every other write of an attempt); those of a lost attempt are dropped.
A batch of records is appended once, whatever the link sends again after a lost reply.
"""

from __future__ import annotations

import secrets
from typing import Any

from ...models import ControlAction, InvalidInput, LogRecord, validate_id
from .core import RedisCore
from .keys import CONTROL_FIELD

LOG_MAXLEN = 10_000
"""Log records kept per operation (a capped stream; the oldest are trimmed)."""


class ControlLogsMixin(RedisCore):
    """Control requests and log records (part of RedisStore)."""

    async def request_control(self, op_id: str, action: ControlAction) -> ControlAction | None:
        validate_id(op_id)
        if action not in ("cancel", "pause"):
            raise InvalidInput(f"unknown control action {action!r}")
        args = [self.keys.prefix, op_id, action]
        held = await self._script("CONTROL", [self.keys.op(op_id)], args, f"asking {op_id} to {action}")
        return "cancel" if held == b"cancel" else "pause" if held == b"pause" else None

    async def pending_controls(self, op_ids: list[str]) -> dict[str, ControlAction]:
        if not op_ids:
            return {}

        async def do(c: Any) -> list[bytes | None]:
            pipe = c.pipeline(transaction=False)
            for i in op_ids:
                pipe.hget(self.keys.op(i), CONTROL_FIELD)
            return list(await pipe.execute())

        out: dict[str, ControlAction] = {}
        for i, raw in zip(op_ids, await self.link.call(do, "reading control requests"), strict=True):
            if raw == b"cancel":
                out[i] = "cancel"
            elif raw == b"pause":
                out[i] = "pause"
        return out

    async def clear_control(self, op_id: str) -> None:
        validate_id(op_id)
        key = self.keys.op(op_id)
        await self.link.call(lambda c: c.hdel(key, CONTROL_FIELD), f"clearing control of {op_id}")

    async def append_logs(self, op_id: str, records: list[LogRecord]) -> None:
        if not records:
            return
        key = self.keys.log(validate_id(op_id))
        rows = [r.model_dump_json(exclude={"operation_id"}) for r in records]
        epoch = self._held.get(op_id)
        if epoch is None and op_id in self._lost:
            return  # the records of an attempt that lost its lease are not written
        # One script with a tx of its own, fenced when this process runs the operation: the link sends it
        # again after a lost reply, and a batch Redis had appended was appended twice (each line twice in
        # `outlast logs`); the script appends a tx once.
        keys = [self.keys.op(op_id), self.keys.lease(op_id), key]
        token = "" if epoch is None else self._attempt_token(op_id, epoch)
        args = ["" if epoch is None else str(epoch), token, str(LOG_MAXLEN), secrets.token_hex(8), *rows]
        res = await self._fenced(op_id, epoch, lambda: self._script("LOG", keys, args, f"writing logs of {op_id}"))
        if res[0] == b"fenced" and epoch is not None:
            self._refused(op_id, epoch, res)

    async def read_logs(
        self, op_id: str, offset: int = 0, limit: int | None = None, *, first: int | None = None
    ) -> tuple[list[LogRecord], int]:
        """``offset`` is the stream position of the last record read, as an int (0: from the start)."""
        key = self.keys.log(validate_id(op_id))
        start = "-" if offset <= 0 else f"({offset >> 24}-{offset & 0xFFFFFF}"
        rows: list[tuple[bytes, dict[bytes, bytes]]]
        if first is not None:
            rows = await self.link.call(lambda c: c.xrange(key, start, "+", count=first), "reading logs")
        elif limit is not None:
            rows = await self.link.call(lambda c: c.xrevrange(key, "+", start, count=limit), "reading logs")
            rows = list(reversed(rows))
        else:
            rows = []
            while True:

                async def page(c: Any, s: str = start) -> list[tuple[bytes, dict[bytes, bytes]]]:
                    return list(await c.xrange(key, s, "+", count=1000))

                chunk = await self.link.call(page, "reading logs")
                rows += chunk
                if len(chunk) < 1000:
                    break
                start = "(" + chunk[-1][0].decode()
        out = []
        for _sid, fields in rows:
            try:
                rec = LogRecord.model_validate_json(fields[b"r"])
            except (KeyError, ValueError):
                continue
            rec.operation_id = op_id
            out.append(rec)
        if rows:
            ms, _, seq = rows[-1][0].decode().partition("-")
            offset = (int(ms) << 24) | int(seq)
        return out, offset
