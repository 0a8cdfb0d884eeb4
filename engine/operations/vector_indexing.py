"""vector_indexing: a TF-IDF vector for every chunk of the knowledge base, for ``outlast kb similar``.

No model to download: terms are hashed to 63-bit ids (the hashing trick, so no vocabulary to build or keep
in step), weighted by sublinear tf times smoothed idf and L2-normalised, so a dot product is the cosine.
Pure Python and SQLite: a vector is a set of rows ``vec_terms(chunk, term, w)`` beside the chunks, indexed
by term, so the nearest-neighbour query joins the query's few terms with that index and is exact
(knowledge.similar). Why not numpy or a vector library: the vectors are sparse (a chunk has a
hundred terms out of a vocabulary of tens of thousands), and SQLite already holds them where the chunks
are, transactionally.

Two steps: term counts per chunk (resumable per chunk, committed in batches before the chunks count as
done; a chunk whose text is unchanged since an earlier run keeps its counts), then the weights of all
chunks from the document frequencies, in one transaction (redone whole if interrupted).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..context import OperationContext
from ..registry import operation
from .kb_population import kb_path, kb_written
from .knowledge import beating, check_default_kb, existing_kb, open_kb, term_id, words

BATCH = 256
VEC_SCHEMA = """
CREATE TABLE IF NOT EXISTS vec_chunks (chunk INTEGER PRIMARY KEY, sha256 TEXT, made_by TEXT, norm REAL);
CREATE TABLE IF NOT EXISTS vec_terms (chunk INTEGER, term INTEGER, w REAL, PRIMARY KEY (chunk, term)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vec_terms_term ON vec_terms(term, chunk, w);
CREATE TABLE IF NOT EXISTS vec_df (term INTEGER PRIMARY KEY, df INTEGER, idf REAL) WITHOUT ROWID;
"""
"""A chunk's vector: weight(term) = w * idf(term) / norm, with w = 1 + ln(tf) stored per (chunk, term), idf
per term and the L2 norm per chunk: when the corpus changes, only the idf and the norms are computed again
(two scans), not every weight."""


class VectorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kb: str | None = Field(default=None, description="knowledge base file (default: kb.sqlite in the state dir)")
    min_df: int = Field(default=1, ge=1, le=1_000_000, description="leave out terms in fewer chunks than this")

    @field_validator("kb")
    @classmethod
    def _kb(cls, v: str | None) -> str | None:
        return existing_kb(v)

    @model_validator(mode="after")
    def _default_kb(self, info: ValidationInfo) -> VectorParams:
        check_default_kb(self.kb, info)
        return self


def _prepare(con: sqlite3.Connection, op_id: str) -> list[tuple[int, bool]]:
    """Drop vectors of chunks gone, changed or now duplicates; the chunks to count, by id: those without
    counts and those this operation counted in an earlier attempt (the same list on every attempt), each with
    whether it has counts now."""
    with con:
        con.executescript(VEC_SCHEMA)
        stale = [
            r[0]
            for r in con.execute(
                "SELECT v.chunk FROM vec_chunks v LEFT JOIN chunks c ON c.id=v.chunk"
                " WHERE c.id IS NULL OR c.dup_of IS NOT NULL OR c.sha256 IS NOT v.sha256"
            )
        ]
        con.executemany("DELETE FROM vec_terms WHERE chunk=?", [(i,) for i in stale])
        con.executemany("DELETE FROM vec_chunks WHERE chunk=?", [(i,) for i in stale])
    return [
        (r[0], bool(r[1]))
        for r in con.execute(
            "SELECT c.id, v.chunk IS NOT NULL FROM chunks c LEFT JOIN vec_chunks v ON v.chunk=c.id"
            " WHERE c.dup_of IS NULL AND (v.chunk IS NULL OR v.made_by=?) ORDER BY c.id",
            (op_id,),
        )
    ]


def _count_batch(con: sqlite3.Connection, ids: list[int], op_id: str) -> list[tuple[int, int]]:
    """Term counts of a batch of chunks, stored in one transaction; (chunk, distinct terms) per chunk."""
    q = ",".join("?" * len(ids))
    rows = con.execute(f"SELECT id, heading, text, sha256 FROM chunks WHERE id IN ({q})", ids).fetchall()
    again = [(r[0],) for r in con.execute(f"SELECT chunk FROM vec_chunks WHERE chunk IN ({q})", ids)]
    out: list[tuple[int, int]] = []
    terms: list[tuple[int, int, float]] = []
    made: list[tuple[int, str, str]] = []
    for cid, heading, text, sha in rows:
        counts = Counter(term_id(w) for w in words(f"{heading or ''}\n{text}"))
        terms += [(cid, t, 1.0 + math.log(c)) for t, c in sorted(counts.items())]
        made.append((cid, sha, op_id))
        out.append((cid, len(counts)))
    with con:
        con.executemany("DELETE FROM vec_terms WHERE chunk=?", again)  # counted by an attempt that died
        con.executemany("INSERT INTO vec_terms(chunk, term, w) VALUES (?,?,?)", terms)
        con.executemany("INSERT OR REPLACE INTO vec_chunks(chunk, sha256, made_by) VALUES (?,?,?)", made)
    return out


def _weigh(con: sqlite3.Connection, min_df: int) -> dict[str, int]:
    """The idf of every term and the norm of every vector, in one transaction."""
    con.create_function("ln", 1, math.log, deterministic=True)
    with con:
        n = con.execute("SELECT COUNT(*) FROM vec_chunks").fetchone()[0]
        con.execute("DELETE FROM vec_df")
        con.execute(
            "INSERT INTO vec_df SELECT term, COUNT(*), ln((1.0 + ?) / (1.0 + COUNT(*))) + 1.0 FROM vec_terms"
            " GROUP BY term HAVING COUNT(*) >= ?",
            (n, min_df),
        )
        norms = con.execute(
            "SELECT v.chunk, SUM(v.w * v.w * d.idf * d.idf) FROM vec_terms v JOIN vec_df d ON d.term=v.term"
            " GROUP BY v.chunk"
        ).fetchall()
        con.execute("UPDATE vec_chunks SET norm=NULL")
        con.executemany("UPDATE vec_chunks SET norm=? WHERE chunk=?", [(math.sqrt(s), c) for c, s in norms])
        con.execute("INSERT OR REPLACE INTO meta VALUES ('vec_chunks', ?)", (str(n),))
    return {"chunks": n, "terms": con.execute("SELECT COUNT(*) FROM vec_df").fetchone()[0]}


@operation("vector_indexing", params=VectorParams, description="TF-IDF vectors of the knowledge base's chunks")
async def index_vectors(ctx: OperationContext, p: VectorParams) -> dict:
    """Count the terms of every chunk not yet counted, then weigh all vectors; the result says how many. A full
    disk under the knowledge base fails the operation in one line naming it (resume it once there is room)."""
    db = kb_path(ctx, p.kb)
    with kb_written(db):
        return await _index_vectors(ctx, p, db)


async def _index_vectors(ctx: OperationContext, p: VectorParams, db: str) -> dict:
    con = await asyncio.to_thread(open_kb, db, False)
    try:
        ctx.progress(step="listing chunks")
        todo = await asyncio.to_thread(_prepare, con, ctx.id)
        # A chunk an earlier attempt counted (done) with no counts now is counted again: the knowledge base was
        # replaced or restored since (or a chunk removed since gave its id to a new one), and skipped, it was
        # left without a vector in a "completed" run.
        pending = [c for c, counted in todo if not (counted and ctx.is_done(str(c)))]
        ctx.progress(total=len(todo), step="counting terms")
        for i in range(0, len(pending), BATCH):
            results = await asyncio.to_thread(_count_batch, con, pending[i : i + BATCH], ctx.id)
            async for _cid, _n in ctx.items(results, key=lambda r: str(r[0])):
                pass
        ctx.progress(step="weighing")
        summary = await beating(ctx, "weighing", _weigh, con, p.min_df)
        made = con.execute("SELECT COUNT(*) FROM vec_chunks WHERE made_by=?", (ctx.id,)).fetchone()[0]
    finally:
        await asyncio.to_thread(con.close)
    return {"kb": db, "made": made, "reused": summary["chunks"] - made, **summary, "failures": ctx.failures}
