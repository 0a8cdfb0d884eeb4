"""Noticing a Redis that lost everything (restarted empty, or replaced), and restoring it from the mirror.

The store marks Redis with a generation (``meta`` ``generation``). A missing or changed mark means
everything this process knew is gone: with a checkpoint mirror, the records it holds are written
back (the attempts that ran then have lost their leases and are resumed from their checkpoints).
A write that finds its record missing asks ``_restored`` once, and is retried if it was.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from ...models import Checkpoint, Operation
from .codec import valid_id
from .core import RedisCore
from .keys import GENERATION_FIELD

log = logging.getLogger("outlast.store.redis")


class RecoveryMixin(RedisCore):
    """The generation mark and restoring from the mirror (part of RedisStore)."""

    _generation: bytes | None = None
    """The mark this process saw last (None before the first look)."""
    _check_generation = True
    """Set after a reconnection: the next look for orphans first checks the mark."""

    async def _read_generation(self) -> bytes | None:
        key = self.keys.meta
        gen: bytes | None = await self.link.call(
            lambda c: c.hget(key, GENERATION_FIELD), "reading the store generation"
        )
        return gen

    async def _ensure_generation(self, force_restore: bool = False) -> None:
        """Notice a Redis that lost everything (restarted empty): restore from the mirror if there is one."""
        gen = await self._read_generation()
        changed = gen is None or (self._generation is not None and gen != self._generation)
        if changed and self._generation is not None:
            log.warning("redis %s: the store was emptied or replaced since this process connected", self.link.where)
        if self.mirror is not None and (changed or force_restore):
            await self._restore_from_mirror()
        if gen is None:
            key = self.keys.meta
            await self.link.call(lambda c: c.hsetnx(key, GENERATION_FIELD, secrets.token_hex(8)), "marking the store")
            gen = await self._read_generation()
        self._generation = gen
        self._check_generation = False

    async def _ensure_generation_cheap(self) -> None:
        if await self._read_generation() != self._generation:
            await self._ensure_generation()

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
                    pipe.exists(self.keys.op(i))
                return list(await pipe.execute())

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
            restored += await self._create(op, tx="restore") > 0  # it keeps its handle
        if restored:
            log.warning(
                "redis %s: restored %d operations from the checkpoint mirror %s", self.link.where, restored, mirror.root
            )

    async def _mirror_record(self, op: Operation) -> None:
        if self.mirror is not None:
            await self.mirror.save_record(op)
            if self.mirror.refill:
                await self._refill_mirror()

    async def _refill_mirror(self, op_id: str | None = None) -> None:
        """Write back into the mirror what Redis holds and the mirror lost: every record and checkpoint once
        its directory was found removed (``mirror.refill``), else the checkpoints of ``op_id``, whose own
        directory was. Without this the mirror would hold only what is written after: a Redis lost then
        would lose every other operation, and resume this one from nothing (its chain of deltas broken)."""
        mirror = self.mirror
        assert mirror is not None
        whole = mirror.refill
        mirror.refill = False
        try:
            if whole:
                raw = await self.link.call(lambda c: c.zrange(self.keys.all, 0, -1), "listing operations")
                ids = [i.decode() for i in raw]
            else:
                assert op_id is not None
                ids = [op_id]
            wrote = 0
            for start in range(0, len(ids), 200):
                ops = await self._fetch(ids[start : start + 200])
                chains = {op.id: await self._chain_of(op.id) for op in ops if op.checkpoint_seq}
                wrote += await mirror.fill(ops if whole else [], chains)
        except Exception as e:  # Redis gone meanwhile: said, and tried again at the next write
            mirror.refill = mirror.refill or whole
            log.error("checkpoint mirror %s: writing back what it lost failed: %s", mirror.root, e)
            return
        if wrote:  # a new mirror on an empty Redis has nothing to get back
            files = f"{wrote} file{'s' if wrote != 1 else ''}"
            log.warning("checkpoint mirror %s: %s written back from redis %s", mirror.root, files, self.link.where)

    async def _read_all(self, op_id: str) -> tuple[dict[bytes, bytes], dict[bytes, bytes], dict[bytes, bytes]]:
        """Every checkpoint info, payload and delta Redis holds for ``op_id``, by seq, in one round trip."""
        k = self.keys
        keys = [k.checkpoint_info(op_id), k.checkpoint_payload(op_id), k.checkpoint_delta(op_id)]

        async def do(c: Any) -> list[dict[bytes, bytes]]:
            pipe = c.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return list(await pipe.execute())

        infos, payloads, deltas = await self.link.call(do, f"reading checkpoints of {op_id}")
        return infos, payloads, deltas

    async def _chain_of(self, op_id: str) -> tuple[list[tuple[Checkpoint, bytes]], dict[int, bytes]]:
        """The checkpoints (info, payload) and deltas Redis holds for ``op_id``; unreadable ones left out."""
        infos, payloads, raw_deltas = await self._read_all(op_id)
        cps: list[tuple[Checkpoint, bytes]] = []
        for seq, info in infos.items():
            payload = payloads.get(seq)
            try:
                cp = Checkpoint.model_validate_json(info)
            except ValueError:
                continue
            if payload is not None and str(cp.seq).encode() == seq:
                cps.append((cp, payload))
        deltas = {int(s): d for s, d in raw_deltas.items() if s.isdigit()}
        return cps, deltas

    async def _restored(self) -> bool:
        """After a record was found missing: True when Redis had been emptied and the mirror restored it."""
        if self.mirror is None:
            return False
        before = self._generation
        await self._ensure_generation()
        return self._generation != before

    def _reconnected(self) -> None:
        """Called by the link when Redis answers again after an outage: it may have restarted empty."""
        self._check_generation = True
