"""Theme files: the built-ins in ``tui/theme_files/`` (package data: in the wheel too) and the user's
own in the config directory.

A theme file is TOML whose keys are the fields of ``textual.theme.Theme``. A file that does
not parse or names an unknown key or a bad colour is skipped with one warning line naming the
file and the key; it never stops the dashboard from starting.
"""

from __future__ import annotations

import functools
import logging
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.app import App
from textual.color import Color, ColorParseError
from textual.theme import Theme

from engine import config_dir

log = logging.getLogger("outlast.tui.themes")

DEFAULT_THEME = "outlast-dark"
BUILTIN_ORDER = ("dark", "light", "high-contrast")
"""The built-ins first in this order when cycling with ``t``; other files follow by name."""

BUILTIN_DIR = Path(__file__).resolve().parent / "theme_files"
"""Inside the ``tui`` package, so that a wheel (pipx, pip install *.whl) carries them as package data."""

_COLOURS: tuple[str, ...] = ("primary", "secondary", "accent", "foreground", "background", "surface", "panel", "boost")
_COLOURS += ("warning", "error", "success")
_FLOATS = ("luminosity_spread", "text_alpha")
_KEYS = frozenset({"name", "dark", "variables", *_COLOURS, *_FLOATS})

Warn = Callable[[str], None]


class ThemeFileError(ValueError):
    """One line naming what is wrong in a theme file."""


def user_theme_dir() -> Path:
    return config_dir() / "themes"


def parse_theme(path: Path, prefix: str = "") -> Theme:
    """The theme in one file; ThemeFileError (naming the file and key) when it is not valid."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ThemeFileError(f"theme file {path}: cannot be read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ThemeFileError(f"theme file {path}: not valid TOML ({e})") from None
    return theme_from_dict(data, default_name=prefix + path.stem, where=str(path))


def theme_from_dict(data: dict[str, Any], default_name: str, where: str) -> Theme:
    """Check every key of a theme table and build the Theme."""

    def bad(key: str, why: str) -> ThemeFileError:
        return ThemeFileError(f"theme file {where}: {key}: {why}")

    for key in data:
        if key not in _KEYS:
            raise bad(key, f"unknown key (known: {', '.join(sorted(_KEYS))})")
    if "primary" not in data:
        raise bad("primary", "missing (every theme needs a primary colour)")
    kw: dict[str, Any] = {}
    for key in _COLOURS:
        if key in data:
            kw[key] = _colour(data[key], functools.partial(bad, key))
    for key in _FLOATS:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise bad(key, f"expected a number from 0 to 1, got {value!r}")
            kw[key] = float(value)
    if "dark" in data:
        if not isinstance(data["dark"], bool):
            raise bad("dark", f"expected true or false, got {data['dark']!r}")
        kw["dark"] = data["dark"]
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
        raise bad("name", f"expected a name without spaces, got {name!r}")
    variables = data.get("variables", {})
    if not isinstance(variables, dict):
        raise bad("variables", 'expected a table of name = "value"')
    for var, value in variables.items():
        if not isinstance(value, str):
            raise bad(f"variables.{var}", f"expected a string, got {value!r}")
    theme = Theme(name=name, variables=dict(variables), **kw)
    try:
        theme.to_color_system()  # the last word on whether Textual accepts it
    except Exception as e:
        raise bad("theme", str(e)) from None
    return theme


def _colour(value: Any, bad: Callable[[str], ThemeFileError]) -> str:
    if not isinstance(value, str):
        raise bad(f"expected a colour string, got {value!r}")
    try:
        Color.parse(value)
    except ColorParseError:
        raise bad(f"{value!r} is not a colour") from None
    return value


def _ordered(files: list[Path]) -> list[Path]:
    rank = {stem: i for i, stem in enumerate(BUILTIN_ORDER)}
    return sorted(files, key=lambda p: (rank.get(p.stem, len(rank)), p.name))


def _scan(directory: Path, prefix: str, warn: Warn) -> list[Theme]:
    try:
        files = [p for p in directory.iterdir() if p.suffix == ".toml" and p.is_file()]
    except FileNotFoundError:
        return []
    except OSError as e:
        warn(f"theme directory {directory}: cannot be read ({e})")
        return []
    out = []
    for path in _ordered(files):
        try:
            out.append(parse_theme(path, prefix))
        except ThemeFileError as e:
            warn(f"{e}; skipped")
    return out


def load_themes(user_dir: Path | None = None, warn: Warn | None = None) -> list[Theme]:
    """Built-in themes, then the user's (``user_dir``, default ``CONFIG_DIR/themes``), in cycle order.

    A user theme with the name of an earlier one replaces it in place. Bad files are skipped,
    each with one line passed to ``warn`` (default: the ``outlast.tui.themes`` logger).
    """
    say: Warn = warn or log.warning
    if not BUILTIN_DIR.is_dir():
        say(f"built-in themes not found at {BUILTIN_DIR}; using Textual's")
    themes: dict[str, Theme] = {}
    for theme in _scan(BUILTIN_DIR, "outlast-", say) + _scan(user_dir or user_theme_dir(), "", say):
        themes[theme.name] = theme
    return list(themes.values())


def register_themes(app: App[Any], user_dir: Path | None = None, warn: Warn | None = None) -> list[str]:
    """Register every theme with ``app``; their names in the order ``t`` cycles through them."""
    names = []
    for theme in load_themes(user_dir, warn):
        app.register_theme(theme)
        names.append(theme.name)
    return names


def next_theme(names: list[str], current: str) -> str:
    """The theme after ``current`` in ``names`` (wrapping); the first when ``current`` is not there."""
    if not names:
        return current
    try:
        return names[(names.index(current) + 1) % len(names)]
    except ValueError:
        return names[0]
