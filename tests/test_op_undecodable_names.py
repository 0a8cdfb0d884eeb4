"""The built-in operations on a tree holding a file whose name has a byte that is not UTF-8 (a lone surrogate
in Python): the file is processed like any other, its own SQLite database and its reports name it with that
byte as ``\\xNN`` (``engine.text.stored_name`` in a database, ``clean`` in reports), and a second run reuses
it. Beside it a file named with the characters ``\\xff`` is another file, with its own key.

Before: binding the name in SQLite raised UnicodeEncodeError and failed the whole operation
(code_analysis, dependency_analysis, kb_population, semantic_analysis); security_scan wrote the name as a
lone-surrogate escape (``\\udce9``) that strict JSON readers refuse. Then, with ``clean`` as the key, the
name with the byte 0xff and the one written ``\\xff`` were one key: a UNIQUE constraint failed the run and
every resume (codebase_indexing, code_analysis, dependency_analysis, kb_population), or one file of the pair
was silently dropped (semantic_analysis).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from engine import Engine, Operation, OperationSpec, Status
from engine.operations.knowledge import open_kb, search

NAME = os.fsdecode(b"caf\xe9.py")  # what os.listdir gives for that file
SHOWN = "caf\\xe9.py"  # how the operations' databases and reports name it
DOC = os.fsdecode(b"n\xe9.md")
DOC_SHOWN = "n\\xe9.md"
STRICT = TypeAdapter(object)  # pydantic's JSON parser refuses lone surrogates, as strict readers do


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """A new directory ``root`` holding ``files`` (name: text), the first named with a byte that is not UTF-8;
    the test is skipped on a file system that refuses such a name (macOS)."""
    root.mkdir()
    for name, text in files.items():
        try:
            (root / name).write_text(text)
        except OSError:
            pytest.skip("this file system refuses a name that is not UTF-8")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A Python file and a Markdown file with undecodable names, each beside a normal one."""
    return write_tree(
        tmp_path / "tree",
        {
            NAME: "import os\n\n\ndef caf(x):\n    if x:\n        return 1\n    return os.sep\n",
            "ok.py": "import json\n\n\ndef ok():\n    return json\n",
            DOC: "# Caf\u00e9 notes\n\nCheckpoints keep the state of a stalled worker.\n",
            "ok.md": "# Other notes\n\nThe dashboard shows progress and deadlines.\n",
        },
    )


async def run(engine: Engine, type_: str, **params: Any) -> Operation:
    """Run an operation to its end; it completed, with no item failed or skipped."""
    op = await engine.submit(OperationSpec(type=type_, params=params))
    final = await engine.wait(op.id, timeout=120)
    assert final.status is Status.COMPLETED, final.error
    assert final.progress.failed == 0 and final.progress.skipped == 0, final.progress
    return final


def column(db: Path, sql: str) -> list[Any]:
    con = sqlite3.connect(db)
    try:
        return sorted(con.execute(sql).fetchall())
    finally:
        con.close()


async def test_codebase_indexing(engine: Engine, tree: Path, tmp_path: Path) -> None:
    db = tmp_path / "index.sqlite"
    first = await run(engine, "codebase_indexing", root=str(tree), output=str(db))
    assert first.progress.done == 4 and first.result["files"] == 4 and first.result["reused"] == 0
    assert column(db, "SELECT path FROM files") == [(SHOWN,), (DOC_SHOWN,), ("ok.md",), ("ok.py",)]
    assert column(db, f"SELECT name FROM symbols WHERE path='{SHOWN}'") == [("caf",)]
    again = await run(engine, "codebase_indexing", root=str(tree), output=str(db))
    assert again.result["reused"] == 4 and again.result["removed"] == 0 and again.result["files"] == 4


async def test_code_analysis(engine: Engine, tree: Path, tmp_path: Path) -> None:
    db = tmp_path / "code.sqlite"
    first = await run(engine, "code_analysis", root=str(tree), output=str(db))
    assert first.progress.done == 2 and first.result["files"] == 2 and first.result["functions"] == 2
    assert first.result["reused"] == 0
    assert column(db, "SELECT path, functions, ccn_max FROM files") == [(SHOWN, 1, 2), ("ok.py", 1, 1)]
    assert column(db, "SELECT path, name FROM functions") == [(SHOWN, "caf"), ("ok.py", "ok")]
    again = await run(engine, "code_analysis", root=str(tree), output=str(db))
    assert again.result["reused"] == 2 and again.result["removed"] == 0 and again.result["files"] == 2


async def test_dependency_analysis(engine: Engine, tree: Path, tmp_path: Path) -> None:
    db = tmp_path / "deps.sqlite"
    for _ in range(2):  # the second run replaces the rows of the first
        res = await run(engine, "dependency_analysis", root=str(tree), output=str(db))
        assert res.progress.done == 2 and res.result["modules"] == 2 and res.result["removed"] == 0
        assert res.result["imports"] == {"stdlib": 2}
        assert column(db, "SELECT path, module FROM modules") == [(SHOWN, "caf\\xe9"), ("ok.py", "ok")]
        assert column(db, "SELECT path, target, kind FROM imports") == [
            (SHOWN, "os", "stdlib"),
            ("ok.py", "json", "stdlib"),
        ]


async def test_kb_population_and_the_kb_operations(engine: Engine, tree: Path, tmp_path: Path) -> None:
    kb = tmp_path / "kb.sqlite"
    first = await run(engine, "kb_population", source=str(tree), kb=str(kb))
    assert first.progress.done == 2 and first.result["added"] == 2 and first.result["documents"] == 2
    assert column(kb, "SELECT path FROM documents") == [(DOC_SHOWN,), ("ok.md",)]
    con = open_kb(kb, create=False)
    try:
        assert [h["path"] for h in search(con, "stalled")] == [DOC_SHOWN]
    finally:
        con.close()
    again = await run(engine, "kb_population", source=str(tree), kb=str(kb))
    assert again.result["reused"] == 2 and again.result["added"] == 0 and again.result["removed"] == 0
    # What works on the knowledge base after it: its documents as the kb names them.
    sem = await run(engine, "semantic_analysis", kb=str(kb))
    assert sem.result["analysed"] == 2 and sem.result["documents"] == 2
    assert column(kb, "SELECT key FROM sem_docs") == [(f"{tree}/{DOC_SHOWN}",), (f"{tree}/ok.md",)]
    vec = await run(engine, "vector_indexing", kb=str(kb))
    assert vec.result["made"] == 2
    opt = await run(engine, "kb_optimization", kb=str(kb))
    assert opt.result["chunks"] == 2


async def test_semantic_analysis_of_a_tree(engine: Engine, tree: Path, tmp_path: Path) -> None:
    db = tmp_path / "sem.sqlite"
    first = await run(engine, "semantic_analysis", root=str(tree), output=str(db))
    assert first.progress.done == 4 and first.result["analysed"] == 4 and first.result["documents"] == 4
    keys = [(SHOWN,), (DOC_SHOWN,), ("ok.md",), ("ok.py",)]
    assert column(db, "SELECT key FROM sem_docs") == keys
    assert {k for (k,) in column(db, "SELECT DISTINCT key FROM sem_keywords")} == {k for (k,) in keys}
    again = await run(engine, "semantic_analysis", root=str(tree), output=str(db))
    assert again.result["reused"] == 4 and again.result["analysed"] == 0 and again.result["documents"] == 4
    assert column(db, "SELECT key FROM sem_docs") == keys


async def test_security_scan_reports_are_strict_json(engine: Engine, tree: Path, tmp_path: Path) -> None:
    (tree / NAME).write_text("import subprocess\n\n\ndef go(cmd):\n    subprocess.run(cmd, shell=True)\n")
    (tree / os.fsdecode(b"logo\xe9.png")).write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")  # skipped: binary
    out = tmp_path / "report"
    op = await engine.submit(OperationSpec(type="security_scan", params={"root": str(tree), "output": str(out)}))
    final = await engine.wait(op.id, timeout=120)
    assert final.status is Status.COMPLETED, final.error
    assert final.result["files"] == 5 and final.result["scanned"] == 4 and final.result["skipped"] == {"binary": 1}
    for suffix in (".json", ".sarif"):
        text = out.with_suffix(suffix).read_bytes()
        assert b"\\udc" not in text, suffix
        STRICT.validate_json(text)
    report = json.loads(out.with_suffix(".json").read_text())
    assert {f["file"] for f in report["findings"]} == {SHOWN}
    assert report["skipped"] == {"logo\\xe9.png": "binary"}
    sarif = json.loads(out.with_suffix(".sarif").read_text())
    uris = {
        loc["physicalLocation"]["artifactLocation"]["uri"]
        for r in sarif["runs"][0]["results"]
        for loc in r["locations"]
    }
    assert uris == {"caf%E9.py"}  # a URI carries the name's bytes, percent-encoded: it opens the very file
    # The result names the file as the reports do (not left to the engine, which would warn).
    assert {f["file"] for f in final.result["top"]} == {SHOWN}
    logs, _ = await engine.logs(op.id)
    assert not [r.message for r in logs if "not UTF-8" in r.message]


BYTE_PY = os.fsdecode(b"a\xff.py")  # the byte 0xff in the name
WRITTEN_PY = "a\\xff.py"  # backslash, x, f, f: what clean() shows the other one as
BYTE_MD, WRITTEN_MD = os.fsdecode(b"d\xff.md"), "d\\xff.md"
KEYS = {BYTE_PY: "a\\xff.py", WRITTEN_PY: "a\\\\xff.py", BYTE_MD: "d\\xff.md", WRITTEN_MD: "d\\\\xff.md"}
"""Each file's name as the databases store it (``stored_name``): one key each."""


@pytest.fixture
def twins(tmp_path: Path) -> Path:
    """Two Python files and two Markdown files whose names ``clean`` shows alike, each with its own words."""
    return write_tree(
        tmp_path / "twins",
        {
            BYTE_PY: "import os\n\n\ndef from_byte():\n    return os.sep\n",
            WRITTEN_PY: "import sys\n\n\ndef from_backslash():\n    return sys.path\n",
            BYTE_MD: "# Byte\n\nzebra giraffe okapi\n",
            WRITTEN_MD: "# Backslash\n\nplatypus wombat echidna\n",
        },
    )


PY, MD, BOTH = (".py",), (".md",), (".py", ".md")
TWINS: dict[str, tuple[str, str, tuple[str, ...], dict[str, int]]] = {
    # type: (its tree param, the row per file that a run re-adding the file would change, the files it stores,
    # result counts of the second run)
    "codebase_indexing": (
        "root", "SELECT path, rowid, sha256 FROM files", BOTH, {"files": 4, "reused": 4, "removed": 0}
    ),
    "code_analysis": ("root", "SELECT path, rowid, sha256 FROM files", PY, {"files": 2, "reused": 2, "removed": 0}),
    # dependency_analysis parses every file on each run: the same rows, none removed
    "dependency_analysis": ("root", "SELECT path, module FROM modules", PY, {"modules": 2, "removed": 0}),
    "semantic_analysis": (
        "root", "SELECT key, rowid, sha256, made_by FROM sem_docs", BOTH, {"documents": 4, "reused": 4, "analysed": 0}
    ),
    "kb_population": (
        "source", "SELECT path, id, sha256, stored_by FROM documents", MD,
        {"documents": 2, "reused": 2, "added": 0, "removed": 0},
    ),
}  # fmt: skip


@pytest.mark.parametrize("type_", list(TWINS))
async def test_a_byte_and_its_written_form_are_two_files(
    engine: Engine, twins: Path, tmp_path: Path, type_: str
) -> None:
    """Both files of each pair are stored under their own key, and a second run on the unchanged tree changes
    no row (nothing removed and added again)."""
    tree_param, sql, suffixes, again_counts = TWINS[type_]
    db = tmp_path / "out.sqlite"
    params = {tree_param: str(twins), "kb" if type_ == "kb_population" else "output": str(db)}
    await run(engine, type_, **params)
    first = column(db, sql)
    assert sorted(r[0] for r in first) == sorted(k for f, k in KEYS.items() if f.endswith(suffixes))
    again = await run(engine, type_, **params)
    assert {k: again.result[k] for k in again_counts} == again_counts
    assert column(db, sql) == first


async def test_each_twin_document_is_found_by_its_own_words(engine: Engine, twins: Path, tmp_path: Path) -> None:
    kb = tmp_path / "kb.sqlite"
    await run(engine, "kb_population", source=str(twins), kb=str(kb))
    con = open_kb(kb, create=False)
    try:
        assert [h["path"] for h in search(con, "zebra")] == [KEYS[BYTE_MD]]
        assert [h["path"] for h in search(con, "platypus")] == [KEYS[WRITTEN_MD]]
    finally:
        con.close()
