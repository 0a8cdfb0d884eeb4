"""The Store protocol: the one source of truth shared by every process that opens it.

Operations, the queue, checkpoints (with their incremental item deltas), the item
ledger, logs and control requests all live behind this interface. Every write that
belongs to an attempt carries that attempt's epoch; the store refuses it (StaleAttempt)
once a newer attempt holds the operation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..models import (
    Checkpoint,
    ControlAction,
    ItemFailure,
    LogRecord,
    Operation,
    Priority,
    Status,
    WorkerInfo,
)


@dataclass
class ItemDelta:
    """Item ledger changes since the previous checkpoint."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        return json.dumps(
            {"d": self.done, "f": self.failed, "s": self.skipped}, separators=(",", ":"), ensure_ascii=False
        ).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> ItemDelta:
        data = json.loads(raw)
        return cls(done=list(data.get("d", [])), failed=dict(data.get("f", {})), skipped=list(data.get("s", [])))

    def __bool__(self) -> bool:
        return bool(self.done or self.failed or self.skipped)


@dataclass
class Ledger:
    """Every item's fate as of one checkpoint: the resume point's done set."""

    done: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)

    def apply(self, delta: ItemDelta) -> None:
        self.done.update(delta.done)
        for k in delta.done:
            self.failed.pop(k, None)
        self.failed.update(delta.failed)
        self.skipped.update(delta.skipped)


def encode_payload(cp: Checkpoint) -> bytes:
    """The checkpoint's resumable content as canonical JSON."""
    return json.dumps(
        {"state": cp.state, "context_data": cp.context_data, "next_step": cp.next_step, "metadata": cp.metadata},
        separators=(",", ":"),
        ensure_ascii=False,
        sort_keys=False,
    ).encode()


def checksum(payload: bytes, delta: bytes) -> str:
    h = hashlib.sha256(payload)
    h.update(b"\0")
    h.update(delta)
    return h.hexdigest()


def decode_payload(raw: bytes | str) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("state", {}), dict):
        raise ValueError("checkpoint payload is not an object")
    return data


@runtime_checkable
class Store(Protocol):
    """What an engine needs from where state lives. All methods are coroutines."""

    url: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # ---- records
    async def create(self, op: Operation) -> None: ...
    async def get(self, op_id: str) -> Operation:
        """The record, or NotFound."""
        ...

    async def list(
        self,
        statuses: list[Status] | None = None,
        types: list[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Operation]:
        """Newest first."""
        ...

    async def resolve(self, prefix: str) -> str:
        """The one full id starting with ``prefix``; NotFound or InvalidInput (ambiguous)."""
        ...

    async def counts(self) -> dict[Status, int]: ...
    async def queue_depth(self) -> dict[Priority, int]: ...

    async def transition(
        self,
        op_id: str,
        to: Status,
        *,
        epoch: int | None = None,
        expect: frozenset[Status] | None = None,
        **fields: Any,
    ) -> Operation:
        """Move to ``to`` (checked against TRANSITIONS and ``expect``), setting ``fields``; durable."""
        ...

    async def update(self, op_id: str, *, epoch: int | None = None, **fields: Any) -> Operation:
        """Change fields without a status change (priority, deadline, total_items, ...)."""
        ...

    async def claim(self, worker: WorkerInfo, now: float, aging: float, op_id: str | None = None) -> Operation | None:
        """Atomically take the next due queued operation (priority with aging, FIFO), or ``op_id`` if it
        is queued, mark it running with a new epoch, and hold it (lock or lease) for this process."""
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

    async def discard_checkpoints_after(self, op_id: str, seq: int) -> None: ...
    async def item_failures(self, op_id: str) -> list[ItemFailure]: ...

    # ---- control
    async def request_control(self, op_id: str, action: ControlAction) -> None: ...
    async def pending_controls(self, op_ids: list[str]) -> dict[str, ControlAction]: ...
    async def clear_control(self, op_id: str) -> None: ...

    # ---- logs
    async def append_logs(self, op_id: str, records: list[LogRecord]) -> None: ...
    async def read_logs(self, op_id: str, offset: int = 0, limit: int | None = None) -> tuple[list[LogRecord], int]:
        """Records from ``offset``, and the offset to continue from (for following)."""
        ...
