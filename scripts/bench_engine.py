"""Engine figures: the hot path (advance, items), checkpoints, throughput and resume."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from typing import Any

from bench_common import Bench, Row, fsync_off_loop_samples, fsync_samples, state_5kb, summarize

from engine import SETTLED, OperationSpec, Status, StatusChanged

NO_TIMED_CHECKPOINT = {"checkpoint_interval": 3600, "stall_timeout": 3600}


async def run_op(bench: Bench, type_: str, params: dict[str, Any], profile: dict[str, Any] | None = None) -> Any:
    """Run one operation in a fresh state dir through a real engine; return its result."""
    async with bench.engine(bench.fresh_dir()) as engine:
        op = await engine.submit(OperationSpec(type=type_, params=params, profile=profile or dict(NO_TIMED_CHECKPOINT)))
        final = await engine.wait(op.id, timeout=600, poll=0.2)
    if final.status is not Status.COMPLETED:
        raise RuntimeError(f"{type_} ended {final.status.value}: {final.error or final.status_message}")
    return final.result


def _net(samples: list[float], loop: float) -> list[float]:
    return [max(0.0, s - loop) for s in samples]


async def bench_advance(bench: Bench) -> list[Row]:
    rounds, batch = bench.pick((30, 2000), (200, 5000))
    res = await run_op(bench, "bench_advance", {"rounds": rounds, "batch": batch})
    loop = statistics.median(res["loop"])
    adv, tq, bare = (summarize(_net(res[k], loop)) for k in ("advance", "tqdm", "bare"))
    ratio = adv["p50"] / tq["p50"] if tq["p50"] else None
    return [
        Row(
            "advance",
            "ctx.advance() per call",
            adv["p50"],
            "s",
            anchor=tq["p50"],
            anchor_unit="s",
            anchor_desc=f"tqdm update(1); bare call {bare['p50'] * 1e9:.0f} ns",
            ratio=ratio,
            target="<= 0.75x tqdm",
            met=ratio is not None and ratio <= 0.75,
            stats={"advance": adv, "tqdm": tq, "bare": bare, "empty_loop": loop, "rounds": rounds, "batch": batch},
            note="per call, net of an empty loop iteration; medians of per-round means",
        )
    ]


async def bench_items(bench: Bench) -> list[Row]:
    rounds, batch = bench.pick((20, 2000), (100, 10000))
    res = await run_op(bench, "bench_items", {"rounds": rounds, "batch": batch})
    items, bare = summarize(res["items"]), summarize(res["bare"])
    over = summarize([i - b for i, b in zip(res["items"], res["bare"], strict=True)])
    return [
        Row(
            "items",
            "ctx.items() overhead per item, no checkpoint due",
            over["p50"],
            "s",
            anchor=bare["p50"],
            anchor_unit="s",
            anchor_desc="bare for per item",
            ratio=items["p50"] / bare["p50"] if bare["p50"] else None,
            target="overhead < 1 us",
            met=over["p50"] < 1e-6,
            stats={"overhead": over, "items": items, "bare": bare, "rounds": rounds, "batch": batch},
            note=f"ratio is the whole loop turn vs a bare for; p99 of the overhead {over['p99'] * 1e9:.0f} ns",
        )
    ]


async def bench_checkpoint(bench: Bench) -> list[Row]:
    rounds = bench.pick(60, 400)
    floor = summarize(fsync_samples(bench.root / "floor", rounds))
    res = await run_op(bench, "bench_checkpoint", {"rounds": rounds, "per_round": 10, "state": state_5kb()})
    cp = summarize(res["times"])
    floor2 = summarize(fsync_samples(bench.root / "floor", rounds))  # again after: the disk drifts
    f50 = statistics.median([floor["p50"], floor2["p50"]])
    f99 = statistics.median([floor["p99"], floor2["p99"]])
    r50, r99 = cp["p50"] / f50, cp["p99"] / f99
    sq = summarize(await asyncio.to_thread(_sqlite_floor, bench.fresh_dir("sqlite"), rounds))
    hops, off = (summarize(s) for s in await fsync_off_loop_samples(bench.root / "floor", rounds))
    common = {
        "checkpoint": cp,
        "fsync_before": floor,
        "fsync_after": floor2,
        "bare_sqlite_commit": sq,
        "thread_round_trip": hops,
        "fsync_off_loop": off,
    }
    return [
        Row(
            "checkpoint",
            "durable checkpoint, 5 KB state, local store (p50)",
            cp["p50"],
            "s",
            anchor=f50,
            anchor_unit="s",
            anchor_desc="raw fsync p50",
            ratio=r50,
            target="p50 <= 1.5x fsync",
            met=r50 <= 1.5,
            stats=common,
            note="await ctx.checkpoint() from a handler, 10 new done items each; floor: 100-byte overwrite + fsync;"
            f" a bare SQLite WAL commit of the same rows on one thread: p50 {sq['p50'] * 1e6:.0f} us,"
            f" p99 {sq['p99'] * 1e6:.0f} us ({sq['p50'] / f50:.2f}x fsync; the checkpoint is"
            f" {cp['p50'] / sq['p50']:.2f}x of it); the same fsync awaited from the event loop through the"
            f" store's thread, the floor of any durable write kept off the loop: p50 {off['p50'] * 1e6:.0f} us"
            f" ({off['p50'] / f50:.2f}x fsync; the two thread hops alone {hops['p50'] * 1e6:.0f} us)",
        ),
        Row(
            "checkpoint",
            "durable checkpoint, 5 KB state, local store (p99)",
            cp["p99"],
            "s",
            anchor=f99,
            anchor_unit="s",
            anchor_desc="raw fsync p99",
            ratio=r99,
            target="p99 <= 4x fsync",
            met=r99 <= 4,
            stats=common,
        ),
    ]


async def bench_checkpoint_each(bench: Bench) -> list[Row]:
    n, repeats = bench.pick((300, 1), (3000, 3))
    rates = []
    for _ in range(repeats):
        res = await run_op(bench, "bench_each", {"items": n})
        rates.append(res["items"] / res["elapsed"])
    floor = summarize(fsync_samples(bench.root / "floor", bench.pick(60, 300)))
    _hops, off_samples = await fsync_off_loop_samples(bench.root / "floor", bench.pick(60, 300))
    off = summarize(off_samples)
    rate = statistics.median(rates)
    return [
        Row(
            "checkpoint_each",
            "checkpoint after every item (durable)",
            rate,
            "items/s",
            anchor=1 / floor["p50"],
            anchor_unit="fsync/s",
            anchor_desc="raw fsync",
            ratio=rate * floor["p50"],
            target=">= 5,000 items/s",
            met=rate >= 5000,
            stats={"rates": rates, "fsync": floor, "fsync_off_loop": off, "items": n},
            note=f"{n:,} items, a durable checkpoint awaited after each; one fsync awaited through the store's"
            f" thread (a durable write kept off the event loop, nothing else) allows at most"
            f" {1 / off['p50']:,.0f}/s here: {rate * off['p50']:.2f}x of that",
        )
    ]


async def bench_checkpoint_big(bench: Bench) -> list[Row]:
    big, rounds = bench.pick((200_000, 30), (1_000_000, 150))
    small = 1000
    out = {}
    for done in (small, big):
        res = await run_op(bench, "bench_checkpoint", {"rounds": rounds, "pre_done": done, "per_round": 100})
        out[done] = (summarize(res["times"]), res["first"])
    s, b = out[small][0], out[big][0]
    ratio = b["p50"] / s["p50"]
    return [
        Row(
            "checkpoint_big",
            f"checkpoint with {big:,} done items (p50)",
            b["p50"],
            "s",
            anchor=s["p50"],
            anchor_unit="s",
            anchor_desc=f"with {small:,} done",
            ratio=ratio,
            target="< 2x (incremental)",
            met=ratio < 2,
            stats={"big": b, "small": s, "first_big": out[big][1], "first_small": out[small][1]},
            note=f"100 new items per checkpoint; p99 {b['p99'] * 1e3:.2f} ms vs {s['p99'] * 1e3:.2f} ms;"
            f" the first checkpoint (all {big:,} keys) took {out[big][1]:.2f} s",
        )
    ]


async def _engine_rate(bench: Bench, concurrency: int, n: int) -> tuple[float, dict[str, float]]:
    """Operations per second, submit to settled, of ``n`` trivial operations; and per-op latency."""
    async with bench.engine(bench.fresh_dir(), max_concurrent=concurrency) as engine:
        submitted: dict[str, float] = {}
        settled: dict[str, float] = {}
        all_done = asyncio.Event()

        def on(ev: Any) -> None:
            if isinstance(ev, StatusChanged) and ev.status in SETTLED and ev.operation_id not in settled:
                settled[ev.operation_id] = time.perf_counter()
                if len(settled) >= n:
                    all_done.set()

        engine.subscribe(on)
        spec = OperationSpec(type="bench_noop")
        t0 = time.perf_counter()
        for start in range(0, n, 200):  # a client submitting in bursts of 200
            ops = await asyncio.gather(*(engine.submit(spec) for _ in range(min(200, n - start))))
            now = time.perf_counter()
            submitted.update((op.id, now) for op in ops)
        await asyncio.wait_for(all_done.wait(), 600)
        elapsed = time.perf_counter() - t0
        bad = [s for s, c in (await engine.store.counts()).items() if s is not Status.COMPLETED and c]
        if bad:
            raise RuntimeError(f"trivial operations ended {bad}")
    lat = summarize([settled[i] - submitted[i] for i in submitted if i in settled])
    return n / elapsed, lat


async def _semaphore_rate(concurrency: int, n: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            await asyncio.sleep(0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t0)


async def bench_throughput(bench: Bench) -> list[Row]:
    n, repeats = bench.pick((300, 1), (3000, 3))
    rows = []
    for conc in (3, 50):
        rates, lats = [], []
        for _ in range(repeats):
            rate, lat = await _engine_rate(bench, conc, n)
            rates.append(rate)
            lats.append(lat)
        floor = statistics.median([await _semaphore_rate(conc, n) for _ in range(3)])
        rate = statistics.median(rates)
        lat = lats[rates.index(sorted(rates)[len(rates) // 2])]
        rows.append(
            Row(
                "throughput",
                f"trivial operations, local store, concurrency {conc}",
                rate,
                "ops/s",
                anchor=floor,
                anchor_unit="ops/s",
                anchor_desc="asyncio tasks behind a Semaphore",
                ratio=rate / floor,
                target=">= 3,000 ops/s",
                met=rate >= 3000,
                stats={"rates": rates, "latency": lat, "ops": n},
                note=f"{n:,} ops submitted in bursts of 200, submit to completed;"
                f" latency p50 {lat['p50'] * 1e3:.0f} ms, p99 {lat['p99'] * 1e3:.0f} ms",
            )
        )
    return rows


async def bench_resume(bench: Bench) -> list[Row]:
    import bench_ops

    done_keys, repeats = bench.pick((20_000, 5), (100_000, 30))
    async with bench.engine(bench.fresh_dir()) as engine:
        op = await engine.submit(
            OperationSpec(
                type="bench_hold",
                params={"items": done_keys * 2, "hold_at": done_keys, "state": state_5kb()},
                profile={"checkpoint_interval": 0.5, "stall_timeout": 3600},
            )
        )
        times = []
        for r in range(repeats + 1):
            ev = bench_ops.HELD.setdefault(op.id, asyncio.Event())
            await asyncio.wait_for(ev.wait(), 120)
            await engine.pause(op.id)
            await _until_status(engine, op.id, Status.PAUSED)
            if r == repeats:
                break
            n_before = len(bench_ops.FIRST_ITEM.get(op.id, []))
            t0 = time.perf_counter()
            await engine.resume(op.id)
            while len(bench_ops.FIRST_ITEM.get(op.id, [])) == n_before:
                await asyncio.sleep(0.0005)
            times.append(bench_ops.FIRST_ITEM[op.id][-1] - t0)
        cps = await engine.checkpoints(op.id)
        with contextlib.suppress(Exception):
            await engine.cancel(op.id)
    st = summarize(times)
    # The floor after the engine: a decode run between the resumes (before or after one) made the next
    # resume about 12 ms slower here (not page faults: fewer of them), which the row would have charged
    # to the engine.
    floor = summarize([_decode_floor(done_keys) for _ in range(bench.pick(3, 9))])
    return [
        Row(
            "resume",
            f"resume to first item, 5 KB state, {done_keys:,} done keys (p50)",
            st["p50"],
            "s",
            anchor=floor["p50"],
            anchor_unit="s",
            anchor_desc="bare decode of the same state and keys",
            ratio=st["p50"] / floor["p50"],
            target="< 50 ms",
            met=st["p50"] < 0.05,
            stats={"resume": st, "checkpoints": len(cps)},
            note=f"engine.resume() to the first item body, same engine; p99 {st['p99'] * 1e3:.1f} ms",
        )
    ]


def _floor_db(directory: Any) -> Any:
    """A new SQLite database with the store's schema (WAL, synchronous=FULL) for a floor: no engine, no thread hop."""
    import sqlite3

    from engine.store.sqlite.schema import SCHEMA

    directory.mkdir(parents=True)
    conn = sqlite3.connect(directory / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    return conn


def _sqlite_floor(directory: Any, n: int) -> list[float]:
    """A durable SQLite commit of the rows a checkpoint writes."""
    conn = _floor_db(directory)
    try:
        payload = json.dumps({"state": state_5kb()}).encode()
        out = []
        for seq in range(1, n + 1):
            items = json.dumps({"d": [str(seq * 10 + i) for i in range(10)]}).encode()
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES(?,?,?,?,?,?,?)", ("op", seq, 1, 0.0, "{}", payload, "0" * 64)
            )
            conn.execute("INSERT OR REPLACE INTO deltas VALUES(?,?,?)", ("op", seq, items))
            conn.execute("DELETE FROM checkpoints WHERE op_id=? AND seq <= ?", ("op", seq - 5))
            conn.execute("COMMIT")
            out.append(time.perf_counter() - t0)
        return out
    finally:
        conn.close()


def _decode_floor(done_keys: int) -> float:
    """The floor of a resume: parse the 5 KB state and the done keys (as JSON) into a dict and a set."""
    state = json.dumps(state_5kb()).encode()
    keys = json.dumps({"d": [str(i) for i in range(done_keys)]}).encode()
    t0 = time.perf_counter()
    decoded = json.loads(state), set(json.loads(keys)["d"])
    took = time.perf_counter() - t0
    del decoded  # freed outside the timing, as a resume keeps what it decoded
    return took


async def _until_status(engine: Any, op_id: str, status: Status, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while (await engine.get(op_id)).status is not status:
        if time.monotonic() > end:
            raise RuntimeError(f"operation did not become {status.value} within {timeout}s")
        await asyncio.sleep(0.005)


async def bench_submit(bench: Bench) -> list[Row]:
    """Submits awaited one at a time (a client in a loop) and from concurrent submitters, local store;
    the floor is one durable SQLite commit (WAL, synchronous=FULL) of the same row, measured in the same run."""
    n, repeats, conc = bench.pick((300, 3, 50), (2000, 3, 50))
    spec = OperationSpec(type="bench_noop")
    serial, shared, per_commit = [], [], []
    for _ in range(repeats):
        async with bench.engine(bench.fresh_dir(), run_queue=False) as engine:
            await engine.submit(spec)  # the store open and warm
            t0 = time.perf_counter()
            for _ in range(n):
                await engine.submit(spec)
            serial.append(n / (time.perf_counter() - t0))
            worker = engine.store.worker
            c0, t0 = worker.commits, time.perf_counter()
            for start in range(0, n, conc):  # `conc` clients, each awaiting its own submit
                await asyncio.gather(*(engine.submit(spec) for _ in range(min(conc, n - start))))
            shared.append(n / (time.perf_counter() - t0))
            per_commit.append(n / max(1, worker.commits - c0))
    floor = 1 / statistics.median(await asyncio.to_thread(_submit_floor, bench.fresh_dir("sqlite"), n))
    hops = statistics.median((await fsync_off_loop_samples(bench.root / "floor", min(n, 500)))[0])
    ceiling = 1 / (1 / floor + hops)  # the bare commit, reached through the store's thread and back
    rate, crate = statistics.median(serial), statistics.median(shared)
    common = {
        "serial": serial,
        "concurrent": shared,
        "submits_per_commit": per_commit,
        "ops": n,
        "thread_round_trip": hops,
    }
    return [
        Row(
            "submit",
            "submit one at a time, awaited, local store",
            rate,
            "ops/s",
            anchor=floor,
            anchor_unit="commits/s",
            anchor_desc="bare durable SQLite commit of the row",
            ratio=rate / floor,
            target=">= 2,500 ops/s",
            met=rate >= 2500,
            stats=common,
            note=f"{n:,} awaited engine.submit() in a loop, median of {repeats}; floor: the same INSERT on one"
            f" thread, BEGIN IMMEDIATE..COMMIT, no engine; that commit awaited from the event loop through the"
            f" store's thread (two hops, {hops * 1e6:.0f} us) allows at most {ceiling:,.0f}/s: {rate / ceiling:.2f}x"
            " of that",
        ),
        Row(
            "submit",
            f"submit from {conc} concurrent submitters, local store",
            crate,
            "ops/s",
            anchor=floor,
            anchor_unit="commits/s",
            anchor_desc="bare durable SQLite commit of the row",
            ratio=crate / floor,
            target="commits shared",
            met=statistics.median(per_commit) > 2,
            stats=common,
            note=f"{statistics.median(per_commit):.1f} submits per group commit (median)",
        ),
    ]


def _submit_floor(directory: Any, n: int) -> list[float]:
    """A durable SQLite commit of one operation row."""
    conn = _floor_db(directory)
    try:
        record = json.dumps({"type": "bench_noop", "params": {}, "status": "queued", "pad": "x" * 600})
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO operations(id, type, status, rank, queued_at, not_before, created_at, epoch, record)"
                " VALUES(?,?,?,?,?,?,?,?,?)",
                (f"op{i:08d}", "bench_noop", "queued", 2, time.time(), None, time.time(), 0, record),
            )
            conn.execute("COMMIT")
            out.append(time.perf_counter() - t0)
        return out
    finally:
        conn.close()
