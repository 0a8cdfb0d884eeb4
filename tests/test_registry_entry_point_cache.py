"""The ``outlast.operations`` entry points are remembered in the user's cache directory with what finding
them read (``installed.installed_key``): a command whose installed distributions are unchanged skips the scan
of every distribution's metadata, and any change to them (one installed, removed, or its entry points
edited) is a scan again. A plugin that replaces a built-in type is honoured either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.fixtures_cli import REPO

PLUGIN = textwrap.dedent("""
    from engine import operation

    @operation("{type}")
    async def handler(ctx, params):
        return {{"by": "{module}"}}
""")

SHOW = (
    "import json, engine.registry as r\n"
    "r.load_entry_points(remembered=True)\n"
    "def source(t):\n"
    "    try:\n        return r.get_handler(t).source\n"
    "    except Exception as e:\n        return type(e).__name__\n"
    "print(json.dumps({t: source(t) for t in ('demo', 'cached_plugin_type')}))\n"
)


def _env(site: Path, cache: Path) -> dict[str, str]:
    return {
        "PYTHONPATH": f"{site}{os.pathsep}{REPO}",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cache.parent),
        "XDG_CACHE_HOME": str(cache),
        "XDG_CONFIG_HOME": str(cache.parent / "config"),
        "OUTLAST_STATE_DIR": str(cache.parent / "state"),
    }


def sources(site: Path, cache: Path) -> dict[str, str]:
    env = _env(site, cache)
    r = subprocess.run([sys.executable, "-c", SHOW], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def submitted_params(site: Path, cache: Path) -> object:
    """``outlast --json submit demo -p items=2``'s params: the built-in's model adds its defaults."""
    r = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--json", "submit", "demo", "-p", "items=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=_env(site, cache),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["params"]


def install(site: Path, dist: str, entry_points: str) -> Path:
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return info


def test_entry_points_are_remembered_until_what_was_installed_changes(tmp_path: Path) -> None:
    site, cache = tmp_path / "site", tmp_path / "cache"
    site.mkdir()
    for module, type_ in (("plug_a", "cached_plugin_type"), ("plug_b", "cached_plugin_type"), ("plug_demo", "demo")):
        (site / f"{module}.py").write_text(PLUGIN.format(type=type_, module=module))
    saved = cache / "outlast" / "entry-points.json"

    assert sources(site, cache) == {"demo": "builtin", "cached_plugin_type": "InvalidInput"}
    assert saved.is_file()
    info = install(site, "plug", "[outlast.operations]\na = plug_a\n")  # installed: found at once
    assert sources(site, cache)["cached_plugin_type"] == "plug_a"
    assert json.loads(saved.read_text())["found"] == [["a", "plug_a"]]
    assert sources(site, cache)["cached_plugin_type"] == "plug_a"  # from the cache, as it was

    # Its entry points edited in place (the same directory listing): found anew.
    (info / "entry_points.txt").write_text("[outlast.operations]\nb = plug_b\n")
    assert sources(site, cache)["cached_plugin_type"] == "plug_b"

    # A plugin that replaces a built-in type wins over it, scanned or remembered, and submit uses it.
    assert submitted_params(site, cache) != {"items": 2}  # the built-in's
    install(site, "replacer", "[outlast.operations]\nd = plug_demo\n")
    assert sources(site, cache) == {"demo": "plug_demo", "cached_plugin_type": "plug_b"}  # scanned
    assert submitted_params(site, cache) == {"items": 2}  # remembered: the plugin's (no model: as given)
    assert sources(site, cache) == {"demo": "plug_demo", "cached_plugin_type": "plug_b"}  # remembered, after submit

    # Removed: gone, though the cache named them.
    for d in site.glob("*.dist-info"):
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    assert sources(site, cache) == {"demo": "builtin", "cached_plugin_type": "InvalidInput"}


def test_a_cache_that_cannot_be_read_or_written_is_a_scan(tmp_path: Path) -> None:
    site, cache = tmp_path / "site", tmp_path / "cache"
    site.mkdir()
    (site / "plug_a.py").write_text(PLUGIN.format(type="cached_plugin_type", module="plug_a"))
    install(site, "plug", "[outlast.operations]\na = plug_a\n")
    (cache / "outlast").mkdir(parents=True)
    for damaged in ("{not json", "[" * 100_000, '{"found": [["x"]]}'):
        (cache / "outlast" / "entry-points.json").write_text(damaged)
        assert sources(site, cache)["cached_plugin_type"] == "plug_a", damaged
    (cache / "outlast" / "entry-points.json").write_bytes(b"\xff\xfe")
    assert sources(site, cache)["cached_plugin_type"] == "plug_a"
    (cache / "outlast" / "entry-points.json").unlink()
    (cache / "outlast" / "entry-points.json").mkdir()  # unwritable in its place
    assert sources(site, cache)["cached_plugin_type"] == "plug_a"
    # Another key's answer (another environment's) is not taken.
    (cache / "outlast" / "entry-points.json").rmdir()
    (cache / "outlast" / "entry-points.json").write_text(json.dumps({"key": ["other"], "found": [["x", "plug_x"]]}))
    assert sources(site, cache)["cached_plugin_type"] == "plug_a"


PYDANTIC_PLUGIN = textwrap.dedent("""
    import os

    class Plugin:
        def new_schema_validator(self, schema, schema_type, schema_type_path, *args, **kwargs):
            with open(os.environ["SEEN_BY_PLUGIN"], "a") as f:
                f.write(schema_type_path.name + "\\n")
            return None, None, None

    plugin = Plugin()
""")


def test_a_pydantic_plugin_installed_is_loaded_found_or_remembered(tmp_path: Path) -> None:
    """``outlast`` answers pydantic's plugin loader itself only when no distribution declares a ``pydantic``
    entry point (``installed.skip_pydantic_plugin_scan``): one installed is loaded by pydantic, whether the
    scan finds it or its answer is remembered, and whether it was installed before or after a scan found none."""
    site, cache = tmp_path / "site", tmp_path / "cache"
    site.mkdir()
    (site / "pyd_spy.py").write_text(PYDANTIC_PLUGIN)
    seen = tmp_path / "seen"
    env = {**_env(site, cache), "SEEN_BY_PLUGIN": str(seen)}

    def submit() -> list[str]:
        seen.unlink(missing_ok=True)
        r = subprocess.run(
            [sys.executable, "-m", "engine.cli", "submit", "demo"], cwd=REPO, capture_output=True, text=True, env=env
        )
        assert r.returncode == 0, r.stderr
        return seen.read_text().split() if seen.exists() else []

    assert submit() == submit() == []  # none installed: found none, then remembered none
    install(site, "spy", "[pydantic]\nspy = pyd_spy:plugin\n")
    for _ in range(2):  # scanned (what was installed changed), then remembered
        assert "OperationSpec" in submit()
    assert json.loads((cache / "outlast" / "entry-points.json").read_text())["pydantic"] == [["spy", "pyd_spy:plugin"]]
