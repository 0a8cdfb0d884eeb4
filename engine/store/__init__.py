"""Where state lives: ``open_store(path)`` for the embedded local store, ``open_store("redis://...")``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput

if TYPE_CHECKING:  # re-exported: the module's __getattr__ imports them on first use
    from ..config import Settings
    from .base import ItemDelta as ItemDelta
    from .base import Ledger as Ledger
    from .base import Store
    from .redis import RedisStore as RedisStore
    from .sqlite import LocalStore as LocalStore

_WHERE = {"ItemDelta": "base", "Ledger": "base", "Store": "base", "LocalStore": "sqlite", "RedisStore": "redis"}


def __getattr__(name: str) -> Any:
    """The stores' classes on first use: ``engine.store.quick`` (``outlast ls``) loads no pydantic model,
    and nothing loads the redis package before a Redis store is asked for."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def open_store(
    target: str | os.PathLike[str] | None = None, *, settings: Settings | None = None, **options: Any
) -> Store:
    """A store for ``target``: a state directory path (default: the configured one) or a redis URL.

    For Redis, ``options`` are RedisStore's (namespace, checkpoint_mirror, lease_ttl, retry_for);
    namespace and checkpoint_mirror default to ``settings``, or without them to the settings loaded
    here (the default config file, OUTLAST_* environment). A command given ``--config FILE`` passes its
    settings: loaded here, that file's namespace was not read, and its work went to the default
    namespace, where every other team's workers ran it.
    The store is returned unopened; the Engine (or ``async with store``) opens it.

    ``target`` is a ``str`` or an ``os.PathLike`` giving a ``str``, or None; anything else raises InvalidInput (as
    every other target refused here does, so a caller catches one error, and the CLI and API say it as bad input),
    not TypeError: ``open_store(123)`` made ``./123/``, ``open_store(b"/tmp/x")`` a directory named ``b'/tmp/x'``.
    An empty path (it was the current directory) and one with a NUL byte are refused too.
    """

    def configured() -> Settings:
        if settings is not None:
            return settings
        from ..config import load_settings

        return load_settings()

    if target is None:
        have = configured()
        target = have.store or have.state_dir
    text = _target_text(target)
    if text.startswith(("redis://", "rediss://", "unix://")):
        try:
            from .redis import RedisStore
        except ImportError as e:  # pragma: no cover - the redis package is a dependency
            raise InvalidInput(f"store {text.split('@')[-1]}: redis store unavailable ({e})") from None
        if "namespace" not in options or "checkpoint_mirror" not in options:
            # Callers that pass only the URL still get the configured namespace and mirror.
            have = configured()
            options.setdefault("namespace", have.namespace)
            options.setdefault("checkpoint_mirror", have.checkpoint_mirror)
        return RedisStore(text, **options)
    if "://" in text:
        raise InvalidInput(f"store {text!r}: expected a directory path or a redis:// URL")
    from .sqlite import LocalStore

    return LocalStore(Path(text))


def _target_text(target: object) -> str:
    """``target`` as the text of a path or URL; InvalidInput, in one line, for what names no store."""
    path = os.fspath(target) if isinstance(target, str | os.PathLike) else target
    if not isinstance(path, str):
        shown = repr(target) if len(repr(target)) <= 60 else repr(target)[:57] + "..."
        kind = type(path).__name__
        raise InvalidInput(
            f"store {shown}: expected a directory path (a str or os.PathLike) or a redis:// URL, not {kind}"
        )
    if not path or "\0" in path:
        why = "a NUL byte in a path" if path else "an empty path"
        raise InvalidInput(f"store {path!r}: {why}; expected a directory path or a redis:// URL")
    return path
