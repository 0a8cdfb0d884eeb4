"""Every file Outlast writes is 0600 and every directory 0700, whatever the umask (issue 13, item 10):
the state dir's database (and its -wal, -shm), logs, locks, detached logs, and the operations' outputs.
Moving or sharing the state directory must not expose them."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from engine.exitcodes import ExitCode
from tests.fixtures_cli import Cli, until


def loose(root: Path) -> list[str]:
    """Files readable by others than the owner, and directories not 0700, under ``root``."""
    out = []
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        mode = stat.S_IMODE(p.lstat().st_mode)
        if (p.is_dir() and mode != 0o700) or (not p.is_dir() and mode & 0o077):
            out.append(f"{p.relative_to(root.parent)} {oct(mode)}")
    return out


def test_state_dir_files_and_outputs_are_private(
    cli: Cli, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.umask(0o022)  # the usual umask: what a user gets without Outlast's care
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)  # Python's default: caches written
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("API_KEY = 'sk_live_0123456789abcdefghijklmn'\n")
    (src / "test_one.py").write_text("def test_one():\n    assert True\n")

    # While an operation runs, the database has its -wal and -shm beside it.
    p = cli.start("run", "demo", "-p", "items=3000", "-p", "seconds=0.01")
    p.wait_line(lambda ln: "running" in ln)
    until(lambda: (state_dir / "outlast.db-wal").exists() and (state_dir / "outlast.db-shm").exists(), 30)
    running = loose(state_dir)
    p.signal(signal.SIGINT)
    assert p.wait() == ExitCode.PAUSED
    assert running == [], running

    for args in (
        ["security_scan", "-p", f"root={src}"],
        ["codebase_indexing", "-p", f"root={src}"],
        ["comprehensive_test_suite", "-p", f"path={src / 'test_one.py'}"],
    ):
        r = cli("run", *args)
        assert r.returncode in (ExitCode.OK, ExitCode.FAILED), (args, r.stdout, r.stderr)
    r = cli("run", "demo", "-p", "items=1", "-p", "seconds=0", "--detach")
    assert r.returncode == 0, r.stderr
    cli.wait_status(r.stdout.strip(), {"completed"})
    assert (state_dir / "detached" / f"{r.stdout.strip()}.log").exists()
    assert any((state_dir / "outputs").glob("scan-*.json"))
    assert any((state_dir / "outputs").glob("index-*.sqlite"))
    assert loose(state_dir) == []


def test_outputs_at_a_chosen_path_are_private(cli: Cli, state_dir: Path, tmp_path: Path) -> None:
    os.umask(0o022)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    out = tmp_path / "out"
    out.mkdir()
    assert cli("run", "codebase_indexing", "-p", f"root={src}", "-p", f"output={out / 'i.sqlite'}").returncode == 0
    assert cli("run", "security_scan", "-p", f"root={src}", "-p", f"output={out / 'report'}").returncode == 0
    assert cli("run", "backup_operation", "-p", f"source={src}", "-p", f"destination={out / 'b'}").returncode == 0
    made = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert {"i.sqlite", "report.json", "report.sarif"} <= set(made), made
    assert all(m == 0o600 for m in made.values()), {k: oct(v) for k, v in made.items()}
    manifest = out / "b" / ".outlast-manifest.json"
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600


def test_an_existing_state_dir_is_made_private_when_opened(cli: Cli, state_dir: Path) -> None:
    """At the latest by the next command that opens it to write (a quick ``ls`` reads it without writing)."""
    assert cli("-q", "submit", "demo", "-p", "items=1").returncode == 0
    db = state_dir / "outlast.db"
    db.chmod(0o644)  # as an older Outlast left it
    assert cli("ls").returncode == 0
    assert cli("-q", "submit", "demo", "-p", "items=1").returncode == 0
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_a_directory_that_is_not_outlasts_keeps_its_mode(cli: Cli, tmp_path: Path) -> None:
    """``OUTLAST_STATE_DIR=/`` (or a home, a web root, by a typo): opening the store narrowed the directory to
    0700, so ``outlast ls`` alone made / unreadable to every other user. Only Outlast's own directories are
    narrowed: one it makes, an empty one, or one holding nothing but its files (an older version's)."""
    foreign, empty, private = tmp_path / "www", tmp_path / "empty", tmp_path / "mine"
    for d in (foreign, empty, private):
        d.mkdir()
        d.chmod(0o755)
    (foreign / "index.html").write_text("<p>hello</p>\n")
    (private / "notes.txt").write_text("kept with the state\n")
    private.chmod(0o700)  # someone's own private directory: nothing to narrow, nothing said
    for d, mode in ((foreign, 0o755), (empty, 0o700), (private, 0o700)):
        r = cli("-q", "submit", "demo", env={**cli.env, "OUTLAST_STATE_DIR": str(d)})
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(d.stat().st_mode) == mode, (d, oct(d.stat().st_mode))
        assert ("holds files that are not Outlast's" in r.stderr) == (d == foreign), r.stderr
    old = tmp_path / "old"  # an older Outlast's state dir, 0755: narrowed
    old.mkdir()
    old.chmod(0o755)
    r = cli("-q", "submit", "demo", env={**cli.env, "OUTLAST_STATE_DIR": str(old)})
    old.chmod(0o755)
    r = cli("-q", "submit", "demo", env={**cli.env, "OUTLAST_STATE_DIR": str(old)})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert stat.S_IMODE(old.stat().st_mode) == 0o700
