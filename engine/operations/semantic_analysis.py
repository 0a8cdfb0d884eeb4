"""semantic_analysis: keywords per document, the corpus's main topics, and near-duplicate documents.

Over the knowledge base (default) or over a source tree (``root``: every text file under it but pictures
(SVG), a file of markup read for its text without the tags). Pure Python:
keywords are the terms with the highest TF-IDF in a document (document frequencies over the corpus);
topics are the keywords shared by the most documents; near-duplicates are found with bottom-k MinHash
sketches of word 4-gram shingles (128 hashes per document: the Jaccard similarity of two documents is
estimated from their sketches, with a standard error of about 0.03 at 0.8), candidate pairs from shared
sketch values, pairs at or above ``threshold`` kept. A library (datasketch) would bring numpy and scipy
for what is here sixty lines.

Two steps: per document (resumable, committed in batches before the documents count as done; a document
whose sha256 is unchanged keeps its terms and sketch), then keywords, topics and pairs over all of them
in one transaction (redone whole if interrupted). Results are stored in ``sem_*`` tables: in the
knowledge base, or for a tree in ``output`` (an SQLite file, by default in the state dir), whose ``meta`` table
says it is a semantic_analysis database (written with its tables, in one transaction): another program's
database, or another operation's (an index, say), is not written into.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import math
import sqlite3
from array import array
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..context import OperationContext
from ..files import create_private
from ..registry import operation
from ..text import stored_name
from ._common import SQLITE_MAGIC, NotInTree, check_output_file, existing_dir, open_in_tree, output_dir
from ._docs import IMAGE_SUFFIXES, NotADocument, kind_of, markup_heavy, sections
from ._results_db import check_kind, create_tables, exclusive, lacking, pending_items
from ._walk import list_files, own_files
from .kb_population import kb_path, kb_written
from .knowledge import beating, check_default_kb, existing_kb, open_kb, words

BATCH = 128
SKETCH = 128
"""Hashes in a bottom-k MinHash sketch."""
SHINGLE = 4
TERMS_KEPT = 300
"""Most frequent terms kept per document (document frequencies are counted over these)."""
MAX_TEXT = 8 << 20
SEM_SCHEMA = """
CREATE TABLE IF NOT EXISTS sem_docs (
    scope TEXT, key TEXT, sha256 TEXT, words INTEGER, terms TEXT, sketch BLOB, made_by TEXT, PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS sem_keywords (scope TEXT, key TEXT, rank INTEGER, term TEXT, score REAL,
    PRIMARY KEY (scope, key, rank));
CREATE INDEX IF NOT EXISTS sem_keywords_term ON sem_keywords(term);
CREATE TABLE IF NOT EXISTS sem_topics (
    scope TEXT, rank INTEGER, term TEXT, documents INTEGER, PRIMARY KEY (scope, rank)
);
CREATE TABLE IF NOT EXISTS sem_duplicates (scope TEXT, a TEXT, b TEXT, similarity REAL, PRIMARY KEY (scope, a, b));
"""
OLD_TABLES = frozenset({"sem_docs", "sem_keywords", "sem_topics", "sem_duplicates", "outlast_run"})
"""The tables of a tree's results written before they said their kind in ``meta``."""


def _check_output(value: str | None) -> str | None:
    """A results database of semantic_analysis, or none yet: only its SQLite header was checked, so another
    program's database (or an index) was written into."""
    return check_kind(value, "output", "semantic_analysis", OLD_TABLES, SEM_SCHEMA)


class SemanticParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # nan was refused as "more than the most"

    kb: str | None = Field(default=None, description="knowledge base to analyse (default: the state dir's)")
    root: str | None = Field(default=None, description="analyse the text files of this tree instead of a kb")
    output: str | None = Field(default=None, description="with root: SQLite results file (default: in the state dir)")
    patterns: list[str] = Field(default_factory=list, description="with root: glob patterns of files to include")
    exclude: list[str] = Field(default_factory=list, description="with root: glob patterns of files to leave out")
    keywords: int = Field(default=10, ge=1, le=100, description="keywords kept per document")
    topics: int = Field(default=20, ge=1, le=1000, description="topics in the summary")
    threshold: float = Field(default=0.8, gt=0, le=1, description="estimated Jaccard similarity of near-duplicates")

    @field_validator("kb")
    @classmethod
    def _kb(cls, v: str | None) -> str | None:
        return existing_kb(v)

    @field_validator("root")
    @classmethod
    def _root(cls, v: str | None) -> str | None:
        return None if v is None else existing_dir(v, "root")

    @field_validator("output")
    @classmethod
    def _output(cls, v: str | None) -> str | None:
        return _check_output(check_output_file(v, "output", SQLITE_MAGIC, "an SQLite database"))

    @model_validator(mode="after")
    def _one_corpus(self, info: ValidationInfo) -> SemanticParams:
        if self.kb is not None and self.root is not None:
            raise ValueError("give kb or root, not both")
        if self.root is None and (self.output or self.patterns or self.exclude):
            raise ValueError("output, patterns and exclude go with root (a tree), not with a knowledge base")
        if self.root is None:
            check_default_kb(self.kb, info)
        return self


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def sketch(tokens: list[str]) -> list[int]:
    """Bottom-k MinHash of the word shingles: the SKETCH smallest 64-bit hashes, ascending."""
    if len(tokens) < SHINGLE:
        shingles = {" ".join(tokens)} if tokens else set()
    else:
        shingles = {" ".join(tokens[i : i + SHINGLE]) for i in range(len(tokens) - SHINGLE + 1)}
    return heapq.nsmallest(SKETCH, {_h64(s.encode()) for s in shingles})


def jaccard(a: list[int], b: list[int]) -> float:
    """The bottom-k estimate: of the k smallest hashes of the union, the share found in both sketches."""
    if not a or not b:
        return 0.0
    sa, sb = set(a), set(b)
    union = heapq.nsmallest(min(SKETCH, len(sa | sb)), sa | sb)
    return sum(1 for h in union if h in sa and h in sb) / len(union)


def _analyse(text: str) -> tuple[int, dict[str, int], bytes]:
    """(word count, the most frequent terms with counts, the packed sketch) of a document."""
    toks = words(text)
    terms = dict(Counter(toks).most_common(TERMS_KEPT))
    return len(toks), terms, array("Q", sketch(toks)).tobytes()


def _open(db: str, create: bool) -> sqlite3.Connection:
    if create:
        create_private(Path(db))
        con = sqlite3.connect(db, timeout=60, check_same_thread=False)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            create_tables(con, SEM_SCHEMA, {"kind": "semantic_analysis"})
        except BaseException:
            con.close()
            raise
        return con
    con = open_kb(db, create=False)
    con.executescript(SEM_SCHEMA)
    return con


# ---- the corpus: documents of the knowledge base, or files of a tree ---------------------------------------


def _kb_docs(con: sqlite3.Connection) -> dict[str, tuple[int, str]]:
    """Key (source/path) -> (document id, sha256)."""
    return {
        f"{src.rstrip('/')}/{path}": (doc, sha)
        for doc, src, path, sha in con.execute("SELECT id, source, path, sha256 FROM documents ORDER BY source, path")
    }


def _not_stored(con: sqlite3.Connection, corpus: dict[str, tuple[int, str]], done: list[str]) -> set[str]:
    """The documents of the knowledge base an earlier attempt analysed (``done``) with no results for the text
    the knowledge base holds now: it was restored or replaced since, or the document populated again. Skipped
    as done, a "completed" run kept no keywords for them, or the old text's."""
    stored = dict(con.execute("SELECT key, sha256 FROM sem_docs WHERE scope='kb'").fetchall())
    return {k for k in done if stored.get(k) != corpus[k][1]}


def _kb_text(con: sqlite3.Connection, doc: int) -> str:
    return "\n\n".join(
        r[0]
        for r in con.execute(
            "SELECT COALESCE(heading, '') || '\n' || text FROM chunks WHERE doc=? ORDER BY seq", (doc,)
        )
    )


def _tree_text(root: Path, rel: str) -> tuple[str | None, str, str | None]:
    """(text or None, sha256, why skipped or failed: "skip: ..." for a binary file)."""
    try:
        p = root / rel
        if not p.is_file() or p.is_symlink():
            return None, "", "skip: not a regular file"
        if p.stat().st_size > MAX_TEXT:
            return None, "", "skip: larger than 8 MiB"
        fh, _st = open_in_tree(root, rel)
        with fh:
            data = fh.read()
    except FileNotFoundError:
        return None, "", "skip: gone since the listing"
    except NotInTree as e:
        return None, "", f"skip: {e}"
    except OSError as e:
        return None, "", f"unreadable: {e.strerror or e}"
    sha = hashlib.sha256(data).hexdigest()
    if PurePosixPath(rel).suffix.lower() in IMAGE_SUFFIXES:
        return None, sha, "skip: a picture (SVG), not text"
    try:
        _title, secs = sections(kind_of(rel) or ("html" if markup_heavy(data) else "text"), data)
    except NotADocument as e:
        return None, sha, f"skip: {e}"
    return "\n\n".join(f"{h or ''}\n{t}" for h, t in secs), sha, None


Outcome = tuple[str, str, str | None]
"""(key, "analysed" | "reused" | "skipped" | "failed", why)."""


def _stored(key: str, tree: bool) -> str:
    """The key the results store for document ``key``: a tree's file name as ``stored_name`` makes it (a byte
    that is not UTF-8 as ``\\xNN``, as TEXT stores text only; a backslash doubled, so two files never share a
    key); a knowledge base's key (source/path) as it is, already a stored name."""
    return stored_name(key) if tree else key


def _batch(
    con: sqlite3.Connection, scope: str, keys: list[str], corpus: dict[str, Any], root: Path | None, op_id: str
) -> list[Outcome]:
    """Analyse a batch of documents and store their terms and sketches in one transaction. The results name
    document ``key`` ``_stored(key, tree)`` (see there)."""
    tree = root is not None
    names = {_stored(k, tree): k for k in keys}
    q = ",".join("?" * len(names))
    prev = {
        names[r[0]]: (r[1], r[2])
        for r in con.execute(
            f"SELECT key, sha256, made_by FROM sem_docs WHERE scope=? AND key IN ({q})", [scope, *names]
        )
    }
    out: list[Outcome] = []
    rows = []
    for key in keys:
        if root is None:
            doc, sha = corpus[key]
            if key in prev and prev[key][0] == sha:
                out.append((key, "analysed" if prev[key][1] == op_id else "reused", None))
                continue
            text: str | None = _kb_text(con, doc)
        else:
            text, sha, why = _tree_text(root, key)
            if text is None:
                skipped = why is not None and why.startswith("skip: ")
                out.append((key, "skipped" if skipped else "failed", why[6:] if skipped and why else why))
                continue
            if key in prev and prev[key][0] == sha:
                out.append((key, "analysed" if prev[key][1] == op_id else "reused", None))
                continue
        n, terms, sk = _analyse(text or "")
        rows.append((scope, _stored(key, tree), sha, n, json.dumps(terms), sk, op_id))
        out.append((key, "analysed", None))
    with con:
        con.executemany("INSERT OR REPLACE INTO sem_docs VALUES (?,?,?,?,?,?,?)", rows)
        con.executemany(  # a file that no longer reads keeps no results of an earlier run
            "DELETE FROM sem_docs WHERE scope=? AND key=?",
            [(scope, _stored(k, tree)) for k, o, _ in out if o in ("skipped", "failed")],
        )
    return out


def _summarise(con: sqlite3.Connection, scope: str, keys: list[str], p: SemanticParams, op_id: str) -> dict[str, Any]:
    """Keywords, topics and near-duplicate pairs over the analysed documents, stored in one transaction."""
    with con:
        have = {_stored(k, p.root is not None) for k in keys}  # as _batch stores them
        gone = [(scope, k) for (k,) in con.execute("SELECT key FROM sem_docs WHERE scope=?", (scope,)) if k not in have]
        con.executemany("DELETE FROM sem_docs WHERE scope=? AND key=?", gone)
        docs = [
            (k, json.loads(t), array("Q", sk).tolist())
            for k, t, sk in con.execute("SELECT key, terms, sketch FROM sem_docs WHERE scope=? ORDER BY key", (scope,))
        ]
        # Counted from the rows, not item by item: a document an earlier attempt analysed and that is gone
        # since (deleted, renamed) was counted as analysed beside the documents there are.
        (mine,) = con.execute("SELECT COUNT(*) FROM sem_docs WHERE scope=? AND made_by=?", (scope, op_id)).fetchone()
        n = len(docs)
        df = Counter(t for _, terms, _ in docs for t in terms)
        keywords: list[tuple[str, str, int, str, float]] = []
        shared: Counter[str] = Counter()
        for key, terms, _ in docs:
            scored = sorted(((1 + math.log(c)) * (math.log((1 + n) / (1 + df[t])) + 1), t) for t, c in terms.items())
            top = sorted(scored, key=lambda st: (-st[0], st[1]))[: p.keywords]
            keywords += [(scope, key, i, t, round(s, 4)) for i, (s, t) in enumerate(top, 1)]
            shared.update(t for _, t in top)
        topics = sorted(shared.items(), key=lambda kv: (-kv[1], kv[0]))[: p.topics]
        pairs = _near_duplicates(docs, p.threshold)
        con.execute("DELETE FROM sem_keywords WHERE scope=?", (scope,))
        con.execute("DELETE FROM sem_topics WHERE scope=?", (scope,))
        con.execute("DELETE FROM sem_duplicates WHERE scope=?", (scope,))
        con.executemany("INSERT INTO sem_keywords VALUES (?,?,?,?,?)", keywords)
        con.executemany(
            "INSERT INTO sem_topics VALUES (?,?,?,?)", [(scope, i, t, c) for i, (t, c) in enumerate(topics, 1)]
        )
        con.executemany("INSERT INTO sem_duplicates VALUES (?,?,?,?)", [(scope, *pair) for pair in pairs])
    return {
        "analysed": mine,
        "reused": n - mine,
        "documents": n,
        "topics": [[t, c] for t, c in topics[:10]],
        "duplicates": len(pairs),
        "duplicate_pairs": [list(x) for x in pairs[:10]],
    }


def _near_duplicates(docs: list[tuple[str, dict, list[int]]], threshold: float) -> list[tuple[str, str, float]]:
    """Pairs of documents whose estimated Jaccard similarity is at least ``threshold``, most similar first.

    Candidates share at least threshold / 2 of the values of the shorter sketch (the bottom-k sketches of
    sets with Jaccard similarity J share about 2J/(1+J) of their k values: well above J/2)."""
    postings: dict[int, list[int]] = defaultdict(list)
    for i, (_, _, sk) in enumerate(docs):
        for h in sk:
            postings[h].append(i)
    together: Counter[tuple[int, int]] = Counter()
    for ids in postings.values():
        if 1 < len(ids) <= 1000:  # a value in very many documents (empty or tiny ones): no evidence of a pair
            for x in range(len(ids)):
                for y in range(x + 1, len(ids)):
                    together[(ids[x], ids[y])] += 1
    out = []
    for (i, j), shared in together.items():
        if shared >= threshold / 2 * min(len(docs[i][2]), len(docs[j][2])):
            s = jaccard(docs[i][2], docs[j][2])
            if s >= threshold:
                out.append((docs[i][0], docs[j][0], round(s, 4)))
    return sorted(out, key=lambda x: (-x[2], x[0], x[1]))


@operation("semantic_analysis", params=SemanticParams, description="keywords, topics and near-duplicates of documents")
async def analyse(ctx: OperationContext, p: SemanticParams) -> dict:
    """Analyse every document, then summarise; the result gives the topics and near-duplicate pairs. A full disk
    under the results (or the knowledge base) fails the operation in one line naming them."""
    if p.root is not None:
        db = (
            str(Path(p.output).expanduser().resolve())
            if p.output
            else str(output_dir(ctx) / f"semantic-{hashlib.sha1(p.root.encode()).hexdigest()[:12]}.sqlite")
        )
        scope, root = p.root, Path(p.root)
    else:
        db, scope, root = kb_path(ctx, p.kb), "kb", None
    ctx.progress(step="listing documents")
    with exclusive(db, _check_output) if root is not None else kb_written(db):
        return await _analyse_into(ctx, p, db, scope, root)


async def _analyse_into(ctx: OperationContext, p: SemanticParams, db: str, scope: str, root: Path | None) -> dict:
    con = await asyncio.to_thread(_open, db, root is not None)
    try:
        corpus: dict[str, Any] = {}
        if root is None:
            corpus = await asyncio.to_thread(_kb_docs, con)
            keys = list(corpus)
        else:
            keys = await list_files(ctx, root, p.patterns, p.exclude, own_files(db))
        st = ctx.state  # documents analysed and reused so far (the result counts them from the rows)
        st.setdefault("analysed", 0)
        st.setdefault("reused", 0)
        ctx.progress(total=len(keys), step="analysing")
        # A tree's results file may have been deleted or replaced since the last attempt (a knowledge base
        # is checked when it is opened).
        if root is not None:
            stored = lacking("SELECT key FROM sem_docs WHERE scope=?", stored_name, scope)
            pending = await pending_items(ctx, con, db, keys, root, stored)
        else:
            done = [k for k in keys if ctx.is_done(k)] if ctx.done_keys else []
            again = await asyncio.to_thread(_not_stored, con, corpus, done) if done else set()
            if again:
                ctx.log.info(f"{len(again)} documents analysed by an earlier attempt have no results now: again")
            pending = [k for k in keys if k in again or not ctx.is_done(k)]
        for i in range(0, len(pending), BATCH):
            results = await asyncio.to_thread(_batch, con, scope, pending[i : i + BATCH], corpus, root, ctx.id)
            async for key, outcome, why in ctx.items(results, key=lambda r: r[0]):
                if outcome == "failed":
                    ctx.fail(key, why or "failed")
                elif outcome == "skipped":
                    ctx.skip(key, why)
                    ctx.advance()  # looked at: a completed run is at 100%, skips or not
                else:
                    st[outcome] += 1
                    ctx.step = key
        ctx.progress(step="keywords, topics, duplicates")
        summary = await beating(ctx, "summary", _summarise, con, scope, keys, p, ctx.id)
    finally:
        await asyncio.to_thread(con.close)
    counts = {k: summary.pop(k) for k in ("analysed", "reused")}
    return {"results": db, **counts, "failures": ctx.failures, **summary}
