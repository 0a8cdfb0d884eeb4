"""Fault suite (d): Redis zombies. A real ``outlast worker`` is stopped (SIGSTOP) past its lease while
it runs an operation, the world moves on (the operation is interrupted and re-queued, cancelled, or
taken over by another worker, or nobody notices), then the worker is continued (SIGCONT).

What must hold: no write of the stale attempt is accepted (checkpoints, progress, logs, status), the
stale attempt stops running items at once, and the operation still ends with the result of an
uninterrupted run, item by item.

Seeded: the seed is printed (``OUTLAST_FAULT_SEED=N`` replays it, ``OUTLAST_ROUND=K`` from round K).
``OUTLAST_SOAK=1`` runs many rounds (``OUTLAST_SOAK_ROUNDS``, 100 by default) of every scenario. Needs redis-server
(``OUTLAST_REQUIRE_REDIS=1`` makes its absence a failure).

This module is also the plugin that defines the operation the workers run (``--plugin``).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import secrets
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel, ConfigDict

from engine import Engine, OperationContext, OperationSpec, Status, load_settings, open_store, operation
from engine.models import Checkpoint, Conflict, LogRecord, StaleAttempt, WorkerInfo
from engine.store.base import ItemDelta
from engine.store.redis import RedisStore
from tests.fixtures_cli import REPO, Proc, until
from tests.fixtures_redis import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]
T = TypeVar("T")

PLUGIN = "tests.test_fault_redis_zombie"
SOAK = os.environ.get("OUTLAST_SOAK") == "1"
ROUNDS = int(os.environ.get("OUTLAST_SOAK_ROUNDS", "100")) if SOAK else 1
SEED = int(os.environ.get("OUTLAST_FAULT_SEED") or secrets.randbits(32))
FIRST_ROUND = int(os.environ.get("OUTLAST_ROUND", "0"))
LEASE_TTL = 2.0
MAX_AFTER = 5
"""Items the stale attempt may start after SIGCONT: the one it was in, and the few the event loop runs
before the supervisor's first tick notices (one Redis round trip)."""


# ---- the operation the workers run ---------------------------------------------------------------


class ZombieParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: int = 80
    seconds: float = 0.04
    trace: str
    """Every item body started appends ``PID ATTEMPT ITEM`` to this file (who ran what, how often)."""
    checkpoint_every: int = 5
    checkpoint_until: int = 1_000_000
    """Explicit checkpoints only for items below this (timed ones come every checkpoint_interval)."""
    stuck_at: int = -1
    """In the first attempt, this item takes ``stuck_seconds`` without reaching a safe point, then
    touches ``TRACE.end``."""
    stuck_seconds: float = 0.0


@operation("zombie_squares", params=ZombieParams)
async def zombie_squares(ctx: OperationContext, p: ZombieParams) -> dict:
    """Square every item into ctx.state, tracing each item body with this process's pid."""
    squares: dict[str, int] = ctx.state.setdefault("squares", {})
    pid = os.getpid()
    with open(p.trace, "a", buffering=1) as fh:
        async for i in ctx.items(range(p.items), key=str):
            fh.write(f"{pid} {ctx.attempt} {i}\n")
            await asyncio.sleep(p.seconds)
            if i == p.stuck_at and ctx.attempt == 1:
                end = time.monotonic() + p.stuck_seconds
                while time.monotonic() < end:
                    await asyncio.sleep(0.05)
                Path(p.trace + ".end").touch()
            squares[str(i)] = i * i
            if i < p.checkpoint_until and (i + 1) % p.checkpoint_every == 0:
                await ctx.checkpoint()
    return {"squares": squares}


def uninterrupted(items: int) -> dict[str, Any]:
    """What an uninterrupted run returns."""
    return {"squares": {str(i): i * i for i in range(items)}}


# ---- harness -------------------------------------------------------------------------------------


def trace(path: Path) -> list[tuple[int, int, int]]:
    """(pid, attempt, item) of every item body started."""
    if not path.exists():
        return []
    rows = (line.split() for line in path.read_text().splitlines() if line.strip())
    return [(int(pid), int(attempt), int(item)) for pid, attempt, item in rows]


class Round:
    """One operation, one stopped worker, one redis-server namespace."""

    def __init__(self, server: RedisServer, tmp: Path, ns: str) -> None:
        self.server, self.ns = server, ns
        self.url = f"{server.url}?lease_ttl={LEASE_TTL:g}"
        self.dir = tmp / ns
        self.dir.mkdir()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OUTLAST_NAMESPACE": ns,
            "OUTLAST_PROGRESS_FLUSH_INTERVAL": "0.2",
            "OUTLAST_CHECKPOINTS_KEEP": "1000",  # every checkpoint stays listed: a stale one is seen
            "OUTLAST_GRACE_PERIOD": "3",
        }
        self.env.pop("OUTLAST_DEBUG", None)
        self.workers: list[Proc] = []
        self.redis = server.client()

    def worker(self) -> Proc:
        p = Proc(["--store", self.url, "--plugin", PLUGIN, "worker", "-c", "1"], self.env)
        self.workers.append(p)
        return p

    def engine(self, fn: Callable[[Engine], Awaitable[T]]) -> T:
        """Run ``fn`` with an engine that runs nothing itself (starting it recovers orphans)."""

        async def go() -> T:
            store = open_store(self.url, namespace=self.ns, checkpoint_mirror=None)
            async with Engine(store=store, settings=load_settings(plugins=[PLUGIN]), run_queue=False) as engine:
                return await fn(engine)

        return asyncio.run(go())

    def read(self, fn: Callable[[RedisStore], Awaitable[T]]) -> T:
        async def go() -> T:
            async with open_store(self.url, namespace=self.ns, checkpoint_mirror=None) as store:  # type: ignore[attr-defined]
                return await fn(store)

        return asyncio.run(go())

    def submit(self, params: dict[str, Any], checkpoint_interval: float) -> str:
        spec = OperationSpec(type="zombie_squares", params=params, profile={"checkpoint_interval": checkpoint_interval})

        async def go(engine: Engine) -> str:
            return (await engine.submit(spec)).id

        return self.engine(go)

    def op(self, op_id: str) -> Any:
        return self.read(lambda s: s.get(op_id))

    def checkpoints(self, op_id: str) -> dict[int, Checkpoint]:
        raw = self.redis.hgetall(f"{self.ns}:ck:{op_id}")
        return {int(k): Checkpoint.model_validate_json(v) for k, v in raw.items()}

    def dump(self, op_id: str) -> dict[str, Any]:
        """Everything stored about one operation."""
        r, k = self.redis, f"{self.ns}:%s:{op_id}"
        out: dict[str, Any] = {kind: r.hgetall(k % kind) for kind in ("op", "ck", "cp", "cd", "fail")}
        out["log"] = r.xrange(k % "log")
        out["lease"] = r.get(k % "lease")
        return out

    def lease_gone(self, op_id: str) -> bool:
        return not self.redis.exists(f"{self.ns}:lease:{op_id}")

    def resumed_from(self, op_id: str) -> list[int]:
        records, _ = self.read(lambda s: s.read_logs(op_id))
        return [int(m.group(1)) for r in records if (m := re.match(r"resuming from checkpoint (\d+)", r.message))]

    def close(self) -> None:
        for p in self.workers:
            if p.popen.poll() is None:
                p.signal(signal.SIGCONT)
                p.kill()
        self.workers.clear()


@pytest.fixture
def rounds(redis_server: RedisServer, tmp_path: Path, state_dir: Path) -> Iterator[Callable[[str], Round]]:
    made: list[Round] = []

    def make(ns: str) -> Round:
        r = Round(redis_server, tmp_path, ns)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
        r.redis.close()


WRITES = ("checkpoint", "live", "log", "update", "settle", "heartbeat")


def _contents(r: Any, pattern: str) -> dict[bytes, Any]:
    """What each matching key holds (not DUMP's bytes: they change when Redis rehashes a hash it only read)."""
    kinds = {b"hash": lambda k: sorted(r.hgetall(k).items()), b"stream": r.xrange}
    return {k: kinds.get(r.type(k), r.dump)(k) for k in sorted(r.keys(pattern))}


async def _write(store: RedisStore, kind: str, op_id: str) -> None:
    """One write of attempt epoch 1 of ``op_id``, of the given kind."""
    if kind == "checkpoint":
        cp = Checkpoint(operation_id=op_id, seq=9, epoch=1, created_at=0.0, state={"zombie": True})
        await store.save_checkpoint(cp, ItemDelta(done=["x"]), keep=5)
    elif kind == "live":
        await store.save_live([(op_id, 1, {"total_items": 666})])
    elif kind == "log":
        await store.append_logs(op_id, [LogRecord(ts=0.0, level="info", message="zombie")])
    elif kind == "update":
        await store.update(op_id, epoch=1, total_items=666)
    elif kind == "settle":
        await store.transition(op_id, Status.COMPLETED, epoch=1, expect=frozenset({Status.RUNNING}), result=666)
    else:
        await store.heartbeat([op_id])


@pytest.mark.parametrize("world", ["lease expired", "cancelled"])
@pytest.mark.parametrize("kind", WRITES)
async def test_no_write_of_an_attempt_past_its_lease_is_accepted(
    redis_server: RedisServer, state_dir: Path, kind: str, world: str
) -> None:
    """Issue 12 item 3, write by write: once the lease of attempt 1 expired (the operation still running
    at epoch 1, or meanwhile interrupted, re-queued and cancelled), Redis refuses every write of it,
    the engine is told once, and any further write is refused too."""
    ns = f"f{secrets.token_hex(4)}"
    zombie = open_store(redis_server.url, namespace=ns, checkpoint_mirror=None, lease_ttl=0.5)
    assert isinstance(zombie, RedisStore)
    told: list[tuple[str, int]] = []
    zombie.on_lease_lost = lambda op_id, epoch: told.append((op_id, epoch))
    r = redis_server.client()
    other = open_store(redis_server.url, namespace=ns, checkpoint_mirror=None, lease_ttl=0.5)
    async with zombie, Engine(store=other, settings=load_settings(plugins=[PLUGIN]), run_queue=False) as engine:
        spec = OperationSpec(type="zombie_squares", params={"trace": str(state_dir / "unused")})
        op_id = (await engine.submit(spec)).id
        claimed = await zombie.claim(WorkerInfo(host="zombie", pid=1), 0.0, 300.0, op_id=op_id)
        assert claimed is not None and claimed.epoch == 1
        await zombie.heartbeat([op_id])
        assert told == []
        while r.exists(f"{ns}:lease:{op_id}"):  # stopped: no heartbeat
            await asyncio.sleep(0.05)
        if world == "cancelled":

            async def requeued() -> bool:
                await engine.recover()
                return (await engine.get(op_id)).status is Status.QUEUED

            await until_async(requeued, what="interrupted and re-queued")
            await engine.cancel(op_id)
        before = _contents(r, f"{ns}:*:{op_id}")
        refusals: dict[str, type] = {}
        for write in (kind, *(w for w in WRITES if w != kind)):
            try:
                await _write(zombie, write, op_id)
            except Conflict as e:
                refusals[write] = type(e)
        assert _contents(r, f"{ns}:*:{op_id}") == before, "a stale write was accepted"
        # Those that return nothing are dropped quietly; the others say the attempt is stale.
        assert refusals == dict.fromkeys(["checkpoint", "update", "settle"], StaleAttempt)
        assert told == [(op_id, 1)]
        assert (await zombie.get(op_id)).status is (Status.RUNNING if world == "lease expired" else Status.CANCELLED)
    r.close()


async def until_async(fn: Callable[[], Awaitable[Any]], timeout: float = 30.0, what: str = "condition") -> Any:
    end = asyncio.get_running_loop().time() + timeout
    while not (value := await fn()):
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.1)
    return value


STOPPED = r"{id}(: attempt \d+ stopped|: .*stops without writing|: final status \w+ not written| completed)"
"""The stale attempt's last word: stopped on losing its lease (or, before the fix: refused, or ran to the end)."""

SCENARIOS = ("cancel", "requeued", "takeover", "unnoticed")


def zombie_round(
    rounds: Callable[[str], Round], rng: random.Random, scenario: str, checkpoints_throughout: bool
) -> dict[str, int]:
    """One SIGSTOP/SIGCONT round; asserts the guarantees and returns its figures."""
    rd = rounds(f"z{rng.randrange(10**9)}")
    try:
        return _zombie_round(rd, rng, scenario, checkpoints_throughout)
    except BaseException:
        for w in rd.workers:
            print(f"worker {w.popen.pid} stderr:", *w.err[-30:], sep="\n  ")
        raise
    finally:
        rd.close()  # no idle workers piling up over a soak


def _zombie_round(rd: Round, rng: random.Random, scenario: str, checkpoints_throughout: bool) -> dict[str, int]:
    items = rng.randrange(70, 110)
    every = rng.randrange(3, 7)
    stop_after = rng.randrange(2, 5)  # checkpoints before SIGSTOP
    trace_file = rd.dir / "trace"
    params = {
        "items": items,
        "seconds": 0.04,
        "trace": str(trace_file),
        "checkpoint_every": every,
        "checkpoint_until": items if checkpoints_throughout else every * stop_after,
    }
    print(f"round: {scenario}, {items} items, checkpoint every {every} (throughout: {checkpoints_throughout})")
    op_id = rd.submit(params, checkpoint_interval=60.0)
    a = rd.worker()
    a_pid = a.popen.pid
    until(
        lambda: (op := rd.op(op_id)).status is Status.RUNNING and (op.checkpoint_seq or 0) >= stop_after,
        60,
        every=0.02,
        what="the worker running the operation with its checkpoints",
    )
    time.sleep(rng.uniform(0, 0.4))  # a few items past the checkpoint, some in flight
    a.signal(signal.SIGSTOP)
    pattern = re.compile(STOPPED.format(id=op_id))
    ended = lambda: sum(1 for ln in [*a.err, *a.out] if pattern.search(ln))  # noqa: E731
    try:
        until(lambda: rd.lease_gone(op_id), 30, every=0.1, what="the stopped worker's lease to expire")
        stale = rd.op(op_id)  # attempt 1, or a later one if a loaded machine made the worker lose one already
        assert stale.status is Status.RUNNING and stale.worker is not None and stale.worker.pid == a_pid
        if scenario in ("cancel", "requeued"):

            async def interrupted(e: Engine) -> Status:
                await e.recover()
                return (await e.get(op_id)).status

            until(lambda: rd.engine(interrupted) is Status.QUEUED, 30, every=0.3, what="interrupted and re-queued")
            if scenario == "cancel":
                rd.engine(lambda e: e.cancel(op_id))
                assert rd.op(op_id).status is Status.CANCELLED
        elif scenario == "takeover":
            rd.worker()
            until(lambda: rd.op(op_id).epoch > stale.epoch, 60, every=0.05, what="another worker taking it over")
        before = rd.dump(op_id)
        before_cps = rd.checkpoints(op_id)
        traced = len(trace(trace_file))
        ended_before = ended()
    finally:
        a.signal(signal.SIGCONT)
    until(lambda: ended() > ended_before, 60, what="the stale attempt to end")
    after = sum(1 for pid, attempt, _ in trace(trace_file)[traced:] if (pid, attempt) == (a_pid, stale.attempt))

    # No write of the stale attempt accepted.
    mine = lambda cps: {s: c for s, c in cps.items() if c.epoch == stale.epoch}  # noqa: E731
    assert mine(rd.checkpoints(op_id)) == mine(before_cps), "a stale checkpoint was accepted"
    if scenario == "cancel":
        assert rd.dump(op_id) == before, "the stale attempt changed the stored operation"
    assert after <= MAX_AFTER, f"the stale attempt ran {after} items after SIGCONT"

    # The operation goes on to the result of an uninterrupted run.
    if scenario == "cancel":
        rd.engine(lambda e: e.resume(op_id))
    done = until(lambda: (op := rd.op(op_id)).status is Status.COMPLETED and op, 90, every=0.1, what="completion")
    assert done.result == uninterrupted(items)
    resume_seq = max(s for s, c in before_cps.items() if c.epoch <= stale.epoch)
    assert resume_seq in rd.resumed_from(op_id), "the next attempt did not resume from the last good checkpoint"
    rows = trace(trace_file)
    counts = Counter(i for _, _, i in rows)
    assert set(counts) == set(range(items))
    loaded = rd.read(lambda s: s.load_checkpoint(op_id, resume_seq))
    assert loaded is not None
    safe = {int(k) for k in loaded[1].done}
    again = sorted(i for _, _, i in rows[traced:] if i in safe)
    assert not again, f"items done before the resumed checkpoint ran again: {again}"
    return {"after_sigcont": after, "repeated": sum(n - 1 for n in counts.values())}


def _print_seed(name: str) -> None:
    print(f"{name}: OUTLAST_FAULT_SEED={SEED}")


def test_cancelled_while_stopped_refuses_every_stale_write(rounds: Callable[[str], Round]) -> None:
    """Issue 12 item 3: interrupted, re-queued and cancelled while its worker was stopped; the worker's
    checkpoints (taken every few items) must all be refused and nothing stored may change."""
    _print_seed("item 3")
    figures = zombie_round(rounds, random.Random(f"{SEED}-item3"), "cancel", checkpoints_throughout=True)
    print(figures)


def test_lost_lease_stops_the_handler_at_once(rounds: Callable[[str], Round]) -> None:
    """Issue 12 item 4: with no checkpoint due for a minute, only the lease-loss notice can stop the
    stale attempt; it must stop at the next item boundary instead of running the remaining items."""
    _print_seed("item 4")
    figures = zombie_round(rounds, random.Random(f"{SEED}-item4"), "takeover", checkpoints_throughout=False)
    print(figures)


def test_lost_lease_inside_a_long_item_is_cancelled_after_the_grace_period(rounds: Callable[[str], Round]) -> None:
    """Issue 12 item 4: a stale attempt stuck inside one item (no safe point) is cancelled by force once
    the grace period has passed, instead of finishing the item."""
    rd = rounds("stuck")
    trace_file = rd.dir / "trace"
    params = {"items": 40, "seconds": 0.04, "trace": str(trace_file), "stuck_at": 17, "stuck_seconds": 60.0}
    op_id = rd.submit(params, checkpoint_interval=60.0)
    a = rd.worker()
    until(lambda: (a.popen.pid, 1, 17) in trace(trace_file), 60, every=0.02, what="the worker inside the long item")
    a.signal(signal.SIGSTOP)
    try:
        until(lambda: rd.lease_gone(op_id), 30, every=0.1, what="the stopped worker's lease to expire")
        rd.worker()
        until(lambda: rd.op(op_id).epoch == 2, 60, every=0.05, what="another worker taking the operation over")
        before_cps = rd.checkpoints(op_id)
    finally:
        a.signal(signal.SIGCONT)
    pattern = re.compile(STOPPED.format(id=op_id))
    until(lambda: any(pattern.search(ln) for ln in a.err), 40, what="the stale attempt to end")
    assert not Path(f"{trace_file}.end").exists(), "the stale attempt finished its long item"
    done = until(lambda: (op := rd.op(op_id)).status is Status.COMPLETED and op, 90, every=0.1, what="completion")
    assert done.result == uninterrupted(40) and done.worker is not None and done.worker.pid != a.popen.pid
    assert {s: c for s, c in rd.checkpoints(op_id).items() if c.epoch == 1} == {
        s: c for s, c in before_cps.items() if c.epoch == 1
    }


@pytest.mark.timeout(0 if SOAK else 300)
@pytest.mark.parametrize("scenario", SCENARIOS if SOAK else ("requeued", "unnoticed"))
def test_zombie_rounds(rounds: Callable[[str], Round], scenario: str) -> None:
    """Seeded rounds of every scenario (by default the two the tests above do not run: re-queued and
    not claimed yet, and not noticed by anyone), with checkpoints throughout or only early."""
    _print_seed(scenario)
    totals: Counter[str] = Counter()
    for n in range(FIRST_ROUND, FIRST_ROUND + ROUNDS):
        rng = random.Random(f"{SEED}-{scenario}-{n}")
        try:
            figures = zombie_round(rounds, rng, scenario, checkpoints_throughout=rng.random() < 0.5)
        except BaseException:
            print(f"failed in round {n}: replay with OUTLAST_FAULT_SEED={SEED} OUTLAST_ROUND={n}")
            raise
        totals.update(figures)
        totals["rounds"] += 1
        totals["most_after_sigcont"] = max(totals["most_after_sigcont"], figures["after_sigcont"])
    print(f"{scenario}: {dict(totals)} (OUTLAST_FAULT_SEED={SEED})")
