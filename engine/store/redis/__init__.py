"""The distributed store: every process points at one Redis (see store.py)."""

from __future__ import annotations

from .store import RedisStore

__all__ = ["RedisStore"]
