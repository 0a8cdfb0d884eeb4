"""monitoring_collection: sample system and process metrics (psutil) every N seconds for a duration, into SQLite.

``duration / interval`` samples, numbered from 0; each is an item, stored in its own transaction before it
counts as done, keyed by (operation, sample number). The database, not the checkpoint, says which samples
exist: a resume after a kill at any point takes the next number on, for the time that remains (a run stopped
after 3 s of 10 s samples 7 s more), and never writes a sample twice. Rates (CPU %, disk and network bytes
per second) cover the interval before each sample. The result summarises every metric: min, mean, max, p95.

Built on psutil (already a dependency: the engine's resource sampling uses it), which reads the same
counters on Linux, macOS and Windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..context import OperationContext, OperationFailed
from ..processes import process_start
from ..registry import operation
from ..resources import CpuMeter
from ._common import SQLITE_MAGIC, check_output_file, disk_full, output_dir
from ._results_db import check_kind, open_db, peek

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    operation_id TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, attempt INTEGER NOT NULL,
    PRIMARY KEY (operation_id, seq)
);
CREATE TABLE IF NOT EXISTS metrics (
    operation_id TEXT NOT NULL, seq INTEGER NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (operation_id, seq, metric)
) WITHOUT ROWID;
"""
OLD_TABLES = frozenset({"samples", "metrics"})
"""A monitoring database written before it said its kind."""
MAX_SAMPLES = 1_000_000


class MonitoringParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # nan was refused as "more than the most"

    interval: float = Field(default=5.0, ge=0.01, le=86_400, description="seconds between samples")
    duration: float = Field(default=60.0, gt=0, le=366 * 86_400, description="seconds to sample for in all")
    pids: list[int] = Field(default_factory=list, description="processes to sample too (CPU, memory, threads, files)")
    output: str | None = Field(default=None, description="SQLite database (default: outputs/monitor-ID.sqlite)")

    @field_validator("pids")
    @classmethod
    def _pids(cls, v: list[int], info: ValidationInfo) -> list[int]:
        if info.context is None:
            # The stored params checked again by an attempt or a resume: a process that ended since is said and
            # no longer sampled, as one that ends mid-run (refused here, a run whose process ended while its
            # worker was down could never be resumed: "its stored params no longer validate", for good).
            return sorted(set(v))
        for pid in v:
            try:
                exists = psutil.pid_exists(pid)
            except (OverflowError, ValueError):  # past a C int: "its validator raised OverflowError"
                exists = False
            if not exists:
                raise ValueError(f"no process {pid}")  # the field's name comes before it
        return sorted(set(v))

    @field_validator("output")
    @classmethod
    def _output(cls, v: str | None) -> str | None:
        return _check_db(check_output_file(v, "output", SQLITE_MAGIC, "an SQLite database"))

    @model_validator(mode="after")
    def _bounded(self) -> MonitoringParams:
        if self.samples > MAX_SAMPLES:
            raise ValueError(f"duration / interval is {self.samples} samples: at most {MAX_SAMPLES}")
        return self

    @property
    def samples(self) -> int:
        return max(1, round(self.duration / self.interval))


def _check_db(value: str | None) -> str | None:
    """A monitoring database or none yet: another program's (its own ``samples`` table, say) is not
    written into (it was, and failed on a missing column once it held the new tables)."""
    value = check_kind(value, "output", "monitoring_collection", OLD_TABLES, SCHEMA)
    if value is not None and Path(value).expanduser().is_file():
        try:
            with peek(Path(value).expanduser()) as con:
                cols = {t: {r[1] for r in con.execute(f"PRAGMA table_info({t})")} for t in OLD_TABLES}
        except sqlite3.Error:
            cols = {}
        if cols.get("samples") and not {"operation_id", "seq", "ts", "attempt"} <= cols["samples"]:
            raise ValueError(
                f"output {value!r} is another program's database, not a monitoring one: choose another path"
            )
    return value


def _who(pid: int, born: float) -> str | float:
    """Who process ``pid`` is, kept in the state: this boot's id and its start in clock ticks since boot, where
    there is /proc; else its start time (``born``, psutil's ``create_time``)."""
    who = process_start(pid)
    return born if who is None else f"{who[0]}/{who[1]}"


def _same_process(kept: Any, pid: int, born: float) -> bool:
    """Whether ``pid`` is the process ``kept`` (``_who`` of an earlier attempt) names. By its start since boot: the
    start time psutil gives is the boot time by the wall clock plus that, and a clock stepped between two attempts
    (NTP, a VM restored) moved it, so a resume took the process it watched for a new one under a reused pid ("is
    gone: not sampled")."""
    if isinstance(kept, str):
        who = process_start(pid)
        return who is None or kept == f"{who[0]}/{who[1]}"
    return isinstance(kept, (int, float)) and abs(kept - born) <= 1.0  # an older state: psutil's boot time moves 1 s


class Sampler:
    """Turns psutil's counters into one flat sample; rates cover the time since the previous sample."""

    def __init__(self, pids: list[int], started: dict[str, Any] | None = None) -> None:
        """``started``: who each pid's process is, as an earlier attempt found it (filled in for the pids it
        lacks): a pid that names another process now (reused since) is gone, not sampled under its name."""
        self.procs: dict[int, psutil.Process] = {}
        self.gone: list[int] = []
        started = {} if started is None else started
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                born = proc.create_time()
            except psutil.Error:
                self.gone.append(pid)  # ended before this attempt began: said, not passed over
                continue
            if not _same_process(started.setdefault(str(pid), _who(pid, born)), pid, born):
                self.gone.append(pid)
                continue
            self.procs[pid] = proc
        self._prev: tuple[float, Any, Any] | None = None
        self._cpu = CpuMeter()  # psutil.cpu_percent(None) measured since anyone's last call (another sampler's)
        self.sample()  # primes cpu_percent and the counters: the first real sample covers one interval

    def sample(self) -> dict[str, float]:
        now = time.monotonic()
        m: dict[str, float] = {"cpu_percent": self._cpu.percent()}
        vm = psutil.virtual_memory()
        m["memory_percent"] = vm.percent
        m["memory_used_bytes"] = float(vm.total - vm.available)
        m["swap_percent"] = psutil.swap_memory().percent
        with contextlib.suppress(AttributeError, OSError):
            m["load_1m"] = psutil.getloadavg()[0]
        disk = _safe(psutil.disk_io_counters)
        net = _safe(psutil.net_io_counters)
        if self._prev is not None:
            t0, d0, n0 = self._prev
            dt = max(now - t0, 1e-9)
            if disk is not None and d0 is not None:
                m["disk_read_bytes_per_s"] = max(0, disk.read_bytes - d0.read_bytes) / dt
                m["disk_write_bytes_per_s"] = max(0, disk.write_bytes - d0.write_bytes) / dt
            if net is not None and n0 is not None:
                m["net_sent_bytes_per_s"] = max(0, net.bytes_sent - n0.bytes_sent) / dt
                m["net_recv_bytes_per_s"] = max(0, net.bytes_recv - n0.bytes_recv) / dt
        self._prev = (now, disk, net)
        for pid, p in list(self.procs.items()):
            try:
                with p.oneshot():
                    m[f"process.{pid}.cpu_percent"] = p.cpu_percent(None)
                    m[f"process.{pid}.rss_bytes"] = float(p.memory_info().rss)
                    m[f"process.{pid}.threads"] = float(p.num_threads())
                    if hasattr(p, "num_fds"):
                        m[f"process.{pid}.open_files"] = float(p.num_fds())
            except psutil.Error:
                del self.procs[pid]
                self.gone.append(pid)
        return m


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except (OSError, RuntimeError):
        return None


def _open(db: str) -> sqlite3.Connection:
    return open_db(db, SCHEMA, {"kind": "monitoring_collection"})


def _stored_seqs(con: sqlite3.Connection, op_id: str) -> tuple[int, set[int]]:
    """The number of the next sample, and the numbers of the samples of ``op_id`` the database holds."""
    seqs = {r[0] for r in con.execute("SELECT seq FROM samples WHERE operation_id=?", (op_id,))}
    return (max(seqs) + 1 if seqs else 0), seqs


def _store(con: sqlite3.Connection, op_id: str, seq: int, attempt: int, m: dict[str, float]) -> None:
    with con:  # the sample and its metrics together, before the item counts as done
        con.execute("INSERT INTO samples VALUES (?, ?, ?, ?)", (op_id, seq, time.time(), attempt))
        con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?)", [(op_id, seq, k, v) for k, v in m.items()])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    return values[max(0, math.ceil(q / 100 * len(values)) - 1)]


def summarize(con: sqlite3.Connection, op_id: str) -> tuple[int, dict[str, dict[str, float]]]:
    n = con.execute("SELECT COUNT(*) FROM samples WHERE operation_id=?", (op_id,)).fetchone()[0]
    by: dict[str, list[float]] = {}
    for metric, value in con.execute(
        "SELECT metric, value FROM metrics WHERE operation_id=? AND value IS NOT NULL ORDER BY metric, value", (op_id,)
    ):
        by.setdefault(metric, []).append(value)
    return n, {
        k: {
            "min": round(v[0], 3),
            "mean": round(sum(v) / len(v), 3),
            "max": round(v[-1], 3),
            "p95": round(percentile(v, 95), 3),
            "samples": len(v),
        }
        for k, v in by.items()
    }


async def _wait_until(ctx: OperationContext, when: float) -> bool:
    """Sleep until ``when`` (monotonic), waking each second to report (a long interval is not a stall) and
    to see a stop; False when a stop was asked for."""
    while (left := when - time.monotonic()) > 0:
        if ctx.cancelled:
            return False
        await asyncio.sleep(min(left, 1.0))
        ctx.progress(next_sample_in=round(max(0.0, when - time.monotonic()), 1))
    return not ctx.cancelled


@operation("monitoring_collection", params=MonitoringParams, description="sample system metrics into SQLite")
async def monitor(ctx: OperationContext, p: MonitoringParams) -> dict:
    """Take the samples not yet stored, one every interval; the result summarises each metric. A full disk
    under the database fails the operation in one line naming it (resume it once there is room)."""
    db = str(Path(p.output).expanduser().resolve()) if p.output else str(output_dir(ctx) / f"monitor-{ctx.id}.sqlite")
    try:
        return await _monitor(ctx, p, db)
    except (sqlite3.Error, OSError) as e:
        if (line := disk_full(e, f"output {db!r} cannot be written", db)) is None:
            raise
        raise OperationFailed(line) from None


async def _monitor(ctx: OperationContext, p: MonitoringParams, db: str) -> dict:
    con = await asyncio.to_thread(_open, db)
    try:
        total = p.samples
        first, stored = await asyncio.to_thread(_stored_seqs, con, ctx.id)
        lost = sum(1 for k in ctx.done_keys if k.isdigit() and int(k) not in stored)
        if lost:
            # The database was deleted or replaced since an earlier attempt: the samples it held cannot be
            # taken again (their time is past). Said, and counted in the result, never passed over in silence.
            if lost > ctx.state.get("lost", 0):
                ctx.log.warning(f"{db} lacks {lost} of the samples taken before (deleted or replaced since): lost")
            ctx.state["lost"] = lost
        done_before = len(ctx.done_keys)
        todo = [s for s in range(first, total) if not ctx.is_done(str(s))]
        if first or done_before:
            ctx.log.info(f"{total - len(todo)} samples taken before: {len(todo)} to go ({len(todo) * p.interval:g} s)")
        ctx.progress(done=total - len(todo), total=total, step="sampling")
        sampler = Sampler(p.pids, ctx.state.setdefault("pid_started", {}))
        for pid in sampler.gone:
            ctx.log.warning(f"process {pid} is gone: not sampled")
        sampler.gone.clear()
        start = time.monotonic()
        async for i, seq in ctx.items(enumerate(todo), key=lambda t: str(t[1])):
            if not await _wait_until(ctx, start + (i + 1) * p.interval):
                break  # a stop was asked for: this sample is not taken (the progress call below stops)
            m = sampler.sample()
            for pid in sampler.gone:
                ctx.log.warning(f"process {pid} is gone: no longer sampled")
            sampler.gone.clear()
            await asyncio.to_thread(_store, con, ctx.id, seq, ctx.attempt, m)
            ctx.progress(cpu_percent=m["cpu_percent"], memory_percent=m["memory_percent"])
        ctx.progress()
        n, summary = await asyncio.to_thread(summarize, con, ctx.id)
    finally:
        await asyncio.to_thread(con.close)
    marked = {"lost_samples": ctx.state["lost"]} if ctx.state.get("lost") else {}
    return {"database": db, "samples": n, "interval": p.interval, **marked, "metrics": summary}
