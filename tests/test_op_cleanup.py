"""cleanup_operation: dry-run by default; a worker SIGKILLed mid-run resumes to the uninterrupted run's tree and
manifest (no removed file missing from it, none listed twice); Outlast's retention of old outputs and logs."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from engine import Engine, InvalidInput, LogRecord, OperationSpec, Status
from engine.registry import get_handler
from tests.fixtures_cli import Cli, until
from tests.fixtures_ops import bad_params, resume, run_json, submit

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


@pytest.mark.parametrize("interval", ["0.05", "3600"], ids=["checkpointed", "killed-before-a-checkpoint"])
def test_sigkill_mid_run_resumes_to_the_uninterrupted_result(cli: Cli, tmp_path: Path, interval: str) -> None:
    """Killed between batches or between a batch's manifest lines and its unlinks (with checkpoints, or
    before the first one, when the resume starts over): the resumed run leaves the tree, the manifest
    (each removed file once) and the result of an uninterrupted run."""
    n = 2000
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    make_tree(whole, n, age=False)  # older_than_days=0: whatever was there when the run started goes
    make_tree(killed, n, age=False)
    code, ref, err = run_json(
        cli,
        "run",
        "cleanup_operation",
        "--params-json",
        json.dumps(params(whole, tmp_path / "w.jsonl", dry_run=False, older_than_days=0)),
    )
    assert code == 0, err
    kept = tree(whole)
    assert kept == ["keep/k.tmp", "old.txt"]

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
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert tree(killed) == kept and os.path.exists(killed / "old.txt")
    got, want = manifest(out), manifest(tmp_path / "w.jsonl")
    assert len(got) == len(set(got)) and sorted(got) == sorted(want)  # every removed file once, none missing
    drop = ("manifest",)
    assert {k: v for k, v in final["result"].items() if k not in drop} == {
        k: v for k, v in ref["result"].items() if k not in drop
    }


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
    }
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
