"""Helpers shared by the built-in operations: where outputs go, path checks."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Any

SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "__pycache__",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "site-packages",
    }
)


def output_dir(ctx: Any) -> Path:
    """The state directory of the engine running ``ctx`` (the store's, else the settings')."""
    store_dir = getattr(ctx._engine.store, "state_dir", None)
    base = Path(store_dir) if store_dir else Path(ctx._engine.settings.state_dir).expanduser()
    d = base / "outputs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def existing_dir(value: str, name: str) -> str:
    """``value`` as an absolute path to an existing directory, or a ValueError naming ``name``."""
    p = Path(value).expanduser()
    if not p.is_dir():
        raise ValueError(f"{name} {value!r} is not an existing directory")
    return str(p.resolve())


def output_in_existing_dir(value: str | None, name: str = "output") -> str | None:
    """``value`` unchanged when its directory exists (or it is None), else a ValueError naming ``name``."""
    if value is not None and not Path(value).expanduser().resolve().parent.is_dir():
        raise ValueError(f"{name} {value!r}: its directory does not exist")
    return value


def is_venv(d: Path) -> bool:
    """A virtualenv directory has a pyvenv.cfg (a directory we may not look into is not one)."""
    try:
        return (d / "pyvenv.cfg").exists()
    except OSError:
        return False


def libc_function(name: str) -> Any:
    """A Linux libc function by name (syncfs, prctl), or None elsewhere or when it is missing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


_SYNCFS = libc_function("syncfs")


def sync_tree(path: Path) -> None:
    """Flush everything written to ``path``'s file system to disk: one syncfs(2) on Linux, else sync(2).

    Cheaper than an fsync per file when many small files were written (one journal commit for all).
    """
    if _SYNCFS is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if _SYNCFS(fd) == 0:
                return
        finally:
            os.close(fd)
    os.sync()
