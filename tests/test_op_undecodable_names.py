"""The built-in operations on a tree holding a file whose name has a byte that is not UTF-8 (a lone surrogate
in Python): the file is processed like any other, its own SQLite database and its reports name it with that
byte as ``\\xNN`` (``engine.text.clean``), and a second run reuses it.

Before: binding the name in SQLite raised UnicodeEncodeError and failed the whole operation
(code_analysis, dependency_analysis, kb_population, semantic_analysis); security_scan wrote the name as a
lone-surrogate escape (``\\udce9``) that strict JSON readers refuse.
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


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A Python file and a Markdown file with undecodable names, each beside a normal one."""
    root = tmp_path / "tree"
    root.mkdir()
    try:
        (root / NAME).write_text("import os\n\n\ndef caf(x):\n    if x:\n        return 1\n    return os.sep\n")
    except OSError:  # a file system that takes UTF-8 names only (macOS)
        pytest.skip("this file system refuses a name that is not UTF-8")
    (root / "ok.py").write_text("import json\n\n\ndef ok():\n    return json\n")
    (root / DOC).write_text("# Caf\u00e9 notes\n\nCheckpoints keep the state of a stalled worker.\n")
    (root / "ok.md").write_text("# Other notes\n\nThe dashboard shows progress and deadlines.\n")
    return root


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
