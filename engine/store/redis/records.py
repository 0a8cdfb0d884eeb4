"""Operation records of the Redis store: create, read, list, transition, claim, live fields.

Every check-then-write is one Lua script (lua.py): the claim, the status change with its index
updates, the fencing of a write of an attempt by its lease. A write that finds its record missing
asks recovery whether Redis was emptied and restored from the mirror, and is retried once if so.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
from typing import Any

from ...errors import ControlChanged
from ...lifecycle import CANCEL_WINS
from ...models import (
    TRANSITIONS,
    Conflict,
    ControlAction,
    InvalidInput,
    NotFound,
    Operation,
    Priority,
    StaleAttempt,
    Status,
    StoreError,
    WorkerInfo,
    check_transition,
    handle_of,
    refused_change,
    unique_token,
    validate_id,
    validate_id_prefix,
)
from ...offload import off_loop
from ...text import model_json
from .. import mirror as mirror_files
from ..base import check_slots, parse_slots
from .codec import IF_CANCELLED, IF_CONTROL, IF_PAUSED, decode_record, enc, pack_new, pairs
from .keys import SLOTS_FIELD
from .recovery import RecoveryMixin

log = logging.getLogger("outlast.store.redis")


class RecordsMixin(RecoveryMixin):
    """Records, the queue and claims (part of RedisStore)."""

    async def create(self, op: Operation, fresh: bool = False) -> int | None:
        validate_id(op.id)
        tx = unique_token()  # a create's mark: a retry of it gets its handle back
        packed = pack_new(op) if fresh else None
        handle = await self._create(op, tx=tx, generation=self._generation, packed=packed)
        if handle < 0:  # Redis emptied since this process looked: restored first, so no handle is reused
            await self._ensure_generation()
            handle = await self._create(op, tx=tx, generation=self._generation, packed=packed)
        if handle < 0:
            raise StoreError(f"redis {self.link.where}: the store was emptied or replaced again; {op.id} not created")
        if not handle:
            raise Conflict(f"operation {op.id} exists already")
        self._saw_handle(handle)
        if self.mirror is not None:  # the copy is for the mirror only (a submit's every microsecond counts)
            await self._mirror_record(op.model_copy(update={"handle": handle}), check=False, new=True)
        return handle

    async def get(self, op_id: str) -> Operation:
        validate_id(op_id)
        found = await self._fetch([op_id], strict=True)
        if not found:
            raise NotFound(f"no operation {op_id}")
        return found[0]

    async def list_operations(
        self,
        statuses: list[Status] | None = None,
        types: list[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Operation]:
        keys = [self.keys.status(Status(s).value) for s in statuses] if statuses else [self.keys.all]
        want = None if (limit is None or types) else offset + limit

        async def ranked(c: Any) -> list[list[tuple[bytes, float]]]:
            pipe = c.pipeline(transaction=False)
            for k in keys:
                pipe.zrevrange(k, 0, -1 if want is None else want - 1, withscores=True)
            return list(await pipe.execute())

        merged = sorted(
            ((score, member) for rows in await self.link.call(ranked, "listing") for member, score in rows),
            reverse=True,
        )
        ids = [m.decode() for _, m in merged]
        wanted_types = set(types) if types else None
        if wanted_types is not None:
            ids = await self._of_types(ids, wanted_types, None if limit is None else offset + limit)
        # Only the page's records are read: those before it were read and decoded to be skipped, and a clean
        # (pages of 500) read N * N / 1,000 records of N operations (100,000: 10 million).
        ids = ids[offset:]
        out: list[Operation] = []
        for start in range(0, len(ids), 500):
            for op in await self._fetch(ids[start : start + 500]):
                if wanted_types is not None and op.type not in wanted_types:
                    continue
                out.append(op)
                if limit is not None and len(out) >= limit:
                    return out
        return out

    async def _of_types(self, ids: list[str], types: set[str], enough: int | None) -> list[str]:
        """The ``ids`` (in order) whose type is one of ``types``, until ``enough`` are found: read by their
        type field alone. Read as whole records, an idle worker's look for its own work in a deep queue
        of other types' decoded every record there, every two seconds while the queue moved."""
        want = {enc(t).encode() for t in types}
        out: list[str] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]

            async def types_of(c: Any, chunk: list[str] = chunk) -> list[bytes | None]:
                pipe = c.pipeline(transaction=False)
                for i in chunk:
                    pipe.hget(self.keys.op(i), "type")
                return list(await pipe.execute())

            out += [i for i, t in zip(chunk, await self.link.call(types_of, "listing"), strict=True) if t in want]
            if enough is not None and len(out) >= enough:
                return out[:enough]
        return out

    async def resolve(self, prefix: str) -> str:
        validate_id_prefix(prefix)
        if (handle := handle_of(prefix)) is not None:
            handles = self.keys.handles
            found = await self.link.call(lambda c: c.hget(handles, str(handle)), "resolving a handle")
            if found is None:
                raise NotFound(f"no operation has handle {handle} in {self.url}")
            return str(found.decode())
        key = self.keys.ids
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
                pipe.zcard(self.keys.status(s.value))
            return list(await pipe.execute())

        return {s: n for s, n in zip(Status, await self.link.call(do, "counting"), strict=True) if n}

    async def queue_depth(self) -> dict[Priority, int]:
        async def do(c: Any) -> list[int]:
            pipe = c.pipeline(transaction=False)
            for p in Priority:
                pipe.zcard(self.keys.queue(p.rank))
                pipe.zcard(self.keys.delayed(p.rank))
            return list(await pipe.execute())

        n = await self.link.call(do, "reading queue depth")
        return {p: n[2 * i] + n[2 * i + 1] for i, p in enumerate(Priority)}

    async def queued_priorities(self) -> dict[str, Priority]:
        async def do(c: Any) -> list[list[bytes]]:
            pipe = c.pipeline(transaction=False)
            for p in Priority:
                pipe.zrange(self.keys.queue(p.rank), 0, -1)
                pipe.zrange(self.keys.delayed(p.rank), 0, -1)
            return list(await pipe.execute())

        ids = await self.link.call(do, "reading the queue")
        return {m.decode(): p for i, p in enumerate(Priority) for k in (2 * i, 2 * i + 1) for m in ids[k]}

    async def _write(
        self,
        op_id: str,
        fields: dict[str, Any],
        epoch: int | None,
        allowed: list[Status] | None,
        what: str,
        tx: str | None = None,
    ) -> tuple[str, Any]:
        """A record write; one of this process's own attempts (``epoch`` held here) is fenced by its lease,
        any other with an ``epoch`` only compares it. ``tx``: the write's token (a new one by default); the
        tag is ``done`` when the record's last write already had it (applied by an earlier try)."""
        own = epoch is not None and epoch in (self._held.get(op_id), self._lost.get(op_id))
        token = self._attempt_token(op_id, epoch) if own and epoch is not None else ""
        fields = {**fields, "updated_at": time.time()}
        args = [
            self.keys.prefix,
            op_id,
            repr(time.time()),
            "" if epoch is None else str(epoch),
            "" if allowed is None else ",".join(enc(s.value) for s in allowed),
            tx or secrets.token_hex(8),
            token,
            *pairs(fields),
        ]
        keys = [self.keys.op(op_id), self.keys.lease(op_id)]

        def send() -> Any:
            return self._script("WRITE", keys, args, what)

        res = await self._fenced(op_id, epoch if token else None, send)
        tag = res[0].decode()
        if tag == "missing" and await self._restored(op_id):
            res = await self._fenced(op_id, epoch if token else None, send)
            tag = res[0].decode()
        if tag == "missing":
            if token and epoch is not None:
                raise self._gone(op_id, epoch)
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
        if_cancelled: str | None = None,
        if_paused: str | None = None,
        expect_control: frozenset[ControlAction | None] | None = None,
        **fields: Any,
    ) -> Operation:
        validate_id(op_id)
        allowed = [s for s in Status if to in TRANSITIONS[s] and (expect is None or s in expect)]
        if if_cancelled is not None and to in CANCEL_WINS:
            fields = {**fields, IF_CANCELLED: if_cancelled}  # the WRITE script reads it: a pending cancel wins
        if if_paused is not None and to is Status.QUEUED:
            fields = {**fields, IF_PAUSED: if_paused}  # and a pending pause keeps a retry from running
        if expect_control is not None:  # the WRITE script compares it with the stored request
            fields = {**fields, IF_CONTROL: "".join(f",{c or ''}" for c in sorted(expect_control, key=str)) + ","}
        settling = epoch is not None and to is not Status.RUNNING and self._held.get(op_id) == epoch
        unsure = self._unsure.get(op_id)
        tx = None
        if settling and epoch is not None:
            self._settling.add(op_id)  # a heartbeat meanwhile must not take this settle for a lost lease
            tx = unsure[2] if unsure is not None and unsure[:2] == (epoch, to.value) else secrets.token_hex(8)
        try:
            what = f"{op_id} -> {to.value}"
            tag, data = await self._write(op_id, {**fields, "status": to}, epoch, allowed, what, tx)
        except Exception as e:
            if settling and epoch is not None and tx is not None and getattr(e, "outcome_unknown", False):
                # Applied or not, nobody can say yet: the next try (the same tx) says. Until then the lease
                # this settle may have let go of is not reported lost.
                self._unsure[op_id] = (epoch, to.value, tx)
            elif isinstance(e, (StaleAttempt, NotFound, Conflict)) and self._unsure.pop(op_id, None) is not None:
                raise type(e)(
                    f"operation {op_id}: the write of its final status {to.value} (attempt epoch {epoch}) got no"
                    f" reply, outcome unknown; the store answered again and refused it: {e}"
                ) from None
            raise
        finally:
            if settling and op_id not in self._unsure:
                self._settling.discard(op_id)
        if self._unsure.pop(op_id, None) is not None:
            self._settling.discard(op_id)
            found = "that write had been applied" if tag == "done" else "that write had not been applied; written now"
            log.warning(
                "operation %s: the write of its final status %s (attempt epoch %s) got no reply, outcome unknown;"
                " the store answered again: %s",
                op_id,
                to.value,
                epoch,
                found,
            )
        if tag == "control":
            asked = data.decode() or "nothing"
            raise ControlChanged(f"operation {op_id}: asked to {asked} since its requests were read")
        if tag in ("conflict", "held"):
            current = Status(json.loads(data))
            if tag == "held":
                raise Conflict(f"operation {op_id} is running and its worker holds its lease: not interrupted")
            if expect is not None and current not in expect:
                raise Conflict(refused_change(op_id, current, to))
            check_transition(current, to)
            raise Conflict(refused_change(op_id, current, to))
        op = self._from_reply(op_id, data)
        if epoch is not None and to is not Status.RUNNING:
            self._held.pop(op_id, None)  # the script let go of the lease
            self._last_delta.pop(op_id, None)
        await self._mirror_record(op)
        return op

    async def update(self, op_id: str, *, epoch: int | None = None, **fields: Any) -> Operation:
        validate_id(op_id)
        _tag, data = await self._write(op_id, fields, epoch, None, f"updating {op_id}")
        op = self._from_reply(op_id, data)
        await self._mirror_record(op)
        return op

    async def delete(self, op_id: str, *, expect: frozenset[Status]) -> None:
        """Remove the operation. With a mirror, its record file goes first: a mirror that cannot be written
        refuses the removal (said "removed", it came back from the mirror), and once Redis removed it no
        mirror record brings it back; refused by Redis, the record is written back."""
        validate_id(op_id)
        mirror = self.mirror
        if mirror is not None:
            try:
                await off_loop(mirror.unlink_record_sync, op_id)
            except OSError as e:
                raise StoreError(
                    f"checkpoint mirror {mirror.root}: removing the record of {op_id} failed: {e}; not removed"
                    " (a Redis restored from the mirror would bring it back)"
                ) from None
        # tx: a retry after a lost reply is told the removal was done, not "no operation"
        args = [self.keys.prefix, op_id, ",".join(enc(s.value) for s in expect), secrets.token_hex(8)]
        try:
            res = await self._script("DELETE", self.keys.of(op_id), args, f"deleting {op_id}")
            if res[0] == b"missing" and await self._restored():
                res = await self._script("DELETE", self.keys.of(op_id), args, f"deleting {op_id}")
        except Exception:
            await self._mirror_back(op_id)
            raise
        except BaseException:  # cancelled: written back at this process's next mirror write
            if mirror is not None:
                mirror.refill = True
            raise
        if res[0] == b"conflict":
            await self._mirror_back(op_id)
            raise Conflict(f"operation {op_id} is {res[1].decode().strip(chr(34))}: not deleted")
        self._malformed.discard(op_id)
        if mirror is not None:  # else a Redis that comes back empty would restore it from there
            counter = res[1] if res[0] == b"ok" and len(res) > 1 else b""
            if counter.isdigit() and self._store_id is not None:  # a restore moves the counter past it
                store_id, url, top = self._store_id, self._location, int(counter)
                await mirror.guard("keeping its handle", lambda: mirror.write_identity_sync(store_id, url, top))
            await mirror.delete(op_id)
            await self._mirror_wrote()
        if res[0] == b"missing":
            raise NotFound(f"no operation {op_id}")

    async def _mirror_back(self, op_id: str) -> None:
        """A removal refused (or its outcome unknown): the record Redis still holds goes back into the mirror."""
        if self.mirror is None:
            return
        try:
            ops = await self._fetch([op_id])
        except Exception:  # Redis unreachable: the mirror is written back when it answers (a refill)
            self.mirror.refill = True
            return
        if ops:
            await self._mirror_record(ops[0], check=False)

    async def claim(
        self,
        worker: WorkerInfo,
        now: float,
        aging: float,
        op_id: str | None = None,
        types: frozenset[str] | None = None,
    ) -> Operation | None:
        if op_id is not None:
            validate_id(op_id)
        args: list[str | int] = [
            self.keys.prefix,
            repr(now),
            repr(float(aging)),
            enc(worker),
            int(self.lease_ttl * 1000),
            secrets.token_hex(8),
            self.holder,
            op_id or "",
            self._looked,
        ]
        if types is not None and op_id is None:
            # As the records hold them; none at all would read as "any type" to the script.
            args += _types_args(types)
        asked = time.monotonic()  # the lease the claim sets runs from some time after this
        res = await self._script("CLAIM", [], args, "claiming work")
        if not res:
            return None
        if len(res) > 2:
            self._looked = res[2].decode()
        claimed = res[0].decode()
        if not claimed:
            return None
        raw = dict(zip(res[1][::2], res[1][1::2], strict=True))
        try:
            op = decode_record(claimed, raw)
        except ValueError as e:
            # Claimed but unreadable (tampered with): not run; its lease lapses and it stays reported.
            self._report_malformed(claimed, e)
            return None
        self._saw_handle(op.handle)
        if self.mirror is not None:  # running, leased: not removable meanwhile
            prior = await self._mirror_claim(op)
            if prior is not None:  # settled since, in what Redis lost: written back, not run again
                lease = self.keys.lease(claimed)
                await self._script("RELEASE", [lease], [f"{self.holder}:{op.epoch}"], f"releasing {claimed}")
                await self._write_back(op, prior)
                return None
        self._held[claimed] = op.epoch
        self._renewed[claimed] = asked
        return op

    async def _mirror_claim(self, op: Operation) -> Operation | None:
        """Write the claimed record into the mirror, unless the mirror's record shows Redis went back in time
        (``_shows_loss``): that record then, not written over. One trip off the event loop for both (a
        second one was 60 of a claim's 900 us)."""
        mirror = self.mirror
        assert mirror is not None
        data, path = model_json(op).encode(), mirror.ops_dir / f"{validate_id(op.id)}.json"
        quiet = frozenset({Status.QUEUED, Status.RUNNING})

        def look_then_write() -> Operation | None:
            prior = self._shows_loss(mirror.load_record_sync(op.id), op, quiet)
            if prior is None:
                mirror_files.atomic_write(path, data)  # as the mirror writes a record
            return prior

        prior = await mirror.guard(f"record {op.id}", look_then_write)
        if prior is not None:
            self._say_went_back(op, prior)
        else:
            await self._mirror_wrote()
        return prior

    async def get_slots(self) -> int | None:
        key = self.keys.meta
        raw = await self.link.call(lambda c: c.hget(key, SLOTS_FIELD), "reading the store slots")
        return parse_slots(raw)

    async def set_slots(self, n: int | None) -> None:
        slots, key = check_slots(n), self.keys.meta
        if slots is None:
            await self.link.call(lambda c: c.hdel(key, SLOTS_FIELD), "unsetting the store slots")
        else:
            await self.link.call(lambda c: c.hset(key, SLOTS_FIELD, str(slots)), "setting the store slots")

    async def save_live(self, updates: list[tuple[str, int, dict[str, Any]]]) -> None:
        updates = [u for u in updates if self._lost.get(u[0]) != u[1]]  # a lost attempt writes nothing
        epochs = {op_id: epoch for op_id, epoch, _ in updates}
        for last in (False, True):  # once more for those whose lease a heartbeat set again (``_lease_again``)
            if not updates:
                return
            args: list[Any] = [self.keys.prefix, repr(time.time()), self.holder]
            for op_id, epoch, fields in updates:
                kv = pairs(fields)
                args += [op_id, str(epoch), len(kv) // 2, *kv]
            refused = await self._script("SAVE_LIVE", [], args, "saving live progress") or []
            replies = {refused[k].decode(): refused[k : k + 4] for k in range(0, len(refused), 4)}
            again = set() if last else await self._lease_again({i: (epochs[i], r) for i, r in replies.items()})
            for op_id, reply in replies.items():
                if op_id not in again:
                    self._refused(op_id, epochs[op_id], reply)
            updates = [u for u in updates if u[0] in again]


@functools.lru_cache(maxsize=8)
def _types_args(types: frozenset[str]) -> tuple[str, ...]:
    """The types a claim takes, as the records hold them; none at all would read as "any type" to the
    claim script, so an empty set is a type no record has."""
    return tuple(enc(t) for t in sorted(types)) or (enc(""),)
