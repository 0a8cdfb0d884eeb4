"""codebase_indexing on real trees: this repository, a generated tree with awkward files, incremental re-index,
a SIGKILLed worker resumed to the same index as an uninterrupted run, bad params."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from engine import Engine, OperationSpec, Status
from tests.conftest import REPO
from tests.fixtures_cli import CLI, Cli, until
from tests.fixtures_ops import (
    as_user_who_cannot_read,
    bad_params,
    checkpoint_state,
    deep_tree,
    resume,
    run_json,
    submit,
    unreadable,
)

SOURCES = {
    "src/app.py": "import os\nfrom . import util\n\n# a comment\nclass App:\n    pass\n\n\ndef main():\n    return 1\n",
    "src/broken.py": "def ok():\n    pass\n\ndef broken(:\n",
    "web/index.ts": "import { x } from './x';\nexport class Widget {}\nexport function render() {}\n// done\n",
    "go/main.go": 'package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc main() {}\ntype Server struct{}\n',
    "rs/lib.rs": "use std::io;\n/* block\n comment */\npub fn run() {}\npub struct Config;\n",
    "java/App.java": "import java.util.List;\npublic class App {}\n",
    "c/main.c": "#include <stdio.h>\n#define MAX 3\nint main(void) {\n  return 0;\n}\n",
}


def make_tree(root: Path, git: bool) -> dict[str, Path]:
    """A source tree with binary, non-UTF-8, ignored, vendored and special files; the awkward ones by role."""
    for rel, text in SOURCES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / ".gitignore").write_text("*.log\nbuild/\n!keep.log\n**/cache\n")
    (root / "web" / ".gitignore").write_text("*.gen.ts\n/local/\n")  # a nested one, anchored to web/
    for rel in ("web/api.gen.ts", "web/local/a.ts", "src/cache/c.py", "src/local/b.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    (root / "debug.log").write_text("ignored\n")
    (root / "keep.log").write_text("kept: negated rule\n")
    (root / "build").mkdir()
    (root / "build" / "out.py").write_text("x = 1\n")
    (root / "node_modules" / "dep").mkdir(parents=True)
    (root / "node_modules" / "dep" / "index.js").write_text("module.exports = 1\n")
    (root / "myenv" / "lib").mkdir(parents=True)
    (root / "myenv" / "pyvenv.cfg").write_text("home = /usr\n")
    (root / "myenv" / "lib" / "site.py").write_text("x = 1\n")
    roles = {
        "binary": root / "assets" / "logo.png",
        "latin1": root / "docs" / "latin.txt",
        "secret": root / "secret.py",
        "fifo": root / "pipe",
    }
    roles["binary"].parent.mkdir()
    roles["binary"].write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0" + bytes(range(256)))
    roles["latin1"].parent.mkdir()
    roles["latin1"].write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    # Its own coding (PEP 263), with a name that is not ASCII: read in it, not as Latin-1.
    (root / "docs" / "legacy.py").write_bytes("# -*- coding: cp1252 -*-\ndef caf\u00e9():\n    pass\n".encode("cp1252"))
    roles["secret"].write_text("x = 1\n")
    os.mkfifo(roles["fifo"])  # reading it would block forever: must be skipped, not read
    (root / "link.py").symlink_to("src/app.py")
    if git:
        subprocess.run(["git", "init", "-q", str(root)], check=True)
    return roles


def rows(db: str) -> dict[str, tuple]:
    con = sqlite3.connect(db)
    try:
        return {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT path, size, sha256, language, binary, code, comment, blank, symbols, imports FROM files"
            )
        }
    finally:
        con.close()


def _lookup_indexes(db: str) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
    finally:
        con.close()


async def run_index(engine: Engine, **params: Any) -> Any:
    op = await engine.submit(OperationSpec(type="codebase_indexing", params=params))
    return await engine.wait(op.id, timeout=120)


async def test_index_this_repository(engine: Engine, tmp_path: Path) -> None:
    db = tmp_path / "repo.sqlite"
    final = await run_index(engine, root=str(REPO), output=str(db))
    assert final.status is Status.COMPLETED, final.error
    con = sqlite3.connect(db)
    paths = {p for (p,) in con.execute("SELECT path FROM files")}
    assert "engine/context.py" in paths and "pyproject.toml" in paths
    assert not any(p.startswith(".git/") or "/__pycache__/" in p for p in paths)
    lang, code, comment, blank = con.execute(
        "SELECT language, code, comment, blank FROM files WHERE path='engine/context.py'"
    ).fetchone()
    text = (REPO / "engine/context.py").read_text()
    assert lang == "python" and code + comment + blank == len(text.splitlines())
    assert ("class", "OperationContext") in set(
        con.execute("SELECT kind, name FROM symbols WHERE path='engine/context.py'")
    )
    importers = {p for (p,) in con.execute("SELECT path FROM imports WHERE module='asyncio'")}
    assert "engine/context.py" in importers and "engine/engine.py" in importers
    assert final.result["files"] == len(paths) and final.result["symbols"] > 100
    assert (
        final.result["languages"]["python"]
        == con.execute("SELECT COUNT(*) FROM files WHERE language='python'").fetchone()[0]
    )


@pytest.mark.parametrize("git", [False, True], ids=["walk", "git"])
async def test_generated_tree_with_awkward_files(engine: Engine, tmp_path: Path, git: bool) -> None:
    root = tmp_path / "tree"
    roles = make_tree(root, git)
    cannot_read = unreadable(roles["secret"])
    db = str(tmp_path / "index.sqlite")
    final = await run_index(engine, root=str(root), output=db)
    assert final.status is Status.COMPLETED, final.error
    got = rows(db)
    failures = {f.key: f.error for f in await engine.store.item_failures(final.id)}
    if cannot_read:
        assert "unreadable" in failures.pop("secret.py")
    else:
        assert "secret.py" in got
    assert failures == {}
    assert final.progress.skipped == (1 if git else 2)  # the symlink, and the FIFO (git does not list it)
    assert final.progress.metrics["files_per_second"] > 0 and final.progress.metrics["current_file"] in got
    # Not UTF-8: indexed all the same (an item failure each, a real tree with a few failed its index).
    assert got["docs/latin.txt"][4:7] == (1, 0, 0), got["docs/latin.txt"]
    assert json.loads(got["docs/legacy.py"][7]) == ["function caf\u00e9"]
    said = sorted(r.message for r in (await engine.store.read_logs(final.id))[0] if "not UTF-8" in r.message)
    assert said == [
        "docs/latin.txt: not UTF-8 (byte 3): read as Latin-1",
        "docs/legacy.py: not UTF-8 (byte 32): read as cp1252",
    ], said
    kept = {*SOURCES, ".gitignore", "web/.gitignore", "keep.log", "assets/logo.png", "src/local/b.py"}
    kept |= {"docs/latin.txt", "docs/legacy.py"}
    assert set(got) == kept | (set() if cannot_read else {"secret.py"})
    assert got["assets/logo.png"][3] == 1 and got["assets/logo.png"][4] is None  # binary: no line counts
    symbols = {p: set(json.loads(r[7])) for p, r in got.items()}
    imports = {p: set(json.loads(r[8])) for p, r in got.items()}
    assert symbols["src/app.py"] == {"class App", "function main"} and imports["src/app.py"] == {"os", "."}
    assert symbols["src/broken.py"] == {"function ok", "function broken"}  # a syntax error: the fallback
    assert symbols["web/index.ts"] == {"class Widget", "function render"} and imports["web/index.ts"] == {"./x"}
    assert symbols["go/main.go"] == {"function main", "type Server"} and imports["go/main.go"] == {"fmt", "os"}
    assert symbols["rs/lib.rs"] == {"function run", "class Config"} and imports["rs/lib.rs"] == {"std::io"}
    assert symbols["java/App.java"] == {"class App"} and imports["java/App.java"] == {"java.util.List"}
    assert symbols["c/main.c"] == {"function main", "macro MAX"} and imports["c/main.c"] == {"stdio.h"}
    assert got["src/app.py"][4:7] == (6, 1, 3)  # code, comment, blank
    assert got["rs/lib.rs"][4:7] == (3, 2, 0)


async def test_incremental_reindex(engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    make_tree(root, git=False)
    (root / "docs" / "latin.txt").unlink()
    db = str(tmp_path / "index.sqlite")
    first = await run_index(engine, root=str(root), output=db)
    assert first.status is Status.COMPLETED and first.result["reused"] == 0
    before = rows(db)
    (root / "src" / "app.py").write_text("def renamed():\n    pass\n")
    (root / "java" / "App.java").unlink()
    (root / "src" / "new.py").write_text("class New:\n    pass\n")
    second = await run_index(engine, root=str(root), output=db)
    assert second.status is Status.COMPLETED, second.error
    after = rows(db)
    assert second.result["removed"] == 1 and "java/App.java" not in after
    assert json.loads(after["src/app.py"][7]) == ["function renamed"]
    assert after["src/app.py"][1] != before["src/app.py"][1]
    assert json.loads(after["src/new.py"][7]) == ["class New"]
    unchanged = set(before) - {"src/app.py", "java/App.java"}
    assert second.result["reused"] == len(unchanged)
    assert all(after[p] == before[p] for p in unchanged)
    con = sqlite3.connect(db)
    assert con.execute("SELECT path FROM symbols WHERE name='App'").fetchall() == []  # old symbols gone
    assert con.execute("SELECT path FROM symbols WHERE name='renamed'").fetchall() == [("src/app.py",)]


async def test_an_index_of_an_older_analysis_is_analysed_again_once(engine: Engine, tmp_path: Path) -> None:
    """An index made before a change to the analysis kept the old figures of every file that had not changed
    since (a row whose size, mtime and sha256 match is reused): the line counting fixed for ``#`` lines in a
    Python string reached no file of an existing index. Its rows are analysed again, once, then reused."""
    root = tmp_path / "tree"
    (root / "src").mkdir(parents=True)
    (root / "src" / "gen.py").write_text('SCRIPT = """\n# not a comment: text\n"""\n# a comment\n')
    (root / "src" / "b.py").write_text("x = 1\n")
    db = str(tmp_path / "index.sqlite")
    first = await run_index(engine, root=str(root), output=db)
    assert first.status is Status.COMPLETED, first.error
    con = sqlite3.connect(db)
    with con:  # as an index of the older analysis held it: no version, and the string's line a comment
        con.execute("DELETE FROM meta WHERE key='analysis'")
        con.execute("UPDATE files SET code = code - 1, comment = comment + 1 WHERE path='src/gen.py'")
    con.close()
    second = await run_index(engine, root=str(root), output=db)
    assert second.status is Status.COMPLETED and second.result["reused"] == 0, second.result
    assert rows(db)["src/gen.py"][4:6] == (3, 1), rows(db)["src/gen.py"]  # code, comment: as tokenize says
    third = await run_index(engine, root=str(root), output=db)
    assert third.result["reused"] == 2, third.result


def test_sigkilled_worker_resumes_to_the_uninterrupted_index(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker analysing in worker processes is SIGKILLed after its first checkpoint: its worker processes
    exit with it, `outlast resume` finishes the index, and the index and the result equal those of an
    uninterrupted run over the same tree in one thread."""
    root = tmp_path / "tree"
    body = "".join(f"def f{i}(x):\n    # note {i}\n    return x + {i}\n\n" for i in range(60))
    for i in range(600):
        d = root / f"pkg{i // 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i:04d}.py").write_text(f"import os\n{body}class C{i}:\n    pass\n")
    (root / "pkg03" / "latin.txt").write_bytes(b"caf\xe9\n")
    monkeypatch.setenv("OUTLAST_WORKERS", "0")
    code, whole, err = run_json(cli, "run", "codebase_indexing", "-p", f"root={root}", "-p", f"output={tmp_path}/a.db")
    assert code == 0, err
    monkeypatch.setenv("OUTLAST_WORKERS", "2")
    op_id = submit(
        cli, "codebase_indexing", {"root": str(root), "output": f"{tmp_path}/b.db"}, "checkpoint_interval=0.2"
    )
    worker = cli.start("worker", "--concurrency", "1")
    try:
        until(lambda: checkpoint_state(cli, op_id).get("bytes", 0) > 0, 60, every=0.02, what="a checkpoint")
        pool = psutil.Process(worker.popen.pid).children(recursive=True)
        os.kill(worker.popen.pid, signal.SIGKILL)
        worker.popen.wait(10)
    finally:
        worker.kill()
    assert len(pool) >= 2, "the interrupted run did not analyse in worker processes"
    _, alive = psutil.wait_procs(pool, timeout=20)
    assert not alive, f"worker processes outlived the SIGKILLed engine: {alive}"
    assert cli.op(op_id).status is Status.RUNNING, "the index was finished before the kill"
    assert _lookup_indexes(f"{tmp_path}/b.db") == set(), "a new index's lookup indexes are made when it is finished"
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert rows(f"{tmp_path}/b.db") == rows(f"{tmp_path}/a.db")
    assert _lookup_indexes(f"{tmp_path}/b.db") == {"files_language", "symbols_name", "imports_module"}
    drop = ("index",)
    assert {k: v for k, v in final["result"].items() if k not in drop} == {
        k: v for k, v in whole["result"].items() if k not in drop
    }
    assert final["result"]["files"] == 601 and final["result"]["failures"] == 0  # latin.txt indexed too


async def test_a_tree_deeper_than_the_recursion_limit_is_indexed(engine: Engine, tmp_path: Path) -> None:
    """1,050 nested directories outside a git work tree (the walk lists it): Python 3.11's os.walk recursed
    once per level and failed the run with RecursionError."""
    with deep_tree(tmp_path / "src") as leaf:
        (tmp_path / "src" / "top.py").write_text("def top():\n    pass\n")
        db = tmp_path / "deep.sqlite"
        final = await run_index(engine, root=str(tmp_path / "src"), output=str(db))
        assert final.status is Status.COMPLETED, final.error
        assert sorted(rows(str(db))) == sorted([leaf, "top.py"])


@pytest.mark.parametrize("git", [False, True], ids=["walk", "git"])
async def test_a_package_named_venv_is_source_not_an_environment(engine: Engine, tmp_path: Path, git: bool) -> None:
    """The standard library's ``venv`` package (and a project's module that makes environments) is indexed: a
    directory was left out for its name alone, so an index, scan or import graph of the standard library or a
    CPython checkout had no ``venv``. An environment named ``venv`` (no ``__init__.py``) or any other name (a
    ``pyvenv.cfg``) is still left out."""
    root = tmp_path / "tree"
    files = {
        "lib/venv/__init__.py": "def create():\n    pass\n",
        "lib/venv/__main__.py": "from . import create\n",
        "lib/venv/scripts/activate": "# a template\n",
        "stubs/venv/__init__.pyi": "def create() -> None: ...\n",  # typeshed's stub package
        "venv/lib/site.py": "x = 1\n",  # an environment without pyvenv.cfg (an old virtualenv)
        "env2/pyvenv.cfg": "home = /usr\n",
        "env2/venv/__init__.py": "x = 1\n",  # inside an environment: left out with it
        "app.py": "import venv\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    if git:
        subprocess.run(["git", "init", "-q", str(root)], check=True)
    db = tmp_path / "index.sqlite"
    final = await run_index(engine, root=str(root), output=str(db))
    assert final.status is Status.COMPLETED, final.error
    assert sorted(rows(str(db))) == [
        "app.py",
        "lib/venv/__init__.py",
        "lib/venv/__main__.py",
        "lib/venv/scripts/activate",
        "stubs/venv/__init__.pyi",
    ]


def test_bad_params(cli: Cli, tmp_path: Path) -> None:
    bad_params(cli, "codebase_indexing", {"root": str(tmp_path / "nope")}, "root")
    bad_params(cli, "codebase_indexing", {}, "root")
    bad_params(cli, "codebase_indexing", {"root": str(tmp_path), "output": str(tmp_path / "x" / "i.db")}, "output")


def test_a_file_deleted_since_the_listing_is_skipped(tmp_path: Path) -> None:
    """A busy work tree loses files between listing and reading: skipped, not a failure."""
    from engine.operations._index_files import analyze

    assert analyze(tmp_path, "gone.py", None) == (("skip", "gone since the listing"), None)
    (tmp_path / "locked").mkdir()
    row, err = analyze(tmp_path, "locked", None)  # a directory where a file was listed: not a regular file
    assert row == ("skip", "a directory, not a file (a git submodule not checked out, or replaced since the listing)")
    assert err is None
    # Its directory replaced by a FIFO (or any file) since the listing: gone with it, as a deleted one. It was
    # "unreadable: Not a directory", an item failure that failed the run.
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "mod.py").unlink()
    (tmp_path / "pkg").rmdir()
    os.mkfifo(tmp_path / "pkg")
    assert analyze(tmp_path, "pkg/mod.py", None) == (("skip", "gone since the listing"), None)


def test_an_unreadable_directory_is_skipped_counted_and_logged_once_not_a_failed_run(tmp_path: Path, cli: Cli) -> None:
    """`outlast run codebase_indexing -p root=/proc/1` failed at "listing files" on one directory it
    could not list; the walk now leaves such a directory out, counts it and says so in one log line."""
    root = tmp_path / "tree"
    (root / "ok").mkdir(parents=True)
    (root / "ok" / "a.py").write_text("def a():\n    pass\n")
    (root / "b.py").write_text("x = 1\n")
    locked = root / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "inner" / "c.py").write_text("y = 2\n")
    try:
        r = as_user_who_cannot_read(
            [*CLI, "--json", "--state-dir", str(cli.state_dir), "run", "codebase_indexing", "-p", f"root={root}"],
            locked,
            env=cli.env,
            timeout=90,
        )
    finally:
        locked.chmod(0o755)
    assert r.returncode == 0, r.stderr
    final = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    assert final["status"] == "completed"
    assert final["progress"]["done"] == 2 and final["progress"]["failed"] == 0
    assert final["progress"]["metrics"]["unreadable_dirs"] == 1
    logs = cli("logs", final["id"]).stdout
    assert logs.count("unreadable") == 1 and "locked: Permission denied" in logs


def test_a_worker_process_starts_without_the_engine() -> None:
    """What a worker process imports (the per-file work, the pool's start-up hook, the parsers) leaves out
    pydantic and the engine: importing them cost each worker more than analysing a batch of files."""
    code = (
        "import sys, engine.operations._index_files, engine.operations._pool, engine.operations._common\n"
        "from engine.operations._lang import parsers\n"
        "parsers().check({'python', 'javascript'})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic' or m in"
        " ('engine.context', 'engine.models', 'engine.config', 'engine.operations.indexing')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"a worker imports {r.stdout.strip()}"


def test_a_batch_comes_back_as_the_rows_to_store(tmp_path: Path) -> None:
    """A worker returns a batch as plain tuples, the statements' rows: no per-symbol objects for the engine's
    process to rebuild when it unpickles them, no JSON for it to make."""
    from engine.operations._index_files import analyze_batch

    (tmp_path / "a.py").write_text("import os\n\nclass A:\n    def m(self):\n        pass\n")
    (tmp_path / "b.js").write_text("import x from './x';\nexport function g() {}\n")
    (tmp_path / "c.bin").write_bytes(b"\0\1\2")
    prev = {"b.js": (1, 0.0, "old", "earlier")}  # changed since an earlier run: its old rows go
    batch = analyze_batch(tmp_path, ["a.py", "b.js", "c.bin", "gone.py"], prev, "op1")
    assert b"Symbol" not in pickle.dumps(batch)
    assert batch.symbols == [
        ("a.py", "class", "A", 3, 5, ""),
        ("a.py", "method", "m", 4, 5, "A"),
        ("b.js", "function", "g", 2, 2, ""),
    ]
    assert all(type(r) is tuple for r in batch.symbols + batch.imports + batch.files)
    assert batch.imports == [("a.py", "os"), ("b.js", "./x")]
    assert [f[0] for f in batch.files] == ["a.py", "b.js", "c.bin"]
    assert batch.files[0][9:] == ('["class A", "method m"]', '["os"]', "op1")
    assert batch.gone == [("b.js",), ("gone.py",)]
    assert [o[2] for o in batch.outcomes] == ["indexed", "indexed", "indexed", "skipped"]


def test_a_file_at_the_analysis_limit(tmp_path: Path) -> None:
    """Up to MAX_TEXT bytes a file is analysed; one byte more, it is hashed (every byte) and listed only."""
    from engine.operations._index_files import MAX_TEXT, analyze

    line = b"x = 1\n"
    at = line * (MAX_TEXT // len(line)) + b"y" * (MAX_TEXT % len(line))
    (tmp_path / "at.txt").write_bytes(at)
    (tmp_path / "over.txt").write_bytes(at + b"\n")
    row, err = analyze(tmp_path, "at.txt", None)
    assert err is None and row is not None
    assert row[1] == MAX_TEXT and row[3] == hashlib.sha256(at).hexdigest() and row[6:9] == (len(at.splitlines()), 0, 0)
    row, err = analyze(tmp_path, "over.txt", None)
    assert err is None and row is not None
    assert row[1] == MAX_TEXT + 1 and row[3] == hashlib.sha256(at + b"\n").hexdigest() and row[6:9] == (None,) * 3


def test_lines_and_symbols_of_awkward_python_files_are_what_the_tokenizer_and_ast_say(tmp_path: Path) -> None:
    """A form feed or U+2028 inside a line does not end it (str.splitlines counted one line more for each), and
    a byte order mark is neither code nor a reason to lose the file's symbols (ast refuses it); CRLF, CR-only and
    a missing last newline count as ``wc -l`` and Python's tokenizer count."""
    from engine.operations._index_files import analyze_batch

    files = {
        "ff.py": b"x = 1\n\x0c\ndef f():\n    return 1\n",
        "ls.py": 'x = "a\u2028b"\ny = 2\n'.encode(),
        "bom.py": b"\xef\xbb\xbf# c\nclass A:\n    def m(self):\n        pass\n",
        "crlf.py": b"# c\r\nx = 1\r\n\r\n",
        "cr.py": b"# c\rx = 1\r\ry = 2\r",
        "nonl.py": b"x = 1",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    batch = analyze_batch(tmp_path, list(files), {}, "op1")
    lines = {f[0]: f[6:9] for f in batch.files}
    assert lines == {
        "ff.py": (3, 0, 1),
        "ls.py": (2, 0, 0),
        "bom.py": (3, 1, 0),
        "crlf.py": (1, 1, 1),
        "cr.py": (2, 1, 1),
        "nonl.py": (1, 0, 0),
    }
    assert [s for s in batch.symbols if s[0] == "bom.py"] == [
        ("bom.py", "class", "A", 2, 4, ""),
        ("bom.py", "method", "m", 3, 4, "A"),
    ]
    assert batch.files[2][3] == hashlib.sha256(files["bom.py"]).hexdigest()  # the file's bytes, BOM and all


@pytest.mark.parametrize("codec", ["utf-16", "utf-32"])
def test_a_utf16_or_utf32_text_file_is_indexed_as_text_not_binary(tmp_path: Path, codec: str) -> None:
    """A source file in UTF-16 (Windows editors, PowerShell) has NUL bytes, and was listed as binary, without
    lines or symbols; its byte order mark says it is text, as the scanner already reads it."""
    from engine.operations._index_files import analyze_batch

    (tmp_path / "w.py").write_bytes("# wide\nclass W:\n    pass\n".encode(codec))  # the codec writes its BOM
    batch = analyze_batch(tmp_path, ["w.py"], {}, "op1")
    assert batch.files[0][5:9] == (0, 2, 1, 0)  # not binary; code, comment, blank
    assert batch.symbols == [("w.py", "class", "W", 2, 3, "")]
    assert batch.outcomes[0][2:] == ("indexed", "not UTF-8: read as UTF-16 or UTF-32 (its byte order mark)")


def test_a_file_written_while_it_is_read_is_stored_with_the_size_of_what_was_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size came from the fstat before the read, the sha256 and lines from the read: a file that grew in
    between (a log, a file being saved) was stored with one version's size and another's hash."""
    from engine.operations import _index_files

    real = _index_files.open_in_tree

    def grows_after_the_fstat(root: Path, rel: str) -> Any:
        fh, st = real(root, rel)
        with open(os.path.join(root, rel), "ab") as f:
            f.write(b"y = 2\n")
        return fh, st

    monkeypatch.setattr(_index_files, "open_in_tree", grows_after_the_fstat)
    (tmp_path / "a.py").write_bytes(b"x = 1\n")
    row, err = _index_files.analyze(tmp_path, "a.py", None)
    assert err is None and row is not None
    data = (tmp_path / "a.py").read_bytes()
    assert (row[1], row[3], row[6]) == (len(data), hashlib.sha256(data).hexdigest(), 2)


def test_hash_lines_inside_a_python_string_are_code_as_tokenize_says() -> None:
    """A line of a triple-quoted string that starts with ``#`` (a script or a config file a test writes) was
    counted as a comment: 5 of this repository's files and 107 of the standard library's differed from a count by
    tokenize. A ``\"\"\"`` inside a real comment does not open a string."""
    from engine.operations._lang import count_lines

    script = 'SCRIPT = """\n#!/bin/sh\n# a shell comment, in a string\necho hi\n"""\n# a real comment\n'
    assert count_lines(script, "python") == (5, 1, 0)
    fstring = 'x = 1\nt = f"""\n# {x}\n"""\n'
    assert count_lines(fstring, "python") == (4, 0, 0)
    quoted_in_comment = '# the """ quote\n# another comment\nx = 1\n'
    assert count_lines(quoted_in_comment, "python") == (1, 2, 0)
    assert count_lines('def f():\n    """Doc."""\n    # real\n    return 1\n', "python") == (3, 1, 0)


def test_block_comments_after_code_or_before_it_are_counted_by_what_the_line_holds() -> None:
    """Lines were judged by how they start: a block comment opened after code (``#define X 1 /* a note`` over
    several lines) left its other lines counted as code, and ``/* a */ int y;`` counted as a comment; 142 of
    1,500 system headers differed from a lexer's count (1,553 comment lines). Strings open nothing."""
    from engine.operations._lang import count_lines

    assert count_lines("#define X 1 /* a note\n   that goes on\n   and ends */\nint y;\n", "c") == (2, 2, 0)
    assert count_lines("/* a */ int y;\n/* b\n */ int z;\n", "c") == (2, 1, 0)
    assert count_lines('const g = "dist/*";\nconst h = 1;\n', "javascript") == (2, 0, 0)
    assert count_lines('s = "esc \\" /*";\nt = 1; // see /* here\nu = 2;\n', "c") == (3, 0, 0)
    assert count_lines("/* one */\n/* two\n   three */\n\n", "c") == (0, 3, 1)


def test_a_python_file_nested_deeper_than_the_parser_goes_is_indexed_not_a_failed_run(tmp_path: Path) -> None:
    """A generated expression of 200,000 terms makes ast raise RecursionError: the file keeps the symbols the
    fallback finds, where the error failed the whole index."""
    from engine.operations._index_files import analyze_batch

    (tmp_path / "gen.py").write_text("def f():\n    pass\nx = " + "1+" * 200_000 + "1\n")
    batch = analyze_batch(tmp_path, ["gen.py"], {}, "op1")
    assert [o[2] for o in batch.outcomes] == ["indexed"]
    assert batch.symbols == [("gen.py", "function", "f", 1, 1, "")]


def test_a_gitignore_line_of_many_wildcards_does_not_hold_the_walk(cli: Cli, tmp_path: Path) -> None:
    """pathspec compiles each ``*`` to ``[^/]*``: a .gitignore line of fifty stars and a ``b`` took hours on
    every name of twenty characters, and the index of the tree never ended. A run of stars is one star to
    git, and is made one here (the line still ignores what it names); a line of more wildcards in one
    segment than can be matched in time is passed over."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / ".gitignore").write_text("*" * 50 + "b\n" + "*a*a*a*a*a*a*c\n")
    (root / ("a" * 30 + ".py")).write_text("x = 1\n")
    (root / "ignored.b").write_text("y = 2\n")
    (root / ("a" * 60 + "c")).write_text("z = 3\n")
    index = tmp_path / "index.sqlite"
    r = cli("--json", "run", "codebase_indexing", "-p", f"root={root}", "-p", f"output={index}", timeout=60)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(index) as db:
        paths = {p for (p,) in db.execute("SELECT path FROM files")}
    assert paths == {"a" * 30 + ".py", ".gitignore", "a" * 60 + "c"}, paths


def test_a_cleanup_pattern_of_many_wildcards_in_one_segment_is_refused(cli: Cli, tmp_path: Path) -> None:
    params = {"root": str(tmp_path), "patterns": ["*a*a*a*a*b"]}
    r = cli("submit", "cleanup_operation", "--params-json", json.dumps(params))
    assert r.returncode == 2 and "holds more than 4 wildcards in one path segment" in r.stderr, r.stderr
    assert json.loads(cli("--json", "ls").stdout) == []
