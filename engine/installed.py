"""The entry points of the installed distributions, remembered between processes.

Finding them (``importlib.metadata.entry_points``) reads every installed distribution's metadata, and importing
``importlib.metadata`` alone cost ``outlast submit`` about half a bare ``python -c pass``. A scan's answer for
the groups a command asks about (``GROUPS``: Outlast's operations, pydantic's plugins) is kept in the user's cache
directory with what it read (``installed_key``), and used while that is unchanged: a distribution installed,
removed or upgraded, or its ``entry_points.txt`` changed, and the scan is made again. Best effort: a cache that
cannot be read or written is a scan. Light: imports neither ``importlib.metadata`` (unless it scans) nor pydantic,
so the command line can ask before pydantic builds its first model (``skip_pydantic_plugin_scan``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types
from typing import Any

OPERATIONS_GROUP = "outlast.operations"
PYDANTIC_GROUP = "pydantic"
"""The group pydantic finds its plugins in (``pydantic.plugin._loader``)."""
GROUPS = (OPERATIONS_GROUP, PYDANTIC_GROUP)
ENTRY_POINTS_CACHE = "entry-points.json"
"""The entry points of ``GROUPS`` last found, and what was read to find them (``installed_key``)."""
PYDANTIC_LOADER = "pydantic.plugin._loader"

Found = list[tuple[str, str]]
"""Entry points as (name, value) pairs, in the order ``entry_points`` lists them."""


_found: dict[str, Found] | None = None
"""Every group's answer, once a process: a command asks for two groups (pydantic's before its first model,
the operations' when a handler is looked up), and the key alone is a walk of every ``sys.path`` entry."""


def remembered(group: str) -> Found:
    """``entry_points(group=group)`` as (name, value) pairs, as the last process with the same installed
    distributions found them; a scan (remembered for the next process) when nothing is remembered for them."""
    global _found
    if _found is None:
        key = installed_key()
        found = _read(key) if key is not None else {}
        if not found:
            found = _scan()
            if key is not None:
                _write(key, found)
        _found = found
    return _found.get(group, [])


def _read(key: list[Any]) -> dict[str, Found]:
    """The remembered answer for ``key``; empty when there is none (another key, damaged, unreadable)."""
    from .files import read_regular
    from .paths import cache_dir

    raw = read_regular(cache_dir() / ENTRY_POINTS_CACHE, 4 << 20)
    try:
        data = json.loads(raw.decode("utf-8")) if raw is not None else None
    except (ValueError, RecursionError):  # damaged (UnicodeDecodeError is a ValueError) or nested past reading
        return {}
    if not isinstance(data, dict) or data.get("key") != key:
        return {}
    # "found": the operations group's (the name it had when it was the only group remembered).
    answers = {OPERATIONS_GROUP: data.get("found"), PYDANTIC_GROUP: data.get(PYDANTIC_GROUP)}
    if not all(isinstance(f, list) and all(_name_value(p) for p in f) for f in answers.values()):
        return {}  # a cache written before pydantic's group was remembered is a scan once
    return {group: [(name, value) for name, value in found] for group, found in answers.items()}  # type: ignore[union-attr]


def _name_value(pair: object) -> bool:
    return isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)


def _scan() -> dict[str, Found]:
    from importlib.metadata import entry_points

    every = entry_points()
    return {group: [(ep.name, ep.value) for ep in every.select(group=group)] for group in GROUPS}


def _write(key: list[Any], scanned: dict[str, Found]) -> None:
    from .files import private_dirs, replace_note
    from .paths import cache_dir

    path = cache_dir() / ENTRY_POINTS_CACHE
    data = {"key": key, "found": scanned[OPERATIONS_GROUP], PYDANTIC_GROUP: scanned[PYDANTIC_GROUP]}
    with contextlib.suppress(OSError):
        private_dirs(path.parent)
        replace_note(path, json.dumps(data).encode())  # through .ENTRY_POINTS_CACHE.PID, made new


def installed_key() -> list[Any] | None:
    """What ``entry_points`` reads to find the distributions and their entry points, as a value to compare:
    for each ``sys.path`` entry, the file there (a zip: its identity and time), or the directory's
    ``*.dist-info`` and ``*.egg-info`` entries in listing order with the identity, size and time of each one's
    ``entry_points.txt``. None (no cache) when a finder other than the standard one finds distributions."""
    import stat as st_
    from importlib.machinery import PathFinder

    if [f for f in sys.meta_path if getattr(f, "find_distributions", None) is not None] != [PathFinder]:
        return None
    key: list[Any] = [sys.version, sys.prefix]
    for entry in sys.path:
        try:
            root = os.path.abspath(entry or ".")
        except OSError:  # a relative entry ("" of python -m, an editable install's hook) in a deleted directory
            return None
        try:
            st = os.stat(root)
        except OSError:
            key.append([root])
            continue
        if not st_.S_ISDIR(st.st_mode):
            key.append([root, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns])
            continue
        egg = root.lower().endswith(".egg")
        infos: list[Any] = []
        try:
            with os.scandir(root) as entries:
                for e in entries:
                    low = e.name.lower()
                    if not (low.endswith((".dist-info", ".egg-info")) or (egg and low == "egg-info")):
                        continue
                    try:
                        ep = os.stat(os.path.join(e.path, "entry_points.txt"))
                    except OSError:
                        infos.append([e.name])
                    else:
                        infos.append([e.name, ep.st_dev, ep.st_ino, ep.st_size, ep.st_mtime_ns])
        except OSError:
            return None
        key.append([root, infos])
    return key


def skip_pydantic_plugin_scan() -> bool:
    """Before pydantic builds its first model: when no installed distribution declares a ``pydantic`` entry
    point (remembered: ``remembered``), pydantic's plugin loader is answered without its scan. At its first
    model pydantic imports ``pydantic.plugin._loader``, which imports ``importlib.metadata`` (half a bare
    ``python -c pass``) to find no plugin; here ``get_plugins`` answers none, as the loader then does, and
    any other name of the loader imports the real one. With a plugin installed (or none remembered) nothing
    changes: pydantic finds and loads it itself. True when the loader is answered here."""
    if PYDANTIC_LOADER in sys.modules or remembered(PYDANTIC_GROUP):
        return False
    sys.modules[PYDANTIC_LOADER] = _no_plugins_loader()
    return True


def _no_plugins_loader() -> types.ModuleType:
    module = types.ModuleType(PYDANTIC_LOADER, "pydantic's plugin loader, when no plugin is installed")

    def get_plugins() -> tuple[()]:
        """No plugin: what the loader's scan finds when no distribution declares one."""
        return ()

    def __getattr__(name: str) -> Any:
        """A name pydantic's loader has and this one not: the real loader, in its place from now on. (Not for
        a module's own attributes: the import system asks for ``__path__`` each time it is imported.)"""
        if name.startswith("__"):
            raise AttributeError(name)
        if sys.modules.get(PYDANTIC_LOADER) is module:
            del sys.modules[PYDANTIC_LOADER]
        import importlib

        return getattr(importlib.import_module(PYDANTIC_LOADER), name)

    module.get_plugins = get_plugins  # type: ignore[attr-defined]
    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module
