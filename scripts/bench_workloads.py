"""Workload figures of the built-in operations (the measurements live in bench_builtins.py)."""

from __future__ import annotations

from bench_common import Bench, Row


async def bench_indexing(bench: Bench) -> list[Row]:
    import bench_builtins

    return [*await bench_builtins.bench_indexing(bench), *await bench_builtins.bench_scan(bench)]


async def bench_backup(bench: Bench) -> list[Row]:
    import bench_builtins

    return await bench_builtins.bench_backup(bench)


async def bench_command(bench: Bench) -> list[Row]:
    import bench_builtins

    return await bench_builtins.bench_command(bench)
