"""dependency_analysis on a generated project: internal, stdlib and external imports (relative ones
resolved), an import-time cycle found and a type-only or function-level import not counted as one,
declared (pyproject, requirements) vs used, installed versions and licences; a worker SIGKILLed mid-run
and resumed gives the same database and result as an uninterrupted run; bad params."""

from __future__ import annotations

import sqlite3
from importlib import metadata
from pathlib import Path

from engine import Status
from engine.operations.dependency_analysis import cycles
from tests.fixtures_analysis import checkpointed_items, tables
from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params, kill_worker_when, resume, run_json, submit

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
    make_project(root, 600)
    args = ["run", "dependency_analysis", "-p", f"root={root}", "-p", f"output={tmp_path}/a.db"]
    code, whole, err = run_json(cli, *args)
    assert code == 0, err
    res = whole["result"]
    assert whole["progress"]["skipped"] == 1 and whole["progress"]["failed"] == 0  # broken.py does not parse
    assert res["modules"] == 606  # from src/: demo, demo.a, ..., demo.gen.m0000
    gen_ring = [f"demo.gen.m{i:04d}" for i in range(600)]
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

    op_id = submit(
        cli, "dependency_analysis", {"root": str(root), "output": f"{tmp_path}/b.db"}, "checkpoint_interval=0.05"
    )
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
