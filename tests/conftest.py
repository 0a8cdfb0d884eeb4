"""Shared fixtures. Area-specific fixtures live in tests/fixtures_<area>.py, listed in pytest_plugins."""

from __future__ import annotations

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
]

REPO = Path(__file__).resolve().parent.parent


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
