"""cleanup_operation against a hostile tester: Outlast's own store inside the root is never listed; retention
refuses a folder that holds no store and reads another store without creating anything there; the age cutoff is
on disk before anything is removed (a kill before the first interval's checkpoint no longer moves it); an empty
path is refused, and so is deleting in /, the home directory or a .git directory.

No test here runs a cleanup on /, a home directory or a .git directory: those are checked through the params
(``parse_params``, ``outlast submit``, whose operation no worker runs), with patterns that match no file."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from engine import InvalidInput
from engine.registry import get_handler
from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params

DAY = 86400
OLD = time.time() - 10 * DAY
NO_SUCH = ["outlast-test-matches-no-file.none"]
"""Patterns for the checks of refused roots: were a refusal missing, the operation would still delete nothing."""


def old_file(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (OLD, OLD))


def files(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if not p.is_dir()}


# ---- 4. empty paths, /, the home directory, .git ------------------------------------------------------------


def test_an_empty_path_is_refused_not_taken_as_the_current_directory(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-p root=$ROOT`` with ROOT unset: one line, exit 2, nothing stored (it cleaned the current directory)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.none").write_text("precious")
    bad_params(cli, "cleanup_operation", {"root": "", "patterns": ["*.none"]}, "root is empty")
    assert (tmp_path / "report.none").exists()
    for type_, params, field in [
        ("cleanup_operation", {"root": " ", "patterns": NO_SUCH}, "root"),
        ("cleanup_operation", {"retention_days": 1, "state_dir": ""}, "state_dir"),
        ("cleanup_operation", {"root": str(tmp_path), "patterns": NO_SUCH, "manifest": "  "}, "manifest"),
        ("backup_operation", {"source": "", "destination": str(tmp_path / "b")}, "source"),
        ("backup_operation", {"source": str(tmp_path), "destination": "\t"}, "destination"),
        ("codebase_indexing", {"root": ""}, "root"),
        ("comprehensive_test_suite", {"path": ""}, "path"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(f"{field} is empty")):
            get_handler(type_).parse_params(params)
