"""Liveness of the Redis store: leases, heartbeats, orphans.

A running operation is held by ``lease:ID`` (holder token and epoch) with a TTL the engine's
heartbeat renews. An operation marked running without a lease is an orphan: its worker died
or was cut off for longer than the TTL. A lease that expired by the worker's own clock is never
renewed (it may have been taken over): the heartbeat that finds it gone (or the operation moved on)
ends that attempt in this process, which then writes nothing more. One Redis dropped while by the
worker's clock it still holds is set again, if the record still shows that attempt (``heartbeat``); a write of
that attempt refused meanwhile for its lease alone is sent again after such a heartbeat (``RedisCore._fenced``).
Right after Redis (re)started, orphans are not looked for during one TTL, so that live workers
renew the leases that survived first; a Redis that came back empty is noticed first (recovery.py).
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from ...errors import KeyTaken
from ...models import Operation, Status, StoreError
from ...offload import off_loop
from .codec import valid_id
from .connection import DOWN_PROBE
from .recovery import RecoveryMixin

log = logging.getLogger("outlast.store.redis")

REINDEX_EVERY = 60.0
"""Seconds between two rebuilds of the indexes by one process (``_reindex``)."""


class LivenessMixin(RecoveryMixin):
    """Holding, letting go of, and finding orphaned operations (part of RedisStore)."""

    _reindexed_at: float | None = None
    """When this process last indexed the operations again (``_reindex``)."""

    def _token(self, op_id: str) -> str:
        return f"{self.holder}:{self._held.get(op_id, 0)}"

    async def release(self, op_id: str, epoch: int | None = None) -> None:
        self._last_delta.pop(op_id, None)
        if self._unsure.pop(op_id, None) is not None:  # the attempt is over, its settle told or given up
            self._settling.discard(op_id)
        if op_id in self._lost and (epoch is None or self._lost[op_id] == epoch):
            del self._lost[op_id]  # that attempt has ended: its operation is an orphan like any other now
            return
        if op_id not in self._held or (epoch is not None and self._held[op_id] != epoch):
            return
        token = self._token(op_id)
        self._held.pop(op_id, None)
        self._renewed.pop(op_id, None)
        await self._script("RELEASE", [self.keys.lease(op_id)], [token], f"releasing {op_id}")

    async def release_all(self) -> None:
        """Best effort, when closing: lets other engines see this process's operations orphaned at once."""
        script = self._scripts["RELEASE"]
        for op_id in list(self._held):
            release = functools.partial(script, [self.keys.lease(op_id)], [self._token(op_id)])  # (keys, args, client)
            try:  # a Redis found down is not waited on for long: it would only hold up the exit
                await self.link.call_once(release, self.link.client, None if self.link.connected else DOWN_PROBE)
            except Exception:
                break
        self._held.clear()
        self._renewed.clear()
        self._lost.clear()
        self._unsure.clear()
        self._last_delta.clear()

    async def at_rest(self, fn: Callable[[], None]) -> None:
        fn()  # no lock another process waits on is held between two calls

    async def heartbeat(self, op_ids: list[str]) -> None:
        """Renew the leases of ``op_ids`` this process holds. A lease Redis no longer has, while by this
        process's own clock it has not run out (set or renewed less than a TTL ago), is set again if the
        record still shows this attempt running and no other lease is there: Redis's clock ran past it,
        not this worker's (a Redis restarted from its append-only file after the machine's clock stepped
        forward, a host paused as a whole). No other attempt can have begun: taking an operation over moves
        its epoch or status first, which the script checks in the same step. A worker itself stopped past
        its lease (SIGSTOP) finds it run out by its own clock, and its attempt is over, as before."""
        await self._renew(op_ids)

    async def _renew(self, op_ids: list[str]) -> set[str]:
        """``heartbeat``: the operations of ``op_ids`` whose lease (renewed or set again) holds after it."""
        held = {i: self._held[i] for i in op_ids if i in self._held}
        if not held:
            return set()
        sent = [0.0]

        def args() -> list[Any]:  # for each try: whether a lease is still ours is judged when it is sent
            now = sent[0] = time.monotonic()
            out: list[Any] = [self.keys.prefix, int(self.lease_ttl * 1000), self.holder]
            for i, e in held.items():
                mine = now < self._renewed.get(i, -math.inf) + self.lease_ttl
                out += [i, str(e), "1" if mine else "0"]
            return out

        lost = await self._script("HEARTBEAT", [], args, "renewing leases") or []
        refused = set()
        for k in range(0, len(lost), 4):
            op_id = lost[k].decode()
            if lost[k + 1] == b"set":
                log.info("operation %s: its lease was gone from redis before its time; set again", op_id)
                continue
            refused.add(op_id)
            self._refused(op_id, held[op_id], lost[k : k + 4])
        holds = {i for i in held if i not in refused and self._held.get(i) == held[i]}
        for i in holds:
            self._renewed[i] = sent[0]
        return holds

    async def find_orphans(self) -> list[Operation]:
        if self._check_generation:
            await self._ensure_generation()
        else:
            await self._ensure_generation_cheap()
        wait = self.link.last_wait()
        if wait is not None and wait[1] >= self.lease_ttl / 2 and wait[0] < self.lease_ttl + 1:
            # Redis answers again after keeping this process waiting about as long as a lease: a frozen Redis
            # let live workers' leases run out too (a watcher marked a running operation interrupted as the
            # worker running it was renewing), as a restart does. Judged once they have had the time to renew.
            return []
        if await self._uptime() < self.lease_ttl + 1:
            return []  # Redis just (re)started: live workers have not renewed their leases yet
        running, gone_key = self.keys.status(Status.RUNNING.value), self.keys.gone

        queues = [self.keys.status(Status.QUEUED.value)]
        queues += [k(r) for r in range(3) for k in (self.keys.queue, self.keys.delayed)]

        indexes = [self.keys.all, self.keys.ids, *(self.keys.status(s.value) for s in Status)]

        async def look(c: Any) -> list[Any]:
            pipe = c.pipeline(transaction=False)
            pipe.zrange(running, 0, -1)
            pipe.scard(gone_key)  # queued ids a claim found without a record
            for key in [*queues, *indexes]:
                pipe.zcard(key)
            return list(await pipe.execute())

        members, gone_count, listed, *counts = await self.link.call(look, "looking for orphans")
        held, (in_all, in_ids, *by_status) = counts[: len(queues) - 1], counts[len(queues) - 1 :]
        if in_all != in_ids or in_all != sum(by_status):  # an index key evicted: its operations listed nowhere
            await self._reindex(indexes)
        dropped: list[Any] = []
        if gone_count:  # taken only when there are some: a look that writes nothing works on a read-only replica
            dropped = await self.link.call(
                lambda c: c.spop(gone_key, 500), "taking the queued ids found without a record"
            )
        if listed > sum(held):  # queued operations no queue holds (a queue key evicted): none would run them
            await self._requeue()
            dropped = [*(dropped or []), *await self.link.call(lambda c: c.spop(gone_key, 500), "taking them")]
        ids = [i for i in (m.decode() for m in members) if i not in self._held and i not in self._lost and valid_id(i)]
        revived = await self._ghosts(sorted({i for i in (m.decode() for m in dropped or []) if valid_id(i)}))
        if not ids:
            return [op for op in revived if op.status is Status.RUNNING]

        async def leases(c: Any) -> list[int]:
            pipe = c.pipeline(transaction=False)
            for i in ids:
                pipe.exists(self.keys.lease(i))
            return list(await pipe.execute())

        gone = [i for i, n in zip(ids, await self.link.call(leases, "checking leases"), strict=True) if not n]
        ops = await self._fetch(gone)
        if len(ops) < len(gone):
            read = {op.id for op in ops}
            ops += await self._ghosts(await self._missing([i for i in gone if i not in read]))
        orphans = []
        for op in [*ops, *revived]:
            if op.status is not Status.RUNNING:
                continue
            prior = await self._went_back(op, frozenset({Status.RUNNING}))
            if prior is None:
                orphans.append(op)
                continue
            await self._write_back(op, prior)
        return orphans

    async def left_orphaned(self) -> list[str]:
        """Operations interrupted when found orphaned and left so since (``orphaned_epoch`` is still their
        epoch): what an engine that runs the queue resumes. The engine that finds an orphan here queues it
        again at once, in a second write after the one that marks it interrupted: one killed between the
        two (a worker, an ``outlast ls``) left it interrupted, and no worker ever resumed it."""
        key = self.keys.status(Status.INTERRUPTED.value)
        ids = [m.decode() for m in await self.link.call(lambda c: c.zrange(key, 0, -1), "listing interrupted")]
        out: list[str] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]

            async def epochs(c: Any, chunk: list[str] = chunk) -> list[list[bytes | None]]:
                pipe = c.pipeline(transaction=False)
                for i in chunk:
                    pipe.hmget(self.keys.op(i), ["orphaned_epoch", "epoch"])
                return list(await pipe.execute())

            rows = await self.link.call(epochs, "listing interrupted operations left orphaned")
            out += [i for i, (was, now) in zip(chunk, rows, strict=True) if was is not None and was == now]
        return out

    async def _reindex(self, indexes: list[str]) -> None:
        """Index every operation some index holds again as its record says (REINDEX), said when it finds
        any; at most once a minute (the counts of a record tampered with to an unknown status never agree).
        Only when the counts of ``indexes`` (all, ids, then each status) disagree again when read once more:
        a create or removal between two counts of one look (no MULTI: an ACL may not allow it) is no loss."""
        now = time.monotonic()
        if self._reindexed_at is not None and now - self._reindexed_at < REINDEX_EVERY:
            return

        async def count(c: Any) -> list[int]:
            pipe = c.pipeline(transaction=False)
            for key in indexes:
                pipe.zcard(key)
            return list(await pipe.execute())

        in_all, in_ids, *by_status = await self.link.call(count, "counting the indexes")
        if in_all == in_ids == sum(by_status):
            return
        self._reindexed_at = now
        args = [self.keys.prefix, *(s.value for s in Status)]
        try:
            n = await self._script("REINDEX", [], args, "indexing operations again")
        except StoreError as e:  # refused (a read-only replica, a full Redis): listed as they are meanwhile
            log.debug("indexing operations again failed: %s", e)
            return
        if n:
            log.warning(
                "redis %s: %d operation%s missing from the store's indexes (an index key evicted, or deleted by"
                " hand): indexed again from %s records",
                self.link.where,
                n,
                "s" if n != 1 else "",
                "their" if n != 1 else "its",
            )

    async def _requeue(self) -> None:
        """Queue again the queued operations no queue holds (REQUEUE), said once per round that finds any."""
        n = await self._script("REQUEUE", [], [self.keys.prefix, repr(time.time())], "queueing lost entries again")
        if n:
            log.warning(
                "redis %s: %d queued operation%s no queue held (a queue key evicted, or deleted by hand): queued again",
                self.link.where,
                n,
                "s" if n != 1 else "",
            )

    async def _restore_one(self, op: Operation) -> int:
        tx = f"restore:{secrets.token_hex(8)}"
        try:
            return await self._create(op, tx=tx)
        except KeyTaken:  # submitted again meanwhile: both are kept, the key stays with the other
            op.idempotency_key = None
            return await self._create(op, tx=tx)

    async def _ghosts(self, op_ids: list[str]) -> list[Operation]:
        """Operations listed as running, or queued ones a claim found (``find_orphans``), whose record Redis
        no longer holds, though it was not emptied (evicted by a maxmemory policy, or deleted by hand): left
        so, each held a store slot for good (the claim counts the running ones) and was counted in every
        listing; a queued one was dropped from its queue without a word, and never restored from the
        checkpoint mirror that held it (only a Redis emptied whole is). Taken out of every index,
        then restored from the checkpoint mirror when it has the record (indexed as the mirror has it, and
        resumed as any orphan if that is running: returned); else said in a warning."""
        restored: list[str] = []
        for op_id in op_ids:
            args = [self.keys.prefix, op_id, *(s.value for s in Status)]
            if not await self._script("FORGET", [], args, f"taking {op_id} out of the indexes"):
                continue  # its record is back (restored meanwhile)
            op = None
            if self.mirror is not None:
                try:
                    op = await off_loop(self.mirror.load_record_sync, op_id)
                except OSError:
                    op = None
            if op is not None:
                if await self._restore_one(op) > 0:  # 0: restored by another process meanwhile
                    log.warning(
                        "operation %s: its record was gone from redis %s (evicted, or deleted by hand);"
                        " restored from the checkpoint mirror",
                        op_id,
                        self.link.where,
                    )
                    restored.append(op_id)
                continue
            log.warning(
                "operation %s: its record is gone from redis %s (evicted, or deleted by hand), and no"
                " checkpoint mirror holds it: taken out of the listings and the counts",
                op_id,
                self.link.where,
            )
        return await self._fetch(restored) if restored else []

    async def _uptime(self) -> float:
        """Seconds since Redis started (INFO may be forbidden by an ACL: then leases are trusted at once)."""
        try:
            info = await self.link.call(lambda c: c.info("server"), "reading server info")
            return float(info.get("uptime_in_seconds", 1e9))
        except (StoreError, ValueError, TypeError):
            return 1e9
