"""cleanup_operation against a hostile tester: Outlast's own store inside the root is never listed; retention
refuses a folder that holds no store and reads another store without creating anything there; the age cutoff is
on disk before anything is removed (a kill before the first interval's checkpoint no longer moves it); an empty
path is refused, and so is deleting in /, the home directory or a .git directory.

No test here runs a cleanup on /, a home directory or a .git directory: those are checked through the params
(``parse_params``, ``outlast submit``, whose operation no worker runs), with patterns that match no file."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from engine import Engine, InvalidInput, LogRecord, OperationSpec, Status, open_store
from engine.operations.cleanup import read_manifest as cleanup_read_manifest
from engine.registry import get_handler
from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params, checkpoint_state, in_process, nothing_stored, resume, submit

DAY = 86400
OLD = time.time() - 10 * DAY
NO_SUCH = ["outlast-test-matches-no-file.none"]
"""Patterns for the checks of refused roots: were a refusal missing, the operation would still delete nothing."""


def old_file(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (OLD, OLD))


def files(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if not p.is_dir()}


# ---- 1. Outlast's own directories inside the root -----------------------------------------------------------


async def test_a_root_holding_the_state_dir_never_lists_it_nor_another_store(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """root=~ with patterns ["*"] and the state dir under ~: the user's files go; the store this engine runs on
    (database, WAL, locks, logs, outputs with the run's own manifest), another state dir and a checkpoint
    mirror (found by their files, or named by the settings) stay, each said once in the log."""
    state = Path(engine.settings.state_dir)
    assert state.parent == tmp_path  # the root below holds it
    demo = await engine.wait((await engine.submit(OperationSpec(type="demo", params={"items": 2}))).id, timeout=30)
    assert demo.status is Status.COMPLETED
    old_file(tmp_path / "build" / "a.tmp")
    old_file(tmp_path / "notes.db")
    other = tmp_path / "other" / "outlast"  # another state dir: its records, its logs
    old_file(other / "outlast.db")
    old_file(other / "logs" / "x.jsonl")
    mirror = tmp_path / "mirror" / "outlast"  # a checkpoint mirror's namespace
    old_file(mirror / "store.json", "{}")
    old_file(mirror / "ops" / "op.json", "{}")
    (mirror / "checkpoints").mkdir()
    named = tmp_path / "real" / "named-mirror"  # the settings' checkpoint mirror, nothing in it to tell what it is
    old_file(named / "pending.json")
    (tmp_path / "link").symlink_to(tmp_path / "real")  # named through a link: the link stays too
    monkeypatch.setenv("OUTLAST_CHECKPOINT_MIRROR", str(tmp_path / "link" / "named-mirror"))
    kept = {p for p in files(tmp_path) if not p.startswith(("build/", "notes.db"))}

    spec = OperationSpec(
        type="cleanup_operation",
        params={"root": str(tmp_path), "patterns": ["*"], "older_than_days": 0, "dry_run": False},
    )
    rec = await engine.wait((await engine.submit(spec)).id, timeout=30)
    assert rec.status is Status.COMPLETED, rec.error
    assert not (tmp_path / "build" / "a.tmp").exists() and not (tmp_path / "notes.db").exists()
    assert rec.result["files"] == 2, rec.result
    assert (await engine.get(demo.id)).status is Status.COMPLETED  # the store is whole
    left = files(tmp_path)
    assert kept <= left, sorted(kept - left)
    assert (tmp_path / "link").is_symlink()
    assert Path(rec.result["manifest"]).is_relative_to(state) and Path(rec.result["manifest"]).exists()
    records, _ = await engine.logs(rec.id)
    said = [r.message for r in records if r.message.startswith("skipped the Outlast state directory")]
    for d in (state, other, mirror, named):
        assert sum(str(d) in m for m in said) == 1, (d, said)


async def test_the_engines_own_checkpoint_mirror_is_kept_though_no_config_file_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine whose settings name a checkpoint mirror (``outlast --config team.toml``, or a program's own
    settings): cleanup read the settings again from the default config file and the environment, which do
    not name it, and deleted the mirror's files under its root."""
    from engine import load_settings

    monkeypatch.delenv("OUTLAST_CHECKPOINT_MIRROR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    mirror = tmp_path / "data" / "mirror"  # nothing in it to tell what it is
    old_file(mirror / "pending.json")
    old_file(tmp_path / "data" / "a.tmp")
    settings = load_settings(state_dir=tmp_path / "state", checkpoint_mirror=mirror)
    async with Engine(store=open_store(settings.state_dir), settings=settings) as engine:
        spec = OperationSpec(
            type="cleanup_operation",
            params={"root": str(tmp_path / "data"), "patterns": ["*"], "older_than_days": 0, "dry_run": False},
        )
        rec = await engine.wait((await engine.submit(spec)).id, timeout=30)
    assert rec.status is Status.COMPLETED, rec.error
    assert files(tmp_path / "data") == {"mirror/pending.json"}


def test_a_manifest_among_the_stores_files_is_refused(state_dir: Path, tmp_path: Path) -> None:
    """A new run starts by removing its manifest: an empty WAL or lock file of a store given as the manifest
    (check_output_file takes an empty file) would be deleted. Refused; one in the store's outputs is not."""
    other = tmp_path / "other"
    (other / "locks").mkdir(parents=True)
    old_file(other / "outlast.db")
    (other / "outputs").mkdir()
    spec = get_handler("cleanup_operation")
    root = tmp_path / "root"
    root.mkdir()
    for m in (other / "outlast.db-wal", other / "locks" / "06bhxtse4qpwa.lock"):
        m.write_bytes(b"")
        with pytest.raises(InvalidInput, match=re.escape("is among the files of the Outlast store")):
            spec.parse_params({"root": str(root), "patterns": NO_SUCH, "manifest": str(m)})
        assert m.exists()
    spec.parse_params({"root": str(root), "patterns": NO_SUCH, "manifest": str(other / "outputs" / "m.jsonl")})


async def test_a_root_inside_the_state_dir_is_refused_when_it_runs(engine: Engine) -> None:
    """root = the state dir or its locks: the operation fails saying why, and removes nothing. Its outputs
    (the user's reports, and the HTTP API's only default root) are cleaned as asked."""
    state = Path(engine.settings.state_dir)
    old_file(state / "outputs" / "report.tmp")
    (state / "locks").mkdir(exist_ok=True)
    for root in (state, state / "locks"):
        spec = OperationSpec(
            type="cleanup_operation",
            params={"root": str(root), "patterns": ["*.tmp", "*.db", "*"], "older_than_days": 0, "dry_run": False},
        )
        rec = await engine.wait((await engine.submit(spec)).id, timeout=30)
        assert rec.status is Status.FAILED and "inside Outlast's own directory" in (rec.error or ""), rec
        assert (state / "outputs" / "report.tmp").exists() and (state / "outlast.db").exists()
    spec = OperationSpec(
        type="cleanup_operation",
        params={"root": str(state / "outputs"), "patterns": ["*.tmp"], "older_than_days": 0, "dry_run": False},
    )
    rec = await engine.wait((await engine.submit(spec)).id, timeout=30)
    assert rec.status is Status.COMPLETED, rec.error
    assert not (state / "outputs" / "report.tmp").exists() and (state / "outlast.db").exists()


async def test_a_manifest_in_outlasts_own_directory_is_refused_when_it_runs(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings' checkpoint mirror holds no outlast.db for validation to see: the run refuses a manifest
    there (its start removes the manifest), and the file stays."""
    mirror = tmp_path / "mirror"
    victim = mirror / "outlast" / "ops" / "op.json"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"")
    monkeypatch.setenv("OUTLAST_CHECKPOINT_MIRROR", str(mirror))
    (tmp_path / "root").mkdir()
    params = {"root": str(tmp_path / "root"), "patterns": NO_SUCH, "manifest": str(victim), "dry_run": False}
    rec = await engine.wait((await engine.submit(OperationSpec(type="cleanup_operation", params=params))).id, 30)
    assert rec.status is Status.FAILED and "is among Outlast's own files" in (rec.error or ""), rec
    assert victim.exists()


# ---- 2. retention's state_dir ----------------------------------------------------------------------------


def test_retention_refuses_a_state_dir_that_holds_no_store(cli: Cli, tmp_path: Path) -> None:
    """A project with logs/ and outputs/ given as state_dir: one line, exit 2, nothing stored, nothing there
    removed or created (it made outlast.db and its owner note there, and deleted the project's old files)."""
    proj = tmp_path / "project"
    for rel in ("logs/server.log", "outputs/data.csv", "outputs/report/final.pdf"):
        old_file(proj / rel)
    before = files(proj)
    bad_params(cli, "cleanup_operation", {"retention_days": 1, "state_dir": str(proj)}, "not an Outlast state")
    assert files(proj) == before
    spec = get_handler("cleanup_operation")
    for d in (proj, proj / "logs"):
        with pytest.raises(InvalidInput, match=re.escape("is not an Outlast state directory (it holds no outlast.db)")):
            spec.parse_params({"retention_days": 1, "state_dir": str(d), "dry_run": False})
    (proj / "outlast.db").mkdir()  # a directory of that name is not a store either
    with pytest.raises(InvalidInput, match="not an Outlast state directory"):
        spec.parse_params({"retention_days": 1, "state_dir": str(proj)})


async def test_retention_of_another_store_reads_it_without_creating_anything(engine: Engine, tmp_path: Path) -> None:
    """Another state dir's old logs go by its own records, read as ``outlast ls`` reads them: nothing is
    created there (no lock or log directory, no owner note)."""
    other = tmp_path / "other"
    async with open_store(other) as store:
        assert store.state_dir == other
    for extra in ("locks", "outlast.db-owner"):  # what opening it makes: a read must not make them again
        p = other / extra
        p.rmdir() if p.is_dir() else p.unlink(missing_ok=True)
    old_file(other / "logs" / "0000000000000.jsonl")  # the log of an operation no longer in the store
    old_file(other / "logs" / "keep.txt")
    os.utime(other / "logs" / "keep.txt")  # fresh: stays
    names = {p.name for p in other.iterdir()}
    spec = OperationSpec(
        type="cleanup_operation", params={"retention_days": 1, "state_dir": str(other), "dry_run": False}
    )
    rec = await engine.wait((await engine.submit(spec)).id, timeout=30)
    assert rec.status is Status.COMPLETED and rec.result["files"] == 1, rec.error
    assert not (other / "logs" / "0000000000000.jsonl").exists() and (other / "logs" / "keep.txt").exists()
    assert {p.name for p in other.iterdir()} == names


async def test_retention_reads_another_stores_records(engine: Engine, tmp_path: Path) -> None:
    """An old finished operation of the other store loses its log there; the store's records are read."""
    other = tmp_path / "other"
    async with Engine(store=open_store(other), settings=engine.settings.model_copy(update={"state_dir": other})) as e:
        op = await e.wait((await e.submit(OperationSpec(type="demo", params={"items": 1}))).id, timeout=30)
        await e.store.update(op.id, finished_at=OLD)
        await e.store.append_logs(op.id, [LogRecord(ts=time.time(), level="info", message="hi")])
        new = await e.wait((await e.submit(OperationSpec(type="demo", params={"items": 1}))).id, timeout=30)
        await e.store.append_logs(new.id, [LogRecord(ts=time.time(), level="info", message="hi")])
    for f in (other / "logs").iterdir():
        os.utime(f, (OLD, OLD))
    spec = OperationSpec(
        type="cleanup_operation", params={"retention_days": 1, "state_dir": str(other), "dry_run": False}
    )
    rec = await engine.wait((await engine.submit(spec)).id, timeout=30)
    assert rec.status is Status.COMPLETED, rec.error
    assert not (other / "logs" / f"{op.id}.jsonl").exists()
    assert (other / "logs" / f"{new.id}.jsonl").exists()  # a recent operation's, by the other store's record


# ---- 3. the age cutoff across a kill ------------------------------------------------------------------------

KILL_PLUGIN = """
import os, signal
import engine.operations.cleanup as cleanup

def _kill_before_removing(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # listed, nothing removed yet: the worst moment to lose the cutoff

cleanup._remove_batch = _kill_before_removing
"""


def test_a_kill_before_the_first_checkpoint_keeps_the_cutoff(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker lists, then is SIGKILLed before removing anything, long before its interval's checkpoint.
    young.tmp's mtime is then set just after the kill, one day back: younger than the cutoff the first run
    took (an uninterrupted run keeps it), older than one a resume would take now. The resume keeps it."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "cleanup_kill_plugin.py").write_text(KILL_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "plugins"), os.environ.get("PYTHONPATH", "")]))
    root = tmp_path / "root"
    old_file(root / "old" / "a.tmp")
    young = root / "young.tmp"
    young.write_text("keep me")
    os.utime(young, (time.time() + DAY, time.time() + DAY))  # not listed by the first run
    params = {"root": str(root), "patterns": ["*.tmp"], "older_than_days": 1, "dry_run": False}
    op_id = submit(cli, "cleanup_operation", params, "checkpoint_interval=3600")
    worker = cli.start("--plugin", "cleanup_kill_plugin", "worker", "--concurrency", "1")
    try:
        assert worker.popen.wait(60) == -signal.SIGKILL, worker
    finally:
        worker.kill()
    assert (root / "old" / "a.tmp").exists()  # killed before removing
    crossed = time.time() - DAY
    os.utime(young, (crossed, crossed))

    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert young.exists(), "the resumed run deleted young.tmp, which the uninterrupted run keeps"
    assert not (root / "old" / "a.tmp").exists() and final["result"]["files"] == 1
    assert checkpoint_state(cli, op_id)["cutoff"] < crossed


# ---- 4. empty paths, /, the home directory, .git ------------------------------------------------------------


def test_an_empty_path_is_refused_not_taken_as_the_current_directory(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-p root=$ROOT`` with ROOT unset: one line, exit 2, nothing stored (it cleaned the current directory)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.none").write_text("precious")
    bad_params(cli, "cleanup_operation", {"root": "", "patterns": ["*.none"]}, "root is empty")
    assert (tmp_path / "report.none").exists()
    for type_, params, field in [
        ("cleanup_operation", {"root": " ", "patterns": NO_SUCH}, "root"),
        ("cleanup_operation", {"retention_days": 1, "state_dir": ""}, "state_dir"),
        ("cleanup_operation", {"root": str(tmp_path), "patterns": NO_SUCH, "manifest": "  "}, "manifest"),
        ("backup_operation", {"source": "", "destination": str(tmp_path / "b")}, "source"),
        ("backup_operation", {"source": str(tmp_path), "destination": "\t"}, "destination"),
        ("codebase_indexing", {"root": ""}, "root"),
        ("comprehensive_test_suite", {"path": ""}, "path"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(f"{field} is empty")):
            get_handler(type_).parse_params(params)


def test_deleting_in_slash_home_or_git_is_refused(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dry_run=false on /, the home directory (or a directory above it), a .git directory or inside one is
    refused at validation; a dry run there is not; the work tree holding .git is not."""
    home = tmp_path / "home" / "me"
    git = tmp_path / "repo" / ".git"
    (git / "objects").mkdir(parents=True)
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    spec = get_handler("cleanup_operation")
    for root, expect in [
        ("/", "is the file system's root"),
        (str(home), "is your home directory"),
        ("~", "is your home directory"),
        (str(home.parent), "holds your home directory"),
        (str(git), "is a .git directory or inside one"),
        (str(git / "objects"), "is a .git directory or inside one"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(expect)):
            spec.parse_params({"root": root, "patterns": NO_SUCH, "dry_run": False})
        assert spec.parse_params({"root": root, "patterns": NO_SUCH}).dry_run  # type: ignore[attr-defined]
    spec.parse_params({"root": str(tmp_path / "repo"), "patterns": NO_SUCH, "dry_run": False})  # the work tree

    for root, expect in [("/", "file system's root"), (str(home), "your home directory")]:
        params = json.dumps({"root": root, "patterns": NO_SUCH, "dry_run": False})
        code, _, err = in_process(cli, "submit", "cleanup_operation", "--params-json", params)
        assert code == 2 and len(err.strip().splitlines()) == 1 and expect in err, (code, err)
    nothing_stored(cli)


def test_files_another_process_removes_during_the_run_are_not_counted_as_removed_by_it(
    cli: Cli, tmp_path: Path
) -> None:
    """A file removed by someone else between the cleanup's look at its batch and its unlink was counted
    removed by the run (the result's files and bytes, a line of its manifest): a run beside an `rm -r` of
    half the tree said it had removed the whole of it."""
    root = tmp_path / "root"
    root.mkdir()
    for name in "abcde":
        (root / f"{name}.tmp").write_text("x" * 10)
    gone = [str(root / "b.tmp"), str(root / "d.tmp")]
    manifest = tmp_path / "removed.jsonl"
    params = {"root": str(root), "patterns": ["*.tmp"], "dry_run": False, "manifest": str(manifest)}
    env = {**cli.env, "OUTLAST_TEST_GONE": "\n".join(gone)}
    args = ["--json", "--plugin", "tests.cleanup_race", "run", "cleanup_operation", "--params-json", json.dumps(params)]
    r = cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    final = json.loads(r.stdout.splitlines()[-1])
    assert (final["result"]["files"], final["result"]["bytes"], final["progress"]["skipped"]) == (3, 30, 2), final
    assert list(root.iterdir()) == []
    removed = {k for k, v in cleanup_read_manifest(manifest).items() if v is not None}
    assert removed == {"a.tmp", "c.tmp", "e.tmp"}, removed
