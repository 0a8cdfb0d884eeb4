"""``outlast ls --json`` without pydantic or an event loop: the stored records as the full path prints them.

The full path validates each record (``Operation``) and dumps it again (``model_dump(mode="json")``). For a
record already in that dump's form (every field, in the model's order, each of its type, nothing else)
the dump is the record itself, so it is printed as read. Anything else (a record of an older version
without a newer field, an int where the model holds a float, a number JSON cannot write, a string that is
not text, a key given twice) is left to the full path: ``records`` returns None, and what is printed is
what validation makes of it. ``FIELDS`` and its kin are the models' fields; a test keeps them equal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..lifecycle import Status
from ..limits import Priority

FIELDS: dict[str, str] = {
    "id": "str",
    "handle": "int?",
    "type": "str",
    "name": "str?",
    "params": "dict",
    "priority": "priority",
    "profile": "dict",
    "profile_overrides": "dict",
    "tags": "tags",
    "status": "status",
    "status_message": "str?",
    "created_at": "float",
    "queued_at": "float",
    "started_at": "float?",
    "finished_at": "float?",
    "updated_at": "float",
    "attempt": "int",
    "epoch": "int",
    "retries": "int",
    "progress": "progress",
    "total_items": "int?",
    "timeout": "float?",
    "effective_timeout": "float?",
    "timeout_basis": "str?",
    "deadline": "float?",
    "extensions": "int",
    "result": "any",
    "error": "str?",
    "item_failures": "int",
    "worker": "worker?",
    "resume_seq": "int?",
    "checkpoint_seq": "int?",
    "not_before": "float?",
    "backoff_from": "float?",
    "idempotency_key": "str?",
    "orphaned_epoch": "int?",
    "crashes": "int",
    "crash_seq": "int?",
    "handler": "str?",
}
"""``Operation``'s fields in its order, each with the kind of value its dump holds."""

PROGRESS_FIELDS: dict[str, str] = {
    "done": "int",
    "total": "int?",
    "failed": "int",
    "skipped": "int",
    "step": "str?",
    "message": "str?",
    "rate": "float?",
    "eta": "float?",
    "metrics": "dict",
    "updated_at": "float?",
    "fraction": "float",
    "ran": "float?",
}
"""``Progress``' fields."""

WORKER_FIELDS: dict[str, str] = {"host": "str", "pid": "int", "name": "str?", "boot": "str?", "start": "int?"}
"""``WorkerInfo``'s fields."""

_STATUSES = frozenset(s.value for s in Status)
_PRIORITIES = frozenset(p.value for p in Priority)


MAX_DEPTH = 100
"""Records nesting deeper than this (the record itself is 1) are left to the full path: its JSON reader
refuses one nested past 200 levels (the record is skipped, with a warning), and ``json.loads`` overflows
the stack far below a hostile depth. What Outlast stores nests a few levels (``MAX_JSON_DEPTH`` in params)."""


def records(state_dir: Path, statuses: list[str], types: list[str], limit: int) -> list[dict[str, Any]] | None:
    """The records ``ls --json`` prints, read from the local store with default settings; None: the full
    path (``engine.store.quick``'s reasons, or a record not in its model's dump form)."""
    found = dumps(state_dir, statuses, types, limit, checkpoint_seq=True)
    if found is None:
        return None
    for r in found:
        r["progress"].update(_seed_progress(r))
    return found


def dumps(
    state_dir: Path, statuses: list[str], types: list[str] | None, limit: int, *, checkpoint_seq: bool = False
) -> list[dict[str, Any]] | None:
    """The stored records, newest first, when every one is its model's JSON dump (what the full path reads
    as it is: it skips, with a warning, a record that does not validate, and reads others with defaults or
    conversions); None: the full path. ``checkpoint_seq``: each one's as the store derives it."""
    from ..store.quick import quick_list

    return quick_list(state_dir, statuses, types, limit, loads=_dump_loads, checkpoint_seq=checkpoint_seq)


def _dump_loads(raw: str) -> dict[str, Any]:
    """The record ``raw`` holds when it is its model's dump as stored (before ``checkpoint_seq`` is replaced
    by the derived one: the full path validates the stored one first); ValueError otherwise."""
    record = _strict_loads(raw)
    progress = record.get("progress") if isinstance(record, dict) else None
    if isinstance(progress, dict) and ("fraction" not in progress or "ran" not in progress):
        # Stored before progress had them: validation gives them their defaults, after the others, as here.
        fraction, ran = progress.pop("fraction", 0.0), progress.pop("ran", None)
        progress["fraction"], progress["ran"] = fraction, ran
    if not (_is_dump(record, FIELDS) and _within(record, MAX_DEPTH)):
        raise ValueError("not its model's dump")
    return record  # type: ignore[no-any-return]


def _within(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` levels of lists and objects (iterative: any depth)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > limit:
                return False
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return True


def _strict_loads(raw: str) -> Any:
    """JSON as ``json.loads`` reads it; ValueError for a key given twice in one object (which value a
    validating reader keeps is its own) and for NaN or Infinity (not JSON; a dump writes them as null)."""
    return json.loads(raw, object_pairs_hook=_no_twice, parse_constant=_no_constant)


def _no_twice(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key given twice")
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_dump(value: Any, fields: dict[str, str]) -> bool:
    """Whether ``value`` is a model's JSON dump: exactly ``fields``, in order, each of its kind."""
    if not isinstance(value, dict) or list(value) != list(fields):
        return False
    return all(_CHECKS[kind](value[name]) for name, kind in fields.items())


def _plain(value: Any) -> bool:
    """JSON a dump gives back as it is: finite numbers, text (no lone surrogate), lists, objects."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not _text(v):
                return False
        elif isinstance(v, float):
            if not math.isfinite(v):
                return False
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif not (v is None or isinstance(v, bool | int)):
            return False
    return True


def _text(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _float(v: Any) -> bool:
    return isinstance(v, float) and math.isfinite(v)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": _text,
    "int": _int,
    "float": _float,
    "dict": lambda v: isinstance(v, dict) and _plain(v),
    "tags": lambda v: isinstance(v, dict) and all(_text(t) for t in v.values()) and _plain(v),
    "any": _plain,
    "status": lambda v: isinstance(v, str) and v in _STATUSES,
    "priority": lambda v: isinstance(v, str) and v in _PRIORITIES,
    "progress": lambda v: _is_dump(v, PROGRESS_FIELDS),
    "worker?": lambda v: v is None or _is_dump(v, WORKER_FIELDS),
}
for _kind in ("str", "int", "float"):
    _CHECKS[f"{_kind}?"] = _optional(_CHECKS[_kind])


class _ProgressView:
    """A record's progress read as ``Progress`` reads it, for the seed's fields (``autobot.seed_progress``)."""

    def __init__(self, p: dict[str, Any]) -> None:
        self.done: int = p["done"]
        self.total: int | None = p["total"]
        self.failed: int = p["failed"]
        self.skipped: int = p["skipped"]
        self.step: str | None = p["step"]
        self.message: str | None = p["message"]
        self.rate: float | None = p["rate"]
        self.eta: float | None = p["eta"]
        self.metrics: dict[str, Any] = p["metrics"]
        self.updated_at: float | None = p["updated_at"]
        self.fraction: float = p["fraction"]

    @property
    def percent(self) -> float | None:
        """As ``Progress.percent``."""
        if not self.total:
            return 100.0 if self.total == 0 else None
        return min(100.0, 100.0 * (self.done + self.fraction) / self.total)


def _seed_progress(r: dict[str, Any]) -> dict[str, Any]:
    """The seed's fields of a record's progress, as ``fmt.op_json`` adds them (``autobot.seed_operation``)."""
    from ..autobot import seed_progress

    return seed_progress(r["id"], _ProgressView(r["progress"]), r["status"])  # type: ignore[arg-type]
