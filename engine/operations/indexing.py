"""codebase_indexing: a queryable SQLite index of a source tree (files, hashes, languages, lines, symbols, imports).

Incremental: a file whose size, mtime and sha256 match the previous index keeps its analysis. Resumable per
file: results are committed to the index database in batches before the files count as done, so a resume
redoes at most one batch (idempotently). Binary files are indexed without line counts; unreadable or
undecodable files are item failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import AsyncGenerator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..context import OperationContext
from ..registry import operation
from ._common import SQLITE_MAGIC, check_output_file, existing_dir, output_dir
from ._index_files import Batch, analyze_batch, index_name
from ._lang import language_of, parsers
from ._pool import in_order, worker_count
from ._results_db import check_kind, connect, create_tables, exclusive, lacking, pending_items, setting_up
from ._walk import list_files, own_files

BATCH = 256
"""Files analysed and committed in one transaction (a resume redoes at most one batch)."""
NOT_UTF8_SAID = 20
"""Files not UTF-8 (read in their own coding or as Latin-1) named in the log one by one; the rest counted."""
SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER, mtime REAL, sha256 TEXT, language TEXT, binary INTEGER,
    code INTEGER, comment INTEGER, blank INTEGER, symbols TEXT, imports TEXT, seen TEXT
);
CREATE TABLE IF NOT EXISTS symbols (
    path TEXT, kind TEXT, name TEXT, line INTEGER, end_line INTEGER, parent TEXT,
    PRIMARY KEY (path, line, kind, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS imports (path TEXT, module TEXT, PRIMARY KEY (path, module)) WITHOUT ROWID;
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS files_language ON files(language);
CREATE INDEX IF NOT EXISTS symbols_name ON symbols(name);
CREATE INDEX IF NOT EXISTS imports_module ON imports(module);
"""
"""Made when a run finishes, not before a new index's first row: built once at the end they cost about half
of what keeping them up to date row by row cost the engine's process, on the path that limits how fast the
workers' batches are stored. An index that has them (built before) keeps them up to date."""


class IndexParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field(description="directory to index")
    patterns: list[str] = Field(default_factory=list, description="glob patterns of files to include (default all)")
    exclude: list[str] = Field(default_factory=list, description="glob patterns of files to leave out")
    output: str | None = Field(default=None, description="SQLite index path (default: in the state dir)")

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return existing_dir(v, "root")

    @field_validator("output")
    @classmethod
    def _output(cls, v: str | None) -> str | None:
        return _check_index(check_output_file(v, "output", SQLITE_MAGIC, "an SQLite database"))


OLD_INDEX = frozenset({"files", "symbols", "imports", "meta", "outlast_run"})
"""The tables of an index written before indexes said their kind in ``meta``."""


def _check_index(value: str | None) -> str | None:
    """An index, or no database yet: another program's SQLite database (one with tables ``symbols`` and
    ``meta`` was dropped as an old index) or another operation's is not written into."""
    return check_kind(value, "output", "codebase_indexing", OLD_INDEX, SCHEMA)


def _previous(con: sqlite3.Connection, rels: list[str]) -> dict[str, tuple]:
    """What the index holds for these files: (size, mtime, sha256, seen) by path (by ``rel``, which the
    index stores as its ``index_name``)."""
    names = {index_name(r): r for r in rels}
    out: dict[str, tuple] = {}
    listed = list(names)
    for i in range(0, len(listed), 900):  # SQLite's limit on bound parameters
        part = listed[i : i + 900]
        q = ",".join("?" * len(part))
        out.update(
            (names[r[0]], r[1:])
            for r in con.execute(f"SELECT path, size, mtime, sha256, seen FROM files WHERE path IN ({q})", part)
        )
    return out


def _changed(root: Path, indexed: dict[str, tuple]) -> list[str]:
    """The files of ``indexed`` (their rows: size, mtime, ...) whose size or mtime is not the row's now.

    Done by an earlier attempt and modified before the resume, they kept their old analysis: the index
    mixed the tree before the interruption with the tree after it."""
    out = []
    for rel, row in indexed.items():
        try:
            st = os.lstat(os.path.join(root, rel))
        except OSError:
            continue  # gone: dropped at the end, as the listing no longer has it
        if (st.st_size, st.st_mtime) != (row[0], row[1]):
            out.append(rel)
    return out


def _store_batch(con: sqlite3.Connection, batch: Batch) -> list[tuple[str, int, str, str | None]]:
    """Store a batch's rows in one transaction (the batch is in the index before its files count as done);
    what became of each file."""
    with con:
        for t in ("files", "symbols", "imports"):
            con.executemany(f"DELETE FROM {t} WHERE path=?", batch.gone)
        con.executemany("UPDATE files SET seen=? WHERE path=?", batch.reused)
        con.executemany("INSERT INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", batch.files)
        con.executemany("INSERT OR IGNORE INTO symbols VALUES (?,?,?,?,?,?)", batch.symbols)
        con.executemany("INSERT OR IGNORE INTO imports VALUES (?,?)", batch.imports)
    return batch.outcomes


ANALYSIS = "2"
"""The version of the per-file analysis (line counts, symbols, imports) an index's rows were made with, in its
``meta``. Raise it when that analysis changes for a file that has not: a row whose size, mtime and sha256 still
match is kept, so an index made before kept the old figures of every file left unchanged (2: lines ended at a
form feed, ``#`` lines in a Python string counted as comments, C block comments after code, BOM and UTF-16
files)."""


def _analysis(con: sqlite3.Connection) -> str | None:
    """The ``ANALYSIS`` an index's rows were made with (None: before indexes said it, or no index yet)."""
    try:
        row = con.execute("SELECT value FROM meta WHERE key='analysis'").fetchone()
    except sqlite3.OperationalError:  # no meta table
        return None
    return None if row is None else str(row[0])


def _open(db: str, root: str) -> sqlite3.Connection:
    """The index database, created if new; one connection for the whole run, used by one thread at a time."""
    con = connect(db)
    with setting_up(db, con):
        con.execute("PRAGMA journal_mode=WAL")  # one fsync per batch; readers never block the indexer
        con.execute("PRAGMA cache_size=-65536")  # 64 MB: the symbol index of a large tree stays in memory
        cols = {r[1] for r in con.execute("PRAGMA table_info(symbols)")}
        drop = ""
        if cols and "parent" not in cols and con.execute("PRAGMA table_info(meta)").fetchone():
            # An index from before symbols had lines and parents: it is derived data, built again.
            drop = "DROP TABLE symbols; DROP TABLE imports; DROP TABLE files;\n"
        stale = ""
        if con.execute("PRAGMA table_info(files)").fetchone() and _analysis(con) != ANALYSIS:
            # Rows of an older analysis: their mtime cleared in the transaction that writes the new version, so
            # that each file is analysed again, once (a resume's too: a row's mtime no longer matches the file's).
            stale = "\nUPDATE files SET mtime = NULL;"
        create_tables(con, drop + SCHEMA + stale, {"root": root, "kind": "codebase_indexing", "analysis": ANALYSIS})
    return con


def _finish(con: sqlite3.Connection, seen: str, listed: set[str]) -> dict:
    """Drop files no longer in the tree, make the lookup indexes; the summary of the index.

    Gone are the files this run did not see, and those an earlier attempt of it saw that are not in the
    tree now (``listed``: the index names of this attempt's listing): renamed or deleted between attempts,
    their rows counted them twice or as still there."""
    with con:
        gone = [(p,) for p, by in con.execute("SELECT path, seen FROM files") if by != seen or p not in listed]
        for (p,) in gone:
            for t in ("files", "symbols", "imports"):
                con.execute(f"DELETE FROM {t} WHERE path=?", (p,))
    con.executescript(INDEXES)
    langs = dict(con.execute("SELECT language, COUNT(*) FROM files GROUP BY language ORDER BY 2 DESC").fetchall())
    lines = con.execute("SELECT SUM(code), SUM(comment), SUM(blank), SUM(size) FROM files").fetchone()
    nsym = con.execute("SELECT COUNT(*) FROM symbols").fetchone()[0]
    return {
        "files": con.execute("SELECT COUNT(*) FROM files").fetchone()[0],
        "languages": langs,
        "code": lines[0] or 0,
        "comment": lines[1] or 0,
        "blank": lines[2] or 0,
        "bytes": lines[3] or 0,
        "symbols": nsym,
        "removed": len(gone),
    }


@operation("codebase_indexing", params=IndexParams, description="index a source tree into SQLite")
async def index_codebase(ctx: OperationContext, p: IndexParams) -> dict:
    """Walk, analyse each file, store it; the result summarises the index and says where it is."""
    db = (
        str(Path(p.output).expanduser().resolve())
        if p.output
        else str(output_dir(ctx) / f"index-{hashlib.sha1(p.root.encode()).hexdigest()[:12]}.sqlite")
    )
    ctx.progress(step="listing files")
    await asyncio.to_thread(parsers)  # a wrong languages.toml in the config dir is one line here, before any work
    # One thread for every use of the connection, in order: a batch is stored while the one before it is
    # recorded, and closing waits for a store still running when the handler stops.
    writer = ThreadPoolExecutor(1, thread_name_prefix="outlast-index")
    loop = asyncio.get_running_loop()
    try:
        with exclusive(db, _check_index):
            con = await loop.run_in_executor(writer, _open, db, p.root)
            try:
                return await _index(ctx, p, con, db, writer)
            finally:
                await loop.run_in_executor(writer, con.close)
    finally:
        writer.shutdown(wait=False)


async def _stored(
    con: sqlite3.Connection, writer: Executor, batches: AsyncGenerator[Batch, None], overlap: bool
) -> AsyncGenerator[list[tuple[str, int, str, str | None]], None]:
    """Each batch stored, in order, and what became of its files.

    With ``overlap`` (the files are analysed in worker processes), the next batch is stored while the caller
    records this one's files (their checkpoints wait on the engine's store): the engine's process, which
    every batch goes through, then does not wait on one while it could do the other. Without (analysed in
    this process), a store beside the analysis would wait for the GIL at every row it inserts."""
    loop = asyncio.get_running_loop()
    storing: asyncio.Future[list[tuple[str, int, str, str | None]]] | None = None
    try:
        async for batch in batches:
            stored = await storing if storing is not None else None
            storing = loop.run_in_executor(writer, _store_batch, con, batch)
            if not overlap:
                stored, storing = await storing, None
            if stored is not None:
                yield stored
        if storing is not None:
            yield await storing
    finally:
        await batches.aclose()  # the workers stop when the caller does


async def _index(ctx: OperationContext, p: IndexParams, con: sqlite3.Connection, db: str, writer: Executor) -> dict:
    root = Path(p.root)
    files = await list_files(ctx, root, p.patterns, p.exclude, own_files(db))  # an index inside the tree: not itself
    ctx.progress(total=len(files), step="indexing")
    st = ctx.state
    st.setdefault("bytes", 0)
    st.setdefault("reused", 0)
    seen = f"{ctx.id}"
    pending = await pending_items(ctx, con, db, files, root, lacking("SELECT path FROM files", index_name))
    loop = asyncio.get_running_loop()
    if len(pending) < len(files) and st.get("reading_since") is None:
        # A resume from a checkpoint of a version that kept no start (``pending_items`` finds the files changed
        # since it by their ctime): the files indexed before whose size or mtime changed are indexed again.
        todo = set(pending)
        done = [f for f in files if f not in todo]
        indexed = await loop.run_in_executor(writer, _previous, con, done)
        changed = await asyncio.to_thread(_changed, root, indexed)
        if changed:
            ctx.log.info(f"{len(changed)} files indexed by an earlier attempt changed since: indexed again")
            pending = sorted(todo.union(changed))
    prev = await loop.run_in_executor(writer, _previous, con, pending)
    batches = [pending[i : i + BATCH] for i in range(0, len(pending), BATCH)]
    workers = worker_count(len(pending))
    if workers:
        ctx.log.info(f"analysing {len(pending)} files in {workers} worker processes")
    languages = {language_of(f) for f in pending}
    for language, problem in (await asyncio.to_thread(parsers().check, languages)).items():
        ctx.log.warning(f"no symbols for {language} files: {problem}")  # a grammar that cannot be loaded
    args = [(root, rels, {r: prev[r] for r in rels if r in prev}, seen) for rels in batches]
    started, done_at_start = time.monotonic(), ctx.done
    analysed = in_order(analyze_batch, args, workers, ctx=ctx)
    async with contextlib.aclosing(_stored(con, writer, analysed, workers > 0)) as stored:
        async for results in stored:
            async for rel, size, outcome, why in ctx.items(results, key=lambda r: r[0]):
                if outcome == "failed":
                    ctx.fail(rel, why or "failed")
                    continue
                if outcome == "skipped":
                    ctx.skip(rel, why)
                    ctx.advance()  # looked at: a completed run is at 100%, skips or not
                    continue
                st["bytes"] += size
                st["reused"] += outcome == "reused"
                if why:  # indexed, read in another encoding than UTF-8
                    st["not_utf8"] = st.get("not_utf8", 0) + 1
                    if st["not_utf8"] <= NOT_UTF8_SAID:
                        ctx.log.info(f"{rel}: {why}")
                ctx.step = rel
                ctx.metrics["bytes"] = st["bytes"]
                ctx.metrics["current_file"] = rel
            elapsed = time.monotonic() - started
            if elapsed > 0:  # files per second in this attempt, per batch (the seed's "files per second")
                ctx.metrics["files_per_second"] = round((ctx.done - done_at_start) / elapsed, 1)
    if st.get("not_utf8", 0) > NOT_UTF8_SAID:
        ctx.log.info(f"{st['not_utf8']} files in all were not UTF-8 (the first {NOT_UTF8_SAID} are named above)")
    ctx.progress(step="finishing")
    listed = {index_name(f) for f in files}
    summary = await loop.run_in_executor(writer, _finish, con, seen, listed)
    return {"index": db, "failures": ctx.failures, "reused": st["reused"], **summary}
