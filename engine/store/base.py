"""The Store protocol: the one source of truth shared by every process that opens it.

Operations, the queue, checkpoints (with their incremental item deltas), the item
ledger, logs and control requests all live behind this interface. Every write that
belongs to an attempt carries that attempt's epoch; the store refuses it (StaleAttempt)
once a newer attempt holds the operation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Protocol, runtime_checkable

from pydantic_core import from_json, to_json

from .. import limits
from ..limits import MAX_VALUE_DEPTH
from ..models import (
    Checkpoint,
    ControlAction,
    InvalidInput,
    ItemFailure,
    LogRecord,
    Operation,
    Priority,
    Status,
    WorkerInfo,
)
from ..shortage import memory_left
from ..text import NotJSON, json_bytes, key_not_text, not_json, too_deep

ROOT = ""
"""The link the first delta of a chain names (there is no delta before it)."""
_LINK_HEAD = b'{"p":"'


def link(raw_delta: bytes) -> str:
    """The link the next delta names: a hash of this delta's bytes, which hold the link before it.

    So a checkpoint's checksum, which covers its own delta, covers the whole chain of deltas a
    resume through it reads: a changed, missing or foreign delta anywhere breaks it."""
    return hashlib.sha256(raw_delta).hexdigest()


def _strings(value: Any, what: str) -> list[str]:
    # map over isinstance: the check runs in C, at half the cost of a generator over 100,000 keys
    if not isinstance(value, list) or not all(map(isinstance, value, repeat(str))):
        raise ValueError(f"{what} is not a list of strings")
    return value


@dataclass
class ItemDelta:
    """Item ledger changes since the previous checkpoint."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def encode(self, prev: str = ROOT) -> bytes:
        """Canonical bytes, led by ``prev``: the link of the delta before this one (``ROOT`` for seq 1).

        pydantic-core writes the bytes ``json.dumps(ensure_ascii=False)`` would, without a new encoder per call
        (13 of the 30 us a checkpoint's seal took on the store's thread); a key holding a lone surrogate (a file
        name's undecodable bytes), which it refuses, is written ASCII-escaped by the json module as before."""
        value = {"p": prev, "d": self.done, "f": self.failed, "s": self.skipped}
        try:
            return to_json(value)
        except ValueError:
            return json_bytes(value, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> ItemDelta:
        """The delta in ``raw``; ValueError for anything that is not one (wrong JSON, wrong types)."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("item delta is not an object")
        failed = data.get("f", {})
        if not isinstance(failed, dict) or not all(isinstance(v, str) for v in failed.values()):
            raise ValueError("item delta failures are not a map of strings")
        return cls(  # the lists are json.loads's own: no copy
            done=_strings(data.get("d", []), "done items"),
            failed=failed,
            skipped=_strings(data.get("s", []), "skipped items"),
        )

    def __bool__(self) -> bool:
        return bool(self.done or self.failed or self.skipped)


@dataclass
class Ledger:
    """Every item's fate as of one checkpoint: the resume point's done set."""

    done: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)
    order: list[list[str]] = field(default_factory=list)
    """The deltas' done lists in seq order (json's own lists: no copy): the order the handler finished
    the items in, usually the order its ``ctx.items`` offers them again. A resumed loop compares each key
    with the next one here (a string compare) before it hashes the key to look it up in ``done``; every
    key here is in ``done``, so a match is always a done item."""

    def apply(self, delta: ItemDelta) -> None:
        if delta.done:
            self.order.append(delta.done)
        self.done.update(delta.done)
        if self.failed:  # an item that failed before and is done now (a retry); most ledgers have none
            for k in delta.done:
                self.failed.pop(k, None)
        self.failed.update(delta.failed)
        self.skipped.update(delta.skipped)


def _named_link(raw: bytes) -> str | None:
    """The link a delta names (None: a delta written before links existed)."""
    if not raw.startswith(_LINK_HEAD):
        return None
    end = raw.find(b'"', len(_LINK_HEAD))
    return raw[len(_LINK_HEAD) : end].decode("ascii", "replace") if end > 0 else "?"


class Chain:
    """The item deltas of one operation, followed from seq 1 for as long as every link holds.

    Both stores resume by the same rules: a checkpoint is valid when its seq is within the intact
    chain and its checksum matches its payload and its own delta; its done set is the union of the
    deltas up to it. A delta after a break (edited, garbled, missing, or left by an abandoned
    attempt) is never read."""

    def __init__(self, rows: Iterable[tuple[Any, Any]]) -> None:
        """``rows``: (seq, delta bytes) in ascending seq order; reading stops at the first break."""
        self._raw: list[bytes] = []
        self.broken: str | None = None
        """Why the chain stops before its last delta (for the log line), or None."""
        expect: str = ROOT
        legacy = True  # deltas without links (older versions) may only lead the chain
        for seq, raw in rows:
            want = len(self._raw) + 1
            if seq != want:
                self.broken = f"delta {want} is missing"
                break
            raw = raw.encode() if isinstance(raw, str) else bytes(raw) if isinstance(raw, (bytes, memoryview)) else b""
            named = _named_link(raw)
            if (named is None and not legacy) or (named is not None and named != expect):
                self.broken = f"delta {seq} does not follow delta {seq - 1}" if seq > 1 else "delta 1 starts no chain"
                break
            legacy = legacy and named is None
            self._raw.append(raw)
            expect = link(raw)

    def __len__(self) -> int:
        return len(self._raw)

    def delta(self, seq: int) -> bytes:
        """The bytes of delta ``seq`` (within the chain)."""
        return self._raw[seq - 1]

    def verifies(self, seq: int, payload: bytes | str, cs: str) -> bool:
        """Whether checkpoint ``seq`` with this payload and checksum is resumable through this chain."""
        if not isinstance(seq, int) or not 1 <= seq <= len(self._raw):
            return False
        payload = payload.encode() if isinstance(payload, str) else bytes(payload or b"")
        return checksum(payload, self._raw[seq - 1]) == cs

    def ledger(self, seq: int) -> Ledger:
        """The done set as of checkpoint ``seq``; ValueError when a delta up to it is not readable."""
        ledger = Ledger()
        for i, raw in enumerate(self._raw[:seq], 1):
            try:
                ledger.apply(ItemDelta.decode(raw))
            except ValueError as e:
                raise ValueError(f"delta {i} is unreadable ({e.__class__.__name__})") from None
        return ledger


QUICK_HEADROOM = 64 << 20
"""Bytes left under an address-space limit (``ulimit -v``) below which a checkpoint is not encoded the quick
way (pydantic-core), beside four times the largest payload encoded so far (its output grows by doubling, and
reading it back to compare makes a second copy of the state)."""


class _Quick:
    """Whether pydantic-core may encode checkpoints in this process. Where an allocation fails inside it, it
    does not raise MemoryError: pyo3 prints a traceback and panics ("PyObject pointer is null"); with
    RUST_BACKTRACE set the panic's backtrace found no memory either and blocked for good, holding the GIL
    (the event loop stopped, signals unanswered, the operation left running until a SIGKILL), and without it
    the next call after a panic blocked the same way. So it is not called where memory may run out (a limit
    nearly reached), and never again in a process where it once panicked."""

    usable = True
    largest = 0

    @classmethod
    def fits(cls) -> bool:
        if not cls.usable:
            return False
        left = memory_left()
        return left is None or left > QUICK_HEADROOM + 4 * cls.largest


def _panicked(e: BaseException) -> bool:
    """``e`` is pyo3's PanicException (a BaseException, not importable by name): a panic inside pydantic-core."""
    return type(e).__name__ == "PanicException"


def encode_payload(cp: Checkpoint) -> bytes:
    """The checkpoint's resumable content as canonical JSON (with the counts a resume takes from it)."""
    content = {
        "state": cp.state,
        "context_data": cp.context_data,
        "next_step": cp.next_step,
        "metadata": cp.metadata,
        "counts": [cp.processed_items, cp.total_items, cp.done_count],
    }
    # The quick way (a quarter of the time for a 5 KB state of small dicts): pydantic-core writes it, and the
    # bytes are kept when read back they give what was saved (read by pydantic-core: json.loads, which a
    # resume uses, reads the shortest float text and every other JSON value the same). What it writes
    # differently (a key that is not a string, a tuple, a datetime, NaN) fails the comparison or the write,
    # and the checks below say why or write it as json does.
    if _Quick.fits():
        quick: bytes | None = None
        try:
            encoded = to_json(content, inf_nan_mode="constants")
            if from_json(encoded, cache_strings=False) == content:  # no string cache: 20 -> 14 us for 5 KB
                _Quick.largest = max(_Quick.largest, len(encoded))
                quick = encoded
        except (ValueError, TypeError, RecursionError):
            pass
        except BaseException as e:
            if not _panicked(e):
                raise
            _Quick.usable = False  # never again here: the next call may block for good (see _Quick)
            raise MemoryError("pydantic-core failed encoding the checkpoint (out of memory?)") from None
        if quick is not None:
            return _within_limit(quick)  # out of the try: NotJSON is a TypeError
    deep = too_deep(cp.state, "ctx.state", MAX_VALUE_DEPTH) or too_deep(
        cp.context_data, "ctx.context_data", MAX_VALUE_DEPTH
    )
    if deep is not None:  # the encoder below recursed past the stack: "internal error: RecursionError"
        error = NotJSON(f"checkpoint not saved: {deep}")
        error.too_deep = True
        raise error
    where = key_not_text(cp.state, "ctx.state") or key_not_text(cp.context_data, "ctx.context_data")
    if where is not None:
        raise NotJSON(
            f"checkpoint not saved: {where}; JSON keys are strings, and a resume would read it back as one"
            " (use str keys)"
        )
    try:
        slow = json_bytes(content, separators=(",", ":"))
        _Quick.largest = max(_Quick.largest, len(slow))
    except (TypeError, ValueError) as e:  # the handler's to fix: say what, where, in its own words
        where = next(filter(None, (not_json(content[k], f"ctx.{k}") for k in ("state", "context_data"))), None)
        raise NotJSON(
            f"checkpoint not saved: {where or e}; a checkpoint holds JSON values only (str, int, float,"
            " bool, None, lists, dicts with str keys)"
        ) from None
    return _within_limit(slow)


def _within_limit(payload: bytes) -> bytes:
    """``payload``, or NotJSON when it is larger than a checkpoint may be (``MAX_CHECKPOINT_BYTES``): the
    handler's to fix, said at its safe point, never a store outage (read at each call: a test lowers it)."""
    limit = limits.MAX_CHECKPOINT_BYTES
    if len(payload) > limit:
        raise NotJSON(
            f"checkpoint not saved: ctx.state and its context data are {len(payload):,} bytes of JSON, over the"
            f" limit of {limit:,} (a checkpoint is written whole each time): keep bulk data in your own output"
            " and its place (a path, an offset) in ctx.state"
        )
    return payload


def stopped_instead(status: Status, message: str, changes: dict[str, Any]) -> dict[str, Any]:
    """The fields that turn a settle (``changes``) into the stop asked meanwhile, ``status``: a cancel of one
    to paused, timed out or queued for a retry; a pause of a retry queued. The status, ``message``, and a
    finish time; a retry's backoff no longer waits."""
    return {
        "status": status,
        "status_message": message,
        "finished_at": changes.get("finished_at") or time.time(),
        "not_before": None,
        "backoff_from": None,
    }


def checksum(payload: bytes, delta: bytes) -> str:
    h = hashlib.sha256(payload)
    h.update(b"\0")
    h.update(delta)
    return h.hexdigest()


MISSING = "missing"
"""The link a delta names when the delta before it cannot be found: it starts no chain (never resumable)."""

LISTING_EXCLUDE = frozenset({"state", "context_data", "metadata", "next_step"})
"""Checkpoint fields kept out of the listing info (they are the payload)."""
_LISTING_EXCLUDE_SET = set(LISTING_EXCLUDE)


@dataclass(frozen=True)
class Sealed:
    """A checkpoint ready to be written, the same for every store: what it stores and what it returns."""

    checkpoint: Checkpoint
    """The checkpoint with its checksum and size set."""
    payload: bytes
    """encode_payload(checkpoint): state, context_data, next_step, metadata and the counts."""
    delta: bytes
    """The item delta, led by the link of the delta before it."""
    info: str
    """The listing info: the checkpoint's JSON without the payload's fields."""


def seal(
    cp: Checkpoint, delta: ItemDelta, before: bytes | str | memoryview | None, payload: bytes | None = None
) -> Sealed:
    """Seal checkpoint ``cp`` with its items ``delta``: link the delta to ``before`` (the stored bytes of
    delta ``cp.seq - 1``; None when it is missing; ignored for seq 1) and checksum the payload and the
    delta together, so a resume through it verifies the whole chain (Chain). ``payload``: the checkpoint's
    encode_payload, if the caller made it already."""
    if cp.seq <= 1:
        prev = ROOT
    elif before is None:
        prev = MISSING
    else:
        prev = link(before.encode() if isinstance(before, str) else bytes(before))
    payload = encode_payload(cp) if payload is None else payload
    items = delta.encode(prev)
    cs = checksum(payload, items)
    sealed = cp.model_copy(update={"checksum": cs, "size": len(payload) + len(items)})
    return Sealed(sealed, payload, items, sealed.model_dump_json(exclude=_LISTING_EXCLUDE_SET))


def decode_payload(raw: bytes | str) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("state", {}), dict):
        raise ValueError("checkpoint payload is not an object")
    return data


_NEXT_STEP = b'"next_step":'
_TAIL = json.JSONDecoder()


def next_step_of(payload: bytes) -> str | None:
    """A payload's next step, read from its tail when it has the shape ``encode_payload`` writes
    (``{"state":…,"context_data":…,"next_step":…,"metadata":…,"counts":…}``), the state, most of it, not decoded:
    a listing decoded five 36 MB states into Python objects for one string each. The last ``"next_step":`` is the
    top-level one unless the metadata holds such a key, and then what follows it is not the payload's end: any
    other shape is decoded whole, as before. ValueError if it is not a readable payload."""
    at = payload.rfind(_NEXT_STEP)
    if at > 0 and payload.startswith(b'{"state":'):
        with contextlib.suppress(ValueError):  # UnicodeDecodeError too: decoded whole below, as before
            tail = payload[at:].decode()  # cut at an ASCII quote: never inside a character
            step, end = _TAIL.raw_decode(tail, len(_NEXT_STEP))
            for field in (',"metadata":', ',"counts":'):
                if not tail.startswith(field, end):
                    break
                _, end = _TAIL.raw_decode(tail, end + len(field))
            else:
                if end == len(tail) - 1 and tail[end] == "}":
                    return step if isinstance(step, str) else None
    step = decode_payload(payload).get("next_step")
    return step if isinstance(step, str) else None


def restore(info: Checkpoint, payload: bytes | str) -> Checkpoint:
    """The checkpoint ``info`` describes, with what its (verified) payload holds; ValueError if unreadable.

    The counts come from the payload, which the checksum covers, not from the listing info."""
    data = decode_payload(payload)
    update: dict[str, Any] = {k: data.get(k) or {} for k in ("state", "context_data", "metadata")}
    update["next_step"] = data.get("next_step")
    for k in ("context_data", "metadata"):
        if not isinstance(update[k], dict):
            raise ValueError(f"checkpoint {k} is not an object")
    counts = data.get("counts")
    if counts is not None:
        if (
            not isinstance(counts, list)
            or len(counts) != 3
            or not all(c is None or (isinstance(c, int) and c >= 0) for c in counts)
            or counts[0] is None
        ):
            raise ValueError("checkpoint counts are malformed")
        update |= {"processed_items": counts[0], "total_items": counts[1], "done_count": counts[2] or 0}
    return info.model_copy(update=update)


def resume_note(op_id: str, skipped: list[str], chosen: int | None) -> str:
    """The one line saying which checkpoints a resume skipped (``skipped``: "checkpoint N (why)"), and
    where it starts."""
    shown = "; ".join(skipped[:4]) + (f"; {len(skipped) - 4} more" if len(skipped) > 4 else "")
    where = (
        f"resuming from checkpoint {chosen}"
        if chosen is not None
        else "no checkpoint verifies: restarting from scratch"
    )
    line = f"operation {op_id}: {where}; skipped {shown}"
    return "".join(ch if ch.isprintable() else "?" for ch in line)  # stored bytes may be anything


SLOTS_MAX = 1000
"""The largest store-wide slot count (``outlast slots N``)."""


def parse_slots(raw: object) -> int | None:
    """The store-wide slot count a stored value holds: an integer 1..SLOTS_MAX, else None (no limit).

    Unset is the default, also for stores made before slots existed: each engine's own
    ``max_concurrent`` only. A value edited by hand into something else limits nothing either, the
    same way in every reader and in the claim (the Redis claim script applies the same rule)."""
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and 1 <= int(raw) <= SLOTS_MAX:
        return int(raw)
    return None


def check_slots(n: object) -> int | None:
    """``n`` as a slot count to store (None: unset); InvalidInput (one line) for anything else."""
    if n is None or (type(n) is int and 1 <= n <= SLOTS_MAX):
        return n
    raise InvalidInput(f"store slots {n!r}: expected a whole number from 1 to {SLOTS_MAX}, or off")


@runtime_checkable
class Store(Protocol):
    """What an engine needs from where state lives. All methods are coroutines."""

    url: str
    read_only: bool
    """Set by ``open``: the store can be read, not written (a local state dir on a read-only file system)."""
    heartbeat_every: float | None
    """Seconds between the heartbeats that keep this process's holds (a Redis lease: a third of its ttl);
    None: as often as live progress is written (the local store's flock lives as long as its process)."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # ---- records
    async def create(self, op: Operation, fresh: bool = False) -> int | None:
        """Store a new record; returns the handle the store gave it (None: this store gives none). A record
        with an ``idempotency_key`` another operation of the store has is not stored: KeyTaken names that one
        (checked and written in the same atomic step as the record: two creates with one key, one stored).

        ``fresh``: ``op`` was just built (``Operation(...)``) and nothing of it changed since, so the fields
        it was not given (``model_fields_set``) hold their defaults: a store may encode only the others."""
        ...

    async def get(self, op_id: str) -> Operation:
        """The record, or NotFound."""
        ...

    async def list_operations(
        self,
        statuses: list[Status] | None = None,
        types: list[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Operation]:
        """Newest first."""
        ...

    async def resolve(self, prefix: str) -> str:
        """The one full id starting with ``prefix``, or with that handle (``models.handle_of``);
        NotFound, or InvalidInput (ambiguous)."""
        ...

    async def counts(self) -> dict[Status, int]: ...
    async def queue_depth(self) -> dict[Priority, int]: ...
    async def queued_priorities(self) -> dict[str, Priority]:
        """Every queued operation's id and priority, read without its record (a look at a long queue)."""
        ...

    async def transition(
        self,
        op_id: str,
        to: Status,
        *,
        epoch: int | None = None,
        expect: frozenset[Status] | None = None,
        if_cancelled: str | None = None,
        if_paused: str | None = None,
        expect_control: frozenset[ControlAction | None] | None = None,
        **fields: Any,
    ) -> Operation:
        """Move to ``to`` (checked against TRANSITIONS and ``expect``), setting ``fields``; durable.

        ``if_cancelled``: a running attempt settling as paused, which a cancel asked meanwhile (its request
        stored, ``request_control``) replaces: in the same atomic step the operation is cancelled instead,
        with this status message. The cancel gives the operation up, the pause would keep it; the settle
        must not write over a request the asker was told stands. ``if_paused``: likewise, a running attempt
        queued again for a retry, which a pause asked meanwhile (and no cancel) turns into ``paused`` with
        this status message: the retry would have run on after the asker was told "pause requested".

        ``expect_control``: the pending control requests (None: none) ``to`` was chosen by, as the caller read
        them (``pending_controls``). Checked in the same atomic step as the write: another request stored
        since (a pause asked between the read and this write) refuses it, ControlChanged (a Conflict), and
        nothing is written; the caller reads again and chooses again. A settle drops the request: without the
        check, one that landed in between was lost (an orphan interrupted, and resumed, though asked to pause).
        Checked after ``epoch`` and ``expect``: their refusals come first."""
        ...

    async def update(self, op_id: str, *, epoch: int | None = None, **fields: Any) -> Operation:
        """Change fields without a status change (priority, deadline, total_items, ...)."""
        ...

    async def delete(self, op_id: str, *, expect: frozenset[Status]) -> None:
        """Remove the operation and all it owns (checkpoints, item deltas and failures, logs) in one
        atomic step, only while its status is in ``expect``: else Conflict, and nothing is removed (a
        resume or claim since the caller's read wins). NotFound when there is no such operation."""
        ...

    async def claim(
        self,
        worker: WorkerInfo,
        now: float,
        aging: float,
        op_id: str | None = None,
        types: frozenset[str] | None = None,
    ) -> Operation | None:
        """Atomically take the next due queued operation (priority with aging, FIFO), or ``op_id`` if it
        is queued, mark it running with a new epoch, and hold it (lock or lease) for this process.

        ``types``: take only operations of these types, passing over the others (a worker without a
        plugin leaves that plugin's operations to the workers that have it, instead of failing them);
        None takes any. Not applied to ``op_id``, which the caller has chosen.

        None when there is none, or when the store's slots (``get_slots``) are all in use: the running
        operations are counted in the same atomic step as the claim, so engines racing for the last
        slot never overrun it. An orphan keeps its slot until recovery settles or requeues it."""
        ...

    async def get_slots(self) -> int | None:
        """The store-wide slot count (None: unset, no limit beyond each engine's own)."""
        ...

    async def set_slots(self, n: int | None) -> None:
        """Set (1..SLOTS_MAX) or unset (None) the store-wide slot count: InvalidInput for anything else.

        Kept in the store, so every engine on it reads the same count, at its next claim (no restart):
        a claim that would make more operations running on the store than ``n`` claims nothing. It is a
        property of the store, not of a process, and unset by default: a Redis fleet sizes each worker
        to its machine (``max_concurrent``), and a default taken from one process would cap the fleet."""
        ...

    async def save_live(self, updates: list[tuple[str, int, dict[str, Any]]]) -> None:
        """Live fields of running operations (progress, deadline, ...; JSON-ready values), in one write."""
        ...

    # ---- liveness
    async def release(self, op_id: str, epoch: int | None = None) -> None:
        """Drop this process's hold on an operation (after its final transition).

        With ``epoch``, only that attempt's hold: a newer attempt claimed by this same process
        (a resume that raced the settle) keeps its own."""
        ...

    async def heartbeat(self, op_ids: list[str]) -> None: ...
    async def at_rest(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` where this store holds nothing another process waits on (the SQLite store: on its
        thread, between two transactions): a Ctrl-Z stops the process there, not holding the database's
        write lock, which every other process on the state dir would wait on while it stayed stopped."""
        ...

    async def find_orphans(self) -> list[Operation]:
        """Operations marked running whose holder is gone."""
        ...

    # ---- checkpoints
    async def save_checkpoint(self, cp: Checkpoint, delta: ItemDelta, keep: int) -> Checkpoint: ...
    async def load_checkpoint(self, op_id: str, seq: int | None = None) -> tuple[Checkpoint, Ledger] | None:
        """The newest valid checkpoint at or below ``seq``; corrupt ones are skipped with a warning."""
        ...

    async def checkpoints(self, op_id: str) -> list[Checkpoint]:
        """Newest first, without state (listing)."""
        ...

    async def discard_checkpoints_after(self, op_id: str, seq: int, failed: dict[str, str] | None = None) -> None:
        """Cut the chain after checkpoint ``seq`` (a resume from an older one). ``failed``: the items failed
        as of ``seq`` (its ledger's); the item failures listed become exactly those, so an item that failed
        or was done only in the cut-off part is listed as the kept chain has it."""
        ...

    async def item_failures(self, op_id: str) -> list[ItemFailure]: ...

    # ---- control
    async def request_control(self, op_id: str, action: ControlAction) -> ControlAction | None:
        """Ask a running operation to cancel or pause (its attempt reads it at its next poll): what the store
        holds after, which is the cancel asked before a pause (a pause never replaces it), or None when the
        operation is not running (nothing is stored)."""
        ...

    async def pending_controls(self, op_ids: list[str]) -> dict[str, ControlAction]: ...
    async def clear_control(self, op_id: str) -> None: ...

    # ---- logs
    async def append_logs(self, op_id: str, records: list[LogRecord]) -> None: ...
    async def read_logs(
        self, op_id: str, offset: int = 0, limit: int | None = None, *, first: int | None = None
    ) -> tuple[list[LogRecord], int]:
        """Records from ``offset``, and the offset to continue from (for following): a page of them, or with
        ``limit`` the last ``limit`` (a tail: the ones before are passed over), or with ``first`` at most
        ``first`` right after ``offset`` (a page of a reader that pages on through all of them)."""
        ...
