"""Outlast's demos, headless: each runs real operations through the real engine in a temporary state dir.

    python scripts/demo.py [--demo-type indexing|testing|checkpoint|knowledge-base|all] [--keep]

- indexing:   codebase_indexing of a generated tree of 4,000 files; paused after a checkpoint and resumed;
              the index equals an uninterrupted run's; a second run reuses the unchanged files.
- testing:    comprehensive_test_suite on a generated pytest suite (passing, failing and skipped tests),
              progress per test; the counts and the failing ids are checked.
- checkpoint: a `demo` operation run by an `outlast worker` subprocess, SIGKILLed after its second
              checkpoint; the next engine finds it interrupted, resumes it from that checkpoint, and the
              result equals an uninterrupted run's.
- knowledge-base: kb_population of a generated folder of Markdown, reStructuredText, HTML and text documents,
              paused after a checkpoint and resumed (the knowledge base equals an uninterrupted run's), then
              searched; an edit re-reads one document only; kb_optimization takes the duplicated chunks out of
              the index; vector_indexing and semantic_analysis answer "similar" and find the near-duplicates.

Progress is printed as it happens. The exit code is 0 only when every check of every demo held.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine import Engine, Operation, OperationSpec, Progress, Status, load_settings, open_store  # noqa: E402
from engine.registry import handlers  # noqa: E402

TICK = 0.4
"""Seconds between progress lines."""


class Checks:
    """What each demo expected and whether it held."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str, detail: Any = "") -> bool:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail != "" else ""), flush=True)
        if not ok:
            self.failed.append(what)
        return ok


def line(label: str, p: Progress | None, status: str = "running") -> None:
    if p is None:
        print(f"  [{label}] {status}", flush=True)
        return
    pct = f"{p.percent:5.1f}%" if p.percent is not None else "    -"
    rate = f"{p.rate:,.0f}/s" if p.rate else "-"
    total = p.total if p.total is not None else "?"
    failed = f" {p.failed} failed" if p.failed else ""
    step = f" {p.step}" if p.step else ""
    print(f"  [{label}] {status} {pct} {p.done}/{total}{failed} {rate}{step[:60]}", flush=True)


def make_engine(state_dir: Path, **kw: Any) -> Engine:
    settings = load_settings(state_dir=state_dir, grace_period=5.0)
    return Engine(store=open_store(state_dir), settings=settings, **kw)


async def follow(
    engine: Engine, op_id: str, label: str, stop_when: Callable[[Progress, Operation], bool] | None = None
) -> Operation:
    """Print progress until the operation settles; pause it (once) when ``stop_when`` says so."""
    paused = False
    next_line = 0.0
    while True:
        op = await engine.get(op_id)
        live = engine.live(op_id)
        if op.status not in (Status.RUNNING, Status.QUEUED):
            line(label, op.progress, op.status.value)
            return op
        if time.monotonic() >= next_line:
            next_line = time.monotonic() + TICK
            line(label, live or op.progress)
        if stop_when and not paused and live is not None and stop_when(live, op):
            await engine.pause(op_id)
            paused = True
            print(f"  [{label}] pause asked at {live.done}/{live.total}", flush=True)
        await asyncio.sleep(0.02)


# ---- indexing -------------------------------------------------------------------------------------------


def make_source_tree(root: Path, n: int) -> None:
    body = "".join(f"def f{i}(x):\n    # step {i}\n    return x * {i}\n\n" for i in range(30))
    for i in range(n):
        d = root / f"pkg{i // 200:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i:05d}.py").write_text(f'"""Module {i}."""\nimport os\n\n{body}class Thing{i}:\n    pass\n')
    (root / "README.txt").write_text("a generated tree\n")
    (root / "legacy.txt").write_bytes(b"caf\xe9 (Latin-1, not UTF-8: read as Latin-1 and indexed, named in the log)\n")


def index_rows(db: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT path, sha256, language, code, comment, blank, symbols FROM files ORDER BY 1"
        ).fetchall()
    finally:
        con.close()


async def demo_indexing(tmp: Path, check: Checks) -> None:
    n = 4000
    root = tmp / "tree"
    make_source_tree(root, n)
    profile = {"checkpoint_interval": 0.3, "progress_report_interval": 0.25}
    a, b = str(tmp / "resumed.sqlite"), str(tmp / "whole.sqlite")
    print(f"indexing: {n + 2} files under {root}, paused after a checkpoint and resumed", flush=True)
    async with make_engine(tmp / "state") as engine:
        spec = OperationSpec(type="codebase_indexing", params={"root": str(root), "output": a}, profile=profile)
        op = await engine.submit(spec)
        first = await follow(engine, op.id, "index", lambda p, o: p.done >= n // 3 and (o.checkpoint_seq or 0) >= 1)
        check(first.status is Status.PAUSED, "paused with a checkpoint", f"{first.progress.done} files done")
        await engine.resume(op.id)
        final = await follow(engine, op.id, "index")
        check(final.status is Status.COMPLETED, "resumed and completed", final.error or final.status.value)
        result = final.result or {}
        check(result.get("files") == n + 2 and result.get("failures") == 0, "every file indexed, Latin-1 too", result)
        whole = await engine.submit(OperationSpec(type="codebase_indexing", params={"root": str(root), "output": b}))
        whole_final = await engine.wait(whole.id, timeout=300)
        check(index_rows(a) == index_rows(b), "the index equals an uninterrupted run's", f"{len(index_rows(a))} rows")
        (root / "pkg00" / "mod00000.py").write_text("def changed():\n    pass\n")
        again = await engine.submit(OperationSpec(type="codebase_indexing", params={"root": str(root), "output": a}))
        again_final = await engine.wait(again.id, timeout=300)
        reused = (again_final.result or {}).get("reused")
        check(reused == n + 1, "incremental: the changed file re-indexed, the others reused", f"{reused} reused")
        con = sqlite3.connect(a)
        hits = con.execute("SELECT path FROM symbols WHERE name='Thing1234'").fetchall()
        con.close()
        check(hits == [("pkg06/mod01234.py",)], "the index is queryable", "symbols.name='Thing1234' -> " + str(hits))
        check(whole_final.status is Status.COMPLETED, "uninterrupted run completed")


# ---- testing --------------------------------------------------------------------------------------------

SUITE = """
import time
import pytest

@pytest.mark.parametrize("n", range(16))
def test_passes(n):
    time.sleep(0.05)
    assert n * 2 == n + n

@pytest.mark.parametrize("n", [3, 5])
def test_fails(n):
    time.sleep(0.05)
    assert n % 2 == 0, f"{n} is odd"

@pytest.mark.skip(reason="shows a skip")
def test_skipped():
    pass
"""


async def demo_testing(tmp: Path, check: Checks) -> None:
    suite = tmp / "suite"
    suite.mkdir()
    (suite / "test_generated.py").write_text(SUITE)
    async with make_engine(tmp / "state") as engine:
        if "comprehensive_test_suite" not in handlers():
            print("testing: comprehensive_test_suite is not available; the demo type with failures instead")
            op = await engine.submit(
                OperationSpec(type="demo", params={"items": 40, "seconds": 0.03, "fail_every": 10})
            )
            final = await follow(engine, op.id, "demo")
            check(final.status is Status.COMPLETED and final.progress.failed == 4, "4 item failures, completed")
            return
        print(f"testing: comprehensive_test_suite on {suite} (16 pass, 2 fail, 1 skipped)", flush=True)
        spec = OperationSpec(
            type="comprehensive_test_suite",
            params={"path": str(suite), "fail_on_test_failure": False},  # the default fails the run, for CI
            profile={"progress_report_interval": 0.25},
        )
        op = await engine.submit(spec)
        final = await follow(engine, op.id, "tests")
        result = final.result or {}
        check(
            final.status is Status.COMPLETED, "a failing test is a result, not an operation failure", final.error or ""
        )
        counts = result.get("counts", {})
        check(counts == {"passed": 16, "failed": 2, "skipped": 1}, "counts per outcome", counts)
        live = {k: final.progress.metrics.get(k) for k in ("passed", "failed", "skipped")}
        check(live == {"passed": 16, "failed": 2, "skipped": 1}, "pass/fail counts as live metrics", live)
        failing = sorted(f["id"].split("::")[-1] for f in result.get("failed", []))
        check(failing == ["test_fails[3]", "test_fails[5]"], "failing test ids", failing)
        tb = " ".join(f.get("message", "") + f.get("traceback", "") for f in result.get("failed", []))
        check("is odd" in tb, "failures carry their message")


# ---- checkpoint (SIGKILL) -------------------------------------------------------------------------------


async def demo_checkpoint(tmp: Path, check: Checks) -> None:
    state = tmp / "state"
    items = 200
    params = {"items": items, "seconds": 0.01}
    profile = {"checkpoint_interval": 0.2, "progress_report_interval": 0.2}
    print(f"checkpoint: a worker process runs {items} items and is SIGKILLed after its second checkpoint")
    async with make_engine(state, run_queue=False) as engine:
        op = await engine.submit(OperationSpec(type="demo", params=params, profile=profile))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "engine.cli", "--state-dir", str(state), "-q", "worker"]
    worker = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL)
    try:
        async with make_engine(state, run_queue=False) as watcher:
            end = time.monotonic() + 60
            while time.monotonic() < end:
                rec = await watcher.get(op.id)
                line("worker", rec.progress, rec.status.value)
                if (rec.checkpoint_seq or 0) >= 2 or rec.status not in (Status.QUEUED, Status.RUNNING):
                    break
                await asyncio.sleep(TICK / 2)
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(10)
            killed = await watcher.get(op.id)
        print(f"  SIGKILL worker pid {worker.pid} at checkpoint {killed.checkpoint_seq}", flush=True)
    finally:
        if worker.poll() is None:
            worker.kill()
    check(killed.status is Status.RUNNING, "killed mid-run", killed.status.value)
    async with make_engine(state) as engine:  # opening the store finds the orphan
        found = await engine.get(op.id)
        check(found.status is Status.INTERRUPTED, "the next engine finds it interrupted", found.status_message or "")
        cps = await engine.checkpoints(op.id)
        done_at = max((c.processed_items for c in cps), default=0)
        check(bool(cps) and 0 < done_at < items, "a checkpoint to resume from", f"{done_at}/{items} items")
        await engine.resume(op.id)
        final = await follow(engine, op.id, "resumed")
        whole = await engine.submit(OperationSpec(type="demo", params={**params, "seconds": 0}))
        whole_final = await engine.wait(whole.id, timeout=60)
    check(final.status is Status.COMPLETED and final.attempt == 2, "resumed once and completed", final.status.value)
    check(
        final.result is not None and final.result == whole_final.result,
        "the result equals an uninterrupted run's",
        final.result,
    )


# ---- knowledge base --------------------------------------------------------------------------------------

TOPICS = ["checkpoint", "resume", "timeout", "worker", "redis", "dashboard", "backup", "index"]


def make_documents(root: Path, n: int) -> None:
    """``n`` documents in four formats, each about one topic; every 50th a copy of the one before."""
    import random

    for i in range(n):
        src = i - 1 if i % 50 == 0 and i else i
        rnd = random.Random(src)
        topic = TOPICS[src % len(TOPICS)]
        filler = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "ru") for b in ("sa", "te", "vi", "bo", "da")]
        paras = [" ".join(rnd.choices([topic] * 5 + filler, k=60)) + "." for _ in range(3)]
        d = root / f"section{i // 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        kind = i % 4
        if kind == 0:
            text = f"# Note {src} on {topic}\n\n" + "\n\n".join(paras) + "\n"
            (d / f"note{i:04d}.md").write_text(text)
        elif kind == 1:
            title = f"Guide {src}"
            text = f"{title}\n{'=' * len(title)}\n\n" + "\n\n".join(paras) + "\n"
            (d / f"guide{i:04d}.rst").write_text(text)
        elif kind == 2:
            body = "".join(f"<p>{p}</p>" for p in paras)
            (d / f"page{i:04d}.html").write_text(f"<html><title>Page {src}</title><h1>{topic}</h1>{body}</html>")
        else:
            (d / f"memo{i:04d}.txt").write_text("\n\n".join(paras) + "\n")


def kb_rows(db: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT d.path, c.seq, c.heading, c.sha256 FROM chunks c JOIN documents d ON d.id=c.doc ORDER BY 1, 2"
        ).fetchall()
    finally:
        con.close()


async def demo_knowledge_base(tmp: Path, check: Checks) -> None:
    from engine.operations.knowledge import open_kb, search, similar

    n = 2000
    docs = tmp / "docs"
    make_documents(docs, n)
    a, b = str(tmp / "kb.sqlite"), str(tmp / "whole.sqlite")
    profile = {"checkpoint_interval": 0.3, "progress_report_interval": 0.25}
    print(f"knowledge-base: {n} documents under {docs}, paused after a checkpoint and resumed", flush=True)
    async with make_engine(tmp / "state") as engine:

        async def run(type_: str, **params: Any) -> Operation:
            op = await engine.submit(OperationSpec(type=type_, params=params))
            final = await follow(engine, op.id, type_)
            check(final.status is Status.COMPLETED, f"{type_} completed", final.error or final.status.value)
            return final

        spec = OperationSpec(type="kb_population", params={"source": str(docs), "kb": a}, profile=profile)
        op = await engine.submit(spec)
        first = await follow(engine, op.id, "kb", lambda p, o: p.done >= n // 4 and (o.checkpoint_seq or 0) >= 1)
        check(first.status is Status.PAUSED, "paused with a checkpoint", f"{first.progress.done} documents done")
        await engine.resume(op.id)
        final = await follow(engine, op.id, "kb")
        result = final.result or {}
        check(result.get("added") == n, "resumed and completed: every document added", result.get("added"))
        await run("kb_population", source=str(docs), kb=b)
        check(kb_rows(a) == kb_rows(b), "the knowledge base equals an uninterrupted run's", f"{len(kb_rows(a))} chunks")
        (docs / "section00" / "note0004.md").write_text("# Changed\n\nA note about a lighthouse keeper.\n")
        again = (await run("kb_population", source=str(docs), kb=a)).result or {}
        check((again.get("added"), again.get("reused")) == (1, n - 1), "incremental: one re-read, the rest reused")
        con = open_kb(a, create=False)
        hits = search(con, "lighthouse keeper", 3)
        con.close()
        check([h["path"] for h in hits] == ["section00/note0004.md"], "kb search finds the edit", hits[0]["snippet"])
        opt = (await run("kb_optimization", kb=a)).result or {}
        dups = f"{opt.get('duplicates')} of {opt.get('chunks')} chunks"
        check(opt.get("duplicates", 0) > 0, "kb_optimization: duplicated chunks out of the index", dups)
        vec = (await run("vector_indexing", kb=a)).result or {}
        con = open_kb(a, create=False)
        near = similar(con, "redis worker", 5)
        con.close()
        made = f"{vec.get('made')} vectors, {vec.get('terms')} terms"
        check(bool(near) and vec.get("made") == opt.get("indexed"), "vectors for every indexed chunk", made)
        sem = (await run("semantic_analysis", kb=a)).result or {}
        pairs = f"{sem.get('duplicates')} pairs"
        check(sem.get("duplicates", 0) >= n // 50 - 1, "semantic_analysis: the copies are near-duplicates", pairs)
        print(f"  similar('redis worker'): {near[0]['path'] if near else None} (score {near[0]['score']})")


DEMOS = {
    "indexing": demo_indexing,
    "testing": demo_testing,
    "checkpoint": demo_checkpoint,
    "knowledge-base": demo_knowledge_base,
}


async def run(names: list[str], base: Path) -> list[str]:
    failed: list[str] = []
    for name in names:
        tmp = base / name
        tmp.mkdir(parents=True)
        check = Checks()
        t0 = time.monotonic()
        try:
            await DEMOS[name](tmp, check)
        except Exception as e:  # a demo that breaks is a failed demo, with its reason
            check(False, f"{name} ran to its end", f"{type(e).__name__}: {e}")
        print(f"{name}: {'ok' if not check.failed else 'FAILED'} in {time.monotonic() - t0:.1f}s\n", flush=True)
        if check.failed:
            failed.append(name)
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo-type", choices=[*DEMOS, "all"], default="all", help="which demo (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory and print where it is")
    args = ap.parse_args(argv)
    for var in [v for v in os.environ if v.startswith("OUTLAST_")]:
        del os.environ[var]  # the demos touch nothing of the user's
    names = list(DEMOS) if args.demo_type == "all" else [args.demo_type]
    tmp = Path(tempfile.mkdtemp(prefix="outlast-demo-"))
    os.environ["XDG_CONFIG_HOME"] = str(tmp / "config")
    try:
        failed = asyncio.run(run(names, tmp))
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        print(f"demo: did not behave: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("demo: everything behaved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
