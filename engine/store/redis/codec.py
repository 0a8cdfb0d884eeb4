"""How the Redis store encodes records (one JSON value per hash field) and what every part of it shares."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ...models import InvalidInput, Operation, StaleAttempt, validate_id
from ...profiles import one_line

if TYPE_CHECKING:
    from ..mirror import CheckpointMirror
    from .connection import RedisLink

log = logging.getLogger("outlast.store.redis")
_FIELDS = frozenset(Operation.model_fields)


def enc(value: Any) -> str:
    """One field's stored form: JSON (models as their JSON dump)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def decode_record(op_id: str, raw: dict[bytes, bytes]) -> Operation:
    """A record read back from Redis, validated; ValueError naming the bad field otherwise.

    The field values are parsed as one JSON array (one C call instead of one per field);
    a value that is not exactly one JSON value changes the count and is then found alone.
    """
    names: list[str] = []
    values: list[bytes] = []
    for k, v in raw.items():
        if not k.startswith(b"_"):
            names.append(k.decode("utf-8", "replace"))
            values.append(v)
    try:
        parsed = json.loads(b"[" + b",".join(values) + b"]")
        if len(parsed) != len(values):
            raise ValueError("a value is not one JSON value")
    except ValueError:
        parsed = []
        for name, v in zip(names, values, strict=True):
            try:
                parsed.append(json.loads(v))
            except ValueError:
                raise ValueError(f"field {name!r} is not JSON") from None
    try:
        op = Operation.model_validate(dict(zip(names, parsed, strict=True)))
    except ValidationError as e:
        raise ValueError(one_line(e)) from None
    if op.id != op_id:
        raise ValueError(f"field 'id' holds {op.id!r}")
    return op


def pairs(fields: dict[str, Any]) -> list[str]:
    unknown = set(fields) - _FIELDS
    if unknown:
        raise ValueError(f"unknown operation fields: {sorted(unknown)}")
    out: list[str] = []
    for k, v in fields.items():
        out += [k, enc(v)]
    return out


def valid_id(op_id: str) -> bool:
    try:
        validate_id(op_id)
    except InvalidInput:
        return False
    return True


class RedisParts:
    """What the parts of RedisStore (records, liveness, checkpoints, control and logs) share."""

    link: RedisLink
    mirror: CheckpointMirror | None
    P: str
    """The namespace prefix of every key."""
    lease_ttl: float
    holder: str
    _held: dict[str, int]
    """The attempts this process holds: operation id -> epoch."""
    _lost: dict[str, int]
    """Attempts of this process refused by Redis (lease gone, operation moved on) and not yet released."""
    _settling: set[str]
    """Operations whose attempt's final transition this process is writing: a write refused meanwhile
    (the settle let go of the lease) is no loss."""
    _s: dict[str, Any]
    _malformed: set[str]
    on_lease_lost: Callable[[str, int], None] | None
    """Told (operation id, epoch) once when an attempt of this process lost its hold: the engine stops it."""

    def _k(self, kind: str, op_id: str = "") -> str:
        return f"{self.P}{kind}:{op_id}" if op_id else f"{self.P}{kind}"

    async def _script(self, name: str, keys: list[str], args: list[Any], what: str) -> Any:
        return await self.link.script(self._s[name], keys, args, what)

    def _attempt_token(self, op_id: str, epoch: int) -> str:
        """The lease token a write of this attempt carries (checked inside Redis); an attempt already
        refused once gets StaleAttempt at once: it never writes again."""
        if self._lost.get(op_id) == epoch:
            raise StaleAttempt(f"operation {op_id}: attempt epoch {epoch} lost its lease; it writes nothing more")
        return f"{self.holder}:{epoch}"

    def _refused(self, op_id: str, epoch: int, reply: list[bytes]) -> StaleAttempt:
        """A write of this attempt refused by a script (``fenced``, why, status, epoch): the attempt is over."""
        why, status, current = (x.decode().strip('"') for x in reply[1:4])
        reason = {
            "epoch": f"was replaced by epoch {current}",
            "status": f"is over: the operation is {status} now",
            "lease": "is over: its lease expired",
        }.get(why, "is over: the operation is gone")
        self._lose(op_id, epoch, reason)
        return StaleAttempt(f"operation {op_id}: attempt epoch {epoch} {reason}; its writes are refused")

    def _lose(self, op_id: str, epoch: int, reason: str) -> None:
        """This process's attempt no longer holds the operation: refuse its writes from now on, tell the engine."""
        if self._held.get(op_id) != epoch or op_id in self._settling:
            return
        del self._held[op_id]
        self._lost[op_id] = epoch
        log.warning(
            "operation %s: this worker lost its lease (attempt epoch %d %s); it stops and writes nothing more",
            op_id,
            epoch,
            reason,
        )
        if self.on_lease_lost is not None:
            self.on_lease_lost(op_id, epoch)

    def _report_malformed(self, op_id: str, e: Exception) -> None:
        """Warn once per record and process: a listing every second must not flood the log."""
        if op_id not in self._malformed:
            self._malformed.add(op_id)
            log.warning("operation %s: stored record in redis is malformed (%s); skipped", op_id, e)
