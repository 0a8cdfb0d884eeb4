"""Checkpoints and item failures of the Redis store.

A checkpoint is three hash fields under its seq: ``ck:ID`` (the listing info with its
checksum), ``cp:ID`` (the payload: state, context_data, next_step, metadata) and
``cd:ID`` (the items done, failed or skipped since the previous checkpoint). The newest
N infos and payloads are kept; deltas are all kept, since the resume point's done set is
their union, followed by the same chain rules as the local store (base.Chain). With a mirror,
what Redis lacks (it restarted empty) is read from the mirror.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from ...errors import StoreFailed
from ...models import Checkpoint, ItemFailure, validate_id
from ...offload import off_loop
from ...text import clean
from ..base import Chain, ItemDelta, Ledger, next_step_of, restore, resume_note, seal
from .recovery import RecoveryMixin

log = logging.getLogger("outlast.store.redis")

_Candidate = tuple[int, str, Checkpoint, bytes | None]
"""(seq, where from, info, payload); a payload of None is in Redis, read when wanted (``_payload``)."""


class CheckpointsMixin(RecoveryMixin):
    """Saving, verifying and listing checkpoints (part of RedisStore)."""

    def _ckpt_keys(self, op_id: str) -> list[str]:
        k = self.keys
        return [k.op(op_id), k.checkpoint_info(op_id), k.checkpoint_payload(op_id), k.checkpoint_delta(op_id)]

    async def save_checkpoint(self, cp: Checkpoint, delta: ItemDelta, keep: int) -> Checkpoint:
        """One round trip (the fenced script) when this attempt wrote the checkpoint before; two otherwise
        (the delta it links to is read first)."""
        last = self._last_delta.get(cp.operation_id)
        if last is not None and last[:2] == (cp.epoch, cp.seq - 1):
            before: bytes | None = last[2]
        else:
            before = await self._delta_before(cp.operation_id, cp.seq)
        sealed = seal(cp, delta, before)
        cp = sealed.checkpoint
        fails = _failure_fields(delta.failed, cp.epoch)
        # The script takes the done keys out of the failures by their listed (clean) names; a delta that
        # holds a lone surrogate is ASCII-escaped JSON (text.py), which the script's JSON decoder refuses.
        fails_done = [json.dumps({"d": [clean(k) for k in delta.done]})] if b"\\ud" in sealed.delta else []
        op_id = cp.operation_id
        token = self._attempt_token(op_id, cp.epoch)  # fencing: written only while this attempt holds its lease
        keys = [*self._ckpt_keys(op_id), self.keys.failures(op_id), self.keys.lease(op_id)]
        args = [
            str(cp.epoch),
            str(cp.seq),
            sealed.info,
            sealed.payload,
            sealed.delta,
            str(keep),
            token,
            str(len(fails) // 2),
            *fails,
            *fails_done,
        ]
        what = f"checkpoint {cp.seq} of {op_id}"

        def send() -> Any:
            return self._script("SAVE_CHECKPOINT", keys, args, what)

        res = await self._fenced(op_id, cp.epoch, send)
        tag = res[0].decode()
        if tag == "missing" and await self._restored(op_id):
            res = await self._fenced(op_id, cp.epoch, send)
            tag = res[0].decode()
        if tag == "missing":
            self._last_delta.pop(op_id, None)
            raise self._gone(op_id, cp.epoch)
        if tag == "fenced":
            self._last_delta.pop(op_id, None)
            raise self._refused(op_id, cp.epoch, res)
        if self._held.get(op_id) == cp.epoch:
            self._last_delta[op_id] = (cp.epoch, cp.seq, sealed.delta)
        if self.mirror is not None:  # only after Redis accepted it: a fenced-off attempt writes nowhere
            gap = await self.mirror.save_checkpoint(cp, sealed.payload, sealed.delta, keep)
            await self._mirror_wrote(op_id if gap else None)
        return cp

    async def _delta_before(self, op_id: str, seq: int) -> bytes | None:
        """The stored delta ``seq - 1``, which delta ``seq`` links to (the attempt holds the operation:
        nobody else writes its deltas meanwhile); None for seq 1 or when it is missing."""
        if seq <= 1:
            return None
        key = self.keys.checkpoint_delta(op_id)
        raw: bytes | None = await self.link.call(
            lambda c: c.hget(key, str(seq - 1)), f"reading checkpoint {seq - 1} of {op_id}"
        )
        if raw is None and self.mirror is not None:
            try:
                raw = (await off_loop(self.mirror.checkpoints_sync, op_id, False))[1].get(seq - 1)
            except OSError as e:  # linked to nothing, this checkpoint and every later one would never verify
                what = f"checkpoint mirror {self.mirror.root}: reading checkpoint {seq - 1} of {op_id} failed: {e}"
                raise StoreFailed(what, str(e)) from None
        return raw

    async def _candidates(self, op_id: str, sure: bool = False) -> tuple[list[_Candidate], dict[int, bytes]]:
        """Every checkpoint found (Redis first, then the mirror's for the same or other seqs), newest
        first, and the deltas by seq (Redis's, completed from the mirror). ``sure``: a mirror that could not
        be read is StoreFailed, not left out (a resume chosen without it cut off the newer checkpoints there)."""
        infos, raw_deltas = await self._read_index(op_id)
        cands: list[_Candidate] = []
        for raw_seq, raw_info in infos.items():
            try:
                seq = int(raw_seq)
                info = Checkpoint.model_validate_json(raw_info)
            except ValueError as e:
                log.warning("operation %s: checkpoint %r in redis is unreadable (%s); skipped", op_id, raw_seq, e)
                continue
            cands.append((seq, "redis", info, None))
        deltas: dict[int, bytes] = {}
        for raw_seq, d in raw_deltas.items():
            with contextlib.suppress(ValueError):
                deltas[int(raw_seq)] = d
        if self.mirror is not None:
            try:
                m_cps, m_deltas = await off_loop(self.mirror.checkpoints_sync, op_id, False)
            except OSError as e:
                what = f"checkpoint mirror {self.mirror.root}: reading checkpoints of {op_id} failed: {e}"
                if sure:
                    raise StoreFailed(what, str(e)) from None
                log.error("%s", what)
            else:
                cands += [(s, "mirror", m.info, m.payload) for s, m in m_cps.items()]
                for s, d in m_deltas.items():
                    deltas.setdefault(s, d)
        cands.sort(key=lambda c: (-c[0], c[1] != "redis"))
        return cands, deltas

    async def _read_index(self, op_id: str) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """Every checkpoint info and delta Redis holds for ``op_id``, by seq, in one round trip; no payload. All
        the payloads at once held five of a 36 MB state in memory (and their reply) for a listing or a resume."""
        k = self.keys
        keys = [k.checkpoint_info(op_id), k.checkpoint_delta(op_id)]

        async def do(c: Any) -> list[dict[bytes, bytes]]:
            pipe = c.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return list(await pipe.execute())

        infos, deltas = await self.link.call(do, f"reading checkpoints of {op_id}")
        return infos, deltas

    async def _payload(self, op_id: str, cand: _Candidate) -> bytes | None:
        """A candidate's payload, read now from where it was found. In Redis: b"" when its info has none (it
        fails its checksum, as a damaged one does), None when the checkpoint is gone since its info was read
        (pruned by a newer one); in the mirror, None when its file no longer holds it."""
        seq, source, info, payload = cand
        if payload is not None:
            return payload
        if source == "mirror" and self.mirror is not None:
            try:
                return await off_loop(self.mirror.payload_sync, op_id, seq, info.checksum)
            except OSError as e:
                what = f"checkpoint mirror {self.mirror.root}: reading checkpoint {seq} of {op_id} failed: {e}"
                raise StoreFailed(what, str(e)) from None
        k = self.keys
        seq_field = str(seq)

        async def do(c: Any) -> list[Any]:
            pipe = c.pipeline(transaction=False)
            pipe.hget(k.checkpoint_payload(op_id), seq_field)
            pipe.hexists(k.checkpoint_info(op_id), seq_field)
            return list(await pipe.execute())

        payload, listed = await self.link.call(do, f"reading checkpoint {seq} of {op_id}")
        if payload is not None:
            return bytes(payload)
        return b"" if listed else None

    async def load_checkpoint(self, op_id: str, seq: int | None = None) -> tuple[Checkpoint, Ledger] | None:
        validate_id(op_id)
        cands, deltas = await self._candidates(op_id, sure=True)
        chain = Chain(sorted(deltas.items()))
        skipped: list[str] = []
        found: tuple[Checkpoint, Ledger] | None = None
        for cand in cands:
            s, source, info, _ = cand
            if seq is not None and s > seq:
                continue
            if (payload := await self._payload(op_id, cand)) is None:
                continue  # pruned since the listing was read: a newer one was saved
            if not chain.verifies(s, payload, info.checksum):
                why = (
                    f"follows a broken chain ({chain.broken})"
                    if s > len(chain) and chain.broken
                    else "fails its checksum"
                )
                skipped.append(f"checkpoint {s} ({source}) {why}")
                continue
            try:
                cp = restore(info, payload)
                if cp.seq != s or cp.operation_id != op_id:
                    raise ValueError("checkpoint info names another checkpoint")
                found = cp, chain.ledger(s)
            except ValueError as e:
                skipped.append(f"checkpoint {s} ({source}) is unreadable ({e.__class__.__name__})")
                continue
            if source == "mirror":
                log.warning("operation %s: resuming from checkpoint %d found in the checkpoint mirror", op_id, s)
            break
        if skipped:
            log.warning(resume_note(op_id, skipped, found[0].seq if found else None))
        return found

    async def checkpoints(self, op_id: str) -> list[Checkpoint]:
        validate_id(op_id)
        cands, deltas = await self._candidates(op_id)
        chain = Chain(sorted(deltas.items()))
        out: list[Checkpoint] = []
        seen: set[int] = set()
        for cand in cands:
            s, _source, info, _ = cand
            if s in seen:
                continue
            try:
                payload = await self._payload(op_id, cand)
            except StoreFailed as e:  # a listing goes on without it, as without the whole mirror before
                log.error("%s", e)
                payload = None
            if payload is None:
                continue  # pruned since the listing was read
            seen.add(s)
            valid = chain.verifies(s, payload, info.checksum)
            next_step = None
            if valid:
                with contextlib.suppress(ValueError):
                    next_step = next_step_of(payload)
            out.append(info.model_copy(update={"valid": valid, "next_step": next_step}))
        return out

    async def discard_checkpoints_after(self, op_id: str, seq: int, failed: dict[str, str] | None = None) -> None:
        validate_id(op_id)
        self._last_delta.pop(op_id, None)
        args = [str(seq)]
        if failed is not None:
            args += ["1", *_failure_fields(failed, self._held.get(op_id, 0))]
        keys = [*self._ckpt_keys(op_id), self.keys.failures(op_id)]
        await self._script("DISCARD_AFTER", keys, args, f"discarding checkpoints of {op_id}")
        if self.mirror is not None:
            await self.mirror.discard_after(op_id, seq)
            await self._mirror_wrote()

    async def item_failures(self, op_id: str) -> list[ItemFailure]:
        validate_id(op_id)
        key = self.keys.failures(op_id)
        raw: dict[bytes, bytes] = await self.link.call(lambda c: c.hgetall(key), f"reading item failures of {op_id}")
        out = []
        for k, v in raw.items():
            try:
                data = json.loads(v)
                out.append(ItemFailure(key=k.decode(), **data))
            except (ValueError, TypeError):
                log.warning("operation %s: item failure %r in redis is unreadable; skipped", op_id, k)
        return sorted(out, key=lambda f: f.at)


def _failure_fields(failed: dict[str, str], epoch: int) -> list[str]:
    """Item failures as the ``fail:ID`` hash holds them: key, JSON (error, attempt, at), ... Listed as
    text: a file name's undecodable bytes as \\xNN."""
    now = time.time()
    out: list[str] = []
    for key, error in failed.items():
        out += [clean(key), json.dumps({"error": clean(error), "attempt": epoch, "at": now}, ensure_ascii=False)]
    return out
