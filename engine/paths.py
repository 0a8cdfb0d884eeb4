"""Where Outlast keeps things by default (XDG base directories): standard library only, so that a
command can find the state dir and the config file without loading the settings model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def _xdg(var: str, fallback: str) -> Path:
    """``$var``, or ``~/fallback`` when it is unset, empty or relative: the XDG spec says a relative path there
    is invalid and ignored (taken as is, the state dir moved with the working directory of each command)."""
    value = os.environ.get(var)
    return Path(value) if value and os.path.isabs(value) else home() / fallback


def home() -> Path:
    """The user's home: HOME, else the password database's; ``/`` when neither says (no HOME, and a uid with no
    entry: ``docker run -u 12345``, ``env -i`` under such a uid), as Docker sets HOME then. Every command,
    ``--state-dir`` given or not, was an internal error there ("Could not determine home directory"): the
    default config file and cache are looked for under it."""
    try:
        return Path.home()
    except RuntimeError:
        return Path("/")


DETACHED = "detached"
"""The state dir's directory of detached runs' output (``outlast run --detach``): ``DETACHED/ID.log``."""


OTHER_STORES = ".other-stores"
"""A note in a state dir whose ``outputs`` or ``detached`` runs' output a store other than its local one (Redis,
another directory) writes too: retention reads the local store alone, and took the files of the other's
operations, a Redis operation's report minutes after it completed, for those of operations removed long ago."""


def note_other_store(state_dir: str | os.PathLike[str]) -> None:
    """Leave the ``OTHER_STORES`` note in ``state_dir`` (already made), once."""
    note = Path(state_dir).expanduser() / OTHER_STORES
    if not note.exists():
        os.close(os.open(note, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))


def detached_log(state_dir: str | os.PathLike[str], op_id: str) -> Path:
    """Where a detached run of ``op_id`` writes its output (the directory is not made here)."""
    return Path(state_dir).expanduser() / DETACHED / f"{op_id}.log"


def default_state_dir() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state") / "outlast"


def cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "outlast"


def config_dir() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "outlast"


def default_config_file() -> Path:
    return config_dir() / "config.toml"


def config_file(given: str | Path | None, env: Mapping[str, str]) -> Path | None:
    """The config file the settings are read from: the one given (``--config``, else OUTLAST_CONFIG),
    even if it is missing (reading it says so); else the default one if it exists; None: no file."""
    if given is not None and not str(given).strip():
        # ``--config ""`` read the default file when there was one, and said "config file not found" naming
        # it when there was none: neither is the file the user gave.
        from .errors import InvalidInput

        raise InvalidInput("--config: empty: expected a config file path")
    explicit = given is not None or bool(env.get("OUTLAST_CONFIG"))
    raw = Path(given or env.get("OUTLAST_CONFIG") or default_config_file())
    try:
        path = raw.expanduser()
    except RuntimeError:  # "~nouser/c.toml": an internal error at every command
        from .errors import InvalidInput

        what = "--config" if given is not None else "environment OUTLAST_CONFIG"
        raise InvalidInput(f"{what}: cannot expand {str(raw).split('/', 1)[0]!r}: no such user") from None
    return path if explicit or path.exists() else None
