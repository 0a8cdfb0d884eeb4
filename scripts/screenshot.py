"""Export the README's dashboard screenshot (docs/dashboard.svg) from the real app at 160x50.

    python scripts/screenshot.py [OUT.svg]

A fresh state dir in a temp dir gets a small history (an index of this repository, a scan, a failed
and a cancelled demo), three demos and a shell command left running; the app is driven headless until their progress
shows, the cursor rests on a running one, and Textual writes what is on screen as SVG.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZE = (160, 50)


async def shoot(out: Path) -> None:
    from engine import Engine, OperationSpec, Status, load_settings, open_store
    from tui.app import OutlastApp

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        settings = load_settings(state_dir=state, max_concurrent=4)
        async with Engine(store=open_store(state), settings=settings) as engine:
            history = [
                ("codebase_indexing", "index outlast", {"root": str(REPO)}),
                ("security_scan", "scan engine", {"root": str(REPO / "engine")}),
                ("demo", "flaky demo", {"items": 40, "seconds": 0.01, "fail_every": 3}),
            ]
            done = [await engine.submit(OperationSpec(type=t, name=n, params=p)) for t, n, p in history]
            cancelled = await engine.submit(OperationSpec(type="demo", name="cancelled demo", params={"items": 500}))
            await engine.cancel(cancelled.id)
            for op in done:
                await engine.wait(op.id, timeout=600, poll=0.2)
        app = OutlastApp(settings)
        async with app.run_test(size=SIZE) as pilot:
            while not app.engine_started:
                await pilot.pause(0.05)
            demos = [
                ("nightly backup (demo)", 3000, 0.05),
                ("reindex docs (demo)", 800, 0.02),
                ("migration (demo)", 200, 0.2),
            ]
            running = [
                await app.engine.submit(OperationSpec(type="demo", name=n, params={"items": i, "seconds": s}))
                for n, i, s in demos
            ]
            sleeper = await app.engine.submit(
                OperationSpec(type="command", name="sleep in a shell", params={"command": "sleep 60"})
            )
            end = time.monotonic() + 60
            while time.monotonic() < end and not all(
                (p := app.engine.live(op.id)) is not None and p.done >= 20 for op in running
            ):
                await pilot.pause(0.1)
            from tui.widgets.operations import OperationsTable

            app.query_one(OperationsTable).select(running[1].id)
            await pilot.pause(2.5)  # side panes read, a checkpoint or two shown, the live figures moved
            app.save_screenshot(filename=out.name, path=str(out.parent))
            for op in [*running, sleeper]:
                if (await app.engine.get(op.id)).status is Status.RUNNING:
                    await app.engine.cancel(op.id)


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "dashboard.svg"
    asyncio.run(shoot(out.resolve()))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
