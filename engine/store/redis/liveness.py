"""Liveness of the Redis store: leases, heartbeats, orphans, and noticing a Redis that lost everything.

A running operation is held by ``lease:ID`` (holder token and epoch) with a TTL the engine's
heartbeat renews. An operation marked running without a lease is an orphan: its worker died
or was cut off for longer than the TTL. A lease that expired is never renewed: the heartbeat
that finds it gone (or the operation moved on) ends that attempt in this process, which then
writes nothing more. Right after Redis (re)started, orphans are not looked for during one TTL,
so that live workers renew the leases that survived first. A Redis that comes back empty (no
persistence) is noticed by its missing generation mark, and restored from the mirror (the
attempts that ran then have lost their leases and are resumed from their checkpoints).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from ...models import Operation, Status, StoreError
from .codec import RedisParts, valid_id

log = logging.getLogger("outlast.store.redis")


class LivenessMixin(RedisParts):
    _generation: bytes | None
    _check_generation: bool

    async def _create(self, op: Operation, tx: str) -> int:  # pragma: no cover - provided by RedisStore
        raise NotImplementedError

    async def _fetch(self, op_ids: list[str], strict: bool = False) -> list[Operation]:  # pragma: no cover
        raise NotImplementedError

    async def _ensure_generation(self, force_restore: bool = False) -> None:
        """Notice a Redis that lost everything (restarted empty): restore from the mirror if there is one."""
        key = self._k("meta")
        gen = await self.link.call(lambda c: c.hget(key, "generation"), "reading the store generation")
        changed = gen is None or (self._generation is not None and gen != self._generation)
        if changed and self._generation is not None:
            log.warning("redis %s: the store was emptied or replaced since this process connected", self.link.where)
        if self.mirror is not None and (changed or force_restore):
            await self._restore_from_mirror()
        if gen is None:
            await self.link.call(lambda c: c.hsetnx(key, "generation", secrets.token_hex(8)), "marking the store")
            gen = await self.link.call(lambda c: c.hget(key, "generation"), "reading the store generation")
        self._generation = gen
        self._check_generation = False

    async def _restore_from_mirror(self) -> None:
        mirror = self.mirror
        assert mirror is not None
        ids = [i for i in await asyncio.to_thread(mirror.record_ids_sync) if valid_id(i)]
        if not ids:
            return
        missing: list[str] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]

            async def exists(c: Any, chunk: list[str] = chunk) -> list[int]:
                pipe = c.pipeline(transaction=False)
                for i in chunk:
                    pipe.exists(self._k("op", i))
                return await pipe.execute()

            found = await self.link.call(exists, "checking records against the mirror")
            missing += [i for i, n in zip(chunk, found, strict=True) if not n]
        restored = 0
        for op_id in missing:
            op = await asyncio.to_thread(mirror.load_record_sync, op_id)
            if op is None:
                continue
            newest = await asyncio.to_thread(mirror.newest_seq_sync, op_id)
            if newest is not None and (op.checkpoint_seq or 0) < newest:
                op.checkpoint_seq = newest
            restored += await self._create(op, tx="restore")
        if restored:
            log.warning(
                "redis %s: restored %d operations from the checkpoint mirror %s", self.link.where, restored, mirror.root
            )

    async def _restored(self) -> bool:
        """After a record was found missing: True when Redis had been emptied and the mirror restored it."""
        if self.mirror is None:
            return False
        before = self._generation
        await self._ensure_generation()
        return self._generation != before

    def _token(self, op_id: str) -> str:
        return f"{self.holder}:{self._held.get(op_id, 0)}"

    async def release(self, op_id: str, epoch: int | None = None) -> None:
        if op_id in self._lost and (epoch is None or self._lost[op_id] == epoch):
            del self._lost[op_id]  # that attempt has ended: its operation is an orphan like any other now
            return
        if op_id not in self._held or (epoch is not None and self._held[op_id] != epoch):
            return
        token = self._token(op_id)
        self._held.pop(op_id, None)
        await self._script("RELEASE", [self._k("lease", op_id)], [token], f"releasing {op_id}")

    async def heartbeat(self, op_ids: list[str]) -> None:
        held = {i: self._held[i] for i in op_ids if i in self._held}
        if not held:
            return
        args: list[Any] = [self.P, int(self.lease_ttl * 1000), self.holder]
        for i, e in held.items():
            args += [i, str(e)]
        lost = await self._script("HEARTBEAT", [], args, "renewing leases") or []
        for k in range(0, len(lost), 4):
            op_id = lost[k].decode()
            self._refused(op_id, held[op_id], lost[k : k + 4])

    async def find_orphans(self) -> list[Operation]:
        if self._check_generation:
            await self._ensure_generation()
        else:
            await self._ensure_generation_cheap()
        if await self._uptime() < self.lease_ttl + 1:
            return []  # Redis just (re)started: live workers have not renewed their leases yet
        ids = [m.decode() for m in await self.link.call(lambda c: c.zrange(self._k("st", "running"), 0, -1), "")]
        ids = [i for i in ids if i not in self._held and i not in self._lost and valid_id(i)]
        if not ids:
            return []

        async def leases(c: Any) -> list[int]:
            pipe = c.pipeline(transaction=False)
            for i in ids:
                pipe.exists(self._k("lease", i))
            return await pipe.execute()

        gone = [i for i, n in zip(ids, await self.link.call(leases, "checking leases"), strict=True) if not n]
        return [op for op in await self._fetch(gone) if op.status is Status.RUNNING]

    async def _uptime(self) -> float:
        """Seconds since Redis started (INFO may be forbidden by an ACL: then leases are trusted at once)."""
        try:
            info = await self.link.call(lambda c: c.info("server"), "reading server info")
            return float(info.get("uptime_in_seconds", 1e9))
        except (StoreError, ValueError, TypeError):
            return 1e9

    async def _ensure_generation_cheap(self) -> None:
        gen = await self.link.call(lambda c: c.hget(self._k("meta"), "generation"), "reading the store generation")
        if gen != self._generation:
            await self._ensure_generation()
