"""Per-file work on every core: batches of files analysed in worker processes, results in order.

Parsing (tree-sitter, bandit, detect-secrets) is CPU-bound Python or C that holds the GIL, so threads
do not scale it; processes do. The pool is sized to the machine (``OUTLAST_WORKERS`` overrides it) and
is used only when a run has enough files to repay the workers' start-up (each imports the parsers);
small runs and one-core machines stay in one thread.

Workers are spawned (never a fork of the engine's process, whose threads may hold locks) and die with
the engine: when the operation stops before its batches are done, the batches in flight are given up
and the workers killed (a batch takes as long as its slowest file), and a SIGKILLed engine's workers are
killed by the kernel (PR_SET_PDEATHSIG on Linux) or, elsewhere, notice within a second that their
parent is gone. A worker holds the task queue's write end, so it would not see the engine go by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ..context import OperationContext

T = TypeVar("T")

MIN_FILES_PER_WORKER = 400
"""Below this many files per extra worker, starting workers costs more than it gives back."""


def worker_count(files: int) -> int:
    """How many processes to analyse ``files`` files with: 0 means in the engine's own thread."""
    env = os.environ.get("OUTLAST_WORKERS", "").strip()
    if env.isascii() and env.isdigit():  # said explicitly: as many as asked, up to one per file
        wanted = min(int(env), files)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        wanted = min(cores, files // MIN_FILES_PER_WORKER)
    return wanted if wanted >= 2 else 0


PR_SET_PDEATHSIG = 1


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What a terminal (Ctrl-C, a hang-up) or a supervisor (``systemctl stop``) sends the whole process group."""


def _die_with(parent: int) -> None:
    """In each worker: be killed when ``parent`` (the engine) dies, however it dies; and leave the signals
    that stop the engine to the engine. A worker is in the engine's process group, so Ctrl-C reached it
    too: a KeyboardInterrupt in its batch (or its death by SIGTERM or SIGHUP) failed the operation that
    the engine was pausing with a checkpoint. The engine kills the workers itself when it stops."""
    from ._common import libc_function

    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # one sent while it started, held pending, is dropped here
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked from its start: see _stop_signals_held

    prctl = libc_function("prctl")
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)
    if prctl is None:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="outlast-parent-watch").start()


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (the pool's queues need it) with an stderr it can hand on.

    It passes ``sys.stderr.fileno()`` to its process; under the dashboard ``sys.stderr`` is Textual's
    capture, whose fileno() is -1, and the spawn fails ("bad value(s) in fds_to_keep"): every run with
    workers failed at once there. The process's own stderr is what the tracker gets outside it."""
    from multiprocessing import resource_tracker

    try:
        usable = sys.stderr.fileno() >= 0
    except Exception:  # no fileno at all (pytest's capture): the tracker leaves it out by itself
        usable = True
    if usable:
        return
    with contextlib.redirect_stderr(sys.__stderr__):
        resource_tracker.ensure_running()


@contextlib.contextmanager
def _stop_signals_held() -> Any:
    """The stop signals blocked in this thread while it starts workers (a pool starts them as work is
    submitted). A started process keeps its parent's signal mask through exec, so a worker has them
    blocked until its initializer ignores them (``_die_with``): before, a Ctrl-C or SIGTERM to the
    process group in the ~0.3 s of a worker's start-up killed it, and the operation failed (a broken pool)
    instead of pausing. The engine's own signal, sent meanwhile, waits until the mask is set back."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


POLL = 0.2
"""Seconds between two looks for a stop while a batch is awaited."""


async def in_order(
    fn: Callable[..., T],
    batches: Sequence[tuple[Any, ...]],
    workers: int,
    ahead: int = 2,
    ctx: OperationContext | None = None,
) -> AsyncGenerator[T, None]:
    """``fn(*args)`` for each batch's args, yielded in batch order. With ``workers`` processes, up to
    ``workers * ahead`` batches are in flight; with 0, each runs in a thread as it is reached (so a
    consumer that stops early leaves nothing running).

    With ``ctx`` and workers, a stop asked for while a batch is awaited (outside an item) is taken at once
    (OperationStopped, from ``ctx.progress()``): a batch takes as long as its slowest file, far past the
    grace period. Whenever the generator ends before the batches did (a stop, a forced cancel, an
    exception, the consumer leaving), the batches not started are dropped and the worker processes are
    killed, not waited for: the results of the batches cut off never reached the consumer, so none of
    their items counts as done and a resume runs them again. Close it (``contextlib.aclosing``) for that
    to happen at once rather than when the event loop finalises it."""
    if workers < 2:
        for args in batches:  # a thread cannot be stopped: a stop waits for its batch (or is forced)
            yield await asyncio.to_thread(fn, *args)
        return
    loop = asyncio.get_running_loop()
    _start_resource_tracker()
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with,
        initargs=(os.getpid(),),
    )
    pending: deque[asyncio.Future[T]] = deque()
    todo = iter(batches)
    try:
        for args in todo:
            with _stop_signals_held():
                pending.append(loop.run_in_executor(pool, fn, *args))
            if len(pending) >= workers * ahead:
                break
        while pending:
            result = await _awaited(pending[0], ctx)
            pending.popleft()
            for args in todo:
                with _stop_signals_held():
                    pending.append(loop.run_in_executor(pool, fn, *args))
                break
            yield result
    finally:
        cut_off = any(not fut.done() for fut in pending)
        for fut in pending:
            fut.cancel()
        if cut_off:
            _kill_workers(pool)
        else:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)  # idle workers: at once


async def _awaited(fut: asyncio.Future[T], ctx: OperationContext | None) -> T:
    """``fut``'s result; OperationStopped as soon as a stop is asked of ``ctx`` (checked every POLL)."""
    if ctx is None:
        return await fut
    while True:
        done, _ = await asyncio.wait({fut}, timeout=POLL)
        if done:
            return fut.result()
        if ctx.cancelled:
            ctx.progress()  # OperationStopped, outside an item (inside one, the forced stop ends it)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Stop ``pool`` without waiting for the batches its workers are running: the batches not started are
    dropped, the workers SIGKILLed (each holds nothing the engine needs: its results are thrown away). Its
    manager thread sees them die and ends; the exit of the process does not wait for them."""
    kill_workers = getattr(pool, "kill_workers", None)  # Python 3.14
    if kill_workers is not None:
        kill_workers()
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())  # before 3.14, reachable only here
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        with contextlib.suppress(OSError, ValueError):
            proc.kill()
