"""Workload figures: Redis throughput, indexing and scanning a tree, backup (filled in as they land)."""

from __future__ import annotations

from bench_common import Bench, Row, unavailable


async def bench_redis(bench: Bench) -> list[Row]:
    return [unavailable("redis", "trivial operations, Redis, 3 workers", ">= 3,000 ops/s", "not written yet")]


async def bench_indexing(bench: Bench) -> list[Row]:
    return [unavailable("indexing", "indexing a 20,000-file tree", ">= 0.8x bare loop", "not written yet")]


async def bench_backup(bench: Bench) -> list[Row]:
    return [unavailable("backup", "backup, verified", ">= 0.5x cp -a", "not written yet")]
