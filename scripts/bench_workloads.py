"""Workload figures that depend on pieces other engineers are writing: Redis store, built-in operations.

Until a piece lands, its figure is a "not available" row naming what is missing.
"""

from __future__ import annotations

import shutil

from bench_common import Bench, Row, module_exists, unavailable


def _missing(*paths: str) -> str | None:
    gone = [p for p in paths if not module_exists(p)]
    return f"{', '.join(gone)} not in the repository yet" if gone else None


async def bench_redis(bench: Bench) -> list[Row]:
    why = _missing("engine/store/redis.py")
    if why is None and shutil.which("redis-server") is None:
        why = "redis-server is not on the PATH"
    why = why or "the Redis store landed after this bench was written: measurement not wired yet"
    return [
        unavailable("redis", "trivial operations, Redis store, 1 worker", "-", why),
        unavailable("redis", "trivial operations, Redis store, 3 workers", ">= 3,000 ops/s", why),
    ]


async def bench_indexing(bench: Bench) -> list[Row]:
    import bench_builtins

    rows = await bench_builtins.bench_indexing(bench)
    why = _missing("engine/operations/security_scan.py")
    why = why or "the operation landed after this bench was written: measurement not wired yet"
    return [*rows, unavailable("indexing", "security_scan of a 20,000-file tree", ">= 0.8x bare loop", why)]


async def bench_backup(bench: Bench) -> list[Row]:
    import bench_builtins

    return await bench_builtins.bench_backup(bench)
