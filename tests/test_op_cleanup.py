"""cleanup_operation: dry-run by default; a worker SIGKILLed mid-run resumes to the uninterrupted run's tree and
manifest (no removed file missing from it, none listed twice); Outlast's retention of old outputs and logs."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import engine.operations.cleanup as cleanup_mod
from engine import Engine, InvalidInput, LogRecord, OperationSpec, Status
from engine.registry import get_handler
from tests.fixtures_cli import Cli, until
from tests.fixtures_ops import as_json, bad_params, deep_tree, resume, run_here, submit

DAY = 86400
OLD = time.time() - 10 * DAY


def make_tree(root: Path, n: int, age: bool = True) -> None:
    """``n`` old .tmp files (to go), fresh .tmp files and old .txt files (to stay), a kept directory."""
    for i in range(n):
        d = root / f"d{i % 40:02d}"
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"f{i:05d}.tmp"
        f.write_bytes(b"x" * (i % 7))
        if age:
            os.utime(f, (OLD, OLD))
    (root / "fresh.tmp").write_text("new")
    (root / "old.txt").write_text("old")
    os.utime(root / "old.txt", (OLD, OLD))
    (root / "keep").mkdir()
    (root / "keep" / "k.tmp").write_text("k")
    os.utime(root / "keep" / "k.tmp", (OLD, OLD))
    (root / "link.tmp").symlink_to("old.txt")  # removed as a link; its target stays
    os.utime(root / "link.tmp", (OLD, OLD), follow_symlinks=False)


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


def manifest(path: Path) -> list[tuple[str, int]]:
    return [(r["path"], r["size"]) for r in map(json.loads, path.read_text().splitlines())]


def params(root: Path, out: Path, **kw: object) -> dict:
    return {"root": str(root), "patterns": ["*.tmp"], "exclude": ["keep/"], "older_than_days": 1,
            "manifest": str(out), **kw}  # fmt: skip


async def test_dry_run_by_default(engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "t"
    make_tree(root, 30)
    before = tree(root)
    op = await engine.submit(OperationSpec(type="cleanup_operation", params=params(root, tmp_path / "d.jsonl")))
    rec = await engine.wait(op.id, timeout=30)
    assert rec.status is Status.COMPLETED and rec.result["dry_run"] and rec.result["files"] == 31, rec.error
    assert tree(root) == before  # a dry run deletes nothing: its manifest says what would go
    assert sorted(p for p, _ in manifest(tmp_path / "d.jsonl")) == sorted(
        {*before} - {"fresh.tmp", "keep/k.tmp", "old.txt"}
    )


N = 2000
"""Files of the killed run's tree: it races a worker that does not stand (killed-before-a-checkpoint has none to
stand at), so the kill needs the run to take a while."""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """An uninterrupted run (in this process) over a tree of N files, once for both kills: its final record as
    ``outlast --json`` prints it, and its manifest."""
    base = tmp_path_factory.mktemp("whole")
    whole = base / "whole"
    make_tree(whole, N, age=False)  # older_than_days=0: whatever was there when the run started goes
    op = run_here(base, "cleanup_operation", **params(whole, base / "w.jsonl", dry_run=False, older_than_days=0))
    assert tree(whole) == ["keep/k.tmp", "old.txt"]
    return as_json(op.model_dump(mode="json")), manifest(base / "w.jsonl")


@pytest.mark.parametrize("interval", ["0.05", "3600"], ids=["checkpointed", "killed-before-a-checkpoint"])
def test_sigkill_mid_run_resumes_to_the_uninterrupted_result(
    cli: Cli, tmp_path: Path, interval: str, uninterrupted: tuple[dict[str, Any], list[tuple[str, int]]]
) -> None:
    """Killed between batches or between a batch's manifest lines and its unlinks (with checkpoints, or
    before the first one, when the resume starts over), its last manifest line torn: the resumed run leaves
    the tree, the manifest (each removed file once) and the result of an uninterrupted run."""
    ref, want = uninterrupted
    killed = tmp_path / "killed"
    make_tree(killed, N, age=False)
    kept = ["keep/k.tmp", "old.txt"]

    out = tmp_path / "k.jsonl"
    op_id = submit(
        cli,
        "cleanup_operation",
        params(killed, out, dry_run=False, older_than_days=0),
        f"checkpoint_interval={interval}",
    )
    worker = cli.start("worker", "--concurrency", "1")
    try:
        until(lambda: out.exists() and out.stat().st_size > 20_000, 60, every=0.005, what="a few batches removed")
        os.kill(worker.popen.pid, signal.SIGKILL)
        worker.popen.wait(10)
    finally:
        worker.kill()
    left = len(tree(killed))
    assert left > len(kept), "the run finished before the kill"
    if out.read_bytes().endswith(b"\n"):  # as a kill inside a batch's write leaves it (its file not yet removed)
        with open(out, "a") as fh:
            fh.write('{"path": "d0')
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert tree(killed) == kept and os.path.exists(killed / "old.txt")
    got = manifest(out)
    assert len(got) == len(set(got)) and sorted(got) == sorted(want)  # every removed file once, none missing
    drop = ("manifest",)
    assert {k: v for k, v in final["result"].items() if k not in drop} == {
        k: v for k, v in ref["result"].items() if k not in drop
    }
    # The files removed after the newest checkpoint count as done too: the progress said only the resumed
    # attempt's files (of the total it listed), below the result's count.
    assert final["progress"]["done"] == final["progress"]["total"] == ref["progress"]["done"], final["progress"]


def test_bad_params(cli: Cli, tmp_path: Path) -> None:
    """One line, exit 2, nothing stored (through the CLI once; the rest through the params model it uses)."""
    r = tmp_path / "r"
    r.mkdir()
    bad_params(cli, "cleanup_operation", {"root": str(r)}, "patterns is empty")
    spec = get_handler("cleanup_operation")
    for params, expect in [
        ({"root": str(tmp_path / "nope"), "patterns": ["*"]}, "root"),
        ({"retention_days": 3, "root": str(r)}, "either root"),
        ({}, "either root"),
        ({"root": str(r), "patterns": ["*"], "manifest": str(r / "m.jsonl")}, "inside root"),
        ({"retention_days": 3, "patterns": ["*"]}, "go with root"),
        ({"retention_days": -1}, "retention_days"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(expect)):
            spec.parse_params(params)


async def test_retention_removes_old_operations_outputs_and_logs_only(engine: Engine, tmp_path: Path) -> None:
    """Outputs and logs of operations that ended more than N days ago, logs of operations gone from the store,
    and unreferenced old outputs go; those of recent or paused operations and fresh files stay."""
    state = Path(engine.settings.state_dir)
    old_op = await engine.wait((await engine.submit(OperationSpec(type="demo", params={"items": 1}))).id, timeout=30)
    new_op = await engine.wait((await engine.submit(OperationSpec(type="demo", params={"items": 1}))).id, timeout=30)
    assert old_op.status is new_op.status is Status.COMPLETED
    await engine.store.update(old_op.id, finished_at=OLD)
    for o in (old_op, new_op):
        await engine.store.append_logs(o.id, [LogRecord(ts=time.time(), level="info", message="hi")])
    outputs = state / "outputs"
    (outputs / "sub").mkdir(parents=True, exist_ok=True)
    files = {
        f"outputs/report-{old_op.id}.json": True,  # the old operation's: goes
        f"outputs/report-{new_op.id}.json": False,  # a recent operation's: stays
        "outputs/orphan.sqlite": True,  # old, nobody's
        "outputs/sub/old.txt": True,
        "logs/0000000000000.jsonl": True,  # an operation no longer in the store
        f"detached/{old_op.id}.log": True,  # a detached run's output, as its log
        f"detached/{new_op.id}.log": False,
        "detached/0000000000000.log": True,
    }
    (state / "detached").mkdir(exist_ok=True)
    for rel in files:
        (state / rel).write_text("x")
        os.utime(state / rel, (OLD, OLD))
    (outputs / "fresh.txt").write_text("new")
    gone = sorted([*(r for r, go in files.items() if go), f"logs/{old_op.id}.jsonl"])

    dry = await engine.wait(
        (await engine.submit(OperationSpec(type="cleanup_operation", params={"retention_days": 1}))).id, 30
    )
    assert dry.status is Status.COMPLETED and dry.result["dry_run"], dry.error
    assert sorted(p for p, _ in manifest(Path(dry.result["manifest"]))) == gone
    assert all((state / r).exists() for r in gone)

    spec = OperationSpec(type="cleanup_operation", params={"retention_days": 1, "dry_run": False})
    done = await engine.wait((await engine.submit(spec)).id, 30)
    assert done.status is Status.COMPLETED and done.result["files"] == len(gone), done.error
    assert not any((state / r).exists() for r in gone) and not (outputs / "sub").exists()
    assert (state / f"logs/{new_op.id}.jsonl").exists() and (outputs / "fresh.txt").exists()
    assert (state / f"outputs/report-{new_op.id}.json").exists()
    assert Path(dry.result["manifest"]).exists()  # the dry run's manifest is fresh
    assert (await engine.get(old_op.id)).status is Status.COMPLETED  # records are not deleted here


def swap_for_symlink(directory: Path, target: Path) -> None:
    """What an attacker who can write in the tree does: move ``directory`` away, put a symlink in its place."""
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.symlink_to(target, target_is_directory=True)


def old_file(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (OLD, OLD))


async def test_a_directory_swapped_for_a_symlink_after_the_listing_is_not_followed(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """root/z/victim.tmp is listed, then root/z becomes a symlink to a directory outside root holding a file of
    the same name (swapped right after the listing, deterministically): the file outside stays, the listed one
    is skipped with a warning (its path no longer goes through real directories), the rest goes."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    old_file(root / "a" / "f.tmp")
    old_file(root / "z" / "victim.tmp", "listed")
    old_file(outside / "victim.tmp", "precious")
    listing = cleanup_mod.list_matching

    def list_then_swap(*a: Any) -> Any:
        found = listing(*a)
        swap_for_symlink(root / "z", outside)
        return found

    monkeypatch.setattr(cleanup_mod, "list_matching", list_then_swap)
    spec = OperationSpec(type="cleanup_operation", params=params(root, tmp_path / "m.jsonl", dry_run=False))
    rec = await engine.wait((await engine.submit(spec)).id, timeout=30)
    assert rec.status is Status.COMPLETED, rec.error
    assert (outside / "victim.tmp").exists(), "a file outside root was deleted through the symlink"
    assert (root / "z.moved" / "victim.tmp").exists() and not (root / "a" / "f.tmp").exists()
    assert rec.result["files"] == 1 and rec.result["skipped"] == 1 and rec.progress.skipped == 1
    records, _ = await engine.logs(rec.id)
    assert any("z/victim.tmp: not removed" in r.message and r.level == "warning" for r in records), records


async def test_a_file_replaced_after_the_listing_is_not_removed(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listed (old) file replaced by another of the same name (a fresh one, renamed over it) after the listing
    is not the file the listing chose: it stays, skipped."""
    root = tmp_path / "root"
    old_file(root / "d" / "a.tmp", "old")
    listing = cleanup_mod.list_matching

    def list_then_replace(*a: Any) -> Any:
        found = listing(*a)
        (root / "d" / "new").write_text("written after the listing")
        os.replace(root / "d" / "new", root / "d" / "a.tmp")  # both existed at once: a different inode
        return found

    monkeypatch.setattr(cleanup_mod, "list_matching", list_then_replace)
    spec = OperationSpec(type="cleanup_operation", params=params(root, tmp_path / "m.jsonl", dry_run=False))
    rec = await engine.wait((await engine.submit(spec)).id, timeout=30)
    assert rec.status is Status.COMPLETED, rec.error
    assert (root / "d" / "a.tmp").exists(), "the file that replaced the listed one was deleted"
    assert (root / "d" / "a.tmp").read_text() == "written after the listing"
    assert rec.result["files"] == 0 and rec.result["skipped"] == 1


async def test_retention_prunes_empty_directories_without_following_a_swapped_one(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention removes the empty old directories under outputs one rmdir at a time; outputs/sub swapped for a
    symlink to a directory outside the state dir (just before the first of its subdirectories is removed)
    does not make it remove the empty directories of the same names out there."""
    state = Path(engine.settings.state_dir)
    sub, outside = state / "outputs" / "sub", tmp_path / "outside"
    old_file(sub / "old.txt")  # retention removes it, then prunes sub's empty directories
    for d in (sub / "a", sub / "inner", outside / "a", outside / "inner"):
        d.mkdir(parents=True)
        os.utime(d, (OLD, OLD))
    real_rmdir = os.rmdir

    def swap_then_rmdir(path: Any, *a: Any, **kw: Any) -> None:
        if os.path.basename(path) in ("a", "inner") and not sub.is_symlink():
            swap_for_symlink(sub, outside)
        real_rmdir(path, *a, **kw)

    monkeypatch.setattr(os, "rmdir", swap_then_rmdir)
    spec = OperationSpec(type="cleanup_operation", params={"retention_days": 1, "dry_run": False})
    rec = await engine.wait((await engine.submit(spec)).id, timeout=30)
    assert rec.status is Status.COMPLETED and rec.result["files"] == 1, rec.error
    assert sub.is_symlink()  # the swap happened
    assert (outside / "a").is_dir() and (outside / "inner").is_dir()


async def test_trees_deeper_than_the_recursion_limit(engine: Engine, tmp_path: Path) -> None:
    """1,050 nested directories (Python 3.11's os.walk recursed once per level: RecursionError): a root's deep
    old file is listed and removed; retention removes a deep old output and prunes every emptied directory."""
    root, outputs = tmp_path / "root", Path(engine.settings.state_dir) / "outputs"
    with deep_tree(root, leaf="deep.tmp") as leaf, deep_tree(outputs / "deep", leaf="old.txt") as out_leaf:
        os.utime(root / leaf, (OLD, OLD))
        spec = OperationSpec(type="cleanup_operation", params=params(root, tmp_path / "m.jsonl", dry_run=False))
        rec = await engine.wait((await engine.submit(spec)).id, timeout=60)
        assert rec.status is Status.COMPLETED, rec.error
        assert rec.result["files"] == 1 and not (root / leaf).exists()

        os.utime(outputs / "deep" / out_leaf, (OLD, OLD))
        spec = OperationSpec(type="cleanup_operation", params={"retention_days": 1, "dry_run": False})
        rec = await engine.wait((await engine.submit(spec)).id, timeout=60)
        assert rec.status is Status.COMPLETED, rec.error
        assert rec.result["files"] == 1 and not (outputs / "deep").exists()
        assert rec.result["directories_removed"] == out_leaf.count("/") + 1


async def test_a_repository_s_metadata_is_never_entered(engine: Engine, tmp_path: Path) -> None:
    """``patterns=["*"]`` with an age under a project: its old files go, its ``.git`` (objects, reflogs, the
    index) stays whole, and so does a worktree's ``.git`` file (its link to the repository), each said once."""
    root = tmp_path / "project"
    for rel in [".git/objects/ab/cdef", ".git/logs/HEAD", ".git/index", "sub/.hg/store/x", "build/a.o", "old.log"]:
        old_file(root / rel)
    old_file(root / "wt" / ".git", "gitdir: elsewhere")
    spec = OperationSpec(
        type="cleanup_operation",
        params={"root": str(root), "patterns": ["*"], "older_than_days": 1, "dry_run": False,
                "manifest": str(tmp_path / "m.jsonl")},
    )  # fmt: skip
    rec = await engine.wait((await engine.submit(spec)).id, timeout=30)
    assert rec.status is Status.COMPLETED, rec.error
    assert tree(root) == [".git/index", ".git/logs/HEAD", ".git/objects/ab/cdef", "sub/.hg/store/x", "wt/.git"]
    assert rec.result["files"] == 2
    records, _ = await engine.logs(rec.id)
    said = [r.message for r in records if "a repository's metadata" in r.message]
    assert len(said) == 3 and any(m.startswith(f"skipped {root / '.git'}:") for m in said), said


@pytest.mark.redis
async def test_retention_leaves_the_files_of_a_redis_store_sharing_the_state_dir(
    engine: Engine, redis_server: Any, tmp_path: Path
) -> None:
    """A Redis worker with the same state dir writes its operations' outputs (and detached runs' output) there:
    the local store's retention, which knows none of them, took them for those of operations removed long
    ago, and removed the report of a Redis operation completed a minute before. What it can tell is its own
    old operations' still goes; the rest stays."""
    from engine import open_store

    state = Path(engine.settings.state_dir)
    tree = tmp_path / "tree"
    tree.mkdir()
    async with Engine(store=open_store(redis_server.url, namespace="shared"), settings=engine.settings) as far:
        spec = OperationSpec(type="cleanup_operation", params={"root": str(tree), "patterns": ["*.tmp"]})
        theirs = await far.wait((await far.submit(spec)).id, timeout=30)
    assert theirs.status is Status.COMPLETED, theirs.error
    report = Path(theirs.result["manifest"])
    assert report.parent == state / "outputs"
    old_op = await engine.wait((await engine.submit(OperationSpec(type="demo", params={"items": 1}))).id, timeout=30)
    await engine.store.update(old_op.id, finished_at=OLD)
    (state / "detached").mkdir(exist_ok=True)
    files = {
        str(report.relative_to(state)): False,  # the Redis operation's, completed just now
        f"detached/{theirs.id}.log": False,
        "outputs/orphan.sqlite": False,  # nobody's this store knows: perhaps the other's
        f"outputs/report-{old_op.id}.json": True,  # this store's old operation's: goes
        f"detached/{old_op.id}.log": True,
    }
    await _retained(engine, state, files)


async def test_retention_keeps_the_default_database_of_a_paused_analysis(engine: Engine, tmp_path: Path) -> None:
    """An analysis's default database (``outputs/code-analysis-HASH.sqlite``, HASH of its root) is named by no
    record before it completes: paused for longer than the N days, it was removed as nobody's, and the resume
    began again from its first file. One of a root no kept operation analyses still goes."""
    import hashlib

    from tests.fixtures_engine import queued_record

    state = Path(engine.settings.state_dir)
    root = str(tmp_path / "tree")
    paused = queued_record("code_analysis").model_copy(
        update={"status": Status.PAUSED, "params": {"root": root}, "updated_at": OLD}
    )
    await engine.store.create(paused)
    name = f"code-analysis-{hashlib.sha1(root.encode()).hexdigest()[:12]}.sqlite"
    files = {f"outputs/{name}": False, f"outputs/{name}-wal": False, "outputs/code-analysis-0123456789ab.sqlite": True}
    (state / "outputs").mkdir(exist_ok=True)
    await _retained(engine, state, files)


async def _retained(engine: Engine, state: Path, files: dict[str, bool]) -> None:
    """Write ``files`` (state-dir paths) as old as ``OLD``, run retention of 1 day, and check which went: each
    path's value says whether it goes."""
    for rel in files:
        (state / rel).write_text("x")
        os.utime(state / rel, (OLD, OLD))
    spec = OperationSpec(type="cleanup_operation", params={"retention_days": 1, "dry_run": False})
    done = await engine.wait((await engine.submit(spec)).id, 30)
    assert done.status is Status.COMPLETED, done.error
    assert {r: not (state / r).exists() for r in files} == files
