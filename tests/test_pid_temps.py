"""Three small notes are written to ``.NAME.PID`` and renamed over ``NAME``: the WAL's owner in the state
dir, the entry points found and the configs checked in the cache dir. A process killed between the write
and the rename left that temp file for ever; the next command that opens the state dir sweeps those
whose process is gone, and keeps those of a live process (whose write may be under way)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.fixtures_cli import Cli


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def plant(path: Path) -> Path:
    """An empty temp file at ``path``, last changed an hour ago (no write's time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    old = time.time() - 3600
    os.utime(path, (old, old))
    return path


def test_a_dead_writers_temp_notes_are_swept_and_a_live_ones_kept(cli: Cli, state_dir: Path) -> None:
    assert cli("submit", "demo", "-p", "items=1").returncode == 0  # the state dir and its owner note made
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "outlast"
    names = [(state_dir, ".outlast.db-owner"), (cache, ".entry-points.json"), (cache, ".checked-configs")]
    dead, live = dead_pid(), os.getpid()
    gone = [plant(d / f"{name}.{dead}") for d, name in names]
    kept = [plant(d / f"{name}.{live}") for d, name in names]
    others = [plant(state_dir / f".outlast.db.{dead}"), plant(cache / f".unknown.{dead}")]  # not ours to sweep

    done = cli("submit", "demo", "-p", "items=1")
    assert done.returncode == 0, done.stderr

    assert [p.name for p in gone if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == []
    assert [p.name for p in others if not p.exists()] == []
