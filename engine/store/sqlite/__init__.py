"""The embedded store: one SQLite database in a private state directory (see store.py).

``LocalStore`` is imported on first use: the quick path of ``outlast submit`` uses ``core`` and
``records`` alone, without the store's other parts (its checkpoints, logs and their aiofiles)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import LocalStore

__all__ = ["LocalStore"]


def __getattr__(name: str) -> Any:
    if name == "LocalStore":
        from .store import LocalStore

        globals()[name] = LocalStore
        return LocalStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
