"""Config files that passed the full settings check, remembered by content, so that a quick ``ls``
may trust one without loading the settings model.

``outlast ls`` reads the local store directly when nothing could change its answer (see
``App.quick_state_dir``). A config file used to rule that out, since only the settings model can tell
whether the file is valid, and loading it costs most of a start-up: with the config file the dashboard
writes its theme to, every ``ls`` took the slow path. Now, once the settings model has accepted a file
whose content sets no store and no plugins, that content and the state dir it names are kept in the
user's cache directory (0600; content, not a hash: hashlib alone would cost 3 ms of a 30 ms start-up);
a quick ``ls`` whose config file holds that content again uses that state dir.
A file edited since (any byte) is checked in full again, and so says what is wrong with it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..files import private_dirs, read_regular, replace_note, sweep_dead_pid_temps
from ..paths import cache_dir

KEEP = 16
"""Config files remembered (the newest checked first)."""
MAX_SIZE = 64 << 10
"""A bigger config file is not remembered (it is checked in full each time)."""


TEMP_STEM = "checked-configs"
"""The temp file ``remember`` writes is ``.TEMP_STEM.PID`` beside the file (swept by ``sweep_cache``)."""


def _file() -> Path:
    return cache_dir() / "checked-configs.json"


READ_LIMIT = 8 << 20
"""Bytes of the remembered configs read at most (KEEP of MAX_SIZE each, escaped as JSON)."""


def _read() -> dict[str, dict[str, str | None]]:
    # A regular file only, read without waiting: a FIFO in its place made every command with a config
    # file (``ls`` and every one that loads the settings) wait for ever.
    raw = read_regular(_file(), READ_LIMIT)
    if raw is None:
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def checked_state_dir(path: Path) -> tuple[bool, str | None]:
    """(True, the state dir the file names or None) when ``path`` holds content the full check
    accepted; (False, None) otherwise, unreadable or missing files included."""
    raw = read_regular(path)
    try:
        content = raw.decode("utf-8") if raw is not None else None
    except UnicodeDecodeError:
        content = None
    if content is None:
        return False, None
    entry = _read().get(os.path.abspath(path))
    if not isinstance(entry, dict) or entry.get("content") != content:
        return False, None
    state_dir = entry.get("state_dir")
    if isinstance(state_dir, str) and not os.path.isabs(os.path.expanduser(state_dir)):
        return False, None  # remembered before relative ones were taken from the file's directory
    return True, state_dir if isinstance(state_dir, str) else None


def remember(path: Path, content: bytes) -> None:
    """Note that ``content`` (what ``path`` held when the settings loaded from it) passed the full
    check, if a quick ``ls`` may trust it: it sets no store and no plugins. Best effort."""
    import tomllib  # here, not at import: the quick path reads no TOML

    if len(content) > MAX_SIZE:
        return
    try:
        data = tomllib.loads(content.decode("utf-8-sig"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return
    state_dir = data.get("state_dir", "-")
    if "store" in data or "plugins" in data or not isinstance(state_dir, str) or not state_dir.strip():
        return  # an empty state dir is an error the full path says (a flag may have hidden it)
    from ..config import anchored

    entries = _read()
    key = os.path.abspath(path)
    entries.pop(key, None)
    state_dir = anchored(path, data).get("state_dir")  # a relative one: from the file's directory, as loaded
    entries = {key: {"content": content.decode("utf-8"), "state_dir": state_dir}, **entries}
    with contextlib.suppress(OSError):
        private_dirs(_file().parent)
        replace_note(_file(), json.dumps(dict(list(entries.items())[:KEEP])).encode(), TEMP_STEM)


def sweep_cache() -> None:
    """Remove the temp files of the cache dir's notes (these remembered configs, the entry points found)
    that a command killed between writing one and renaming it left, once their process is gone."""
    from ..installed import ENTRY_POINTS_CACHE

    sweep_dead_pid_temps(cache_dir(), (TEMP_STEM, ENTRY_POINTS_CACHE))
