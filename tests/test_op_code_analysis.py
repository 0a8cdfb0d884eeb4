"""code_analysis on a generated multi-language tree: per-function complexity and length, Python's
maintainability index, the worst offenders; a worker SIGKILLed mid-run and resumed gives the same
database and result as an uninterrupted run; bad params."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine import Engine, OperationSpec, Status
from engine.operations.code_analysis import BATCH, MI_SPAN
from tests.fixtures_analysis import checkpointed_items, tables
from tests.fixtures_cli import Cli
from tests.fixtures_ops import as_json, bad_params, kill_worker_when, resume, run_here, submit

BRANCHY = (
    "def branchy(x):\n" + "".join(f"    if x == {i}:\n        return {i}\n" for i in range(14)) + "    return -1\n"
)
LONG = "def long_one():\n" + "".join(f"    v{i} = {i}\n" for i in range(70)) + "    return 0\n"


def make_tree(root: Path, modules: int) -> None:
    """``modules`` Python files of small functions, plus one complex and one long function, a C and a
    JavaScript file, a non-UTF-8 file (skipped) and a file lizard does not read (not listed)."""
    body = "".join(f"def f{i}(a, b):\n    if a:\n        return b\n    return a + {i}\n\n" for i in range(12))
    for i in range(modules):
        d = root / f"pkg{i // 50:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i:04d}.py").write_text(f"import os\n\n{body}")
    (root / "hot.py").write_text(BRANCHY + "\n\n" + LONG)
    (root / "c").mkdir()
    (root / "c" / "main.c").write_text(
        "int main(int argc, char **argv) {\n  if (argc > 1 && argv) return 1;\n  return 0;\n}\n"
    )
    (root / "web.js").write_text("function add(a, b) {\n  return a ? a + b : b;\n}\n")
    (root / "latin.py").write_bytes(b"x = 'caf\xe9'\n")
    (root / "notes.txt").write_text("not code\n")


def test_sigkilled_worker_resumes_to_the_uninterrupted_analysis(cli: Cli, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    # Three batches: the killed worker stands at its checkpoints and never completes (kill_worker_when), and
    # checkpoint_every gives it one however quick the batches: the kill lands mid-run at any size.
    n = 2 * BATCH + 12
    make_tree(root, n)
    whole = run_here(tmp_path, "code_analysis", root=str(root), output=f"{tmp_path}/a.db")
    res = as_json(whole.result)
    assert res["files"] == n + 3 and res["languages"] == {"python": n + 1, "cpp": 1, "javascript": 1}
    assert whole.progress.skipped == 1  # latin.py: not UTF-8
    assert res["functions"] == n * 12 + 4 and res["complex_functions"] == 1 and res["long_functions"] == 1
    assert res["most_complex"][0] == {
        "path": "hot.py",
        "function": "branchy",
        "line": 1,
        "ccn": 15,
        "nloc": 30,
        "params": 1,
    }
    assert res["longest"][0]["function"] == "long_one" and res["longest"][0]["nloc"] == 72
    db = tables(f"{tmp_path}/a.db", "files", "functions")
    by_path = {r[0]: r for r in db["files"]}
    assert by_path["c/main.c"][1] == "cpp" and by_path["c/main.c"][7] == 3  # ccn_max: if, &&
    assert by_path["hot.py"][9] is not None and 0 <= by_path["hot.py"][9] <= 100  # radon's MI

    params = {"root": str(root), "output": f"{tmp_path}/b.db"}
    op_id = submit(cli, "code_analysis", params, "checkpoint_interval=0.1", "checkpoint_every=32")
    killed = kill_worker_when(cli, op_id, lambda op: checkpointed_items(cli, op_id) > 0)
    assert killed.status is Status.RUNNING, "the analysis was finished before the kill"
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert tables(f"{tmp_path}/b.db", "files", "functions") == db
    drop = ("database",)
    assert {k: v for k, v in final["result"].items() if k not in drop} == {
        k: v for k, v in res.items() if k not in drop
    }


def test_bad_params(cli: Cli, tmp_path: Path) -> None:
    bad_params(cli, "code_analysis", {"root": str(tmp_path / "nope")}, "root")
    (tmp_path / "notes.md").write_text("# mine\n")
    bad_params(cli, "code_analysis", {"root": str(tmp_path), "output": str(tmp_path / "notes.md")}, "output")
    other = tmp_path / "index.sqlite"  # another program's database: not written into
    sqlite3.connect(other).execute("CREATE TABLE files (path TEXT)").connection.commit()
    bad_params(cli, "code_analysis", {"root": str(tmp_path), "output": str(other)}, "another program's database")


async def analyse(engine: Engine, root: Path, db: str) -> dict:
    """code_analysis of ``root`` into ``db``, completed; its result."""
    op = await engine.submit(OperationSpec(type="code_analysis", params={"root": str(root), "output": db}))
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    return final.result


async def test_unchanged_files_are_reused_and_changed_ones_measured_again(engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.py").write_text(BRANCHY)
    (root / "b.py").write_text("def b(x):\n    return x\n")
    (root / "c.py").write_text("def c():\n    pass\n")
    db = str(tmp_path / "m.db")

    first = await analyse(engine, root, db)
    assert first["reused"] == 0 and first["functions"] == 3
    (root / "b.py").write_text("def b(x):\n    if x:\n        return 1\n    return x\n\n\ndef b2():\n    pass\n")
    (root / "c.py").unlink()
    second = await analyse(engine, root, db)
    assert second["reused"] == 1 and second["removed"] == 1 and second["files"] == 2
    rows = tables(db, "functions")["functions"]
    assert sorted((r[0], r[1], r[6]) for r in rows) == [("a.py", "branchy", 15), ("b.py", "b", 2), ("b.py", "b2", 1)]


async def test_a_statement_of_hundreds_of_lines_gets_no_maintainability_index(engine: Engine, tmp_path: Path) -> None:
    """radon counts a file's lines in time that grows with the square of a statement's lines: pygments'
    builtins tables (one literal of thousands of lines) took 7-36 s a file, a real tree 8 minutes for half
    its files. Such a file is data: it gets lizard's figures and no index, as a file radon cannot read."""
    root = tmp_path / "tree"
    root.mkdir()
    table = ",\n".join(f'    "name_{i}"' for i in range(MI_SPAN + 5))
    (root / "table.py").write_text(f"NAMES = [\n{table},\n]\n\n\ndef f(x):\n    return x\n")
    (root / "small.py").write_text(BRANCHY)
    nested = "\n".join(f"        {i}," for i in range(MI_SPAN + 5))
    (root / "inside.py").write_text(f"class C:\n    def m(self):\n        return [\n{nested}\n        ]\n")
    db = str(tmp_path / "m.db")
    op = await engine.submit(OperationSpec(type="code_analysis", params={"root": str(root), "output": db}))
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    mi = {r[0]: r[9] for r in tables(db, "files")["files"]}
    assert mi["table.py"] is None and mi["inside.py"] is None, mi  # lizard's figures only
    assert mi["small.py"] is not None, mi
    assert {r[1] for r in tables(db, "functions")["functions"]} >= {"f", "m", "branchy"}
    op = await engine.submit(OperationSpec(type="code_analysis", params={"root": str(root), "output": db}))
    again = await engine.wait(op.id, timeout=60)
    assert again.status is Status.COMPLETED and again.result["reused"] == 3, again.result  # not measured again


async def test_a_name_with_a_newline_is_analysed_in_its_language(engine: Engine, tmp_path: Path) -> None:
    """lizard picks a language by matching ``.*\\.(ext)$`` on the name, and ``.`` stops at a newline: a file
    (or a directory above it) whose name holds one was left out of the listing without a word."""
    root = tmp_path / "tree"
    (root / "sub\ndir").mkdir(parents=True)
    (root / "a\nb.py").write_text(BRANCHY)
    (root / "sub\ndir" / "c.py").write_text("def c(x):\n    return x\n")
    (root / "plain.py").write_text("def p():\n    pass\n")
    db = str(tmp_path / "m.db")
    op = await engine.submit(OperationSpec(type="code_analysis", params={"root": str(root), "output": db}))
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    assert final.result["files"] == 3 and final.result["languages"] == {"python": 3}, final.result
    rows = tables(db, "functions")["functions"]
    assert sorted((r[0], r[1], r[6]) for r in rows) == [
        ("a\nb.py", "branchy", 15),
        ("plain.py", "p", 1),
        ("sub\ndir/c.py", "c", 1),
    ]


async def test_a_file_with_a_byte_order_mark_gets_its_maintainability_index(engine: Engine, tmp_path: Path) -> None:
    """radon refuses U+FEFF, which Python itself skips: a file saved with a BOM (Windows editors) had no
    maintainability index, and was analysed again on every run for the index it lacked."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "plain.py").write_text(BRANCHY)
    (root / "bom.py").write_bytes(b"\xef\xbb\xbf" + BRANCHY.encode())
    db = str(tmp_path / "m.db")

    await analyse(engine, root, db)
    files = {r[0]: r[3:] for r in tables(db, "files")["files"]}  # nloc ... mi_rank, seen, analysed_by
    assert files["bom.py"][:8] == files["plain.py"][:8] and files["bom.py"][6] is not None, files
    assert (await analyse(engine, root, db))["reused"] == 2
