"""Example operations: what a plugin looks like.

``wordcount`` is written for Outlast from the start: a params model, ``ctx.items`` for per-file progress and
resume, ``ctx.state`` for results that survive a crash, ``ctx.fail`` for a file that cannot be read, and an
explicit ``ctx.checkpoint`` each time it moves on to another directory. ``populate_kb`` is existing code with a
``progress_callback``, turned into a ``notes_population`` operation by ``@migrate_timeout_operation``
without changing its callers.

Load it with ``outlast --plugin outlast_example.operations ...`` (the package directory on PYTHONPATH) or
install the package: its ``outlast.operations`` entry point registers it in every ``outlast``.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine import OperationContext, migrate_timeout_operation, operation

WORD = re.compile(r"[A-Za-z']+")


class WordCountParams(BaseModel):
    """Validated before anything is stored: a bad value is one line and exit code 2."""

    model_config = ConfigDict(extra="forbid")

    root: str = Field(description="directory whose text files are counted")
    suffixes: list[str] = Field(default=[".txt", ".md", ".rst"], description="file name endings to read")
    top: int = Field(default=10, ge=1, le=1000, description="how many of the most common words to return")
    seconds: float = Field(default=0.0, ge=0, le=60, description="pause per file (to watch it, or interrupt it)")

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        p = Path(v).expanduser()
        if not p.is_dir():
            raise ValueError(f"{v!r} is not an existing directory")
        return str(p.resolve())


def _count(path: Path) -> collections.Counter[str]:
    text = path.read_text(encoding="utf-8")  # UnicodeDecodeError: the item fails, the operation goes on
    return collections.Counter(w.lower() for w in WORD.findall(text))


@operation("wordcount", params=WordCountParams, description="count words in a tree's text files")
async def wordcount(ctx: OperationContext, p: WordCountParams) -> dict:
    """The most common words under ``root``; resumable per file."""
    root = Path(p.root)
    files = sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file() and f.suffix.lower() in p.suffixes)
    # ctx.state is restored from the newest checkpoint on resume: the counts of the files done so far.
    counts: dict[str, int] = ctx.state.setdefault("counts", {})
    ctx.state.setdefault("files", 0)
    if ctx.resuming:
        ctx.log.info(f"resuming after {ctx.state['files']} files", next_step=ctx.resume_data["next_step"])
    directory = None
    # ctx.items skips files done before a resume, reports progress, and checkpoints at item boundaries.
    async for rel in ctx.items(files):
        if p.seconds:
            await asyncio.sleep(p.seconds)
        try:
            found = await asyncio.to_thread(_count, root / rel)  # blocking work off the event loop
        except (OSError, UnicodeDecodeError) as e:
            ctx.fail(rel, e)  # recorded, logged, counted against failure_threshold; the loop goes on
            continue
        for word, n in found.items():
            counts[word] = counts.get(word, 0) + n
        ctx.state["files"] += 1
        ctx.step = rel
        parent = str(Path(rel).parent)
        if parent != directory:
            directory = parent
            # Asked for inside an item: saved at the end of this item, so state and done-set agree.
            await ctx.checkpoint(next_step=f"after {parent}")
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: p.top]
    return {"files": ctx.state["files"], "words": sum(counts.values()), "top": top}


# ---- the seed's migration pattern -------------------------------------------------------------------


class KbParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    docs: list[str] = Field(description="documents to add to the knowledge base")
    seconds: float = Field(default=0.0, ge=0, le=60, description="time per document")


@migrate_timeout_operation("notes_population", estimated_items=100, params=KbParams)
async def populate_kb(
    docs: list[str], seconds: float = 0.0, progress_callback: Callable[..., None] | None = None
) -> dict:
    """Add documents to a knowledge base (existing code, migrated).

    Unchanged: it reports through ``progress_callback`` and its callers still call it directly; run as
    ``outlast run notes_population`` it reports to the engine and gets the type's timeout profile."""
    added = []
    for i, doc in enumerate(docs):
        await asyncio.sleep(seconds)
        added.append(doc.strip().lower())
        if progress_callback is not None:
            progress_callback(i + 1, total=len(docs), message=f"added {doc}")
    return {"added": len(added), "documents": added}
