"""Measure the Redis store: trivial operations per second through 1 and 3 ``outlast worker`` processes,
and checkpoint latency to Redis (p50, p99), with and without the checkpoint mirror.

    python scripts/bench_redis.py [--ops 3000] [--concurrency 8] [--checkpoints 1000]

Starts its own redis-server (no persistence, and append-only with fsync every second) on a
free port in a temporary directory. Throughput is counted from the first claim to the last
completion as stored in the records (worker start-up is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
for p in (str(REPO), str(SCRIPTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

from engine import Engine, OperationSpec, Status, WorkerInfo, load_settings, open_store  # noqa: E402
from engine.models import Checkpoint  # noqa: E402
from engine.store.base import ItemDelta  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(d: Path, aof: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", ""]
    args += ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else ["--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def throughput(url: str, ns: str, n: int, workers: int, concurrency: int) -> float:
    settings = load_settings(plugins=["bench_ops"])
    async with Engine(
        store=open_store(url, namespace=ns, checkpoint_mirror=None), settings=settings, run_queue=False
    ) as engine:
        for start in range(0, n, 200):
            await asyncio.gather(*(engine.submit(OperationSpec(type="bench_noop")) for _ in range(min(200, n - start))))
        env = {**os.environ, "PYTHONPATH": f"{REPO}:{SCRIPTS}", "OUTLAST_NAMESPACE": ns}
        argv = [sys.executable, "-m", "engine.cli", "--store", url, "--plugin", "bench_ops", "-q", "worker"]
        procs = [
            subprocess.Popen([*argv, "-c", str(concurrency)], env=env, cwd=REPO, stdout=subprocess.DEVNULL)
            for _ in range(workers)
        ]
        try:
            while (await engine.store.counts()).get(Status.COMPLETED, 0) < n:
                await asyncio.sleep(0.2)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
        ops = await engine.list(statuses=[Status.COMPLETED])
    first = min(o.started_at for o in ops if o.started_at)
    last = max(o.finished_at for o in ops if o.finished_at)
    return n / (last - first)


async def checkpoint_latency(url: str, ns: str, n: int, mirror: Path | None) -> tuple[float, float, int]:
    settings = load_settings(plugins=["bench_ops"])
    store = open_store(url, namespace=ns, checkpoint_mirror=mirror)
    async with Engine(store=store, settings=settings, run_queue=False) as engine:
        op = await engine.submit(OperationSpec(type="bench_noop"))
        claimed = await store.claim(WorkerInfo(host="bench", pid=os.getpid()), time.time(), 300.0, op_id=op.id)
        assert claimed is not None
        state = {"index": {f"file{i}.py": {"lines": i, "hash": "x" * 16} for i in range(100)}}  # ~5 KB
        lats = []
        for seq in range(1, n + 1):
            cp = Checkpoint(operation_id=op.id, seq=seq, epoch=claimed.epoch, created_at=time.time(), state=state)
            delta = ItemDelta(done=[f"s{seq}-{i}" for i in range(100)])
            t0 = time.perf_counter()
            saved = await store.save_checkpoint(cp, delta, 5)
            lats.append(time.perf_counter() - t0)
        await store.transition(op.id, Status.COMPLETED, epoch=claimed.epoch)
        await store.release(op.id)
    return statistics.median(lats), pct(lats, 0.99), saved.size


async def serial_submits(url: str, ns: str, n: int, mirror: Path | None) -> tuple[float, list[float]]:
    """Submits per second of a client that awaits each submit before the next (one engine, no workers). With
    a mirror, 10 bare atomic writes of a 1 KB file into a directory beside it after every 10 submits (not
    counted in the rate): the floor's file write, timed as the disk is then (other work on the machine moves
    an fsync 0.2 to 8 ms from one second to the next); their times."""
    settings = load_settings(plugins=["bench_ops"])
    store = open_store(url, namespace=ns, checkpoint_mirror=mirror)
    writes: list[float] = []
    async with Engine(store=store, settings=settings, run_queue=False) as engine:
        spec = OperationSpec(type="bench_noop")
        for _ in range(20):  # connections made, scripts loaded
            await engine.submit(spec)
        took = 0.0
        for done in range(0, n, 10):
            t0 = time.perf_counter()
            for _ in range(min(10, n - done)):
                await engine.submit(spec)
            took += time.perf_counter() - t0
            if mirror is not None:
                writes += atomic_writes(mirror.parent / f"{mirror.name}-files" / str(done), 10)
        return n / took, writes


def atomic_writes(directory: Path, n: int) -> list[float]:
    """What the mirror adds to a submit at least: a new 1 KB file written atomically (mirror.atomic_write)."""
    from engine.store.mirror import atomic_write

    directory.mkdir(parents=True)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        atomic_write(directory / f"{i}.json", b"x" * 1024)
        out.append(time.perf_counter() - t0)
    return out


async def script_round_trips(url: str, n: int) -> float:
    """The floor of a submit: a trivial EVALSHA awaited one at a time from redis.asyncio, per second."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_timeout=None)  # no task per send for a timeout: the floor
    try:
        script = client.register_script("return 1")
        await script()
        t0 = time.perf_counter()
        for _ in range(n):
            await script()
        return n / (time.perf_counter() - t0)
    finally:
        await client.aclose()


async def set_round_trip(url: str, n: int) -> float:
    """The anchor: sequential SETs of a small value from redis.asyncio, round trips per second."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        lats = []
        for i in range(n):
            t0 = time.perf_counter()
            await client.set("outlast-bench-anchor", i)
            lats.append(time.perf_counter() - t0)
    finally:
        await client.aclose()
    return 1 / statistics.median(lats)


async def submit_rows(bench: Any, url: str, n: int) -> list[Any]:
    """Submit one at a time, awaited, against a trivial EVALSHA awaited one at a time (the floor: one round
    trip); then the same with the checkpoint mirror, whose record file (written, fsynced, renamed, its
    directory fsynced) is one more cost per submit, timed between the mirrored submits. Three runs each,
    interleaved; medians (the mirrored row: its run of the median ratio)."""
    from bench_common import Row

    rates: dict[str, list[float]] = {"floor": [], "plain": [], "mirror": []}
    mirror_runs: list[tuple[float, float, float]] = []
    """Per run: the mirrored rate, its floor (that run's round trip + its file writes' p50), and that p50."""
    runs = 1 if bench.smoke else 3  # the smoke check wants every figure, not its spread
    for run in range(runs):
        rates["floor"].append(await script_round_trips(url, n))
        rates["plain"].append((await serial_submits(url, f"sub{run}", n, None))[0])
        rate, writes = await serial_submits(url, f"subm{run}", max(20, n // 10), bench.fresh_dir("mirror"))
        rates["mirror"].append(rate)
        write = statistics.median(writes)
        mirror_runs.append((rate, 1 / (1 / rates["floor"][-1] + write), write))
    floor, plain = (statistics.median(rates[k]) for k in ("floor", "plain"))
    # The run of the median ratio: the file write's time moves with the disk's load far more than the ratio.
    mirrored, mirror_floor, file_write = sorted(mirror_runs, key=lambda r: r[0] / r[1])[len(mirror_runs) // 2]
    plain_runs = ", ".join(f"{r:,.0f}" for r in rates["plain"])
    return [
        Row(
            "redis",
            "submit one at a time, awaited, Redis store",
            plain,
            "ops/s",
            anchor=floor,
            anchor_unit="EVALSHA/s",
            anchor_desc="a trivial EVALSHA awaited one at a time (one round trip)",
            ratio=plain / floor,
            target=">= 4,000 ops/s (one round trip per submit)",
            met=plain >= 4000,
            note=f"{n:,} Engine.submit awaited in turn, no checkpoint mirror; median of {runs} runs ({plain_runs})",
            stats={k: v for k, v in rates.items()},
        ),
        Row(
            "redis",
            "submit one at a time, awaited, Redis store + checkpoint mirror",
            mirrored,
            "ops/s",
            anchor=mirror_floor,
            anchor_unit="ops/s",
            anchor_desc="one EVALSHA round trip + one bare atomic file write (write, fsync, rename, directory fsync)",
            ratio=mirrored / mirror_floor,
            target=">= 0.5x one round trip + one atomic file write",
            met=mirrored >= 0.5 * mirror_floor,
            note=f"as above ({max(20, n // 10):,} submits), with each record also written to the mirror as a file;"
            f" a bare atomic write of a 1 KB file, timed between the submits, p50 {file_write * 1e3:.2f} ms; the"
            f" run of the median ratio of {runs} (" + ", ".join(f"{r / f:.2f}x" for r, f, _ in mirror_runs) + ")",
        ),
    ]


async def bench_rows(bench: Any) -> list[Any]:
    """Rows for scripts/bench.py: trivial ops through 1 and 3 workers, checkpoint latency (p50, p99)."""
    from bench_common import Row, unavailable

    figures = ("trivial operations, Redis store, 1 worker", "trivial operations, Redis store, 3 workers")
    if shutil.which("redis-server") is None:
        missing = (*figures, "submit one at a time, awaited, Redis store")
        return [unavailable("redis", f, "-", "redis-server is not on the PATH") for f in missing]
    n, conc, n_cp, n_sub = bench.pick((300, 8, 100, 1000), (3000, 8, 1000, 5000))
    d = bench.fresh_dir("redis")
    d.mkdir(parents=True)
    proc, url = start_redis(d, aof=False)
    bench._procs.append(proc)
    rows = []
    anchor = await set_round_trip(url, bench.pick(2000, 2000))
    rows += await submit_rows(bench, url, n_sub)
    # 3 workers: the target; 1 worker and checkpoint latency: ours (a third of it; a few round trips).
    for workers, target in ((1, 1000), (3, 3000)):
        rate = await throughput(url, f"tp{workers}", n, workers, conc)
        rows.append(
            Row(
                "redis",
                figures[workers // 3],
                rate,
                "ops/s",
                anchor=anchor,
                anchor_unit="SET/s",
                anchor_desc="one redis SET round trip",
                ratio=rate / anchor,
                target=f">= {target:,} ops/s",
                met=rate >= target,
                note=f"{n:,} ops, {workers} `outlast worker` process(es) x {conc} slots, Redis without persistence;"
                " first claim to last completion",
            )
        )
    p50, p99, size = await checkpoint_latency(url, "ck", n_cp, None)
    for label, v, most in (("p50", p50, 3), ("p99", p99, 10)):
        rows.append(
            Row(
                "redis",
                f"checkpoint to Redis, {size / 1024:.0f} KB ({label})",
                v,
                "s",
                anchor=1 / anchor,
                anchor_unit="s",
                anchor_desc="one SET round trip (p50)",
                ratio=v * anchor,
                target=f"<= {most}x SET",
                met=v * anchor <= most,
                note="store.save_checkpoint with 100 new done keys; fenced by epoch inside Redis",
            )
        )
    return rows


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--checkpoints", type=int, default=1000)
    a = ap.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on the PATH")
    with tempfile.TemporaryDirectory() as tmp:
        for aof in (False, True):
            d = Path(tmp) / ("aof" if aof else "plain")
            d.mkdir()
            proc, url = start_redis(d, aof)
            label = "append-only, fsync every second" if aof else "no persistence"
            try:
                for workers in (1, 3):
                    rate = await throughput(url, f"tp{workers}", a.ops, workers, a.concurrency)
                    print(
                        f"redis ({label}): {a.ops} trivial ops, {workers} worker(s) x {a.concurrency}: "
                        f"{rate:,.0f} ops/s"
                    )
                p50, p99, size = await checkpoint_latency(url, "ck", a.checkpoints, None)
                print(f"redis ({label}): checkpoint of {size:,} bytes: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
                p50, p99, _ = await checkpoint_latency(url, "ckm", a.checkpoints // 4, d / "mirror")
                print(f"redis ({label}) + mirror: checkpoint p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
            finally:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
