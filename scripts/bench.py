"""Measure what users feel, against the physical floor measured in the same run.

    python scripts/bench.py [--quick | --smoke] [--only NAME ...] [--json FILE] [--list]

Prints a table (figure, value, floor or anchor, ratio, target, met) and writes the same
rows as JSON. Every benchmark runs in a fresh temporary state directory (on the same file
system as the real state directory, so fsync costs what it costs for users), repeats its
measurement and reports medians and p99. A missed target is a result, not an error: the
exit code is non-zero only when a benchmark itself breaks. Figures whose code has not
landed yet (Redis store, CLI, dashboard, built-in operations) get a "not available" row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
for p in (str(REPO), str(SCRIPTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_common import Bench, Row, fmt_value, machine  # noqa: E402

BenchFn = Callable[[Bench], Awaitable[list[Row]]]


def _registry() -> dict[str, BenchFn]:
    import bench_dashboard
    import bench_engine
    import bench_redis
    import bench_surface
    import bench_workloads

    return {
        "advance": bench_engine.bench_advance,
        "items": bench_engine.bench_items,
        "submit": bench_engine.bench_submit,
        "checkpoint": bench_engine.bench_checkpoint,
        "checkpoint_each": bench_engine.bench_checkpoint_each,
        "checkpoint_big": bench_engine.bench_checkpoint_big,
        "throughput": bench_engine.bench_throughput,
        "redis": bench_redis.bench_rows,
        "resume": bench_engine.bench_resume,
        "cli": bench_surface.bench_cli,
        "dashboard": bench_dashboard.bench_dashboard,
        "dashboard_queue": bench_dashboard.bench_queue,
        "memory": bench_surface.bench_memory,
        "indexing": bench_workloads.bench_indexing,
        "backup": bench_workloads.bench_backup,
        "command": bench_workloads.bench_command,
    }


def _isolate_env(root: Path) -> None:
    """No user config, no user state: the bench only ever touches its own temp dirs."""
    for var in list(os.environ):
        if var.startswith("OUTLAST_"):
            del os.environ[var]
    os.environ["XDG_CONFIG_HOME"] = str(root / "config")
    os.environ["XDG_STATE_HOME"] = str(root / "xdg-state")
    os.environ["XDG_CACHE_HOME"] = str(root / "cache")
    os.environ["OUTLAST_STATE_DIR"] = str(root / "default-state")


def _print_table(rows: list[Row]) -> None:
    header = ("figure", "value", "floor / anchor (same run)", "ratio", "target", "met")
    lines = [header]
    for r in rows:
        if not r.available:
            lines.append((r.figure, r.note or "not available", "", "", r.target, "-"))
            continue
        anchor = "-" if r.anchor is None else f"{fmt_value(r.anchor, r.anchor_unit)} {r.anchor_desc}".strip()
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        lines.append((r.figure, fmt_value(r.value, r.unit), anchor, ratio, r.target, met))
    widths = [min(60, max(len(line[i]) for line in lines)) for i in range(len(header))]
    for n, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    notes = [r for r in rows if r.available and r.note]
    if notes:
        print()
        for r in notes:
            print(f"- {r.figure}: {r.note}")


def markdown(rows: list[Row], info: dict[str, object]) -> str:
    """The table as Markdown, for the README's Performance section."""
    out = [
        "| figure | value | floor / anchor (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.available:
            out.append(f"| {r.figure} | {r.note} | | | {r.target} | - |")
            continue
        anchor = "-" if r.anchor is None else f"{fmt_value(r.anchor, r.anchor_unit)} {r.anchor_desc}".strip()
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        out.append(f"| {r.figure} | {fmt_value(r.value, r.unit)} | {anchor} | {ratio} | {r.target} | {met} |")
    m = info["machine"]
    out.append("")
    out.append(f"Measured on {m['cores']} cores, {m['cpu']}, Python {m['python']}.")  # type: ignore[index]
    return "\n".join(out) + "\n"


async def _run_all(names: list[str], quick: bool, root: Path, smoke: bool = False) -> tuple[list[Row], list[str]]:
    reg = _registry()
    rows: list[Row] = []
    broken: list[str] = []
    for name in names:
        bench = Bench(name=name, quick=quick or smoke, root=root / name, smoke=smoke)
        bench.root.mkdir(parents=True)
        t0 = time.perf_counter()
        try:
            got = await reg[name](bench)
        except Exception as e:
            broken.append(name)
            traceback.print_exc()
            got = [Row(name, name, None, "", target="-", available=False, note=f"BROKEN: {type(e).__name__}: {e}")]
        finally:
            await bench.cleanup()
        print(f"[{name}: {time.perf_counter() - t0:.1f}s]", file=sys.stderr, flush=True)
        rows.extend(got)
    return rows, broken


def main(argv: list[str] | None = None) -> int:
    reg_names = list(_registry())
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and smaller data (a few minutes)")
    ap.add_argument("--smoke", action="store_true", help="a tenth of --quick: checks each benchmark runs")
    ap.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these: {', '.join(reg_names)}")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    ap.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown to FILE")
    ap.add_argument("--list", action="store_true", help="list the benchmark names and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(reg_names))
        return 0
    names = args.only or reg_names
    unknown = [n for n in names if n not in reg_names]
    if unknown:
        print(f"bench: unknown benchmark {', '.join(unknown)} (known: {', '.join(reg_names)})", file=sys.stderr)
        return 2
    # Beside the default state dir's file system (not a tmpfs): fsync must cost what it costs users.
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    base.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="outlast-bench-", dir=base) as tmp:
        root = Path(tmp)
        _isolate_env(root)
        rows, broken = asyncio.run(_run_all(names, args.quick, root, args.smoke))
    _print_table(rows)
    report = {
        "quick": args.quick or args.smoke,
        "smoke": args.smoke,
        "started_at": started,
        "duration": time.time() - started,
        "machine": machine(),
        "python": platform.python_version(),
        "broken": broken,
        "figures": [r.as_dict() for r in rows],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, report))
    if broken:
        print(f"bench: broken: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
