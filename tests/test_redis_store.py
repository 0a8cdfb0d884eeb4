"""The Redis store against a real redis-server, in process: queue order, leases, fencing, checkpoints,
control, logs, validation of what is read back, errors as one line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, OperationSpec, Priority, Settings, Status, load_settings, open_store
from engine.models import (
    Checkpoint,
    Conflict,
    LogRecord,
    NotFound,
    StaleAttempt,
    StoreError,
    WorkerInfo,
)
from engine.outage import StoreUnwritable
from engine.store import mirror as mirror_module
from engine.store.base import ItemDelta
from engine.store.redis import RedisStore
from tests.fixtures_engine import queued_record, until
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis
W = WorkerInfo(host="test", pid=1)


@pytest.fixture
def settings(state_dir: Path) -> Settings:
    return load_settings(state_dir=state_dir, plugins=["tests.ops_for_tests"], grace_period=2.0)


def store_for(server: RedisServer, **kw: object) -> RedisStore:
    kw.setdefault("namespace", "t")
    kw.setdefault("checkpoint_mirror", None)
    return open_store(server.url, **kw)  # type: ignore[return-value]


async def submit(engine: Engine, priority: str = "normal", **params: object) -> str:
    spec = OperationSpec(type="ledger", params=params or {"items": 3}, priority=priority)  # type: ignore[arg-type]
    return (await engine.submit(spec)).id


async def test_claim_order_is_priority_then_fifo_with_aging(redis_server: RedisServer, settings: Settings) -> None:
    async with Engine(store=store_for(redis_server), settings=settings, run_queue=False) as engine:
        order = [("low", 0), ("normal", 1), ("high", 2), ("low", 3), ("high", 4), ("normal", 5)]
        ids = {n: await submit(engine, p) for p, n in order}
        store = engine.store
        assert await store.queue_depth() == {"high": 2, "normal": 2, "low": 2}
        claimed = [await store.claim(W, time.time(), 300.0) for _ in range(6)]
        assert [c.id for c in claimed] == [ids[n] for n in (2, 4, 1, 5, 0, 3)]  # type: ignore[union-attr]
        assert all(c.status is Status.RUNNING and c.epoch == 1 and c.worker == W for c in claimed)  # type: ignore[union-attr]
        assert await store.claim(W, time.time(), 300.0) is None

        moved = await submit(engine, "low")
        await submit(engine, "normal")
        await engine.set_priority(moved, Priority.HIGH)  # moves it to the high queue
        assert (await store.claim(W, time.time(), 300.0)).id == moved  # type: ignore[union-attr]
        assert (await store.claim(W, time.time(), 300.0)) is not None

        old_low = await submit(engine, "low")
        await asyncio.sleep(0.1)
        new_high = await submit(engine, "high")
        # Aging: 0.01 s of waiting is worth a priority level, so the low one waited long enough.
        first = await store.claim(W, time.time(), 0.01)
        assert first is not None and first.id == old_low
        assert (await store.claim(W, time.time(), 0.01)).id == new_high  # type: ignore[union-attr]


async def test_queued_priorities_name_every_queued_one_delayed_or_not(
    redis_server: RedisServer, settings: Settings
) -> None:
    """The queue's ids and priorities as the dashboard's look at a long queue reads them: ready and
    delayed (a retry's not_before) alike, none that is running or settled; the same as the local store's."""
    for store in (store_for(redis_server), open_store(settings.state_dir)):
        async with Engine(store=store, settings=settings, run_queue=False) as engine:
            high = await submit(engine, "high")
            low = await submit(engine, "low")
            normal = await submit(engine, "normal")
            running = await submit(engine, "normal")
            cancelled = await submit(engine, "high")
            await engine.cancel(cancelled)
            assert await store.claim(W, time.time(), 300.0, op_id=running) is not None
            retry = await store.claim(W, time.time(), 300.0, op_id=normal)
            assert retry is not None
            await store.transition(  # a retry, due in an hour (the delayed queue)
                normal,
                Status.QUEUED,
                epoch=retry.epoch,
                expect=frozenset({Status.RUNNING}),
                not_before=time.time() + 3600,
            )
            await store.release(normal, retry.epoch)
            assert await engine.queued_priorities() == {
                high: Priority.HIGH,
                low: Priority.LOW,
                normal: Priority.NORMAL,
            }, type(store).__name__
            assert await store.queue_depth() == {Priority.HIGH: 1, Priority.NORMAL: 1, Priority.LOW: 1}


async def test_retry_backoff_waits_for_not_before(redis_server: RedisServer, settings: Settings) -> None:
    async with Engine(store=store_for(redis_server), settings=settings, run_queue=False) as engine:
        store = engine.store
        op_id = await submit(engine)
        op = await store.claim(W, time.time(), 300.0)
        assert op is not None
        await store.transition(
            op_id, Status.QUEUED, epoch=op.epoch, not_before=time.time() + 0.5, queued_at=time.time()
        )
        assert await store.queue_depth() == {"high": 0, "normal": 1, "low": 0}
        assert await store.claim(W, time.time(), 300.0) is None
        again = await until(lambda: store.claim(W, time.time(), 300.0), timeout=10)
        assert again.id == op_id and again.epoch == 2


async def test_lease_fencing_and_orphans(redis_server: RedisServer, settings: Settings) -> None:
    """A worker that stops renewing its lease is found orphaned; after another attempt takes over, the
    old one can write neither a checkpoint nor a transition (checked inside Redis)."""
    a = store_for(redis_server, lease_ttl=1.0)
    async with Engine(store=store_for(redis_server, lease_ttl=1.0), settings=settings, run_queue=False) as b:
        op_id = await submit(b)
        async with a:
            op = await a.claim(W, time.time(), 300.0, op_id=op_id)
            assert op is not None and op.epoch == 1
            with pytest.raises(Conflict, match="holds its lease"):
                await b.store.transition(op_id, Status.INTERRUPTED, epoch=1, expect=frozenset({Status.RUNNING}))
            for _ in range(3):  # heartbeats keep it held past its TTL
                await a.heartbeat([op_id])
                assert await b.store.find_orphans() == []
                await asyncio.sleep(0.5)
            # a stops renewing (paused by the kernel, cut off): b sees an orphan and requeues it
            orphans = await until(b.store.find_orphans, timeout=10)
            assert [o.id for o in orphans] == [op_id]
            found = await b.recover()
            # b's own clock looks for orphans too: on a loaded machine it found this one first (recover: none).
            assert [o.id for o in found] in ([op_id], [])
            assert (await b.get(op_id)).status is Status.QUEUED  # resume_orphans
            taken = await b.store.claim(W, time.time(), 300.0)
            assert taken is not None and taken.epoch == 2

            cp = Checkpoint(operation_id=op_id, seq=1, epoch=1, created_at=time.time())
            with pytest.raises(StaleAttempt):
                await a.save_checkpoint(cp, ItemDelta(done=["x"]), keep=5)
            with pytest.raises(StaleAttempt):
                await a.transition(op_id, Status.COMPLETED, epoch=1, expect=frozenset({Status.RUNNING}))
            await a.heartbeat([op_id])  # the lost lease is noticed, not renewed
            assert (await b.get(op_id)).epoch == 2
            assert await b.store.load_checkpoint(op_id) is None


async def test_a_redis_that_may_evict_keys_is_said_once_with_what_to_set(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With a maxmemory and an evicting policy, a full Redis drops keys without a word (a queued operation
    gone, a lease evicted from a live worker): said once per process, server and setting, naming noeviction. Not
    said under noeviction, nor without a maxmemory (nothing is ever evicted then)."""
    client = redis_server.client()
    said = []
    for limit, policy in (
        ("0", "allkeys-lru"),
        ("64mb", "noeviction"),
        ("64mb", "allkeys-lru"),
        ("64mb", "volatile-ttl"),
    ):
        client.config_set("maxmemory", limit)
        client.config_set("maxmemory-policy", policy)
        caplog.clear()
        async with store_for(redis_server), store_for(redis_server):  # the second store says nothing more
            pass
        said.append([r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()])
    client.config_set("maxmemory", "0")
    client.config_set("maxmemory-policy", "noeviction")
    assert said[:2] == [[], []], said
    assert [len(s) for s in said[2:]] == [1, 1], said
    assert (
        "maxmemory-policy allkeys-lru" in said[2][0]
        and "64.0M" in said[2][0]
        and "set maxmemory-policy noeviction" in said[2][0]
    )
    assert "volatile-ttl" in said[3][0]


async def test_the_holder_of_a_lease_can_stop_its_own_attempt_as_interrupted(
    redis_server: RedisServer, settings: Settings
) -> None:
    """``interrupted`` is refused while a lease is held, so that nobody interrupts a live worker's
    operation; but the holder itself writes it when it stops for a store outage (Redis out of memory):
    refused too, its final status was never written, and ``outlast run`` waited for it for good."""
    async with Engine(store=store_for(redis_server), settings=settings, run_queue=False) as engine:
        op_id = await submit(engine)
        held = await engine.store.claim(W, time.time(), 300.0, op_id=op_id)
        assert held is not None
        other = store_for(redis_server)
        async with other:
            with pytest.raises(Conflict, match="holds its lease"):
                await other.transition(op_id, Status.INTERRUPTED, epoch=held.epoch, expect=frozenset({Status.RUNNING}))
        done = await engine.store.transition(
            op_id, Status.INTERRUPTED, epoch=held.epoch, expect=frozenset({Status.RUNNING})
        )
        assert done.status is Status.INTERRUPTED
        assert (await engine.get(op_id)).status is Status.INTERRUPTED


async def test_redis_out_of_memory_under_a_run_ends_it_as_a_store_failure_not_a_hang(
    redis_server: RedisServer, settings: Settings
) -> None:
    """Redis at its maxmemory with noeviction refuses every write: the attempt stops after the outage
    limit and its final status is a store failure (the engine gives the operation up to the next one,
    and ``outlast run`` exits 8); before, the refusal of that status as "held" left it waiting forever."""
    settings = settings.model_copy(update={"store_outage_limit": 1.0})
    client = redis_server.client()
    async with Engine(store=store_for(redis_server), settings=settings) as engine:
        op = await engine.submit(OperationSpec(type="ledger", params={"items": 100_000, "seconds": 0.001}))
        await until(lambda: engine.live(op.id) and engine.live(op.id).done >= 10)
        client.set("ballast", b"x" * (4 << 20))
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1mb")
        try:
            with pytest.raises(StoreUnwritable):
                await asyncio.wait_for(engine.wait(op.id), 30)
            assert "maxmemory" in (engine.store_failed or "")
        finally:
            client.config_set("maxmemory", "0")
    assert (await _status(redis_server, op.id)) is Status.RUNNING  # left to the next engine, which recovers it


async def _status(server: RedisServer, op_id: str) -> Status:
    async with store_for(server) as store:
        return (await store.get(op_id)).status


async def test_checkpoints_keep_newest_and_skip_corrupt(
    redis_server: RedisServer, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with Engine(store=store_for(redis_server), settings=settings, run_queue=False) as engine:
        store = engine.store
        op_id = await submit(engine)
        op = await store.claim(W, time.time(), 300.0)
        assert op is not None
        for seq in range(1, 8):
            cp = Checkpoint(
                operation_id=op_id,
                seq=seq,
                epoch=op.epoch,
                created_at=time.time(),
                state={"n": seq},
                processed_items=seq,
                next_step=f"step {seq}",
            )
            await store.save_checkpoint(cp, ItemDelta(done=[f"k{seq}"], failed={"bad": "boom"} if seq == 2 else {}), 3)
        listed = await store.checkpoints(op_id)
        assert [c.seq for c in listed] == [7, 6, 5] and all(c.valid for c in listed)
        assert listed[0].next_step == "step 7"
        assert (await store.get(op_id)).checkpoint_seq == 7
        assert [f.key for f in await store.item_failures(op_id)] == ["bad"]
        cp, ledger = await store.load_checkpoint(op_id)  # type: ignore[misc]
        assert cp.seq == 7 and cp.state == {"n": 7} and ledger.done == {f"k{i}" for i in range(1, 8)}

        redis_server.client().hset(f"t:cp:{op_id}", "7", b'{"state":{"n":666}}')  # tampered
        with caplog.at_level(logging.WARNING, "outlast"):
            cp, ledger = await store.load_checkpoint(op_id)  # type: ignore[misc]
        assert cp.seq == 6 and cp.state == {"n": 6} and "k7" not in ledger.done
        assert "checkpoint 7 (redis) fails its checksum" in caplog.text
        assert [c.valid for c in await store.checkpoints(op_id)] == [False, True, True]
        cp5, _ = await store.load_checkpoint(op_id, seq=5)  # type: ignore[misc]
        assert cp5.seq == 5
        await store.discard_checkpoints_after(op_id, 5)
        assert [c.seq for c in await store.checkpoints(op_id)] == [5]
        assert (await store.get(op_id)).checkpoint_seq == 5


async def test_engine_runs_pauses_resumes_on_redis(
    redis_server: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "items.log"
    async with Engine(store=store_for(redis_server), settings=settings) as engine:
        spec = OperationSpec(
            type="ledger",
            params={"items": 200, "seconds": 0.005, "log_file": str(log)},
            profile={"checkpoint_interval": 0.1},
        )
        op = await engine.submit(spec)
        await until(lambda: engine.live(op.id) and engine.live(op.id).done >= 20)
        await engine.pause(op.id)
        paused = await engine.wait(op.id, timeout=30)
        assert paused.status is Status.PAUSED and paused.checkpoint_seq
        await engine.resume(op.id)
        final = await engine.wait(op.id, timeout=60)
        assert final.status is Status.COMPLETED and final.result == {"sum": sum(range(200))}
        assert final.attempt == 2 and final.worker is not None
        lines = log.read_text().split()
        assert sorted(map(int, lines)) == list(range(200))  # a pause checkpoints: nothing done twice
        records, offset = await engine.logs(op.id)
        assert any("resuming from checkpoint" in r.message for r in records)
        more, offset2 = await engine.logs(op.id, offset)
        assert more == [] and offset2 == offset
        assert await engine.resolve(op.id[:10]) == op.id
        with pytest.raises(NotFound):
            await engine.resolve("zzzz")
        assert (await engine.store.counts())[Status.COMPLETED] == 1
        assert [o.id for o in await engine.list(statuses=[Status.COMPLETED], types=["ledger"])] == [op.id]


async def test_a_write_of_an_attempt_whose_record_is_gone_is_refused_as_a_lost_attempt(
    redis_server: RedisServer, settings: Settings
) -> None:
    """The store's side of it: a checkpoint or final status of a held attempt whose record is gone raises
    StaleAttempt (the attempt is over), not NotFound (which the engine took for the handler's own error);
    a control write of an operation that is gone is still NotFound."""
    async with Engine(store=store_for(redis_server), settings=settings, run_queue=False) as engine:
        store = engine.store
        op_id = await submit(engine)
        op = await store.claim(W, time.time(), 300.0, op_id=op_id)
        assert op is not None
        redis_server.client().flushall()
        cp = Checkpoint(operation_id=op_id, seq=1, epoch=op.epoch, created_at=time.time())
        with pytest.raises(StaleAttempt, match="the operation is gone from the store"):
            await store.save_checkpoint(cp, ItemDelta(done=["x"]), keep=5)
        with pytest.raises(StaleAttempt):  # refused from now on without asking Redis
            await store.transition(op_id, Status.COMPLETED, epoch=op.epoch, expect=frozenset({Status.RUNNING}))
        other = await submit(engine)
        held = await store.claim(W, time.time(), 300.0, op_id=other)
        assert held is not None
        redis_server.client().flushall()
        with pytest.raises(StaleAttempt, match="the operation is gone from the store"):
            await store.transition(other, Status.COMPLETED, epoch=held.epoch, expect=frozenset({Status.RUNNING}))
        with pytest.raises(NotFound):
            await engine.cancel(other)


async def test_an_operation_deleted_from_redis_while_it_runs_ends_its_attempt_without_an_internal_error(
    redis_server: RedisServer, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis emptied under a running attempt (FLUSHALL with no mirror, keys evicted or deleted): its next
    checkpoint found the record missing and raised NotFound into the handler, whose failure path saved
    again and settled with "internal error settling the attempt" and a traceback in the log. Now it is
    a lost attempt, as after a lost lease: it stops and writes nothing more, and no internal error. (A
    long lease: the next heartbeat, which would notice it first, is far off; the next checkpoint is not.)"""
    async with Engine(store=store_for(redis_server, lease_ttl=120.0), settings=settings) as engine:
        spec = OperationSpec(
            type="ledger", params={"items": 10_000, "seconds": 0.002}, profile={"checkpoint_interval": 0.05}
        )
        op = await engine.submit(spec)
        await until(lambda: engine.live(op.id) and engine.live(op.id).done >= 20)
        caplog.clear()
        redis_server.client().flushall()
        await until(lambda: op.id not in engine.running_ids, timeout=20)
        with pytest.raises(NotFound):
            await engine.get(op.id)
    said = [r for r in caplog.records if r.name.startswith("outlast")]
    assert not [r for r in said if r.levelno >= logging.ERROR or r.exc_info], [r.getMessage() for r in said]
    # Whichever write of the attempt noticed first (its checkpoint, or its live progress): a lost attempt.
    assert any("the operation is gone" in r.getMessage() for r in said), [r.getMessage() for r in said]


async def test_logs_are_a_capped_stream_read_by_offset(redis_server: RedisServer, settings: Settings) -> None:
    async with Engine(store=store_for(redis_server), settings=settings, run_queue=False) as engine:
        op_id = await submit(engine)
        recs = [LogRecord(ts=time.time(), level="info", message=f"m{i}") for i in range(5)]
        await engine.store.append_logs(op_id, recs[:3])
        got, off = await engine.store.read_logs(op_id)
        assert [r.message for r in got] == ["m0", "m1", "m2"] and got[0].operation_id == op_id
        await engine.store.append_logs(op_id, recs[3:])
        got, off2 = await engine.store.read_logs(op_id, off)
        assert [r.message for r in got] == ["m3", "m4"] and off2 > off
        last, _ = await engine.store.read_logs(op_id, 0, limit=2)
        assert [r.message for r in last] == ["m3", "m4"]


async def test_control_is_stored_and_published(redis_server: RedisServer, settings: Settings) -> None:
    async with Engine(store=store_for(redis_server), settings=settings, run_queue=False) as engine:
        store = engine.store
        op_id = await submit(engine)
        await store.request_control(op_id, "cancel")  # queued: nothing to ask
        assert await store.pending_controls([op_id]) == {}
        op = await store.claim(W, time.time(), 300.0)
        assert op is not None
        pubsub = redis_server.client().pubsub()
        pubsub.subscribe("t:events")
        await store.request_control(op_id, "pause")
        assert await store.pending_controls([op_id, "0" * 13]) == {op_id: "pause"}
        messages = []
        for _ in range(50):
            m = await asyncio.to_thread(pubsub.get_message, timeout=0.1)
            if m and m["type"] == "message":
                messages.append(json.loads(m["data"]))
            if messages:
                break
        assert messages == [{"kind": "control", "op": op_id, "action": "pause", "epoch": 1}]
        pubsub.close()
        await store.transition(op_id, Status.PAUSED, epoch=op.epoch)
        assert await store.pending_controls([op_id]) == {}


async def test_tampered_record_is_reported_and_skipped(
    redis_server: RedisServer, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with Engine(store=store_for(redis_server), settings=settings, run_queue=False) as engine:
        good, bad, worse = [await submit(engine) for _ in range(3)]
        c = redis_server.client()
        c.hset(f"t:op:{bad}", "progress", "{not json")
        c.hset(f"t:op:{worse}", "status", '"exploded"')
        with pytest.raises(StoreError) as err:
            await engine.get(bad)
        assert str(err.value) == f"operation {bad}: stored record in redis is malformed: field 'progress' is not JSON"
        with pytest.raises(StoreError, match=r"status: Input should be"):
            await engine.get(worse)
        with caplog.at_level(logging.WARNING, "outlast"):
            assert [o.id for o in await engine.list()] == [good]
        assert f"operation {bad}: stored record in redis is malformed" in caplog.text
        claimed = [await engine.store.claim(W, time.time(), 300.0) for _ in range(3)]
        assert [o.id for o in claimed if o] == [good]  # a tampered record is never run


async def test_unreachable_wrong_password_one_line(redis_factory, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    server = redis_factory(password="s3cret-pass")
    url = server.url.replace("s3cret-pass", "wrong-pass")
    for target, expected in (
        (url, f"redis 127.0.0.1:{server.port}: authentication failed: check the user and password in the store URL"),
        (
            server.url.replace(":s3cret-pass@", ""),
            f"redis 127.0.0.1:{server.port}: authentication required: put the password in the store URL"
            " (redis://:PASSWORD@HOST:PORT/DB)",
        ),
        ("redis://127.0.0.1:1/0", "redis 127.0.0.1:1: cannot connect: connection refused"),
        (  # TLS asked of a server without it: a bare timeout said nothing of TLS
            server.url.replace("redis://", "rediss://"),
            f"redis 127.0.0.1:{server.port}: cannot connect: timeout connecting to server (the URL asks for TLS,"
            " rediss://: does the server speak TLS on that port?)",
        ),
    ):
        store = open_store(target, namespace="t", checkpoint_mirror=None)
        with pytest.raises(StoreError) as err:
            await store.open()
        assert str(err.value) == expected
        assert "wrong-pass" not in str(err.value) and "\n" not in str(err.value)
        assert "wrong-pass" not in store.url
    async with store_for(server) as ok:
        assert ok.connected and ":***@" in ok.url


async def test_a_user_whose_acl_denies_a_command_gets_one_line_and_nothing_written(
    redis_server: RedisServer, settings: Settings
) -> None:
    """A user whose ACL denied PUBLISH: each script failed at its event, after its writes (Redis undoes
    none), so a submit said "failed" (exit 8) was stored and queued, and a worker's claim marked running
    an operation it never ran; the line said only the script's hash and line. Now the scripts ask first
    (redis.acl_check_cmd) and write nothing; another denied command is named from the script's line."""
    admin = redis_server.client()
    admin.acl_setuser(
        "nopub", enabled=True, passwords=["+np"], keys=["*"], channels=["*"], commands=["+@all", "-publish"]
    )
    admin.acl_setuser(
        "noincr", enabled=True, passwords=["+ni"], keys=["*"], channels=["*"], commands=["+@all", "-hincrby"]
    )
    base = redis_server.url.replace("redis://", "redis://{}@")
    async with Engine(store=store_for(redis_server), settings=settings, run_queue=False) as engine:
        queued = await submit(engine)
    for user, expected in (
        ("nopub:np", "may not PUBLISH to channel t:events"),
        ("noincr:ni", "its ACL does not allow HINCRBY, which the store runs: grant it (ACL SETUSER <user> +hincrby)"),
    ):
        async with Engine(
            store=open_store(base.format(user), namespace="t", checkpoint_mirror=None),
            settings=settings,
            run_queue=False,
        ) as engine:
            with pytest.raises(StoreError) as err:
                await submit(engine)
            assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
            assert "user_script" not in str(err.value)
            if user.startswith("nopub"):
                with pytest.raises(StoreError, match="may not PUBLISH"):
                    await engine.store.claim(W, time.time(), 300.0)
    async with Engine(store=store_for(redis_server), settings=settings, run_queue=False) as engine:
        ops = await engine.list()
        assert [(o.id, o.status, o.epoch) for o in ops] == [(queued, Status.QUEUED, 0)]  # nothing else written


async def test_a_failing_mirror_is_logged_once_and_survived(
    redis_server: RedisServer, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = tmp_path / "mirror"
    async with Engine(store=store_for(redis_server, checkpoint_mirror=mirror), settings=settings) as engine:
        ckpts = mirror / "t" / "checkpoints"
        ckpts.rmdir()
        ckpts.write_text("not a directory: every checkpoint write to the mirror fails")
        spec = OperationSpec(
            type="ledger", params={"items": 60, "seconds": 0.01}, profile={"checkpoint_interval": 0.05}
        )
        with caplog.at_level(logging.WARNING, "outlast"):
            op = await engine.submit(spec)
            final = await engine.wait(op.id, timeout=60)
        assert final.status is Status.COMPLETED and (final.checkpoint_seq or 0) >= 2
        failures = [r for r in caplog.records if "checkpoint mirror" in r.getMessage() and "failed" in r.getMessage()]
        assert len(failures) == 1 and "Redis goes on" in failures[0].getMessage()
        assert len(await engine.checkpoints(op.id)) >= 2  # Redis has them
        assert (mirror / "t" / "ops" / f"{op.id}.json").exists()  # records still mirrored


@pytest.mark.parametrize("removed", ["namespace", "operation"])
async def test_a_mirror_directory_removed_under_a_run_is_made_again_and_filled_back(
    redis_server: RedisServer, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture, removed: str
) -> None:
    """``rm -rf`` of the mirror's directory (or of one operation's checkpoints) under a running worker: every
    later mirror write failed (logged once) and the mirror held nothing, or a chain of deltas with a hole, so
    a Redis lost after it lost every operation, or resumed the running one from nothing. Now the
    directories are made again and what Redis holds is written back: after a FLUSHALL the mirror restores
    every operation, and the running one's newest checkpoint verifies through its whole chain."""
    mirror = tmp_path / "mirror"
    async with Engine(store=store_for(redis_server, checkpoint_mirror=mirror), settings=settings) as engine:
        done = await engine.submit(OperationSpec(type="ledger", params={"items": 3}))
        await engine.wait(done.id, timeout=30)
        spec = OperationSpec(
            type="ledger", params={"items": 150, "seconds": 0.01}, profile={"checkpoint_interval": 0.05}
        )
        op = await engine.submit(spec)
        ckpts = mirror / "t" / "checkpoints" / op.id
        await until(lambda: len(list(ckpts.glob("*.delta.json"))) >= 3, timeout=30)
        # Gone at once, as when an ``rm -rf`` has finished (the test's own rmtree raced the mirror's writes).
        (mirror / "t" if removed == "namespace" else ckpts).rename(tmp_path / "removed")
        removed_at = (await engine.get(op.id)).checkpoint_seq or 0
        shutil.rmtree(tmp_path / "removed")
        with caplog.at_level(logging.WARNING, "outlast"):
            final = await engine.wait(op.id, timeout=60)
        assert final.status is Status.COMPLETED
        said = [r.getMessage() for r in caplog.records if "checkpoint mirror" in r.getMessage()]
        in_redis = await engine.store.load_checkpoint(op.id)
        assert in_redis is not None
    redis_server.client().flushall()
    async with Engine(
        store=store_for(redis_server, checkpoint_mirror=mirror), settings=settings, run_queue=False
    ) as engine:
        assert {o.id for o in await engine.list()} == {done.id, op.id}
        loaded = await engine.store.load_checkpoint(op.id)
        assert loaded is not None
        cp, ledger = loaded
        # The newest checkpoint, written after the removal, verifies through its whole chain: the same done
        # items as Redis held (how many is the machine's pace: the run's last items need no checkpoint).
        assert cp.seq == final.checkpoint_seq > removed_at + 1, (cp.seq, removed_at)
        assert ledger.done == in_redis[1].done == {str(i) for i in range(len(ledger.done))}
    assert not [m for m in said if "failed" in m], said
    assert any("written back from redis" in m for m in said), said


async def test_a_mirror_directory_removed_in_the_middle_of_a_checkpoint_write_is_not_a_failure(
    redis_server: RedisServer,
    settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The removal landing between the two files of one checkpoint (the delta written, the checkpoint's
    rename then finding no directory): that write said "failed" (CI, once in eight runs under load), though
    the next one wrote everything back. Now it makes the directory again and writes the checkpoint whole."""
    mirror = tmp_path / "mirror"
    real = mirror_module.atomic_write
    removed: list[Path] = []

    def racing(path: Path, data: bytes, sync_dir: bool = True, **options: Any) -> bool:
        if not removed and path.name == f"{3:010d}.ckpt.json":  # after its delta, before its checkpoint
            path.parent.rename(tmp_path / "removed")
            removed.append(path)
        return real(path, data, sync_dir, **options)

    monkeypatch.setattr(mirror_module, "atomic_write", racing)
    async with Engine(store=store_for(redis_server, checkpoint_mirror=mirror), settings=settings) as engine:
        spec = OperationSpec(
            type="ledger", params={"items": 60, "seconds": 0.01}, profile={"checkpoint_interval": 0.05}
        )
        with caplog.at_level(logging.WARNING, "outlast"):
            final = await engine.wait((await engine.submit(spec)).id, timeout=60)
        assert final.status is Status.COMPLETED and removed
    said = [r.getMessage() for r in caplog.records if "checkpoint mirror" in r.getMessage()]
    assert not [m for m in said if "failed" in m], said
    redis_server.client().flushall()
    async with Engine(
        store=store_for(redis_server, checkpoint_mirror=mirror), settings=settings, run_queue=False
    ) as engine:
        loaded = await engine.store.load_checkpoint(final.id)
        assert loaded is not None and loaded[0].seq == final.checkpoint_seq
        done = loaded[1].done  # a completed operation's items after its newest checkpoint are in no checkpoint
        assert done == {str(i) for i in range(len(done))} and len(done) >= 40


async def test_a_new_mirror_on_a_redis_with_operations_is_filled_from_it(
    redis_server: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    """``--checkpoint-mirror`` added to a Redis store that holds operations: the mirror held only what was
    written after, so a Redis lost later lost every operation from before. Now the first write fills it."""
    async with Engine(store=store_for(redis_server), settings=settings) as engine:
        spec = OperationSpec(
            type="ledger", params={"items": 40, "seconds": 0.005}, profile={"checkpoint_interval": 0.02}
        )
        before = await engine.submit(spec)
        final = await engine.wait(before.id, timeout=30)
        queued = await submit(engine)
    mirror = tmp_path / "mirror"
    async with Engine(
        store=store_for(redis_server, checkpoint_mirror=mirror), settings=settings, run_queue=False
    ) as engine:
        await submit(engine)
    redis_server.client().flushall()
    async with Engine(
        store=store_for(redis_server, checkpoint_mirror=mirror), settings=settings, run_queue=False
    ) as engine:
        assert {before.id, queued} <= {o.id for o in await engine.list()}
        loaded = await engine.store.load_checkpoint(before.id)
        assert loaded is not None and loaded[0].seq == final.checkpoint_seq


async def test_a_fifo_in_the_mirror_is_skipped_not_waited_on(
    redis_server: RedisServer, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A FIFO named like a record or a checkpoint in the mirror: the restore after Redis was emptied read
    it and waited for a writer for ever. Now it is skipped with a warning, and the rest is restored."""
    mirror = tmp_path / "mirror"
    async with Engine(
        store=store_for(redis_server, checkpoint_mirror=mirror), settings=settings, run_queue=False
    ) as engine:
        kept, spoilt = await submit(engine), await submit(engine)
    record = mirror / "t" / "ops" / f"{spoilt}.json"
    record.unlink()
    os.mkfifo(record)
    (mirror / "t" / "checkpoints" / kept).mkdir(exist_ok=True)
    os.mkfifo(mirror / "t" / "checkpoints" / kept / f"{1:010d}.ckpt.json")
    redis_server.client().flushall()
    with caplog.at_level(logging.WARNING, "outlast"):
        async with Engine(
            store=store_for(redis_server, checkpoint_mirror=mirror), settings=settings, run_queue=False
        ) as engine:
            listed = await asyncio.wait_for(engine.list(), 10)
            assert [o.id for o in listed] == [kept]
            assert await asyncio.wait_for(engine.store.load_checkpoint(kept), 10) is None
    assert "not a regular file" in caplog.text


async def test_a_mirror_that_never_opened_is_said_once_not_made_at_every_write(
    redis_server: RedisServer, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A mirror whose parent directory is missing (a share not mounted) cannot be used: said once when the
    store opens. Its directories are not made at the first write as if they had been removed under it
    (which could put them on the disk below an unmounted share), nor said to be at every write."""
    mirror = tmp_path / "not-mounted" / "mirror"
    spec = OperationSpec(type="ledger", params={"items": 80, "seconds": 0.01}, profile={"checkpoint_interval": 0.05})
    with caplog.at_level(logging.WARNING, "outlast"):
        async with Engine(store=store_for(redis_server, checkpoint_mirror=mirror), settings=settings) as engine:
            op = await engine.submit(spec)
            final = await engine.wait(op.id, timeout=30)
    assert final.status is Status.COMPLETED and (final.checkpoint_seq or 0) >= 2
    said = [r.getMessage() for r in caplog.records if "checkpoint mirror" in r.getMessage()]
    assert len(said) == 1 and "cannot be used" in said[0], said
    assert not mirror.exists()


async def test_a_redis_over_its_maxmemory_is_said_full_in_words(redis_server: RedisServer) -> None:
    """A Redis past its maxmemory (noeviction) refuses every write: said as "command not allowed when used
    memory > 'maxmemory'. script: <sha>, on @user_script:26". Now in words, with what to do; writes work
    again once there is room, and nothing was written meanwhile."""
    store = store_for(redis_server)
    await store.open()
    client = redis_server.client()
    try:
        client.config_set("maxmemory", 1)
        op = queued_record()
        with pytest.raises(StoreError, match=r"is full \(its used memory is over maxmemory\): raise maxmemory"):
            await store.create(op)
        client.config_set("maxmemory", 0)
        assert await store.list_operations() == []
        await store.create(op)
        assert (await store.get(op.id)).status is Status.QUEUED
    finally:
        client.config_set("maxmemory", 0)
        await store.close()


async def test_a_pause_asked_after_a_cancel_does_not_replace_it(redis_server: RedisServer, settings: Settings) -> None:
    """The pending request was the last one asked: a pause behind a cancel ended the operation paused."""
    async with Engine(store=store_for(redis_server), settings=settings, run_queue=False) as engine:
        op_id = await submit(engine)
        assert await engine.store.claim(W, time.time(), 300.0) is not None
        await engine.store.request_control(op_id, "cancel")
        await engine.store.request_control(op_id, "pause")
        assert await engine.store.pending_controls([op_id]) == {op_id: "cancel"}
