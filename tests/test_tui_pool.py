"""Work that runs on worker processes (codebase_indexing, security_scan on a large tree) runs in the dashboard.

The dashboard swaps ``sys.stderr`` for Textual's capture, whose fileno() is -1; multiprocessing's
resource tracker hands ``sys.stderr.fileno()`` to the process it starts, so a pool first made under the
dashboard failed at once ("bad value(s) in fds_to_keep"). The tracker is started once per process, so
the dashboard runs in a fresh interpreter here: in the test process an earlier test may have started it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

SCRIPT = r"""
import asyncio, sys, time
from engine import load_settings
from tui.app import OutlastApp

async def main(state_dir, root):
    app = OutlastApp(load_settings(state_dir=state_dir))
    async with app.run_test(size=(120, 40)) as pilot:
        while not app.engine_started:
            await pilot.pause(0.05)
        op = await app.engine.submit(
            {"type": "codebase_indexing", "params": {"root": root, "output": state_dir + "/index.sqlite"}}
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stored = await app.engine.store.get(op.id)
            if stored.status.value not in ("queued", "running"):
                break
            await pilot.pause(0.1)
    print(stored.status.value, stored.error or "", stored.result and stored.result.get("files"))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_an_index_on_worker_processes_completes_in_the_dashboard(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    for n in range(4):
        (root / f"m{n}.py").write_text(f"def f{n}():\n    return {n}\n")
    env = {**os.environ, "OUTLAST_WORKERS": "2", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "state"), str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["completed", "4"], done.stdout + done.stderr[-2000:]
