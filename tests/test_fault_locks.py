"""Fault suite (e): processes racing for the same lock files of the local store.

A running operation is held by an flock on its lock file; letting go deletes the file. A process
that opened the path just before could take the flock on the deleted file while another created
and locked a new one: two holders at once, and `find_orphans` declared a live attempt interrupted
(with auto_resume, run twice). Real processes, real files; seeded; ``OUTLAST_SOAK=1`` runs longer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from engine import OperationSpec, Settings, Status
from tests.conftest import REPO
from tests.fixtures_engine import make_engine

SOAK = bool(os.environ.get("OUTLAST_SOAK"))
SECONDS = 60.0 if SOAK else 4.0

HOLDER = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from engine import Status, open_store
    from engine.models import WorkerInfo

    async def main(state, ids, seconds):
        store = open_store(state)
        await store.open()
        me = WorkerInfo(host="holder", pid=os.getpid())
        cycles = busy = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for op_id in ids:
                op = await store.claim(me, time.time(), 0, op_id=op_id)
                if op is None:
                    busy += 1  # a prober holds the lock of the queued operation for a moment: retry
                    continue
                await asyncio.sleep(0.2)  # the attempt runs
                await store.transition(op_id, Status.PAUSED, epoch=op.epoch, expect=frozenset({Status.RUNNING}))
                await store.transition(op_id, Status.QUEUED, expect=frozenset({Status.PAUSED}))
                cycles += 1
        await store.close()
        print(json.dumps({"cycles": cycles, "busy": busy}))

    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])))
    """
)

PROBER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from engine import open_store

    async def main(state, seconds):
        store = open_store(state)
        await store.open()
        probes = 0
        orphans = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            orphans += [op.id for op in await store.find_orphans()]
            probes += 1
        await store.close()
        print(json.dumps({"probes": probes, "orphans": orphans}))

    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
    """
)


STRACE = shutil.which("strace")


def spawn(code: str, *args: str, slow_flock: bool = False) -> subprocess.Popen:
    """A real process running ``code``. ``slow_flock``: every flock it calls waits 1 s first (strace
    delays the system call), as a loaded machine may stall a process between opening a lock file and
    locking it: the window in which the file can be let go of, deleted and replaced."""
    cmd = [sys.executable, "-c", code, *args]
    if slow_flock and STRACE:
        cmd = [
            STRACE,
            "-qq",
            "-f",
            "-o",
            os.devnull,
            "-e",
            "trace=flock",
            "-e",
            "inject=flock:delay_enter=1000000",
            *cmd,
        ]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=SECONDS + 120)
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.timeout(SECONDS * 3 + 120)
async def test_probers_never_find_a_live_attempt_orphaned(settings: Settings) -> None:
    """One process claims and lets go of operations as fast as it can (each let-go deletes the lock
    file); others look for orphans all the while. The holder never dies, so no orphan may be found."""
    async with make_engine(settings, run_queue=False) as engine:
        ids = [(await engine.submit(OperationSpec(type="demo", params={"items": 1}))).id for _ in range(1)]
    state = str(settings.state_dir)
    holder = spawn(HOLDER, state, json.dumps(ids), str(SECONDS))
    probers = [spawn(PROBER, state, str(SECONDS), slow_flock=i > 0) for i in range(4)]
    held = finish(holder)
    probed = [finish(p) for p in probers]
    orphans = [o for p in probed for o in p["orphans"]]
    assert held["cycles"] > 0 and all(p["probes"] > 0 for p in probed)
    assert orphans == [], (held, probed)
    async with make_engine(settings, run_queue=False) as engine:
        assert {(await engine.get(i)).status for i in ids} == {Status.QUEUED}
