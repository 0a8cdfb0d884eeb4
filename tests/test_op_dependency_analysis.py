"""dependency_analysis on a generated project: internal, stdlib and external imports (relative ones
resolved), an import-time cycle found and a type-only or function-level import not counted as one,
declared (pyproject, requirements) vs used, installed versions and licences; a worker SIGKILLed mid-run
and resumed gives the same database and result as an uninterrupted run; bad params."""

from __future__ import annotations

import sqlite3
from importlib import metadata
from pathlib import Path

from engine import Engine, OperationSpec, Status
from engine.operations.dependency_analysis import BATCH, cycles
from tests.fixtures_analysis import checkpointed_items, tables
from tests.fixtures_cli import Cli
from tests.fixtures_ops import as_json, bad_params, kill_worker_when, resume, run_here, submit

PYPROJECT = """
[project]
name = "demo-proj"
dependencies = ["pydantic>=2", "notinstalled-pkg==1.0", "bad req !!"]
[project.optional-dependencies]
dev = ["pytest>=8"]
"""
FILES = {
    "src/demo/__init__.py": "from .a import A\n",
    "src/demo/a.py": "from . import b\nimport pydantic\nA = 1\n",
    "src/demo/b.py": "from .a import A\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from demo import c\n",
    "src/demo/c.py": "import demo.b\n\n\ndef later():\n    import demo.a\n",
    "src/demo/d.py": "import os.path, rich.console\ntry:\n    import missing_mod\nexcept ImportError:\n    pass\n",
    "src/demo/broken.py": "def (:\n",
}


def make_project(root: Path, filler: int) -> None:
    (root / "pyproject.toml").parent.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "requirements.txt").write_text("click>=8  # the CLI\n-r more.txt\n")
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    body = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(60))
    gen = root / "src" / "demo" / "gen"
    gen.mkdir()
    (gen / "__init__.py").write_text("")
    for i in range(filler):
        (gen / f"m{i:04d}.py").write_text(
            f"import json\nfrom .. import a\nfrom . import m{(i + 1) % filler:04d}\n{body}"
        )


def test_tarjan_finds_every_cycle_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"f", "a"}}
    assert cycles(graph) == [["a", "b", "c"], ["d", "e"]]


def test_sigkilled_worker_resumes_to_the_uninterrupted_analysis(cli: Cli, tmp_path: Path) -> None:
    root = tmp_path / "proj"
    # Three batches: the killed worker stands at its checkpoints and never completes (kill_worker_when), and
    # checkpoint_every gives it one however quick the batches: the kill lands mid-run at any size.
    filler = 2 * BATCH + 44
    make_project(root, filler)
    whole = run_here(tmp_path, "dependency_analysis", root=str(root), output=f"{tmp_path}/a.db")
    res = as_json(whole.result)
    assert whole.progress.skipped == 1 and whole.progress.failed == 0  # broken.py does not parse
    # from src/: demo, demo.a, demo.b, demo.c, demo.d, demo.gen (broken.py is none) and demo.gen.m0000, ...
    assert res["modules"] == 6 + filler == 306
    gen_ring = [f"demo.gen.m{i:04d}" for i in range(filler)]
    assert res["cycles"] == 2 and res["cycle_list"] == [["demo.a", "demo.b"], sorted(gen_ring)]
    assert res["external"] == ["missing_mod", "pydantic", "rich"]
    assert res["undeclared"] == ["missing-mod", "rich"]
    assert res["declared_not_imported"] == ["click", "notinstalled-pkg", "pytest"]
    assert "missing-mod" in res["not_installed"] and "notinstalled-pkg" in res["not_installed"]
    assert len(res["problems"]) == 1 and "bad req !!" in res["problems"][0]
    pyd = res["packages"]["pydantic"]
    assert pyd["version"] == metadata.version("pydantic") and pyd["license"] and pyd["declared"] == "pydantic>=2"
    db = tables(f"{tmp_path}/a.db", "modules", "imports", "packages", "cycles")
    kinds = {(r[0], r[2]): (r[4], r[5]) for r in db["imports"]}  # (path, target): (import time, kind)
    assert kinds[("src/demo/b.py", "demo.c")] == (0, "internal")  # under TYPE_CHECKING
    assert kinds[("src/demo/c.py", "demo.a")] == (0, "internal")  # inside a function
    assert kinds[("src/demo/a.py", "demo.b")] == (1, "internal")
    assert kinds[("src/demo/d.py", "os.path")] == (1, "stdlib")
    assert kinds[("src/demo/d.py", "rich.console")] == (1, "external")

    params = {"root": str(root), "output": f"{tmp_path}/b.db"}
    op_id = submit(cli, "dependency_analysis", params, "checkpoint_interval=0.05", "checkpoint_every=64")
    killed = kill_worker_when(cli, op_id, lambda op: checkpointed_items(cli, op_id) > 0)
    assert killed.status is Status.RUNNING, "the analysis was finished before the kill"
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert tables(f"{tmp_path}/b.db", "modules", "imports", "packages", "cycles") == db
    drop = ("database",)
    assert {k: v for k, v in final["result"].items() if k not in drop} == {
        k: v for k, v in res.items() if k not in drop
    }


def test_bad_params(cli: Cli, tmp_path: Path) -> None:
    bad_params(cli, "dependency_analysis", {"root": str(tmp_path), "source_root": "nope"}, "source_root")
    bad_params(cli, "dependency_analysis", {"root": str(tmp_path / "nope")}, "root")
    metrics = tmp_path / "metrics.db"
    con = sqlite3.connect(metrics)
    con.executescript("CREATE TABLE meta (key TEXT, value TEXT); INSERT INTO meta VALUES ('kind', 'code_analysis');")
    con.close()
    bad_params(cli, "dependency_analysis", {"root": str(tmp_path), "output": str(metrics)}, "a code_analysis database")


DIR_FILES = {
    "app/__init__.py": "",
    "app/core.py": "import json\n",
    # no import can name these directories: each is an import root, reached only by putting it on sys.path
    "sub dir/_compat.py": "import os\n",
    "sub dir/run.py": "import _compat\nimport app.core\nimport requests\n",
    "my-tool/pkg/__init__.py": "from .mod import x\n",
    "my-tool/pkg/mod.py": "from . import other\nx = 1\n",
    "my-tool/pkg/other.py": "import pkg.mod\n",
    "v1.2/a.py": "import b\n",
    "v1.2/b.py": "",
}


async def test_files_under_a_directory_no_import_can_name_are_named_from_it(engine: Engine, tmp_path: Path) -> None:
    """`sub dir/_compat.py` was the module "sub dir._compat": a dotted name no Python can import, read as
    a package "sub dir" (and "v1.2/a.py" as "v1.2.a", a package "v1" with a subpackage "2"). The deepest
    such directory is the import root of the files under it, named before a colon; their imports of one
    another (a sibling, a relative import) are found there, the project's own packages still found."""
    root = tmp_path / "proj"
    for rel, text in DIR_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    db = tmp_path / "deps.db"
    op = await engine.submit(OperationSpec(type="dependency_analysis", params={"root": str(root), "output": str(db)}))
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    got = tables(db, "modules", "imports")
    assert sorted((path, module) for path, module in got["modules"]) == [
        ("app/__init__.py", "app"),
        ("app/core.py", "app.core"),
        ("my-tool/pkg/__init__.py", "my-tool:pkg"),
        ("my-tool/pkg/mod.py", "my-tool:pkg.mod"),
        ("my-tool/pkg/other.py", "my-tool:pkg.other"),
        ("sub dir/_compat.py", "sub dir:_compat"),
        ("sub dir/run.py", "sub dir:run"),
        ("v1.2/a.py", "v1.2:a"),
        ("v1.2/b.py", "v1.2:b"),
    ]
    kinds = {(r[0], r[2]): r[5] for r in got["imports"]}  # (path, target): kind
    assert kinds[("sub dir/run.py", "_compat")] == "internal"
    assert kinds[("sub dir/run.py", "app.core")] == "internal"
    assert kinds[("sub dir/run.py", "requests")] == "external"
    assert kinds[("my-tool/pkg/__init__.py", "my-tool:pkg.mod.x")] == "internal"
    assert kinds[("my-tool/pkg/mod.py", "my-tool:pkg.other")] == "internal"
    assert kinds[("my-tool/pkg/other.py", "pkg.mod")] == "internal"
    assert kinds[("v1.2/a.py", "b")] == "internal"
    res = final.result
    assert res["modules"] == 9 and res["external"] == ["requests"]
    # pkg.mod imports pkg.other, which imports pkg.mod: one cycle, under its import root
    assert res["cycle_list"] == [["my-tool:pkg.mod", "my-tool:pkg.other"]]


async def test_a_module_imported_by_name_is_an_import(engine: Engine, tmp_path: Path) -> None:
    """``pytest.importorskip("rich.console")`` (how a suite uses an optional requirement), ``importlib.
    import_module("click")`` and ``__import__`` were no imports: their distributions were reported
    ``declared_not_imported``, and removing one as told silently skipped the tests that need it (an outside
    tester's find on this repository's own websockets). A name that is no literal is still not guessed."""
    root = tmp_path / "proj"
    (root / "tests").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "p"\ndependencies = ["rich", "click", "packaging"]\n')
    (root / "tests" / "test_x.py").write_text(
        'import importlib\nimport pytest\nconsole = pytest.importorskip("rich.console")\n\n\n'
        'def test_x(name):\n    importlib.import_module("click")\n    importlib.import_module(name)\n'
    )
    (root / "tests" / "conftest.py").write_text('version = __import__("packaging.version")\n')
    op = await engine.submit(OperationSpec(type="dependency_analysis", params={"root": str(root)}))
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    assert final.result["declared_not_imported"] == [], final.result
    got = {(r[0], r[2], r[3], r[4]) for r in tables(final.result["database"], "imports")["imports"]}
    assert {
        ("tests/test_x.py", "rich.console", 3, 1),  # at import time
        ("tests/test_x.py", "click", 7, 0),  # in a function: later
        ("tests/conftest.py", "packaging.version", 1, 1),
    } <= got, got
