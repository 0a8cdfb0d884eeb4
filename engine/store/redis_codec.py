"""How the Redis store encodes records (one JSON value per hash field) and what every part of it shares."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ..models import InvalidInput, Operation, validate_id
from ..profiles import one_line

if TYPE_CHECKING:
    from .mirror import CheckpointMirror
    from .redis_conn import RedisLink

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
    _s: dict[str, Any]
    _malformed: set[str]

    def _k(self, kind: str, op_id: str = "") -> str:
        return f"{self.P}{kind}:{op_id}" if op_id else f"{self.P}{kind}"

    async def _script(self, name: str, keys: list[str], args: list[Any], what: str) -> Any:
        return await self.link.script(self._s[name], keys, args, what)

    def _report_malformed(self, op_id: str, e: Exception) -> None:
        """Warn once per record and process: a listing every second must not flood the log."""
        if op_id not in self._malformed:
            self._malformed.add(op_id)
            log.warning("operation %s: stored record in redis is malformed (%s); skipped", op_id, e)
