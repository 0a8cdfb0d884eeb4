"""Noticing a Redis that lost everything (restarted empty, or replaced), and restoring it from the mirror.

The store marks Redis with a generation (``meta`` ``generation``). A missing or changed mark means
everything this process knew is gone: with a checkpoint mirror, the records it holds are written
back (the attempts that ran then have lost their leases and are resumed from their checkpoints).
Only then: a store that has its mark is never restored into. The mirror names the store it is
written for (``store.json``: the store's id, kept in ``meta`` ``store``, and its URL); a mirror of
another store is not used, with a warning.
A write that finds its record missing asks ``_restored`` once, and is retried if it was.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ...errors import KeyTaken
from ...models import Checkpoint, Operation, Status, StoreError
from ...offload import off_loop
from .codec import enc, pairs, valid_id
from .core import RedisCore
from .keys import GENERATION_FIELD, MIRROR_STALE_FIELD, STORE_FIELD

log = logging.getLogger("outlast.store.redis")

_RAISE_COUNTER = """
local n = tonumber(ARGV[1])
if (tonumber(redis.call('HGET', KEYS[1], 'handles')) or 0) < n then redis.call('HSET', KEYS[1], 'handles', n) end
return 1
"""
"""Move the handle counter (``meta`` ``handles``) up to ARGV[1], never down."""

EMPTIED_EVERY = 60.0
"""Seconds within which a store found emptied again is not said again (at debug level only)."""


class RecoveryMixin(RedisCore):
    """The generation mark and restoring from the mirror (part of RedisStore)."""

    _generation: bytes | None = None
    """The mark this process saw last (None before the first look)."""
    _check_generation = True
    """Set after a reconnection: the next look for orphans first checks the mark."""

    _store_id: str | None = None
    """The id of this store (``meta`` ``store``) its mirror is bound to; None before (or without a mirror)."""
    _stale_marked = False
    """This process marked in Redis that a mirror write failed (``meta`` ``mirror_stale``)."""
    _emptied_said_at = -EMPTIED_EVERY
    """When (monotonic) this process last said the store was emptied."""
    _seen_handle = 0
    """The highest handle this process got from Redis (a create's, a claim's): a handle counter below it is a
    Redis gone back in time whole (restarted from an older snapshot that holds the mark), which lost the
    operations created since; the mark alone does not tell."""

    async def _emptied(self) -> None:
        """Called when the store is found emptied or replaced since this process connected (RedisStore: look
        at the memory policy at once, a likely cause)."""

    @property
    def _location(self) -> str:
        """This store as its mirror names it: ``redis://HOST:PORT/DB`` (no password, no parameters; the
        local host however spelled), so that processes that spell its URL apart agree. DB is the database
        the connection selects: a ``?db=N`` parameter's, which redis-py takes over the path's (the path's
        alone named ``redis://host/0?db=3`` database 0, whose mirror it was then restored from)."""
        parts = urlsplit(self.url)
        db = dict(parse_qsl(parts.query)).get("db") or parts.path.strip("/") or "0"
        if parts.scheme == "unix":
            return f"unix://{parts.path}" + (f"?db={db}" if db != "0" else "")
        host = (parts.hostname or "localhost").lower()
        if host in ("127.0.0.1", "::1", "localhost"):
            host = "localhost"
        try:
            port = parts.port or 6379
        except ValueError:
            port = 6379
        return f"redis://{host}:{port}/{db}"

    async def _read_meta(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The generation mark, the store id and the mirror-stale mark, in one round trip."""
        key = self.keys.meta
        gen, sid, stale = await self.link.call(
            lambda c: c.hmget(key, [GENERATION_FIELD, STORE_FIELD, MIRROR_STALE_FIELD]), "reading the store generation"
        )
        return gen, sid, stale

    async def _read_generation(self) -> bytes | None:
        return (await self._read_meta())[0]

    async def _ensure_generation(self, opening: bool = False) -> None:
        """Notice a Redis that lost everything (restarted empty, or replaced: no mark, or another one than
        this process saw): restore from the mirror if there is one. Only then: a store that has its mark
        holds what it holds, and a mirror record it lacks is an operation removed (or another store's)."""
        gen, sid, stale = await self._read_meta()
        changed = gen is None or (self._generation is not None and gen != self._generation)
        if changed and self._generation is not None:
            # Said once a minute at most: under an eviction policy the mark is evicted again and again, and
            # each worker said it every few seconds (15 lines in 25 s), the policy, the cause, not at all.
            now = time.monotonic()
            said = now - self._emptied_said_at < EMPTIED_EVERY
            self._emptied_said_at = now
            log.log(
                logging.DEBUG if said else logging.WARNING,
                "redis %s: the store was emptied or replaced since this process connected",
                self.link.where,
            )
            await self._emptied()
        if self.mirror is not None and (opening or changed):
            await self._bind_mirror(gen is None, sid)
        if self.mirror is not None and changed:
            await self._restore_from_mirror()
        if gen is None:
            key = self.keys.meta
            await self.link.call(lambda c: c.hsetnx(key, GENERATION_FIELD, secrets.token_hex(8)), "marking the store")
            gen, sid, stale = await self._read_meta()
        if self.mirror is not None:
            await self._name_store(sid)
            if opening and stale:  # a write failed in some process: what Redis holds is written back
                self.mirror.refill = True
        self._generation = gen
        self._check_generation = False

    async def _bind_mirror(self, empty: bool, sid: bytes | None) -> None:
        """Use the mirror only if it was written for this store: its ``store.json`` names this store's id
        (or the one this process saw it name before); for an emptied Redis, whose id went with it, this
        store's URL. A mirror shared by two stores (one config file for two Redis databases) restored each
        one's operations into the other, where they ran twice. A mirror that names no store (new, or
        written before it was named) is this store's from now on (``_name_store``). A store that holds its
        mark but no id, whose mirror names this store's URL, is that mirror's store: it takes the mirror's
        id (``_adopt_mirror_id``), rather than leaving its own mirror unwritten.

        Another store's mirror on a store that holds its mark: warned, and not used (nothing read from it
        could be restored here, and writing there would mix two stores). On an emptied store it is refused:
        the first process to open it decides, and going on without the mirror (and marking the store)
        would lose for good the operations it holds if this Redis is that store moved; restoring them
        would run them twice if it is another one. Only the user knows which."""
        mirror = self.mirror
        assert mirror is not None
        doc = await off_loop(mirror.identity_sync)
        if doc is None:
            self._store_id = None
            return
        if self._store_id == doc["store"]:
            return
        if not empty and sid is None and doc.get("url") == self._location:
            sid = await self._adopt_mirror_id(doc["store"])
        ours = doc.get("url") in (None, self._location) if empty else sid is not None and sid.decode() == doc["store"]
        if ours:
            self._store_id = doc["store"]
            return
        where = mirror.dir / "store.json"
        if doc.get("url") == self._location:  # the same place named: the ids tell them apart
            theirs, this = f"store id {doc['store']}", f"store id {sid.decode() if sid is not None else '?'}"
        else:
            theirs, this = doc.get("url") or "?", self._location
        if empty:
            raise StoreError(
                f"redis {self.link.where} is empty, and the checkpoint mirror {mirror.root} is the mirror of"
                f" another store ({theirs}, not {this}): not restored from it, nor"
                f" opened; if this is that store moved, remove {where}; if not, give it its own checkpoint_mirror"
            )
        log.warning(
            "checkpoint mirror %s is the mirror of another store (%s), not of %s: not used (nothing restored"
            " from it or written to it); give each store its own checkpoint_mirror, or remove %s to make it"
            " this store's",
            mirror.root,
            theirs,
            this,
            where,
        )
        self.mirror = None

    async def _adopt_mirror_id(self, store_id: str) -> bytes | None:
        """A store that holds its mark but no id (restored from its mirror by an older Outlast that never
        named it, or the id lost), whose mirror names this very URL: the mirror is this store's, so the
        store takes its id (HSETNX: processes opening it at once agree on one), and its handle counter is
        moved past every handle the mirror knows (a counter lost with the id would give them again).
        The id the store has then (another one if a process named it otherwise meanwhile)."""
        mirror = self.mirror
        assert mirror is not None
        key = self.keys.meta
        await self.link.call(lambda c: c.hsetnx(key, STORE_FIELD, store_id), "naming the store after its mirror")
        sid = (await self._read_meta())[1]
        if sid is not None and sid.decode() == store_id:
            top = await off_loop(mirror.handles_sync)
            if top:
                await self.link.call(lambda c: c.eval(_RAISE_COUNTER, 1, key, top), "moving the handle counter")
        return sid

    async def _name_store(self, sid: bytes | None) -> None:
        """Give the store its id (kept when it was restored from its mirror) and name it in the mirror."""
        mirror = self.mirror
        assert mirror is not None
        if sid is None:
            key, want = self.keys.meta, self._store_id or secrets.token_hex(8)
            await self.link.call(lambda c: c.hsetnx(key, STORE_FIELD, want), "naming the store")
            sid = (await self._read_meta())[1]
        if sid is None:
            return
        self._store_id = sid.decode()
        store_id, url = self._store_id, self._location
        await mirror.guard("naming its store", lambda: mirror.write_identity_sync(store_id, url))

    async def _ensure_generation_cheap(self) -> None:
        key = self.keys.meta
        # Compared with the handles seen before the read was sent: one given by a create of this process while
        # the read was on its way (another connection's reply first) is above the counter read, and said Redis
        # had gone back in time under a steady stream of submits (and restored from the mirror each time).
        seen = self._seen_handle
        gen, counter = await self.link.call(
            lambda c: c.hmget(key, [GENERATION_FIELD, "handles"]), "reading the store generation"
        )
        if gen != self._generation:
            await self._ensure_generation()
        elif _int(counter) < seen:
            await self._went_back_whole(_int(counter))

    def _saw_handle(self, handle: int | None) -> None:
        if handle is not None and handle > self._seen_handle:
            self._seen_handle = handle

    async def _went_back_whole(self, counter: int | None = None) -> bool:
        """Redis holds its mark but gave fewer handles than this process saw, or than a record the mirror holds
        has: restarted from an older snapshot (an RDB file minutes old, a replica behind), which lost every
        operation created since, unseen (``ls`` listed 1 of 4, a worker's running ones "gone from the store"),
        though the mirror had them. Restored from the mirror as an emptied Redis is (the handle counter moved
        past every handle it knows first); said without one. True: restored."""
        seen = self._seen_handle
        if counter is not None:
            self._seen_handle = counter  # said once for one loss
        if self.mirror is None:
            log.warning(
                "redis %s went back in time (restarted from an older snapshot?): it has given %s handles, this"
                " process saw handle %d; the operations created after that snapshot are gone (a checkpoint_mirror"
                " would have restored them)",
                self.link.where,
                counter,
                seen,
            )
            return False
        log.warning(
            "redis %s went back in time (restarted from an older snapshot?): it lost operations the checkpoint"
            " mirror %s holds; restoring them from it",
            self.link.where,
            self.mirror.root,
        )
        await self._restore_from_mirror()
        return True

    async def _lost_not_removed(self, op_ids: list[str]) -> bool:
        """Whether a record Redis lacks and the mirror holds was lost by Redis going back in time, not removed:
        its handle was never given (above the counter), or given since to another operation. A removal takes
        the mirror's record out first, so the mirror holds a removed one only for a moment, with a handle
        Redis gave."""
        mirror = self.mirror
        assert mirror is not None
        handles = []
        for op_id in op_ids[:100]:
            op = await off_loop(mirror.load_record_sync, op_id)
            if op is not None and op.handle:
                handles.append((op_id, op.handle))
        if not handles:
            return False
        meta, by_handle = self.keys.meta, self.keys.handles

        async def look(c: Any) -> list[Any]:
            pipe = c.pipeline(transaction=False)
            pipe.hget(meta, "handles")
            for _, h in handles:
                pipe.hget(by_handle, str(h))
            return list(await pipe.execute())

        counter, *owners = await self.link.call(look, "checking the handle counter against the mirror")
        top = _int(counter)
        return any(
            h > top or (owner is not None and owner.decode() != op_id)
            for (op_id, h), owner in zip(handles, owners, strict=True)
        )

    async def _missing(self, ids: list[str]) -> list[str]:
        """The ``ids`` whose record Redis does not hold."""
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
        return missing

    async def _restore_from_mirror(self) -> None:
        """Create every mirror record Redis lacks (Redis was emptied). The handle counter is first moved past
        every handle the mirror knows was given (a removed operation's too): a handle is never reused."""
        mirror = self.mirror
        assert mirror is not None
        top = await off_loop(mirror.handles_sync)
        if top:
            await self.link.call(lambda c: c.eval(_RAISE_COUNTER, 1, self.keys.meta, top), "moving the handle counter")
        ids = [i for i in await off_loop(mirror.record_ids_sync) if valid_id(i)]
        if not ids:
            return
        restored = 0
        tx = f"restore:{secrets.token_hex(8)}"  # a record restored meanwhile by another process is not counted
        for op_id in await self._missing(ids):
            op = await off_loop(mirror.load_record_sync, op_id)
            if op is None:
                continue
            newest = await off_loop(mirror.newest_seq_sync, op_id)
            if newest is not None and (op.checkpoint_seq or 0) < newest:
                op.checkpoint_seq = newest
            try:
                handle = await self._create(op, tx=tx)  # it keeps its handle, unless another took it meanwhile
            except KeyTaken as e:  # submitted again while Redis was empty: both are kept, the key stays there
                log.warning("operation %s restored without its idempotency key: %s", op_id, e)
                op.idempotency_key = None
                handle = await self._create(op, tx=tx)
            if handle > 0:
                restored += 1
                if op.handle is not None and handle != op.handle:
                    log.warning(
                        "operation %s: its handle %d names another operation now (created while Redis was"
                        " empty); it has handle %d",
                        op_id,
                        op.handle,
                        handle,
                    )
        if restored:
            log.warning(
                "redis %s: restored %d operation%s from the checkpoint mirror %s",
                self.link.where,
                restored,
                "s" if restored != 1 else "",
                mirror.root,
            )

    async def _mirror_record(self, op: Operation, check: bool = True, new: bool = False) -> None:
        """Write the record into the mirror. With ``check``, then read it back from Redis: a removal that landed
        between this process's write to Redis and its mirror write (a prompt ``rm`` of an operation just
        completed) left the file behind, which a Redis lost later brought back; and a later write of another
        process (the operation resumed, claimed and run to its end elsewhere while this one was stopped
        before its mirror write) was written over by this older record, which a Redis lost later brought
        back to run again. The newer record Redis holds is written over it then (``_later``). ``new``: the
        record of an operation just created, never written over one the mirror has (``save_record``)."""
        mirror = self.mirror
        if mirror is None:
            return
        key, meta = self.keys.op(op.id), self.keys.meta

        async def look(c: Any) -> list[Any]:
            pipe = c.pipeline(transaction=False)
            pipe.exists(key)
            pipe.hget(meta, GENERATION_FIELD)
            pipe.hmget(key, ["epoch", "updated_at"])
            return list(await pipe.execute())

        for _ in range(3):  # another write landing after each look is a race no process keeps winning
            if new:
                await mirror.save_record(op, new=True)
            else:
                await mirror.save_record(op)
            if not check:
                break
            try:
                exists, gen, stamp = await self.link.call(look, f"checking {op.id} is still stored")
            except Exception as e:  # the write itself is done: Redis gone now is the next write's to say
                log.debug("checking %s is still stored failed: %s", op.id, e)
                break
            if not exists:
                if gen == self._generation and gen is not None:  # removed, not lost with Redis
                    await mirror.forget([op.id])
                break
            if not _later(stamp, op):
                break
            try:
                now = await self._fetch([op.id])
            except Exception as e:
                log.debug("reading %s back failed: %s", op.id, e)
                break
            if not now:
                break
            op = now[0]
        await self._mirror_wrote()

    async def _mirror_wrote(self, op_id: str | None = None) -> None:
        """After a mirror write: mark in Redis that one failed (whichever process sees the mirror work again
        writes back what it missed), and write back what the mirror lost (``_refill_mirror``)."""
        mirror = self.mirror
        if mirror is None:
            return
        if mirror.missed and not self._stale_marked:
            key = self.keys.meta
            try:
                await self.link.call(lambda c: c.hset(key, MIRROR_STALE_FIELD, "1"), "marking the mirror stale")
                self._stale_marked = True
            except Exception as e:  # Redis gone too: the refill in this process still happens
                log.debug("marking the mirror stale failed: %s", e)
        if mirror.refill or op_id is not None:
            await self._refill_mirror(op_id)

    async def _refill_mirror(self, op_id: str | None = None) -> None:
        """Write back into the mirror what Redis holds and the mirror lost or missed: every record and
        checkpoint once its directory was found removed or a write failed (``mirror.refill``), and the
        records of operations removed meanwhile taken out of it; else the checkpoints of ``op_id``, whose
        own directory was. Without this the mirror would hold only what is written after, or a record of a
        status long gone: a Redis lost then would lose every other operation, run a completed one again,
        resume this one from nothing (its chain of deltas broken), or bring back a removed one."""
        mirror = self.mirror
        assert mirror is not None
        whole, quiet = mirror.refill, mirror.recovered
        mirror.refill = mirror.recovered = False
        if whole:
            mirror.missed = False
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
                if whole:
                    wrote += await mirror.fill(ops, {}, quiet)
                for op in ops:  # one operation's checkpoints at a time: 200 of them held 1,000 states at once
                    if op.checkpoint_seq:
                        wrote += await mirror.fill([], {op.id: await self._chain_of(op.id)}, quiet)
            gone: list[str] = []
            if whole:
                if self._store_id is not None:
                    store_id, url = self._store_id, self._location
                    await mirror.guard("naming its store", lambda: mirror.write_identity_sync(store_id, url))
                listed = [i for i in await off_loop(mirror.record_ids_sync) if valid_id(i)]
                gone = await self._missing(listed)
                if gone and await self._lost_not_removed(gone):  # Redis went back: restored, not forgotten
                    await self._went_back_whole()
                    gone = []
                elif gone and await self._read_generation() == self._generation:  # removed, not lost with Redis
                    await mirror.forget(gone)
                else:
                    gone = []
        except Exception as e:  # Redis gone meanwhile: said, and tried again at the next write
            mirror.refill = mirror.refill or whole
            log.error("checkpoint mirror %s: writing back what it lost failed: %s", mirror.root, e)
            return
        if whole and not mirror.missed:
            key = self.keys.meta
            try:
                await self.link.call(lambda c: c.hdel(key, MIRROR_STALE_FIELD), "marking the mirror written back")
                self._stale_marked = False
            except Exception as e:  # the mark stays: the next process writes back once more, no harm
                log.debug("unmarking the mirror stale failed: %s", e)
        if wrote or gone:  # a new mirror on an empty Redis has nothing to get back
            files = f"{wrote} file{'s' if wrote != 1 else ''}"
            removed = f", {len(gone)} records of operations removed meanwhile taken out" if gone else ""
            log.warning(
                "checkpoint mirror %s: %s written back from redis %s%s", mirror.root, files, self.link.where, removed
            )

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

    @staticmethod
    def _shows_loss(prior: Operation | None, op: Operation, quiet: frozenset[Status]) -> Operation | None:
        """``prior`` (the mirror's record of ``op``, as Redis holds it) when it shows Redis lost writes it had
        accepted: restarted from an older snapshot (an RDB file minutes old), or a failover to a replica
        behind. The mirror is written after Redis accepts a record, so a mirror record of the same attempt or
        a later one (an epoch no lower) settled where Redis says running or queued is what Redis held, and
        lost; the generation mark, in the snapshot too, does not tell. Without this, work completed since the
        snapshot ran again. None if it shows no loss, or its status is in ``quiet`` (nothing to undo)."""
        if prior is None or op.status not in (Status.QUEUED, Status.RUNNING):
            return None
        if prior.epoch < op.epoch or prior.status in quiet or prior.status is op.status:
            return None
        return prior

    def _say_went_back(self, op: Operation, prior: Operation) -> None:
        log.warning(
            "operation %s: redis %s went back in time (restarted from an older snapshot?): it had the operation"
            " %s (epoch %d), the checkpoint mirror has it %s (epoch %d) since; written back, not run again",
            op.id,
            self.link.where,
            op.status.value,
            op.epoch,
            prior.status.value,
            prior.epoch,
        )

    async def _went_back(self, op: Operation, quiet: frozenset[Status]) -> Operation | None:
        """The mirror's record of ``op`` when it shows Redis lost writes (``_shows_loss``) and Redis still
        holds ``op`` as read, said once found."""
        if self.mirror is None:
            return None
        try:
            prior = self._shows_loss(await off_loop(self.mirror.load_record_sync, op.id), op, quiet)
        except (OSError, ValueError):
            return None
        if prior is None:
            return None
        # The mirror is written after Redis accepts: read after it, Redis holds what the mirror has, or
        # later, unless it lost it. A record changed since ``op`` was read is another process's write that
        # came between the two reads (two processes settling one orphan at once), not a loss: said as
        # "went back in time", a false alarm.
        now = await self._fetch([op.id])
        if not now or (now[0].status, now[0].epoch) != (op.status, op.epoch):
            return None
        self._say_went_back(op, prior)
        return prior

    async def _write_back(self, op: Operation, prior: Operation) -> None:
        """Put ``prior`` (the mirror's record, ``_went_back``) back in place of ``op``, which Redis holds
        running: only while it still does, under the same epoch (a claim or resume since wins)."""
        fields = {**prior.model_dump(mode="json", exclude={"id"}), "updated_at": time.time()}
        args = [self.keys.prefix, op.id, repr(time.time()), str(op.epoch), enc(Status.RUNNING.value)]
        args += [secrets.token_hex(8), "", *pairs(fields)]
        keys = [self.keys.op(op.id), self.keys.lease(op.id)]
        await self._script("WRITE", keys, args, f"writing {op.id} back from the checkpoint mirror")

    async def _restored(self, op_id: str | None = None) -> bool:
        """After ``op_id``'s record was found missing: True when Redis had been emptied, or had gone back in time
        (``_lost_not_removed``), and the mirror restored it."""
        if self.mirror is None:
            return False
        before = self._generation
        await self._ensure_generation()
        if self._generation != before:
            return True
        return op_id is not None and await self._lost_not_removed([op_id]) and await self._went_back_whole()

    def _reconnected(self) -> None:
        """Called by the link when Redis answers again after an outage: it may have restarted empty."""
        self._check_generation = True


def _later(stamp: list[bytes | None], op: Operation) -> bool:
    """Whether Redis's ``epoch`` and ``updated_at`` (as stored: JSON) show a write after ``op``'s: a later
    attempt, or a later write in the same one. Never one that is older (a Redis gone back to an earlier
    snapshot): the mirror keeps the newer record, which tells of that loss (``_shows_loss``)."""
    try:
        epoch = int(json.loads(stamp[0])) if stamp[0] is not None else 0
        updated = float(json.loads(stamp[1])) if stamp[1] is not None else 0.0
    except (ValueError, TypeError):
        return False
    return (epoch, updated) > (op.epoch, op.updated_at or 0.0)


def _int(raw: bytes | str | None) -> int:
    """A counter as Redis holds it (None: never set)."""
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0
