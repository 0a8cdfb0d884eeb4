"""Settings: defaults < config file (TOML) < environment (OUTLAST_*) < explicit arguments.

Every value remembers where it came from, so ``outlast config`` can say. A bad config
raises InvalidInput naming the file, the key and the problem in one line.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator

from .files import DIR_MODE, read_limited, replace_keeping_mode
from .limits import MAX_CONCURRENT
from .models import MAX_SECONDS, InvalidInput, number_keys
from .paths import config_dir as config_dir  # re-exported: they were defined here
from .paths import config_file as find_config_file
from .paths import default_config_file, default_state_dir
from .profiles import TimeoutProfile, bounds_text, field_bounds, profile_for

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_URL_BOUNDS = {"retry_for": (0.0, MAX_SECONDS), "lease_ttl": (0.5, 3600.0)}
"""Outlast's own query parameters of a Redis URL and their ranges, in seconds."""


USERINFO_CUT = (
    "the user or password in the URL holds '#', '/' or '?', which end that part of a URL: write them"
    " percent-encoded (%23, %2F, %3F; and '@' as %40, '%' as %25)"
)


def userinfo_cut(url: str) -> bool:
    """Whether a ``#``, ``/`` or ``?`` in a URL's user or password ended its authority early: an ``@`` is
    left in its path, fragment or a query key, where none belongs. Read so, a piece of the password was
    the port or the host, and printed as such ("Port could not be cast to integer value as 'secret'")."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if "@" in parts.path or "@" in parts.fragment:
        return True
    return any("@" in key for key, _ in parse_qsl(parts.query, keep_blank_values=True))


def redact_url(url: str | None) -> str | None:
    """``url`` with its password replaced by ``***``: the only form of a store URL that is ever shown."""
    if not url or "@" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or userinfo_cut(url):
        return url.split("://", 1)[0] + "://***@" + url.rsplit("@", 1)[-1]
    if parts.password is None:
        return url
    hidden = f"{parts.username or ''}:***@{parts.netloc.rsplit('@', 1)[-1]}"
    return url.replace(parts.netloc, hidden, 1)


def check_store_url(url: str) -> str:
    """A store value that can be opened: a directory path or a complete Redis URL, else ValueError in
    one line (the password redacted). ``redis://host/abc`` used to mean database 0."""
    shown = redact_url(url)
    if not url.strip():
        raise ValueError("empty: expected a directory or a redis:// URL")
    if not url.startswith(REDIS_SCHEMES):
        if "://" in url:
            raise ValueError(f"{shown!r}: expected a directory or a redis://, rediss:// or unix:// URL")
        return url
    if userinfo_cut(url):
        raise ValueError(f"{shown!r}: {USERINFO_CUT}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range or not a number
    except ValueError as e:
        raise ValueError(f"{shown!r}: {e}") from None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{shown!r}: no socket path")
    else:
        if not parts.hostname:
            raise ValueError(f"{shown!r}: no host")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"{shown!r}: database {db!r} is not a database number: 0 or above (redis://HOST:PORT/0)")
    if "db" in query and not query["db"].isdigit():
        raise ValueError(f"{shown!r}: database {query['db']!r} is not a database number: 0 or above")
    for key, (low, high) in _URL_BOUNDS.items():
        if key not in query:
            continue
        try:
            value = float(query[key])
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"{shown!r}: {key}={query[key]!r}: expected {low:g} to {high:.10g} seconds")
    return url


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    state_dir: Path = Field(default_factory=default_state_dir)
    store: str | None = None
    """Store URL: None or a path for the local store, ``redis://...`` for Redis."""
    namespace: str = Field(default="outlast", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    checkpoint_mirror: Path | None = None
    max_concurrent: int = Field(default=3, ge=1, le=MAX_CONCURRENT)
    auto_resume: bool = False
    """Resume operations found interrupted when an engine opens the store."""
    checkpoints_keep: int = Field(default=5, ge=1, le=1000)
    grace_period: float = Field(default=10.0, ge=0, le=MAX_SECONDS)
    """Seconds a handler has to reach a cooperative stop before it is cancelled by force."""
    abandon_after: float = Field(default=5.0, gt=0, le=MAX_SECONDS)
    """Seconds a handler's task may run on after its forced cancel before the attempt is settled without it
    (a handler that catches the cancel too kept its operation ``running``, and its process alive, for ever)."""
    store_outage_limit: float = Field(default=10.0, gt=0, le=3600)
    """Seconds the store may fail to write (disk full, read-only) before running work stops as interrupted."""
    log_limit: int = Field(default=64 * 2**20, ge=2**10, le=2**40)
    """Bytes an attempt writes to its log (a command's output lines); past it the lines are counted and
    only the last 1,000 are kept."""
    aging_seconds: float = Field(default=300.0, gt=0, le=MAX_SECONDS)
    """Queue aging: waiting this long lifts work by one priority level."""
    control_poll_interval: float = Field(default=0.15, gt=0, le=5)
    """Seconds between reads of cancel/pause requests written by other processes."""
    progress_flush_interval: float = Field(default=1.0, gt=0, le=60)
    """How often live progress of running operations is written to the store for other processes."""
    max_memory_percent: float | None = Field(default=None, gt=0, le=100)
    """Admission control: start no new work while system memory use is above this."""
    max_cpu_percent: float | None = Field(default=None, gt=0, le=100)
    theme: str = "outlast-dark"
    plugins: list[str] = Field(default_factory=list)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    origins: dict[str, str] = Field(default_factory=dict, exclude=True)
    _config_file: Path | None = PrivateAttr(default=None)

    @property
    def config_file(self) -> Path | None:
        """The config file these settings were read from (None: none), so that a setting changed by the
        dashboard is saved where it was read (``--config FILE`` included), not in another file."""
        return self._config_file

    @field_validator("*", mode="before")
    @classmethod
    def _kind_as_written(cls, v: Any, info: ValidationInfo) -> Any:
        """A number where a number belongs, true or false where a switch does: pydantic's lax mode read
        ``max_concurrent = true`` as 1 and ``auto_resume = 1`` (or ``"yes"``, a string) as true, so a config
        file ran with a value it did not say, without a word. The environment's forms are
        read before this (``_from_env``: ``OUTLAST_AUTO_RESUME=1``/``yes``/``on`` is true, a number's
        variable is its text, which the field reads as a number or refuses)."""
        name = info.field_name or ""
        if name == "auto_resume" and not isinstance(v, bool):
            raise ValueError(f"{_written(v)} is not true or false (a TOML boolean: auto_resume = true)")
        if isinstance(v, bool) and name in number_keys(cls):
            whole = cls.model_fields[name].annotation is int
            bounds = field_bounds(cls, (name,))
            allowed = f", {bounds_text(name, bounds)}" if bounds else ""
            raise ValueError(f"{_written(v)} is not a number (expected {'a whole' if whole else 'a'} number{allowed})")
        return v

    @field_validator("store")
    @classmethod
    def _store_ok(cls, v: str | None) -> str | None:
        return None if v is None else check_store_url(v)

    @field_validator("namespace")
    @classmethod
    def _namespace_ok(cls, v: str) -> str:
        """Said with the other settings, not when a Redis store is opened: the checkpoint mirror keeps a
        namespace in a directory of its name, and ``..`` was the mirror's parent."""
        if v in (".", ".."):
            raise ValueError("not . or .. (it names its directory in the checkpoint mirror)")
        return v

    @field_validator("state_dir", "checkpoint_mirror", mode="before")
    @classmethod
    def _state_dir_ok(cls, v: Any) -> Any:
        """An empty path would be the working directory: a store written wherever the command ran."""
        if isinstance(v, str | Path) and not str(v).strip():
            raise ValueError("empty: expected a directory path")
        if isinstance(v, str | Path):
            try:
                Path(v).expanduser()
            except RuntimeError:  # "~nouser/x": every use of the path would fail as an internal error
                raise ValueError(f"cannot expand {str(v).split('/', 1)[0]!r}: no such user") from None
        return v

    def shown(self) -> dict[str, Any]:
        """The settings as JSON for people and scripts, secrets redacted."""
        data = self.model_dump(mode="json")
        data["store"] = redact_url(data["store"])
        return data

    def profile(self, type_: str) -> TimeoutProfile:
        return profile_for(type_, self.profiles)


def _no_string_for_a_number(origin: str, data: dict[str, Any]) -> None:
    """InvalidInput for a TOML string where a number belongs in a config file (``max_concurrent = "3"``,
    ``[profiles.demo] base_timeout = "10"``): pydantic's lax mode read it as the number, so the file was
    taken though it was not what the README says is read strictly. Only the file's layer: an environment
    variable's value is its text, and read as a number there."""
    for key in number_keys(Settings):
        if isinstance(data.get(key), str):
            whole = Settings.model_fields[key].annotation is int
            bounds = field_bounds(Settings, (key,))
            allowed = f", {bounds_text(key, bounds)}" if bounds else ""
            raise InvalidInput(
                f"{origin}: key '{key}': {_written(data[key])} is not a number (a TOML string: expected"
                f" {'a whole' if whole else 'a'} number{allowed}, written without quotes)"
            )
    profiles = data.get("profiles")
    for type_, prof in (profiles or {}).items() if isinstance(profiles, dict) else ():
        if not isinstance(prof, dict):
            continue  # load_settings says what a profile is
        for key in number_keys(TimeoutProfile):
            if isinstance(prof.get(key), str):
                raise InvalidInput(
                    f"{origin}: [profiles.{type_}] {key}: {_written(prof[key])} is not a number (a TOML string:"
                    " write the number without quotes)"
                )


def _written(value: Any) -> str:
    """A config value as TOML writes it, at most 40 characters (``true``, ``1``, ``"yes"``)."""
    text = _toml_value(value) if isinstance(value, str | int | float | bool) else repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


_ENV_KEYS = {name: f"OUTLAST_{name.upper()}" for name in Settings.model_fields if name not in ("profiles", "origins")}


def _from_env(env: dict[str, str]) -> dict[str, Any]:
    workers = env.get("OUTLAST_WORKERS", "").strip()
    if workers and not (workers.isascii() and workers.isdigit()):
        # Read by the file operations' pools when they start: "abc" and "-1" were passed over without a
        # word, and "²" (a digit to str.isdigit, none to int) failed the operation with a ValueError.
        raise InvalidInput(
            f"environment OUTLAST_WORKERS={env['OUTLAST_WORKERS']!r}: expected a whole number of worker"
            " processes (0: none; unset: one per core)"
        )
    out: dict[str, Any] = {}
    for key, var in _ENV_KEYS.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        if key == "plugins":
            out[key] = [p.strip() for p in raw.split(",") if p.strip()]
        elif key == "auto_resume":
            low = raw.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise InvalidInput(f"environment {var}={raw!r}: expected true or false")
            out[key] = low in ("1", "true", "yes", "on")
        else:
            out[key] = raw
    return out


def load_settings(
    config_file: str | Path | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the effective settings; ``overrides`` that are None are ignored (unset flags)."""
    env = dict(os.environ) if env is None else env
    path = find_config_file(config_file, env)
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        from_file = _read_toml(path)
        _no_string_for_a_number(str(path), from_file)
        layers.append((str(path), anchored(path, from_file)))
    try:
        layers.append(("environment", _from_env(env)))
    except InvalidInput:
        raise
    layers.append(("argument", {k: v for k, v in overrides.items() if v is not None}))

    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for origin, layer in layers:
        for key, value in layer.items():
            if key == "profiles" and isinstance(value, dict):
                merged = dict(data.get("profiles", {}))
                for t, prof in value.items():
                    if not isinstance(prof, dict):  # it was "[profiles.demo] ?: Extra inputs are not permitted"
                        raise InvalidInput(
                            f"{origin}: profiles.{t} is {type(prof).__name__} {prof!r}: a profile is a table of"
                            f" its settings ([profiles.{t}] with base_timeout = 3600, ...)"
                        )
                    merged[t] = {**merged.get(t, {}), **prof}
                    origins[f"profiles.{t}"] = origin
                data["profiles"] = merged
            else:
                data[key] = value
                origins[key] = origin
    try:
        settings = Settings.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        where = origins.get(str(err["loc"][0]) if err["loc"] else "", "config")
        msg = err["msg"].removeprefix("Value error, ")
        if where == "environment" and err["loc"]:
            where = f"environment {_ENV_KEYS.get(str(err['loc'][0]), '')}"
        if where == "argument":
            raise InvalidInput(f"--{key.replace('_', '-')}: {msg}") from None
        raise InvalidInput(f"{where}: key '{key}': {msg}") from None
    # Profiles are validated now, not at first use, so a bad one names its file.
    for type_ in settings.profiles:
        try:
            settings.profile(type_)
        except InvalidInput as e:
            raise InvalidInput(f"{origins.get(f'profiles.{type_}', 'config')}: {e}") from None
    # Profiles merge per type from every layer: each type's origin, the layers that gave any (`outlast config`
    # said "default" for profiles a config file set).
    given = [origins[k] for k in origins if k.startswith("profiles.")]
    if given and "profiles" not in origins:
        origins["profiles"] = ", ".join(dict.fromkeys(given))
    settings.origins = {k: origins.get(k, "default") for k in Settings.model_fields if k != "origins"}
    settings._config_file = path
    return settings


PATH_KEYS = ("state_dir", "checkpoint_mirror", "store")
"""Settings that name a directory (``store`` when it is no URL)."""


def anchored(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` read from the config file ``path``, with its relative directories taken from the file's
    own directory, as a config file's paths are: read from the working directory, ``state_dir = "state"``
    in the user's config file named another store in every directory a command ran in (a worker started
    elsewhere never saw what ``submit`` queued; ``ls`` in another directory listed nothing). A config
    that is no regular file (``--config <(make-config)``) has no directory of its own: its paths stay
    as written."""
    if not os.path.isfile(path):
        return data
    out = dict(data)
    for key in PATH_KEYS:
        value = out.get(key)
        if not isinstance(value, str) or not value.strip() or (key == "store" and "://" in value):
            continue  # not a directory: the settings say what is wrong with it
        try:
            expanded = Path(value).expanduser()
        except RuntimeError:  # "~nouser/x": the settings say so
            continue
        if not expanded.is_absolute():
            out[key] = str(Path(os.path.abspath(path)).parent / expanded)
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = read_limited(path).decode("utf-8-sig")  # a BOM (an editor's) was "Invalid statement" at 1:1
    except FileNotFoundError:
        raise InvalidInput(f"{path}: config file not found") from None
    except OSError as e:
        raise InvalidInput(f"{path}: cannot read config file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{path}: cannot read config file: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{path}: invalid TOML: {e}") from None
    except ValueError:  # an integer past Python's 4,300 digits: no TOMLDecodeError, an internal error
        raise InvalidInput(f"{path}: invalid TOML: a number with more digits than can be read (4,300)") from None
    unknown = sorted(set(data) - set(Settings.model_fields) - {"origins"})
    if unknown:
        raise InvalidInput(f"{path}: key '{unknown[0]}': unknown setting")
    return data


_KEY_LINE = re.compile(r"""^(\s*)([A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')\s*=""")
"""A line that sets one top-level key as TOML allows it to be written: bare, "basic" or 'literal'."""
_TABLE_LINE = re.compile(r"^\s*\[")


def _key_name(written: str) -> str | None:
    """The key a line's key text means (``"th\\u0065me"`` is ``theme``), as TOML reads it; None for text
    that is not one plain key."""
    try:
        parsed = tomllib.loads(f"{written} = 0")
    except tomllib.TOMLDecodeError:
        return None
    return next(iter(parsed)) if len(parsed) == 1 and parsed.get(next(iter(parsed))) == 0 else None


def _toml_value(value: str | int | float | bool) -> str:
    """``value`` as a TOML scalar (a JSON string is a TOML basic string, unicode kept as it is)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _trailing_comment(line: str) -> str:
    """The comment that ends a ``key = value`` line, if any (a ``#`` inside the value is not one)."""
    for i, ch in enumerate(line):
        if ch == "#":
            try:
                if len(tomllib.loads(line[:i])) == 1:
                    return "  " + line[i:]
            except tomllib.TOMLDecodeError:
                continue
    return ""


def set_top_level(text: str, key: str, value: str | int | float | bool) -> str | None:
    """``text`` (a TOML document) with the top-level ``key`` set to ``value``, everything else kept as
    written (comments, order, other keys); None when no edit of its lines parses to exactly the same
    document plus the new value (a key set in a way this cannot edit safely, such as a multi-line value).
    Every candidate is parsed before it is returned: a config that no longer parses stops every command."""
    old = tomllib.loads(text)
    want = {**old, key: value}
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines()
    tables = next((i for i, ln in enumerate(lines) if _TABLE_LINE.match(ln)), len(lines))
    candidates: list[list[str]] = []
    for i in range(tables):
        m = _KEY_LINE.match(lines[i])
        if m and _key_name(m.group(2)) == key:
            kept = f"{m.group(1)}{m.group(2)} = {_toml_value(value)}"  # the key as the user wrote it
            comment = _trailing_comment(lines[i])
            candidates += [[*lines[:i], kept + comment, *lines[i + 1 :]]] if comment else []
            candidates.append([*lines[:i], kept, *lines[i + 1 :]])
    if key not in old:  # new (a line that matched was inside a multi-line string): after the last top-level
        # line that says something, else just before the first table
        at = next(
            (i + 1 for i in range(tables - 1, -1, -1) if lines[i].strip() and not lines[i].lstrip().startswith("#")),
            tables,
        )
        candidates.append([*lines[:at], f"{key} = {_toml_value(value)}", *lines[at:]])
    for edited in candidates:
        new_text = newline.join(edited) + newline
        try:
            if tomllib.loads(new_text) == want:
                return new_text
        except tomllib.TOMLDecodeError:
            continue
    return None


def save_setting(key: str, value: str | int | float | bool, config_file: str | Path | None = None) -> Path:
    """Set one top-level scalar in the config file (the default one unless given), keeping the rest of the
    file as it is, and the file itself: its mode (a 0600 file may hold a Redis password), a symbolic link
    to it (dotfiles), its other keys however they are written. The edited text is parsed before it
    replaces the file; InvalidInput, with the file unchanged, when it would not read back as the same
    settings plus the new value. The path written (as given)."""
    if key not in Settings.model_fields or key == "origins":
        raise InvalidInput(f"unknown setting {key!r}")
    try:
        Settings.model_validate({key: value})
    except ValidationError as e:
        raise InvalidInput(f"setting {key!r}: {e.errors()[0]['msg']}") from None
    path = Path(config_file).expanduser() if config_file else default_config_file()
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise InvalidInput(f"{path}: cannot read config file: {e.strerror or e}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"{path}: not a regular file: {key} not saved")
    try:
        raw = read_limited(path) if st is not None else b""
        bom = raw[:3] == b"\xef\xbb\xbf"  # kept as the editor that wrote it left it
        text = raw.decode("utf-8-sig")
        new_text = set_top_level(text, key, value)
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{path}: cannot read config file: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{path}: invalid TOML, {key} not saved: {e}") from None
    if new_text is None:
        raise InvalidInput(
            f"{path}: {key} is set in a way that cannot be changed safely here; "
            f"set `{key} = {_toml_value(value)}` by hand"
        )
    Path(os.path.realpath(path)).parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    replace_keeping_mode(path, new_text.encode("utf-8-sig" if bom else "utf-8"))
    return path
