"""A stop of a security_scan run in the engine's own thread (a tree too small for worker processes) waits
for a few files, not for a batch of 64: an outside tester's Ctrl-C on a scan of this repository took 7-8 s
on a busy machine, its bar at 0 for as long (a thread cannot be stopped: the batch in it runs to its end)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import engine.operations.security_scan as scan
from engine import Engine, OperationSpec, Status


def slowed_scan(monkeypatch: pytest.MonkeyPatch, seconds: float, after: int) -> tuple[list[str], threading.Event]:
    """Each file the scan reads takes ``seconds`` more (in this process: ``OUTLAST_WORKERS=0``); the files read,
    in order, and an event set once ``after`` of them were begun."""
    real = scan.scan_file
    calls: list[str] = []
    begun = threading.Event()

    def slow(root: Path, rel: str, *args: Any) -> Any:
        calls.append(rel)
        if len(calls) >= after:
            begun.set()
        time.sleep(seconds)
        return real(root, rel, *args)

    monkeypatch.setattr(scan, "scan_file", slow)
    return calls, begun


async def test_a_pause_waits_for_a_few_files_and_the_resume_scans_the_rest(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(100):
        (root / f"m{i:03d}.py").write_text(f"x = {i}\n")
    monkeypatch.setenv("OUTLAST_WORKERS", "0")
    calls, begun = slowed_scan(monkeypatch, 0.05, 1)  # as bandit is on a larger file, a busy machine
    params = {"root": str(root), "output": str(tmp_path / "r.json")}
    op = await engine.submit(OperationSpec(type="security_scan", params=params))
    assert await asyncio.to_thread(begun.wait, 60)
    await engine.pause(op.id)
    op = await engine.wait(op.id, timeout=60)
    assert op.status is Status.PAUSED, (op.status, op.error)
    assert len(calls) <= 16, len(calls)  # the batch in hand when the pause came (64 before)
    await engine.resume(op.id)
    op = await engine.wait(op.id, timeout=120)
    assert op.status is Status.COMPLETED and op.result["scanned"] == 100, (op.status, op.error)
    assert sorted(set(calls)) == sorted(f"m{i:03d}.py" for i in range(100))
