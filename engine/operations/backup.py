"""backup_operation: copy a tree preserving modes, times and symlinks, verified by sha256, resumable mid-file.

Each file is written to ``.NAME.outlast-partial`` beside its destination and renamed into place only when
complete (and verified), so no half-written file ever sits under its final name. A large file is copied in
chunks; after every ``chunk_checkpoint`` bytes the offset is saved in ``ctx.state`` with a checkpoint, and a
resume continues from that offset once the partial's size agrees. A manifest (path, size, mode, sha256) is
written to ``.outlast-manifest.json`` at the destination root.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..context import OperationContext
from ..files import private_opener
from ..registry import operation
from ._common import check_output_dir, existing_dir, sync_tree

CHUNK = 4 << 20
MANIFEST = ".outlast-manifest.json"
JOURNAL = ".outlast-manifest.partial"
SMALL_BATCH = 128
GONE = "gone since the listing"


class BackupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="directory to back up")
    destination: str = Field(description="directory to copy into (created; must not be inside source)")
    verify: bool = Field(default=True, description="re-read every copy and compare its sha256")
    chunk_checkpoint: int = Field(
        default=64 << 20, ge=CHUNK, le=1 << 40, description="bytes between checkpoints inside one large file"
    )

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return existing_dir(v, "source")

    @field_validator("destination")
    @classmethod
    def _dest(cls, v: str, info: ValidationInfo) -> str:
        dest = Path(check_output_dir(v, "destination"))
        src = info.data.get("source")
        if src is not None and (dest == Path(src) or dest.is_relative_to(src)):
            raise ValueError(f"{v!r} is inside source {src!r}")
        return str(dest)


def _list(src: Path) -> tuple[list[str], list[str], dict[str, int], list[str]]:
    """(directories, entries, sizes, special): relative paths of dirs, of files and symlinks, file sizes,
    and of what is none of these (FIFOs, sockets, devices: not copied)."""
    dirs: list[str] = []
    entries: list[str] = []
    sizes: dict[str, int] = {}
    special: list[str] = []
    for d, dnames, fnames in os.walk(src):
        rel_d = Path(d).relative_to(src)
        for x in list(dnames):
            if (Path(d) / x).is_symlink():
                entries.append((rel_d / x).as_posix())
                dnames.remove(x)
            else:
                dirs.append((rel_d / x).as_posix())
        for f in fnames:
            rel = (rel_d / f).as_posix()
            st = os.lstat(Path(d) / f)
            if stat.S_ISREG(st.st_mode):
                sizes[rel] = st.st_size
                entries.append(rel)
            elif stat.S_ISLNK(st.st_mode):
                entries.append(rel)
            else:
                special.append(rel)
    return sorted(dirs), sorted(entries), sizes, sorted(special)


def _make_dirs(dst: Path, dirs: list[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for d in dirs:
        (dst / d).mkdir(parents=True, exist_ok=True)


def _partial(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.outlast-partial")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while b := fh.read(CHUNK):
            h.update(b)
    return h.hexdigest()


def _write_partial(src: str, tmp: str) -> tuple[int, str]:
    """Copy a whole file (or symlink) to its partial name, not yet synced; returns (bytes, sha256 or 'symlink')."""
    if os.path.islink(src):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.readlink(src), tmp)
        return 0, "symlink"
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        data = fi.read(CHUNK)
        h = hashlib.sha256(data)
        fo.write(data)
        n = len(data)
        while len(data) == CHUNK and (data := fi.read(CHUNK)):
            h.update(data)
            fo.write(data)
            n += len(data)
    return n, h.hexdigest()


def _seal(src: Path, dst: Path, tmp: Path, sha: str, verify: bool) -> str:
    """Verify the partial against ``sha``, give it the source's mode and times, rename it into place."""
    if verify and sha != "symlink" and _sha(tmp) != sha:
        tmp.unlink(missing_ok=True)
        raise OSError(f"verification failed: sha256 of the copy differs from {src}")
    shutil.copystat(src, tmp, follow_symlinks=False)  # for a symlink: the link's own times
    os.replace(tmp, dst)
    return sha


def _copy_batch(src: Path, dst: Path, rels: list[str], verify: bool) -> list[tuple[str, int, str | None, str]]:
    """Copy small files: all written, one sync, each verified and renamed, one sync; then journaled.

    Two syncs of the destination's file system per batch instead of an fsync per file: what is renamed
    into place is on disk before the batch's files count as done.
    """
    written: list[tuple[str, int, str]] = []
    out: list[tuple[str, int, str | None, str]] = []
    for rel in rels:
        try:
            tmp = str(_partial(dst / rel))
            try:
                n, sha = _write_partial(str(src / rel), tmp)
            except FileNotFoundError:  # its directory went away since the listing: make it again
                os.makedirs(os.path.dirname(tmp), exist_ok=True)
                n, sha = _write_partial(str(src / rel), tmp)
            written.append((rel, n, sha))
        except OSError as e:
            gone = isinstance(e, FileNotFoundError) and not os.path.lexists(src / rel)
            out.append((rel, 0, GONE if gone else f"{type(e).__name__}: {e}", ""))
    sync_tree(dst)
    for rel, n, sha in written:
        try:
            _seal(src / rel, dst / rel, _partial(dst / rel), sha, verify)
            out.append((rel, n, None, sha))
        except OSError as e:
            out.append((rel, 0, f"{type(e).__name__}: {e}", ""))
    _journal(dst, [(r, sha) for r, _, err, sha in out if err is None])
    sync_tree(dst)
    return out


def _journal(dst: Path, done: list[tuple[str, str]]) -> None:
    """Append copied files to the manifest journal (the checkpoint stays small; duplicates: last wins)."""
    with open(dst / JOURNAL, "a", opener=private_opener) as fh:
        fh.writelines(json.dumps(x) + "\n" for x in done)


def _read_journal(dst: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(dst / JOURNAL) as fh:
        for line in fh:
            try:
                rel, sha = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash: its file is not done and is copied again
            out[rel] = sha
    return out


def _open_partial(src: Path, dst: Path, offset: int) -> tuple[int, hashlib._Hash]:
    """Prepare the partial for appending at ``offset`` (0 if it does not agree); returns (offset, hash so far)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(dst)
    h = hashlib.sha256()
    if offset and tmp.exists() and tmp.stat().st_size >= offset:
        with open(tmp, "r+b") as fo:
            fo.truncate(offset)
        with open(tmp, "rb") as fi:
            left = offset
            while left:
                b = fi.read(min(CHUNK, left))
                if not b:
                    break
                h.update(b)
                left -= len(b)
        return offset, h
    with open(tmp, "wb"):
        pass
    return 0, hashlib.sha256()


def _hash_range(path: Path, offset: int, length: int, h: hashlib._Hash) -> int:
    """Feed up to ``length`` bytes of ``path`` from ``offset`` into ``h``; returns bytes read (0 at the end)."""
    n = 0
    with open(path, "rb") as fh:
        fh.seek(offset)
        while n < length and (b := fh.read(min(CHUNK, length - n))):
            h.update(b)
            n += len(b)
    return n


def _append(src: Path, dst: Path, offset: int, length: int, h: hashlib._Hash) -> int:
    """Copy up to ``length`` bytes from ``offset`` into the partial (fsynced); returns bytes copied."""
    n = 0
    with open(src, "rb") as fi, open(_partial(dst), "r+b") as fo:
        fi.seek(offset)
        fo.seek(offset)
        while n < length and (b := fi.read(min(CHUNK, length - n))):
            h.update(b)
            fo.write(b)
            n += len(b)
        fo.flush()
        os.fsync(fo.fileno())
    return n


@operation("backup_operation", params=BackupParams, description="copy a tree, verified and resumable")
async def backup(ctx: OperationContext, p: BackupParams) -> dict:
    """Copy source to destination; the result gives files, bytes and the manifest path."""
    src, dst = Path(p.source), Path(p.destination)
    ctx.progress(step="listing")
    dirs, entries, sizes, special = await asyncio.to_thread(_list, src)
    total_bytes = sum(sizes.values())
    await asyncio.to_thread(_make_dirs, dst, dirs)
    for rel in special:
        ctx.skip(rel, "not a regular file, directory or symlink")
    st = ctx.state
    st.setdefault("bytes", 0)
    if not ctx.resuming:
        await asyncio.to_thread((dst / JOURNAL).unlink, missing_ok=True)
    ctx.progress(total=len(entries), step="copying", bytes_total=total_bytes, bytes=st["bytes"])
    pending = [e for e in entries if not ctx.is_done(e)]
    i = 0
    while i < len(pending):
        rel = pending[i]
        if sizes.get(rel, 0) > p.chunk_checkpoint:
            i += 1
            async for big in ctx.items([rel]):
                await _copy_large(ctx, p, src, dst, big, sizes[big])
            continue
        batch: list[str] = []
        while i < len(pending) and sizes.get(pending[i], 0) <= p.chunk_checkpoint and len(batch) < SMALL_BATCH:
            batch.append(pending[i])
            i += 1
        results = await asyncio.to_thread(_copy_batch, src, dst, batch, p.verify)
        async for rel, n, err, _sha in ctx.items(results, key=lambda r: r[0]):
            if err == GONE:  # deleted since the listing: not a failure
                ctx.skip(rel, err)
                continue
            if err is not None:
                ctx.fail(rel, err)
                continue
            st["bytes"] += n
            ctx.step = rel
            ctx.metrics["bytes"] = st["bytes"]
    copied = await asyncio.to_thread(_read_journal, dst)
    manifest = {rel: {"sha256": copied[rel], "size": sizes.get(rel, 0)} for rel in entries if rel in copied}
    mpath = dst / MANIFEST
    text = json.dumps({"source": p.source, "files": manifest}, indent=1)
    await asyncio.to_thread(_write_atomic, mpath, text)
    await asyncio.to_thread((dst / JOURNAL).unlink, missing_ok=True)
    for d in reversed(dirs):  # modes and times of directories last: writing into one changes its mtime
        await asyncio.to_thread(shutil.copystat, src / d, dst / d)
    await asyncio.to_thread(shutil.copystat, src, dst)
    return {"files": len(manifest), "bytes": st["bytes"], "failures": ctx.failures, "manifest": str(mpath)}


async def _copy_large(ctx: OperationContext, p: BackupParams, src: Path, dst: Path, rel: str, size: int) -> None:
    """Copy one large file in chunks, saving the offset with a checkpoint every chunk_checkpoint bytes."""
    st = ctx.state
    sst = await asyncio.to_thread(os.stat, src / rel)
    ident = [rel, sst.st_size, sst.st_mtime_ns]
    part = st.get("partial") or {}
    # Go on from the saved offset only if the source is the file it was taken from.
    offset = part.get("offset", 0) if part.get("source") == ident else 0
    offset, h = await asyncio.to_thread(_open_partial, src / rel, dst / rel, offset)
    if offset:
        ctx.log.info(f"resuming {rel} at byte {offset}")
    base = st["bytes"]
    ctx.step = rel
    while offset < size:
        n = await asyncio.to_thread(_append, src / rel, dst / rel, offset, p.chunk_checkpoint, h)
        if n == 0:
            break
        offset += n
        st["partial"] = {"source": ident, "offset": offset}
        ctx.progress(bytes=base + offset)  # progress inside the item: the stall clock starts again
        # Saved at once with the file not yet done: a resume re-enters it at this offset.
        await ctx.checkpoint(next_step=f"copying {rel}", now=True)
    sha, tmp = h.hexdigest(), _partial(dst / rel)
    if p.verify:  # re-read in chunks, each reported: a long check of a large file is progress, not a stall
        check, at = hashlib.sha256(), 0
        while at < offset and (n := await asyncio.to_thread(_hash_range, tmp, at, p.chunk_checkpoint, check)):
            at += n
            ctx.progress(step=f"verifying {rel}", verified=at)
        if check.hexdigest() != sha:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
            raise OSError(f"verification failed: sha256 of the copy differs from {src / rel}")
    await asyncio.to_thread(_seal, src / rel, dst / rel, tmp, sha, False)
    st.pop("partial", None)
    st["bytes"] = base + offset
    await asyncio.to_thread(_journal, dst, [(rel, sha)])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", opener=private_opener) as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
