"""What every part of the Redis store shares: the connection, the key layout, the scripts, and the
attempts this process holds, with the fencing every write of an attempt goes through.

The parts of RedisStore (recovery, records, liveness, checkpoints, control and logs) derive from
RedisCore (or from a part they build on) and use only what is defined there.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ...errors import KeyTaken
from ...models import InvalidInput, Operation, StaleAttempt, StoreError
from ..mirror import CheckpointMirror
from .codec import decode_record, pack
from .connection import RedisLink
from .keys import Keys

log = logging.getLogger("outlast.store.redis")

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")


class RedisCore:
    """The shared state and fencing of RedisStore (see module doc)."""

    read_only = False
    resume_orphans = True
    """An operation whose worker lost its lease is queued again (by any engine that notices)."""
    on_lease_lost: Callable[[str, int], None] | None = None
    """Told (operation id, epoch) once when an attempt of this process lost its hold: the engine stops it."""

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
        if ns in (".", ".."):  # the checkpoint mirror's directory for it would be the mirror's root, or its parent
            raise InvalidInput(f"namespace {ns!r}: not . or .. (it names its directory in the checkpoint mirror)")
        self.namespace = ns
        self.keys = Keys(ns)
        try:
            self.lease_ttl = float(lease_ttl if lease_ttl is not None else params.get("lease_ttl", 5.0))
        except ValueError:
            raise InvalidInput(f"store URL: lease_ttl={params.get('lease_ttl')!r} is not a number") from None
        if not 0.5 <= self.lease_ttl <= 3600:
            raise InvalidInput(f"lease_ttl {self.lease_ttl:g}: expected 0.5 to 3600 seconds")
        self.heartbeat_every: float | None = self.lease_ttl / 3
        """Three renewals per lease: one late or lost does not let it expire under a healthy worker."""
        self.url = self.link.shown_url
        self.mirror = CheckpointMirror(checkpoint_mirror, ns) if checkpoint_mirror else None
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        """This process's part of every lease token (``HOLDER:EPOCH``)."""
        self._held: dict[str, int] = {}
        """The attempts this process holds: operation id -> epoch."""
        self._lost: dict[str, int] = {}
        """Attempts of this process refused by Redis (lease gone, operation moved on) and not yet released."""
        self._renewed: dict[str, float] = {}
        """When (``time.monotonic()``, taken before sending) the lease of each held attempt was last set or
        renewed: by this process's clock it holds until then plus the TTL (``heartbeat``)."""
        self._settling: set[str] = set()
        """Operations whose attempt's final transition this process is writing: a write refused meanwhile
        (the settle let go of the lease) is no loss."""
        self._unsure: dict[str, tuple[int, str, str]] = {}
        """Final transitions of this process's attempts whose outcome is unknown (sent, no reply before the
        retries gave up): operation id -> (epoch, status, tx). Tried again with the same tx, which Redis
        answers with the record as it is when the first try was applied; meanwhile the operation stays
        settling, so a heartbeat that finds the lease gone (let go of by that settle) is no loss."""
        self._scripts: dict[str, Any] = {}
        """The registered Lua scripts by name (lua.py), once open."""
        self._malformed: set[str] = set()
        """Records reported malformed already (reported once per process)."""
        self._looked = "0,0,0"
        """Where this process's claims look on in each priority's queue past its first entries, all of types
        it has no handler for (the CLAIM script's deep look)."""
        self._last_delta: dict[str, tuple[int, int, bytes]] = {}
        """Per operation held here: (epoch, seq, stored bytes) of the newest delta its attempt wrote, which the
        next checkpoint links to without reading it back (only that attempt writes deltas while it holds)."""

    @property
    def connected(self) -> bool:
        """False while Redis cannot be reached (writes are being retried)."""
        return self.link.connected

    unanswered_because = "Redis answers nothing: stopped, or the network to it down"
    """What keeps a call of this store from answering for long (said when a process leaves without it)."""

    def unanswered_for(self) -> float:
        """Seconds the oldest call under way has waited for Redis (the engine's way out on a hung store)."""
        return self.link.unanswered_for()

    async def _script(self, name: str, keys: list[str], args: list[Any] | Callable[[], list[Any]], what: str) -> Any:
        return await self.link.script(self._scripts[name], keys, args, what)

    # ---- fencing the writes of an attempt --------------------------------------------------------

    def _attempt_token(self, op_id: str, epoch: int) -> str:
        """The lease token a write of this attempt carries (checked inside Redis); an attempt already
        refused once gets StaleAttempt at once: it never writes again."""
        if self._lost.get(op_id) == epoch:
            raise StaleAttempt(f"operation {op_id}: attempt epoch {epoch} lost its lease; it writes nothing more")
        return f"{self.holder}:{epoch}"

    async def _renew(self, op_ids: list[str]) -> set[str]:
        raise NotImplementedError  # LivenessMixin's: a heartbeat; the operations whose lease holds after it

    def _set_again(self, op_id: str, epoch: int, reply: list[bytes]) -> bool:
        """Whether a write of this attempt refused for its lease alone (``fenced``, why, ...; or id, why,
        ...) is to be sent again after a heartbeat, which may set that lease again (``heartbeat``): the
        attempt is still held and by this process's own clock its lease has not run out."""
        return (
            reply[1] == b"lease"
            and self._held.get(op_id) == epoch
            and time.monotonic() < self._renewed.get(op_id, -math.inf) + self.lease_ttl
        )

    async def _lease_again(self, refused: dict[str, tuple[int, list[bytes]]]) -> set[str]:
        """Of the writes of attempts refused by a script (operation id -> (epoch, its refusal)), those to be
        sent once more: refused for their lease alone while by this process's clock it still holds
        (``_set_again``), and held again after the heartbeat this sends for them, which sets such a lease
        again while the record still shows that attempt running and no other lease is there. A Redis
        restarted from its append-only file with its clock ahead of this worker's has dropped the leases,
        and every write that reached it before the next heartbeat (live progress, a checkpoint, a batch of
        logs, the final status) ended its attempt: the operation, done or not, was run again. The write sent
        again is fenced as the first was: an operation taken over meanwhile refuses it."""
        again = [i for i, (epoch, reply) in refused.items() if self._set_again(i, epoch, reply)]
        return await self._renew(again) if again else set()

    async def _fenced(self, op_id: str, epoch: int | None, send: Callable[[], Awaitable[Any]]) -> Any:
        """``send()`` (a script that replies ``fenced``, why, status, epoch when this attempt's write is
        refused), sent once more when that was for its lease alone and a heartbeat set it again
        (``_lease_again``)."""
        res = await send()
        if epoch is not None and res[0] == b"fenced" and op_id in await self._lease_again({op_id: (epoch, res)}):
            res = await send()
        return res

    def _refused(self, op_id: str, epoch: int, reply: list[bytes]) -> StaleAttempt:
        """A write of this attempt refused by a script (``fenced``, why, status, epoch): the attempt is over."""
        why, status, current = (x.decode().strip('"') for x in reply[1:4])
        reason = {
            "epoch": f"was replaced by epoch {current}",
            "status": f"is over: the operation is {status} now",
            "lease": "is over: its lease expired",
        }.get(why, "is over: the operation is gone from the store")
        self._lose(op_id, epoch, reason)
        return StaleAttempt(f"operation {op_id}: attempt epoch {epoch} {reason}; its writes are refused")

    def _gone(self, op_id: str, epoch: int) -> StaleAttempt:
        """A write of this process's attempt found its operation's record gone (Redis emptied with no mirror
        to restore from, the keys deleted or evicted): the attempt is over, as when its lease is lost. It
        was NotFound, which the handler's checkpoint raised as its own error and the engine logged with a
        traceback as an internal one."""
        reason = "is over: the operation is gone from the store"
        self._lose(op_id, epoch, reason)
        return StaleAttempt(f"operation {op_id}: attempt epoch {epoch} {reason}; its writes are refused")

    def _lose(self, op_id: str, epoch: int, reason: str) -> None:
        """This process's attempt no longer holds the operation: refuse its writes from now on, tell the engine."""
        if self._held.get(op_id) != epoch or op_id in self._settling:
            return
        del self._held[op_id]
        self._renewed.pop(op_id, None)
        self._lost[op_id] = epoch
        log.warning(
            "operation %s: this worker lost its lease (attempt epoch %d %s); it stops and writes nothing more",
            op_id,
            epoch,
            reason,
        )
        if self.on_lease_lost is not None:
            self.on_lease_lost(op_id, epoch)

    # ---- records: the primitives every part reads and writes with ---------------------------------

    async def _create(self, op: Operation, tx: str, generation: bytes | None = None, packed: str | None = None) -> int:
        """Write a new record: its handle (>= 1), or 0 and nothing written if it exists (a retry of the
        same ``tx`` gets the handle again), or -1 and nothing written when ``generation`` is given and the
        store's mark is another (Redis was emptied: restore first, then take the next handle).
        ``packed``: ``op`` packed already (``pack_new``)."""
        gen = generation.decode() if generation is not None else ""
        if packed is None:
            packed = pack(op.model_dump(mode="json"))
        args = [self.keys.prefix, op.id, repr(time.time()), tx, packed, gen]
        res = await self._script("CREATE", [self.keys.op(op.id)], args, f"creating {op.id}")
        if isinstance(res, list) and op.idempotency_key is not None:  # ['taken', the id that has the key]
            raise KeyTaken(op.idempotency_key, res[1].decode())
        return int(res)

    async def _fetch(self, op_ids: list[str], strict: bool = False) -> list[Operation]:
        """Records in the order asked; missing ones left out, malformed ones reported and skipped."""
        out: list[Operation] = []
        for start in range(0, len(op_ids), 500):
            chunk = op_ids[start : start + 500]

            async def get_all(c: Any, chunk: list[str] = chunk) -> list[dict[bytes, bytes]]:
                pipe = c.pipeline(transaction=False)
                for i in chunk:
                    pipe.hgetall(self.keys.op(i))
                return list(await pipe.execute())

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

    def _report_malformed(self, op_id: str, e: Exception) -> None:
        """Warn once per record and process: a listing every second must not flood the log."""
        if op_id not in self._malformed:
            self._malformed.add(op_id)
            log.warning("operation %s: stored record in redis is malformed (%s); skipped", op_id, e)
