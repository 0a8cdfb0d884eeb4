"""Theme files: the built-ins load, a user's file is added, a bad file is warned about and skipped;
and an SVG snapshot of the real main screen (fixed records and clock) in each built-in theme."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Label

from engine import Engine, InvalidInput, Settings, load_settings, open_store, save_setting
from engine.paths import default_config_file
from tui.app import OutlastApp
from tui.themes import BUILTIN_DIR, DEFAULT_THEME, load_themes, next_theme, register_themes
from tui.widgets.operations import OperationsTable

from .fixtures_disk import dead_pid, leave_temps
from .fixtures_tui import NOW, make_app, select, wait_for

BUILTINS = ["outlast-dark", "outlast-light", "outlast-high-contrast"]


def test_builtins_load_in_cycle_order_with_no_warning(tmp_path: Path) -> None:
    warnings: list[str] = []
    themes = load_themes(tmp_path / "none", warn=warnings.append)
    assert [t.name for t in themes][:3] == BUILTINS
    assert DEFAULT_THEME in {t.name for t in themes}
    assert warnings == []
    light = next(t for t in themes if t.name == "outlast-light")
    assert light.dark is False and light.background == "#f6f7f9"
    assert sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))[:3] == ["dark", "high-contrast", "light"]


def test_user_theme_added_and_overrides_by_name(tmp_path: Path) -> None:
    (tmp_path / "sunset.toml").write_text('primary = "#ff8800"\nbackground = "#201010"\n[variables]\nborder = "red"\n')
    (tmp_path / "mine.toml").write_text('name = "outlast-light"\nprimary = "green"\ndark = false\n')
    (tmp_path / "notes.txt").write_text("not a theme")
    warnings: list[str] = []
    themes = {t.name: t for t in load_themes(tmp_path, warn=warnings.append)}
    assert warnings == []
    assert list(themes)[:4] == [*BUILTINS, "sunset"]
    assert themes["sunset"].primary == "#ff8800" and themes["sunset"].variables == {"border": "red"}
    assert themes["outlast-light"].primary == "green"  # the user's file replaced the built-in


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('primary = "#ff0000"\nbackgrund = "#000000"\n', ["backgrund", "unknown key"]),
        ('primary = "not-a-colour"\n', ["primary", "not a colour"]),
        ('background = "#000000"\n', ["primary", "missing"]),
        ('primary = "red"\ndark = "yes"\n', ["dark", "true or false"]),
        ('primary = "red"\ntext_alpha = 3\n', ["text_alpha", "0 to 1"]),
        ('primary = "red"\n[variables]\nborder = 3\n', ["variables.border"]),
        ('primary = "#ff0000\n', ["not valid TOML"]),
    ],
)
def test_bad_file_is_one_warning_naming_file_and_key_and_skipped(tmp_path: Path, text: str, names: list[str]) -> None:
    (tmp_path / "broken.toml").write_text(text)
    (tmp_path / "good.toml").write_text('primary = "#123456"\n')
    warnings: list[str] = []
    themes = [t.name for t in load_themes(tmp_path, warn=warnings.append)]
    assert themes == [*BUILTINS, "good"]
    assert len(warnings) == 1, warnings
    assert "\n" not in warnings[0] and str(tmp_path / "broken.toml") in warnings[0]
    for part in names:
        assert part in warnings[0]


def test_default_user_dir_is_the_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "outlast" / "themes").mkdir(parents=True)
    (tmp_path / "outlast" / "themes" / "ocean.toml").write_text('primary = "#0077be"\n')
    assert "ocean" in [t.name for t in load_themes()]


def test_next_theme_wraps_and_recovers_from_unknown() -> None:
    assert next_theme(BUILTINS, "outlast-dark") == "outlast-light"
    assert next_theme(BUILTINS, "outlast-high-contrast") == "outlast-dark"
    assert next_theme(BUILTINS, "textual-dark") == "outlast-dark"


# ---- saving the chosen theme (the `t` key) in the user's config file -----------------------------


@pytest.fixture
def umask_022() -> Any:
    """The common umask: a file made without an explicit mode would be 0644 (readable by everyone)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_saving_the_theme_writes_through_a_symlink_and_keeps_the_file_private(tmp_path: Path, umask_022: None) -> None:
    real = tmp_path / "dotfiles" / "outlast.toml"
    real.parent.mkdir()
    real.write_text('# my redis password lives here\nstore = "redis://:s3cret@localhost:6379/0"\nmax_concurrent = 2\n')
    real.chmod(0o600)
    link = tmp_path / "xdg" / "outlast" / "config.toml"
    link.parent.mkdir(parents=True)
    link.symlink_to(real)

    assert save_setting("theme", "outlast-light", link) == link
    assert link.is_symlink() and link.resolve() == real  # still the user's link, the real file updated
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert real.read_text().startswith("# my redis password lives here\n")
    settings = load_settings(link, env={})
    assert (settings.theme, settings.max_concurrent, settings.store) == (
        "outlast-light",
        2,
        "redis://:s3cret@localhost:6379/0",
    )
    assert sorted(p.name for p in real.parent.iterdir()) == ["outlast.toml"]  # no temp file left
    assert sorted(p.name for p in link.parent.iterdir()) == ["config.toml"]


def test_saving_the_theme_removes_what_a_write_killed_midway_left_beside_the_config(tmp_path: Path) -> None:
    """A dashboard killed while it saved its theme leaves ``.config.toml.PID.NS.tmp`` beside the config file, for
    ever. The next save removes those whose writer is gone and that are a minute old; a live writer's, a fresh
    one, and another program's file of the same shape stay (the config's directory is the user's)."""
    gone = dead_pid()
    path = tmp_path / "config.toml"
    path.write_text("max_concurrent = 4\n")
    left = {
        "dead, old": tmp_path / f".config.toml.{gone}.1.tmp",
        "dead, fresh": tmp_path / f".config.toml.{gone}.2.tmp",
        "alive, old": tmp_path / f".config.toml.{os.getpid()}.3.tmp",
        "not ours, dead, old": tmp_path / f".notes.toml.{gone}.4.tmp",
    }
    leave_temps(left)
    save_setting("theme", "outlast-light", path)
    kept = {what for what, path in left.items() if path.exists()}
    assert kept == {"dead, fresh", "alive, old", "not ours, dead, old"}, kept
    assert load_settings(path, env={}).theme == "outlast-light"


def test_saving_the_theme_in_a_new_config_file_makes_it_private(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "new" / "config.toml"
    save_setting("theme", "outlast-light", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_settings(path, env={}).theme == "outlast-light"


def test_saving_the_theme_keeps_a_group_readable_file_group_readable(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "config.toml"
    path.write_text("max_concurrent = 4\n")
    path.chmod(0o640)
    save_setting("theme", "outlast-light", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the file's own mode, not the umask's, not narrowed


@pytest.mark.parametrize(
    "written",
    [
        'theme = "outlast-dark"',
        '"theme" = "outlast-dark"',
        "'theme' = 'outlast-dark'",
        '  "th\\u0065me"="outlast-dark"   # the escape spells theme',
        'theme = "outlast-dark" # a "#" in the comment',
    ],
)
def test_saving_the_theme_replaces_the_key_however_toml_lets_it_be_written(tmp_path: Path, written: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"# top\nmax_concurrent = 2\n{written}\nauto_resume = true\n\n[profiles.demo]\nbase_timeout = 30\n")
    save_setting("theme", "outlast-light", path)
    text = path.read_text()
    data = tomllib.loads(text)  # parses: no second theme line ("Cannot overwrite a value")
    assert data == {
        "max_concurrent": 2,
        "theme": "outlast-light",
        "auto_resume": True,
        "profiles": {"demo": {"base_timeout": 30}},
    }
    assert text.startswith("# top\nmax_concurrent = 2\n") and text.endswith("\n[profiles.demo]\nbase_timeout = 30\n")
    assert ("#" in written) == ("#" in text.splitlines()[2])  # a comment on the line is kept
    assert load_settings(path, env={}).theme == "outlast-light"


def test_saving_the_theme_adds_it_at_top_level_before_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('store = """\ntheme = "not a key: text in a string"\n"""\n\n[profiles.demo]\nbase_timeout = 30\n')
    save_setting("theme", "outlast-light", path)
    data = tomllib.loads(path.read_text())
    assert data["theme"] == "outlast-light" and data["store"] == 'theme = "not a key: text in a string"\n'
    assert data["profiles"] == {"demo": {"base_timeout": 30}}


@pytest.mark.parametrize(
    "text",
    ['theme = """\noutlast-dark"""\n', "theme = \n", "max_concurrent = 2\n[oops\n"],
    ids=["multi-line value", "invalid", "broken table"],
)
def test_saving_the_theme_refuses_rather_than_writing_a_file_that_does_not_parse(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=r"config\.toml") as e:
        save_setting("theme", "outlast-light", path)
    assert "\n" not in str(e.value)
    assert path.read_text() == text  # unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


async def test_theme_key_saves_in_the_config_file_the_dashboard_loaded(state_dir: Path, tmp_path: Path) -> None:
    """``outlast --config FILE``: the theme goes to FILE (it went to OUTLAST_CONFIG or the default file)."""
    given = tmp_path / "given.toml"
    given.write_text("max_concurrent = 2\n")
    settings = load_settings(given, state_dir=state_dir, plugins=["tests.ops_for_tests"])
    app = make_app(settings)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("t")
        assert app.theme != DEFAULT_THEME
    assert load_settings(given, env={}).theme == app.theme
    assert not default_config_file().exists()


class ThemedApp(App[None]):
    """A tiny app that registers the themes the way the dashboard does."""

    def __init__(self, user_dir: Path) -> None:
        super().__init__()
        self.user_dir = user_dir
        self.names: list[str] = []

    def on_mount(self) -> None:
        self.names = register_themes(self, self.user_dir)
        self.theme = DEFAULT_THEME

    def compose(self) -> ComposeResult:
        yield Label("themed")


async def test_registered_themes_apply_to_a_running_app(tmp_path: Path) -> None:
    (tmp_path / "ocean.toml").write_text('primary = "#0077be"\nbackground = "#001122"\n')
    app = ThemedApp(tmp_path)
    async with app.run_test() as pilot:
        assert app.names == [*BUILTINS, "ocean"]
        for _ in app.names:
            app.theme = next_theme(app.names, app.theme)
            await pilot.pause()
            assert app.current_theme.name == app.theme
        assert app.theme == DEFAULT_THEME  # one full cycle
        app.theme = "ocean"
        await pilot.pause()
        assert app.screen.styles.background.hex.lower() == "#001122"


# ---- each theme on the real main screen ----------------------------------------------------------


def _themed_app(settings: Settings, theme: str) -> OutlastApp:
    """The dashboard over the fixture's fixed records, started with ``theme`` chosen in the settings."""
    settings.theme = theme
    engine = Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False)
    return make_app(settings, engine=engine, clock=lambda: NOW, poll=3600.0)


FAILED_OP = "06b4000000002"
"""Selected for the snapshot: its detail shows the theme's error colour."""


async def _loaded(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, OutlastApp)
    table = app.query_one(OperationsTable)
    await wait_for(pilot, lambda: len(table.ids) == 9 and app.model.history)
    await wait_for(pilot, lambda: app.dashboard.panes_mounted)  # mounted after the first frame
    await select(pilot, FAILED_OP)
    await wait_for(pilot, lambda: app.dashboard.selected == FAILED_OP)
    await pilot.pause(0.3)
    assert app.theme == app.settings.theme  # the persisted choice was applied at start-up


@pytest.mark.parametrize("theme", BUILTINS)
def test_snapshot_main_screen_in_each_theme(seeded: Settings, snap_compare: Any, theme: str) -> None:
    # 80x24 shows the table, the detail pane and the tabs; side by side (120 columns and more) the
    # checkpoints table now and then sizes its columns a frame late, which would make the SVG vary.
    assert snap_compare(_themed_app(seeded, theme), terminal_size=(80, 24), run_before=_loaded)


# ---- contrast: every text cell the user sees, in every built-in theme --------------------------------


def _luminance(c: Any) -> float:
    def channel(v: int) -> float:
        x = v / 255
        return x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4

    r, g, b = c.triplet
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(fg: Any, bg: Any) -> float:
    """WCAG 2 contrast ratio of two Rich colours (1 to 21)."""
    a, b = sorted((_luminance(fg), _luminance(bg)))
    return (b + 0.05) / (a + 0.05)


BAR = "━╸"
"""A progress bar's filled part: a graphic, held to WCAG's 3:1 for non-text (the rest is decoration)."""


def low_contrast_cells(app: App[Any]) -> list[str]:
    """Every run of text on the current screen whose colours read below WCAG AA (4.5:1; 3:1 for the
    bar), as it is drawn: the widgets' own rendered lines, colours resolved by Textual."""
    from textual.geometry import Region

    bad: set[str] = set()
    for widget in app.screen.query("*"):
        region = widget.region
        if not widget.display or not region.area:
            continue
        for strip in widget.render_lines(Region(0, 0, region.width, region.height)):
            for seg in strip:
                style = seg.style
                text = seg.text.strip()
                is_bar = bool(text) and set(text) <= set(BAR) and type(widget).__name__ == "OperationsTable"
                if not (any(ch.isalnum() for ch in text) or is_bar) or style is None:
                    continue
                fg, bg = (style.bgcolor, style.color) if style.reverse else (style.color, style.bgcolor)
                if fg is None or bg is None:
                    continue
                need = 3.0 if is_bar else 4.5
                ratio = contrast(fg, bg)
                if ratio < need:
                    name = f"{type(widget).__name__}#{widget.id}" if widget.id else type(widget).__name__
                    bad.add(f"{name}: {text[:24]!r} {fg.triplet.hex} on {bg.triplet.hex} = {ratio:.2f}")
    return sorted(bad)


@pytest.mark.parametrize("theme", BUILTINS)
async def test_every_text_on_the_main_screen_and_the_launch_form_reads_at_wcag_aa(seeded: Settings, theme: str) -> None:
    """The light theme's table header, ID column and `cancelled` were white on near-white; the
    high-contrast theme's selected row white on yellow. Checked at both layouts, with the table
    focused (cursor colours) and blurred, and on the launch form."""
    for size in ((80, 24), (160, 50)):
        app = _themed_app(seeded, theme)
        async with app.run_test(size=size) as pilot:
            await _loaded(pilot)
            found = low_contrast_cells(app)
            app.query_one(OperationsTable).blur()
            await pilot.pause()
            found += low_contrast_cells(app)
            await pilot.press("n")
            await pilot.pause(0.3)
            found += low_contrast_cells(app)
        assert not found, f"{theme} at {size[0]}x{size[1]}:\n" + "\n".join(sorted(set(found)))


def test_a_wheel_installed_not_editable_carries_the_built_in_themes(tmp_path: Path) -> None:
    """Installed from a wheel (pipx, pip install *.whl) the themes were missing: only tui/app.tcss was
    package data. The wheel is built and installed into a directory of its own; the dashboard runs
    headless from there and must load the three built-ins."""
    import shutil
    import subprocess
    import sys

    from .conftest import REPO

    # Built from a copy of the sources: built in the work tree, setuptools left a build/ there, whose
    # stale modules (one deleted from the source stays in build/lib) would ship in the next local wheel.
    target, source = tmp_path / "site", tmp_path / "source"
    junk = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("engine", "tui"):
        shutil.copytree(REPO / name, source / name, ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    # One pip: installing a source tree (not -e), pip builds its wheel through the build backend (PEP 517, an
    # isolated build) and installs that wheel, as `pip wheel` then `pip install *.whl` did in two processes.
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(source)], check=True)
    (record,) = target.glob("outlast-*.dist-info/RECORD")
    assert "tui/theme_files/dark.toml" in record.read_text()  # installed from the wheel, as its record lists
    script = """
import asyncio, sys, tui
from engine import load_settings
from tui.app import OutlastApp
async def main():
    app = OutlastApp(load_settings(state_dir=sys.argv[1]))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        print(tui.__file__)
        print(" ".join(sorted(n for n in app.available_themes if n.startswith("outlast-"))))
        print(app.theme)
asyncio.run(main())
"""
    env = {**os.environ, "PYTHONPATH": str(target), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    r = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "state")], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    where, names, current = r.stdout.split("\n")[:3]
    assert where.startswith(str(target))  # the wheel's copy ran, not the source tree
    assert names.split() == sorted(BUILTINS) and current == DEFAULT_THEME
    assert "not found" not in r.stderr
