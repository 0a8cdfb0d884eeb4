"""Where Outlast keeps things by default (XDG base directories): standard library only, so that a
command can find the state dir and the config file without loading the settings model."""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def default_state_dir() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state") / "outlast"


def cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "outlast"


def config_dir() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "outlast"


def default_config_file() -> Path:
    return config_dir() / "config.toml"
