"""A command that only reads makes no state dir: ``show abc`` of a mistyped ``--state-dir`` made the directory,
outlast.db, locks/ and logs/, then said "no operation matches". Now an id lookup says in one line that there is
no state directory at the path (exit 3, as no operation matching), ``ls`` lists nothing (exit 0: a fresh
machine's first ``ls`` is no error), and the path is still not there, however it was named."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.exitcodes import ExitCode
from tests.fixtures_cli import Proc, main_here, until

WAYS = ["--state-dir", "--store", "OUTLAST_STATE_DIR", "OUTLAST_STORE", "--config", "default"]
"""Every way of naming the local store's path: an option, the environment, a config file, the XDG default."""

IDLE_NOTE = "no active operations: waiting for some (Ctrl-C stops watching)"

FULL = {"OUTLAST_MAX_CONCURRENT": "3"}
"""A setting: ``ls`` takes the full path (settings, an engine), not the quick read of the file."""


class Reader:
    """``outlast`` against ``path`` named one ``way``, answered in this process (``main_here``)."""

    def __init__(self, tmp_path: Path, way: str) -> None:
        self.way = way
        self.path = tmp_path / "typo" / "state"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
        env["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
        self.options: list[str] = []
        if way in ("--state-dir", "--store"):
            self.options = [way, str(self.path)]
        elif way.startswith("OUTLAST_"):
            env[way] = str(self.path)
        elif way == "--config":
            config = tmp_path / "outlast.toml"
            config.write_text(f"state_dir = {str(self.path)!r}\n")
            self.options = ["--config", str(config)]
        else:
            self.path = tmp_path / "xdg-state" / "outlast"
        self.env = env

    def __call__(self, *args: str, full: bool = False) -> subprocess.CompletedProcess[str]:
        return main_here([*self.options, *args], {**self.env, **(FULL if full else {})})

    def start(self, *args: str) -> Proc:
        """In the background (``watch`` of all, which waits)."""
        return Proc([*self.options, *args], self.env)

    def made_nothing(self, args: tuple[str, ...]) -> None:
        assert not self.path.exists(), (self.way, args, sorted(os.listdir(self.path)))
        assert not (self.path.parent).exists(), (self.way, args)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("way", WAYS)
def test_an_id_lookup_where_no_state_dir_is_says_so_and_makes_none(state_dir: Path, tmp_path: Path, way: str) -> None:
    at = Reader(tmp_path, way)
    lookups = [
        ("show", "abc"),
        ("--json", "show", "abc"),
        ("logs", "abc"),
        ("logs", "-f", "abc"),
        ("checkpoints", "abc"),
        ("checkpoints", "--full", "abc"),
        ("watch", "abc"),
    ]
    for args in lookups:
        r = at(*args)
        assert r.returncode == ExitCode.NOT_FOUND and r.stdout == "", (way, args, r.returncode, r.stdout, r.stderr)
        line = one_line(r)
        assert line.startswith(f"outlast: no state directory at {at.path} ("), (way, args, line)
        at.made_nothing(args)
    for args in (("show", "abc\n"), ("logs", "a/b"), ("checkpoints", "A"), ("watch", "abc", "..")):
        r = at(*args)  # a bad id is still bad usage, said as before, where no store is
        assert r.returncode == ExitCode.USAGE and "invalid operation id" in one_line(r), (way, args, r.stderr)
        at.made_nothing(args)
    # A command that writes still makes it; then the reads read it as ever (an empty store: nothing matches).
    submitted = at("submit", "demo")
    assert submitted.returncode == 0, submitted.stderr
    op_id = submitted.stdout.strip()
    for args in (("show", op_id), ("-q", "cancel", op_id), ("rm", op_id)):
        assert at(*args).returncode == 0, args
    for args in lookups:
        r = at(*args)
        assert r.returncode == ExitCode.NOT_FOUND and "no operation matches id 'abc'" in one_line(r), (args, r.stderr)


@pytest.mark.parametrize("way", WAYS)
def test_watching_all_where_no_state_dir_is_waits_for_one_making_none(
    state_dir: Path, tmp_path: Path, way: str
) -> None:
    """``watch`` of all active operations waits for some (started before the first run, on a fresh machine): it
    waits for the store to be made, making none, said in its one line; a signal stops it with its code."""
    at = Reader(tmp_path, way)
    for sig, code in ((signal.SIGTERM, ExitCode.WATCH_TERMINATED), (signal.SIGINT, ExitCode.WATCH_STOPPED)):
        watch = at.start("watch")
        try:
            until(lambda watch=watch: IDLE_NOTE in watch.err, 30, what="the line saying it waits")
            time.sleep(0.7)  # a look or two more
            at.made_nothing(("watch",))
            if sig == signal.SIGINT:  # a run made the store: shown, as on a store that was there
                submitted = at("submit", "demo")
                assert submitted.returncode == 0, submitted.stderr
                op_id = submitted.stdout.strip()
                watch.wait_line(lambda ln, op_id=op_id: op_id in ln)
            watch.signal(sig)
            assert watch.wait(30) == code, (way, watch.err)
            assert watch.err.count(IDLE_NOTE) == 1, watch.err
        finally:
            watch.kill()


@pytest.mark.parametrize("way", WAYS)
def test_ls_where_no_state_dir_is_lists_nothing_and_makes_none(state_dir: Path, tmp_path: Path, way: str) -> None:
    """Both paths of ``ls``: the quick read of the file, and the full one (another setting), which made the store;
    and an unknown ``--type``, whose check opened the store to look for it (exit 2, made)."""
    at = Reader(tmp_path, way)
    for full in (False, True):
        for args, out, err in (
            (("ls",), "", "no operations\n"),
            (("ls", "--json"), "[]\n", ""),
            (("-q", "ls"), "", ""),
        ):
            r = at(*args, full=full)
            assert (r.returncode, r.stdout, r.stderr) == (0, out, err), (way, full, args)
            at.made_nothing(args)
        r = at("ls", "-t", "nosuch", full=full)
        assert r.returncode == ExitCode.USAGE and "unknown operation type 'nosuch'" in one_line(r), (way, r.stderr)
        at.made_nothing(("ls", "-t", "nosuch"))
    assert at("-q", "submit", "demo").returncode == 0
    for full in (False, True):
        r = at("ls", full=full)
        assert r.returncode == 0 and "demo" in r.stdout, (way, full, r.stdout, r.stderr)


@pytest.mark.parametrize("way", WAYS)
def test_slots_and_a_dry_clean_where_no_state_dir_is_make_none(state_dir: Path, tmp_path: Path, way: str) -> None:
    """``slots`` without a value and ``clean --dry-run`` only read: they say what an empty store would (none
    set; nothing to remove), exit 0, and make nothing. ``slots N`` writes: it makes the store, as before."""
    at = Reader(tmp_path, way)
    for args, out, err in (
        (("slots",), "store slots: not set (each engine's own limit)\n", ""),
        (("--json", "slots"), '{"slots": null, "running": 0}\n', ""),
        (("clean", "--dry-run"), "", "0 would be removed\n"),
        (("--json", "clean", "-n"), '{"would_remove": []}\n', ""),
    ):
        r = at(*args)
        assert (r.returncode, r.stdout, r.stderr) == (0, out, err), (way, args)
        at.made_nothing(args)
    assert at("slots", "2").returncode == 0 and (at.path / "outlast.db").is_file()
    assert at("slots").stdout == "store slots: 2 (0 running)\n"


def test_a_directory_without_a_store_is_left_empty_by_reads(state_dir: Path) -> None:
    """An existing directory that holds no outlast.db (made by hand for OUTLAST_STATE_DIR): a read said "no
    operation matches" after making the database, its locks and logs in it; now it says there is no store."""
    state_dir.mkdir()
    env = dict(os.environ)
    for args in (("show", "abc"), ("logs", "abc"), ("checkpoints", "abc"), ("watch", "abc")):
        r = main_here(args, env)
        assert r.returncode == ExitCode.NOT_FOUND, (args, r.stderr)
        assert one_line(r) == (
            f"outlast: no store at {state_dir} (from OUTLAST_STATE_DIR): the directory holds no outlast.db"
        )
        assert list(state_dir.iterdir()) == [], args
    for extra in ({}, FULL):
        r = main_here(["ls"], {**env, **extra})
        assert (r.returncode, r.stderr) == (0, "no operations\n") and list(state_dir.iterdir()) == []


@pytest.mark.parametrize("way", ["--state-dir", "--store", "OUTLAST_STATE_DIR"])
def test_a_command_on_one_operation_where_no_state_dir_is_makes_none(state_dir: Path, tmp_path: Path, way: str) -> None:
    """cancel, pause, resume, priority, rerun and rm of an id cannot succeed where no store is: they made a whole
    store at a mistyped path, only to say that no operation matches. One line, exit 3, nothing made; a bad id
    is still bad usage (exit 2)."""
    at = Reader(tmp_path, way)
    for args in (
        ("cancel", "abc"),
        ("pause", "abc"),
        ("resume", "abc"),
        ("resume", "--queue", "abc"),
        ("priority", "abc", "high"),
        ("rerun", "abc"),
        ("rm", "abc", "abd"),
    ):
        r = at(*args)
        assert r.returncode == ExitCode.NOT_FOUND and r.stdout == "", (way, args, r.returncode, r.stdout, r.stderr)
        assert one_line(r).startswith(f"outlast: no state directory at {at.path} ("), (way, args, r.stderr)
        at.made_nothing(args)
    for args in (("cancel", "abc\n"), ("resume", "a/b"), ("priority", "A", "low"), ("rerun", "..")):
        r = at(*args)
        assert r.returncode == ExitCode.USAGE and "invalid operation id" in one_line(r), (way, args, r.stderr)
        at.made_nothing(args)
