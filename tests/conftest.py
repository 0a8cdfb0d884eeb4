"""Shared fixtures. Area-specific fixtures live in tests/fixtures_<area>.py, listed in pytest_plugins."""

from __future__ import annotations

import compileall
import os
import sys
from pathlib import Path

import pytest

pytest_plugins: list[str] = [
    "tests.fixtures_engine",
    "tests.fixtures_cli",
    "tests.fixtures_api",
    "tests.fixtures_redis",
    "tests.fixtures_tui",
    "tests.fixtures_disk",
]

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Compile the project's modules once, before any test starts a process.

    The suite starts about 1,500 ``outlast`` processes. Where ``PYTHONDONTWRITEBYTECODE`` is set (as on CI
    machines, and on a fresh clone whose editable install was never imported), none of them writes its
    bytecode, so each compiled every module it imports again: about 50 ms of every start-up, which no
    installed Outlast pays (pip compiles what it installs). Run by the controller, not by each xdist worker.
    """
    if not hasattr(config, "workerinput"):
        for package in ("engine", "tui"):
            compileall.compile_dir(REPO / package, quiet=1)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh state dir; config and state env pointed into tmp so no test touches the user's files."""
    d = tmp_path / "state"
    monkeypatch.setenv("OUTLAST_STATE_DIR", str(d))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for var in list(os.environ):
        if var.startswith("OUTLAST_") and var not in ("OUTLAST_STATE_DIR", "OUTLAST_REQUIRE_REDIS"):
            monkeypatch.delenv(var)
    return d


@pytest.fixture
def python() -> str:
    return sys.executable
