"""Default places (XDG base directories)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.paths import cache_dir, config_dir, default_state_dir


@pytest.mark.parametrize("value", ["", "relative/dir", "./here", "~/not-expanded-by-a-shell"])
def test_an_unset_empty_or_relative_xdg_variable_is_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    """The XDG spec: a relative path in these variables is invalid and ignored. Taken as is, the state dir
    was ``relative/dir/outlast`` under whatever directory each command ran in: operations seemed to vanish
    after a ``cd``."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(var, value)
    assert default_state_dir() == tmp_path / ".local/state/outlast"
    assert cache_dir() == tmp_path / ".cache/outlast"
    assert config_dir() == tmp_path / ".config/outlast"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "abs"))
    assert default_state_dir() == tmp_path / "abs/outlast"
