"""What Outlast trusts in a state dir (and in its cache dir) it did not make itself, tried as an attacker would
(the tests run as root in CI, as the attacked process would): a symbolic link planted at a temp file's
predictable name, or at one of the database's files; a state dir, or a directory or file in it, that another
user owns; a database with another hard link."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from engine.exitcodes import ExitCode
from tests.fixtures_cli import Cli
from tests.fixtures_ops import run_here

PRECIOUS = "a file someone else owns\n"


def precious(tmp_path: Path) -> Path:
    """A file a planted link points at; no Outlast process may change it."""
    target = tmp_path / "precious"
    target.write_text(PRECIOUS)
    target.chmod(0o644)
    return target


def untouched(target: Path) -> None:
    assert target.read_text() == PRECIOUS and (target.stat().st_mode & 0o777) == 0o644


# ---- temp files at predictable names ----------------------------------------------------------------------


def test_the_owner_note_is_never_written_through_a_link_at_its_temp_name(cli: Cli, state_dir: Path) -> None:
    """``.outlast.db-owner.PID`` was opened O_CREAT|O_TRUNC, following a link: a user who planted links at
    every pid in her state dir had root's next `outlast submit` there truncate and write any file she named.
    Made new (O_EXCL|O_NOFOLLOW), the link is left as it is and its target untouched; a stale regular file of
    ours at that name (a killed writer's, whose pid this process has now) is taken over and the note written."""
    from engine.store.walpair import OWNER_SUFFIX, note_owner

    assert cli.here("-q", "submit", "demo", "-p", "items=1").returncode == 0
    target = precious(state_dir.parent)
    db = state_dir / "outlast.db"
    note = Path(f"{db}{OWNER_SUFFIX}")
    temp = state_dir / f".{note.name}.{os.getpid()}"
    holder = sqlite3.connect(db)  # the WAL there while a connection is open, as in any engine's process
    holder.execute("SELECT count(*) FROM operations").fetchone()
    assert Path(f"{db}-wal").exists()
    for planted in ("link", "stale file"):
        note.unlink(missing_ok=True)
        if planted == "link":
            temp.symlink_to(target)
        else:
            temp.write_text("half a note from a process killed before its rename")
        note_owner(db)
        untouched(target)
        if planted == "link":
            assert temp.is_symlink() and not note.exists()
            temp.unlink()
        else:
            assert not temp.exists() and len(note.read_text().split()) == 4
    holder.close()


def test_a_new_database_is_never_built_through_a_link_at_its_temp_name(state_dir: Path) -> None:
    """``.outlast.db.new-PID-TID`` was made with O_CREAT and handed to SQLite: a link there made the file it
    named, anywhere, the new database (0600, overwritten). Now the database is built under another name."""
    from engine.store.sqlite.core import SqliteCore

    target = precious(state_dir.parent)
    state_dir.mkdir(mode=0o700)
    link = state_dir / f".outlast.db.new-{os.getpid()}-{threading.get_ident()}"
    link.symlink_to(target)
    store = SqliteCore(state_dir)
    store.open_here()
    store.close_here()
    untouched(target)
    assert link.is_symlink()
    assert (state_dir / "outlast.db").stat().st_size > 0
    assert [n for n in os.listdir(state_dir) if n.startswith(".outlast.db.new-")] == [link.name]


def test_the_cache_notes_are_never_written_through_a_link_at_their_temp_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remembered configs and entry points (``.checked-configs.PID``, ``.entry-points.json.PID`` in the
    cache dir, which ``sudo`` keeping HOME puts in a user's home) were written through a link there."""
    from engine import installed
    from engine.cli.checked import TEMP_STEM, remember

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "outlast"
    cache.mkdir(parents=True)
    target = precious(tmp_path)
    links = [cache / f".{TEMP_STEM}.{os.getpid()}", cache / f".{installed.ENTRY_POINTS_CACHE}.{os.getpid()}"]
    for link in links:
        link.symlink_to(target)
    config = tmp_path / "config.toml"
    config.write_text('theme = "dark"\n')
    remember(config, config.read_bytes())
    installed._write(["key"], {group: [] for group in installed.GROUPS})
    untouched(target)
    assert all(link.is_symlink() for link in links)
    for link in links:
        link.unlink()
    remember(config, config.read_bytes())  # no link in the way: written
    installed._write(["key"], {group: [] for group in installed.GROUPS})
    assert str(config) in json.loads((cache / "checked-configs.json").read_text())
    assert json.loads((cache / installed.ENTRY_POINTS_CACHE).read_text())["key"] == ["key"]


def test_a_scan_report_is_never_written_through_a_link_at_its_temp_name(tmp_path: Path) -> None:
    """security_scan wrote its report to ``.NAME.partial`` beside it (O_TRUNC, following a link) and renamed it:
    a report asked for in /tmp truncated whatever file a link another user put there named."""
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n")
    out = tmp_path / "out"
    out.mkdir()
    target = precious(tmp_path)
    (out / ".report.json.partial").symlink_to(target)
    run_here(tmp_path, "security_scan", root=str(root), output=str(out / "report.json"), format="json")
    untouched(target)
    assert (out / ".report.json.partial").is_symlink()
    assert json.loads((out / "report.json").read_text())["findings"] == []


# ---- symbolic links at the database's files ------------------------------------------------------------


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command said (exit 8, nothing on stdout)."""
    assert r.returncode == ExitCode.STORE and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def listing(d: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every name under ``d`` (and ``d``) by lstat: inode, mode, size, mtime."""
    return {
        str(p.relative_to(d)): (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns)
        for p in [d, *sorted(d.rglob("*"))]
        for st in [p.lstat()]
    }


@pytest.mark.parametrize("name", ["outlast.db", "outlast.db-wal", "outlast.db-shm"])
@pytest.mark.parametrize("dangling", [False, True], ids=["to a file", "dangling"])
def test_a_link_at_a_database_file_is_one_line_for_every_command_and_never_followed(
    cli: Cli, state_dir: Path, tmp_path: Path, name: str, dangling: bool
) -> None:
    """A link at outlast.db, -wal or -shm was followed: root's `outlast ls` made the file it named 0600 (any
    file), and a dangling one at outlast.db had `run` make the database where it pointed (0644). Every command,
    those that only read too, says so in one line naming it (exit 8), before anything is made or changed."""
    assert cli.here("-q", "submit", "demo", "-p", "items=1").returncode == 0
    target = tmp_path / "elsewhere"
    if not dangling:
        target = precious(tmp_path)
    link = state_dir / name
    if name == "outlast.db":
        link.unlink()
    link.symlink_to(target)
    before = listing(state_dir)
    want = (
        f"outlast: state dir {state_dir}: {name} is a symbolic link (to {target}): Outlast opens its database's"
        " files in the state dir itself, never through a link (the file it names would be changed, or made); put"
        " the file itself there, or move the link out of the way"
    )
    for args in (("ls",), ("--json", "ls"), ("show", "1"), ("submit", "demo")):
        assert one_line(cli.here(*args)) == want, args
    for args in (("run", "demo", "-p", "items=1"), ("worker", "--exit-when-idle")):
        assert one_line(cli(*args)) == want, args
    assert listing(state_dir) == before
    if dangling:
        assert not os.path.lexists(target)
    else:
        untouched(target)


def test_narrowing_never_changes_a_file_through_a_link(tmp_path: Path) -> None:
    """``make_private`` (a store's files narrowed to 0600 as it opens) followed a link: what it names changed."""
    from engine.files import make_private

    target = precious(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(target)
    own = tmp_path / "own"
    own.write_text("")
    own.chmod(0o644)
    make_private(link, own, tmp_path / "missing")
    untouched(target)
    assert own.stat().st_mode & 0o777 == 0o600


# ---- a state dir, or a directory in it, that is not yours ------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user (chown) needs root")
OTHER = 65534
"""Another user's uid (nobody's on most systems): a state dir given to it with chown is another user's."""


def who(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def me() -> str:
    uid = os.geteuid()
    return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"


def run_as(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def refused_everywhere(cli: Cli, want: str, submitted: bool = True) -> None:
    """Every command, those that only read too, says ``want`` (exit 8), alone."""
    reads = (("ls",), ("--json", "ls"), ("show", "1")) if submitted else ()
    for args in (*reads, ("submit", "demo")):
        assert one_line(cli.here(*args)) == want, args
    for args in (("run", "demo", "-p", "items=1"), ("run", "demo", "--detach"), ("worker", "--exit-when-idle")):
        assert one_line(cli(*args)) == want, args


@needs_root
@pytest.mark.parametrize("made", ["a store", "an empty directory"])
def test_a_state_dir_of_another_user_is_refused_naming_its_owner(cli: Cli, state_dir: Path, made: str) -> None:
    """As ssh refuses a ~/.ssh that is not yours. Root's worker ran the `command` operations a user queued in
    her state dir as root; another user's world-writable directory given as --state-dir (a CI's /tmp path)
    was only warned about, and he read the command's output through links he put there; and another user's
    store said "Operation not permitted", naming nobody. Now one line names the owner, why and what to do
    (exit 8), and nothing there is made or changed; the queued work stays queued."""
    if made == "a store":
        submitted = cli.here("-q", "submit", "command", "-p", "command=true")
        assert submitted.returncode == 0, submitted.stderr
    else:
        state_dir.mkdir(mode=0o777)
        state_dir.chmod(0o777)
    os.chown(state_dir, OTHER, OTHER)
    before = listing(state_dir)
    want = (
        f"outlast: state dir {state_dir} belongs to {who(OTHER)}, not to you ({me()}): work queued there would run"
        f" as you, and the files you made there would lock its owner out; run outlast as {run_as(OTHER)}, or use"
        " a state dir of your own"
    )
    refused_everywhere(cli, want, submitted=made == "a store")
    assert listing(state_dir) == before
    if made == "a store":
        db = sqlite3.connect(f"{(state_dir / 'outlast.db').as_uri()}?mode=ro", uri=True)
        assert db.execute("SELECT status FROM operations").fetchall() == [("queued",)]
        db.close()


@needs_root
@pytest.mark.parametrize("name", ["logs", "locks", "detached", "outputs"])
@pytest.mark.parametrize("kind", ["link", "another user's"])
def test_a_directory_in_the_state_dir_that_is_a_link_or_not_yours_is_refused(
    cli: Cli, state_dir: Path, tmp_path: Path, name: str, kind: str
) -> None:
    """A ``logs`` that is a link was followed: root wrote a command's log wherever the user pointed it; a
    ``logs`` or ``locks`` another user owns (or swapped for a link to his) let him read a command's output."""
    assert cli.here("-q", "submit", "demo", "-p", "items=1").returncode == 0
    sub = state_dir / name
    sub.mkdir(mode=0o700, exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    if kind == "link":
        sub.rmdir()
        sub.symlink_to(elsewhere)
        want = (
            f"outlast: state dir {state_dir}: {name} is a symbolic link (to {elsewhere}): Outlast keeps its {name}"
            " in the state dir itself, never where a link points (whoever can change the link could read, or"
            " choose, where what is written there goes); move the link out of the way"
        )
    else:
        os.chown(sub, OTHER, OTHER)
        want = (
            f"outlast: state dir {state_dir}: {name} belongs to {who(OTHER)}, not to you ({me()}): its owner could"
            f" read or change what Outlast writes in it (was outlast run as {run_as(OTHER)} here?); move it out of"
            " the way (it is made again)"
        )
    before = listing(state_dir)
    refused_everywhere(cli, want)
    assert listing(state_dir) == before
    assert list(elsewhere.iterdir()) == []


@needs_root
@pytest.mark.parametrize("name", ["outlast.db", "outlast.db-wal", "outlast.db-shm"])
def test_a_database_file_another_user_owns_is_refused_naming_its_owner(cli: Cli, state_dir: Path, name: str) -> None:
    """outlast.db, -wal or -shm left by outlast run as root in a user's state dir: she was told "unable to open
    database file" (or "Permission denied"), with no word of whose it was."""
    assert cli.here("-q", "submit", "demo", "-p", "items=1").returncode == 0
    (state_dir / name).touch()
    os.chown(state_dir / name, OTHER, OTHER)
    before = listing(state_dir)
    want = (
        f"outlast: state dir {state_dir}: {name} belongs to {who(OTHER)}, not to you ({me()}): Outlast opens only its"
        f" user's own files (was outlast run as {run_as(OTHER)} here?); have it given to you (chown, as root), or"
        f" run outlast as {run_as(OTHER)}"
    )
    for args in (("ls",), ("submit", "demo")):
        assert one_line(cli.here(*args)) == want, args
    assert one_line(cli("run", "demo", "-p", "items=1")) == want
    assert listing(state_dir) == before


@needs_root
def test_a_state_dir_that_is_a_link_is_used_when_the_link_is_yours_or_roots(cli: Cli, tmp_path: Path) -> None:
    """A state dir given as a link to a directory of one's own works as it always has; a link another user owns
    is refused: he could point it at another directory between two commands, or within one."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    env = {**cli.env, "OUTLAST_STATE_DIR": str(link)}
    assert cli("run", "demo", "-p", "items=1", env=env).returncode == 0
    assert cli.here("ls", env=env).stdout.count("completed") == 1
    os.lchown(link, OTHER, OTHER)
    before = listing(real)
    want = (
        f"outlast: state dir {link} is a symbolic link (to {real}) that belongs to {who(OTHER)}, not to you"
        f" ({me()}): its owner could point it at another directory at any time; give the directory itself (or a"
        " link of your own)"
    )
    assert one_line(cli.here("ls", env=env)) == want
    assert one_line(cli("run", "demo", "-p", "items=1", env=env)) == want
    assert listing(real) == before


def test_a_log_that_is_a_link_is_moved_aside_never_written_through(cli: Cli, state_dir: Path, tmp_path: Path) -> None:
    """A link at logs/ID.jsonl was followed: the worker appended the command's output to the file it named,
    where the README says it is moved aside (one warning) and a new log begun."""
    op_id = cli.here("-q", "submit", "command", "-p", "command=echo the-line").stdout.strip()
    target = precious(tmp_path)
    log = state_dir / "logs" / f"{op_id}.jsonl"
    log.symlink_to(target)
    assert cli.here("logs", op_id).returncode == 0  # read: not through the link (said once in a warning)
    r = cli("worker", "--exit-when-idle")
    assert r.returncode == 0, r.stderr
    untouched(target)
    assert f"its log {log} was not a regular file; moved to {log.name}.not-a-file-" in r.stderr
    assert [p.is_symlink() for p in (state_dir / "logs").glob(f"{log.name}.not-a-file-*")] == [True]
    assert "the-line" in cli.here("logs", op_id).stdout


# ---- a database with another hard link -------------------------------------------------------------------


def test_a_hard_linked_database_is_refused_in_both_state_dirs(cli: Cli, state_dir: Path, tmp_path: Path) -> None:
    """A ``cp -al`` snapshot of a state dir: its outlast.db and the original are one file, each path with a
    WAL of its own. Submits through both were each acknowledged, and some then missing from both (or the
    file corrupt). Both are refused in one line saying why and what to do (exit 8), and neither is changed."""
    assert cli("run", "demo", "-p", "items=1").returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(state_dir, copy, copy_function=os.link)
    for d in (state_dir, copy):
        before = listing(d)
        want = (
            f"outlast: state dir {d}: outlast.db has 2 hard links (another path names the same file: a copy made"
            " with cp -al or ln?), and SQLite keeps a WAL beside each path: writes through one are lost, or"
            " corrupt the file, when the other is used; give this state dir a copy of its own (cp -a, not cp -al"
            " or ln), or remove the other link"
        )
        env = {**cli.env, "OUTLAST_STATE_DIR": str(d)}
        for args in (("ls",), ("--json", "ls"), ("submit", "demo")):
            assert one_line(cli.here(*args, env=env)) == want, args
        assert one_line(cli("run", "demo", "-p", "items=1", env=env)) == want
        assert listing(d) == before
    (copy / "outlast.db").unlink()
    assert cli.here("-q", "submit", "demo").returncode == 0  # one link again: used


def test_a_new_databases_own_second_link_is_not_a_copy(cli: Cli, state_dir: Path) -> None:
    """A new database is built under ``.outlast.db.new-PID-TID`` and linked to outlast.db: for a moment (or for
    good, its process killed between the link and the unlink) the file has two links. That is not a copy:
    opened (the leftover of a process that is gone removed), not refused."""
    assert cli.here("-q", "submit", "demo").returncode == 0
    p = subprocess.Popen(["true"])
    p.wait()
    left = state_dir / f".outlast.db.new-{p.pid}-1"
    os.link(state_dir / "outlast.db", left)
    building = state_dir / f".outlast.db.new-{os.getpid()}-1"
    os.link(state_dir / "outlast.db", building)  # a live process's: kept
    assert cli.here("ls").returncode == 0
    assert cli.here("-q", "submit", "demo").returncode == 0
    assert not left.exists() and building.exists()


# ---- a path too long for SQLite ----------------------------------------------------------------------------


def long_path(base: Path, length: int) -> Path:
    """A path under ``base`` of ``length`` bytes (names of 200 bytes at most), not made."""
    path, left = str(base / "long"), length - len(str(base / "long"))
    while left > 0:
        part = min(200, left - 1) if left > 1 else 1
        if left - 1 - part == 1:  # no one-byte rest that "/" alone would take
            part -= 1
        path, left = f"{path}/{'e' * part}", left - 1 - part
    assert len(path) == length, (len(path), length)
    return Path(path)


def test_a_state_dir_too_long_for_sqlite_is_one_line_and_nothing_is_made(cli: Cli, tmp_path: Path) -> None:
    """SQLite's unix VFS opens no file whose path is longer than 512 bytes: a state dir of about 490 bytes (far
    below PATH_MAX) failed with "outlast.db cannot be created (unable to open database file)", after its
    ``logs`` and ``locks`` were made. Said up front now, naming the limit and the length; the longest that
    fits works."""
    from engine.statedir import MAX_STATE_DIR, SQLITE_MAX_PATH

    fits, too_long = long_path(tmp_path, MAX_STATE_DIR), long_path(tmp_path, MAX_STATE_DIR + 1)
    env = {**cli.env, "OUTLAST_STATE_DIR": str(too_long)}
    want = (
        f"outlast: state dir {too_long}: its path is {MAX_STATE_DIR + 1} bytes long, and SQLite opens no file"
        f" whose path is longer than {SQLITE_MAX_PATH} bytes, which leaves {MAX_STATE_DIR} bytes for the state dir"
        " (the names of the files in it take the rest); use a shorter path"
    )
    assert one_line(cli.here("submit", "demo", env=env)) == want
    assert one_line(cli("run", "demo", "-p", "items=1", env=env)) == want
    assert one_line(cli("run", "demo", "--detach", env=env)) == want
    assert not (tmp_path / "long").exists()
    env["OUTLAST_STATE_DIR"] = str(long_path(tmp_path, 493))  # as the report had it: SQLite's own failure
    assert "its path is 493 bytes long" in one_line(cli("run", "demo", "-p", "items=1", env=env))
    assert not (tmp_path / "long").exists()
    env["OUTLAST_STATE_DIR"] = str(fits)
    assert cli("run", "demo", "-p", "items=1", env=env).returncode == 0
    assert cli.here("ls", env=env).stdout.count("completed") == 1


# ---- the directories made above a state dir ------------------------------------------------------------------


def test_missing_parents_of_the_state_dir_are_made_0700_whatever_the_umask(cli: Cli, tmp_path: Path) -> None:
    """With a umask of 000, the default state dir's missing ``~/.local`` and ``~/.local/state`` were made 0777
    (any user could replace the state dir itself); the XDG spec asks 0700 of the directories it names. Those
    Outlast makes are 0700 now; one that was there keeps its mode."""
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    env = {k: v for k, v in cli.env.items() if k not in ("OUTLAST_STATE_DIR", "XDG_STATE_HOME")}
    env["HOME"] = str(home)
    base = tmp_path / "base"
    base.mkdir()
    base.chmod(0o755)
    given = base / "a" / "b" / "state"
    old = os.umask(0)
    try:
        assert cli.here("-q", "submit", "demo", env=env).returncode == 0
        assert cli.here("-q", "--state-dir", str(given), "submit", "demo", env=env).returncode == 0
    finally:
        os.umask(old)
    made = [home / ".local", home / ".local" / "state", home / ".local" / "state" / "outlast"]
    made += [base / "a", base / "a" / "b", given]
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in made} == {str(p): "0o700" for p in made}
    assert home.stat().st_mode & 0o777 == base.stat().st_mode & 0o777 == 0o755


@needs_root
def test_a_log_another_user_owns_is_moved_aside_not_a_store_outage(cli: Cli, state_dir: Path) -> None:
    """A log left by outlast run as root in a user's state dir (before that was refused), 0600: her worker's
    appends failed as a store outage (the run stopped interrupted, the worker exit 8), and `outlast logs`
    was an internal error (root's wrote into it). Moved aside as a log that is no regular file is, and a new
    one begun."""
    op_id = cli.here("-q", "submit", "command", "-p", "command=echo the-line").stdout.strip()
    log = state_dir / "logs" / f"{op_id}.jsonl"
    log.write_text("")
    log.chmod(0o600)
    os.chown(log, OTHER, OTHER)
    r = cli.here("logs", op_id)
    assert r.returncode == 0 and "is another user's file (uid 65534); not read" in r.stderr, r
    r = cli("worker", "--exit-when-idle")
    assert r.returncode == 0, r.stderr
    assert f"its log {log} was another user's file (uid {OTHER}); moved to {log.name}.not-a-file-" in r.stderr
    assert "the-line" in cli.here("logs", op_id).stdout


def test_a_relative_state_dir_in_a_removed_working_directory_is_left_to_the_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The length check makes a relative state dir absolute: in a working directory removed since, that raised
    (getcwd), an internal error before the store's open could say what is wrong."""
    from engine.statedir import refusal

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert refusal(Path("state")) is None
