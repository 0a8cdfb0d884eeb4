"""Many ``outlast worker`` processes on one real redis-server: a worker SIGKILLed mid-operation, Redis
restarted mid-run, Redis lost with the checkpoint mirror on, control requests from another process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from engine import Engine, Operation, OperationSpec, Status, load_settings, open_store
from engine.store.redis import RedisStore
from tests.fixtures_cli import REPO, Proc, until
from tests.fixtures_redis import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]
T = TypeVar("T")
RANK = {"high": 0, "normal": 1, "low": 2}


class Cluster:
    """Workers and a store view for one namespace on one redis-server."""

    def __init__(self, server: RedisServer, ns: str, mirror: Path | None = None, **env: str) -> None:
        self.server, self.ns, self.mirror = server, ns, mirror
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "OUTLAST_NAMESPACE": ns, **env}
        self.env.pop("OUTLAST_DEBUG", None)
        if mirror is not None:
            self.env["OUTLAST_CHECKPOINT_MIRROR"] = str(mirror)
        self.workers: list[Proc] = []

    def store(self) -> RedisStore:
        return open_store(self.server.url, namespace=self.ns, checkpoint_mirror=self.mirror)  # type: ignore[return-value]

    def read(self, fn: Callable[[RedisStore], Awaitable[T]]) -> T:
        async def go() -> T:
            async with self.store() as store:
                return await fn(store)

        return asyncio.run(go())

    def submit(self, specs: list[OperationSpec]) -> list[str]:
        async def go() -> list[str]:
            settings = load_settings(plugins=["tests.ops_for_tests"])
            async with Engine(store=self.store(), settings=settings, run_queue=False) as engine:
                return [(await engine.submit(s)).id for s in specs]

        return asyncio.run(go())

    def worker(self, concurrency: int = 2, url: str | None = None) -> Proc:
        args = ["--store", url or self.server.url, "--plugin", "tests.ops_for_tests", "worker", "-c", str(concurrency)]
        p = Proc(args, self.env)
        self.workers.append(p)
        return p

    def ops(self, ids: list[str]) -> list[Operation]:
        async def get_all(store: RedisStore) -> list[Operation]:
            return [await store.get(i) for i in ids]

        return self.read(get_all)

    def wait_all(self, ids: list[str], statuses: set[Status], timeout: float = 60.0) -> list[Operation]:
        def settled() -> list[Operation] | None:
            ops = self.ops(ids)
            return ops if all(o.status in statuses for o in ops) else None

        return until(settled, timeout, every=0.25, what=f"all in {statuses}")

    def stop(self) -> None:
        for p in self.workers:
            if p.popen.poll() is None:
                p.signal(signal.SIGTERM)
        for p in self.workers:
            try:
                p.wait(30)
            except Exception:
                p.kill()


@pytest.fixture
def cluster_factory(state_dir: Path):  # type: ignore[no-untyped-def]
    made: list[Cluster] = []

    def make(server: RedisServer, ns: str, **kw: Any) -> Cluster:
        c = Cluster(server, ns, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        for p in c.workers:
            p.kill()


def ledger(
    n: int, items: int, seconds: float, logs: Path, priority: str = "normal", ckpt: float = 0.2, slow_attempts: int = 0
) -> OperationSpec:
    """``slow_attempts``: items take ``seconds`` in that many first attempts only (0: in all); a resume after
    a kill then runs the rest at full speed."""
    params = {"items": items, "seconds": seconds, "slow_attempts": slow_attempts, "log_file": str(logs / f"{n}.log")}
    return OperationSpec(
        type="ledger", params=params, priority=priority, name=f"op{n}", profile={"checkpoint_interval": ckpt}
    )  # type: ignore[arg-type]


def item_counts(path: Path) -> Counter[int]:
    return Counter(int(x) for x in path.read_text().split()) if path.exists() else Counter()


def resumed_from(cluster: Cluster, op_id: str) -> int:
    """The checkpoint seq the engine said it resumed from (its log line)."""
    records, _ = cluster.read(lambda s: s.read_logs(op_id))
    seqs = [int(m.group(1)) for r in records if (m := re.match(r"resuming from checkpoint (\d+)", r.message))]
    assert seqs, f"{op_id} never resumed"
    return seqs[-1]


def resume_point(cluster: Cluster, op_id: str) -> tuple[int, set[str]]:
    """The newest valid checkpoint (what a resume starts from) and the items done as of it."""
    loaded = cluster.read(lambda s: s.load_checkpoint(op_id))
    assert loaded is not None
    return loaded[0].seq, loaded[1].done


def stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (SIGSTOP taken: state T in /proc)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            if (task / "stat").read_text().rpartition(")")[2].split()[0] not in ("T", "t"):
                return False
    return True


class Events(threading.Thread):
    """The store's pub/sub events channel, collected in order."""

    def __init__(self, server: RedisServer, ns: str) -> None:
        super().__init__(daemon=True)
        self.pubsub = server.client().pubsub()
        self.pubsub.subscribe(f"{ns}:events")
        self.pubsub.get_message(timeout=5)  # the subscribe confirmation
        self.seen: list[dict[str, Any]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                m = self.pubsub.get_message(timeout=0.2)
                if m and m["type"] == "message":
                    self.seen.append(json.loads(m["data"]))
        finally:
            self.pubsub.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


def test_three_workers_thirty_operations_one_sigkilled(
    redis_server: RedisServer, cluster_factory: Any, tmp_path: Path
) -> None:
    logs = tmp_path / "items"
    logs.mkdir()
    c = cluster_factory(redis_server, "w3")
    prios = ["low", "high", "normal"] * 10
    ids = c.submit([ledger(n, 16, 0.05, logs, prios[n], slow_attempts=1) for n in range(30)])
    events = Events(redis_server, "w3")
    events.start()
    workers = [c.worker(2) for _ in range(3)]
    victim = workers[0]
    pid = victim.popen.pid

    async def victims_points(store: RedisStore) -> dict[str, tuple[int, set[str]]] | None:
        """The newest valid checkpoint of each operation the victim runs, and the items done as of it (what a
        resume starts from); None when one has none yet."""
        points: dict[str, tuple[int, set[str]]] = {}
        for op in [await store.get(i) for i in ids]:
            if op.status is Status.RUNNING and op.worker and op.worker.pid == pid:
                loaded = await store.load_checkpoint(op.id)
                if loaded is None:
                    return None
                points[op.id] = (loaded[0].seq, loaded[1].done)
        return points

    def victim_stopped_mid_ops() -> dict[str, tuple[int, set[str]]] | None:
        """The victim stopped (SIGSTOP: it writes nothing while it is looked at) with every operation it runs
        past a checkpoint, one past its second: the resume point of each (the killed worker writes nothing
        more). Else it goes on (None). Looked at running, then killed, it had finished an operation and claimed
        the next in between (the look and the kill 0.5 s apart on a loaded machine): an orphan with no
        checkpoint to resume from."""
        victim.signal(signal.SIGSTOP)
        try:
            until(lambda: stopped(pid), 10, every=0.005, what="the victim stopped")
            points = c.read(victims_points)
            if points and all(done for _, done in points.values()) and max(seq for seq, _ in points.values()) >= 2:
                return points
        except BaseException:
            victim.signal(signal.SIGCONT)
            raise
        victim.signal(signal.SIGCONT)
        return None

    points = until(victim_stopped_mid_ops, 60, every=0.05, what="the victim stopped mid-operations, each checkpointed")
    victim.kill()  # SIGKILL, while it is stopped
    orphans = list(points)
    final = c.wait_all(ids, {Status.COMPLETED}, timeout=90)
    c.stop()
    events.stop()

    out = "\n".join(line for w in workers for line in w.out)
    for n, op in enumerate(final):
        assert op.result == {"sum": sum(range(16))}
        assert len(re.findall(rf"{op.id} completed", out)) == 1, f"{op.id} completed more or less than once"
        counts = item_counts(logs / f"{n}.log")
        assert set(counts) == set(range(16))
        if op.id in orphans:
            assert op.attempt == 2 and op.worker is not None and op.worker.pid != pid
            seq, safe = points[op.id]
            assert resumed_from(c, op.id) == seq
            assert safe and all(counts[int(k)] == 1 for k in safe), "an item before the checkpoint was redone"
        else:
            assert op.attempt == 1 and set(counts.values()) == {1}

    # Priorities: the first claims, in the order Redis made them, are all high, then normal, then low.
    first: dict[str, int] = {}
    for ev in events.seen:
        if ev["kind"] == "status" and ev["status"] == "running" and ev["op"] not in first:
            first[ev["op"]] = RANK[prios[ids.index(ev["op"])]]
    assert len(first) == 30
    ranks = list(first.values())
    assert ranks == sorted(ranks), ranks


def test_redis_restart_with_persistence_workers_reconnect(
    redis_factory: Any, cluster_factory: Any, tmp_path: Path
) -> None:
    server = redis_factory(persistence=True)
    logs = tmp_path / "items"
    logs.mkdir()
    c = cluster_factory(server, "rs")
    ids = c.submit([ledger(n, 50, 0.04, logs) for n in range(4)])
    workers = [c.worker(2) for _ in range(2)]
    until(
        lambda: all(o.status is Status.RUNNING and (o.checkpoint_seq or 0) >= 1 for o in c.ops(ids)),
        60,
        every=0.1,
        what="all running with a checkpoint",
    )
    server.stop()
    time.sleep(1.0)
    server.start()
    final = c.wait_all(ids, {Status.COMPLETED}, timeout=60)
    c.stop()
    for n, op in enumerate(final):
        assert op.result == {"sum": sum(range(50))}
        assert set(item_counts(logs / f"{n}.log")) == set(range(50))
    err = "\n".join(line for w in workers for line in w.err)
    assert "connection lost" in err and "connected again" in err
    assert "Traceback" not in err


def test_redis_lost_without_persistence_resumes_from_the_mirror(
    redis_server: RedisServer, cluster_factory: Any, tmp_path: Path
) -> None:
    logs = tmp_path / "items"
    logs.mkdir()
    mirror = tmp_path / "mirror"
    c = cluster_factory(redis_server, "mi", mirror=mirror, OUTLAST_PROGRESS_FLUSH_INTERVAL="0.5")
    url = redis_server.url + "?lease_ttl=2"
    [op_id] = c.submit([ledger(0, 80, 0.04, logs, slow_attempts=1)])
    first = c.worker(1, url)
    # The mirror is written after Redis accepts a checkpoint: wait until it holds the third one too.
    mirrored = mirror / "mi" / "checkpoints" / op_id
    until(
        lambda: (c.ops([op_id])[0].checkpoint_seq or 0) >= 3 and len(list(mirrored.glob("*.ckpt.json"))) >= 3,
        60,
        every=0.05,
        what="three checkpoints, in Redis and in the mirror",
    )
    first.kill()
    redis_server.kill()  # no persistence: everything in Redis is gone
    before = item_counts(logs / "0.log")
    assert 0 < sum(before.values()) < 80
    redis_server.start()
    assert redis_server.client().dbsize() == 0
    seq, safe = resume_point(c, op_id)  # from the mirror (this read also restores the record)
    assert seq >= 3 and safe
    second = c.worker(1, url)
    [op] = c.wait_all([op_id], {Status.COMPLETED}, timeout=60)
    c.stop()
    assert op.result == {"sum": sum(range(80))} and op.attempt == 2
    assert resumed_from(c, op_id) == seq
    counts = item_counts(logs / "0.log")
    assert set(counts) == set(range(80))
    assert all(counts[int(k)] == 1 for k in safe), "an item the mirror's checkpoint had done was redone"
    assert f"resuming from checkpoint {seq} found in the checkpoint mirror" in "\n".join(second.err)


def test_cancel_and_pause_from_another_process_reach_the_right_worker(
    redis_server: RedisServer, cluster_factory: Any, tmp_path: Path
) -> None:
    logs = tmp_path / "items"
    logs.mkdir()
    c = cluster_factory(redis_server, "ct")
    ids = c.submit([ledger(n, 400, 0.05, logs) for n in range(4)])
    workers = [c.worker(2) for _ in range(2)]
    running = c.wait_all(ids, {Status.RUNNING}, timeout=60)
    by_pid = {w.popen.pid: w for w in workers}
    assert {o.worker.pid for o in running if o.worker} == set(by_pid)
    to_cancel, to_pause = running[0], running[1] if running[1].worker != running[0].worker else running[2]
    cli = [*map(str, ["--store", redis_server.url])]
    for op, action in ((to_cancel, "cancel"), (to_pause, "pause")):
        t0 = time.monotonic()
        ctl = Proc([*cli, action, op.id, "--wait", "30"], c.env)
        assert ctl.wait(60) == 0, ctl.err
        print(f"{action} from another process took {time.monotonic() - t0:.2f}s including CLI start-up")
    final = {o.id: o for o in c.ops(ids)}
    assert final[to_cancel.id].status is Status.CANCELLED
    assert final[to_pause.id].status is Status.PAUSED and final[to_pause.id].checkpoint_seq
    for op, word in ((to_cancel, "cancelled"), (to_pause, "paused")):
        owner = by_pid[op.worker.pid]  # type: ignore[union-attr]
        until(lambda op=op, word=word, owner=owner: any(f"{op.id} {word}" in ln for ln in owner.out), 10)
        others = [w for w in workers if w is not owner]
        assert not any(op.id in ln for w in others for ln in w.out)
    rest = [i for i in ids if i not in (to_cancel.id, to_pause.id)]
    assert all(o.status is Status.RUNNING for o in c.ops(rest))
    c.stop()  # SIGTERM pauses the rest with a checkpoint
    assert all(o.status is Status.PAUSED for o in c.ops(rest))


def test_a_short_lease_keeps_a_healthy_workers_lease(
    redis_server: RedisServer, cluster_factory: Any, tmp_path: Path
) -> None:
    """The lease was renewed only with the live progress (every progress_flush_interval, after that
    round's other writes): with lease_ttl=0.5 two healthy workers took one operation from each other for
    ever (attempt 40, items 0-21 run 39 times each); a flush interval over the ttl did it once. The
    heartbeat now runs on its own, three times per ttl."""
    logs = tmp_path / "items"
    logs.mkdir()
    cluster = cluster_factory(redis_server, "lease")
    url = f"{redis_server.url}?lease_ttl=0.5"
    for _ in range(2):
        cluster.worker(1, url=url)
    (op_id,) = cluster.submit([ledger(0, 60, 0.05, logs, ckpt=0.5)])
    try:
        (op,) = cluster.wait_all([op_id], {Status.COMPLETED}, timeout=60)
        assert op.attempt == 1, f"taken over {op.attempt - 1} times"
        assert item_counts(logs / "0.log") == Counter(range(60))
    finally:
        cluster.stop()
