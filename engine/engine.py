"""The Engine: the public facade of Outlast's core (submit, control, read, events, start and shutdown).

One engine per process; any number of processes may share one store. Every transition is written to
the store before it is announced on the bus. The engine delegates the parts:

- ``scheduler.Scheduler`` claims queued work while slots are free;
- ``attempt.Attempt`` runs one claimed operation to a settled status;
- ``supervision.Supervisor`` keeps the clock (deadlines, stalls, control requests, live writes);
- ``outage`` rides out a store that cannot be written; ``lifecycle`` says which action applies when.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from types import FrameType
from typing import Any, NoReturn

from .attempt import Attempt
from .config import Settings, load_settings
from .context import BrokenInto
from .errors import DamagedRecord, KeyTaken, StaleAttempt, requested_unread
from .events import EventBus
from .exitcodes import ExitCode
from .lifecycle import ACTIONS, Action, StopReason, check_action, statuses_of
from .limits import MAX_CONCURRENT
from .looperrors import LoopErrors
from .models import (
    SETTLED,
    Checkpoint,
    Conflict,
    Event,
    InvalidInput,
    LogRecord,
    NotFound,
    Operation,
    OperationSpec,
    OutlastError,
    Priority,
    Progress,
    Status,
    StatusChanged,
    StoreError,
    WorkerInfo,
    validate_id,
)
from .outage import STORE_STUCK, LogBuffer, StoreHealth, StoreUnwritable, store_failure
from .paths import detached_log
from .processes import mark_engine, process_start
from .profiles import SEED_PROFILES, resume_fields, stored_profile
from .registry import HandlerSpec, ensure_loaded, get_handler, other_handler, runnable_types
from .resources import Admission, ResourceMonitor
from .scheduler import Scheduler
from .store import Store, open_store
from .submission import new_operation, params_context
from .supervision import Supervisor, recover_orphans
from .suspend import Suspender
from .threads import TWIN_SIGNAL, let_go

__all__ = ["Engine", "StoreUnwritable", "SubmitUnknown", "store_failure"]

log = logging.getLogger("outlast.engine")


def _request(op: Operation) -> str:
    """What a submit asked for, as one canonical JSON text: two requests with one idempotency key must
    agree on it. JSON, not ``==``: Python holds ``True == 1 == 1.0``, and a request for ``flag=1`` got the
    operation of ``flag=true`` back. Priority and the item estimate are left out: commands change them
    (``outlast priority``, the handler's own count) after the submit."""
    asked = [op.type, op.params, op.name, op.tags, op.profile_overrides, op.timeout]
    return json.dumps(asked, sort_keys=True, separators=(",", ":"))


class SubmitUnknown(StoreError):
    """A submit whose create the store got but did not answer (a frozen Redis): the operation may exist,
    and run, once the store answers. ``operation_id`` is its id, for the face to say how to check before
    submitting again: a retry told "not done" ran the work twice."""

    def __init__(self, message: str, operation_id: str) -> None:
        super().__init__(message)
        self.operation_id = operation_id


def _handler_frame(frame: FrameType | None, op_id: str | None = None) -> str | None:
    """Where the main thread stands (``file:line``) when an attempt's call of a handler is on its stack
    (the frames of awaiting coroutines are, while they run): handler code holds the loop; else None. With
    ``op_id``: that operation's handler only."""
    at = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}" if frame is not None else None
    while frame is not None:
        if frame.f_code is _HANDLER_CALL:
            if op_id is not None and getattr(getattr(frame.f_locals.get("self"), "op", None), "id", None) != op_id:
                return None
            return at
        frame = frame.f_back
    return None


_HANDLER_CALL = Attempt.handler_call_code()


def _broken_into(frame: FrameType | None, at: str, by: str = "a second signal") -> BrokenInto:
    """The ``BrokenInto`` to raise at ``frame``, its attempt (the handler's caller on the stack) told how first: a
    handler that catches it (``except BaseException: return partial``) and returns was "completed at 0/5 items",
    exit 0, after a second Ctrl-C. Only plain assignments: this runs in a signal handler."""
    while frame is not None:
        if frame.f_code is _HANDLER_CALL:
            watch = getattr(frame.f_locals.get("self"), "watch", None)
            if watch is not None:
                watch.broken_in = f"{by} broke into the handler, which held the event loop at {at}"
            break
        frame = frame.f_back
    return BrokenInto(at, by)


BREAK_IN = signal.SIGURG
"""The signal the loop's watch thread sends the main thread to stop a handler that holds the event loop past its
stall timeout and grace period (``Engine._break_in``): ignored by default, and used by no stop or job control."""

ASK_AGAIN_FOR = 30.0
"""Seconds a stop the store did not confirm is asked again for while its attempt's record still says running
(``Engine._ask_again``): until the store judges the attempt orphaned."""


def stopping_already(op_id: str, reason: StopReason, action: Action) -> str:
    """A pause or cancel that would not change how a stopping operation ends (a pause after a cancel, a
    cancel after the store failed): said, not "requested", which the asker read as what would happen."""
    asked = StopReason(action.value).status.value
    return f"operation {op_id} is stopping already ({reason.value}): it ends {reason.status.value}, not {asked}"


def _progress_at(op: Operation, cp: Checkpoint) -> Progress:
    """``op``'s progress as of checkpoint ``cp``, which a resume from it goes on from: what the record shows
    while that resume is queued. It showed the newest checkpoint's count (51.7% where checkpoint 2 is at
    36.7%) until an attempt ran and reported its own; the rate and estimate of the run cut off go too."""
    total = cp.total_items if cp.total_items is not None else op.progress.total
    return op.progress.model_copy(
        update={"done": cp.processed_items, "total": total, "fraction": 0.0, "rate": None, "eta": None}
    )


_SIGNAL_REASON = {
    signal.SIGINT: "Ctrl-C (SIGINT)",
    signal.SIGTERM: "the process was asked to stop (SIGTERM)",
    signal.SIGHUP: "the terminal hung up (SIGHUP: a dropped SSH session?)",
}


_hangup_ignored: bool | None = None
"""Whether SIGHUP was ignored as this process started (``stop_signals``); None until first asked."""


def stop_signals() -> tuple[int, ...]:
    """The signals that stop a headless process's work (``run``, ``worker``, ``serve``, ``watch``): SIGINT,
    SIGTERM, and SIGHUP unless the process was started with it ignored (``nohup outlast run ... &``,
    ``trap '' HUP``). The operator asked for work that outlives the session, as any Unix program under
    nohup does: a handler here paused it at logout ("the terminal hung up"). The disposition is read once,
    at the first call, before any handler of ours replaces it (asyncio's remove_signal_handler leaves
    SIG_DFL behind, which a later look would take for the inherited one)."""
    global _hangup_ignored
    if _hangup_ignored is None:
        _hangup_ignored = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    if _hangup_ignored:
        return (signal.SIGINT, signal.SIGTERM)
    return (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
        self.store: Store = store or open_store(self.settings.store or self.settings.state_dir, settings=self.settings)
        if max_concurrent is not None and (
            max_concurrent.__class__ is not int or not 1 <= max_concurrent <= MAX_CONCURRENT
        ):  # 0 or -1 ran nothing, for ever, where the settings refuse them (True ran one)
            raise InvalidInput(f"max_concurrent={max_concurrent!r}: expected a whole number, 1 to {MAX_CONCURRENT}")
        self.max_concurrent = max_concurrent if max_concurrent is not None else self.settings.max_concurrent
        self._run_queue = run_queue
        self.auto_resume = self.settings.auto_resume if auto_resume is None else auto_resume
        boot, start = process_start(os.getpid()) or (None, None)
        self.worker = WorkerInfo(host=socket.gethostname(), pid=os.getpid(), name=worker_name, boot=boot, start=start)
        mark_engine(boot, os.getpid(), start)
        self.bus = EventBus()
        self._resources: ResourceMonitor | None = None
        self.admission = Admission(self.settings.max_memory_percent, self.settings.max_cpu_percent)
        self._runs: dict[str, Attempt] = {}
        self._unresumable: set[str] = set()
        """Operations left orphaned that ``recover`` could not resume (said once; ``outlast resume`` says why)."""
        self._unconfirmed: dict[str, Action] = {}
        """Stops of work this engine runs that the store did not confirm (asked again if the lease is lost)."""
        self.health = StoreHealth(self.settings.store_outage_limit, lambda: bool(self._runs))
        """Which store writes fail, since when (said once per outage)."""
        self.log_buffer = LogBuffer(self.store, self.health, self.bus, self.settings.log_limit)
        self._scheduler = Scheduler(self, self.admission, self._execute)
        self._supervisor = Supervisor(
            self._runs, self.store, self.settings, self.health, self.log_buffer, self.recover, self._abandon
        )
        self._closing = False
        self._draining = False
        self._loops: list[asyncio.Task[Any]] = []
        self._scheduling: asyncio.Task[Any] | None = None
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._suspender = Suspender(self.store)
        self._signal_count = 0
        self.signalled = asyncio.Event()
        """Set by the first stop signal (``stop_for_signal``): for a face with nothing of its own to stop (a
        watcher), which leaves at once rather than after what it awaits from the store."""
        self._signals_here = 0
        """Signals seen by ``_on_signal_now`` (at once); ``_signal_count``: by the loop, when it turns."""
        self._broken_in = 0
        """``_signals_here`` when a signal last broke into a handler holding the loop."""
        self._last_arrival = (0, -math.inf)
        """The signal ``_on_signal_now`` saw last, and when (monotonic)."""
        self._twins: deque[bool] = deque()
        """For each signal ``_on_signal_now`` saw that the loop has not yet handled: whether it was a twin."""
        self._stop_handlers: dict[int, Callable[..., None]] = {}
        """The stop signals ``install_signal_handlers`` took, and the handler each has while it is ours."""
        self._said_replaced: set[int] = set()
        """Stop signals whose handling a handler replaced (``_keep_stop_signals``): said once each."""
        self._owns_signals = False
        """``install_signal_handlers`` ran: this engine's process ends when it stops (``outlast run``, ``worker``)."""
        self._main_thread = 0
        """The thread that installed the signal handlers (the main one): ``_break_in`` signals it."""
        self._break_for: tuple[str, float, str] | None = None
        """The handler ``_on_break_in`` stops: its operation, when the loop last turned, what broke in."""
        self._hang_watch: asyncio.Task[None] | None = None
        self.before_exit_now: list[Callable[[], None]] = []
        """Run before this process exits without unwinding (``_exit_if_store_hangs``), and before the line that
        says why: what a face must put back as it was (a live view hides the cursor and turns the terminal's
        echo off; the dashboard holds the whole screen and the log's lines)."""
        self.shutdown_reason = "the engine stopped"
        """Why this engine stopped: ends the status line of what it paused on the way ("paused: ...")."""
        self.stop_signal: int | None = None
        """The first signal that drained this engine (SIGINT, SIGTERM, SIGHUP), None if none did: a command
        that only followed work exits 128 + it, as a shell reports a process that signal ended."""
        self.store_stopped: set[str] = set()
        """Operations this engine stopped (interrupted) because the store could not be written."""
        self.abandoned: dict[str, str] = {}
        """Operations whose final status this engine could not write (their attempt ends with this process,
        unless ``write_abandoned`` writes it once the store takes writes again)."""
        self.unwritten: dict[str, Callable[[], Awaitable[Operation | None]]] = {}
        """The final write each abandoned operation still needs (``write_abandoned``)."""
        self._loop_errors = LoopErrors()
        """The loop's exception handler while this engine runs: an error repeated at every turn said once."""

    # ---- start and stop ------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def _say_unknown_profiles(self) -> None:
        """A profile for a type no handler or seed profile has (``[profiles.codebase_indexng]``): said once,
        as it changes nothing. Unknown keys inside a profile were refused; a misspelt type went unnoticed."""
        unknown = sorted(set(self.settings.profiles) - runnable_types() - set(SEED_PROFILES))
        if unknown:
            log.warning(
                "profiles for %s: no such operation type (a misspelt name, or a plugin not loaded here?);"
                " they change nothing",
                ", ".join(unknown),
            )

    def _say_unused_mirror(self) -> None:
        """``checkpoint_mirror`` set where the store mirrors nothing (the local state dir, whose files are the
        durable copy): said once as the engine starts, as it changes nothing. It was ignored in silence, and a
        user counted on copies that were never written."""
        mirror = self.settings.checkpoint_mirror
        if mirror is not None and not hasattr(self.store, "mirror"):
            log.warning(
                "checkpoint_mirror %s changes nothing here: it mirrors a Redis store's records and checkpoints, and"
                " this store is the state dir %s, whose files are the durable copy",
                mirror,
                self.store.url,
            )

    async def start(self) -> None:
        if self._closing:  # started again, it took submits and ran none of them (its scheduler stays stopped)
            raise InvalidInput("this Engine was shut down, and an Engine runs once: make a new one")
        ensure_loaded(self.settings.plugins, builtins=False)  # a built-in type loads when first used
        self._say_unknown_profiles()
        self._say_unused_mirror()
        self._loop_errors.install(asyncio.get_running_loop())
        await self.store.open()
        await self.recover()
        self._loops = [asyncio.create_task(self._supervisor.run(), name="outlast-supervisor")]
        self._start_scheduler()

    @property
    def resources(self) -> ResourceMonitor:
        """The machine's and this process's resource use (psutil), made when first asked for or when the
        engine starts running the queue: a command that reads or queues one operation never samples."""
        if self._resources is None:
            self._resources = ResourceMonitor()
        return self._resources

    @property
    def run_queue(self) -> bool:
        """Whether this engine claims queued work; set it any time (the dashboard's w key). Never while its
        store is read-only: a local store opened on a full disk is written again once there is room, and
        the work its caller asked it to run is claimed from then on."""
        return self._run_queue and not self.store.read_only

    @run_queue.setter
    def run_queue(self, on: bool) -> None:
        self._run_queue = on
        if on and self._loops:  # started without it: claimed nothing until the engine was made again
            self._start_scheduler()

    def _start_scheduler(self) -> None:
        if not self._run_queue or self._closing or self._scheduling is not None:
            return
        _ = self.resources  # its first CPU reading is the baseline of the first sample a dashboard shows
        self._scheduling = asyncio.create_task(self._scheduler.run(), name="outlast-scheduler")
        self._loops.append(self._scheduling)
        self._scheduler.wake()

    async def shutdown(
        self, grace: float | None = None, reason: str | None = None, *, exit_if_store_hangs: bool = False
    ) -> dict[str, Status | None]:
        """Pause what runs (a checkpoint each), wait up to the grace period, then cancel by force.

        ``reason`` ends the paused operations' status line ("paused: REASON"), so a person can tell a
        Ctrl-C from a dropped session or a dashboard that quit. Returns each operation it stopped and the
        status written for it: ``paused`` as a rule, another where it ended meanwhile, None where nothing
        was (a store that did not answer: the next engine finds it interrupted). Said after the stop, not
        assumed before it: the dashboard said "paused, a checkpoint each" of work whose pause a hung disk
        never wrote. A second call returns nothing.

        ``exit_if_store_hangs``: for a process that ends with this shutdown and handles its own signals (the
        dashboard): while it lasts, a store that has not answered one call for ``store_outage_limit`` ends
        the process as a stop signal does to ``outlast run`` (``_exit_if_store_hangs``); a dashboard quit
        on a disk whose fsync never returned waited on it for good."""
        if reason is not None and self._signal_count == 0:
            self.shutdown_reason = reason
        if self._closing:
            return {}
        self._closing = True
        stopped = list(self._runs)
        written: dict[str, Status] = {}

        def note(event: Event) -> None:
            if isinstance(event, StatusChanged) and event.status in SETTLED and event.operation_id in stopped:
                written[event.operation_id] = event.status

        unsubscribe = self.bus.subscribe(note)
        watch = None
        if exit_if_store_hangs and self._hang_watch is None:
            self.exit_if_store_hangs()
            watch = self._hang_watch
        try:
            await self._stop_all(grace)
        finally:
            self._loop_errors.remove()
            unsubscribe()
            if watch is not None:  # the store answered: this process goes on to its own end
                watch.cancel()
                self._hang_watch = None
        return {op_id: written.get(op_id) for op_id in stopped}

    async def _stop_all(self, grace: float | None) -> None:
        self._scheduler.wake()
        grace = self.settings.grace_period if grace is None else grace
        for attempt in list(self._runs.values()):
            attempt.stop(StopReason.SHUTDOWN, restart_grace=True)
        attempts = list(self._runs.values())
        running = {a.watch.task: a for a in attempts if a.watch.task and not a.abandoned}
        pending: set[asyncio.Task[Any]] = set()
        if running:
            _done, pending = await asyncio.wait(running, timeout=grace)
            for t in pending:
                running[t].watch.cancel_task()
            if pending:
                _done, pending = await asyncio.wait(pending, timeout=self.settings.abandon_after)
        for attempt in attempts:  # it catches the cancel too: settled without it, and left out of the loop's end
            if attempt.abandoned or attempt.watch.task in pending:
                await self._abandon(attempt)
        if self._scheduler.tasks:
            await asyncio.wait(list(self._scheduler.tasks), timeout=5)
        for t in self._loops:
            t.cancel()
        for t in self._loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.log_buffer.flush()
        try:
            await self.store.close()
        except Exception as e:
            if not (store_failure(e) and (self.abandoned or self.health.since is not None)):
                raise

    async def write_abandoned(self) -> list[str]:
        """Write the final status of the attempts this engine gave up writing (``abandoned``: the store
        failed past ``store_outage_limit``), for a process that stays once the store takes writes again:
        the dashboard listed them running, under its lock, until it quit. One another engine has taken
        over since (found orphaned, resumed) is left as that engine has it. The ids settled here; while
        the store still fails, none (the rest wait for the next call)."""
        done = []
        for op_id, write in list(self.unwritten.items()):
            try:
                op = await write()
            except Exception as e:
                if store_failure(e):
                    break
                raise
            self.unwritten.pop(op_id, None)
            self.abandoned.pop(op_id, None)
            self.store_stopped.discard(op_id)
            if op is not None:
                self.health.ok()
                self.publish(StatusChanged(operation_id=op_id, status=op.status, previous=Status.RUNNING))
                done.append(op_id)
        return done

    @property
    def store_failed(self) -> str | None:
        """Why this engine gave up writing (its attempts were left to the next engine), else None."""
        if not self.abandoned:
            return None
        return f"the store cannot be written ({self.health.why}); {len(self.abandoned)} operation(s) left interrupted"

    async def suspend_process(self) -> None:
        """Stop this process (SIGSTOP) where the store holds nothing another process waits on, as Ctrl-Z does
        to ``outlast run``; returns once it is continued. The time stopped counts toward no stall or deadline."""
        await self._suspender.stop_process()

    def install_signal_handlers(self, signals: tuple[int, ...] | None = None) -> None:
        """SIGINT/SIGTERM/SIGHUP (``stop_signals``: not SIGHUP under nohup) pause running operations with a
        checkpoint and stop taking work.

        A second signal stops waiting for handlers (force, after the grace period has been asked).
        """
        if threading.current_thread() is not threading.main_thread():
            # Python runs signal handlers in the main thread only: asyncio's refusal came half-way, after
            # this engine took the signals for its own, in words naming none of this.
            raise RuntimeError(
                "install_signal_handlers: signals reach only the main thread; call it from an engine whose"
                " event loop runs there, and stop an engine in another thread with drain() or by leaving its"
                " async with"
            )
        if signals is None:
            signals = stop_signals()
        loop = asyncio.get_running_loop()
        self._owns_signals = True
        self._suspender.install(loop)  # Ctrl-Z stops it, never inside a store write (suspend.py)
        self._stop_handlers = {sig: self._install_stop_signal(loop, sig) for sig in signals}
        self._supervisor.on_tick = self._keep_stop_signals
        self._main_thread = threading.get_ident()
        signal.signal(BREAK_IN, self._on_break_in)
        self._supervisor.break_in = self._break_in

    def _break_in(self, op_id: str, turned: float, by: str) -> None:
        """(From the loop's watch thread.) ``op_id``'s handler holds the event loop past its stall timeout and
        grace period: a signal to the main thread stops it where it stands (``_on_break_in``), as a second
        signal does. Sent again at the watch's next look while the hold lasts."""
        self._break_for = (op_id, turned, by)
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_kill(self._main_thread, BREAK_IN)

    def _on_break_in(self, sig: int, frame: FrameType | None) -> None:
        """Runs in the main thread between two bytecodes (``time.sleep`` returns early for it): when the handler
        of the operation ``_break_in`` named still holds the loop (it has not turned since), stop it as
        stalled (unless a stop is under way) and raise ``BrokenInto`` there. Only plain assignments here."""
        asked, self._break_for = self._break_for, None
        watch = self._supervisor.loop_watch
        if asked is None or watch is None or watch.turned != asked[1]:
            return
        op_id, _turned, by = asked
        attempt = self._runs.get(op_id)
        at = _handler_frame(frame, op_id)
        if attempt is None or at is None:
            return
        if attempt.ctx.stop_reason is None:
            attempt.watch.stop(StopReason.STALLED, time.monotonic())
        raise _broken_into(frame, at, by)

    def _install_stop_signal(self, loop: asyncio.AbstractEventLoop, sig: int) -> Callable[..., None]:
        """The loop's handler of ``sig`` (``stop_for_signal``) and the one that runs at once (``_on_signal_now``),
        which it returns (what ``signal.getsignal`` gives while it is still ours)."""
        loop.add_signal_handler(sig, self.stop_for_signal, sig)
        # asyncio's own handler does nothing (the loop reads the signal when it next turns); this one also
        # counts, and breaks into a handler that holds the loop (_on_signal_now).
        now = self._on_signal_now
        signal.signal(sig, now)
        signal.siginterrupt(sig, False)  # as asyncio leaves it: system calls resume after the signal
        return now

    def _keep_stop_signals(self) -> None:
        """At each tick: a stop signal whose handling a handler (or a library it uses) replaced, with its own
        (``loop.add_signal_handler``, ``signal.signal``) or SIG_IGN, is put back, said once per signal. The
        process ignored every SIGTERM and Ctrl-C after it: the work could not be paused, the process only
        killed."""
        for sig, mine in self._stop_handlers.items():
            if signal.getsignal(sig) is mine:
                continue
            self._stop_handlers[sig] = self._install_stop_signal(asyncio.get_running_loop(), sig)
            if sig in self._said_replaced:
                continue
            self._said_replaced.add(sig)
            running = ", ".join(f"{a.op.type} {a.op.id}" for a in self._runs.values()) or "no operation"
            log.warning(
                "the handling of %s was replaced (running: %s): put back, as Outlast's stop signals pause the"
                " work; a handler must leave them alone",
                signal.Signals(sig).name,
                running,
            )

    def _on_signal_now(self, sig: int, frame: FrameType | None) -> None:
        """Runs in the main thread between two bytecodes, even while a handler holds the event loop with
        blocking code, where the loop's handler (``stop_for_signal``) would wait for it to return: Ctrl-C, and
        Ctrl-C again, did nothing. The second signal the loop has not seen, with the loop not turned for
        half a second, stops that handler by force where it stands (``BrokenInto``); the loop handles
        both signals when it turns again (the other operations pause). Only plain assignments here: this
        interrupts whatever the main thread was doing.

        The same signal again within ``TWIN_SIGNAL`` is the same stop, not a second one: ``timeout -s HUP`` and
        ``kill -- -PGID`` send it to the process and to its group, and the pair, delivered apart, forced a stop
        that nobody asked twice for (the handler cut off mid-item, its final checkpoint skipped)."""
        now = time.monotonic()
        twin = sig == self._last_arrival[0] and now - self._last_arrival[1] < TWIN_SIGNAL
        self._last_arrival = (sig, now)
        self._twins.append(twin)
        if twin:
            return
        self._signals_here += 1
        if self._signals_here - max(self._signal_count, self._broken_in) < 2:
            return
        watch = self._supervisor.loop_watch
        if watch is None or time.monotonic() - watch.turned < 0.5:
            return
        at = _handler_frame(frame)
        if at is None:
            return  # not in a handler (the engine's own code): not stopped half-way
        self._broken_in = self._signals_here
        if self._signal_count == 0:
            self.shutdown_reason = _SIGNAL_REASON.get(signal.Signals(sig), f"signal {signal.Signals(sig).name}")
            self.stop_signal = sig
        raise _broken_into(frame, at)

    def loop_held_for(self) -> float:
        """Seconds the event loop has gone without turning (0 while this engine's clock is not running): for a
        face's own ``signal.signal`` handler, which runs while a handler holds the loop, where the loop's own
        signal handlers wait for it to return."""
        watch = self._supervisor.loop_watch
        return 0.0 if watch is None else watch.held_for()

    def break_into_handler(self, sig: int, frame: FrameType | None, why: str) -> None:
        """Called from a ``signal.signal`` handler (the main thread, between two bytecodes) of a face that
        handles stop signals on the loop itself (the dashboard): when an attempt's handler code runs at
        ``frame`` (it holds the loop), stop it by force where it stands, as a second signal does to ``outlast
        run`` (``BrokenInto``, raised from here; its operation settles as stopped by force, ``why`` ending
        its status line). Returns when no handler code runs there (the engine's own code, a face's): nothing
        is stopped half-way."""
        at = _handler_frame(frame)
        if at is None:
            return
        if not self._draining:
            self.shutdown_reason = why
            if self.stop_signal is None:
                self.stop_signal = sig
        raise _broken_into(frame, at)

    def stop_for_signal(self, sig: int) -> None:
        """What SIGINT, SIGTERM or SIGHUP does to the engine, for a face that handles signals itself (the API
        server): take no more work and stop running work at a safe point, paused, or queued again by an engine
        with auto_resume that runs the queue; a second one forces the stop."""
        if self._twins and self._twins.popleft():
            return  # the one just before it again (``_on_signal_now``)
        self._signal_count += 1
        self.signalled.set()
        log.info(
            "signal %s: %s running operations with a checkpoint",
            signal.Signals(sig).name,
            "queuing again" if self.requeues_stopped else "pausing",
        )
        if self._signal_count == 1:
            self.shutdown_reason = _SIGNAL_REASON.get(signal.Signals(sig), f"signal {signal.Signals(sig).name}")
            if self.stop_signal is None:
                self.stop_signal = sig
        self.drain("shutdown")
        if self._owns_signals:
            self.exit_if_store_hangs()
        if self._signal_count > 2 and self._hang_watch is not None:  # a process that ends with this engine
            # The third: leave now, whatever the stop still waits on (a frozen Redis held `outlast run` 42 s
            # after three Ctrl-Cs: its calls time out by themselves, after retrying for `retry_for`).
            name = signal.Signals(sig).name
            self._exit_now(f"a third stop signal ({name})", ExitCode.STORE if self.store_stuck() else 128 + sig)
        if self._signal_count > 1:
            by = "a second Ctrl-C" if sig == signal.SIGINT else f"a second signal ({signal.Signals(sig).name})"
            for attempt in self._runs.values():
                attempt.watch.force(time.monotonic(), by)

    def store_stuck(self, waited: float = 0.0) -> bool:
        """Whether a way out that does not wait for the store leaves because of it (exit 8, not the code of
        what asked to leave): an outage under way, or a call unanswered for ``STORE_STUCK`` seconds (``waited``:
        how long a face's own read has waited, the dashboard's)."""
        unanswered = getattr(self.store, "unanswered_for", lambda: 0.0)()
        return self.health.since is not None or max(unanswered, waited) >= STORE_STUCK

    def exit_if_store_hangs(self) -> None:
        """From now on, a store that has not answered one call for ``store_outage_limit`` ends this process in
        one line, exit 8 (``_exit_if_store_hangs``): for a face that stops its process on a signal it handles
        itself (the API server), as ``install_signal_handlers`` does for ``outlast run`` and ``worker``."""
        if self._hang_watch is None:
            self._hang_watch = asyncio.ensure_future(self._exit_if_store_hangs())

    async def _exit_if_store_hangs(self) -> None:
        """Asked to stop by a signal, in a process that ends with this engine: once the store has not answered
        one call for ``store_outage_limit`` (a disk whose fsync does not return: a dead NFS server, a hung
        device), say so in one line and exit 8 now. Every write on the way out waits behind that call: an
        ``outlast run`` whose fsync hung ignored three signals and was still there a minute later. As a
        SIGKILL would, this costs what was done since the newest checkpoint written; what it ran stays
        running in the store until the next command finds it interrupted (resumable)."""
        unanswered = getattr(self.store, "unanswered_for", None)
        if unanswered is None:  # a store that cannot tell (a plugin's)
            return
        limit = self.settings.store_outage_limit
        while (waited := unanswered()) < limit:
            await asyncio.sleep(0.1)
        url = getattr(self.store, "url", "")
        because = getattr(self.store, "unanswered_because", "")
        why = f"the store {url} has not answered for {waited:.0f}s" + (f" ({because})" if because else "")
        self._exit_now(why, ExitCode.STORE)

    def _exit_now(self, why: str, code: int) -> NoReturn:
        """Exit now without unwinding, ``why`` said in one line with what stays in the store: as a SIGKILL
        would, this costs what was done since the newest checkpoint written; what it ran stays running in the
        store until the next command finds it interrupted (resumable)."""
        for undo in self.before_exit_now:  # first: the line below lands on the terminal as the user has it
            with contextlib.suppress(Exception):
                undo()
        ids = list(self._runs)
        left = (
            f"operation {ids[0]} stays running in the store until the next command finds it interrupted: resume it then"
            if len(ids) == 1
            else f"operations {', '.join(ids)} stay running in the store until the next command finds them"
            " interrupted: resume them then"
            if ids
            else "nothing was running here"
        )
        log.error("%s: exiting without waiting for it; %s", why, left)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)

    def drain(self, reason: StopReason | str = StopReason.PAUSE) -> None:
        """Take no more work and ask every running operation to stop with a checkpoint."""
        self._draining = True
        for attempt in self._runs.values():
            attempt.stop(StopReason(reason))

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def closing(self) -> bool:
        """``shutdown`` has begun."""
        return self._closing

    @property
    def requeues_stopped(self) -> bool:
        """Orphans, and work stopped because the store could not be written, are queued again here: this
        engine runs the queue with ``auto_resume``."""
        return self.auto_resume and self._run_queue

    @property
    def stopping(self) -> bool:
        """Draining or shutting down: a final status write is not retried through a store outage."""
        return self._draining or self._closing

    # ---- the public API ------------------------------------------------------------------------

    async def submit(self, spec: OperationSpec | dict[str, Any]) -> Operation:
        """Validate and queue an operation. Bad input raises InvalidInput and stores nothing. With an
        idempotency key some operation has already, nothing is queued: that operation is returned."""
        return (await self.submit_once(spec))[0]

    async def submit_once(self, spec: OperationSpec | dict[str, Any]) -> tuple[Operation, bool]:
        """``submit``, and whether the operation returned was submitted before with the spec's idempotency
        key (nothing queued now: a face says so, as a cron job run twice should be told)."""
        op = new_operation(spec, self.settings, self.params_context())
        try:
            op.handle = await self.store.create(op, fresh=True)
        except KeyTaken as e:
            return await self._submitted_before(op, e)
        except StoreError as e:
            if getattr(e, "outcome_unknown", False):  # the store's word: sent, with no reply
                raise SubmitUnknown(str(e), op.id) from None
            raise
        self.publish(StatusChanged(operation_id=op.id, status=Status.QUEUED))
        self._scheduler.wake()
        return op, False

    def params_context(self) -> dict[str, Any] | None:
        """What a type's params may check beyond themselves at submit (``submission.params_context``). Public
        for a face that checks params before it submits them (the dashboard's launch form), so that it checks
        what submit will."""
        return params_context(self.store)

    async def _submitted_before(self, op: Operation, taken: KeyTaken) -> tuple[Operation, bool]:
        """The operation a submit with ``op``'s idempotency key made before (a request sent again), as it
        stands now; a key used for another request (another type, params, name, tags, profile or timeout)
        is refused, naming both. The operation that had the key removed meanwhile: the key is free again,
        and ``op`` is queued (or the one a submit racing this one queued first is returned)."""
        for _ in range(5):
            try:
                first = await self.get(taken.op_id)
            except NotFound:  # removed since its key was read
                try:
                    op.handle = await self.store.create(op, fresh=True)
                except KeyTaken as again:  # another submit with the key won the race to the free key
                    taken = again
                    continue
                self.publish(StatusChanged(operation_id=op.id, status=Status.QUEUED))
                self._scheduler.wake()
                return op, False
            if _request(first) != _request(op):
                raise Conflict(
                    f"idempotency key {taken.key!r} was used for operation {first.id} ({first.type}) with another"
                    " request (type, params, name, tags, profile or timeout): a key names one request; choose a"
                    " new key for new work"
                )
            return first, True
        raise Conflict(f"idempotency key {taken.key!r}: its operation kept being removed and made again; try again")

    async def get(self, op_id: str) -> Operation:
        op = await self.store.get(op_id)
        return self._with_live(op)

    async def list_operations(
        self,
        statuses: list[Status] | None = None,
        types: list[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Operation]:
        """Operations newest first, filtered by status and type (the running ones with live progress)."""
        statuses = statuses_of(statuses)  # InvalidInput for a status that is none
        return [self._with_live(o) for o in await self.store.list_operations(statuses, types, limit, offset)]

    async def resolve(self, prefix: str) -> str:
        return await self.store.resolve(prefix)

    async def queued_priorities(self) -> dict[str, Priority]:
        """Every queued operation's id and priority, read without its record: a look at a long queue (what
        left it, what came, what moved) that costs an index read, not the records (7 s for 100,000)."""
        return await self.store.queued_priorities()

    async def checkpoints(self, op_id: str) -> list[Checkpoint]:
        validate_id(op_id)
        found = await self.store.checkpoints(op_id)
        if not found:
            await self.store.get(op_id)  # NotFound for an unknown id, as get, pause and wait raise; not []
        return found

    async def logs(
        self, op_id: str, offset: int = 0, limit: int | None = None, *, first: int | None = None
    ) -> tuple[list[LogRecord], int]:
        """Its log records from ``offset`` (``Store.read_logs``: a page, the last ``limit``, or the ``first``)."""
        if offset < 0:  # was read as given and returned as the next offset: no page of a log starts there
            raise InvalidInput(f"log offset {offset}: expected 0 or more (an offset a read returned)")
        await self.log_buffer.flush()
        return await self.store.read_logs(op_id, offset, limit, first=first)

    def events(self) -> AsyncIterator[Event]:
        """Every event from now on (status changes, progress reports, checkpoints, logs)."""
        return self.bus.stream()

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        return self.bus.subscribe(callback)

    def live(self, op_id: str) -> Progress | None:
        """The current progress of an operation this engine runs, straight from its context (cheap)."""
        attempt = self._runs.get(op_id)
        return attempt.watch.progress(time.monotonic()) if attempt else None

    @property
    def running_ids(self) -> list[str]:
        return list(self._runs)

    def child_pids(self) -> dict[str, list[int]]:
        return {i: a.ctx.child_pids() for i, a in self._runs.items()}

    async def wait(self, op_id: str, timeout: float | None = None, poll: float = 1.0) -> Operation:
        """Wait until the operation is settled (not queued or running) and return its record.

        Operations this engine runs are seen settle at once (events); others by reading the
        store every ``poll`` seconds, so thousands of waiters do not flood the store. Once this engine stops
        (a signal to ``install_signal_handlers``, ``drain``, ``shutdown``), the record is returned as it is as
        soon as this engine no longer runs the operation: queued again for another process (``auto_resume``
        hands its work back) or run by one, it settles elsewhere, and a program waiting here hung, deaf to
        further SIGTERMs, its ``finally`` never run."""
        validate_id(op_id)
        settled = asyncio.Event()
        self._waiters[op_id].add(settled)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if op_id in self.abandoned:
                    raise StoreUnwritable(self.store_failed or "the store cannot be written")
                op = await self.store.get(op_id)
                if op.status in SETTLED or (self._draining and op_id not in self._runs):
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
        return await self._control(op_id, Action.CANCEL)

    async def pause(self, op_id: str, *, reason: str | None = None) -> Operation:
        """Pause ``op_id``: a queued one at once, a running one at its next item boundary with a checkpoint.

        ``reason``: why, for the status line of an operation this call pauses itself ("paused: REASON"; without
        one, "paused by user"): a process that was to run a queued operation and is stopped by a signal
        while it waits (for a store slot, a retry's backoff) says the signal, as a running one's line does
        ("paused: the terminal hung up (SIGHUP: ...)"), not a pause nobody asked for. A running operation is
        asked to stop, and its attempt writes its own line."""
        return await self._control(op_id, Action.PAUSE, reason)

    async def _control(self, op_id: str, action: Action, reason: str | None = None) -> Operation:
        """Settle a queued (or, to cancel, a paused or interrupted) operation in the store; ask a running
        one to stop with a checkpoint (through the store when another process runs it). ``reason``: the status
        line's why for what is settled here (``pause``)."""
        attempt = self._runs.get(validate_id(op_id))
        if attempt is not None and not attempt.lost:
            return await self._control_here(attempt, action)
        op = await self.store.get(op_id)
        check_action(action, op.status, op_id)
        target = StopReason(action.value).status
        for _ in range(3):
            if op.status is Status.RUNNING:
                break
            try:
                return await self._stopped_as_asked(op, target, reason)
            except Conflict:
                # Changed meanwhile: claimed (running now), or resumed (a paused or interrupted one queued again by
                # another command or a worker's auto_resume: refused as "queued: nothing to cancel", and it ran on,
                # where a cancel of queued work cancels it). Asked again of what it is now.
                op = await self.store.get(op_id)
                check_action(action, op.status, op_id)
        if op.status is not Status.RUNNING:
            raise Conflict(f"operation {op_id} is {op.status.value}: nothing to {action.value}")
        attempt = self._runs.get(op_id)
        if attempt is not None and not attempt.lost:
            return await self._control_here(attempt, action)
        held = await self.store.request_control(op_id, "cancel" if action is Action.CANCEL else "pause")
        if held is not None and held != action.value:  # a pause after a cancel: "pause requested" was untrue
            raise Conflict(stopping_already(op_id, StopReason(held), action))
        try:
            return await self._stop_if_settled(op_id, action, op.epoch, reason) or op
        except StoreError as e:  # stored all the same
            raise requested_unread(op_id, action.value, e) from None

    async def _stop_if_settled(
        self, op_id: str, action: Action, epoch: int, reason: str | None = None
    ) -> Operation | None:
        """A cancel or pause of attempt ``epoch`` whose request reached the store after that attempt left
        ``running`` (the request is stored only while it runs) stops what the operation became, if that keeps it,
        as a cancel or pause of it does: the asker is told "requested", so it must not be dropped. A cancel gives
        up a paused, interrupted or queued one (a retry ran on to the end); a pause keeps an interrupted or queued
        one (found orphaned in between, it was interrupted, then queued again by auto_resume, and ran on). Run
        again by a newer attempt, that one is asked. A request stored before the settle is the store's to
        honour (``Store.transition``'s ``if_cancelled`` and ``if_paused``, recovery's ``expect_control``). None:
        the request stands (still that attempt), or the operation is gone; else the record as it is now (stopped
        as asked, or ended otherwise: completed, failed, timed out)."""
        target = StopReason(action.value).status
        kept = (Status.QUEUED, Status.INTERRUPTED) + ((Status.PAUSED,) if action is Action.CANCEL else ())
        try:
            for _ in range(3):  # changed meanwhile (queued again, claimed): asked again of what it became
                op = await self.store.get(op_id)
                if op.status is Status.RUNNING:
                    if op.epoch == epoch:
                        return None  # still the attempt asked: the request was stored for it
                    epoch = op.epoch
                    await self.store.request_control(op_id, "cancel" if action is Action.CANCEL else "pause")
                    continue
                if op.status not in kept:
                    # Stopped as asked already, or ended (completed, failed, timed out): the record as it is now.
                    # The store kept no request, and the asker, answered with the running record it had read,
                    # was told "requested" of an operation already completed (test_fault_race).
                    return op
                try:
                    return await self._stopped_as_asked(op, target, reason)
                except Conflict:
                    continue
        except NotFound:
            pass  # removed meanwhile
        return None

    async def _stopped_as_asked(self, op: Operation, target: Status, reason: str | None = None) -> Operation:
        """Write ``op``, not running, ``target`` (paused or cancelled) as asked, if its status is still the one
        read (else Conflict), and say so. ``reason``: why, for the status line ("paused: REASON"); None: the
        user asked ("paused by user")."""
        new = await self.store.transition(
            op.id,
            target,
            expect=frozenset({op.status}),
            finished_at=time.time(),
            status_message=f"{target.value}: {reason}" if reason else f"{target.value} by user",
        )
        self.publish(StatusChanged(operation_id=op.id, status=target, previous=op.status))
        return new

    async def _control_here(self, attempt: Attempt, action: Action) -> Operation:
        """Pause or cancel an attempt this engine runs: stopped now (at its next item boundary), before any
        store round trip, then the request stored on the record too.

        The store need not answer for this engine to stop its own work: a dashboard's pause waited on a
        frozen Redis to read the record first, the work ran on meanwhile, and its lease expired, so it was
        queued and run again from an older checkpoint. Stored, the request still stands if this attempt
        loses its lease before it writes its status (whoever finds it orphaned pauses or cancels it, not
        queues it again); not confirmed, the caller is told (a StoreError saying what stopped here)."""
        op_id = attempt.op.id
        check_action(action, Status.RUNNING, op_id)
        attempt.stop(StopReason(action.value))
        reason = attempt.ctx.stop_reason  # the first stop asked stands, but a cancel replaces most
        if reason is not None and reason.status is not StopReason(action.value).status:
            raise Conflict(stopping_already(op_id, reason, action))
        try:
            held = await self.store.request_control(op_id, "cancel" if action is Action.CANCEL else "pause")
            stopped = await self._stop_if_settled(op_id, action, attempt.op.epoch)
        except StoreError as e:
            if self._unconfirmed.get(op_id) is not Action.CANCEL:  # a cancel wins over a pause
                self._unconfirmed[op_id] = action
            raise StoreError(
                f"operation {op_id}: stopping here to {action.value} (this process runs it: it stops at its next"
                f" item, and its status is written once the store answers); the store did not confirm the request:"
                f" {e}"
            ) from None
        if held is not None and held != action.value:  # a cancel another process stored, not polled yet
            raise Conflict(stopping_already(op_id, StopReason(held), action))
        return stopped or self._with_live(attempt.op)

    async def resume(
        self,
        op_id: str,
        checkpoint: int | None = None,
        profile: dict[str, Any] | None = None,
        *,
        keep_place: bool = False,
    ) -> Operation:
        """Queue a stopped operation again, from its newest valid checkpoint or the one given;
        ``profile`` changes its timeout profile (and failure threshold) from this attempt on. ``keep_place``:
        queued where it was queued before, not behind work submitted since (work handed from one process to
        another, as the dashboard's hand-over on quit does; a person's resume queues it now). Its retry policy
        starts again: with the retries of the attempts before used up, a resume failed at its first transient
        error."""
        return await self._requeue(op_id, checkpoint, profile, keep_place=keep_place, retries=0)

    async def _resume_orphan(self, op_id: str) -> Operation:
        """``auto_resume`` of an operation found orphaned: queued again only while it is interrupted. A pause
        written meanwhile (one asked again: ``_ask_again``) was resumed over. Never one this engine was asked to
        stop and could not store the request of (its attempt lost its lease meanwhile): queued again by this
        engine's own recovery before that attempt ended, it ran on until the request was asked again. Queued in
        its place, as work a stopped worker hands back: queued anew, it went behind work submitted since, and a
        worker killed again and again (the OOM killer) kept sending it to the back."""
        if op_id in self._unconfirmed:
            raise Conflict(f"operation {op_id}: a {self._unconfirmed[op_id].value} asked here is not stored yet")
        return await self._requeue(op_id, None, None, only=Status.INTERRUPTED, keep_place=True)

    async def _requeue(
        self,
        op_id: str,
        checkpoint: int | None,
        profile: dict[str, Any] | None,
        only: Status | None = None,
        keep_place: bool = False,
        retries: int | None = None,
    ) -> Operation:
        """``retries``: the automatic retries counted as used from here (None: those of the attempts before)."""
        op = await self.store.get(validate_id(op_id))
        if only is not None and op.status is not only:
            raise Conflict(f"operation {op_id} is {op.status.value}, not {only.value}")
        check_action(Action.RESUME, op.status, op_id)
        stored_profile(op)  # damaged: StoreError, before anything is written
        handler: HandlerSpec | None
        try:
            handler = get_handler(op.type)
        except InvalidInput:
            handler = None  # a plugin not loaded here: the attempt says so where it runs
        if other_handler(op.type, op.handler) is not None:
            handler = None  # submitted for another handler of its type: its params are that one's, checked there
        if handler is not None:
            try:
                handler.parse_params(op.params)
            except InvalidInput as e:
                why = (
                    ""
                    if handler.source == "builtin"
                    else f": did the params model of {handler.source} change since it was submitted? Resume it where"
                    " the version it was submitted with is loaded, or submit it again"
                )
                raise DamagedRecord(f"operation {op_id}: its stored params no longer validate ({e}){why}") from None
        if checkpoint is not None:
            cps = {c.seq: c for c in await self.store.checkpoints(op_id)}
            # Not found, as GET .../checkpoints/SEQ and `outlast resume --checkpoint` say it (404, exit 3):
            # it was answered as bad input (422) here while the other faces said "not found".
            if checkpoint not in cps:
                have = ", ".join(str(s) for s in sorted(cps)) or "none"
                raise NotFound(f"operation {op_id} has no checkpoint {checkpoint} (has: {have})")
            if not cps[checkpoint].valid:
                valid = ", ".join(str(s) for s in sorted(s for s, c in cps.items() if c.valid)) or "none"
                raise NotFound(
                    f"operation {op_id} has no valid checkpoint {checkpoint}: it fails its checksum (valid: {valid})"
                )
        changes = resume_fields(op, profile or {})  # InvalidInput before anything is written
        if checkpoint is not None:
            changes["progress"] = _progress_at(op, cps[checkpoint])
        now = time.time()
        new = await self.store.transition(
            op_id,
            Status.QUEUED,
            expect=frozenset({op.status}),
            attempt=op.attempt + 1,
            queued_at=op.queued_at if keep_place else now,
            retries=op.retries if retries is None else retries,
            resume_seq=checkpoint,
            not_before=None,
            backoff_from=None,
            error=None,
            status_message=(f"resuming from checkpoint {checkpoint}" if checkpoint is not None else "resuming"),
            finished_at=None,
            **changes,
        )
        self.publish(StatusChanged(operation_id=op_id, status=Status.QUEUED, previous=op.status, message="resume"))
        self._scheduler.wake()
        return new

    async def run_now(self, op_id: str) -> Operation:
        """Claim this queued operation for this engine (ahead of the queue) and run it; returns the
        running record. With ``run_queue=False`` this is how ``outlast run`` runs exactly one operation."""
        op = await self.store.claim(self.worker, time.time(), self.settings.aging_seconds, op_id=validate_id(op_id))
        if op is None:
            current = await self.store.get(op_id)
            if current.status is Status.QUEUED and (slots := await self.store.get_slots()) is not None:
                raise Conflict(f"operation {op_id} stays queued: all {slots} store slots are in use (outlast slots)")
            raise Conflict(f"operation {op_id} is {current.status.value}: only queued operations can be run here")
        self._scheduler.start(op)
        return op

    async def set_priority(self, op_id: str, priority: Priority) -> Operation:
        """Re-prioritise queued work. Fenced by the epoch read with its status: a claim that lands between the
        two moves it on, and the change is refused as for work found running (it was written on the running
        operation, and the command said it was done)."""
        for _ in range(3):  # claimed, stopped and queued again meanwhile: looked at again
            op = await self.store.get(validate_id(op_id))
            check_action(Action.PRIORITY, op.status, op_id)
            try:
                new = await self.store.update(op_id, epoch=op.epoch, priority=priority)
            except StaleAttempt:
                continue
            self._scheduler.wake()
            return new
        raise Conflict(f"operation {op_id} is changing hands: try again")

    async def remove(
        self, op_id: str, *, statuses: frozenset[Status] | None = None, ended_before: float | None = None
    ) -> None:
        """Delete a settled operation with its checkpoints, item records and logs (its outputs stay).
        Fenced: a resume or claim that lands first wins, and nothing is removed (Conflict). ``statuses``: only
        in one of these (those a ``clean`` listed it in): one resumed and paused since it was listed cancelled
        is settled again, but not as listed, and was removed, resumable work lost (Conflict now).
        ``ended_before``: only if it ended (or, never run, was made) before this time (``clean --older-than``):
        one resumed and finished anew since it was listed is not old any more (Conflict); checked on the record
        read just before the fenced delete, which fences the status only."""
        op = await self.store.get(validate_id(op_id))
        check_action(Action.REMOVE, op.status, op_id)
        allowed = ACTIONS[Action.REMOVE] if statuses is None else ACTIONS[Action.REMOVE] & statuses
        if op.status not in allowed:
            raise Conflict(f"operation {op_id} is {op.status.value} now, not {' or '.join(sorted(allowed))}")
        if ended_before is not None and op.ended_at > ended_before:
            raise Conflict(f"operation {op_id} ended since it was listed: not removed")
        await self.store.delete(op_id, expect=allowed)
        # The output of a detached run (`outlast run --detach`) is its log too: it stayed behind for ever.
        with contextlib.suppress(OSError):
            detached_log(self.settings.state_dir, op_id).unlink()

    # ---- recovery ------------------------------------------------------------------------------

    async def recover(self) -> list[Operation]:
        """Mark operations left running by dead processes interrupted (and resume them if asked); a store
        that cannot be written is read as it is.

        ``auto_resume`` queues them again only in an engine that runs the queue (a worker, the dashboard
        unless watch-only): one that only reads (``ls``, ``show``, ``watch``, a foreground ``run``) left
        them queued with nothing to run them. There they stay interrupted, for ``outlast resume`` (or the
        dashboard's r), until an engine with ``auto_resume`` that runs the queue resumes them."""
        if self.store.read_only:
            return []
        # A store whose workers come and go (Redis leases) asks for orphans to be queued again: its
        # queue is shared by workers on every machine, whichever engine finds the orphan.
        requeue = self.requeues_stopped or getattr(self.store, "resume_orphans", False)
        resume = self._resume_orphan if requeue else None
        found = await recover_orphans(self.store, self.log_buffer, self.publish, resume)
        left = getattr(self.store, "left_orphaned", None)
        if resume is not None and left is not None:
            # Found orphaned by an engine that runs no queue (`ls`, `watch`: every 2 s, often first) and left
            # interrupted: auto_resume resumed only what this engine found itself.
            for op_id in await left():
                if op_id in self._unresumable:
                    continue
                try:
                    await resume(op_id)
                except (Conflict, NotFound):
                    pass  # resumed, cancelled or removed by someone else meanwhile
                except OutlastError as e:  # its record no longer validates: said once, left to `outlast resume`
                    self._unresumable.add(op_id)
                    log.warning("operation %s was left interrupted by a stopped process; not resumed: %s", op_id, e)
        return found

    # ---- running attempts (the scheduler calls ``_execute``; attempts call the host members) -------

    async def _execute(self, op: Operation) -> None:
        """Run one claimed operation to a settled status. Never raises."""
        self.publish(StatusChanged(operation_id=op.id, status=Status.RUNNING, previous=Status.QUEUED))
        attempt = await Attempt.open(self, op)
        if attempt is None:
            return
        self._runs[op.id] = attempt
        if self._draining or self._closing:
            attempt.stop(StopReason.SHUTDOWN)
        try:
            await attempt.run()
        finally:
            if self._runs.get(op.id) is attempt:  # an abandoned attempt's was taken out (and may be a new one's)
                del self._runs[op.id]
            await attempt.end()
            unconfirmed = self._unconfirmed.get(op.id)
            try:
                if unconfirmed is not None and (attempt.lost or attempt.refused):
                    await self._ask_again(op.id, unconfirmed, op.epoch)
            finally:
                self._unconfirmed.pop(op.id, None)
            self._scheduler.wake()

    async def _ask_again(self, op_id: str, action: Action, epoch: int) -> None:
        """A pause or cancel the store did not confirm, of an attempt (``epoch``) that lost its lease before it
        wrote its status: asked again, of whoever holds the operation now. It was forgotten: the operation,
        queued again as an orphan, ran on though the asker had seen its work stop. Found interrupted (the
        orphan's mark, which ``auto_resume`` queues again), a pause pauses it. Found still running as that
        attempt, it is recovered first: a request stored on it was dropped by a recovery that had read the
        requests just before and marked it interrupted just after."""
        try:
            changes, done = 0, False
            deadline = time.monotonic() + ASK_AGAIN_FOR
            while changes < 4 and not done:  # changed meanwhile (queued again, claimed): asked of what it became
                op = await self.store.get(op_id)
                if op.status is Status.RUNNING and op.epoch == epoch:
                    if time.monotonic() > deadline:
                        break
                    if not await self.recover():
                        # Not judged orphaned yet: a Redis that just answered again judges no lease before live
                        # workers have had the time to renew theirs.
                        await asyncio.sleep(0.25)
                    continue
                changes += 1
                if action is not Action.PAUSE or op.status is not Status.INTERRUPTED:
                    await self._control(op_id, action)
                    done = True
                    continue
                with contextlib.suppress(Conflict):
                    await self._stopped_as_asked(op, Status.PAUSED)  # interrupted, as read
                    done = True
            if not done:
                log.warning("operation %s: the %s asked while the store did not answer is lost", op_id, action.value)
                return
        except (Conflict, NotFound):
            return  # settled otherwise meanwhile (paused or cancelled by whoever recovered it, ended, removed)
        except OutlastError as e:
            log.warning("operation %s: the %s asked while the store did not answer is lost: %s", op_id, action.value, e)
            return
        log.warning("operation %s: the %s asked while the store did not answer is asked again", op_id, action.value)

    async def _abandon(self, attempt: Attempt) -> None:
        """Settle ``attempt`` without its handler, which ignored the stop and the forced cancel
        (``Attempt.abandon``), and free its slot: its task, which never ends, is left out of the scheduler's
        count and of the event loop's end (``threads.let_go``), so that the process can exit."""
        task = attempt.watch.task
        if task is not None and not task.done():
            let_go(task, f"{attempt.op.type} {attempt.op.id}")
            self._scheduler.tasks.discard(task)
        await attempt.abandon()
        if self._runs.get(attempt.op.id) is attempt:
            del self._runs[attempt.op.id]
        self._scheduler.wake()

    def settling(self) -> contextlib.AbstractContextManager[None]:
        """Held while an attempt writes its final status: its slot is free for the next claim."""
        return self._scheduler.settling()

    def ran_short_of_processes(self) -> None:
        self.admission.processes.short(len(self._scheduler.tasks))

    def hand_over(self) -> asyncio.Task[None] | None:
        """Claim the next operation for a settling attempt's slot, in the same transaction as its final write."""
        return self._scheduler.hand_over()

    def publish(self, event: Event) -> None:
        """Announce an event (after what it says was written to the store)."""
        if isinstance(event, StatusChanged) and event.status in SETTLED:
            for settled in self._waiters.get(event.operation_id, ()):
                settled.set()
        self.bus.publish(event)

    def _with_live(self, op: Operation) -> Operation:
        attempt = self._runs.get(op.id)
        if attempt is None or op.status is not Status.RUNNING:
            return op
        return op.model_copy(update=attempt.watch.live_view(time.monotonic()))

    list = list_operations
    """The old name of ``list_operations`` (last in the class: a method named ``list`` hides the builtin
    from every annotation after it)."""
