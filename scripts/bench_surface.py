"""Surface figures: the command line and peak memory, in real subprocesses (the dashboard: bench_dashboard.py)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from bench_common import Bench, Row, module_exists, python, summarize, time_command, unavailable

CLI = "import sys; from engine.cli import main; sys.exit(main())"
"""What the ``outlast`` console script runs."""
_STATUSES = ("completed", "completed", "completed", "failed", "cancelled", "paused", "timed_out", "queued")


async def populate(state_dir: Path, n: int) -> None:
    """A store with ``n`` operation records of mixed statuses and types, as a long history looks."""
    from engine import Operation, Progress, Status, open_store
    from engine.models import new_id

    store = open_store(state_dir)
    await store.open()
    try:
        now = time.time() - n
        for start in range(0, n, 500):
            ops = []
            for i in range(start, min(n, start + 500)):
                status = Status(_STATUSES[i % len(_STATUSES)])
                t = now + i
                ops.append(
                    Operation(
                        id=new_id(),
                        type=("demo", "codebase_indexing", "backup_operation", "security_scan")[i % 4],
                        name=f"bench operation {i}",
                        params={"items": 100 + i % 50},
                        status=status,
                        created_at=t,
                        queued_at=t,
                        started_at=None if status is Status.QUEUED else t + 0.5,
                        finished_at=None if status in (Status.QUEUED, Status.PAUSED) else t + 30,
                        updated_at=t + 30,
                        progress=Progress(done=i % 100, total=100),
                        total_items=100,
                        effective_timeout=3600.0,
                    )
                )
            await asyncio.gather(*(store.create(op) for op in ops))
    finally:
        await store.close()


SUBMIT_TARGET = 8.0
"""``outlast submit``'s target, in ``python -c pass``: it validates the spec (pydantic, about 2x the floor
to import), runs the store's event loop (asyncio, about 1x), opens an engine and commits once durably;
the quick paths of ``ls`` and ``--help`` load none of these."""


async def bench_cli(bench: Bench) -> list[Row]:
    target = "<= 3x python -c pass"
    if not module_exists("engine/cli/__init__.py"):
        why = "engine/cli/ does not exist yet"
        return [
            unavailable("cli", "outlast --help", target, why),
            unavailable("cli", "outlast ls, 10,000 operations", target, why),
        ]
    n_ops, repeats = bench.pick((2000, 3), (10_000, 15))
    repeats = 1 if bench.smoke else repeats  # the smoke check wants every figure, not its spread
    state = bench.fresh_dir()
    await populate(state, n_ops)
    # As a user starts it: bytecode cached (a warm-up run writes it). The last row has a config file, as
    # many users do: the warm-up run checks it in full, and later runs trust its unchanged content.
    no_config, config_dir = bench.fresh_dir("xdg-config"), bench.fresh_dir("config")
    no_config.mkdir(parents=True)
    config_dir.mkdir(parents=True)
    config = config_dir / "config.toml"
    config.write_text("max_concurrent = 3\n")
    env = bench.env(state, XDG_CONFIG_HOME=str(no_config))
    submit = ["submit", "command", "--params-json", '{"command": "true"}']
    commands = [  # label, arguments, target (times python -c pass)
        ("outlast --help", ["--help"], 3.0),
        (f"outlast ls, {n_ops:,} operations", ["ls"], 3.0),
        (f"outlast ls, {n_ops:,} operations, with a config file", ["--config", str(config), "ls"], 3.0),
        (f"outlast ls --json, {n_ops:,} operations (the newest 50)", ["ls", "--json"], 3.0),
        (f"outlast submit (one command operation), {n_ops:,} operations", submit, SUBMIT_TARGET),
    ]
    argvs = [[python(), "-c", "pass"], *([python(), "-c", CLI, *args] for _, args, _ in commands)]
    if not bench.smoke:  # warm-up: bytecode written (the smoke check needs no timing)
        for argv in argvs:
            await asyncio.to_thread(time_command, argv, 1, env)
    samples: list[list[float]] = [[] for _ in argvs]
    for _ in range(repeats):  # round-robin: the machine's load drifts alike for the floor and each command
        for argv, out in zip(argvs, samples, strict=True):
            out += await asyncio.to_thread(time_command, argv, 1, env)
    floor = summarize(samples[0])
    rows = []
    for (label, _, goal), run in zip(commands, samples[1:], strict=True):
        st = summarize(run)
        rows.append(
            Row(
                "cli",
                label,
                st["p50"],
                "s",
                anchor=floor["p50"],
                anchor_unit="s",
                anchor_desc="python -c pass",
                ratio=st["p50"] / floor["p50"],
                target=f"<= {goal:g}x python -c pass",  # a config file is what many users have: the same target
                met=st["p50"] <= goal * floor["p50"],
                stats={"run": st, "python": floor, "operations": n_ops},
                note=f"wall time of a fresh process, p50 of {repeats} (round-robin with the floor); "
                f"p99 {st['p99'] * 1e3:.0f} ms",
            )
        )
    return rows


_PEAK = "import re; print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
_ENGINE_MEM = (
    "import asyncio\n"
    "from engine import Engine, load_settings, open_store\n"
    "async def main():\n"
    "    s = load_settings()\n"
    "    async with Engine(store=open_store(s.state_dir), settings=s, run_queue=False) as e:\n"
    "        ops = await e.list()\n"
    "        assert len(ops) >= {n}, len(ops)\n"
    "asyncio.run(main())\n"
) + _PEAK


def _peak_kb(argv: list[str], env: dict[str, str]) -> int:
    r = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"memory probe exited {r.returncode}: {r.stderr.strip().splitlines()[-1:]}")
    return int(r.stdout.strip().splitlines()[-1])


async def bench_memory(bench: Bench) -> list[Row]:
    n_ops = bench.pick(2000, 10_000)
    state = bench.fresh_dir()
    await populate(state, n_ops)
    env = bench.env(state)
    floor = await asyncio.to_thread(_peak_kb, [python(), "-c", _PEAK], env)
    peak = await asyncio.to_thread(_peak_kb, [python(), "-c", _ENGINE_MEM.format(n=n_ops)], env)
    return [
        Row(
            "memory",
            f"peak memory, engine listing {n_ops:,} operations",
            peak * 1024,
            "B",
            anchor=floor * 1024,
            anchor_unit="B",
            anchor_desc="bare python",
            ratio=peak / floor,
            target="< 150 MB",
            met=peak * 1024 < 150 * 2**20,
            stats={"peak_kb": peak, "python_kb": floor},
            note="VmHWM of a process that opens an engine on the store and lists every operation",
        )
    ]
