"""The embedded store: one SQLite database in a private state directory (see store.py)."""

from __future__ import annotations

from .store import LocalStore

__all__ = ["LocalStore"]
