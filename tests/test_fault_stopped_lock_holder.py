"""Fault suite: another process stopped (SIGSTOP, a debugger, a frozen container) while it holds the local store's
write lock, beside healthy running work.

Nothing can be written while it stays stopped, not even a stop of the work: the healthy attempt waited, and once
the store was written again it ended interrupted (``outlast run``: exit 8), a resume by hand needed for work that
had nothing wrong with it. A stop cannot be caught (a Ctrl-Z is: ``engine.suspend``), so the wait is the other
process's pause, not an outage: its time counts toward no ``store_outage_limit``, and the work goes on when the
holder does (or is ended)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine import Engine, OperationSpec, Status, load_settings, open_store
from engine.store.sqlite import core as sqlite_core
from tests.fixtures_engine import until

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""
"""Takes the store's write lock and holds it until a line comes on its stdin."""


async def test_work_waits_for_a_stopped_lock_holder_instead_of_stopping(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_core, "BUSY_TIMEOUT", 0.2)  # a write waits 30 s for the lock; here a moment
    settings = load_settings(state_dir=state_dir, store_outage_limit=1.0, progress_flush_interval=0.1)
    async with Engine(store=open_store(state_dir), settings=settings) as engine:
        spec = OperationSpec(type="demo", params={"items": 60, "seconds": 0.05}, profile={"checkpoint_interval": 0.2})
        op = await engine.submit(spec)
        await until(lambda: (p := engine.live(op.id)) is not None and p.done >= 5)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(state_dir / "outlast.db")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            os.kill(holder.pid, signal.SIGSTOP)
            # Past the busy timeout and the outage limit, several times over: the handler stands at its checkpoint.
            await asyncio.sleep(3.0)
            assert (await engine.get(op.id)).status is Status.RUNNING
        finally:
            os.kill(holder.pid, signal.SIGCONT)
            holder.communicate("go\n", timeout=30)
        final = await engine.wait(op.id, timeout=60)
    assert final.status is Status.COMPLETED, (final.status, final.status_message, final.error)
    assert final.result == {"sum": sum(range(60)), "items": 60, "failures": 0}
