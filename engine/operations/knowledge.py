"""The local knowledge base shared by kb_population, kb_optimization, vector_indexing and semantic_analysis.

One SQLite file: ``documents`` (one row per source file, with its sha256 for incremental runs), ``chunks``
(the text, in document order, with the heading it sits under) and ``chunks_fts``, an FTS5 index over the
chunks (external content: the text is stored once, in ``chunks``). A chunk is in the full-text index
exactly when ``dup_of`` is NULL: kb_optimization points identical chunks at the first one and takes them
out of the index, so a search returns each text once. vector_indexing adds ``vec_terms``/``vec_df``,
semantic_analysis its ``sem_*`` tables. The queries behind ``outlast kb search`` and ``outlast kb similar``
are here too, so the command line and the handlers read the same schema.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import os
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..files import create_private
from ..shortage import files_short_opening
from ._common import SQLITE_MAGIC, peek, read_only_uri

if TYPE_CHECKING:
    from pydantic import ValidationInfo

T = TypeVar("T")
KB_FILE = "kb.sqlite"
"""The default knowledge base: this file in the state directory's ``outputs``."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, path TEXT NOT NULL, kind TEXT, title TEXT,
    size INTEGER, sha256 TEXT, chunks INTEGER, stored_by TEXT, seen TEXT, UNIQUE (source, path)
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, doc INTEGER NOT NULL, seq INTEGER NOT NULL, heading TEXT, text TEXT NOT NULL,
    sha256 TEXT NOT NULL, dup_of INTEGER
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc, seq);
CREATE INDEX IF NOT EXISTS chunks_sha ON chunks(sha256);
CREATE INDEX IF NOT EXISTS chunks_dup ON chunks(dup_of) WHERE dup_of IS NOT NULL;
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, heading, content='chunks', content_rowid='id', tokenize='porter unicode61'
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class KbError(ValueError):
    """The knowledge base cannot be used as asked (missing, not a knowledge base, a bad query)."""


def default_kb(state_dir: str | Path) -> Path:
    """Where the knowledge base is when no ``kb`` is given: ``outputs/kb.sqlite`` in the state directory."""
    return Path(state_dir).expanduser() / "outputs" / KB_FILE


def check_default_kb(kb: str | None, info: ValidationInfo) -> None:
    """No ``kb``: the state dir's default knowledge base must exist, when the submitting engine says which
    state dir that is (validation context ``state_dir``: a local store's). Unchecked, the operation was
    stored and then failed (KbError), with a "resume with" hint no resume could help."""
    state_dir = info.context.get("state_dir") if isinstance(info.context, dict) else None
    if kb is None and state_dir is not None:
        default = default_kb(state_dir)
        if not default.is_file():
            raise ValueError(
                f"kb: not given, and the default knowledge base {str(default)!r} does not exist"
                " (make one: outlast run kb_population -p source=DIR)"
            )
        existing_kb(str(default))  # an SQLite file, or one line saying what it is


def existing_kb(value: str | None, name: str = "kb") -> str | None:
    """``value`` resolved when it is an existing SQLite file the operation can write, else a ValueError naming
    ``name`` (None: the default). Writable (the file, and its directory for SQLite's journal): on a read-only
    file system the operation was stored and failed at once, "KbError: ...: unable to open database file (at
    knowledge.py:NNN)", with a resume hint no resume could help."""
    if value is None:
        return None
    p = Path(value).expanduser()
    if not p.is_file():
        raise ValueError(f"{name} {value!r} is not an existing file (make one: outlast run kb_population)")
    try:
        with open(p, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise ValueError(f"{name} {value!r}: {e.strerror or e}") from None
    if head != SQLITE_MAGIC:
        raise ValueError(f"{name} {value!r} is not a knowledge base (not an SQLite database)")
    try:
        check_kb_tables(p)
    except KbError as e:
        raise ValueError(f"{name} {value!r} {e}") from None
    if not os.access(p.resolve().parent, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {value!r}: its directory is not writable")
    if not os.access(p, os.W_OK):
        raise ValueError(f"{name} {value!r} exists and is not writable")
    return str(p.resolve())


def check_kb_tables(p: Path, create: bool = False) -> bool:
    """Whether the SQLite file ``p`` holds a knowledge base (False: no table yet); a KbError when it holds
    another program's tables. Read without changing it (``peek``): ``journal_mode=WAL`` was set on it first,
    so ``outlast kb search --kb app.db`` turned another program's database into a WAL one, and
    kb_population wrote its tables beside another program's."""
    if not p.is_file() or p.stat().st_size == 0:
        return False
    what = f"the knowledge base {str(p)!r}"
    try:
        with peek(p) as con:
            try:
                names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            except sqlite3.DatabaseError as e:
                if (short := files_short_opening(what, e)) is not None:  # asked while it is open
                    raise short from None
                raise
    except sqlite3.DatabaseError as e:
        if (short := files_short_opening(what, e)) is not None:
            raise short from None
        raise KbError(f"cannot be read as SQLite: {e}") from None
    if names and "chunks_fts" not in names:
        what = (
            "is another program's database, not a knowledge base: choose another path"
            if create
            else "is an SQLite database but not a knowledge base (no chunks_fts table)"
        )
        raise KbError(what)
    return bool(names)


def open_kb(path: str | Path, create: bool = True, read_only: bool = False) -> sqlite3.Connection:
    """A connection to the knowledge base at ``path`` (created with its schema when ``create``).

    WAL mode: searches never block a running population, and a commit is one fsync. ``read_only``: opened as
    ``peek`` opens a file, for a search of a knowledge base it cannot write (on a read-only file system, or
    another user's): opened to write, SQLite said "unable to open database file".
    """
    p = Path(path)
    # A knowledge base being made (a first kb_population from its first second on) is an empty file, then
    # an SQLite database with no table: a search then was told it "is not a knowledge base".
    not_yet = f"no knowledge base at {str(p)!r} yet: it is being made (or was left empty); search again once"
    not_yet += " kb_population has stored documents"
    if not create:
        if not p.is_file():
            raise KbError(f"no knowledge base at {str(p)!r} (make one: outlast run kb_population -p source=DIR)")
        with open(p, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
        if not head:
            raise KbError(not_yet)
        if not head.startswith(SQLITE_MAGIC):
            raise KbError(f"{str(p)!r} is not a knowledge base (not an SQLite database)")
    try:
        check_kb_tables(p, create)  # before anything is written into it (its journal mode included)
    except KbError as e:
        raise KbError(f"{str(p)!r} {e}") from None
    if create:
        create_private(p)  # its journal files take its mode
    try:
        if read_only:
            con = sqlite3.connect(read_only_uri(p), uri=True, timeout=60, check_same_thread=False)
        else:
            con = sqlite3.connect(p, timeout=60, check_same_thread=False)
    except sqlite3.Error as e:
        # "unable to open database file" under a tight ``ulimit -n`` named nothing wrong with the file.
        if (short := files_short_opening(f"the knowledge base {str(p)!r}", e)) is not None:
            raise short from None
        raise
    try:
        if not read_only:
            con.execute("PRAGMA journal_mode=WAL")
        if create:
            con.executescript(f"BEGIN;\n{SCHEMA}COMMIT;\n")  # every table at once, or none
        elif not con.execute("SELECT 1 FROM sqlite_master WHERE name='chunks_fts'").fetchone():
            if not con.execute("SELECT 1 FROM sqlite_master").fetchone():
                raise KbError(not_yet)
            raise KbError(f"{str(p)!r} is an SQLite database but not a knowledge base (no chunks_fts table)")
    except sqlite3.DatabaseError as e:
        short = files_short_opening(f"the knowledge base {str(p)!r}", e)  # its WAL: asked while it is open
        con.close()
        if short is not None:
            raise short from None
        if isinstance(e, sqlite3.OperationalError) and "fts5" in str(e):
            raise KbError("this Python's SQLite has no FTS5: the knowledge base needs it") from None
        raise KbError(f"{str(p)!r}: {e}") from None
    except BaseException:
        con.close()
        raise
    return con


async def beating(ctx: Any, label: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread, reporting its seconds so far every few seconds: one long SQLite step (a
    VACUUM, the weighing of every vector) is progress, not a stall. A stop asked for meanwhile takes
    effect after the step (the connection must not be closed under it)."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    start = time.monotonic()
    while not (await asyncio.wait({task}, timeout=BEAT))[0]:
        if not ctx.cancelled:
            ctx.progress(**{f"{label}_seconds": round(time.monotonic() - start)})
    return task.result()


BEAT = 5.0
"""Seconds between the reports of a long step."""


# ---- changing chunks while keeping the full-text index in step ----------------------------------------


def index_chunks(con: sqlite3.Connection, ids: list[int]) -> None:
    """Add chunks (by id) to the full-text index."""
    con.executemany(
        "INSERT INTO chunks_fts(rowid, text, heading) SELECT id, text, heading FROM chunks WHERE id=?",
        [(i,) for i in ids],
    )


def unindex_chunks(con: sqlite3.Connection, ids: list[int]) -> None:
    """Take chunks (by id) out of the full-text index (they must be in it: FTS5's 'delete' needs the
    values that were indexed)."""
    con.executemany(
        "INSERT INTO chunks_fts(chunks_fts, rowid, text, heading) SELECT 'delete', id, text, heading"
        " FROM chunks WHERE id=?",
        [(i,) for i in ids],
    )


def drop_documents(con: sqlite3.Connection, doc_ids: list[int]) -> None:
    """Delete documents with their chunks (and vectors), inside the caller's transaction.

    A chunk that other chunks duplicate (``dup_of`` points at it) hands its place in the index to the
    first of them, so their text stays searchable.
    """
    for doc in doc_ids:
        rows = con.execute("SELECT id, dup_of FROM chunks WHERE doc=?", (doc,)).fetchall()
        canon = [cid for cid, dup in rows if dup is None]
        unindex_chunks(con, canon)
        for cid in canon:
            heirs = [
                r[0] for r in con.execute("SELECT id FROM chunks WHERE dup_of=? AND doc<>? ORDER BY id", (cid, doc))
            ]
            if heirs:
                con.execute("UPDATE chunks SET dup_of=NULL WHERE id=?", (heirs[0],))
                con.execute("UPDATE chunks SET dup_of=? WHERE dup_of=? AND doc<>?", (heirs[0], cid, doc))
                index_chunks(con, heirs[:1])
        drop_vectors(con, [r[0] for r in rows])
        con.execute("DELETE FROM chunks WHERE doc=?", (doc,))
        con.execute("DELETE FROM documents WHERE id=?", (doc,))


def drop_vectors(con: sqlite3.Connection, chunk_ids: list[int]) -> None:
    """Delete the vectors of these chunks (when vector_indexing made any)."""
    if _has_table(con, "vec_chunks"):
        ids = [(i,) for i in chunk_ids]
        con.executemany("DELETE FROM vec_terms WHERE chunk=?", ids)
        con.executemany("DELETE FROM vec_chunks WHERE chunk=?", ids)


def _has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# ---- words: shared by the vectors and the semantic analysis ---------------------------------------------

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each either else few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just let like may
    me might more most must my myself no nor not now of off on once one only or other our ours ourselves out
    over own same shall she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up upon us very via was we were what when where which while
    who whom why will with within without would yet you your yours yourself yourselves""".split()  # noqa: SIM905 (a paragraph of words reads better)
)
_WORD = re.compile(r"[^\W\d_][\w'-]*[^\W_]|[^\W\d_]{2}", re.UNICODE)


def words(text: str) -> list[str]:
    """The content words of ``text``, lower-cased: letters first, two or more characters, no stopwords."""
    return [w for w in (m.lower().strip("'-") for m in _WORD.findall(text)) if w not in STOPWORDS and len(w) > 1]


@functools.lru_cache(maxsize=1 << 16)
def term_id(term: str) -> int:
    """A stable 63-bit id of a term (the hashing trick: no vocabulary table to build or keep in step)."""
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=8).digest(), "big") >> 1


# ---- queries ---------------------------------------------------------------------------------------------


def fts_query(text: str) -> str:
    """Plain words as an FTS5 query: every word must appear (each quoted, so no word is read as syntax)."""
    toks = re.findall(r"\w+", text, re.UNICODE)
    if not toks:
        raise KbError(f"query {text!r} has no words to search for")
    return " ".join('"' + t.replace('"', '""') + '"' for t in toks)


def search(con: sqlite3.Connection, query: str, limit: int = 10, raw: bool = False) -> list[dict[str, Any]]:
    """Full-text search, best first (FTS5's bm25, headings weighing half as much as text).

    ``raw``: ``query`` is FTS5 query syntax (phrases, OR, NOT, prefix*); otherwise plain words, all required.
    """
    q = query if raw else fts_query(query)
    try:
        rows = con.execute(
            "SELECT c.id, d.source, d.path, d.title, c.seq, c.heading, bm25(chunks_fts, 1.0, 0.5),"
            " snippet(chunks_fts, 0, '[', ']', ' … ', 16),"
            " (SELECT COUNT(*) FROM chunks x WHERE x.dup_of=c.id)"
            " FROM chunks_fts JOIN chunks c ON c.id=chunks_fts.rowid JOIN documents d ON d.id=c.doc"
            " WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts, 1.0, 0.5) LIMIT ?",
            (q, limit),
        ).fetchall()
    except sqlite3.OperationalError as e:
        raise KbError(f"query {query!r}: {e}") from None
    return [
        {
            "chunk": r[0],
            "source": r[1],
            "path": r[2],
            "title": r[3],
            "seq": r[4],
            "heading": r[5],
            "score": round(-r[6], 4),
            "snippet": r[7],
            "duplicates": r[8],
        }
        for r in rows
    ]


def idf(con: sqlite3.Connection, terms: list[int]) -> dict[int, float]:
    """Inverse document frequencies of ``terms`` over the vectorised chunks (those vector_indexing kept)."""
    q = ",".join("?" * len(terms))
    return dict(con.execute(f"SELECT term, idf FROM vec_df WHERE term IN ({q})", terms).fetchall()) if terms else {}


def tfidf(counts: Counter[int], weights: dict[int, float]) -> dict[int, float]:
    """Sublinear tf times idf, L2-normalised; terms without a weight are left out."""
    vec = {t: (1.0 + math.log(c)) * weights[t] for t, c in counts.items() if t in weights}
    norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
    return {t: v / norm for t, v in vec.items()}


def similar(con: sqlite3.Connection, query: str, limit: int = 10) -> list[dict[str, Any]]:
    """The chunks nearest to ``query`` by cosine similarity of hashed TF-IDF vectors (vector_indexing's).

    Exact, not approximate: the query's few terms are joined with the term index of the stored vectors,
    so the cost grows with the chunks that share a term with the query, not with the whole collection.
    """
    if not _has_table(con, "vec_terms") or not con.execute("SELECT 1 FROM vec_terms LIMIT 1").fetchone():
        raise KbError("this knowledge base has no vectors yet (make them: outlast run vector_indexing)")
    counts = Counter(term_id(w) for w in words(query))
    if not counts:
        raise KbError(f"query {query!r} has no content words to compare")
    weights = idf(con, list(counts))
    qv = tfidf(counts, weights)
    if not qv:
        return []
    # A chunk's weight of term t is w * idf(t) / norm: the query's side carries the idf factor.
    values = ",".join("(?,?)" for _ in qv)
    rows = con.execute(
        f"WITH q(term, w) AS (VALUES {values})"
        " SELECT v.chunk, SUM(v.w * q.w) / c.norm AS s FROM q JOIN vec_terms v ON v.term=q.term"
        " JOIN vec_chunks c ON c.chunk=v.chunk WHERE c.norm > 0 GROUP BY v.chunk ORDER BY s DESC, v.chunk LIMIT ?",
        [x for t, w in qv.items() for x in (t, w * weights[t])] + [limit],
    ).fetchall()
    out = []
    for cid, score in rows:
        r = con.execute(
            "SELECT d.source, d.path, d.title, c.seq, c.heading, c.text FROM chunks c JOIN documents d ON d.id=c.doc"
            " WHERE c.id=?",
            (cid,),
        ).fetchone()
        if r is None:  # its document went since the vectors were made
            continue
        text = " ".join(r[5].split())
        out.append(
            {
                "chunk": cid,
                "source": r[0],
                "path": r[1],
                "title": r[2],
                "seq": r[3],
                "heading": r[4],
                "score": round(score, 4),
                "snippet": text[:160] + (" …" if len(text) > 160 else ""),
            }
        )
    return out
