"""The Engine: submit, run, supervise (timeouts, stalls, control requests), checkpoint and resume.

One engine per process; any number of processes may share one store. Every
transition is written to the store before it is announced on the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import sqlite3
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .config import Settings, load_settings
from .context import (
    OperationContext,
    OperationStopped,
    TooManyFailures,
    describe_leftovers,
    format_exception,
    item_of,
    kill_leftovers,
)
from .events import EventBus
from .models import (
    RESUMABLE,
    SETTLED,
    Checkpoint,
    CheckpointSaved,
    Conflict,
    Event,
    InvalidInput,
    ItemFailed,
    LogEmitted,
    LogRecord,
    Operation,
    OperationSpec,
    Priority,
    Progress,
    ProgressReported,
    StaleAttempt,
    Status,
    StatusChanged,
    StoreError,
    TimeoutExtended,
    WorkerInfo,
    new_id,
    validate_id,
)
from .profiles import TimeoutProfile, resume_fields
from .registry import ensure_loaded, get_handler
from .resources import Admission, ResourceMonitor
from .store import Store, open_store
from .store.base import ItemDelta

log = logging.getLogger("outlast.engine")

_STOP_STATUS = {
    "cancel": Status.CANCELLED,
    "pause": Status.PAUSED,
    "shutdown": Status.PAUSED,
    "timeout": Status.TIMED_OUT,
    "stalled": Status.TIMED_OUT,
    "lost": Status.INTERRUPTED,  # never written: see _lease_lost
    "store": Status.INTERRUPTED,
}
TICK = 0.1
_SIGNAL_REASON = {
    signal.SIGINT: "Ctrl-C (SIGINT)",
    signal.SIGTERM: "the process was asked to stop (SIGTERM)",
    signal.SIGHUP: "the terminal hung up (SIGHUP: a dropped SSH session?)",
}
STORE_RETRY = 0.5
LOG_BUFFER_MAX = 10_000


class StoreUnwritable(StoreError):
    """This engine gave up writing to its store: the attempts it ran stay ``running`` under its lock
    until the process exits, and the next engine to open the store finds them interrupted."""


def store_failure(e: BaseException) -> bool:
    """An error of the store itself (disk full, read-only, I/O, connection), not of the request."""
    if isinstance(e, (StaleAttempt, Conflict, InvalidInput, LookupError)):
        return False
    return isinstance(e, (OSError, sqlite3.Error, StoreError)) or type(e).__module__.split(".")[0] == "redis"


def _why(e: BaseException) -> str:
    """The store error in a few words: "No space left on device", "database or disk is full"."""
    text = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__
    return text.splitlines()[0][:200]


@dataclass
class _Run:
    """Supervision state of one operation this engine is running."""

    op: Operation
    ctx: OperationContext
    task: asyncio.Task[Any] | None = None
    started: float = field(default_factory=time.monotonic)
    start_done: int = 0
    last_done: int = -1
    last_beat: int = 0
    last_change: float = field(default_factory=time.monotonic)
    next_checkpoint: float = 0.0
    next_report: float = 0.0
    deadline: float = 0.0
    """Monotonic deadline of this run."""
    effective_timeout: float = 0.0
    total_seen: int | None = None
    stop_at: float | None = None
    live_dirty: bool = True
    extensions: int = 0
    lost: bool = False
    """The store refused this attempt (its lease is gone): it stops and writes nothing more."""
    settling: bool = False
    """The handler is done and its final status is being written (retried while the store fails)."""

    def rate(self, now: float) -> float | None:
        elapsed = now - self.started
        n = self.ctx.done - self.start_done
        return n / elapsed if elapsed >= 0.1 and n > 0 else None


class Engine:
    """``async with Engine(store=open_store(dir)) as engine: ...``"""

    def __init__(
        self,
        store: Store | None = None,
        max_concurrent: int | None = None,
        *,
        settings: Settings | None = None,
        run_queue: bool = True,
        auto_resume: bool | None = None,
        worker_name: str | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.store: Store = store or open_store(self.settings.store or self.settings.state_dir)
        self.max_concurrent = max_concurrent if max_concurrent is not None else self.settings.max_concurrent
        self.run_queue = run_queue
        self.auto_resume = self.settings.auto_resume if auto_resume is None else auto_resume
        self.worker = WorkerInfo(host=socket.gethostname(), pid=os.getpid(), name=worker_name)
        self.bus = EventBus()
        self.resources = ResourceMonitor()
        self._admission = Admission(self.settings.max_memory_percent, self.settings.max_cpu_percent)
        self._runs: dict[str, _Run] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._settling = 0
        """Tasks whose handler has returned and whose final status write is queued: their slots are free."""
        self._wake = asyncio.Event()
        self._closing = False
        self._draining = False
        self._loops: list[asyncio.Task[Any]] = []
        self._log_buf: dict[str, list[LogRecord]] = defaultdict(list)
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._blocked_reason: str | None = None
        self._finished = asyncio.Event()
        self._signal_count = 0
        self.shutdown_reason = "the engine stopped"
        """Why this engine stopped: ends the status line of what it paused on the way ("paused: ...")."""
        self._failing: dict[str, float] = {}
        """Store channels ("database", "logs") failing to write, and since when (monotonic)."""
        self._outage_began = 0.0
        self._said_down = False
        self._said_up = float("-inf")
        self._recover_failing = False
        self._outage_why = ""
        self.store_stopped: set[str] = set()
        """Operations this engine stopped (interrupted) because the store could not be written."""
        self.abandoned: dict[str, str] = {}
        """Operations whose final status this engine could not write (their attempt ends with this process)."""
        self._watch_leases()

    # ---- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        ensure_loaded(self.settings.plugins)
        await self.store.open()
        await self.recover()
        self._loops = [asyncio.create_task(self._supervise(), name="outlast-supervisor")]
        if self.run_queue:
            self._loops.append(asyncio.create_task(self._schedule(), name="outlast-scheduler"))

    async def shutdown(self, grace: float | None = None, reason: str | None = None) -> None:
        """Pause what runs (a checkpoint each), wait up to the grace period, then cancel by force.

        ``reason`` ends the paused operations' status line ("paused: REASON"), so a person can tell a
        Ctrl-C from a dropped session or a dashboard that quit."""
        if reason is not None and self._signal_count == 0:
            self.shutdown_reason = reason
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        grace = self.settings.grace_period if grace is None else grace
        for run in list(self._runs.values()):
            run.ctx._request_stop("shutdown")
            run.stop_at = time.monotonic()
        tasks = [r.task for r in self._runs.values() if r.task]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for t in self._loops:
            t.cancel()
        for t in self._loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self._flush_logs()
        try:
            await self.store.close()
        except Exception as e:
            if not (store_failure(e) and (self.abandoned or self._outage_since is not None)):
                raise

    @property
    def store_failed(self) -> str | None:
        """Why this engine gave up writing (its attempts were left to the next engine), else None."""
        if not self.abandoned:
            return None
        return f"the store cannot be written ({self._outage_why}); {len(self.abandoned)} operation(s) left interrupted"

    @property
    def _outage_since(self) -> float | None:
        """When the longest-failing store channel began failing; None while every write works."""
        return min(self._failing.values()) if self._failing else None

    def _store_failed(self, e: BaseException, channel: str = "database") -> None:
        """A write failed: the first failure of an outage is said in one line, the rest are not (nor a
        new outage within a minute of the last one ending: a store that flaps says so twice a minute at most)."""
        if not self._failing:
            self._outage_began = time.monotonic()
            self._outage_why = _why(e)
            if not self._said_down and time.monotonic() - self._said_up >= 60.0:
                self._said_down = True
                if self._runs:
                    what = (
                        "running work goes on in memory, and stops as interrupted (resumable) unless the store"
                        f" is back within {self.settings.store_outage_limit:g}s"
                    )
                else:
                    what = "nothing is running; retrying"
                log.error("the store cannot be written (%s): %s", self._outage_why, what)
        self._failing.setdefault(channel, time.monotonic())

    def _store_ok(self, channel: str = "database") -> None:
        """A write on ``channel`` succeeded: when no channel fails any more, the outage is over (one line)."""
        if self._failing.pop(channel, None) is not None and not self._failing and self._said_down:
            self._said_down = False
            self._said_up = time.monotonic()
            took = self._said_up - self._outage_began
            log.warning("the store can be written again after %.1fs: work goes on", took)

    def _give_up_writing(self) -> bool:
        """Stop retrying a final status: the outage outlasted its limit, or this engine is stopping."""
        since = self._outage_since
        return since is not None and (
            self._draining or self._closing or time.monotonic() - since >= self.settings.store_outage_limit
        )

    def install_signal_handlers(
        self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    ) -> None:
        """SIGINT/SIGTERM/SIGHUP pause running operations with a checkpoint and stop taking work.

        A second signal stops waiting for handlers (force, after the grace period has been asked).
        """
        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        self._signal_count += 1
        log.info("signal %s: pausing running operations", signal.Signals(sig).name)
        if self._signal_count == 1:
            self.shutdown_reason = _SIGNAL_REASON.get(sig, f"signal {signal.Signals(sig).name}")
        self.drain("shutdown")
        if self._signal_count > 1:
            for run in self._runs.values():
                run.stop_at = time.monotonic() - self.settings.grace_period

    def drain(self, reason: str = "pause") -> None:
        """Take no more work and ask every running operation to stop with a checkpoint."""
        self._draining = True
        for run in self._runs.values():
            run.ctx._request_stop(reason)
            run.stop_at = run.stop_at or time.monotonic()
        self._finished.set() if not self._runs else None

    @property
    def draining(self) -> bool:
        return self._draining

    # ---- the public API ------------------------------------------------------------------------

    async def submit(self, spec: OperationSpec | dict[str, Any]) -> Operation:
        """Validate and queue an operation. Bad input raises InvalidInput and stores nothing."""
        if not isinstance(spec, OperationSpec):
            from pydantic import ValidationError

            from .profiles import one_line

            try:
                spec = OperationSpec.model_validate(spec)
            except ValidationError as e:
                raise InvalidInput(f"operation spec: {one_line(e)}") from None
        handler = get_handler(spec.type)
        params = handler.parse_params(spec.params)
        profile = self.settings.profile(spec.type).merged(spec.profile)
        if spec.total_items is None and handler.estimated_items is not None:
            spec = spec.model_copy(update={"total_items": handler.estimated_items})  # @migrate_timeout_operation's
        now = time.time()
        op = Operation(
            id=new_id(),
            type=spec.type,
            name=spec.name,
            params=params.model_dump(mode="json"),
            priority=spec.priority,
            profile=profile.model_dump(mode="json"),
            profile_overrides=spec.profile,
            tags=spec.tags,
            status=Status.QUEUED,
            created_at=now,
            queued_at=now,
            updated_at=now,
            total_items=spec.total_items,
            timeout=spec.timeout,
            effective_timeout=spec.timeout or profile.effective_timeout(spec.total_items),
            timeout_basis=("fixed by --timeout" if spec.timeout else profile.basis(spec.total_items)),
        )
        try:
            json.dumps(op.params)
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"{spec.type} params: not JSON-serialisable ({e})") from None
        await self.store.create(op)
        self._publish(StatusChanged(operation_id=op.id, status=Status.QUEUED))
        self._wake.set()
        return op

    async def get(self, op_id: str) -> Operation:
        op = await self.store.get(op_id)
        return self._with_live(op)

    async def list(
        self,
        statuses: list[Status] | None = None,
        types: list[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Operation]:
        return [self._with_live(o) for o in await self.store.list_operations(statuses, types, limit, offset)]

    async def resolve(self, prefix: str) -> str:
        return await self.store.resolve(prefix)

    async def checkpoints(self, op_id: str) -> list[Checkpoint]:
        validate_id(op_id)
        return await self.store.checkpoints(op_id)

    async def logs(self, op_id: str, offset: int = 0, limit: int | None = None) -> tuple[list[LogRecord], int]:
        await self._flush_logs()
        return await self.store.read_logs(op_id, offset, limit)

    def events(self) -> AsyncIterator[Event]:
        """Every event from now on (status changes, progress reports, checkpoints, logs)."""
        return self.bus.stream()

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        return self.bus.subscribe(callback)

    def live(self, op_id: str) -> Progress | None:
        """The current progress of an operation this engine runs, straight from its context (cheap)."""
        run = self._runs.get(op_id)
        return self._progress(run, time.monotonic()) if run else None

    @property
    def running_ids(self) -> list[str]:
        return list(self._runs)

    def child_pids(self) -> dict[str, list[int]]:
        return {i: r.ctx.child_pids() for i, r in self._runs.items()}

    async def wait(self, op_id: str, timeout: float | None = None, poll: float = 1.0) -> Operation:
        """Wait until the operation is settled (not queued or running) and return its record.

        Operations this engine runs are seen settle at once (events); others by reading the
        store every ``poll`` seconds, so thousands of waiters do not flood the store.
        """
        validate_id(op_id)
        settled = asyncio.Event()
        self._waiters[op_id].add(settled)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if op_id in self.abandoned:
                    raise StoreUnwritable(self.store_failed or "the store cannot be written")
                op = await self.store.get(op_id)
                if op.status in SETTLED:
                    return op
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"operation {op_id} still {op.status.value} after {timeout}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(settled.wait(), poll if left is None else min(poll, left))
        finally:
            waiters = self._waiters.get(op_id)
            if waiters is not None:
                waiters.discard(settled)
                if not waiters:
                    del self._waiters[op_id]

    async def cancel(self, op_id: str) -> Operation:
        return await self._control(op_id, "cancel")

    async def pause(self, op_id: str) -> Operation:
        return await self._control(op_id, "pause")

    async def _control(self, op_id: str, action: str) -> Operation:
        op = await self.store.get(validate_id(op_id))
        target = Status.CANCELLED if action == "cancel" else Status.PAUSED
        if op.status is Status.QUEUED or (action == "cancel" and op.status in (Status.PAUSED, Status.INTERRUPTED)):
            try:
                new = await self.store.transition(
                    op_id,
                    target,
                    expect=frozenset({op.status}),
                    finished_at=time.time(),
                    status_message=f"{target.value} by user",
                )
            except Conflict:
                op = await self.store.get(op_id)  # claimed meanwhile: it is running now
            else:
                self._publish(StatusChanged(operation_id=op_id, status=target, previous=op.status))
                return new
        if op.status is Status.RUNNING:
            run = self._runs.get(op_id)
            if run is not None:
                run.ctx._request_stop(action)
                run.stop_at = run.stop_at or time.monotonic()
            else:
                await self.store.request_control(op_id, action)  # type: ignore[arg-type]
            return op
        raise Conflict(f"operation {op_id} is {op.status.value}: nothing to {action}")

    async def resume(
        self, op_id: str, checkpoint: int | None = None, profile: dict[str, Any] | None = None
    ) -> Operation:
        """Queue a stopped operation again, from its newest valid checkpoint or the one given;
        ``profile`` changes its timeout profile (and failure threshold) from this attempt on."""
        op = await self.store.get(validate_id(op_id))
        if op.status not in RESUMABLE:
            allowed = ", ".join(sorted(s.value for s in RESUMABLE))
            raise Conflict(f"operation {op_id} is {op.status.value}: only {allowed} operations resume")
        if checkpoint is not None:
            cps = {c.seq: c for c in await self.store.checkpoints(op_id)}
            if checkpoint not in cps:
                have = ", ".join(str(s) for s in sorted(cps)) or "none"
                raise InvalidInput(f"operation {op_id} has no checkpoint {checkpoint} (has: {have})")
            if not cps[checkpoint].valid:
                raise InvalidInput(f"checkpoint {checkpoint} of operation {op_id} fails its checksum")
        changes = resume_fields(op, profile or {})  # InvalidInput before anything is written
        now = time.time()
        new = await self.store.transition(
            op_id,
            Status.QUEUED,
            expect=frozenset({op.status}),
            attempt=op.attempt + 1,
            queued_at=now,
            resume_seq=checkpoint,
            not_before=None,
            error=None,
            status_message=(f"resuming from checkpoint {checkpoint}" if checkpoint is not None else "resuming"),
            finished_at=None,
            **changes,
        )
        self._publish(StatusChanged(operation_id=op_id, status=Status.QUEUED, previous=op.status, message="resume"))
        self._wake.set()
        return new

    async def run_now(self, op_id: str) -> Operation:
        """Claim this queued operation for this engine (ahead of the queue) and run it; returns the
        running record. With ``run_queue=False`` this is how ``outlast run`` runs exactly one operation."""
        op = await self.store.claim(self.worker, time.time(), self.settings.aging_seconds, op_id=validate_id(op_id))
        if op is None:
            current = await self.store.get(op_id)
            raise Conflict(f"operation {op_id} is {current.status.value}: only queued operations can be run here")
        self._start(op)
        return op

    async def set_priority(self, op_id: str, priority: Priority) -> Operation:
        op = await self.store.get(validate_id(op_id))
        if op.status is not Status.QUEUED:
            raise Conflict(f"operation {op_id} is {op.status.value}: only queued work can be re-prioritised")
        new = await self.store.update(op_id, priority=priority)
        self._wake.set()
        return new

    # ---- recovery ------------------------------------------------------------------------------

    async def recover(self) -> list[Operation]:
        """Mark operations left running by dead processes interrupted (and resume them if asked)."""
        found = []
        for op in await self.store.find_orphans():
            try:
                new = await self.store.transition(
                    op.id,
                    Status.INTERRUPTED,
                    epoch=op.epoch,
                    expect=frozenset({Status.RUNNING}),
                    finished_at=time.time(),
                    status_message=f"the process running it ({op.worker}) stopped",
                )
            except (Conflict, StaleAttempt):
                continue
            log.warning("operation %s was left running by %s: interrupted", op.id, op.worker)
            await self._kill_leftovers(op)
            self._publish(StatusChanged(operation_id=op.id, status=Status.INTERRUPTED, previous=Status.RUNNING))
            found.append(new)
            # A store whose workers come and go (Redis leases) asks for orphans to be queued again.
            if self.auto_resume or getattr(self.store, "resume_orphans", False):
                with contextlib.suppress(Conflict):
                    await self.resume(op.id)
        return found

    async def _kill_leftovers(self, op: Operation) -> None:
        """Kill on this host what the dead attempt started (a shell's children outlive their engine)."""
        killed = await asyncio.to_thread(kill_leftovers, op.id, None)
        if killed:
            self._log(op.id, LogRecord(ts=time.time(), level="warning", message=describe_leftovers(killed)))
            await self._flush_logs(op.id)  # now: an engine opened only to read (``outlast ls``) does not flush

    # ---- scheduling ----------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while not self._closing:
            self._wake.clear()
            try:
                while (
                    self.run_queue
                    and not self._draining
                    and not self._closing
                    and len(self._tasks) - self._settling < self.max_concurrent
                ):
                    reason = self._admission.blocked()
                    if reason:
                        if reason != self._blocked_reason:
                            log.warning("not starting new work: %s", reason)
                        self._blocked_reason = reason
                        break
                    self._blocked_reason = None
                    # Claims asked for together are committed together (one fsync for the lot).
                    free = min(32, self.max_concurrent - len(self._tasks) + self._settling)
                    now = time.time()
                    claimed = await asyncio.gather(
                        *(self.store.claim(self.worker, now, self.settings.aging_seconds) for _ in range(free))
                    )
                    for op in claimed:
                        if op is not None:
                            self._start(op)
                    if None in claimed:
                        break
            except Exception as e:
                if store_failure(e):
                    self._store_failed(e)
                else:
                    log.exception("scheduler: claiming work failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)

    def _start(self, op: Operation) -> None:
        task = asyncio.create_task(self._execute(op), name=f"outlast-op-{op.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, op: Operation) -> None:
        """Run one claimed operation to a settled status. Never raises."""
        self._publish(StatusChanged(operation_id=op.id, status=Status.RUNNING, previous=Status.QUEUED))
        try:
            handler = get_handler(op.type)
            params = handler.parse_params(op.params)
            profile = TimeoutProfile.model_validate(op.profile)
            resume = None
            if op.checkpoint_seq or op.resume_seq is not None:
                resume = await self.store.load_checkpoint(op.id, op.resume_seq)
                base = resume[0].seq if resume is not None else 0
                if base != (op.checkpoint_seq or 0):
                    # One chain only: what follows the resume point is abandoned, and this attempt's
                    # checkpoints take its numbers (merged with its deltas, items went uncounted).
                    await self.store.discard_checkpoints_after(op.id, base)
                    op = op.model_copy(update={"checkpoint_seq": base or None})
        except Exception as e:
            await self._settle(op, Status.FAILED, error=format_exception(e))
            return
        ctx = OperationContext(self, op, profile, resume)
        ctx.params = params
        now = time.monotonic()
        run = _Run(op=op, ctx=ctx, start_done=ctx.done, last_done=ctx.done)
        run.next_checkpoint = now + profile.checkpoint_interval
        run.next_report = now + profile.progress_report_interval
        self._set_deadline(run, now)
        self._runs[op.id] = run
        if self._draining or self._closing:
            ctx._request_stop("shutdown")
        if resume is not None:
            ctx.log.info(f"resuming from checkpoint {resume[0].seq} ({ctx.done} items done)")
        try:
            await self._invoke(run, handler.fn, params)
        finally:
            self._runs.pop(op.id, None)
            ctx.kill_children()
            if run.lost:
                await self._lost_attempt_ended(run)
            if not self._runs:
                self._finished.set()
            self._wake.set()

    async def _invoke(self, run: _Run, fn: Callable[..., Any], params: Any) -> None:
        ctx, op = run.ctx, run.op
        while True:
            run.task = asyncio.current_task()
            try:
                result = await fn(ctx, params)
            except OperationStopped as stop:
                await self._stopped(run, stop.reason, stop.checkpointed)
                return
            except asyncio.CancelledError:
                # Forced: the handler did not reach a safe point within the grace period.
                reason = ctx.stop_reason or "shutdown"
                ctx.kill_children()
                await self._stopped(run, reason, checkpointed=False, forced=True)
                return
            except TooManyFailures as e:
                await self._final_checkpoint(run)
                await self._settle(op, Status.FAILED, error=str(e), ctx=ctx)
                return
            except StaleAttempt as e:
                log.warning("%s: %s; this attempt stops without writing", op.id, e)
                return
            except Exception as e:
                key = item_of(ctx, e)
                if key is not None and ctx.stop_reason is None:
                    ctx._current = None
                    try:
                        ctx.fail(key, e)
                    except TooManyFailures as tm:
                        await self._final_checkpoint(run)
                        await self._settle(op, Status.FAILED, error=str(tm), ctx=ctx)
                        return
                    ctx.resume_data = ctx.resume_data or {
                        "seq": ctx._seq,
                        "next_step": ctx.step,
                        "context_data": {},
                        "metadata": {},
                        "processed_items": ctx.done,
                    }
                    continue  # the handler is entered again and skips the failed item
                await self._failed(run, e)
                return
            else:
                await self._completed(run, result)
                return

    async def _completed(self, run: _Run, result: Any) -> None:
        ctx = run.ctx
        try:
            json.dumps(result)
        except (TypeError, ValueError):
            result = json.loads(json.dumps(result, default=str))
        if ctx._new_failed or ctx._new_skipped:
            await self._final_checkpoint(run)  # keep the ledger of failures with the record
        if ctx.total is None or ctx.done > ctx.total:
            ctx.total = ctx.done
        await self._settle(run.op, Status.COMPLETED, result=result, ctx=ctx)

    async def _failed(self, run: _Run, e: Exception) -> None:
        op, ctx = run.op, run.ctx
        policy = ctx.profile.retry
        error = format_exception(e)
        ctx.log.error(f"attempt {op.attempt} failed: {error}")
        if policy.is_transient(e) and op.retries + 1 < policy.max_attempts and not self._closing:
            delay = policy.delay(op.retries + 1, random.random())
            msg = f"retry {op.retries + 1}/{policy.max_attempts - 1} in {delay:.1f}s after {error}"
            ctx.log.warning(msg)
            await self._settle(
                op,
                Status.QUEUED,
                ctx=ctx,
                message=msg,
                retries=op.retries + 1,
                attempt=op.attempt + 1,
                not_before=time.time() + delay,
                queued_at=time.time(),
                resume_seq=None,
                error=error,
            )
            return
        await self._settle(op, Status.FAILED, error=error, ctx=ctx)

    async def _stopped(self, run: _Run, reason: str, checkpointed: bool, forced: bool = False) -> None:
        """Every stop saves a final checkpoint (unless the handler's last act was one), then settles."""
        if run.lost:
            return  # nothing to write: see _lease_lost
        if not checkpointed:
            await self._final_checkpoint(run, always=True, forced=forced)
        status = _STOP_STATUS[reason]
        msg = {
            "cancel": "cancelled by user",
            "pause": "paused by user",
            "shutdown": f"paused: {self.shutdown_reason}",
            "timeout": f"deadline passed ({run.effective_timeout:g}s)",
            "stalled": f"stalled: no progress for {run.ctx.profile.stall_timeout:g}s",
            "store": f"interrupted: the store could not be written for {self.settings.store_outage_limit:g}s"
            f" ({self._outage_why})",
        }[reason]
        if reason == "store":
            self.store_stopped.add(run.op.id)
        if forced:
            msg += f" (forced after {self.settings.grace_period:g}s grace period)"
        seq = run.ctx._seq
        where = f"checkpoint {seq}" if seq else "no checkpoint: resumes from the start"
        await self._settle(run.op, status, ctx=run.ctx, message=f"{msg}; {where}")

    async def _final_checkpoint(self, run: _Run, always: bool = False, forced: bool = False) -> None:
        """Save what is done. ``always``: even when no item changed (a stop: progress, ``ctx.state`` and
        the step are saved too). ``forced``: the handler was cancelled where it stood."""
        ctx = run.ctx
        if run.lost:
            return  # the store refused this attempt: nothing more is written (see _lease_lost)
        cut = ctx._current or (ctx._left[0] if forced and ctx._left else None)
        if cut is not None:
            # A body cut off by force may have changed ctx.state half-way: saving it would let the
            # done-set and the state disagree (part of that item counted twice). The newest durable
            # checkpoint stays the resume point: at most one checkpoint interval is done again.
            ctx.log.warning(f"final checkpoint skipped: item {cut!r} was cut off mid-body")
            ctx._current = None
            return
        if always or ctx._has_unsaved():
            await ctx._save()  # a store that fails is said once (and the status write is still tried)

    async def _settle(
        self,
        op: Operation,
        status: Status,
        *,
        ctx: OperationContext | None = None,
        message: str | None = None,
        error: str | None = None,
        result: Any = None,
        **fields: Any,
    ) -> None:
        """Write the final transition of this attempt (durable first), then announce it."""
        lost = self._runs.get(op.id)
        if lost is not None and lost.lost and lost.op.epoch == op.epoch:
            return  # another attempt owns the operation now
        now = time.time()
        if ctx is not None:
            run = self._runs.get(op.id)
            fields["progress"] = self._progress(run, time.monotonic()) if run else _ctx_progress(ctx)
            fields["total_items"] = ctx.total
            fields["checkpoint_seq"] = ctx._seq or None
        if status is not Status.QUEUED:
            fields.setdefault("finished_at", now)
        if status is Status.COMPLETED:
            fields["result"] = result
        if error is not None:
            fields["error"] = error
        run = self._runs.get(op.id)
        if run is not None:
            run.settling = True
        await self._flush_logs(op.id)
        # The handler is done, so its slot is free: the scheduler's next claim is queued behind this
        # write (the same group commit, usually), never ahead of it on the local store.
        self._settling += 1
        self._wake.set()
        try:
            while True:
                try:
                    await self.store.transition(
                        op.id,
                        status,
                        epoch=op.epoch,
                        expect=frozenset({Status.RUNNING}),
                        status_message=message or error,
                        **fields,
                    )
                    break
                except (StaleAttempt, Conflict) as e:
                    log.warning("%s: final status %s not written: %s", op.id, status.value, e)
                    await self._release(op)
                    return
                except Exception as e:
                    if not store_failure(e):
                        log.exception("%s: final status %s not written", op.id, status.value)
                        await self._release(op)
                        return
                    self._store_failed(e)
                    if self._give_up_writing():
                        # Keep the lock: this process exits, and the next engine finds the attempt
                        # orphaned (our own recover() must not declare it dead while we live).
                        self.abandoned[op.id] = f"{status.value} not written: {_why(e)}"
                        return
                    await asyncio.sleep(STORE_RETRY)
        finally:
            self._settling -= 1
        self._store_ok()
        await self._release(op)
        self._publish(
            StatusChanged(operation_id=op.id, status=status, previous=Status.RUNNING, message=message or error)
        )

    async def _release(self, op: Operation) -> None:
        with contextlib.suppress(Exception):
            await self.store.release(op.id, op.epoch)

    # ---- supervision ---------------------------------------------------------------------------

    def _set_deadline(self, run: _Run, now: float) -> None:
        op, p = run.op, run.ctx.profile
        run.total_seen = run.ctx.total
        run.effective_timeout = op.timeout or p.effective_timeout(run.ctx.total)
        run.deadline = run.started + run.effective_timeout
        run.live_dirty = True

    def _progress(self, run: _Run, now: float) -> Progress:
        ctx = run.ctx
        rate = run.rate(now)
        eta = None
        if rate and ctx.total is not None:
            eta = max(0.0, (ctx.total - ctx.done) / rate)
        return Progress.model_construct(
            done=ctx.done,
            total=ctx.total,
            failed=len(ctx._failed_keys),
            skipped=len(ctx._skipped_keys),
            step=ctx.step,
            message=ctx.message,
            rate=rate,
            eta=eta,
            metrics=dict(ctx.metrics),
            updated_at=time.time(),
        )

    async def _supervise(self) -> None:
        """The engine's clock: deadlines, stalls, checkpoint timers, control polling, live writes."""
        next_poll = next_flush = next_orphans = 0.0
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            try:
                await self._tick(now, next_poll, next_flush, next_orphans)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervisor tick failed")
            if now >= next_poll and self._runs:
                next_poll = now + self.settings.control_poll_interval
            if now >= next_flush:
                next_flush = now + self.settings.progress_flush_interval
            if now >= next_orphans:
                next_orphans = now + 2.0

    async def _tick(self, now: float, next_poll: float, next_flush: float, next_orphans: float) -> None:
        """One turn of the supervisor; the steps whose time has come (``now >= next_*``) run."""
        for run in list(self._runs.values()):
            self._check(run, now)
        if self._outage_since is not None and now - self._outage_since >= self.settings.store_outage_limit:
            for run in self._runs.values():
                if run.ctx.stop_reason is None:
                    run.ctx._request_stop("store")
                    run.stop_at = now
        # Each step on its own: a store that fails is said once (_store_failed), never a traceback per tick.
        if now >= next_poll and self._runs:
            await self._tick_step(self._poll_controls(now))
        if now >= next_flush:
            await self._tick_step(self._flush_live(now))  # says itself when a write worked
            await self._flush_logs()
            if self._runs:
                await self._tick_step(self.store.heartbeat(list(self._runs)))
        if now >= next_orphans:
            await self._recover_quietly()

    async def _tick_step(self, step: Awaitable[Any]) -> None:
        """Run one step of the tick; a store failure is recorded (said once), never a traceback."""
        try:
            await step
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if store_failure(e):
                self._store_failed(e)
            else:
                log.exception("supervisor tick failed")

    async def _recover_quietly(self) -> None:
        """``recover()`` on the clock. Its failing (a lock file it cannot open) is not this engine's work
        failing to be saved: said once (unless the store is already said to fail), and never stops work."""
        try:
            await self.recover()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if not store_failure(e):
                raise
            if not self._recover_failing and not self._failing:
                log.warning("looking for work left by stopped processes failed (%s); retrying", _why(e))
            self._recover_failing = True
        else:
            self._recover_failing = False

    async def _poll_controls(self, now: float) -> None:
        for op_id, action in (await self.store.pending_controls(list(self._runs))).items():
            run = self._runs.get(op_id)
            if run is not None and run.ctx.stop_reason is None:
                run.ctx._request_stop(action)
                run.stop_at = now

    def _check(self, run: _Run, now: float) -> None:
        if run.settling:
            return
        ctx, p = run.ctx, run.ctx.profile
        if ctx.done != run.last_done or ctx._beat != run.last_beat:
            run.last_done, run.last_beat = ctx.done, ctx._beat
            run.last_change = now
            run.live_dirty = True
        if ctx.total != run.total_seen and run.op.timeout is None:
            self._set_deadline(run, now)
        if now >= run.next_checkpoint:
            run.next_checkpoint = now + p.checkpoint_interval
            ctx._mark_checkpoint_due()
        if now >= run.next_report:
            run.next_report = now + p.progress_report_interval
            self._publish(ProgressReported(operation_id=ctx.id, progress=self._progress(run, now)))
        if ctx.stop_reason is None:
            if now - run.last_change > p.stall_timeout:
                ctx.log.warning(f"no progress for {p.stall_timeout:g}s: stopping as stalled")
                ctx._request_stop("stalled")
                run.stop_at = now
            elif now >= run.deadline:
                self._deadline_passed(run, now)
        elif run.stop_at is not None and now - run.stop_at > self.settings.grace_period and run.task:
            if not run.task.done():
                ctx.log.warning(f"no safe point reached within {self.settings.grace_period:g}s: cancelling")
                ctx.kill_children()
                run.task.cancel()
            run.stop_at = float("inf")

    def _deadline_passed(self, run: _Run, now: float) -> None:
        ctx, p = run.ctx, run.ctx.profile
        rate = run.rate(now)
        elapsed = now - run.started
        if run.op.timeout is None and rate and ctx.total is not None and ctx.total > ctx.done:  # fixed is fixed
            needed = (ctx.total - ctx.done) / rate
            if elapsed + needed <= p.max_timeout:
                new_deadline = min(run.started + p.max_timeout, now + needed * 1.25 + 5)
                run.deadline = new_deadline
                run.extensions += 1
                run.live_dirty = True
                reason = (
                    f"deadline extended by {new_deadline - now:.0f}s: {rate:.2f} items/s, "
                    f"{ctx.total - ctx.done} to go, within max_timeout {p.max_timeout:g}s"
                )
                ctx.log.info(reason)
                self._publish(
                    TimeoutExtended(operation_id=ctx.id, deadline=time.time() + (new_deadline - now), reason=reason)
                )
                return
        ctx.log.warning(f"deadline of {run.effective_timeout:g}s passed: stopping")
        ctx._request_stop("timeout")
        run.stop_at = now

    async def _flush_live(self, now: float) -> None:
        updates = []
        wall = time.time()
        for run in list(self._runs.values()):
            if not run.live_dirty:
                continue
            run.live_dirty = False
            fields = {
                "progress": self._progress(run, now).model_dump(mode="json"),
                "deadline": wall + (run.deadline - now),
                "effective_timeout": run.effective_timeout,
                "timeout_basis": ("fixed by --timeout" if run.op.timeout else run.ctx.profile.basis(run.ctx.total)),
                "extensions": run.extensions,
                "total_items": run.ctx.total,
            }
            updates.append((run.op.id, run.op.epoch, fields))
        if updates:
            await self.store.save_live(updates)
            self._store_ok()

    def _with_live(self, op: Operation) -> Operation:
        run = self._runs.get(op.id)
        if run is None or op.status is not Status.RUNNING:
            return op
        now = time.monotonic()
        return op.model_copy(
            update={
                "progress": self._progress(run, now),
                "deadline": time.time() + (run.deadline - now),
                "effective_timeout": run.effective_timeout,
                "total_items": run.ctx.total,
            }
        )

    # ---- lease loss (a store whose attempts can be fenced off, like Redis's, says when) -------------

    def _watch_leases(self) -> None:
        """Ask the store to tell this engine when one of its attempts lost its hold on its operation."""
        if hasattr(self.store, "on_lease_lost"):
            self.store.on_lease_lost = self._lease_lost

    def _lease_lost(self, op_id: str, epoch: int) -> None:
        """Another attempt owns the operation now (or may, its lease having expired): stop this attempt's
        handler at its next item boundary (by force after the grace period), write nothing more (the
        store refuses it anyway), and do not settle the operation."""
        run = self._runs.get(op_id)
        if run is None or run.op.epoch != epoch or run.lost:
            return
        run.lost = True
        run.ctx._request_stop("lost")
        run.stop_at = run.stop_at or time.monotonic()

    async def _lost_attempt_ended(self, run: _Run) -> None:
        log.warning(
            "%s: attempt %d stopped after losing its lease; nothing of it is written any more",
            run.op.id,
            run.op.attempt,
        )
        with contextlib.suppress(Exception):
            await self.store.release(run.op.id, run.op.epoch)  # lets this engine recover it like any orphan

    # ---- called by contexts --------------------------------------------------------------------

    async def _save_checkpoint(self, ctx: OperationContext, cp: Checkpoint, delta: ItemDelta) -> bool:
        """Write a checkpoint; False when the store failed (said once; retried a second later)."""
        t0 = time.perf_counter()
        run = self._runs.get(ctx.id)
        try:
            saved = await self.store.save_checkpoint(cp, delta, self.settings.checkpoints_keep)
        except Exception as e:
            if not store_failure(e):
                raise
            self._store_failed(e)
            if run is not None:
                run.next_checkpoint = time.monotonic() + min(1.0, ctx.profile.checkpoint_interval)
            return False
        self._store_ok()
        latency = time.perf_counter() - t0
        if run is not None:
            run.next_checkpoint = time.monotonic() + ctx.profile.checkpoint_interval
        self._publish(
            CheckpointSaved(
                operation_id=ctx.id, seq=saved.seq, done=saved.processed_items, size=saved.size, latency=latency
            )
        )
        return True

    def _item_failed(self, ctx: OperationContext, key: str, error: str) -> None:
        ctx.log.warning(f"item failed: {key}: {error}")
        self._publish(
            ItemFailed(
                operation_id=ctx.id,
                key=key,
                error=error,
                failures=ctx.failures,
                threshold=ctx.profile.failure_threshold,
            )
        )

    def _log(self, op_id: str, record: LogRecord) -> None:
        self._log_buf[op_id].append(record)
        if self.bus._callbacks or self.bus._queues:
            record.operation_id = op_id
            self._publish(LogEmitted(operation_id=op_id, record=record))

    async def _flush_logs(self, op_id: str | None = None) -> None:
        ids = [op_id] if op_id else list(self._log_buf)
        for i in ids:
            recs = self._log_buf.pop(i, None)
            if recs:
                try:
                    await self.store.append_logs(i, recs)
                    self._store_ok("logs")
                except Exception as e:
                    if not store_failure(e):
                        log.error("%s: writing %d log records failed: %s", i, len(recs), e)
                        continue
                    self._store_failed(e, "logs")
                    # Kept for the next flush (the newest, when the outage is long).
                    self._log_buf[i][:0] = recs[-LOG_BUFFER_MAX:]
                    del self._log_buf[i][: -LOG_BUFFER_MAX or None]

    def _publish(self, event: Event) -> None:
        if isinstance(event, StatusChanged) and event.status in SETTLED:
            for settled in self._waiters.get(event.operation_id, ()):
                settled.set()
        self.bus.publish(event)


def _ctx_progress(ctx: OperationContext) -> Progress:
    return Progress(
        done=ctx.done,
        total=ctx.total,
        failed=ctx.failures,
        step=ctx.step,
        message=ctx.message,
        metrics=dict(ctx.metrics),
        updated_at=time.time(),
    )
