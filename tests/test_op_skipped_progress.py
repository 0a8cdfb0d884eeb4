"""A completed analysis is at 100% however many of the files it listed were skipped (FIFOs, symlinks).

Skipped files did not count as looked at: `outlast run codebase_indexing` of a tree with a FIFO and two
symlinks ended "completed 33.3% 2/6 items", and `outlast ls` kept showing it so, as if files were missing
(security_scan already counted them, and backups list such files outside their total)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine import Engine, OperationSpec, Status


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    (root / "a.py").write_text("import os\n\n\ndef f():\n    return os.sep\n")
    (root / "d" / "b.md").write_text("# Title\n\nhello world, twice hello\n")
    os.mkfifo(root / "f.py")
    os.mkfifo(root / "g.md")
    (root / "l.py").symlink_to("a.py")
    (root / "l.md").symlink_to("d/b.md")
    return root


@pytest.mark.parametrize(
    ("type_", "key"),
    [
        ("codebase_indexing", "root"),
        ("code_analysis", "root"),
        ("dependency_analysis", "root"),
        ("semantic_analysis", "root"),
        ("kb_population", "source"),
    ],
)
async def test_skipped_files_count_as_looked_at(
    engine: Engine, tree: Path, tmp_path: Path, type_: str, key: str
) -> None:
    params: dict = {key: str(tree)}
    if type_ == "kb_population":
        params["kb"] = str(tmp_path / "kb.sqlite")
    op = await engine.submit(OperationSpec(type=type_, params=params))
    final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED, final.error
    p = final.progress
    assert p.skipped >= 1, p  # the tree does make it skip some
    assert p.total and p.done == p.total and p.percent == 100.0, p
