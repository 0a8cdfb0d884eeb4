"""The checkpoint mirror: Redis for speed, the filesystem for persistence.

With ``--checkpoint-mirror DIR`` every checkpoint the Redis store accepts is also written
here, and so is every operation record at each status change, each file atomically
(temp file, fsync, rename, directory fsync). When Redis is lost or restarts empty, the
store restores the records from here and resumes from the checkpoints found here. A
failing mirror never stops the work: its errors are logged (once per outage) and survived.

Layout (one directory per namespace)::

    DIR/NAMESPACE/store.json                       the store it mirrors (its id, its URL) and the
                                                   highest handle an operation removed since had
    DIR/NAMESPACE/store.lock                       held while store.json is read and written again
    DIR/NAMESPACE/ops/ID.json                      the operation record
    DIR/NAMESPACE/checkpoints/ID/SEQ.ckpt.json     info, payload and checksum (newest N kept)
    DIR/NAMESPACE/checkpoints/ID/SEQ.delta.json    the items done since the previous one (all kept)

Files are JSON, validated when read back; a bad one is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..files import NotRegular, atomic_write, fsync_dir, open_regular, sweep_dead_temps
from ..models import Checkpoint, Operation, validate_id
from ..offload import off_loop
from ..text import model_json

log = logging.getLogger("outlast.store.mirror")
T = TypeVar("T")
FORMAT = 1
_CKPT_RE = re.compile(r"^(\d{10})\.(ckpt|delta)\.json\Z")


class MirrorCheckpoint:
    """One checkpoint as read back from the mirror (its delta is looked up separately; its payload None when it
    was not asked for: ``payload_sync`` reads it)."""

    __slots__ = ("info", "payload", "seq")

    def __init__(self, seq: int, info: Checkpoint, payload: bytes | None) -> None:
        self.seq, self.info, self.payload = seq, info, payload


class CheckpointMirror:
    """Checkpoints and records as files in ``root/namespace`` (see module doc)."""

    def __init__(self, root: str | Path, namespace: str) -> None:
        self.root = Path(root).expanduser()
        self.dir = self.root / namespace
        self.ops_dir = self.dir / "ops"
        self.ckpt_dir = self.dir / "checkpoints"
        self.healthy = True
        """False after a write failed, until one succeeds again (for the dashboard and logs)."""
        self.refill = False
        """True once the mirror's directories were found removed and made again (what it held is gone), or a
        write worked after some failed (what they wrote is missing or stale): the store writes back what
        Redis holds (``fill``)."""
        self.recovered = False
        """True when ``refill`` was set by a write that worked after some failed: a write back that fails
        then is the same outage, not said again."""
        self.missed = False
        """True once a write failed: the mirror lacks something Redis holds (the store marks it in Redis, so
        that whichever process finds the mirror working again writes it back)."""
        self._root_dev: int | None = None
        """The file system the root was on when the mirror was opened (None: never opened)."""

    def __repr__(self) -> str:
        return f"CheckpointMirror({str(self.root)!r})"

    # ---- plumbing ------------------------------------------------------------------------------

    def open_sync(self) -> None:
        """Create the directories (0700); raises OSError when the mirror cannot be used at all. A namespace
        directory made here is a new mirror (first use, or pointed somewhere new) on a Redis that may hold
        operations already: ``refill`` is set, so the first write fills it from Redis."""
        new = not self.dir.is_dir()
        for d in (self.root, self.dir, self.ops_dir, self.ckpt_dir):
            d.mkdir(mode=0o700, exist_ok=True)
        self._root_dev = os.stat(self.root).st_dev
        if new:  # only once it could be made: a mirror that cannot be used is never filled
            self.refill = True

    async def guard(self, what: str, fn: Callable[[], T], quiet: bool = False) -> T | None:
        """Run a write off the event loop; log a failure (once until the mirror works again), never raise.

        A write that fails because the mirror's directories were removed under this process (a cleanup, an
        ``rm -rf`` of an old-looking directory) makes them again and is retried once; ``refill`` is set, for
        the store to write back what the mirror lost (it would otherwise hold only what is written after)."""
        try:
            out = await off_loop(self._remade, fn)
        except Exception as e:  # OSError mostly; the mirror must never stop the work
            self.missed = True
            if self.healthy and not quiet:
                log.error(
                    "checkpoint mirror %s: %s failed: %s (Redis goes on; retried at the next write)", self.root, what, e
                )
            self.healthy = False
            return None
        if not self.healthy:
            log.warning("checkpoint mirror %s works again", self.root)
            self.healthy = True
            # What failed meanwhile (a record's last status, a checkpoint, a removal) was never written: the
            # store writes back what Redis holds, else the mirror keeps a stale record for ever.
            self.refill = self.recovered = True
        return out

    def _remade(self, fn: Callable[[], T]) -> T:
        """``fn()``; its directories made again first if they were removed since the mirror was opened.
        Never a root that is gone, or on another file system than then (a share unmounted: its files would
        go to the disk below, hidden once it is mounted again), nor a mirror that never opened."""
        try:
            return fn()
        except FileNotFoundError:
            if self.ops_dir.is_dir() and self.ckpt_dir.is_dir():
                raise
            try:
                same_root = os.stat(self.root).st_dev == self._root_dev
            except OSError:
                same_root = False
            if not same_root:
                raise
        self.open_sync()
        log.warning(
            "checkpoint mirror %s: its directory %s was removed; made again, and what Redis holds is written"
            " back into it",
            self.root,
            self.dir,
        )
        self.refill = True
        return fn()

    def _op_ckpt_dir(self, op_id: str) -> Path:
        return self.ckpt_dir / validate_id(op_id)

    # ---- records -------------------------------------------------------------------------------

    async def save_record(self, op: Operation, new: bool = False) -> None:
        """``new``: the record of an operation just created, written only where the mirror has none: one
        there is a later write's (a worker claimed it, ran it and completed it before this one landed)."""
        data = model_json(op).encode()
        path = self.ops_dir / f"{validate_id(op.id)}.json"
        if new:
            await self.guard(f"record {op.id}", lambda: atomic_write(path, data, replace=False))
        else:
            await self.guard(f"record {op.id}", lambda: atomic_write(path, data))

    def load_records_sync(self) -> list[Operation]:
        """Every readable record; a malformed file is skipped with a warning."""
        out = []
        try:
            names = sorted(os.listdir(self.ops_dir))
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = self.ops_dir / name
            try:
                op = Operation.model_validate_json(_read(path))
                if op.id != name.removesuffix(".json"):
                    raise ValueError(f"holds operation {op.id}")
            except (OSError, ValueError) as e:
                log.warning(
                    "checkpoint mirror: %s is not a valid operation record (%s); skipped", path, str(e).splitlines()[0]
                )
                continue
            out.append(op)
        return out

    def record_ids_sync(self) -> list[str]:
        """The ids of the records in ``ops/`` (a restore's, a refill's listing), removing on the way what a
        writer killed mid-write left there (``.ID.json.PID.NS.tmp``) and beside ``store.json``: listing them
        costs nothing more here, where a sweep at each record's write would list up to one file per operation."""
        with contextlib.suppress(OSError):
            sweep_dead_temps(self.dir, os.listdir(self.dir), lambda name: name == "store.json")
        try:
            names = os.listdir(self.ops_dir)
        except FileNotFoundError:
            return []
        sweep_dead_temps(self.ops_dir, names, lambda name: name.endswith(".json"))
        return [n.removesuffix(".json") for n in names if n.endswith(".json") and not n.startswith(".")]

    def load_record_sync(self, op_id: str) -> Operation | None:
        """The record in ``ops/ID.json``; None (with a warning) when it is unreadable or holds another
        operation (a file copied over another: restoring it brought back the other one under this name)."""
        path = self.ops_dir / f"{validate_id(op_id)}.json"
        try:
            op = Operation.model_validate_json(_read(path))
            if op.id != op_id:
                raise ValueError(f"holds operation {op.id}")
            return op
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning(
                "checkpoint mirror: %s is not a valid operation record (%s); skipped", path, str(e).splitlines()[0]
            )
            return None

    def unlink_record_sync(self, op_id: str) -> None:
        """Remove the record file (raises OSError: a removal must not be said done while the mirror would
        bring the operation back)."""
        try:
            os.unlink(self.ops_dir / f"{validate_id(op_id)}.json")
        except FileNotFoundError:
            if not self.ops_dir.is_dir():  # the mirror's directory removed: nothing there brings it back
                return
        fsync_dir(self.ops_dir)

    async def forget(self, op_ids: list[str]) -> None:
        """Remove the records and checkpoints of operations Redis no longer holds (removed while a mirror
        write failed, or written after their removal)."""

        def do() -> None:
            for op_id in op_ids:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.ops_dir / f"{validate_id(op_id)}.json")
            fsync_dir(self.ops_dir)
            for op_id in op_ids:
                shutil.rmtree(self._op_ckpt_dir(op_id), ignore_errors=True)

        await self.guard(f"removing {len(op_ids)} records Redis no longer holds", do)

    # ---- the store it mirrors ------------------------------------------------------------------

    def identity_sync(self) -> dict[str, Any] | None:
        """``store.json``: ``{"store": id, "url": where, "handles": n}``; None when missing or unreadable
        (a mirror made before it was written, or whose directory was made again)."""
        try:
            doc = json.loads(_read(self.dir / "store.json"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("checkpoint mirror: %s is unreadable (%s); skipped", self.dir / "store.json", e)
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("store"), str):
            return None
        return doc

    def write_identity_sync(self, store_id: str, url: str, handles: int = 0) -> None:
        """Name the store this mirror is written for; ``handles`` only ever grows (the handle counter as a
        removal found it, past every handle given before, those of records the mirror no longer holds too:
        a restore moves Redis's counter past it)."""
        # Read, compare and write under a lock: two processes removing operations at once would otherwise
        # each read the old count and the second write would take back the first one's higher handle.
        fd = os.open(self.dir / "store.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            old = self.identity_sync() or {}
            keep = old.get("handles") if old.get("store") == store_id else 0
            doc = {"format": FORMAT, "store": store_id, "url": url, "handles": max(handles, _int(keep))}
            if doc != old:
                atomic_write(self.dir / "store.json", json.dumps(doc).encode())
        finally:
            os.close(fd)  # lets go of the lock

    def handles_sync(self) -> int:
        """The highest handle the mirror knows was given: its records' and the one ``store.json`` keeps."""
        top = _int((self.identity_sync() or {}).get("handles"))
        for op_id in self.record_ids_sync():  # a bad file is said by the restore that reads it next
            with contextlib.suppress(OSError, ValueError):
                top = max(top, Operation.model_validate_json(_read(self.ops_dir / f"{op_id}.json")).handle or 0)
        return top

    # ---- checkpoints ---------------------------------------------------------------------------

    async def save_checkpoint(self, cp: Checkpoint, payload: bytes, delta: bytes, keep: int) -> bool:
        """Write the delta, then the checkpoint, then prune checkpoints older than the newest ``keep``.
        True when the delta before it is not in the mirror (its directory was removed): the chain a resume
        from the mirror needs is broken, and the store writes the missing deltas (``fill``)."""

        def write() -> bool:
            d = self._op_ckpt_dir(cp.operation_id)
            for again in (False, True):
                d.mkdir(mode=0o700, exist_ok=True)
                try:
                    gap = cp.seq > 1 and not (d / f"{cp.seq - 1:010d}.delta.json").exists()
                    atomic_write(d / f"{cp.seq:010d}.delta.json", _delta_doc(cp.seq, delta), sync_dir=False)
                    atomic_write(d / f"{cp.seq:010d}.ckpt.json", _ckpt_doc(cp, payload), sync_dir=False)
                    fsync_dir(d)
                    break
                except FileNotFoundError:
                    # Its directory removed while this wrote into it (an ``rm -rf`` racing the write): made
                    # again, and written whole there, the gap found then (not a failure said, once Redis
                    # has it all and the next write fills the mirror in).
                    if again or not d.parent.is_dir():  # the whole mirror gone: _remade makes it again
                        raise
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                names = []
            for name in names:
                m = _CKPT_RE.match(name)  # checkpoints older than the newest ``keep``
                if m and m.group(2) == "ckpt" and int(m.group(1)) <= cp.seq - keep:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(d / name)
            # The half-written checkpoint of a writer killed mid-write: a payload's size each kill, for ever.
            sweep_dead_temps(d, names, lambda name: _CKPT_RE.match(name) is not None)
            return gap

        return bool(await self.guard(f"checkpoint {cp.seq} of {cp.operation_id}", write))

    # ---- writing back what the mirror lost -----------------------------------------------------

    async def fill(
        self,
        records: list[Operation],
        checkpoints: dict[str, tuple[list[tuple[Checkpoint, bytes]], dict[int, bytes]]],
        quiet: bool = False,
    ) -> int:
        """Write the records (each over the mirror's, unless that one was written later: a write that failed
        left an older one there), and each operation's checkpoints (info with checksum, payload) and deltas
        that the mirror lacks (a checkpoint file never changes). How many files were written (a failure is
        logged like any other mirror write, and counts 0)."""

        def write() -> int:
            wrote = 0
            for op in records:
                path = self.ops_dir / f"{validate_id(op.id)}.json"
                data = model_json(op).encode()
                try:
                    old: bytes | None = _read(path)
                except FileNotFoundError:
                    old = None
                except OSError:
                    old = b""
                if old == data or (old and _newer(old, op)):
                    continue
                atomic_write(path, data, sync_dir=False)
                wrote += 1
            if records:
                fsync_dir(self.ops_dir)
            for op_id, (cps, deltas) in checkpoints.items():
                d = self._op_ckpt_dir(op_id)
                d.mkdir(mode=0o700, exist_ok=True)
                have = set(self._files(d))
                new_deltas = [seq for seq in sorted(deltas) if (seq, "delta") not in have]
                new_cps = [(cp, payload) for cp, payload in cps if (cp.seq, "ckpt") not in have]
                for seq in new_deltas:
                    atomic_write(d / f"{seq:010d}.delta.json", _delta_doc(seq, deltas[seq]), sync_dir=False)
                for cp, payload in new_cps:  # each file's text made as it is written (a state's size again)
                    atomic_write(d / f"{cp.seq:010d}.ckpt.json", _ckpt_doc(cp, payload), sync_dir=False)
                if new_deltas or new_cps:
                    fsync_dir(d)
                wrote += len(new_deltas) + len(new_cps)
            return wrote

        return await self.guard("writing back what it lost", write, quiet) or 0

    @staticmethod
    def _files(d: Path) -> list[tuple[int, str]]:
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            m = _CKPT_RE.match(n)
            if m:
                out.append((int(m.group(1)), m.group(2)))
        return out

    def checkpoints_sync(
        self, op_id: str, payloads: bool = True
    ) -> tuple[dict[int, MirrorCheckpoint], dict[int, bytes]]:
        """All readable checkpoints and deltas of ``op_id`` by seq (checksums are not checked here). A damaged
        file (not JSON, another's checkpoint, not a regular file) is skipped and said; a read that failed (an
        I/O error) raises OSError: skipped, it read as a break in the chain, and the resume that went on from
        an older checkpoint discarded the newer ones here for good. ``payloads``: keep each one's payload; else
        each file is read and let go in turn (five of a 36 MB state were held at once for a listing)."""
        d = self._op_ckpt_dir(op_id)
        cps: dict[int, MirrorCheckpoint] = {}
        deltas: dict[int, bytes] = {}
        for seq, kind in self._files(d):
            path = d / f"{seq:010d}.{kind}.json"
            try:
                doc = json.loads(_read(path))
                if not isinstance(doc, dict):
                    raise ValueError("not an object")
                if kind == "delta":
                    deltas[seq] = _text(doc, "delta").encode()
                else:
                    payload = self._checkpoint_of(doc, op_id, seq)
                    cps[seq] = MirrorCheckpoint(seq, payload.info, payload.payload if payloads else None)
            except FileNotFoundError:
                continue  # pruned meanwhile
            except (NotRegular, ValueError) as e:
                log.warning("checkpoint mirror: %s is unreadable (%s); skipped", path, str(e).splitlines()[0])
        return cps, deltas

    @staticmethod
    def _checkpoint_of(doc: dict[str, Any], op_id: str, seq: int) -> MirrorCheckpoint:
        """Checkpoint ``seq`` of ``op_id`` as its file's ``doc`` holds it; ValueError if it holds anything else."""
        info = Checkpoint.model_validate({**(doc.get("info") or {}), "checksum": _text(doc, "checksum")})
        if info.seq != seq or info.operation_id != op_id:
            raise ValueError(f"holds checkpoint {info.seq} of {info.operation_id}")
        return MirrorCheckpoint(seq, info, _text(doc, "payload").encode())

    def payload_sync(self, op_id: str, seq: int, listed: str) -> bytes | None:
        """Checkpoint ``seq``'s payload as its file holds it, if that file still holds the checkpoint listed with
        the checksum ``listed``; None if it is gone or is now another (pruned, or written again since the listing), or
        unreadable (said when it was listed). OSError if the read failed."""
        path = self._op_ckpt_dir(op_id) / f"{seq:010d}.ckpt.json"
        try:
            doc = json.loads(_read(path))
            if not isinstance(doc, dict):
                return None
            cp = self._checkpoint_of(doc, op_id, seq)
        except FileNotFoundError:
            return None
        except (NotRegular, ValueError):
            return None
        return cp.payload if cp.info.checksum == listed else None

    def newest_seq_sync(self, op_id: str) -> int | None:
        seqs = [s for s, k in self._files(self._op_ckpt_dir(op_id)) if k == "ckpt"]
        return max(seqs) if seqs else None

    async def discard_after(self, op_id: str, seq: int) -> None:
        def do() -> None:
            d = self._op_ckpt_dir(op_id)
            for s, kind in self._files(d):
                if s > seq:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(d / f"{s:010d}.{kind}.json")

        await self.guard(f"discarding checkpoints of {op_id} after {seq}", do)

    async def delete(self, op_id: str) -> None:
        """Remove the operation's record, then its checkpoints (the record first: without it, a restore
        never brings the operation back, whatever checkpoint files a failure leaves)."""

        def do() -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.ops_dir / f"{validate_id(op_id)}.json")
            fsync_dir(self.ops_dir)
            shutil.rmtree(self._op_ckpt_dir(op_id), ignore_errors=True)

        await self.guard(f"deleting {op_id}", do)


def _read(path: Path) -> bytes:
    """A mirror file's bytes; NotRegular (an OSError) for anything but a regular file (a FIFO named like a
    record or a checkpoint made a restore from the mirror wait for ever)."""
    with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as f:
        return f.read()


def _ckpt_doc(cp: Checkpoint, payload: bytes) -> bytes:
    info = cp.model_dump(mode="json", exclude={"state", "context_data", "metadata", "next_step", "valid"})
    doc = {"format": FORMAT, "info": info, "payload": payload.decode(), "checksum": cp.checksum}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _delta_doc(seq: int, delta: bytes) -> bytes:
    return json.dumps({"format": FORMAT, "seq": seq, "delta": delta.decode()}, ensure_ascii=False).encode()


def _newer(have: bytes, op: Operation) -> bool:
    """The mirror's record ``have`` was written after ``op`` was read from Redis (another process's write)."""
    try:
        mine = Operation.model_validate_json(have)
    except ValueError:
        return False
    return mine.id == op.id and (mine.updated_at or 0) > (op.updated_at or 0)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string")
    return value
