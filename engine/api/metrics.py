"""Prometheus metrics: what the store holds (read at scrape time) and what this server's engine did.

Gauges (operations by status and type, queue depth per priority, slots) are read from the store
when ``/metrics`` is scraped, so they cover every process sharing it. Counters and histograms
(checkpoint latency and size, timeouts, retries, item failures) count the events of this
server's own engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PCounter
from prometheus_client import Histogram as PHistogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..engine import Engine
from ..humanize import escape_controls
from ..models import CheckpointSaved, Event, ItemFailed, NotFound, Priority, Status, StatusChanged, TimeoutExtended

log = logging.getLogger("outlast.api")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = tuple(float(2**k) for k in range(8, 31, 2))  # 256 B .. 1 GiB
_TYPES_CACHE = 10_000


async def counts_by_status_and_type(engine: Engine) -> dict[tuple[Status, str], int]:
    """Operation counts per (status, type) from the store; stores without a grouped count are listed."""
    grouped = getattr(engine.store, "counts_by_type", None)
    if grouped is not None:
        return await grouped()
    out: Counter[tuple[Status, str]] = Counter()
    for op in await engine.store.list_operations(limit=100_000):
        out[(op.status, op.type)] += 1
    return dict(out)


class _StoreSnapshot(Collector):
    """Gauges from the last snapshot taken by ``refresh`` (collect() itself cannot await the store)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.by_status_type: dict[tuple[Status, str], int] = {}
        self.queue: dict[Priority, int] = {}

    async def refresh(self) -> None:
        self.by_status_type = await counts_by_status_and_type(self.engine)
        self.queue = await self.engine.store.queue_depth()

    def collect(self) -> Iterator[Metric]:
        ops = GaugeMetricFamily(
            "outlast_operations", "Operations in the store by status and type", labels=["status", "type"]
        )
        for (status, type_), n in sorted(self.by_status_type.items()):
            ops.add_metric([Status(status).value, escape_controls(type_)], n)
        yield ops
        queue = GaugeMetricFamily("outlast_queue_depth", "Queued operations by priority", labels=["priority"])
        for prio in Priority:
            queue.add_metric([prio.value], self.queue.get(prio, 0))
        yield queue
        yield GaugeMetricFamily(
            "outlast_slots_in_use", "Operations this server's engine is running", value=len(self.engine.running_ids)
        )
        yield GaugeMetricFamily(
            "outlast_slots", "Concurrent operations this server's engine may run", value=self.engine.max_concurrent
        )


class Metrics:
    """The registry of one server, fed by its engine's events."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=True)
        self._store = _StoreSnapshot(engine)
        self.registry.register(self._store)
        r = self.registry
        self.checkpoint_latency = PHistogram(
            "outlast_checkpoint_seconds", "Time to write a checkpoint", ["type"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.checkpoint_size = PHistogram(
            "outlast_checkpoint_bytes", "Stored size of a checkpoint", ["type"], buckets=_SIZE_BUCKETS, registry=r
        )
        self.timeouts = PCounter(
            "outlast_timeouts", "Operations timed out (deadline passed or stalled)", ["type"], registry=r
        )
        self.extensions = PCounter(
            "outlast_timeout_extensions",
            "Deadlines extended because the operation was still progressing",
            ["type"],
            registry=r,
        )
        self.retries = PCounter("outlast_retries", "Attempts requeued after a transient error", ["type"], registry=r)
        self.item_failures = PCounter("outlast_item_failures", "Items that failed", ["type"], registry=r)
        self.finished = PCounter(
            "outlast_operations_settled", "Attempts that settled, by final status", ["status", "type"], registry=r
        )
        self._types: OrderedDict[str, str] = OrderedDict()
        self._queue: asyncio.Queue[Event] = asyncio.Queue(10_000)
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Any = None
        self._recording = asyncio.Lock()
        """Held while an event is recorded, so a scrape waits for one in flight."""

    def start(self) -> None:
        self._unsubscribe = self.engine.subscribe(self._on_event)
        self._task = asyncio.create_task(self._run(), name="outlast-api-metrics")

    async def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def render(self) -> bytes:
        """The exposition text, with the store gauges read now."""
        await self._drain()
        await self._store.refresh()
        return generate_latest(self.registry)

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, CheckpointSaved | ItemFailed | TimeoutExtended | StatusChanged) and not self._queue.full():
            self._queue.put_nowait(ev)

    async def _run(self) -> None:
        while True:
            ev = await self._queue.get()
            async with self._recording:
                await self._record_safely(ev)

    async def _drain(self) -> None:
        """Record what is queued (or being recorded), so a scrape right after an event sees it."""
        async with self._recording:
            while not self._queue.empty():
                await self._record_safely(self._queue.get_nowait())

    async def _record_safely(self, ev: Event) -> None:
        try:
            await self._record(ev)
        except Exception:
            log.exception("metrics: recording %s failed", type(ev).__name__)

    async def _type_of(self, op_id: str) -> str:
        t = self._types.get(op_id)
        if t is None:
            try:
                t = escape_controls((await self.engine.store.get(op_id)).type)  # a stored string, into plain text
            except NotFound:
                t = "unknown"
            self._types[op_id] = t
            while len(self._types) > _TYPES_CACHE:
                self._types.popitem(last=False)
        return t

    async def _record(self, ev: Event) -> None:
        if isinstance(ev, StatusChanged) and ev.previous is not Status.RUNNING:
            return
        t = await self._type_of(ev.operation_id)
        if isinstance(ev, CheckpointSaved):
            self.checkpoint_latency.labels(t).observe(ev.latency)
            self.checkpoint_size.labels(t).observe(ev.size)
        elif isinstance(ev, ItemFailed):
            self.item_failures.labels(t).inc()
        elif isinstance(ev, TimeoutExtended):
            self.extensions.labels(t).inc()
        elif isinstance(ev, StatusChanged):
            if ev.status is Status.QUEUED:
                self.retries.labels(t).inc()
                return
            if ev.status is Status.TIMED_OUT:
                self.timeouts.labels(t).inc()
            self.finished.labels(ev.status.value, t).inc()
