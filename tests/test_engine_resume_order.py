"""Resuming through the done keys in the order they were done (``Ledger.order``).

The resumed ``ctx.items`` loop takes a key equal to the next done key in that order as done without
looking it up: these tests check that this never changes which items run (differentially, against the
plain set lookup of a first attempt), and that the order a store gives holds the resume point's deltas
only, never those of a checkpoint that failed to verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from pathlib import Path

import pytest

from engine import Engine, OperationSpec, Settings, open_store
from engine.context import OperationContext
from engine.models import Checkpoint, LogRecord, Operation, WorkerInfo, new_id
from engine.profiles import profile_for
from engine.store.base import Chain, ItemDelta, Ledger


class _Port:
    """The attempt side of a context, for driving ``ctx.items`` without an engine."""

    def __init__(self, tmp: Path) -> None:
        self.saved: list[ItemDelta] = []
        self._dir = tmp

    async def save_checkpoint(self, cp: Checkpoint, delta: ItemDelta) -> bool:
        self.saved.append(delta)
        return True

    def item_failed(self, key: str, error: str) -> None:
        pass

    def log(self, record: LogRecord) -> None:
        pass

    @property
    def output_dir(self) -> Path:
        return self._dir

    @property
    def log_limit(self) -> int:
        return 64 << 20

    @property
    def outlast_dirs(self) -> list[Path]:
        return [self._dir]


def _context(tmp: Path, ledger: Ledger) -> OperationContext:
    now = time.time()
    op = Operation(id=new_id(), type="ledger", created_at=now, queued_at=now, updated_at=now, checkpoint_seq=1)
    cp = Checkpoint(operation_id=op.id, seq=1, epoch=1, created_at=now, processed_items=len(ledger.done))
    return OperationContext(_Port(tmp), op, profile_for("ledger"), (cp, ledger))  # type: ignore[arg-type]


async def _run(ctx: OperationContext, items: list[int], fail: set[int], skip: set[int]) -> list[int]:
    """What the handler's body saw; it fails or skips some of them (which are then not done)."""
    seen = []
    async for i in ctx.items(items, key=lambda i: f"k{i}"):
        seen.append(i)
        if i in fail:
            ctx.fail(f"k{i}", "no")
        elif i in skip:
            ctx.skip(f"k{i}")
    return seen


def _ledgers(order: list[list[str]], failed: dict[str, str], skipped: set[str]) -> tuple[Ledger, Ledger]:
    """The same resume point without its order (set lookups only) and with it."""
    done = {k for part in order for k in part}
    plain = Ledger(done=set(done), failed=dict(failed), skipped=set(skipped))
    ordered = Ledger(done=set(done), failed=dict(failed), skipped=set(skipped), order=[list(p) for p in order])
    return plain, ordered


@pytest.mark.parametrize("case", range(60))
async def test_the_order_never_changes_which_items_run(tmp_path: Path, case: int) -> None:
    """Random done orders (the iteration order, shuffled, partly, with gaps), iterations with duplicate
    keys and items failed or skipped before: the resumed loop runs exactly what the plain one runs."""
    rng = random.Random(case)
    n = rng.randrange(1, 60)
    universe = list(range(n))
    done = [i for i in universe if rng.random() < 0.7]
    if case % 3 == 1:
        rng.shuffle(done)
    elif case % 3 == 2 and done:
        a, b = rng.randrange(len(done)), rng.randrange(len(done))
        done[a], done[b] = done[b], done[a]
    cut = sorted(rng.sample(range(len(done) + 1), min(len(done) + 1, rng.randrange(1, 4))))
    parts = [done[x:y] for x, y in zip([0, *cut], [*cut, len(done)], strict=True)]
    order = [[f"k{i}" for i in p] for p in parts if p]
    rest = [i for i in universe if i not in done]
    skipped = {f"k{i}" for i in rest if rng.random() < 0.2}
    failed = {f"k{i}": "before" for i in rest if rng.random() < 0.2 and f"k{i}" not in skipped}
    items = universe + [rng.choice(universe) for _ in range(rng.randrange(4))]  # duplicates, done or not
    if case % 4 == 3:
        rng.shuffle(items)
    fail = {i for i in universe if rng.random() < 0.1}
    skip = {i for i in universe if rng.random() < 0.1}
    plain, ordered = _ledgers(order, failed, skipped)
    a, b = _context(tmp_path, plain), _context(tmp_path, ordered)
    assert (await _run(a, items, fail, skip), a.done) == (await _run(b, items, fail, skip), b.done), case
    assert (a._ledger.done, a._ledger.new_done) == (b._ledger.done, b._ledger.new_done), case


async def test_a_done_key_out_of_order_is_still_skipped_and_a_new_one_still_runs(tmp_path: Path) -> None:
    """The order says k2 then k0; the loop offers k0, k1, k2, k3: k1 and k3 run, once each."""
    _plain, ordered = _ledgers([["k2", "k0"]], {}, set())
    ctx = _context(tmp_path, ordered)
    assert await _run(ctx, [0, 1, 2, 3, 0, 2], set(), set()) == [1, 3]


def test_the_chain_ledger_keeps_the_done_order() -> None:
    """``Chain.ledger`` at every seq: its order is the deltas' done lists up to that seq."""
    deltas = [
        ItemDelta(done=["a", "b"]),
        ItemDelta(failed={"c": "x"}),
        ItemDelta(done=["c", "d"], skipped=["e"]),
        ItemDelta(done=["f"]),
    ]
    from engine.store.base import link

    raws: list[bytes] = []
    for d in deltas:
        raws.append(d.encode(link(raws[-1]) if raws else ""))
    chain = Chain(enumerate(raws, 1))
    for seq in range(1, len(raws) + 1):
        got = chain.ledger(seq)
        assert got.done == {k for d in deltas[:seq] for k in d.done}
        assert got.order == [d.done for d in deltas[:seq] if d.done]
    bad = Chain([(1, raws[0]), (2, b'{"p":"' + link(raws[0]).encode() + b'","d":[1]}')])
    with pytest.raises(ValueError, match="delta 2 is unreadable"):
        bad.ledger(2)


@pytest.mark.parametrize("kind", ["local", "redis"])
@pytest.mark.parametrize("damage", ["payload", "delta", "missing"])
async def test_the_order_stops_at_the_resume_point(
    request: pytest.FixtureRequest, settings: Settings, kind: str, damage: str
) -> None:
    """Checkpoint 3's payload garbled (its delta intact: the chain has 3 deltas), its delta garbled, or its
    delta deleted: the resume point is 2, and delta 3's keys are neither done nor in the order (the
    resumed loop runs them)."""
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        store = open_store(server.url, namespace="t", checkpoint_mirror=None)
    else:
        store = open_store(settings.state_dir)
    async with Engine(store=store, settings=settings, run_queue=False) as engine:
        op_id = (await engine.submit(OperationSpec(type="ledger", params={"items": 3}))).id
        claimed = await store.claim(WorkerInfo(host="t", pid=1), time.time(), 300.0, op_id=op_id)
        assert claimed is not None
        for seq in range(1, 4):
            cp = Checkpoint(
                operation_id=op_id, seq=seq, epoch=claimed.epoch, created_at=time.time(), state={"seq": seq}
            )
            await store.save_checkpoint(cp, ItemDelta(done=[f"k{seq}a", f"k{seq}b"]), 10)
        table, field = {"payload": ("checkpoints", "payload"), "delta": ("deltas", "items")}.get(damage, ("", ""))
        if kind == "local":
            with sqlite3.connect(settings.state_dir / "outlast.db") as conn:
                if damage == "missing":
                    conn.execute("DELETE FROM deltas WHERE op_id=? AND seq=3", (op_id,))
                else:
                    conn.execute(f"UPDATE {table} SET {field}=? WHERE op_id=? AND seq=3", (b'{"state":{}}', op_id))
        else:
            client = server.client()
            key = f"t:cp:{op_id}" if damage == "payload" else f"t:cd:{op_id}"
            if damage == "missing":
                client.hdel(key, "3")
            else:
                client.hset(key, "3", b'{"state":{}}')
        loaded = await store.load_checkpoint(op_id)
        assert loaded is not None
        cp, ledger = loaded
        assert (cp.seq, ledger.done) == (2, {"k1a", "k1b", "k2a", "k2b"})
        assert ledger.order == [["k1a", "k1b"], ["k2a", "k2b"]]


async def test_an_abandoned_context_takes_no_item_after_it(tmp_path: Path) -> None:
    """``abandon`` with no stop asked for before (the attempt settled without its handler): the loop's quick
    turn, which looks at no stop unless something asked for attention, must not hand out another item."""

    ctx = _context(tmp_path, Ledger())
    seen: list[int] = []

    async def body() -> None:
        async for i in ctx.items(list(range(10)), key=lambda i: f"k{i}"):
            seen.append(i)
            if i == 3:
                ctx.abandon()

    task = asyncio.create_task(body())
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert seen == [0, 1, 2, 3], seen
    if not done:  # parked for good: what the engine leaves behind
        task.cancel()
    with contextlib.suppress(BaseException):
        await task


async def test_items_failed_or_skipped_in_this_attempt_are_not_offered_again_by_a_second_loop(
    tmp_path: Path,
) -> None:
    """The loop looks a key up in ``done`` alone until an item fails or is skipped: a second loop over the same
    keys in the same attempt offers none of the first loop's (done, failed, skipped)."""
    ctx = _context(tmp_path, Ledger())
    assert await _run(ctx, list(range(6)), fail={1}, skip={2}) == list(range(6))
    assert await _run(ctx, list(range(8)), fail=set(), skip=set()) == [6, 7]
