"""The distributed store: every process (``outlast worker`` on many machines, the dashboard, the CLI)
points at one Redis and shares operations, the queue, checkpoints, logs and control requests.

Records are hashes of JSON-encoded fields, validated with pydantic whenever they are read
back (a malformed one is reported and skipped; nothing stored is ever unpickled or
evaluated). Every check-then-write runs as one Lua script inside Redis (lua.py): the
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

The parts, each a class derived from ``core.RedisCore`` (the link, the keys, the scripts, the
attempts held and their fencing): ``recovery`` (a Redis that lost everything), ``records``
(operations, the queue, claims), ``liveness`` (leases, heartbeats, orphans), ``checkpoints``,
``logs`` (control requests and logs); ``keys`` is the key layout, public for tools.
"""

from __future__ import annotations

import contextlib
import logging
import time

from ...humanize import size
from ...models import Operation, StoreError
from ...offload import off_loop
from . import lua
from .checkpoints import CheckpointsMixin
from .keys import SCHEMA_FIELD
from .liveness import LivenessMixin
from .logs import ControlLogsMixin
from .records import RecordsMixin

log = logging.getLogger("outlast.store.redis")

_SCRIPTS = (
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
    "DELETE",
    "FORGET",
    "REQUEUE",
    "REINDEX",
)
"""The Lua scripts (lua.py) registered when the store opens."""

_EVICTION_SAID: set[tuple[str, int, str]] = set()
"""The servers, and their memory settings, this process has looked at: each said at most once."""


REDIS_SCHEMA = 1
"""The record layout this version reads and writes in Redis; a store marked with a newer one is refused. Raise
it when a record changes in a way this version would run wrongly (on the local store, schema 2 was such a
change, and the versions before it had no mark here to refuse by: an older worker failed what a newer one
queued)."""


class RedisStore(RecordsMixin, LivenessMixin, CheckpointsMixin, ControlLogsMixin):
    """``RedisStore("redis://:PASSWORD@host:6379/0", namespace="team-a", checkpoint_mirror="/srv/ckpt")``."""

    _opened = 0
    eviction_every = 60.0
    """Seconds between two looks at Redis's memory settings (``_check_eviction``) by a long-lived process."""
    _eviction_at = 0.0
    """When (monotonic) this process last looked."""

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
        for name in _SCRIPTS:
            self._scripts[name] = client.register_script(getattr(lua, name))
        self.link.on_reconnect = self._reconnected
        try:
            marked = await self._check_schema()
        except BaseException:
            self._opened = 0
            await self.link.close()
            raise
        await self._check_eviction()
        if self.mirror is not None:
            try:
                await off_loop(self.mirror.open_sync)
            except OSError as e:
                self.mirror.healthy = False
                log.error("checkpoint mirror %s cannot be used: %s (Redis goes on without it)", self.mirror.root, e)
        try:
            await self._ensure_generation(opening=True)
        except BaseException:  # a mirror of another store on an emptied one (refused), Redis gone meanwhile
            self._opened = 0
            await self.link.close()
            raise
        if not marked:  # last: a store refused above has nothing written in it
            key = self.keys.meta
            with contextlib.suppress(StoreError):  # best effort: a read-only replica, an ACL
                await self.link.call(lambda c: c.hsetnx(key, SCHEMA_FIELD, REDIS_SCHEMA), "marking the store's schema")

    async def _check_schema(self) -> bool:
        """Refuse a store a newer Outlast marked with a newer record layout, before anything in it is changed;
        whether it has a mark (one without, made by this version or an older one, or emptied, is marked with
        this version's once the open succeeded: best effort, a read-only replica or an ACL may refuse it)."""
        key = self.keys.meta
        raw = await self.link.call(lambda c: c.hget(key, SCHEMA_FIELD), "reading the store's schema")
        try:
            found = int(raw) if raw is not None else None
        except ValueError:
            found = None
        if found is not None and found > REDIS_SCHEMA:
            raise StoreError(
                f"redis {self.link.where} (namespace {self.keys.namespace}) was written by a newer Outlast (schema"
                f" {found}; this version reads up to {REDIS_SCHEMA}): upgrade Outlast or use another namespace"
            )
        return found is not None

    async def _check_eviction(self) -> None:
        """Say once per process, server and setting when this Redis may evict keys: with a maxmemory and any policy
        but noeviction, a full Redis drops keys without a word: a queued operation vanishes, a checkpoint
        is gone, a lease evicted makes its live worker look dead. With noeviction a full Redis refuses
        writes instead, which the engine says in one line (exit 8) and loses nothing of."""
        self._eviction_at = time.monotonic()
        try:
            info = await self.link.call(lambda c: c.info("memory"), "reading the memory settings")
            limit, policy = int(info.get("maxmemory") or 0), str(info.get("maxmemory_policy") or "noeviction")
        except Exception:  # INFO refused (an ACL, a managed Redis): nothing to say
            return
        seen = (self.link.where, limit, policy)
        if seen in _EVICTION_SAID:
            return
        _EVICTION_SAID.add(seen)
        if limit and policy != "noeviction":
            log.warning(
                "redis %s: maxmemory-policy %s lets Redis evict Outlast's keys once it holds %s (operations,"
                " checkpoints and leases lost without a word); set maxmemory-policy noeviction, under which a"
                " full Redis refuses writes and Outlast says so",
                self.link.where,
                policy,
                size(limit),
            )

    async def _emptied(self) -> None:
        # Keys gone without a restart: an eviction policy set since this process looked (once a minute) is
        # the likely cause, said now, with the line about the store, not up to a minute after it.
        await self._check_eviction()

    async def find_orphans(self) -> list[Operation]:
        # Every look for orphans (a worker's, every few seconds), once a minute: the memory settings
        # again. Looked at only when a process opened the store, a policy set to evict keys since
        # (CONFIG SET maxmemory-policy allkeys-lru) was never said by the workers it dropped keys under.
        if time.monotonic() - self._eviction_at >= self.eviction_every:
            await self._check_eviction()
        return await super().find_orphans()

    async def close(self) -> None:
        self._opened = max(0, self._opened - 1)
        if self._opened or self.link.client is None:
            return
        await self.release_all()
        await self.link.close()

    async def __aenter__(self) -> RedisStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
