"""Data models: what an operation is, how it moves through its lifecycle, what a checkpoint holds.

Validation happens here, at the edges (specs, ids, stored records). The hot path
(``ctx.progress``/``ctx.advance``) never builds these models.
"""

from __future__ import annotations

import codecs
import functools
import json
import math
import os
import random
import re
import sys
import threading
import time
import types
import typing
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import Conflict, InvalidInput, NotFound, OutlastError, StaleAttempt, StoreError
from .humanize import elapsed as attempt_elapsed
from .humanize import run_seconds, seconds_left
from .lifecycle import ACTIVE, RESUMABLE, SETTLED, TERMINAL, TRANSITIONS, Status, check_transition, refused_change
from .limits import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_ITEMS,
    MAX_JSON_DEPTH,
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
    MAX_PARAMS_BYTES,
    MAX_PROFILE_KEYS,
    MAX_SECONDS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    Priority,
)
from .text import clean, clean_json, quoted

__all__ = [
    "ACTIVE",
    "MAX_ITEMS",
    "MAX_JSON_DEPTH",
    "MAX_KEY_CHARS",
    "MAX_NAME_CHARS",
    "MAX_PARAMS_BYTES",
    "MAX_PROFILE_KEYS",
    "MAX_SECONDS",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "RESUMABLE",
    "SETTLED",
    "TERMINAL",
    "TRANSITIONS",
    "Conflict",
    "InvalidInput",
    "NotFound",
    "OutlastError",
    "Priority",
    "StaleAttempt",
    "Status",
    "StoreError",
    "check_transition",
    "refused_change",
]


class OperationType(StrEnum):
    """The seed's 17 operation types (AutoBot's ``OperationType``). Accepted wherever a type string is;
    plugins may register types beyond these."""

    CODEBASE_INDEXING = "codebase_indexing"
    CODE_ANALYSIS = "code_analysis"
    DEPENDENCY_ANALYSIS = "dependency_analysis"
    SECURITY_SCAN = "security_scan"
    PERFORMANCE_PROFILING = "performance_profiling"
    COMPREHENSIVE_TEST_SUITE = "comprehensive_test_suite"
    INTEGRATION_TESTING = "integration_testing"
    PERFORMANCE_TESTING = "performance_testing"
    LOAD_TESTING = "load_testing"
    KB_POPULATION = "kb_population"
    KB_OPTIMIZATION = "kb_optimization"
    VECTOR_INDEXING = "vector_indexing"
    SEMANTIC_ANALYSIS = "semantic_analysis"
    BACKUP_OPERATION = "backup_operation"
    MIGRATION_OPERATION = "migration_operation"
    CLEANUP_OPERATION = "cleanup_operation"
    MONITORING_COLLECTION = "monitoring_collection"


def type_name(type_: str) -> str:
    """An operation type as its plain string (an ``OperationType`` member becomes its value)."""
    return type_.value if isinstance(type_, OperationType) else type_


# ---- ids -------------------------------------------------------------------------------------

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case: no i, l, o, u
_ID_LEN = 13
ID_RE = re.compile(rf"^[{_ALPHABET}]{{{_ID_LEN}}}\Z")
ID_PREFIX_RE = re.compile(rf"^[{_ALPHABET}]{{1,{_ID_LEN}}}\Z")
_EPOCH_MS = 1_577_836_800_000  # 2020-01-01: 9 base32 digits of ms last past the year 3000
_id_lock = threading.Lock()
_last_id: list[int] = [0, 0]
_id_random = random.Random()
"""The random digits of ids. Not ``os.urandom``: its syscall lets go of the GIL, and winning it back from
the store's thread cost a submit about 3% of its rate. Not the ``random`` module's own generator: a
handler's ``random.seed(0)`` would give processes that seed alike the same digits."""
os.register_at_fork(after_in_child=_id_random.seed)  # a forked child draws its own digits, not its parent's


def unique_token() -> str:
    """16 hex digits from the ids' generator: unique per call, not secret (no syscall, unlike ``secrets``)."""
    return f"{_id_random.getrandbits(64):016x}"


_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
"""Two base32 digits by their 10 bits: an id in 7 lookups instead of 13 (a tenth of a submit's Python)."""


def _b32(n: int, width: int) -> str:
    out = []
    for _ in range(width >> 1):
        out.append(_PAIRS[n & 1023])
        n >>= 10
    if width & 1:
        out.append(_ALPHABET[n & 31])
    return "".join(reversed(out))


def new_id() -> str:
    """A 13-character id: 9 digits of milliseconds then 4 random ones; sorts by creation time.

    Within one process ids are strictly increasing even inside one millisecond.
    """
    with _id_lock:
        ms = int(time.time() * 1000) - _EPOCH_MS
        if ms <= 0 and _last_id[0] == 0:
            # A wall clock before 2020 (a board with no clock of its own, at 1970 until NTP answers): every process
            # wrote 0 milliseconds, so its ids differed by their 20 random bits alone, and a submit met an id stored
            # already ("UNIQUE constraint failed", exit 8) once a store held a thousand or so. A random start in
            # the first 12 days of 2020 gives them 50 bits; such ids sort before any of a clock that is right.
            ms = 1 + _id_random.getrandbits(30)
        ms = max(ms, _last_id[0])
        rnd = _id_random.getrandbits(20)
        if ms == _last_id[0] and rnd <= _last_id[1]:
            rnd = _last_id[1] + 1
            if rnd > 0xFFFFF:
                ms, rnd = ms + 1, 0
        _last_id[0], _last_id[1] = ms, rnd
    return _b32(ms << 20 | rnd, _ID_LEN)


def _quoted(value: Any) -> str:
    return quoted(value) if isinstance(value, str) else repr(value)


def validate_id(value: str) -> str:
    """A full operation id, or InvalidInput naming what is wrong (``../x`` never reaches a path)."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise InvalidInput(f"invalid operation id {_quoted(value)}: expected {_ID_LEN} characters of [0-9a-z]")
    return value


def validate_id_prefix(value: str) -> str:
    if not isinstance(value, str) or not ID_PREFIX_RE.match(value):
        raise InvalidInput(
            f"invalid operation id {_quoted(value)}: expected a handle (1, 2, ...) or up to {_ID_LEN} characters"
            " of [0-9a-z]"
        )
    if value == "0":
        # No handle (they start at 1), and as a prefix every id until 2054: `outlast rm 0` removed the only
        # operation stored, or said "ambiguous" naming them all.
        raise InvalidInput("invalid operation id '0': handles start at 1 (the # of `ls`), and every id begins with 0")
    return value


HANDLE_RE = re.compile(r"[1-9][0-9]{0,17}")


def handle_of(value: str) -> int | None:
    """The handle ``value`` names, if it is one: decimal digits with no leading zero. No id looks so
    before 2054 (an id's first digit, the top of 8 base-32 digits of milliseconds since 2020, is 0)."""
    return int(value) if HANDLE_RE.fullmatch(value) else None


_MAX_INT = 2**63
"""Integers in params beyond 64 bits are refused: stores and clients cannot all keep them exact."""


def short_int(n: int) -> str:
    """``n`` in three significant digits, as ``f"{n:.3g}"`` writes it (``1e+111``), at any size: past 1.8e308
    no float holds it, and that format raised OverflowError, an internal error where the params were refused."""
    try:
        return f"{n:.3g}"
    except OverflowError:
        pass
    exact = math.log10(abs(n))  # log10 takes an int of any size
    exponent = math.floor(exact)
    digits = f"{10 ** (exact - exponent):.3g}"
    if digits == "10":  # 9.9996...: rounded up to the next power
        digits, exponent = "1", exponent + 1
    return f"{'-' if n < 0 else ''}{digits}e+{exponent}"


def check_json(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """ValueError naming the key when ``value`` nests too deep, holds a non-finite or huge number, or a
    string that is not text (a lone surrogate: a file name's bytes that are not UTF-8, see text.py).

    Iterative, so a hostile depth cannot overflow the stack.
    """
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        v, depth, path = stack.pop()
        where = f"{path[1:]}: " if path else ""
        if isinstance(v, dict | list | tuple):
            if depth >= max_depth:
                raise ValueError(f"{where}nested deeper than {max_depth} levels (the limit)")
            pairs = v.items() if isinstance(v, dict) else enumerate(v)
            for k, c in pairs:
                if isinstance(k, str) and clean(k) is not k:
                    raise ValueError(f"{where}key {_not_text(k)}")
                stack.append((c, depth + 1, f"{path}.{k}"))
        elif isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{where}{v} is not a finite number")
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) >= _MAX_INT:
            raise ValueError(f"{where}{short_int(v)} is out of range (|n| < 2**63)")
        elif isinstance(v, str) and clean(v) is not v:
            raise ValueError(f"{where}{_not_text(v)}")


def _not_text(s: str) -> str:
    """``s`` refused, shown at most 80 characters long around its first byte that is not UTF-8: a long path
    cut at its end hid the very byte the line is about."""
    shown = clean(s)
    if len(shown) > 80:
        first = next((i for i, c in enumerate(s) if "\ud800" <= c <= "\udfff"), 0)
        at = len(clean(s[:first]))  # where that byte's \xNN begins in what is shown
        start = max(0, min(at - 30, len(shown) - 74))
        cut = shown[start : start + 74]
        shown = ("..." if start else "") + cut + ("..." if start + 74 < len(shown) else "")
    encoding = sys.getfilesystemencoding()
    if codecs.lookup(encoding).name != "utf-8" and _utf8_bytes(s):
        return (
            f'"{shown}" is UTF-8 this process\'s locale could not decode (its encoding is {encoding}): '
            "run it with a UTF-8 locale (LC_ALL=C.UTF-8) or PYTHONUTF8=1"
        )
    return f'"{shown}" is not text: it has a byte that is not UTF-8 (shown as \\xNN), and Outlast stores text'


def _utf8_bytes(s: str) -> bool:
    """Whether ``s``, a string the locale's codec decoded with ``surrogateescape`` (an argument, a variable,
    a file name), is UTF-8 bytes. Refused all the same, not decoded here: a path typed with those bytes has
    to be encoded back by that codec to be opened, which 'ü' is not, so one argument would mean two things."""
    try:
        s.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        return False
    return True


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON."""
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())


# ---- specs and records -----------------------------------------------------------------------

_TYPE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}\Z")


def check_type(type_: str) -> str:
    """An operation type's name as submitted and registered; ValueError for one no spec could name."""
    v = type_name(type_)
    if not isinstance(v, str) or not _TYPE_RE.match(v):
        raise ValueError("must be lower case letters, digits, '_', '.', '-' (starting with a letter)")
    return v


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""What a one-line label must not hold: C0 and C1 controls (an escape sequence, a newline), line separators,
bidirectional overrides and isolates (U+202E shows the rest of a line reversed: a name could read as another)."""


_KEY_RE = re.compile(r"^[\x21-\x7e]+\Z")


def check_idempotency_key(key: str) -> str:
    """``key`` if it is one (1 to 255 printable ASCII characters, no space: what an HTTP header carries
    unchanged); else InvalidInput saying what is wrong (the caller names the key's field or header)."""
    if not key:
        raise InvalidInput("empty")
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidInput(f"{len(key)} characters, over the limit of {MAX_IDEMPOTENCY_KEY_CHARS}")
    if not _KEY_RE.match(key):
        raise InvalidInput("printable ASCII characters only, no spaces")
    return key


def bool_for_number(model: type[BaseModel], raw: Any) -> str | None:
    """What is wrong when a field of ``model`` declared a number (``int``, ``float``, optional or not) is given
    ``true`` or ``false`` in ``raw``, else None: pydantic takes them as 1 and 0, so ``-p items=true`` ran one
    item and ``--profile stall_timeout=true`` timed the operation out as stalled after a second."""
    if not isinstance(raw, dict):
        return None
    for key in number_keys(model):
        value = raw.get(key)
        if value is True or value is False:
            return f"{key}: {json.dumps(value)} is not a number"
    return None


@functools.cache
def number_keys(model: type[BaseModel]) -> tuple[str, ...]:
    """The keys ``model``'s number fields may be given under (alias, name, alias choices), worked out once per
    model: a stored profile is validated at every attempt's start, and walking the fields each time took
    longer than the validation itself (10 -> 25 us)."""
    keys: dict[str, None] = {}
    for name, field in model.model_fields.items():
        if _a_number(field.annotation):
            choices = field.validation_alias.choices if isinstance(field.validation_alias, AliasChoices) else []
            keys.update(dict.fromkeys([field.alias or name, name, *(c for c in choices if isinstance(c, str))]))
    return tuple(keys)


def _a_number(annotation: Any) -> bool:
    """Whether a field's type is a number alone (int, float, or one of them or None), not one a bool fits."""
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    kinds = [a for a in args if a is not type(None)]
    return bool(kinds) and all(a in (int, float) for a in kinds)


class NumbersNotBools(BaseModel):
    """A model whose number fields refuse ``true`` and ``false``, naming the field (pydantic reads them as 1
    and 0: a typo'd or hostile ``"timeout": true`` stored a one-second timeout)."""

    @model_validator(mode="before")
    @classmethod
    def _numbers_not_bools(cls, data: Any) -> Any:
        said = bool_for_number(cls, data)
        if said:
            raise ValueError(said)
        return data


class OperationSpec(NumbersNotBools):
    """What a user asks for. Validated before anything is stored."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    profile: dict[str, Any] = Field(default_factory=dict)
    """Per-operation overrides of the type's timeout profile (checked against TimeoutProfile)."""
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    total_items: int | None = Field(default=None, ge=0, le=MAX_ITEMS)
    """An estimate of the item count, used for the timeout until the handler reports the real one."""
    timeout: float | None = Field(default=None, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    """A fixed timeout in seconds: replaces the computed one, and is never extended."""
    tags: dict[str, str] = Field(default_factory=dict, max_length=MAX_TAGS)
    idempotency_key: str | None = None
    """Chosen by the client for this request: a submit with a key an operation of the store already has
    queues nothing and answers with that operation (a retry after a lost reply, a cron job run twice), so
    a request sent again never runs the work twice. Kept until the operation is removed."""

    @field_validator("idempotency_key")
    @classmethod
    def _key_ok(cls, v: str | None) -> str | None:
        return None if v is None else check_idempotency_key(v)

    @field_validator("type")
    @classmethod
    def _type_ok(cls, v: str) -> str:
        return check_type(v)

    @field_validator("params")
    @classmethod
    def _params_ok(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:  # most submits: nothing to walk or measure (a JSON dump of {} is 2 bytes)
            return v
        check_json(v)
        size = json_size(v)
        if size > MAX_PARAMS_BYTES:
            raise ValueError(f"{size} bytes of JSON, over the limit of {MAX_PARAMS_BYTES}")
        return v

    @field_validator("profile")
    @classmethod
    def _profile_ok(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            return v
        if len(v) > MAX_PROFILE_KEYS:
            raise ValueError(f"{len(v)} keys, over the limit of {MAX_PROFILE_KEYS}")
        for key in v:
            if len(key) > MAX_KEY_CHARS:
                raise ValueError(f"key {key[:20]!r}...: longer than {MAX_KEY_CHARS} characters")
        check_json(v, max_depth=3)  # retry = {transient = [...]} is the deepest a profile goes
        return v

    @field_validator("tags")
    @classmethod
    def _tags_ok(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not key.strip():  # a tag no one can name to filter by, shown as "=value"
                raise ValueError(f"a tag's key is empty or blank ({key!r} = {value[:20]!r})")
            if len(key) > MAX_TAG_CHARS or len(value) > MAX_TAG_CHARS:
                raise ValueError(f"tag {key[:20]!r}: key and value at most {MAX_TAG_CHARS} characters each")
        return v

    @field_validator("name", "tags", mode="before")
    @classmethod
    def _text_ok(cls, v: Any) -> Any:
        if v is None or (v.__class__ is dict and not v):  # no name, no tags: nothing to check
            return v
        if isinstance(v, str) and not v.strip():  # ``--name "$UNSET"``, or spaces: no name, not a blank one
            return None
        check_json(v)  # before pydantic's own check, which says only "unable to parse raw data"
        for text in [v] if isinstance(v, str) else [t for kv in v.items() for t in kv] if isinstance(v, dict) else []:
            if isinstance(text, str) and (bad := _CONTROL.search(text)):
                # A label shown on one line everywhere (a table, a terminal title, a log line): an escape
                # sequence in it was stored as sent, for every consumer of the JSON to render.
                raise ValueError(f"holds the control character U+{ord(bad.group()):04X}: a label is one line of text")
        return v


class Progress(BaseModel):
    """A snapshot of how far an operation has come."""

    done: int = 0
    total: int | None = None
    failed: int = 0
    skipped: int = 0
    step: str | None = None
    message: str | None = None
    rate: float | None = None
    """Items per second over the current run."""
    eta: float | None = None
    """Seconds until done at the current rate."""
    metrics: dict[str, Any] = Field(default_factory=dict)
    updated_at: float | None = None
    fraction: float = 0.0
    """The part of the next item done beyond ``done`` (0 <= fraction < 1), reported with a fraction (a
    migrated function's ``progress_callback(2.5, 10)``); ``percent`` counts it."""
    ran: float | None = None
    """Seconds the attempt had run at ``updated_at``, by the monotonic clock (time its process was stopped
    left out): what its elapsed time counts from, whatever the wall clock did (``humanize.run_seconds``)."""

    @property
    def percent(self) -> float | None:
        if not self.total:
            return 100.0 if self.total == 0 else None
        return min(100.0, 100.0 * (self.done + self.fraction) / self.total)


class WorkerInfo(BaseModel):
    host: str
    pid: int
    name: str | None = None
    boot: str | None = None
    """The host's boot id when the process started (Linux): with ``start``, who the pid is, whatever the clock did."""
    start: int | None = None
    """The process's start in clock ticks since boot (Linux ``/proc/PID/stat``); None elsewhere and in older records."""

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


class ItemFailure(BaseModel):
    key: str
    error: str
    attempt: int = 1
    at: float = 0.0


class Operation(BaseModel):
    """The stored record of one operation: the single source of truth for its state."""

    model_config = ConfigDict(extra="ignore")

    id: str
    handle: int | None = None
    """A short number (1, 2, 3, ...) the store gave it, never reused there: what people type in
    place of the id (``outlast watch 12``). None for records stored before handles existed."""
    type: str
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    profile: dict[str, Any] = Field(default_factory=dict)
    """The resolved timeout profile in force for this operation (type defaults + overrides)."""
    profile_overrides: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    status: Status = Status.QUEUED
    status_message: str | None = None
    created_at: float
    queued_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float
    attempt: int = 1
    """How many times the operation was started from the queue (1 on first run, +1 on each resume or retry)."""
    epoch: int = 0
    """Fencing token: increases at every claim; writes carrying an older epoch are refused."""
    retries: int = 0
    progress: Progress = Field(default_factory=Progress)
    total_items: int | None = None
    timeout: float | None = None
    """A fixed timeout chosen by the user, if any."""
    effective_timeout: float | None = None
    timeout_basis: str | None = None
    """How effective_timeout was computed, in words (shown by `show` and the dashboard)."""
    deadline: float | None = None
    extensions: int = 0
    result: Any = None
    error: str | None = None
    item_failures: int = 0
    worker: WorkerInfo | None = None
    resume_seq: int | None = None
    """The checkpoint a resume should start from (None: the newest valid one)."""
    checkpoint_seq: int | None = None
    """Newest checkpoint written."""
    not_before: float | None = None
    """A retry waits in the queue until then (backoff)."""
    backoff_from: float | None = None
    """When (wall time) the retry's backoff began: ``not_before`` minus the backoff the policy chose.
    None for records stored before it existed (they wait for ``not_before`` alone)."""
    idempotency_key: str | None = None
    """The key the operation was submitted with (``OperationSpec.idempotency_key``), if any."""
    orphaned_epoch: int | None = None
    """The epoch of the attempt found orphaned (its process gone) when that interrupted the operation: while
    it is still interrupted at that epoch (nobody resumed, cancelled or ran it since), an engine with
    ``auto_resume`` that runs the queue resumes it, whichever engine found it (``outlast ls`` or ``watch``
    often finds it first, and runs no queue)."""
    crashes: int = 0
    """Attempts in a row whose process died under them (found orphaned) with no checkpoint newer than the
    last such death's: at the retry policy's ``max_attempts`` it is no longer resumed automatically
    (``supervision.CRASHED``)."""
    crash_seq: int | None = None
    """The newest checkpoint when its process was last found dead: a newer one is progress, and the count of
    ``crashes`` begins again."""
    handler: str | None = None
    """For a built-in type, the handler it was submitted for: ``builtin``, or ``module.qualname`` of the function
    that replaces the built-in in the submitting process (``registry.handler_of``). A process whose handler for
    the type is another one fails it saying so, instead of running other code on its params. None: another
    type, or a record stored before this field (run by whichever handler)."""

    @property
    def label(self) -> str:
        return self.name or self.type

    def retry_due(self, now: float) -> bool:
        """Whether a retry waiting out its backoff may run at wall time ``now``: ``not_before`` has passed,
        or the clock reads earlier than when the backoff began (it was stepped back since: NTP, a VM
        restored), so that a backoff never waits longer than the policy chose, whatever the wall clock does
        (a step back of an hour delayed a 2 s retry by the hour). The stores' claims say the same."""
        if self.not_before is None or now >= self.not_before:
            return True
        return self.backoff_from is not None and now < self.backoff_from

    @property
    def ended_at(self) -> float:
        """When it ended, or, never run, was made: the age ``outlast clean --older-than`` goes by."""
        return self.finished_at or self.created_at

    @property
    def elapsed(self) -> float | None:
        """Seconds this attempt has run (None before it starts): ``elapsed_at`` now."""
        return self.elapsed_at(time.time())

    def elapsed_at(self, now: float) -> float | None:
        """Seconds this attempt has run at wall time ``now`` (None before it starts): per attempt, as the
        rate, the ETA and the deadline are, so a resume starts it again (every face says which attempt:
        ``humanize.elapsed``). A resumed or retried operation keeps its last attempt's ``started_at`` while it
        waits in the queue: counted from there, its elapsed grew by the pause, the queue and the backoff,
        then fell to 0 s when it started."""
        if self.status is Status.QUEUED:
            return None
        p = self.progress
        return run_seconds(self.started_at, self.finished_at, self.status in SETTLED, p.ran, p.updated_at, now)

    def seconds_left(self, now: float) -> float | None:
        """Seconds before a running attempt's deadline at wall time ``now`` (``humanize.seconds_left``)."""
        if self.status is not Status.RUNNING:
            return None
        return seconds_left(self.deadline, self.progress.updated_at, now)

    def elapsed_text(self, now: float) -> str:
        """``elapsed_at`` as ``show`` and the dashboard's detail say it (``humanize.elapsed``)."""
        return attempt_elapsed(self.elapsed_at(now), self.attempt)


class Checkpoint(BaseModel):
    """A durable point an operation can resume from."""

    operation_id: str
    seq: int
    epoch: int = 0
    created_at: float
    progress_percentage: float | None = None
    processed_items: int = 0
    total_items: int | None = None
    done_count: int = 0
    """How many item keys are done as of this checkpoint (the keys live in incremental deltas)."""
    state: dict[str, Any] = Field(default_factory=dict)
    context_data: dict[str, Any] = Field(default_factory=dict)
    next_step: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    checksum: str = ""
    size: int = 0
    """Bytes of the stored payload."""
    valid: bool = True
    """False when the stored checksum does not match (listing shows it; resume skips it)."""


class LogRecord(BaseModel):
    ts: float
    level: str
    message: str
    operation_id: str | None = None
    fields: dict[str, Any] = Field(default_factory=dict)

    @field_validator("message")
    @classmethod
    def _message(cls, v: str) -> str:
        return clean(v)  # a file name's bytes that are not UTF-8 as \xNN: storable (text.py)

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            return clean_json(v) if v else v
        except RecursionError:  # a cycle: said in the record, not raised at the handler's log call
            return {"fields": "not stored: they hold a cycle or nest too deep for JSON"}


# ---- events ----------------------------------------------------------------------------------


class Event(BaseModel):
    """Something that happened to an operation; published on the engine's bus after it is stored."""

    kind: ClassVar[str] = "event"
    operation_id: str
    ts: float = Field(default_factory=time.time)


class StatusChanged(Event):
    kind: ClassVar[str] = "status"
    status: Status
    previous: Status | None = None
    message: str | None = None


class ProgressReported(Event):
    kind: ClassVar[str] = "progress"
    progress: Progress


class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint"
    seq: int
    done: int
    size: int
    latency: float


class TimeoutExtended(Event):
    kind: ClassVar[str] = "timeout_extended"
    deadline: float
    reason: str


class ItemFailed(Event):
    kind: ClassVar[str] = "item_failed"
    key: str
    error: str
    failures: int
    threshold: int


class LogEmitted(Event):
    kind: ClassVar[str] = "log"
    record: LogRecord


ControlAction = Literal["cancel", "pause"]
