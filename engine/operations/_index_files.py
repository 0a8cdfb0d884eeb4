"""codebase_indexing's per-file work: read, hash, count lines, parse, and a batch of files made into the
rows the index stores.

Pure and cheap to import (no engine, no pydantic), so a worker process starts in a fraction of the time the
engine's modules would take; and a worker returns its batch as the statements' rows, plain tuples of
strings and numbers, so the engine's process only unpickles them and hands them to SQLite (per-symbol
objects, JSON and bookkeeping would cost it a core's share that the workers need).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tokenize
from pathlib import Path
from typing import Any, NamedTuple

from ..text import stored_name
from ._common import NotInTree, not_regular, open_in_tree, wide_text
from ._lang import count_lines, language_of, symbols_and_imports

MAX_TEXT = 4 << 20
"""Files larger than this are hashed and listed, not analysed for lines and symbols."""


def analyze(root: Path, rel: str, prev: tuple | None) -> tuple[tuple | None, str | None]:
    """One file's row, ("reuse", size, seen) or ("skip", reason) (or None), and an error message (or None; of a
    row, how a file that is not UTF-8 was read).

    ``prev`` is what the index holds for the file: (size, mtime, sha256, seen)."""
    p = os.path.join(root, rel)  # not root / rel: pathlib costs more than the lstat
    try:
        st = os.lstat(p)
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read; a symlink may leave the tree
            return ("skip", not_regular(p, st.st_mode)), None
        h = hashlib.sha256()
        head = b""
        fh, st = open_in_tree(root, rel)  # the file the listing saw, inside the tree
        with fh:
            # Sized to the file: read(MAX_TEXT + 1) would allocate (and give back) 4 MB for every small file.
            data = fh.read(min(st.st_size, MAX_TEXT) + 1)
            if st.st_size < len(data) <= MAX_TEXT:  # it grew since the lstat
                data += fh.read(MAX_TEXT + 1 - len(data))
            h.update(data)
            size = len(data)  # what was hashed: the stat's size is from before the read
            if len(data) > MAX_TEXT:
                head, data = data[:8192], b""
                while b := fh.read(1 << 20):
                    h.update(b)
                    size += len(b)
    except (FileNotFoundError, NotADirectoryError):  # deleted since the listing (a busy work tree), or a
        # directory above it replaced by a file: not a failure
        return ("skip", "gone since the listing"), None
    except NotInTree as e:
        return ("skip", str(e)), None
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    # The bytes hashed, not st_size: a file written while it was read (it grew or shrank since the fstat) was
    # stored with the size of one version and the sha256 and lines of another.
    sha = h.hexdigest()
    lang = language_of(rel)
    if prev is not None and prev[0] == size and prev[1] == st.st_mtime and prev[2] == sha:
        return ("reuse", size, prev[3]), None
    if head:  # too large to analyse: hashed and listed without line counts
        binary = int(b"\0" in head)
        return (rel, size, st.st_mtime, sha, lang, binary, None, None, None, [], []), None
    # A file in UTF-16 or UTF-32 (Windows editors, PowerShell) has NULs too, but opens with its byte order mark.
    wide = wide_text(data) if b"\0" in data[:8192] else None
    if wide is None and b"\0" in data[:8192]:
        return (rel, size, st.st_mtime, sha, lang, 1, None, None, None, [], []), None
    read_as = None
    if wide is not None:
        text, read_as = wide, "not UTF-8: read as UTF-16 or UTF-32 (its byte order mark)"
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            text, read_as = decoded(data, lang)
            read_as = f"not UTF-8 (byte {e.start}): read as {read_as}"
    if text.startswith("\ufeff"):  # a byte order mark (Windows editors): not code, and ast refuses it
        text = text[1:]
        if not read_as:
            data = data[3:]
    code, comment, blank = count_lines(text, lang)
    source = text.encode("utf-8") if read_as else data  # the parsers' bytes: the text's, as UTF-8
    syms, imps = symbols_and_imports(text, lang, source) if lang != "other" else ([], [])
    return (rel, size, st.st_mtime, sha, lang, 0, code, comment, blank, syms, imps), read_as


def decoded(data: bytes, lang: str) -> tuple[str, str]:
    """Text that is not UTF-8, and what it was read as: a Python file's own coding (PEP 263: ``# -*- coding:
    cp1252 -*-``), else Latin-1, which reads any bytes (line counts hold for every encoding that keeps ASCII;
    a name's other letters may read wrong). Such a file was an item failure, and a real tree with a few of them
    (CPython's test data) failed its whole index past the failure threshold."""
    if lang == "python":
        try:
            coding = tokenize.detect_encoding(io.BytesIO(data).readline)[0]
            return data.decode(coding), coding
        except (SyntaxError, LookupError, UnicodeDecodeError):
            pass
    return data.decode("latin-1"), "Latin-1"


def index_name(rel: str) -> str:
    """The path the index stores for file ``rel``: ``stored_name`` (text.py), itself for an ordinary name; one
    with a byte that is not UTF-8 (a TEXT column stores text only) or a backslash is escaped, so that two files
    never share a path (the name with the byte 0xff and the one written ``\\xff``)."""
    return stored_name(rel)


class Batch(NamedTuple):
    """A batch of files as the index stores them, and what became of each file."""

    outcomes: list[tuple[str, int, str, str | None]]
    """(path, bytes, outcome, error or skip reason) per file; outcome: indexed, reused, skipped or failed."""
    gone: list[tuple[str]]
    """Paths whose rows go (failed, skipped, or indexed again: their old symbols and imports go)."""
    reused: list[tuple[str, str]]
    """(seen, path) of files unchanged since an earlier run."""
    files: list[tuple[Any, ...]]
    symbols: list[tuple[str, str, str, int, int, str]]
    imports: list[tuple[str, str]]


def analyze_batch(root: Path, rels: list[str], prev: dict[str, tuple], seen: str) -> Batch:
    """Each file analysed (see ``analyze``) and made into rows; runs in a worker process as well as here.

    A file that this same operation (``seen``) stored before a crash is "indexed" again, not "reused", so a
    resumed run reports what an uninterrupted one does. The index names a file by ``index_name``."""
    out = Batch([], [], [], [], [], [])
    for rel in rels:
        old = prev.get(rel)
        row, err = analyze(root, rel, old)  # err: of an indexed file, how it was read when not UTF-8
        name = index_name(rel)
        if row is None or row[0] == "skip":
            out.gone.append((name,))
            out.outcomes.append((rel, 0, "failed", err) if row is None else (rel, 0, "skipped", row[1]))
        elif row[0] == "reuse":
            if row[2] == seen:
                out.outcomes.append((rel, row[1], "indexed", None))
            else:
                out.outcomes.append((rel, row[1], "reused", None))
                out.reused.append((seen, name))
        else:
            if old is not None:
                out.gone.append((name,))
            syms, imps = row[9], row[10]
            sym_json = json.dumps([f"{s.kind} {s.name}" for s in syms])
            out.files.append((name, *row[1:9], sym_json, json.dumps(imps), seen))
            out.symbols.extend([(name, *s) for s in syms])
            out.imports.extend([(name, m) for m in imps])
            out.outcomes.append((rel, row[1], "indexed", err))
    return out
