"""Threads of ``asyncio.to_thread`` (a handler's blocking work) that are still blocked when the program ends.

A handler's thread stuck in a call that never returns (``open`` of a FIFO with no writer, a read from a hung
NFS mount or socket without a timeout) outlives its operation: the engine settles the operation (timed out,
cancelled) but cannot stop the thread. ``asyncio.run`` then waited for it for ever as it closed the loop,
and so did the interpreter at exit: ``outlast run`` and ``outlast worker --exit-when-idle`` never exited,
not even on SIGTERM. Now the loop's default executor is one of ours; at the end the threads still running
after a short grace are named, the loop is handed an idle executor to shut down, and the process ends with
``os._exit`` once everything it owns is written (:func:`exit_now_if_blocked`).

The same end serves what else a handler can leave that the interpreter would wait for: a non-daemon thread
of its own (``threading.Thread(target=forever).start()``: ``outlast run`` printed "completed", then hung
in the interpreter's exit), and the task of a handler that ignored its stop and the forced cancel, which
the engine abandoned (:func:`let_go`: ``asyncio.run`` waits for every task it cancels as it ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import thread as _futures_thread
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from .shortage import NO_THREAD

T = TypeVar("T")
P = ParamSpec("P")

PREFIX = "outlast-to-thread"
ENGINE_PREFIX = "outlast-engine"
ENGINE_THREADS = 8
"""Threads of the engine's own blocking calls (``off_loop``): killing what an attempt left, log files, the mirror."""
RUNNING = ContextVar[str | None]("outlast_running_operation", default=None)
"""The operation whose handler runs in this context (set by its attempt): the owner of its ``to_thread`` calls."""
GRACE = 1.0
"""Seconds the end of the program waits for threads still running (their operations already ended)."""

_blocked: list[tuple[threading.Thread, str]] = []
"""Each thread left blocked at the end, and where, once :meth:`LoopThreads.release` found any."""
_left: list[threading.Thread] = []
"""Non-daemon threads started while a loop of ours ran (a handler's own) and still running at its end."""
_let_go: list[tuple[asyncio.Task[Any], str]] = []
"""Tasks of abandoned handlers (:func:`let_go`), kept referenced until the process ends."""
_STDLIB = os.path.join(os.path.dirname(os.__file__), "")


class HandlerPool(ThreadPoolExecutor):
    """The loop's default executor (a handler's ``asyncio.to_thread``), whose calls that outlive their operation
    do not count against the threads the calls to come may use.

    A handler stopped (stalled, cancelled, timed out) while its thread was in a call that never returns (a read
    with no timeout) leaves that thread blocked: nothing can stop it. Each one used to keep a thread of the pool
    (6 on 2 cores) for good, and after the sixth a long-lived worker ran nothing: every later ``to_thread``
    waited behind them, no stall was called, a cancel never landed, and SIGTERM waited for it. Here each such
    call, once its operation has ended (``ended``), gives the pool one thread more for as long as it blocks."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix=PREFIX)
        self._base = self._max_workers
        self._calls: dict[str, set[Future[Any]]] = {}
        """Calls not yet returned, by the operation they were made for."""
        self._stranded: set[Future[Any]] = set()
        """Calls still running whose operation ended: threads the pool has beside its own."""
        self._guard = threading.Lock()
        _pools.add(self)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future = super().submit(fn, *args, **kwargs)
        op_id = RUNNING.get()  # on the loop's thread, in the context of the task that called
        if op_id is not None:
            with self._guard:
                self._calls.setdefault(op_id, set()).add(future)
            future.add_done_callback(functools.partial(self._returned, op_id))
        return future

    def _returned(self, op_id: str, future: Future[Any]) -> None:
        with self._guard:
            if future in self._stranded:
                self._stranded.discard(future)
                self._max_workers = self._base + len(self._stranded)
            elif (calls := self._calls.get(op_id)) is not None:
                calls.discard(future)
                if not calls:
                    del self._calls[op_id]

    def ended(self, op_id: str) -> int:
        """``op_id``'s attempt is over: its calls still running are stranded (the pool grows by one each until
        it returns), those not started are cancelled. How many were stranded."""
        with self._guard:
            calls = self._calls.pop(op_id, set())
            stranded = {future for future in calls if not future.cancel() and not future.done()}
            if not stranded:
                return 0
            self._stranded |= stranded
            self._max_workers = self._base + len(self._stranded)
        with contextlib.suppress(RuntimeError):  # shut down meanwhile: nothing to run
            super().submit(_nothing)  # a thread for what waits in the queue now, if none is idle
        return len(stranded)


_pools: weakref.WeakSet[HandlerPool] = weakref.WeakSet()


def _nothing() -> None:
    pass


def ended(op_id: str) -> int:
    """An attempt of ``op_id`` is over: its handler's calls on a thread that are still running no longer hold
    a thread of the pool (``HandlerPool``). How many were still running."""
    return sum(pool.ended(op_id) for pool in list(_pools))


_engine_pool: tuple[int, ThreadPoolExecutor] | None = None


def engine_executor() -> ThreadPoolExecutor:
    """The engine's own pool (made in this process: a fork's child has none of its parent's threads)."""
    global _engine_pool
    if _engine_pool is None or _engine_pool[0] != os.getpid():
        _engine_pool = (os.getpid(), ThreadPoolExecutor(ENGINE_THREADS, thread_name_prefix=ENGINE_PREFIX))
    return _engine_pool[1]


def _close_engine_pool() -> None:
    """Let the engine's idle threads go (a call still blocked is one of ``_running``'s); made again if used."""
    global _engine_pool
    if _engine_pool is not None and _engine_pool[0] == os.getpid():
        _engine_pool[1].shutdown(wait=False)
    _engine_pool = None


class LoopThreads:
    """The event loop's default executor, whose threads still blocked at the end are left behind."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._before: set[threading.Thread] = set()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        _left.clear()  # a loop before this one (a test's, in the same process) left them: not this run's
        self._before = set(threading.enumerate())
        self._pool = HandlerPool()
        loop.set_default_executor(self._pool)

    def release(self, loop: asyncio.AbstractEventLoop, grace: float = GRACE) -> list[str]:
        """Shut the executor down and wait up to ``grace`` for its threads (idle ones exit at once: called as
        the program ends, this blocks nothing else); where each one still running is (also kept for
        :func:`exit_now_if_blocked`)."""
        if self._pool is None:
            return []
        # Not waited for here (the dashboard's own input thread is one until Textual stops it): looked at again
        # as the process ends (exit_now_if_blocked).
        _left.extend(t for t in threading.enumerate() if t not in self._before and _foreign(t))
        self._pool.shutdown(wait=False)  # idle threads exit now; busy ones when their call returns
        self._pool = None
        _close_engine_pool()
        # What runs on this loop afterwards (the loop's own close, a test going on) gets fresh threads; the
        # loop's close then shuts down those, not the blocked ones.
        loop.set_default_executor(ThreadPoolExecutor())
        end = time.monotonic() + grace
        for t in _running():
            t.join(max(0.0, end - time.monotonic()))
        left = _running()
        if not left:
            return []
        where = [_where(t) for t in left]
        _blocked.extend(zip(left, where, strict=True))
        return where


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, not waiting at its end for a thread still blocked (see the module doc); a stop
    signal after ``coro`` ended changes nothing of its outcome (:func:`outcome_kept`)."""

    async def main() -> T:
        loop, threads = asyncio.get_running_loop(), LoopThreads()
        threads.install(loop)
        try:
            return await coro
        finally:
            outcome_kept(loop)
            threads.release(loop)

    outcome_released()  # a loop again (`run --detach` waits for its runner): its signals as before
    runner = asyncio.Runner()
    try:
        return runner.run(main())
    finally:
        try:
            runner.close()  # the loop is closed whatever this raises
        except RuntimeError as e:
            # Its default executor is shut down on a thread of its own, which a process limit (ulimit -u) can
            # refuse once the work is done and stored: `outlast run` of a completed operation ended in exit 70,
            # "internal error: can't start new thread". The executor's threads are idle: nothing is lost.
            if str(e) != NO_THREAD:
                raise


TWIN_SIGNAL = 0.1
"""Seconds within which the same stop signal again is one stop (a process and its group both signalled); two
presses of Ctrl-C are further apart."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_kept: dict[int, Any] = {}
"""Each stop signal :func:`outcome_kept` took, and the handling the loop's close would have put back."""
_kept_by: dict[int, Any] = {}
"""The handler it took each with (``run`` puts the other back only where that one is still in place)."""


def outcome_kept(loop: asyncio.AbstractEventLoop) -> None:
    """Once a command's coroutine has ended, its outcome is decided and stored (an ``outlast run`` has said
    "completed"): a stop signal that this loop or its runner handled (Ctrl-C, SIGTERM, SIGHUP) changes
    nothing of it from here to the end of the command (:func:`outcome_released`, as ``engine.cli.main``
    returns). Closing the loop put back the default handling, and one that came then (Ctrl-C pressed as the
    run ended, a supervisor's SIGTERM, while the exit waited for a handler's thread) ended a completed run in
    a KeyboardInterrupt traceback, or killed by the signal; `run --detach` between its submit and its
    runner's start, with the operation queued for nobody. The same signal again (not its twin, within
    ``TWIN_SIGNAL``) still ends the process at once, 128 + it, should the exit hang. A loop run again
    (:func:`run`) handles them as before."""
    first: list[tuple[int, float]] = []

    def late(sig: int, _frame: object) -> None:
        now = time.monotonic()
        if not first:
            first.append((sig, now))
            return
        if first[0][0] == sig and now - first[0][1] < TWIN_SIGNAL:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(128 + sig)

    for sig in STOP_SIGNALS:
        with contextlib.suppress(ValueError, OSError, RuntimeError):  # not the main thread: nothing to keep
            ours = loop.remove_signal_handler(sig)
            handler = signal.getsignal(sig)
            if ours or (callable(handler) and handler is not signal.default_int_handler):
                signal.signal(sig, late)
                _kept[sig] = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
                _kept_by[sig] = late


def outcome_released() -> None:
    """The stop signals :func:`outcome_kept` took handled as the loop's close would have left them: for a loop
    run again, and as the command line's ``main`` returns to a caller in the same process (a test's), where
    Ctrl-C raises again."""
    for sig, handler in list(_kept.items()):
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(sig) is _kept_by.get(sig):
                signal.signal(sig, handler)
    _kept.clear()
    _kept_by.clear()


def let_go(task: asyncio.Task[Any], what: str) -> None:
    """Leave ``task`` (an abandoned handler's, which catches every cancel) out of its loop's end: ``asyncio.run``
    cancels every task left and waits for each, for ever for this one. Kept referenced until the process
    ends (with ``os._exit``, :func:`exit_now_if_blocked`): a task collected while pending would be closed, and
    the handler's ``except BaseException`` would run once more, outside any loop."""
    if any(t is task for t, _ in _let_go):
        return
    _let_go.append((task, what))
    unregister = getattr(asyncio.tasks, "_unregister_task", None)
    if unregister is not None:  # every Python this runs on has it; without it, the end waits as before
        unregister(task)


def _foreign(thread: threading.Thread) -> bool:
    """A thread that the interpreter's exit would wait for and that is not ours: a handler's own."""
    return (
        thread.is_alive()
        and not thread.daemon
        and thread is not threading.main_thread()
        and not thread.name.startswith((PREFIX, ENGINE_PREFIX))
    )


def _running() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith((PREFIX, ENGINE_PREFIX)) and t.is_alive()]


def _where(thread: threading.Thread) -> str:
    """``file.py:123 in function``: the thread's innermost frame outside the standard library (the handler's
    or a library's call that blocks)."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "(finished)"
    stack = traceback.extract_stack(frame)
    own = [f for f in stack if not f.filename.startswith(_STDLIB)]
    f = (own or stack)[-1]
    if not own and f.filename == _futures_thread.__file__:  # the executor's call of the function itself
        return "a builtin handed to asyncio.to_thread"
    return f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}" + ("" if own else " (standard library)")


def exit_now_if_blocked(code: int, grace: float = GRACE) -> None:
    """End the process with ``code`` now when threads left blocked still are, a handler's own non-daemon thread
    still runs (after ``grace``), or a handler's task was abandoned (the interpreter's exit would wait for
    each for ever), after one line each saying so and the standard streams flushed; else return. Called once
    the engine is closed: everything this process owns is written."""
    places = [where for t, where in _blocked if t.is_alive()]
    _blocked.clear()
    tasks = [what for task, what in _let_go if not task.done()]
    end = time.monotonic() + grace
    for t in _left:
        t.join(max(0.0, end - time.monotonic()))
    threads = [t for t in dict.fromkeys(_left) if _foreign(t)]
    _left.clear()
    if not (places or tasks or threads):
        return
    if places:
        print(
            f"outlast: exiting without waiting for {len(places)} thread(s) of ended operations still blocked at"
            f" {', '.join(dict.fromkeys(places))} (a blocking call that never returned: give it a timeout)",
            file=sys.stderr,
        )
    if threads:
        where = ", ".join(f"{t.name} at {_where(t)}" for t in threads)
        print(f"outlast: a thread the handler started is still running: exiting without it ({where})", file=sys.stderr)
    if tasks:
        print(
            f"outlast: exiting without the handler of {', '.join(dict.fromkeys(tasks))}, which ignored its stop"
            " and was abandoned",
            file=sys.stderr,
        )
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
