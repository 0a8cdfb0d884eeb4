"""code_analysis: per-file and per-function metrics of a source tree into SQLite, and its worst offenders.

Functions are measured by lizard (cyclomatic complexity, lines of code, tokens, parameters, length) in
every language it reads (Python, C/C++, Java, JavaScript/TypeScript, Go, Rust, C#, Kotlin, Swift, Ruby,
PHP, ...); Python files also get radon's maintainability index (0-100, ranks A/B/C). Files lizard cannot
read are not listed; a file over ``max_file_size`` or not UTF-8 is skipped with the reason.

Incremental: a file whose sha256 matches its row from an earlier analysis into the same database keeps its
figures. Resumable per file: each batch of files is analysed and committed in one transaction before its files
count as done, so a resume redoes at most one batch (replacing its rows). Files gone from the tree since
an earlier analysis into the same database are dropped at the end. The summary is read back from the
database, so a resumed run reports what an uninterrupted one does.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..context import OperationContext
from ..registry import operation
from ..text import stored_name
from ._common import SQLITE_MAGIC, NotInTree, check_output_file, existing_dir, not_regular, open_in_tree
from ._results_db import check_kind, db_path, exclusive, lacking, open_db, pending_items
from ._walk import list_files, own_files

BATCH = 64
"""Files analysed and committed in one transaction at most (a resume redoes at most one batch)."""
BATCH_SECONDS = 1.0
"""A batch ends sooner once it has taken this long (large files): a stop waits for the batch at most that."""
SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, language TEXT, sha256 TEXT, nloc INTEGER, tokens INTEGER, functions INTEGER,
    ccn_total INTEGER, ccn_max INTEGER, ccn_avg REAL, mi REAL, mi_rank TEXT, seen TEXT, analysed_by TEXT
);
CREATE TABLE IF NOT EXISTS functions (
    path TEXT, name TEXT, long_name TEXT, start_line INTEGER, end_line INTEGER, nloc INTEGER, ccn INTEGER,
    tokens INTEGER, params INTEGER, length INTEGER, PRIMARY KEY (path, start_line, long_name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS functions_ccn ON functions(ccn);
CREATE INDEX IF NOT EXISTS functions_nloc ON functions(nloc);
"""
Row = tuple[Any, ...]


def _check_output(value: str | None) -> str | None:
    """A results database of code_analysis, or none yet (see ``check_kind``)."""
    return check_kind(value, "output", "code_analysis", schema=SCHEMA)


class CodeAnalysisParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # nan was refused as "more than the most"

    root: str = Field(description="directory to analyse")
    patterns: list[str] = Field(default_factory=list, description="glob patterns of files to include (default all)")
    exclude: list[str] = Field(default_factory=list, description="glob patterns of files to leave out")
    output: str | None = Field(default=None, description="SQLite database path (default: in the state dir)")
    complexity: int = Field(
        default=10, ge=1, le=1000, description="cyclomatic complexity over which a function is complex"
    )
    long_function: int = Field(default=60, ge=1, le=100_000, description="lines of code above which a function is long")
    low_mi: float = Field(
        default=20.0, ge=0, le=100, description="maintainability index under which a file is hard to keep"
    )
    top: int = Field(default=10, ge=1, le=1000, description="offenders listed per category in the result")
    maintainability: bool = Field(
        default=True, description="radon's maintainability index of Python files (3/4 of the time)"
    )
    max_file_size: int = Field(default=1 << 20, ge=1, description="bytes over which a file is skipped")

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return existing_dir(v, "root")

    @field_validator("output")
    @classmethod
    def _output(cls, v: str | None) -> str | None:
        return _check_output(check_output_file(v, "output", SQLITE_MAGIC, "an SQLite database"))


def _sizes(f: Any) -> tuple[int, int, int]:
    """Tokens, parameters and length (lines, comments and blanks included) of a lizard function."""
    return f.token_count, f.parameter_count, f.length


MI_SPAN = 300
"""Lines of one statement past which a file gets no maintainability index. radon counts a file's lines by
tokenizing each statement again as every line of it is added, time that grows with the square of its lines:
a table of builtins written as one literal (pygments' lexers) took 7-36 s a file, and a real tree 8 minutes
for half its files (3.9 s without the index). Such a file is data, whose index says nothing of its upkeep."""


def _statement_longer_than(text: str, limit: int) -> bool:
    """Whether a simple statement of ``text`` (not a def, class or block, whose bodies are looked into) spans
    more than ``limit`` lines; False when ``text`` has no more lines than that, or does not parse (radon says)."""
    if text.count("\n") <= limit:
        return False
    try:
        stack: list[ast.stmt] = list(ast.parse(text).body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    while stack:
        node = stack.pop()
        blocks = [got for f in ("body", "orelse", "finalbody", "handlers", "cases") if (got := getattr(node, f, None))]
        if blocks:
            for block in blocks:
                for child in block:
                    stack.extend(getattr(child, "body", []) if not isinstance(child, ast.stmt) else [child])
        elif (node.end_lineno or node.lineno) - node.lineno >= limit:
            return True
    return False


def _lizard_name(rel: str) -> str:
    """The name lizard is given for ``rel``: its newlines as spaces. lizard picks a language by matching
    ``.*\\.(ext)$`` without DOTALL, so a path with a newline (legal in a POSIX name) matched none: the file
    was left out of the listing without a word, and ``analyze_source_code`` would read it as C."""
    return rel.replace("\n", " ")


def _analyze(
    analyzer: Any, root: Path, rel: str, max_size: int, mi_too: bool = True, prev: tuple | None = None
) -> tuple[str, Any]:
    """("ok", (file row, function rows)), ("reuse", None), ("skip", reason) or ("fail", message) for one
    file. ``prev`` (sha256, language, mi) of its row from an earlier analysis: reused when the content is
    the same and nothing is missing (a maintainability index now asked for). The rows name the file
    ``stored_name(rel)``: a name whose bytes are not UTF-8 with each such byte as ``\\xNN`` (a TEXT column
    stores text only) and each backslash doubled (so two files never share a name)."""
    import lizard  # type: ignore[import-untyped]  # here, not at the top: every CLI start imports this module
    from radon.metrics import mi_rank, mi_visit  # type: ignore[import-untyped]

    p = root / rel
    try:
        st = os.lstat(p)
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read; a symlink may leave the tree
            return "skip", not_regular(p, st.st_mode)
        if st.st_size > max_size:
            return "skip", f"larger than max_file_size ({st.st_size} bytes)"
        fh, _st = open_in_tree(root, rel)
        with fh:
            data = fh.read()
    except FileNotFoundError:
        return "skip", "gone since the listing"
    except NotInTree as e:
        return "skip", str(e)
    except OSError as e:
        return "fail", f"unreadable: {e.strerror or e}"
    sha = hashlib.sha256(data).hexdigest()
    same = prev is not None and prev[0] == sha
    if same and not (mi_too and prev[1] == "python" and prev[2] is None):  # type: ignore[index]
        return "reuse", None
    try:
        # Without its byte order mark (Windows editors write one), which radon's parser refuses: such a file
        # had no maintainability index, and was analysed again on every run for the index it lacked.
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        return "skip", f"not UTF-8 text (byte {e.start})"
    if same and _statement_longer_than(text, MI_SPAN):  # no index for it now either: analysed again for nothing
        return "reuse", None
    try:
        info = analyzer.analyze_source_code(_lizard_name(rel), text)
    except Exception as e:  # lizard is a tolerant tokenizer; anything it raises is this file's failure
        return "fail", f"lizard: {type(e).__name__}: {e}"
    reader = lizard.get_reader_for(_lizard_name(rel))
    language = reader.language_names[0] if reader is not None else "other"
    mi: float | None = None
    rank: str | None = None
    if language == "python" and mi_too and not _statement_longer_than(text, MI_SPAN):
        try:
            mi = round(float(mi_visit(text, multi=True)), 2)
            rank = mi_rank(mi)
        except Exception:  # radon needs a parse, and knows the Pythons of its release: lizard's figures stay
            pass
    name = stored_name(rel)
    funcs = [
        (name, f.name, f.long_name, f.start_line, f.end_line, f.nloc, f.cyclomatic_complexity, *_sizes(f))
        for f in info.function_list
    ]
    ccns = [f[6] for f in funcs]
    row = (
        name,
        language,
        sha,
        info.nloc,
        info.token_count,
        len(funcs),
        sum(ccns),
        max(ccns, default=0),
        round(sum(ccns) / len(ccns), 3) if ccns else None,
        mi,
        rank,
    )
    return "ok", (row, funcs)


def _process_batch(
    con: sqlite3.Connection, root: Path, rels: list[str], seen: str, p: CodeAnalysisParams
) -> list[tuple[str, str, str | None]]:
    """Analyse and store the first files of ``rels`` (up to BATCH_SECONDS) in one transaction; (path, outcome,
    reason) per file analysed. The database names file ``rel`` ``stored_name(rel)`` (see ``_analyze``)."""
    import lizard  # type: ignore[import-untyped]

    analyzer = lizard.FileAnalyzer(lizard.get_extensions([]))
    out: list[tuple[str, str, str | None]] = []
    rows: list[Row] = []
    funcs: list[Row] = []
    names = {stored_name(r): r for r in rels}
    q = ",".join("?" * len(names))
    prev = {
        names[r[0]]: r[1:]
        for r in con.execute(
            f"SELECT path, sha256, language, mi, analysed_by FROM files WHERE path IN ({q})", list(names)
        )
    }
    reused: list[tuple[str, str]] = []
    end = time.monotonic() + BATCH_SECONDS
    for rel in rels:
        if out and time.monotonic() > end:
            break
        outcome, got = _analyze(analyzer, root, rel, p.max_file_size, p.maintainability, prev.get(rel))
        if outcome == "reuse":
            reused.append((seen, stored_name(rel)))
            # Analysed by this same operation before a crash: "ok", as an uninterrupted run says.
            out.append((rel, "ok" if prev[rel][3] == seen else "reused", None))
        elif outcome == "ok":
            rows.append((*got[0], seen, seen))
            funcs += got[1]
            out.append((rel, "ok", None))
        else:
            out.append((rel, outcome, got))
    with con:  # the batch is in the database before its files count as done
        kept = {r for _s, r in reused}
        gone = [(stored_name(r),) for r, _o, _w in out if stored_name(r) not in kept]
        con.executemany("UPDATE files SET seen=? WHERE path=?", reused)
        con.executemany("DELETE FROM files WHERE path=?", gone)
        con.executemany("DELETE FROM functions WHERE path=?", gone)
        con.executemany(f"INSERT INTO files VALUES ({','.join('?' * 13)})", rows)
        con.executemany(f"INSERT OR REPLACE INTO functions VALUES ({','.join('?' * 10)})", funcs)
    return out


def _summary(con: sqlite3.Connection, seen: str, p: CodeAnalysisParams, listed: set[str]) -> dict[str, Any]:
    """Drop files not analysed by this operation or not in the tree now (``listed``: the stored names of
    this attempt's listing; a file an earlier attempt analysed, renamed or deleted since, was counted twice
    or as still there); the totals and worst offenders."""
    with con:
        gone = [path for path, by in con.execute("SELECT path, seen FROM files") if by != seen or path not in listed]
        con.executemany("DELETE FROM files WHERE path=?", [(g,) for g in gone])
        con.executemany("DELETE FROM functions WHERE path=?", [(g,) for g in gone])
    one = lambda sql, *a: con.execute(sql, a).fetchone()  # noqa: E731
    files, nloc, nfuncs = one("SELECT COUNT(*), COALESCE(SUM(nloc), 0), COALESCE(SUM(functions), 0) FROM files")
    fn_cols = "path, name, start_line, ccn, nloc, params"

    def fns(where: str, order: str, *a: Any) -> list[dict[str, Any]]:
        sql = f"SELECT {fn_cols} FROM functions WHERE {where} ORDER BY {order}, path, start_line LIMIT ?"
        keys = ("path", "function", "line", "ccn", "nloc", "params")
        return [dict(zip(keys, r, strict=True)) for r in con.execute(sql, (*a, p.top))]

    low_mi = [
        {"path": r[0], "mi": r[1], "rank": r[2]}
        for r in con.execute(
            "SELECT path, mi, mi_rank FROM files WHERE mi IS NOT NULL AND mi < ? ORDER BY mi, path LIMIT ?",
            (p.low_mi, p.top),
        )
    ]
    avg = one("SELECT AVG(ccn), AVG(nloc) FROM functions")
    return {
        "files": files,
        "functions": nfuncs,
        "nloc": nloc,
        "languages": dict(con.execute("SELECT language, COUNT(*) FROM files GROUP BY 1 ORDER BY 2 DESC, 1")),
        "ccn_avg": round(avg[0] or 0.0, 3),
        "function_nloc_avg": round(avg[1] or 0.0, 3),
        "complex_functions": one("SELECT COUNT(*) FROM functions WHERE ccn > ?", p.complexity)[0],
        "long_functions": one("SELECT COUNT(*) FROM functions WHERE nloc > ?", p.long_function)[0],
        "mi_avg": round(one("SELECT COALESCE(AVG(mi), 0) FROM files WHERE mi IS NOT NULL")[0], 2),
        "low_mi_files": one("SELECT COUNT(*) FROM files WHERE mi < ?", p.low_mi)[0],
        "most_complex": fns("ccn > ?", "ccn DESC", p.complexity),
        "longest": fns("nloc > ?", "nloc DESC", p.long_function),
        "least_maintainable": low_mi,
        "removed": len(gone),
    }


@operation("code_analysis", params=CodeAnalysisParams, description="complexity and maintainability of a source tree")
async def analyze_code(ctx: OperationContext, p: CodeAnalysisParams) -> dict[str, Any]:
    """List the files lizard reads, measure them batch by batch, summarise the worst offenders."""
    import lizard  # type: ignore[import-untyped]

    db = db_path(ctx, p.output, "code-analysis", p.root)
    ctx.progress(step="listing files")
    with exclusive(db, _check_output):
        return await _analyze_into(ctx, p, db, lizard)


async def _analyze_into(ctx: OperationContext, p: CodeAnalysisParams, db: str, lizard: Any) -> dict[str, Any]:
    con = await asyncio.to_thread(open_db, db, SCHEMA, {"kind": "code_analysis", "root": p.root})
    try:
        root = Path(p.root)
        files = [
            f
            for f in await list_files(ctx, root, p.patterns, p.exclude, own_files(db))
            if lizard.get_reader_for(_lizard_name(f))
        ]
        ctx.progress(total=len(files), step="analysing")
        seen = ctx.id
        pending = await pending_items(ctx, con, db, files, root, lacking("SELECT path FROM files", stored_name))
        i = 0
        while i < len(pending):
            results = await asyncio.to_thread(_process_batch, con, root, pending[i : i + BATCH], seen, p)
            i += len(results)
            async for rel, outcome, why in ctx.items(results, key=lambda r: r[0]):
                if outcome == "fail":
                    ctx.fail(rel, why or "failed")
                    continue
                if outcome == "skip":
                    ctx.skip(rel, why)
                    ctx.advance()  # looked at: a completed run is at 100%, skips or not
                    continue
                ctx.state["reused"] = ctx.state.get("reused", 0) + (outcome == "reused")
                ctx.step = rel
        ctx.progress(step="summarising")
        summary = await asyncio.to_thread(_summary, con, seen, p, {stored_name(f) for f in files})
    finally:
        await asyncio.to_thread(con.close)
    ctx.log.info(
        f"{summary['files']} files, {summary['functions']} functions: {summary['complex_functions']} over "
        f"complexity {p.complexity}, {summary['long_functions']} over {p.long_function} lines"
    )
    return {"database": db, "failures": ctx.failures, "reused": ctx.state.get("reused", 0), **summary}
