"""How the Redis store encodes records: one JSON value per hash field, validated when read back."""

from __future__ import annotations

import json
import math
from enum import StrEnum
from json.encoder import encode_basestring
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from ...models import InvalidInput, Operation, validate_id
from ...profiles import one_line
from ...text import clean_json_text

IF_CANCELLED = "_ifcancel"
"""A WRITE's pseudo-field, never stored: the status message of a settle to paused that a pending cancel turns
into a cancel (``Store.transition``'s ``if_cancelled``)."""
IF_PAUSED = "_ifpause"
"""Likewise: the status message of a retry queued that a pending pause turns into a pause (``if_paused``)."""
IF_CONTROL = "_ifctl"
"""A WRITE's pseudo-field, never stored: the control requests the write was chosen by, as read, each between commas
("," for none: ",," is none only; ",pause," a pause only); another one stored refuses the write
(``Store.transition``'s ``expect_control``)."""
_FIELDS = frozenset(Operation.model_fields)


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""json.dumps(v, separators=(",", ":"), ensure_ascii=False) without building an encoder at every call."""
RECORD_END = "\x1e"
"""What ends each value of a packed record (``pack``): JSON text never holds a raw control character."""


def enc(value: Any) -> str:
    """One field's stored form: JSON (models as their JSON dump); the usual scalars without the encoder."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is str:
        return encode_basestring(value)  # type: ignore[no-any-return]
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return _ENCODE(value)


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
    unknown = set(fields) - _FIELDS - {IF_CANCELLED, IF_PAUSED, IF_CONTROL}
    if unknown:
        raise ValueError(f"unknown operation fields: {sorted(unknown)}")
    out: list[str] = []
    for k, v in fields.items():
        out += [k, clean_json_text(enc(v))]  # a string that is not text (text.py), written out
    return out


RECORD_FIELDS = tuple(Operation.model_fields)
"""The fields of a packed record (``pack``), in order: the CREATE script names its values by this list."""


def pack(fields: dict[str, Any]) -> str:
    """A whole record (``model_dump(mode="json")``: JSON types only, every field) as one script argument:
    the JSON of each field in ``RECORD_FIELDS`` order, each followed by ``\x1e`` (one argument to encode and
    send instead of two per field: most of what a submit cost in Python). The names are not sent: the
    script has them (splitting names and values out of one argument was a third of its time in Redis).
    ``enc``'s shortcuts are inlined: a call per field was most of what is left. Objects and arrays may
    write a float's exponent as ``1e300`` where ``enc`` writes ``1e+300``: the same value to every JSON
    reader."""
    if fields.keys() != _FIELDS:
        unknown, missing = sorted(fields.keys() - _FIELDS), sorted(_FIELDS - fields.keys())
        raise ValueError(f"a record's fields: unknown {unknown}, missing {missing}")
    out: list[str] = []
    add = out.append
    for k in RECORD_FIELDS:
        v = fields[k]
        kind = type(v)
        if v is None:
            add("null")
            continue
        if kind is str:
            add(encode_basestring(v))
        elif kind is float and math.isfinite(v):
            add(float.__repr__(v))
        elif kind is int:
            add(int.__repr__(v))
        elif kind is dict or kind is list:
            try:  # pydantic-core's encoder: a quarter of the json module's time on a record's profile
                add(to_json(v).decode())
            except ValueError:  # a lone surrogate, which it refuses: written out as enc does (and cleaned below)
                add(enc(v))
        else:
            add(enc(v))
    add("")
    return clean_json_text(RECORD_END.join(out))  # a string that is not text (text.py), written out


def pack_new(op: Operation) -> str | None:
    """``pack(op.model_dump(mode="json"))`` for a record just built (``Operation(...)``, nothing changed since,
    as ``Engine.submit`` hands it over), in a third of its time: only the fields it was given
    (``model_fields_set``) are encoded; the others hold their defaults, whose text is made once per process.
    None when a field is not one of the usual scalars, a string, or a dict or list pydantic-core encodes (a
    model, a float that is not finite, a lone surrogate in a dict): ``pack`` has those."""
    out = list(_DEFAULTS or _encode_defaults())
    values = op.__dict__
    last: Any = _NOTHING  # the float written last, and its text: a submit's three times are one float
    last_text = ""
    for name in op.model_fields_set:
        v = values[name]
        kind = type(v)
        if v is None:
            text = "null"
        elif kind is str:
            text = encode_basestring(v)
        elif kind is float and math.isfinite(v):
            if v is not last:
                last, last_text = v, float.__repr__(v)
            text = last_text
        elif kind is int:
            text = int.__repr__(v)
        elif kind is dict or kind is list:
            try:
                text = to_json(v).decode() if v else "{}" if kind is dict else "[]"
            except ValueError:
                return None
        elif isinstance(v, StrEnum):  # a status, a priority: its value, as model_dump(mode="json") has it
            text = encode_basestring(v.value)
        else:
            return None
        out[_INDEX[name]] = text
    return clean_json_text(RECORD_END.join(out) + RECORD_END)  # a string that is not text (text.py), written out


_NOTHING = object()
_INDEX = {name: i for i, name in enumerate(RECORD_FIELDS)}
_DEFAULTS: list[str] = []
"""Each field's default as ``pack`` writes it, in ``RECORD_FIELDS`` order (made at the first ``pack_new``)."""


def _encode_defaults() -> list[str]:
    defaults = {
        name: None if info.is_required() else info.get_default(call_default_factory=True)
        for name, info in Operation.model_fields.items()
    }
    _DEFAULTS[:] = pack(Operation.model_construct(**defaults).model_dump(mode="json")).split(RECORD_END)[:-1]
    return _DEFAULTS


def valid_id(op_id: str) -> bool:
    try:
        validate_id(op_id)
    except InvalidInput:
        return False
    return True
