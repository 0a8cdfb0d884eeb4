"""kb_population: a local knowledge base from a folder of documents, searchable with ``outlast kb search``.

Markdown, text, reStructuredText, HTML and PDF files are cut into chunks (at paragraph, sentence and word
boundaries, never across a heading) and stored in SQLite with an FTS5 full-text index (see knowledge.py).
Incremental: a document whose sha256 matches the stored one is reused as it is; documents gone from the
folder (no file at their path) are dropped at the end, and only those: one this run did not read (outside
its patterns, skipped, failed) keeps its stored version. Resumable per document: a batch is committed to
the knowledge base in one transaction before its documents count as done, so a resume redoes at most one
batch (idempotently).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..context import OperationContext, OperationFailed
from ..registry import operation
from ..text import clean, stored_name
from ._common import (
    CHANGE_SLACK,
    DIR_FLAGS,
    SQLITE_MAGIC,
    NotFollowed,
    check_output_file,
    disk_full,
    existing_dir,
    output_dir,
    parent_of,
    read_upto,
    reading_mark,
    since_in_this_clock,
)
from ._docs import KINDS, NotADocument, chunk, kind_of, sections
from ._walk import list_files
from .knowledge import KB_FILE, KbError, check_kb_tables, drop_documents, index_chunks, open_kb, sha256_text

BATCH = 64
"""Documents parsed and committed in one transaction (a resume redoes at most one batch)."""


class KbPopulationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="folder of documents (Markdown, text, reStructuredText, HTML, PDF)")
    kb: str | None = Field(default=None, description="knowledge base file (default: kb.sqlite in the state dir)")
    patterns: list[str] = Field(
        default_factory=list, description="glob patterns of files to read (default: every known document suffix)"
    )
    exclude: list[str] = Field(default_factory=list, description="glob patterns of files to leave out")
    chunk_size: int = Field(default=1500, ge=200, le=100_000, description="most characters in one chunk")
    max_bytes: int = Field(default=64 << 20, ge=1, description="larger files are skipped")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return existing_dir(v, "source")

    @field_validator("kb")
    @classmethod
    def _kb(cls, v: str | None) -> str | None:
        v = check_output_file(v, "kb", SQLITE_MAGIC, "an SQLite database")
        if v is not None:
            try:
                check_kb_tables(Path(v), create=True)
            except KbError as e:
                raise ValueError(f"kb {v!r} {e}") from None
        return v


def kb_path(ctx: OperationContext, kb: str | None) -> str:
    """The knowledge base a kb handler works on: ``kb`` resolved, else the state dir's default one."""
    return str(Path(kb).expanduser().resolve()) if kb else str(output_dir(ctx) / KB_FILE)


@contextlib.contextmanager
def kb_written(db: str) -> Iterator[None]:
    """A kb handler's work on ``db``: an error a full disk under it caused becomes one line naming it (the
    operation fails; resume it once there is room). SQLite's own "database or disk is full" named no file and
    came with the handler's line, as if Outlast had a bug."""
    try:
        yield
    except (sqlite3.Error, OSError, KbError) as e:
        if (line := disk_full(e, f"kb {db!r} cannot be written", db)) is None:
            raise
        raise OperationFailed(line) from None


Outcome = tuple[str, str, int, str | None]
"""(path, "added" | "reused" | "skipped" | "failed", chunks, reason)."""


_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LINKED = {errno.ELOOP, errno.ENOTDIR, errno.EMLINK}
"""What opening a symlink with O_NOFOLLOW (ELOOP; EMLINK on the BSDs), or a file as a directory, raises."""


def _read(root_fd: int, rel: str, max_bytes: int) -> tuple[bytes | None, str | None]:
    """The file's bytes, or None and why it is skipped ("skip: ...") or failed.

    Reached from ``root_fd`` (the source folder) one directory at a time without following a symlink
    (``parent_of``), so a folder swapped for a link to elsewhere since the listing is not read through; the
    file itself opened without following a link and without waiting (a FIFO swapped in since the listing
    blocked the open for ever), and checked on the open descriptor: what is read is what was checked."""
    try:
        with parent_of(root_fd, rel) as (fd, name):
            file_fd = os.open(name, _FILE, dir_fd=fd)
    except NotFollowed:  # a folder on its path is a symbolic link (or a file) now
        return None, "skip: not a regular file"
    except FileNotFoundError:
        return None, "skip: gone since the listing"
    except OSError as e:
        if e.errno in _LINKED:  # the file is a symbolic link now
            return None, "skip: not a regular file"
        return None, f"unreadable: {e.strerror or e}"
    with open(file_fd, "rb") as fh:
        try:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):  # a FIFO, a device, a directory: never read
                return None, "skip: not a regular file"
            if st.st_size > max_bytes:
                return None, f"skip: larger than max_bytes ({st.st_size} bytes)"
            os.set_blocking(fh.fileno(), True)
            data = read_upto(fh, max_bytes + 1, st.st_size)
        except OSError as e:
            return None, f"unreadable: {e.strerror or e}"
    if len(data) > max_bytes:  # grown since its fstat
        return None, f"skip: larger than max_bytes (over {max_bytes} bytes)"
    return data, None


def _process_batch(con: sqlite3.Connection, p: KbPopulationParams, rels: list[str], op_id: str) -> list[Outcome]:
    """Read, parse and store a batch of documents in one transaction; an outcome per document.

    A document this same operation stored before a crash is "added" again, not "reused", so a resumed
    run reports what an uninterrupted one does. The knowledge base names document ``rel`` ``stored_name(rel)``:
    a name's bytes that are not UTF-8 as ``\\xNN`` (a TEXT column stores text only), a backslash doubled (two
    documents never share a name).
    """
    names = {stored_name(r): r for r in rels}
    q = ",".join("?" * len(names))
    prev = {
        names[r[0]]: r[1:]
        for r in con.execute(
            f"SELECT path, id, sha256, chunks, stored_by FROM documents WHERE source=? AND path IN ({q})",
            [p.source, *names],
        )
    }
    out: list[Outcome] = []
    new: list[tuple[str, str, str | None, int, str, list[tuple[str | None, str]]]] = []
    seen: list[str] = []
    try:
        root_fd = os.open(p.source, DIR_FLAGS)
    except OSError as e:
        raise OperationFailed(f"source {p.source!r}: {e.strerror or e}") from None
    try:
        for rel in rels:
            data, why = _read(root_fd, rel, p.max_bytes)
            if data is None:
                out.append(
                    (rel, "skipped", 0, why[6:]) if why and why.startswith("skip: ") else (rel, "failed", 0, why)
                )
                continue
            sha = hashlib.sha256(data).hexdigest()
            old = prev.get(rel)
            if old is not None and old[1] == sha:
                seen.append(rel)
                out.append((rel, "added" if old[3] == op_id else "reused", old[2], None))
                continue
            kind = kind_of(rel) or "text"
            try:
                title, secs = sections(kind, data)
            except NotADocument as e:
                out.append((rel, "failed", 0, str(e)))
                continue
            chunks = chunk(secs, p.chunk_size) or ([(None, title)] if title else [])  # a title alone is findable
            new.append((rel, kind, title or clean(Path(rel).stem), len(data), sha, chunks))
            out.append((rel, "added", len(chunks), None))
    finally:
        os.close(root_fd)
    with con:  # one transaction: the batch is in the knowledge base before its documents count as done
        drop_documents(con, [prev[rel][0] for rel, *_ in new if rel in prev])  # changed since stored
        sql = "UPDATE documents SET seen=? WHERE source=? AND path=?"
        con.executemany(sql, [(op_id, p.source, stored_name(rel)) for rel in seen])
        for rel, kind, title, size, sha, chunks in new:
            cur = con.execute(
                "INSERT INTO documents(source, path, kind, title, size, sha256, chunks, stored_by, seen)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (p.source, stored_name(rel), kind, title, size, sha, len(chunks), op_id, op_id),
            )
            doc = cur.lastrowid
            ids = []
            for seq, (heading, text) in enumerate(chunks):
                c = con.execute(
                    "INSERT INTO chunks(doc, seq, heading, text, sha256) VALUES (?,?,?,?,?)",
                    (doc, seq, heading, text, sha256_text(text)),
                )
                ids.append(c.lastrowid)
            index_chunks(con, [i for i in ids if i is not None])
    return out


def _changed(con: sqlite3.Connection, source: str, done: list[str], st: dict) -> tuple[list[str], list[str]]:
    """The documents of ``done`` (read by an earlier attempt) that may have changed since, and those the
    knowledge base does not hold (``done`` are stored: skipped and failed ones are not done; a kb deleted or
    replaced between two attempts lost them, and the resume was "completed" without them).

    Changed: their size is not the stored one, or they were modified after the operation first ran (less
    2 s: a file system's timestamps may be that coarse), or their ctime is (less ``CHANGE_SLACK``: a tree
    written just before the run is not read again at every resume): an edit of the same size whose mtime was
    put back, as ``touch -r`` or ``rsync -t`` do, was missed. Skipped as done, they kept the version read
    before the interruption (a pause resumed a week later: a week of edits), though the result said the
    folder was read.
    Read again, an unchanged one is found unchanged by its sha256."""
    started = since_in_this_clock(float(st["started"]), st.get("started_boot"))  # a clock ahead then: see there
    since = started - 2.0
    size: dict[str, int] = {}
    q = "SELECT path, size FROM documents WHERE source=? AND path IN ({})"
    for i in range(0, len(done), 500):
        names = [stored_name(r) for r in done[i : i + 500]]
        size.update(con.execute(q.format(",".join("?" * len(names))), [source, *names]).fetchall())
    out, lost = [], []
    for rel in done:
        stored = size.get(stored_name(rel))
        try:
            now = os.lstat(os.path.join(source, rel))
        except (OSError, ValueError):
            continue  # gone: dropped at the end
        if stored is None:
            lost.append(rel)
        elif now.st_size != stored or now.st_mtime >= since or now.st_ctime >= started - CHANGE_SLACK:
            out.append(rel)
    return out, lost


def _finish(con: sqlite3.Connection, source: str, op_id: str) -> dict:
    """Drop this folder's documents that are gone from it; the summary of the knowledge base.

    Gone means no file at its path any more: not merely unread by this run. A rerun with narrower
    ``patterns`` or ``exclude`` (or a smaller ``max_bytes``) dropped every document it did not read, and a
    skipped or failed document lost its stored version; those are kept now, as they were."""
    with con:
        unseen = con.execute("SELECT id, path FROM documents WHERE source=? AND seen IS NOT ?", (source, op_id))
        gone = [doc for doc, path in unseen.fetchall() if _gone(Path(source) / unstored_name(path))]
        drop_documents(con, gone)
    kinds = dict(con.execute("SELECT kind, COUNT(*) FROM documents GROUP BY kind ORDER BY 2 DESC, 1").fetchall())
    return {
        "documents": con.execute("SELECT COUNT(*) FROM documents").fetchone()[0],
        "chunks": con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0],
        "kinds": kinds,
        "removed": len(gone),
    }


def _gone(path: Path) -> bool:
    """Nothing is at ``path`` (or a file stands where a folder on its path was). Anything else, or not
    knowing (permission denied), keeps the document."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except (OSError, ValueError):  # ValueError: a name no file system can hold (stored by hand, or damaged)
        return False
    return False


def unstored_name(name: str) -> str:
    r"""The file name ``stored_name`` gave ``name`` for: ``\\`` a backslash, ``\xNN`` the byte NN that
    is not UTF-8 (as ``os.fsdecode`` has it), ``\uXXXX`` a lone surrogate."""
    if "\\" not in name:
        return name
    out, i = [], 0
    try:
        while i < len(name):
            c = name[i]
            if c != "\\":
                out.append(c)
                i += 1
            elif name.startswith("\\\\", i):
                out.append("\\")
                i += 2
            elif name.startswith("\\x", i) and len(name) >= i + 4:
                out.append(chr(0xDC00 + int(name[i + 2 : i + 4], 16)))
                i += 4
            elif name.startswith("\\u", i) and len(name) >= i + 6:
                out.append(chr(int(name[i + 2 : i + 6], 16)))
                i += 6
            else:
                return name  # not written by stored_name: the name as it is
    except ValueError:
        return name
    return "".join(out)


@operation("kb_population", params=KbPopulationParams, description="documents into a searchable knowledge base")
async def populate(ctx: OperationContext, p: KbPopulationParams) -> dict:
    """Read every document under ``source`` into the knowledge base; the result says what changed. A full disk
    under the knowledge base fails the operation in one line naming it (resume it once there is room)."""
    db = kb_path(ctx, p.kb)
    with kb_written(db):
        return await _populate(ctx, p, db)


async def _populate(ctx: OperationContext, p: KbPopulationParams, db: str) -> dict:
    ctx.progress(step="listing documents")
    con = await asyncio.to_thread(open_kb, db)
    try:
        files = await list_files(ctx, Path(p.source), p.patterns, p.exclude)
        if not p.patterns:
            files = [f for f in files if kind_of(f)]
        own = (db, db + "-wal", db + "-shm", db + "-journal")  # a kb kept inside its source is not a document
        files = [f for f in files if str(Path(p.source) / f) not in own]
        ctx.progress(total=len(files), step="reading documents")
        st = ctx.state
        for k in ("added", "reused", "chunks"):
            st.setdefault(k, 0)
        if "started" not in st:  # in the first checkpoint, before any document counts as done
            mark = reading_mark()
            st["started"], st["started_boot"] = mark["reading_since"], mark["reading_since_boot"]
        pending = [f for f in files if not ctx.is_done(f)]
        if len(pending) < len(files):  # a resume: the documents read before and changed since are read again
            changed, lost = await asyncio.to_thread(_changed, con, p.source, [f for f in files if ctx.is_done(f)], st)
            if changed:
                ctx.log.info(f"{len(changed)} documents read by an earlier attempt changed since: read again")
            if lost:
                ctx.log.warning(
                    f"{len(lost)} documents stored by an earlier attempt are not in {db} (deleted or replaced"
                    " since): read again"
                )
            if changed or lost:
                again = set(pending).union(changed, lost)
                pending = [f for f in files if f in again]
        for i in range(0, len(pending), BATCH):
            results = await asyncio.to_thread(_process_batch, con, p, pending[i : i + BATCH], ctx.id)
            async for rel, outcome, n, why in ctx.items(results, key=lambda r: r[0]):
                if outcome == "failed":
                    ctx.fail(rel, why or "failed")
                    continue
                if outcome == "skipped":
                    ctx.skip(rel, why)
                    ctx.advance()  # looked at: a completed run is at 100%, skips or not
                    continue
                st[outcome] += 1
                st["chunks"] += n if outcome == "added" else 0
                ctx.step = rel
                ctx.metrics["chunks"] = st["chunks"]
        ctx.progress(step="finishing")
        summary = await asyncio.to_thread(_finish, con, p.source, ctx.id)
    finally:
        await asyncio.to_thread(con.close)
    return {
        "kb": db,
        "source": p.source,
        "added": st["added"],
        "reused": st["reused"],
        "chunks_added": st["chunks"],
        "failures": ctx.failures,
        **summary,
    }


__all__ = ["KINDS", "KbPopulationParams", "kb_path", "populate"]
