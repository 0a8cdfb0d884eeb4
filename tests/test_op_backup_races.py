"""backup_operation against a source that changes under it, found by a hostile tester: a source file named like
another's partial, a file rewritten or grown while it is copied, a directory swapped for a link after the
listing; and a destination on a kernel file system. Each test failed before its fix (changes made in
process, through the module's own functions: no timing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params

# ---- the destination ------------------------------------------------------------------------------------------


def test_a_destination_on_a_kernel_file_system_is_refused_at_validation(cli: Cli, tmp_path: Path) -> None:
    """``/proc/hunt``: os.access says /proc is writable, so it was accepted, stored, and the run failed with a
    raw FileNotFoundError from mkdir. Now one line, exit 2, nothing stored, nothing made."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    (tmp_path / "src").mkdir()
    bad_params(
        cli,
        "backup_operation",
        {"source": str(tmp_path / "src"), "destination": "/proc/hunt"},
        "kernel file system",
    )
