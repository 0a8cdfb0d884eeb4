"""The key layout of the Redis store: every key of one namespace, named in one place.

Public so that tools and tests read the same keys as the store (the Lua scripts in lua.py build
the same names from the prefix they are given as ``ARGV[1]``). Under the prefix ``NAMESPACE:``:

=====================  ============================================================================
``op:ID``              the record: a hash, one JSON value per Operation field (codec.py), plus
                       ``_tx`` (the last write's token: a write retried after a lost reply is not
                       applied twice), ``_ltx`` (the same for the last batch of log records) and
                       ``_ctl`` (a pending cancel or pause)
``ids``                every id (a sorted set by lex: resolving a prefix)
``handles``            handle -> id (a hash: resolving a handle)
``idem``               idempotency key (its JSON text) -> id: a create with a key another operation has
                       writes nothing (removing the operation frees its key)
``all``                every id by created_at; ``st:STATUS`` the ids of one status by created_at
``q:RANK``             queued ids by queued_at (rank 0 high, 1 normal, 2 low)
``dq:RANK``            retries waiting for their not_before (by not_before)
``dqf:RANK``           the same retries by backoff_from, when their backoff began: a claim earlier than
                       that (Redis's clock went back) takes them at once
                       (the scores of all three in Redis's clock, which every process shares: each time
                       moved by how far the writer's clock was from Redis's when it wrote)
``lease:ID``           the holder's token ``HOLDER:EPOCH``, with a TTL the heartbeat renews
``ck:ID`` ``cp:ID``    checkpoint listing info / payload by seq (the newest N kept)
``cd:ID``              the item delta of each checkpoint by seq (all kept)
``fail:ID``            item failures: key -> JSON (error, attempt, at)
``log:ID``             the log records, a capped stream
``gone``               queued ids a claim found without a record (evicted by a maxmemory policy, or
                       deleted by hand), dropped from their queue: the next look for orphans takes them
                       out of every index and restores them from the checkpoint mirror, or says so
``claimtx:TX``         the id a claim took (a claim retried after a lost reply gets the same one)
``deltx:TX``           a removal done (two minutes): retried after a lost reply, it is done, not "missing"
``wtx:TX``             a write done that is not an attempt's (two minutes): retried after a lost reply and
                       another write since, it is done, not refused
``meta``               ``generation``: a mark that tells a Redis that lost everything;
                       ``store``: this store's id, which its checkpoint mirror names (kept across a
                       restore from it: a mirror of another store is never read into this one);
                       ``mirror_stale``: a mirror write failed, what Redis holds is to be written back;
                       ``handles``: the last handle given (HINCRBY: never reused);
                       ``slots``: the store-wide slot count (unset: no limit), read by CLAIM;
                       ``schema``: the newest record layout written here (``store.REDIS_SCHEMA``): a
                       process that knows an older one refuses the store
``events``             the channel status changes and control requests are published on
=====================  ============================================================================
"""

from __future__ import annotations

TX_FIELD = "_tx"
CONTROL_FIELD = "_ctl"
GENERATION_FIELD = "generation"
STORE_FIELD = "store"
MIRROR_STALE_FIELD = "mirror_stale"
SLOTS_FIELD = "slots"
SCHEMA_FIELD = "schema"


class Keys:
    """The keys of one namespace: ``Keys("team-a").op(op_id) == "team-a:op:" + op_id``."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.prefix = f"{namespace}:"
        """What every key starts with (given to the Lua scripts, which build keys from it)."""
        self.ids = f"{self.prefix}ids"
        self.handles = f"{self.prefix}handles"
        self.all = f"{self.prefix}all"
        self.meta = f"{self.prefix}meta"
        self.events = f"{self.prefix}events"
        self.gone = f"{self.prefix}gone"

    def op(self, op_id: str) -> str:
        return f"{self.prefix}op:{op_id}"

    def lease(self, op_id: str) -> str:
        return f"{self.prefix}lease:{op_id}"

    def status(self, status: str) -> str:
        return f"{self.prefix}st:{status}"

    def queue(self, rank: int) -> str:
        return f"{self.prefix}q:{rank}"

    def delayed(self, rank: int) -> str:
        return f"{self.prefix}dq:{rank}"

    def delayed_from(self, rank: int) -> str:
        return f"{self.prefix}dqf:{rank}"

    def checkpoint_info(self, op_id: str) -> str:
        return f"{self.prefix}ck:{op_id}"

    def checkpoint_payload(self, op_id: str) -> str:
        return f"{self.prefix}cp:{op_id}"

    def checkpoint_delta(self, op_id: str) -> str:
        return f"{self.prefix}cd:{op_id}"

    def failures(self, op_id: str) -> str:
        return f"{self.prefix}fail:{op_id}"

    def log(self, op_id: str) -> str:
        return f"{self.prefix}log:{op_id}"

    def of(self, op_id: str) -> list[str]:
        """Every key that belongs to one operation alone (what deleting it removes)."""
        return [
            self.op(op_id),
            self.lease(op_id),
            self.checkpoint_info(op_id),
            self.checkpoint_payload(op_id),
            self.checkpoint_delta(op_id),
            self.failures(op_id),
            self.log(op_id),
        ]
