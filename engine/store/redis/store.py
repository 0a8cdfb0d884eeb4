"""The distributed store: every process (``outlast worker`` on many machines, the dashboard, the CLI)
points at one Redis and shares operations, the queue, checkpoints, logs and control requests.

Records are hashes of JSON-encoded fields, validated with pydantic whenever they are read
back (a malformed one is reported and skipped; nothing stored is ever unpickled or
evaluated). Every check-then-write runs as one Lua script inside Redis (redis_lua): the
claim, the fencing of every write of an attempt, the control requests. A running
operation is held by a lease key with a TTL that the engine's heartbeat renews; an
operation marked running whose lease expired is an orphan, which any engine marks
interrupted and (``resume_orphans``) queues again to resume from its newest checkpoint.
A write of an attempt (checkpoint, live progress, log, transition) is applied only while
the operation is running under that attempt's epoch and its lease still holds that
attempt's token; the first refusal ends the attempt in this process (``on_lease_lost``
tells the engine, which stops the handler), and it writes nothing more.
With a checkpoint mirror, checkpoints and records are also kept as files (mirror.py) and
restored from there when Redis comes back empty.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...models import (
    TRANSITIONS,
    Conflict,
    InvalidInput,
    NotFound,
    Operation,
    Priority,
    StaleAttempt,
    Status,
    StoreError,
    WorkerInfo,
    check_transition,
    validate_id,
    validate_id_prefix,
)
from ..mirror import CheckpointMirror
from . import lua
from .checkpoints import CheckpointsMixin
from .codec import decode_record, enc, pairs
from .connection import RedisLink
from .liveness import LivenessMixin
from .logs import ControlLogsMixin

log = logging.getLogger("outlast.store.redis")

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_RANKS = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}


class RedisStore(LivenessMixin, ControlLogsMixin, CheckpointsMixin):
    """``RedisStore("redis://:PASSWORD@host:6379/0", namespace="team-a", checkpoint_mirror="/srv/ckpt")``."""

    resume_orphans = True
    """An operation whose worker lost its lease is queued again (by any engine that notices)."""
    on_lease_lost: Callable[[str, int], None] | None = None

    def __init__(
        self,
        url: str,
        *,
        namespace: str | None = None,
        checkpoint_mirror: str | Path | None = None,
        lease_ttl: float | None = None,
        retry_for: float | None = None,
    ) -> None:
        self.link = RedisLink(url) if retry_for is None else RedisLink(url, retry_for=retry_for)
        params = self.link.params
        ns = namespace or "outlast"
        if not _NAMESPACE_RE.match(ns):
            raise InvalidInput(f"namespace {ns!r}: expected 1-64 characters of letters, digits, _ . : -")
        self.namespace = ns
        self.P = f"{ns}:"
        try:
            self.lease_ttl = float(lease_ttl if lease_ttl is not None else params.get("lease_ttl", 5.0))
        except ValueError:
            raise InvalidInput(f"store URL: lease_ttl={params.get('lease_ttl')!r} is not a number") from None
        if not 0.5 <= self.lease_ttl <= 3600:
            raise InvalidInput(f"lease_ttl {self.lease_ttl:g}: expected 0.5 to 3600 seconds")
        self.url = self.link.shown_url
        self.mirror = CheckpointMirror(checkpoint_mirror, ns) if checkpoint_mirror else None
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._held: dict[str, int] = {}
        self._lost: dict[str, int] = {}
        self._settling: set[str] = set()
        self._opened = 0
        self._generation: bytes | None = None
        self._check_generation = True
        self._s: dict[str, Any] = {}
        self._malformed: set[str] = set()

    # ---- plumbing ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """False while Redis cannot be reached (writes are being retried)."""
        return self.link.connected

    def _k(self, kind: str, op_id: str = "") -> str:
        return f"{self.P}{kind}:{op_id}" if op_id else f"{self.P}{kind}"

    async def _script(self, name: str, keys: list[str], args: list[Any], what: str) -> Any:
        return await self.link.script(self._s[name], keys, args, what)

    async def open(self) -> None:
        self._opened += 1
        if self._opened > 1:
            return
        try:
            await self.link.open()
        except BaseException:
            self._opened = 0
            raise
        client = self.link.client
        assert client is not None
        for name in (
            "CREATE",
            "WRITE",
            "CLAIM",
            "HEARTBEAT",
            "RELEASE",
            "SAVE_LIVE",
            "SAVE_CHECKPOINT",
            "DISCARD_AFTER",
            "CONTROL",
            "LOG",
        ):
            self._s[name] = client.register_script(getattr(lua, name))
        self.link.on_reconnect = self._reconnected
        if self.mirror is not None:
            try:
                await asyncio.to_thread(self.mirror.open_sync)
            except OSError as e:
                self.mirror.healthy = False
                log.error("checkpoint mirror %s cannot be used: %s (Redis goes on without it)", self.mirror.root, e)
        await self._ensure_generation(force_restore=True)

    async def close(self) -> None:
        self._opened = max(0, self._opened - 1)
        if self._opened or self.link.client is None:
            return
        for op_id in list(self._held):  # best effort: lets other engines see the orphan at once
            try:
                await self._s["RELEASE"](
                    keys=[self._k("lease", op_id)], args=[self._token(op_id)], client=self.link.client
                )
            except Exception:
                break
        self._held.clear()
        self._lost.clear()
        await self.link.close()

    async def __aenter__(self) -> RedisStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _reconnected(self) -> None:
        self._check_generation = True

    async def _mirror_record(self, op: Operation) -> None:
        if self.mirror is not None:
            await self.mirror.save_record(op)

    # ---- records -------------------------------------------------------------------------------

    async def _create(self, op: Operation, tx: str) -> int:
        fields = op.model_dump(mode="json")
        args = [self.P, op.id, repr(time.time()), tx, *pairs(fields)]
        return int(await self._script("CREATE", [self._k("op", op.id)], args, f"creating {op.id}"))

    async def create(self, op: Operation) -> None:
        validate_id(op.id)
        if not await self._create(op, tx=secrets.token_hex(8)):
            raise Conflict(f"operation {op.id} exists already")
        await self._mirror_record(op)

    async def _fetch(self, op_ids: list[str], strict: bool = False) -> list[Operation]:
        """Records in the order asked; missing ones left out, malformed ones reported and skipped."""
        out: list[Operation] = []
        for start in range(0, len(op_ids), 500):
            chunk = op_ids[start : start + 500]

            async def get_all(c: Any, chunk: list[str] = chunk) -> list[dict[bytes, bytes]]:
                pipe = c.pipeline(transaction=False)
                for i in chunk:
                    pipe.hgetall(self._k("op", i))
                return await pipe.execute()

            for op_id, raw in zip(chunk, await self.link.call(get_all, "reading records"), strict=True):
                if not raw:
                    continue
                try:
                    out.append(decode_record(op_id, raw))
                except ValueError as e:
                    if strict:
                        raise StoreError(f"operation {op_id}: stored record in redis is malformed: {e}") from None
                    self._report_malformed(op_id, e)
        return out

    async def get(self, op_id: str) -> Operation:
        validate_id(op_id)
        found = await self._fetch([op_id], strict=True)
        if not found:
            raise NotFound(f"no operation {op_id}")
        return found[0]

    async def list(
        self,
        statuses: list[Status] | None = None,
        types: list[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Operation]:
        keys = [self._k("st", Status(s).value) for s in statuses] if statuses else [self._k("all")]
        want = None if (limit is None or types) else offset + limit

        async def ranked(c: Any) -> list[list[tuple[bytes, float]]]:
            pipe = c.pipeline(transaction=False)
            for k in keys:
                pipe.zrevrange(k, 0, -1 if want is None else want - 1, withscores=True)
            return await pipe.execute()

        merged = sorted(
            ((score, member) for rows in await self.link.call(ranked, "listing") for member, score in rows),
            reverse=True,
        )
        ids = [m.decode() for _, m in merged]
        wanted_types = set(types) if types else None
        out: list[Operation] = []
        skip = offset
        for start in range(0, len(ids), 500):
            for op in await self._fetch(ids[start : start + 500]):
                if wanted_types is not None and op.type not in wanted_types:
                    continue
                if skip:
                    skip -= 1
                    continue
                out.append(op)
                if limit is not None and len(out) >= limit:
                    return out
        return out

    async def resolve(self, prefix: str) -> str:
        validate_id_prefix(prefix)
        key = self._k("ids")
        rows = await self.link.call(
            lambda c: c.zrangebylex(key, f"[{prefix}", f"({prefix}~", start=0, num=6), "resolving an id"
        )
        found = [r.decode() for r in rows]
        if not found:
            raise NotFound(f"no operation matches id {prefix!r} in {self.url}")
        if len(found) > 1:
            shown = ", ".join(found[:5])
            raise InvalidInput(f"id prefix {prefix!r} is ambiguous: {shown}{', ...' if len(found) > 5 else ''}")
        return found[0]

    async def counts(self) -> dict[Status, int]:
        async def do(c: Any) -> list[int]:
            pipe = c.pipeline(transaction=False)
            for s in Status:
                pipe.zcard(self._k("st", s.value))
            return await pipe.execute()

        return {s: n for s, n in zip(Status, await self.link.call(do, "counting"), strict=True) if n}

    async def queue_depth(self) -> dict[Priority, int]:
        async def do(c: Any) -> list[int]:
            pipe = c.pipeline(transaction=False)
            for r in range(3):
                pipe.zcard(self._k("q", str(r)))
                pipe.zcard(self._k("dq", str(r)))
            return await pipe.execute()

        n = await self.link.call(do, "reading queue depth")
        return {p: n[2 * r] + n[2 * r + 1] for p, r in _RANKS.items()}

    async def _write(
        self, op_id: str, fields: dict[str, Any], epoch: int | None, allowed: list[Status] | None, what: str
    ) -> tuple[str, Any]:
        """A record write; one of this process's own attempts (``epoch`` held here) is fenced by its lease,
        any other with an ``epoch`` only compares it."""
        own = epoch is not None and epoch in (self._held.get(op_id), self._lost.get(op_id))
        token = self._attempt_token(op_id, epoch) if own and epoch is not None else ""
        fields = {**fields, "updated_at": time.time()}
        args = [
            self.P,
            op_id,
            repr(time.time()),
            "" if epoch is None else str(epoch),
            "" if allowed is None else ",".join(enc(s.value) for s in allowed),
            secrets.token_hex(8),
            token,
            *pairs(fields),
        ]
        keys = [self._k("op", op_id), self._k("lease", op_id)]
        res = await self._script("WRITE", keys, args, what)
        tag = res[0].decode()
        if tag == "missing" and await self._restored():
            res = await self._script("WRITE", keys, args, what)
            tag = res[0].decode()
        if tag == "missing":
            raise NotFound(f"no operation {op_id}")
        if tag == "fenced" and epoch is not None:
            raise self._refused(op_id, epoch, res)
        if tag == "stale":
            raise StaleAttempt(f"operation {op_id}: attempt epoch {epoch} was replaced by {res[1].decode()}")
        return tag, res[1]

    def _from_reply(self, op_id: str, flat: list[bytes]) -> Operation:
        raw = dict(zip(flat[::2], flat[1::2], strict=True))
        try:
            return decode_record(op_id, raw)
        except ValueError as e:
            raise StoreError(f"operation {op_id}: stored record in redis is malformed: {e}") from None

    async def transition(
        self,
        op_id: str,
        to: Status,
        *,
        epoch: int | None = None,
        expect: frozenset[Status] | None = None,
        **fields: Any,
    ) -> Operation:
        validate_id(op_id)
        allowed = [s for s in Status if to in TRANSITIONS[s] and (expect is None or s in expect)]
        settling = epoch is not None and to is not Status.RUNNING and self._held.get(op_id) == epoch
        if settling:
            self._settling.add(op_id)  # a heartbeat meanwhile must not take this settle for a lost lease
        try:
            tag, data = await self._write(op_id, {**fields, "status": to}, epoch, allowed, f"{op_id} -> {to.value}")
        finally:
            if settling:
                self._settling.discard(op_id)
        if tag in ("conflict", "held"):
            current = Status(json.loads(data))
            if tag == "held":
                raise Conflict(f"operation {op_id} is running and its worker holds its lease: not interrupted")
            if expect is not None and current not in expect:
                raise Conflict(f"operation {op_id} is {current.value}: cannot make it {to.value}")
            check_transition(current, to)
            raise Conflict(f"operation {op_id} is {current.value}: cannot make it {to.value}")
        op = self._from_reply(op_id, data)
        if epoch is not None and to is not Status.RUNNING:
            self._held.pop(op_id, None)  # the script let go of the lease
        await self._mirror_record(op)
        return op

    async def update(self, op_id: str, *, epoch: int | None = None, **fields: Any) -> Operation:
        validate_id(op_id)
        _tag, data = await self._write(op_id, fields, epoch, None, f"updating {op_id}")
        op = self._from_reply(op_id, data)
        await self._mirror_record(op)
        return op

    async def claim(self, worker: WorkerInfo, now: float, aging: float, op_id: str | None = None) -> Operation | None:
        if op_id is not None:
            validate_id(op_id)
        args = [
            self.P,
            repr(now),
            repr(float(aging)),
            enc(worker),
            int(self.lease_ttl * 1000),
            secrets.token_hex(8),
            self.holder,
            op_id or "",
        ]
        res = await self._script("CLAIM", [], args, "claiming work")
        if not res:
            return None
        claimed = res[0].decode()
        raw = dict(zip(res[1][::2], res[1][1::2], strict=True))
        try:
            op = decode_record(claimed, raw)
        except ValueError as e:
            # Claimed but unreadable (tampered with): not run; its lease lapses and it stays reported.
            self._report_malformed(claimed, e)
            return None
        self._held[claimed] = op.epoch
        await self._mirror_record(op)
        return op

    async def save_live(self, updates: list[tuple[str, int, dict[str, Any]]]) -> None:
        updates = [u for u in updates if self._lost.get(u[0]) != u[1]]  # a lost attempt writes nothing
        if not updates:
            return
        args: list[Any] = [self.P, repr(time.time()), self.holder]
        for op_id, epoch, fields in updates:
            kv = pairs(fields)
            args += [op_id, str(epoch), len(kv) // 2, *kv]
        refused = await self._script("SAVE_LIVE", [], args, "saving live progress") or []
        epochs = {op_id: epoch for op_id, epoch, _ in updates}
        for k in range(0, len(refused), 4):
            op_id = refused[k].decode()
            self._refused(op_id, epochs[op_id], refused[k : k + 4])
