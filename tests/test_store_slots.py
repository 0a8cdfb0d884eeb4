"""The store-wide slot count (``outlast slots``): every engine on a store respects it, whichever
process it runs in, on both stores; a claim counts the running operations in its own atomic step."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import shlex
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, OperationSpec, Priority, Settings, Status, load_settings, open_store
from engine.cli import main as cli_main
from engine.models import SETTLED, Operation, WorkerInfo
from engine.store import Store
from tests.fixtures_cli import REPO, Proc
from tests.fixtures_cli import until as until_sync
from tests.fixtures_engine import until

SOAK = bool(os.environ.get("OUTLAST_SOAK"))
W = WorkerInfo(host="test", pid=1)
LONG: dict[str, Any] = {"items": 100_000, "seconds": 0.01}
"""A ledger operation that runs until it is stopped (cooperatively, item by item)."""


class Target:
    """One store (a state dir, or a namespace on a redis-server) and the ways to reach it."""

    def __init__(self, kind: str, base: Path, redis_url: str | None, name: str = "s") -> None:
        self.kind, self.base, self.redis_url, self.name = kind, base, redis_url, name
        self.settings: Settings = load_settings(
            state_dir=base / "state", plugins=["tests.ops_for_tests"], grace_period=2.0
        )

    def again(self, name: str) -> Target:
        """Another, empty store of the same kind."""
        return Target(self.kind, self.base / name, self.redis_url, f"{self.name}-{name}")

    @property
    def url(self) -> str:
        return str(self.base / "state") if self.redis_url is None else self.redis_url

    def store(self, **kw: Any) -> Store:
        """A new store object (its own connection), unopened."""
        if self.redis_url is None:
            return open_store(self.base / "state")
        return open_store(self.redis_url, namespace=self.name, checkpoint_mirror=None, **kw)

    def args(self, url: str | None = None) -> list[str]:
        """The global options that name this store on the command line."""
        if self.redis_url is None:
            return ["--state-dir", str(self.base / "state")]
        return ["--store", url or self.redis_url]

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("OUTLAST_DEBUG", None)
        if self.redis_url is not None:
            env["OUTLAST_NAMESPACE"] = self.name
        return env

    def engine(self, lease_ttl: float | None = None, **kw: Any) -> Engine:
        kw.setdefault("run_queue", False)
        store = self.store() if lease_ttl is None or self.redis_url is None else self.store(lease_ttl=lease_ttl)
        return Engine(store=store, settings=self.settings, **kw)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def target(request: pytest.FixtureRequest, state_dir: Path, tmp_path: Path) -> Target:
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    return Target(request.param, tmp_path / "t", url)


def outlast(target: Target, *args: str) -> tuple[int, str, str]:
    """``outlast ARGS`` on the target's store, in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    env = {k: v for k, v in target.env.items() if k == "OUTLAST_NAMESPACE"}
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _environ(env):
        try:
            cli_main([*target.args(), *args])
        except SystemExit as e:
            code = e.code
    return int(code or 0), out.getvalue(), err.getvalue()


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def submit(engine: Engine, n: int, type_: str = "ledger", **params: Any) -> list[str]:
    return [(await engine.submit(OperationSpec(type=type_, params=params))).id for _ in range(n)]


def running(target: Target) -> int:
    async def go() -> int:
        async with target.store() as store:  # type: ignore[attr-defined]
            return (await store.counts()).get(Status.RUNNING, 0)

    return asyncio.run(go())


# ---- many engines, one count --------------------------------------------------------------------


def test_two_workers_together_never_run_more_than_the_store_slots(target: Target, tmp_path: Path) -> None:
    """Two ``outlast worker -c 3`` on one store with 2 store slots: 6 operations that note when they
    start and end; at no instant more than 2 ran, and all of them completed."""
    assert outlast(target, "slots", "2")[:2] == (0, "store slots: 2 (0 running)\n")
    times = tmp_path / "times"
    line = f'echo "$(date +%s.%N) {{}}" >> {shlex.quote(str(times))}'
    script = f"{line.format(1)}; sleep 0.3; {line.format(-1)}"

    async def queue() -> list[str]:
        async with target.engine() as engine:
            return await submit(engine, 6, "command", command=script, shell=True)

    ids = asyncio.run(queue())

    async def statuses() -> list[Status]:
        async with target.store() as store:  # type: ignore[attr-defined]
            return [(await store.get(i)).status for i in ids]

    workers = [Proc([*target.args(), "worker", "-c", "3"], target.env) for _ in range(2)]
    try:
        until_sync(lambda: all(s in SETTLED for s in asyncio.run(statuses())), 60, what="all settled")
        # Each past its start (its first line is printed once its signal handlers are in): on a loaded machine
        # the other worker had run all six before this one started, and SIGTERM killed it as it started.
        until_sync(lambda: all(w.out for w in workers), 60, what="both workers started")
        for w in workers:
            w.signal(signal.SIGTERM)
        for w in workers:
            assert w.wait(30) == 0, w.err
    finally:
        for w in workers:
            w.kill()
    assert all("3 slots (store: 2);" in w.out[0] for w in workers), [w.out[:1] for w in workers]
    assert asyncio.run(statuses()) == [Status.COMPLETED] * 6
    events = sorted((float(t), int(d)) for t, d in (ln.split() for ln in times.read_text().splitlines()))
    assert len(events) == 12, events
    at_once = peak = 0
    for _, d in events:
        at_once += d
        peak = max(peak, at_once)
    assert peak <= 2, f"{peak} ran at once with 2 store slots: {events}"


async def race(one: Target, slots: int, plans: list[str | None]) -> tuple[list[str | None], int]:
    """Fill all slots but one (held by a live store), then release one claimer per plan (by the queue:
    None, or by id), each in a thread with its own store, at once: what each claimed, and how many
    operations the store runs after."""
    barrier = threading.Barrier(len(plans) + 1, timeout=60)
    won: list[str | None] = []

    async def claim(by_id: str | None) -> str | None:
        async with one.store() as store:  # type: ignore[attr-defined]
            barrier.wait()  # every claimer connected: go together
            op = await store.claim(W, 1e10, 300.0, op_id=by_id)
            return None if op is None else op.id

    def claimer(by_id: str | None) -> None:
        won.append(asyncio.run(claim(by_id)))

    async with one.store() as holder:  # type: ignore[attr-defined]
        for _ in range(slots - 1):
            assert await holder.claim(W, 1e10, 300.0) is not None
        threads = [threading.Thread(target=claimer, args=(p,)) for p in plans]
        for t in threads:
            t.start()
        await asyncio.to_thread(barrier.wait)
        for t in threads:
            await asyncio.to_thread(t.join, 60)
        return won, (await holder.counts()).get(Status.RUNNING, 0)


def test_claimers_racing_for_the_last_slot_one_wins(target: Target) -> None:
    """Many claimers, each with its own store connection, released at once for the last free slot (by
    the queue or by id): exactly one claims, and the store runs exactly its slots' worth."""
    seed = int(os.environ.get("OUTLAST_SLOTS_SEED") or random.randrange(1 << 32))
    print(f"seed {seed} (OUTLAST_SLOTS_SEED={seed} replays)")
    rng = random.Random(seed)
    for rnd in range(20 if SOAK else 2):
        slots, claimers = rng.randint(1, 4), rng.randint(3, 8)
        one = target.again(f"r{rnd}")

        async def prepare(one: Target, slots: int, n: int) -> list[str]:
            async with one.engine() as engine:
                await engine.store.set_slots(slots)
                return await submit(engine, n, items=1)

        ids = asyncio.run(prepare(one, slots, slots - 1 + claimers))
        plans = [rng.choice([None, *ids[slots - 1 :]]) for _ in range(claimers)]
        won, now_running = asyncio.run(race(one, slots, plans))
        what = f"seed {seed} (OUTLAST_SLOTS_SEED={seed} replays), round {rnd}: {slots} slots, plans {plans}: {won}"
        assert len(won) == claimers, what
        assert len([w for w in won if w is not None]) == 1, what
        assert now_running == slots, what


def test_an_orphan_holds_its_slot_until_recovery_frees_it(target: Target) -> None:
    """A worker SIGKILLed mid-operation: its operation still counts until recovery settles (SQLite) or
    requeues (Redis) it; then the slot is free for the next claim."""
    url = None if target.redis_url is None else f"{target.redis_url}?lease_ttl=0.5"

    async def queue() -> list[str]:
        async with target.engine() as engine:
            await engine.store.set_slots(1)
            return await submit(engine, 2, **LONG)

    ids = asyncio.run(queue())
    worker = Proc([*target.args(url), "--plugin", "tests.ops_for_tests", "worker", "-c", "2"], target.env)
    try:
        until_sync(lambda: running(target) == 1, 30, what="one operation running")
    finally:
        worker.kill()  # SIGKILL: it settles nothing

    async def before() -> tuple[str, str]:
        async with target.store() as store:  # type: ignore[attr-defined]
            ops = {i: await store.get(i) for i in ids}
            orphan = next(i for i in ids if ops[i].status is Status.RUNNING)
            waiting = next(i for i in ids if i != orphan)
            assert ops[waiting].status is Status.QUEUED
            assert await store.claim(W, 1e10, 300.0, op_id=waiting) is None  # the orphan holds the only slot
            assert await store.claim(W, 1e10, 300.0) is None
            return orphan, waiting

    async def after(orphan: str, waiting: str) -> None:
        # A Redis store trusts leases for its own lease_ttl after Redis starts: the workers' one here.
        async with target.engine(lease_ttl=0.5, auto_resume=False) as engine:  # recovers what it can at start
            store = engine.store

            async def recovered() -> bool:
                await engine.recover()  # a Redis lease may still be running out
                return (await store.get(orphan)).status is not Status.RUNNING

            await until(recovered, timeout=30, every=0.1)
            claimed = await store.claim(W, 1e10, 300.0, op_id=waiting)
            assert claimed is not None and claimed.status is Status.RUNNING
            assert await store.claim(W, 1e10, 300.0) is None  # and that one uses the slot again

    asyncio.run(after(*asyncio.run(before())))


async def test_a_new_count_applies_at_the_next_claim_of_a_running_engine(target: Target) -> None:
    """A worker (engine) running with room for 3 and 1 store slot runs 1; set the slots to 2 from
    another process's store: it takes the second at its next claim, without a restart."""
    other = target.store()
    await other.open()
    try:
        await other.set_slots(1)
        async with target.engine(run_queue=True, max_concurrent=3) as engine:
            ids = await submit(engine, 2, **LONG)
            await until(lambda: len(engine.running_ids) == 1)
            queued = next(i for i in ids if i not in engine.running_ids)
            assert await other.claim(W, 1e10, 300.0, op_id=queued) is None  # the store is full
            assert (await other.get(queued)).status is Status.QUEUED
            await other.set_slots(2)
            assert await other.get_slots() == 2
            await until(lambda: len(engine.running_ids) == 2, timeout=30)
            await other.set_slots(None)
            assert await other.get_slots() is None
    finally:
        await other.close()


# ---- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["0", "-1", "1001", "abc", "1e3", "2.5", ""])
def test_bad_slot_counts_are_one_line_exit_2_and_change_nothing(state_dir: Path, tmp_path: Path, bad: str) -> None:
    target = Target("sqlite", tmp_path / "t", None)
    assert outlast(target, "slots", "3")[0] == 0
    code, out, err = outlast(target, "slots", bad)
    assert (code, out) == (2, ""), (code, out, err)
    assert len(err.strip().splitlines()) == 1 and repr(bad) in err and "1 to 1000" in err, err
    assert json.loads(outlast(target, "slots", "--json")[1]) == {"slots": 3, "running": 0}


def test_slots_shows_sets_and_unsets_the_count(target: Target) -> None:
    assert outlast(target, "slots") == (0, "store slots: not set (each engine's own limit)\n", "")
    assert outlast(target, "slots", "4") == (0, "store slots: 4 (0 running)\n", "")
    assert json.loads(outlast(target, "--json", "slots")[1]) == {"slots": 4, "running": 0}
    assert outlast(target, "slots", "off")[:2] == (0, "store slots: not set (each engine's own limit)\n")
    assert json.loads(outlast(target, "slots", "--json")[1]) == {"slots": None, "running": 0}


def waits(p: Proc) -> bool:
    return any("waiting for a slot" in ln for ln in p.err)


def submitted_id(p: Proc) -> str | None:
    """The id of ``p``'s "submitted ID" line, once read."""
    return next((ln.split()[1] for ln in list(p.out) if "submitted" in ln), None)


@contextlib.asynccontextmanager
async def _one_slot_held(target: Target) -> AsyncIterator[tuple[Store, Operation]]:
    """The store of ``target`` with one store slot, held by a long operation claimed by hand: the store (open
    while the block runs) and that operation's claimed record."""
    holder = target.store()
    await holder.open()
    try:
        await holder.set_slots(1)
        async with target.engine() as engine:
            (busy,) = await submit(engine, 1, **LONG)
        held = await holder.claim(W, 1e10, 300.0)
        assert held is not None and held.id == busy
        yield holder, held
    finally:
        await holder.close()


def _run_ledger(target: Target) -> list[str]:
    """``outlast run ledger`` (3 items) on the store of ``target``."""
    return [*target.args(), "--plugin", "tests.ops_for_tests", "run", "ledger", "-p", "items=3"]


async def test_a_foreground_run_waits_for_a_store_slot(state_dir: Path, tmp_path: Path) -> None:
    """``outlast run`` with every store slot in use: it says so once, its operation stays queued, and
    it runs when a slot frees; Ctrl-C while waiting pauses its operation (exit 6), as the start line says."""
    target = Target("sqlite", tmp_path / "t", None)
    async with _one_slot_held(target) as (holder, held):
        busy = held.id
        runs = [Proc(_run_ledger(target), target.env) for _ in range(2)]
        try:
            for p in runs:
                await until(partial(waits, p), timeout=30)
                (said,) = p.err
                assert said.startswith("waiting for a slot: 1 of 1 store slots in use (outlast --state-dir ")
                assert said.endswith(" slots)"), said
            ids = [await until(partial(submitted_id, p), timeout=30) for p in runs]
            assert [(await holder.get(i)).status for i in ids] == [Status.QUEUED] * 2
            runs[1].signal(signal.SIGINT)
            assert await asyncio.to_thread(runs[1].wait, 30) == 6, runs[1].err
            assert (await holder.get(ids[1])).status is Status.PAUSED
            await holder.transition(busy, Status.COMPLETED, epoch=held.epoch)  # the slot frees
            assert await asyncio.to_thread(runs[0].wait, 30) == 0, runs[0].err
            assert (await holder.get(ids[0])).status is Status.COMPLETED
            assert sum("waiting for a slot" in ln for ln in runs[0].err) == 1, runs[0].err
        finally:
            for p in runs:
                p.kill()


async def test_a_run_waiting_for_a_slot_leaves_it_to_higher_priority_work(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot that came free went to the foreground run that polled first: ``outlast run --priority low``,
    waiting for it, took it ahead of high-priority work queued for a worker (2 of 3 tries here). It leaves it to
    that work for a while (``YIELD_FOR``; here until that work is claimed), then takes the next one."""
    from engine.cli import run as cli_run

    monkeypatch.setattr(cli_run, "YIELD_FOR", 1e9)
    async with _one_slot_held(target) as (holder, held), target.engine() as engine:
        low = await engine.submit(OperationSpec(type="ledger", params={"items": 1}, priority=Priority.LOW))
        looks = 0
        real_get = engine.get

        async def get(op_id: str) -> Operation:
            nonlocal looks
            looks += 1
            return await real_get(op_id)

        engine.get = get  # type: ignore[method-assign]
        waiting = asyncio.ensure_future(cli_run.claim_here(engine, low.id, None))
        try:
            await until(lambda: looks >= 2, timeout=30)  # its claim refused: every slot in use
            high = await engine.submit(OperationSpec(type="ledger", params=LONG, priority=Priority.HIGH))
            await holder.transition(held.id, Status.COMPLETED, epoch=held.epoch)  # the slot frees
            seen = looks
            await until(lambda: looks >= seen + 2, timeout=30)  # it looked twice with the slot free
            assert not waiting.done() and (await engine.get(low.id)).status is Status.QUEUED
            taken = await holder.claim(W, 1e10, 300.0)  # by a worker: the high one, next in the queue
            assert taken is not None and taken.id == high.id
            await holder.transition(high.id, Status.COMPLETED, epoch=taken.epoch)
            await asyncio.wait_for(waiting, 30)  # nothing of a higher priority left queued: it takes the slot
            assert (await engine.wait(low.id, timeout=30)).status is Status.COMPLETED
        finally:
            waiting.cancel()


@pytest.mark.parametrize(
    ("sig", "why"),
    [
        (signal.SIGHUP, "paused: the terminal hung up (SIGHUP: a dropped SSH session?)"),
        (signal.SIGINT, "paused: Ctrl-C (SIGINT)"),
        (signal.SIGTERM, "paused: the process was asked to stop (SIGTERM)"),
    ],
)
async def test_a_run_waiting_for_a_slot_stopped_by_a_signal_says_which(
    state_dir: Path, tmp_path: Path, sig: int, why: str
) -> None:
    """``outlast run`` waiting for a store slot, hung up (a dropped SSH session) or Ctrl-C'd: its operation was
    stored as "paused by user", which no one did; a running one stopped so says the signal (h137, finding 4)."""
    target = Target("sqlite", tmp_path / "t", None)
    async with _one_slot_held(target) as (holder, _held):
        run = Proc(_run_ledger(target), target.env)
        try:
            await until(partial(waits, run), timeout=30)
            op_id = await until(partial(submitted_id, run), timeout=30)
            run.signal(sig)
            assert await asyncio.to_thread(run.wait, 30) == 6, run.err
            paused = await holder.get(op_id)
            assert (paused.status, paused.status_message) == (Status.PAUSED, why), paused
        finally:
            run.kill()


@pytest.mark.redis
async def test_a_run_following_a_worker_stops_at_once_while_redis_is_frozen(redis_server: Any, tmp_path: Path) -> None:
    """``outlast run`` whose operation a worker took while the run waited for a store slot follows it there and
    runs nothing itself: Ctrl-C stops the following (130), as it stops ``outlast watch``. With a Redis stopped
    by SIGSTOP, the read under way retried for 30 s before the run noticed the signal."""
    target = Target("redis", tmp_path / "t", redis_server.url)
    async with _one_slot_held(target) as (holder, held):
        run = Proc(_run_ledger(target), target.env)
        try:
            await until(partial(waits, run), timeout=30)
            op_id = await until(partial(submitted_id, run), timeout=30)
            run.signal(signal.SIGSTOP)  # its next claim comes after the worker's
            try:
                await holder.transition(held.id, Status.COMPLETED, epoch=held.epoch)  # the slot frees
                taken = await holder.claim(W, 1e10, 300.0)
            finally:
                run.signal(signal.SIGCONT)
            assert taken is not None and taken.id == op_id
            await until(lambda: any("following it there" in ln for ln in run.err), timeout=30)
            with redis_server.frozen():
                await asyncio.sleep(1.0)  # a read under way
                run.signal(signal.SIGINT)
                code = await asyncio.to_thread(run.wait, 30)
            said = "\n".join(run.err)
            assert code == 130, (code, said)
            assert "stopped watching without waiting for the store, which has not answered" in said, said
            assert f"stopped following {op_id}; it goes on in its worker" in said, said
        finally:
            run.kill()


async def test_a_foreground_run_waiting_for_a_slot_says_who_stopped_its_operation(tmp_path: Path) -> None:
    """``outlast run`` waiting for a store slot, its operation paused or cancelled meanwhile by another command
    (``outlast pause ID`` from a script that saw it queued): the run said "was taken by a running worker;
    following it there", though no worker had it, then "paused at 0 items". It says what another command did."""
    target = Target("sqlite", tmp_path / "t", None)
    async with _one_slot_held(target):
        for action, code in (("pause", 6), ("cancel", 4)):
            run = Proc(_run_ledger(target), target.env)
            try:
                await until(partial(waits, run), timeout=30)
                # Its stdout's line may be read after the stderr one: two pipes, a reader thread each.
                op_id = await until(partial(submitted_id, run), timeout=30)
                done = await asyncio.to_thread(Proc([*target.args(), action, op_id], target.env).wait, 30)
                assert done == 0
                assert await asyncio.to_thread(run.wait, 30) == code, run.err
                said = "\n".join(run.err)
                assert "taken by" not in said, said
                status = "paused" if action == "pause" else "cancelled"
                assert f"{op_id} was {status} by another command before it started here" in said, said
            finally:
                run.kill()
