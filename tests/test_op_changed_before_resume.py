"""A file an analysis read before a SIGKILL, changed before ``outlast resume``, is read again: the result is the
tree's as it is at the end, as a fresh run of it says.

An outside tester planted an AWS key in a file the security scan had scanned before the kill: the resumed scan
reported the tree without it (its findings, bytes and SARIF were the file's before the change); code_analysis kept
the file's old functions, dependency_analysis its old imports, an index (which compared sizes and mtimes)
the file's old symbols, and semantic_analysis its old keywords. semantic_analysis also counted a document it had
analysed before the kill and that was deleted before the resume. kb_population, which compared sizes and mtimes,
kept the document's old text. The change here keeps the file's size and puts
its mtime back (as ``touch -r``, ``rsync -t`` or a checkout would), which only the file's ctime tells."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, OperationSpec, Status
from engine.operations.security_scan import THREAD_BATCH
from tests.fixtures_analysis import tables
from tests.fixtures_cli import Cli
from tests.fixtures_ops import as_json, done_keys, kill_worker_when, resume, run_here, submit
from tests.test_op_backup import snapshot
from tests.test_op_security_scan_stop import slowed_scan

FILES = {
    "security_scan": 40,
    "code_analysis": 200,
    "dependency_analysis": 400,
    "codebase_indexing": 600,
    "semantic_analysis": 400,
    "kb_population": 200,
}
"""Files per tree: the killed worker stands at its checkpoints and never completes (``kill_worker_when``), so
the kill lands mid-run at any size; a checkpoint every quarter of them (``EVERY``) however quick they are
(200 ran to their end within one checkpoint_interval), and three batches or more where the type works in
batches (the scan in one thread, without worker processes, scans one file a batch)."""
EVERY = {kind: f"checkpoint_every={n // 4}" for kind, n in FILES.items()}
PLAIN = 'x = "AAAAAAAAAAAAAAAAAAAA"\n'
# The same length as PLAIN: a key for the scan, an import for the dependencies, a branch for the analysis.
CHANGED = {
    "security_scan": 'x = "AKIAZ7QW3XK5P2LM9RTB"\n',
    "dependency_analysis": "import requests, yaml     \n",
    "code_analysis": "def f(a):\n  return a or b \n",
    "codebase_indexing": "import json as AAAAAAAAAAA\n",
    "semantic_analysis": 'x = "volcano volcano lava"\n',
    "kb_population": 'x = "volcano volcano lava"\n',
}


HOUR_AGO = time.time() - 3600


def outputs(kind: str, out: Path) -> Any:
    if kind == "security_scan":
        report = json.loads(out.with_suffix(".json").read_text())
        return report["summary"], report["findings"]
    names = {
        "code_analysis": ("files", "functions"),
        "dependency_analysis": ("modules", "imports"),
        "codebase_indexing": ("files", "symbols", "imports"),
        "semantic_analysis": ("sem_docs", "sem_keywords", "sem_topics", "sem_duplicates"),
        "kb_population": ("documents", "chunks"),
    }[kind]
    return tables(out, *names, drop=("seen", "analysed_by", "made_by", "stored_by", "id", "doc", "dup_of"))


SOAK = os.environ.get("OUTLAST_SOAK") == "1"
SOAK_ONLY = {"code_analysis", "dependency_analysis", "semantic_analysis"}
"""Their resume's look for changed files is the same code as the others' (``_common``), so each run of the suite
checks the three whose wiring differs most (the scan's batches, the index's own pass, the kb's documents);
``OUTLAST_SOAK=1`` checks all six."""


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, marks=pytest.mark.skipif(not SOAK and k in SOAK_ONLY, reason="OUTLAST_SOAK=1 runs it"))
        for k in sorted(CHANGED)
    ],
)
def test_a_file_changed_between_the_kill_and_the_resume_is_read_again(cli: Cli, tmp_path: Path, kind: str) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "p"\ndependencies = []\n')
    body = "".join(f"def g{i}(v):\n    return v + {i}\n\n" for i in range(8))
    for i in range(FILES[kind]):
        (root / f"m{i:04d}.py").write_text(PLAIN + body)
        os.utime(root / f"m{i:04d}.py", (HOUR_AGO, HOUR_AGO))  # an mtime of before the run: only a ctime is new
    params: Callable[[str], dict[str, Any]] = lambda out: (  # noqa: E731
        {"source": str(root), "kb": str(tmp_path / out), "patterns": ["*.py"]}
        if kind == "kb_population"
        else {"root": str(root), "output": str(tmp_path / out)}
    )
    op_id = submit(cli, kind, params("killed.db"), "checkpoint_interval=0.1", EVERY[kind])
    killed = kill_worker_when(
        cli, op_id, lambda op: op.status.value not in ("queued", "running") or len(done_keys(cli.state_dir, op.id)) > 0
    )
    assert killed.status is Status.RUNNING, "finished before the kill"
    rel = sorted(done_keys(cli.state_dir, op_id))[0]
    path = root / rel
    st = path.stat()
    path.write_text(path.read_text().replace(PLAIN, CHANGED[kind]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    (root / f"m{FILES[kind] - 1:04d}.py").unlink()  # deleted: not reported (it may be done or not)

    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    # That file alone: the others, written just before the run began, are not read again (with a slack of 2 s
    # every one was, at each resume).
    said = [ln for ln in cli("logs", op_id).stdout.splitlines() if "changed since" in ln]
    assert len(said) == 1 and re.search(r"\b1 (files|documents) ", said[0]), said
    fresh = as_json(run_here(tmp_path, kind, **params("fresh.db")).result)
    drop = {"database", "index", "results", "reports", "removed", "kb"}
    assert {k: v for k, v in final["result"].items() if k not in drop} == {
        k: v for k, v in fresh.items() if k not in drop
    }
    assert outputs(kind, tmp_path / "killed.db") == outputs(kind, tmp_path / "fresh.db")


def killed_backup(cli: Cli, tmp_path: Path) -> tuple[dict[str, Any], str, list[str]]:
    """A backup of a large file (copied first, in chunks) and 300 small ones (three batches), its worker killed
    once two files are done: the params (``source``, ``destination``), the operation's id and its done keys, sorted."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a_big.bin").write_bytes(os.urandom(5 << 20))  # over chunk_checkpoint: copied first, in chunks
    for i in range(300):
        (src / f"f{i:04d}.txt").write_bytes(os.urandom(2000))
    params = {"source": str(src), "destination": str(dst), "chunk_checkpoint": 4 << 20}
    op_id = submit(cli, "backup_operation", params, "checkpoint_interval=0.1", "checkpoint_every=64")
    killed = kill_worker_when(
        cli, op_id, lambda op: op.status.value not in ("queued", "running") or len(done_keys(cli.state_dir, op.id)) > 1
    )
    assert killed.status is Status.RUNNING, "finished before the kill"
    return params, op_id, sorted(done_keys(cli.state_dir, op_id))


def resumed_as_uninterrupted(cli: Cli, tmp_path: Path, op_id: str, params: dict[str, Any]) -> None:
    """Resume ``op_id``: it completes with the source's copy, and a manifest equal to an uninterrupted backup's."""
    src, dst = Path(params["source"]), Path(params["destination"])
    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert snapshot(dst) == snapshot(src)
    run_here(tmp_path, "backup_operation", **{**params, "destination": f"{tmp_path}/b"})
    manifest = lambda d: json.loads((d / ".outlast-manifest.json").read_text())  # noqa: E731
    assert manifest(dst) == manifest(tmp_path / "b")


@pytest.mark.parametrize("which", ["small", "large"])
def test_a_file_copied_before_the_kill_and_changed_before_the_resume_is_copied_again(
    cli: Cli, tmp_path: Path, which: str
) -> None:
    """The resumed backup was "completed" with the copy (and its manifest line) of the file before the change:
    a small file (copied in a batch) or a large one (copied in chunks, alone)."""
    params, op_id, done = killed_backup(cli, tmp_path)
    path = Path(params["source"]) / (done[0] if which == "large" else done[1])
    assert (path.name == "a_big.bin") == (which == "large")
    st = path.stat()
    path.write_bytes(os.urandom(st.st_size))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    resumed_as_uninterrupted(cli, tmp_path, op_id, params)


@pytest.mark.parametrize("which", ["small", "large"])
def test_a_copy_deleted_from_the_destination_before_the_resume_is_made_again(
    cli: Cli, tmp_path: Path, which: str
) -> None:
    """The resume skipped every file the first attempt had copied, whatever became of its copy: a backup whose
    destination lost files between the two attempts (cleaned by hand, a sync tool) was "completed" without
    them, and its manifest listed them."""
    params, op_id, done = killed_backup(cli, tmp_path)
    rel = done[0] if which == "large" else done[1]
    assert (rel == "a_big.bin") == (which == "large")
    (Path(params["destination"]) / rel).unlink()

    resumed_as_uninterrupted(cli, tmp_path, op_id, params)


def test_a_knowledge_base_deleted_between_two_attempts_is_filled_again(cli: Cli, tmp_path: Path) -> None:
    """kb_population skipped every document an earlier attempt had stored, whatever became of the knowledge
    base since: one deleted (or replaced) between the kill and the resume ended "completed" without them, its
    result counting documents it did not hold."""
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(FILES["kb_population"]):
        (root / f"d{i:04d}.md").write_text(f"# Doc {i}\n\nword{i} and some text\n")
    params = {"source": str(root), "kb": str(tmp_path / "killed.db")}
    op_id = submit(cli, "kb_population", params, "checkpoint_interval=0.1", EVERY["kb_population"])
    killed = kill_worker_when(
        cli, op_id, lambda op: op.status.value not in ("queued", "running") or len(done_keys(cli.state_dir, op.id)) > 0
    )
    assert killed.status is Status.RUNNING, "finished before the kill"
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"killed.db{suffix}").unlink(missing_ok=True)

    final = resume(cli, op_id)
    assert final["status"] == "completed", final
    assert final["result"]["documents"] == FILES["kb_population"], final["result"]
    run_here(tmp_path, "kb_population", **{**params, "kb": str(tmp_path / "fresh.db")})
    assert outputs("kb_population", tmp_path / "killed.db") == outputs("kb_population", tmp_path / "fresh.db")


async def test_a_tree_written_just_before_the_run_is_not_read_again_by_the_resume(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout or a build just before the scan: with a slack of 2 s on the change times, each resume read
    again every file written in the 2 s before the run began (here all of them), not the interval since the
    newest checkpoint. Paused once 40 files are scanned, resumed: only the batch the pause cut is scanned twice."""
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(100):
        (root / f"m{i:03d}.py").write_text(f"x = {i}\n")
    monkeypatch.setenv("OUTLAST_WORKERS", "0")
    calls, enough = slowed_scan(monkeypatch, 0.01, 40)
    params = {"root": str(root), "output": str(tmp_path / "r.json")}
    op = await engine.submit(OperationSpec(type="security_scan", params=params))
    assert await asyncio.to_thread(enough.wait, 60)
    await engine.pause(op.id)
    op = await engine.wait(op.id, timeout=60)
    assert op.status is Status.PAUSED, (op.status, op.error)
    await engine.resume(op.id)
    op = await engine.wait(op.id, timeout=120)
    assert op.status is Status.COMPLETED and op.result["scanned"] == 100, (op.status, op.error)
    twice = sorted(r for r in set(calls) if calls.count(r) > 1)
    assert len(twice) <= THREAD_BATCH, twice
