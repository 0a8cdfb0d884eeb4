"""Shared pieces of scripts/bench.py: result rows, statistics, temp state dirs, engines, subprocesses."""

from __future__ import annotations

import asyncio
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
PLUGIN = "bench_ops"
"""The bench's own operation types (scripts/bench_ops.py), loaded as an engine plugin."""


@dataclass
class Row:
    """One figure of the table."""

    name: str
    figure: str
    value: float | None
    unit: str
    anchor: float | None = None
    anchor_unit: str = ""
    anchor_desc: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    available: bool = True
    note: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def unavailable(name: str, figure: str, target: str, why: str) -> Row:
    return Row(name, figure, None, "", target=target, available=False, note=f"not available: {why}")


def summarize(samples: list[float]) -> dict[str, float]:
    """Median, p99 (nearest rank), min, max and count of a list of samples."""
    s = sorted(samples)
    if not s:
        raise ValueError("no samples")
    p99 = s[min(len(s) - 1, max(0, math.ceil(0.99 * len(s)) - 1))]
    return {"p50": statistics.median(s), "p99": p99, "min": s[0], "max": s[-1], "n": len(s)}


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        if v < 1e-6:
            return f"{v * 1e9:.0f} ns"
        if v < 1e-3:
            return f"{v * 1e6:.1f} us"
        if v < 1:
            return f"{v * 1e3:.1f} ms"
        return f"{v:.2f} s"
    if unit == "B":
        return f"{v / 2**20:.0f} MB"
    if unit == "%":
        return f"{v:.1f}%"
    if v >= 100:
        return f"{v:,.0f} {unit}".strip()
    return f"{v:.2f} {unit}".strip()


def machine() -> dict[str, Any]:
    """What the numbers were measured on (no host names or paths)."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def _smaller(value: Any) -> Any:
    """A size for --smoke: counts over 20 a tenth (at least 20), durations a quarter; the rest as is."""
    if isinstance(value, tuple):
        return tuple(_smaller(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if isinstance(value, float):
        return value / 4
    return max(20, value // 10) if value > 20 else value


@dataclass
class Bench:
    """What a benchmark gets: its own temp root, the size switch, and cleanup of what it starts."""

    name: str
    quick: bool
    root: Path
    smoke: bool = False
    """Smaller still than quick: the test suite checks that every benchmark runs and reports."""
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    _counter: int = 0

    def pick(self, quick: Any, full: Any) -> Any:
        if not self.quick:
            return full
        return _smaller(quick) if self.smoke else quick

    def fresh_dir(self, label: str = "state") -> Path:
        """A new, empty state directory for one measurement."""
        self._counter += 1
        d = self.root / f"{label}-{self._counter}"
        return d

    def settings(self, state_dir: Path, **kw: Any) -> Any:
        from engine import load_settings

        kw.setdefault("grace_period", 5.0)
        return load_settings(state_dir=state_dir, plugins=[PLUGIN], **kw)

    def engine(self, state_dir: Path, max_concurrent: int = 3, **kw: Any) -> Any:
        from engine import Engine, open_store

        settings = self.settings(state_dir, max_concurrent=max_concurrent)
        return Engine(store=open_store(state_dir), settings=settings, **kw)

    def env(self, state_dir: Path | None = None, **extra: str) -> dict[str, str]:
        """Environment for a subprocess: the repo and scripts importable, the bench's own state dir."""
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as users run it: bytecode cached, not compiled at each start
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(SCRIPTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if state_dir is not None:
            env["OUTLAST_STATE_DIR"] = str(state_dir)
        env.update(extra)
        return env

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(argv, **kw)
        self._procs.append(proc)
        return proc

    async def cleanup(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    await asyncio.to_thread(proc.wait, 10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await asyncio.to_thread(proc.wait)
        self._procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def time_command(
    argv: list[str], repeats: int, env: dict[str, str] | None = None, cwd: Path | None = None
) -> list[float]:
    """Wall time of ``argv`` run to completion ``repeats`` times (stdout/stderr discarded; must exit 0)."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        out.append(time.perf_counter() - t0)
        if r.returncode != 0:
            err = r.stderr.decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"{' '.join(argv[:3])} exited {r.returncode}: {err[-1] if err else ''}")
    return out


def python() -> str:
    return sys.executable


def module_exists(relpath: str) -> bool:
    """True when the repository has this file (a piece another engineer is writing may not exist yet)."""
    return (REPO / relpath).is_file()


def fsync_samples(directory: Path, n: int) -> list[float]:
    """The floor: overwrite 100 bytes of a small file and fsync(2) it, ``n`` times."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fsync-floor"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 100)
        os.fsync(fd)
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, bytes([65 + i % 26]) * 100, 0)
            os.fsync(fd)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        os.close(fd)
        path.unlink()


async def fsync_off_loop_samples(directory: Path, n: int) -> tuple[list[float], list[float]]:
    """The floor of a durable write kept off the event loop, as the local store keeps it: (a job that does
    nothing, the fsync floor's write + fsync), each awaited from the loop through the store's own thread
    (``SqliteWorker.run``) ``n`` times. The first is the two thread hops alone (the wake-up of the thread,
    then of the loop); on a 2-vCPU VM each hop is a cross-CPU wake-up."""
    from engine.store.sqlite.worker import SqliteWorker

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fsync-off-loop"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    worker = SqliteWorker("bench-floor")
    try:
        os.write(fd, b"x" * 100)
        os.fsync(fd)

        def write(i: int) -> None:
            os.pwrite(fd, bytes([65 + i % 26]) * 100, 0)
            os.fsync(fd)

        hops, writes = [], []
        for i in range(n):
            t0 = time.perf_counter()
            await worker.run(int)
            t1 = time.perf_counter()
            await worker.run(write, i)
            writes.append(time.perf_counter() - t1)
            hops.append(t1 - t0)
        return hops, writes
    finally:
        await asyncio.to_thread(worker.stop)
        os.close(fd)
        path.unlink()


def state_5kb() -> dict[str, Any]:
    """About 5 KB of JSON state, shaped like an index (55 entries of path -> summary)."""
    return {
        "index": {f"src/pkg/module_{i:03d}.py": {"sha": f"{i:040x}", "lines": i * 7} for i in range(55)},
        "sum": 0,
    }
