"""Surface figures: the command line and the dashboard (filled in as those pieces land)."""

from __future__ import annotations

from bench_common import Bench, Row, module_exists, unavailable


async def bench_cli(bench: Bench) -> list[Row]:
    if not module_exists("engine/cli.py"):
        why = "engine/cli.py does not exist yet"
        return [
            unavailable("cli", "outlast --help", "< 0.3 s", why),
            unavailable("cli", "outlast ls, 10,000 operations", "< 0.3 s", why),
        ]
    return []


async def bench_dashboard(bench: Bench) -> list[Row]:
    return [unavailable("dashboard", "dashboard", "-", "not written yet")]


async def bench_memory(bench: Bench) -> list[Row]:
    return [unavailable("memory", "peak memory", "< 150 MB", "not written yet")]
