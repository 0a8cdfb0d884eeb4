"""kb_optimization: dedupe identical chunks, merge and optimise the FTS5 index, check it, vacuum the file.

Steps, each an item (so a resume goes on at the first unfinished one, and each is safe to redo):

- ``dedupe:SHA``, one per group of identical chunks: the first chunk stays in the full-text index, the others
  point at it (``dup_of``) and leave the index, so a search shows each text once (with how many copies
  there are). Committed in batches before the groups count as done.
- ``merge``: FTS5's incremental merge, a bounded amount of work per transaction until nothing is left
  (a kill loses one step; what was merged stays merged).
- ``optimize``: FTS5's optimize (one b-tree per index), then its integrity check.
- ``vacuum``: SQLite's VACUUM and a WAL truncation: the file gives back the pages it no longer uses.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..context import OperationContext
from ..registry import operation
from .kb_population import kb_path, kb_written
from .knowledge import beating, check_default_kb, drop_vectors, existing_kb, open_kb, unindex_chunks

BATCH = 500


class KbOptimizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kb: str | None = Field(default=None, description="knowledge base file (default: kb.sqlite in the state dir)")
    dedupe: bool = Field(default=True, description="take identical chunks out of the full-text index but one")
    vacuum: bool = Field(default=True, description="rewrite the file without its free pages")
    merge_pages: int = Field(default=500, ge=16, le=1_000_000, description="FTS5 pages merged per transaction")

    @field_validator("kb")
    @classmethod
    def _kb(cls, v: str | None) -> str | None:
        return existing_kb(v)

    @model_validator(mode="after")
    def _default_kb(self, info: ValidationInfo) -> KbOptimizeParams:
        check_default_kb(self.kb, info)
        return self


def _groups(con: sqlite3.Connection) -> list[str]:
    """The sha256 of every text held by more than one chunk still in the index."""
    return [
        r[0]
        for r in con.execute(
            "SELECT sha256 FROM chunks WHERE dup_of IS NULL GROUP BY sha256 HAVING COUNT(*) > 1 ORDER BY sha256"
        )
    ]


def _dedupe_batch(con: sqlite3.Connection, shas: list[str]) -> list[tuple[str, int]]:
    """Keep the first chunk of each group in the index, point the others at it; (sha, copies) per group."""
    out = []
    with con:
        for sha in shas:
            ids = [
                r[0] for r in con.execute("SELECT id FROM chunks WHERE sha256=? AND dup_of IS NULL ORDER BY id", (sha,))
            ]
            keep, others = ids[0], ids[1:]
            unindex_chunks(con, others)
            drop_vectors(con, others)
            q = ",".join("?" * len(others))
            con.execute(f"UPDATE chunks SET dup_of=? WHERE id IN ({q}) OR dup_of IN ({q})", [keep, *others, *others])
            out.append((sha, len(others)))
    return out


def _merge_step(con: sqlite3.Connection, pages: int) -> bool:
    """One bounded FTS5 merge in its own transaction; False when there was nothing left to merge."""
    with con:
        before = con.total_changes
        con.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('merge', ?)", (pages,))
        return con.total_changes - before >= 2  # SQLite's documented test for "work was done"


def _optimize(con: sqlite3.Connection) -> None:
    with con:
        con.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('optimize')")
    con.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")  # raises when corrupt
    con.commit()


def _vacuum(con: sqlite3.Connection) -> None:
    con.execute("VACUUM")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("ANALYZE")
    con.commit()


def _size(db: str) -> int:
    return sum(os.path.getsize(db + s) for s in ("", "-wal") if os.path.exists(db + s))


@operation("kb_optimization", params=KbOptimizeParams, description="dedupe, optimise and vacuum a knowledge base")
async def optimize(ctx: OperationContext, p: KbOptimizeParams) -> dict:
    """Dedupe, merge, optimise, vacuum; the result gives the duplicates and the file's size before and after. A
    full disk under the knowledge base fails the operation in one line naming it (resume it once there is room)."""
    db = kb_path(ctx, p.kb)
    with kb_written(db):
        return await _optimize_kb(ctx, p, db)


async def _optimize_kb(ctx: OperationContext, p: KbOptimizeParams, db: str) -> dict:
    con = await asyncio.to_thread(open_kb, db, False)
    st = ctx.state
    try:
        groups = await asyncio.to_thread(_groups, con) if p.dedupe else []
        if "bytes_before" not in st:
            # Kept durably before anything changes: a resume measured the size anew (the file grown by the
            # dedupe of the attempt before: 71 MB "before", where the first attempt began at 35 MB), and the
            # groups that attempt deduped after its last checkpoint were no groups any more (104 items: 3).
            st["bytes_before"] = await asyncio.to_thread(_size, db)
            st["groups"] = len(groups)
            await ctx.checkpoint(next_step="deduplicating", now=True)
        steps = ["merge", "optimize"] + (["vacuum"] if p.vacuum else [])
        total = max(st.get("groups", 0), len(groups))
        ctx.progress(total=total + len(steps), step="deduplicating")
        done = sum(1 for k in ctx.done_keys if k.startswith("dedupe:"))
        if gone := total - len(groups) - done:  # deduped after the last checkpoint: done, as the database says
            ctx.progress(done=ctx.done + max(0, gone))
        # Every group the database still holds, done or not: a done one is there again when the knowledge base
        # was restored since (skipped, a "completed" run left its copies in the index).
        for i in range(0, len(groups), BATCH):
            results = await asyncio.to_thread(_dedupe_batch, con, groups[i : i + BATCH])
            async for _sha, _n in ctx.items(results, key=lambda r: f"dedupe:{r[0]}"):
                pass
        async for step in ctx.items(steps):
            ctx.step = step
            if step == "merge":
                n = 0
                while await asyncio.to_thread(_merge_step, con, p.merge_pages):
                    n += 1
                    ctx.progress(merge_steps=n)  # work inside one item: not stalled
            elif step == "optimize":
                await beating(ctx, "optimize", _optimize, con)
            else:
                await beating(ctx, "vacuum", _vacuum, con)
        dups, copies = con.execute(
            "SELECT COUNT(DISTINCT dup_of), COUNT(*) FROM chunks WHERE dup_of IS NOT NULL"
        ).fetchone()
        chunks = con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
    finally:
        await asyncio.to_thread(con.close)
    return {
        "kb": db,
        "chunks": chunks,
        "indexed": chunks - copies,
        "duplicate_groups": dups,
        "duplicates": copies,
        "bytes_before": st["bytes_before"],
        "bytes_after": await asyncio.to_thread(_size, db),
        "failures": ctx.failures,
    }
