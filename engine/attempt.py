"""One attempt at an operation, from claim to settled.

``Attempt.open`` loads what the attempt needs (its handler, parameters, profile and resume point);
``run`` invokes the handler and turns how it ended into the operation's next status: completed, failed,
queued again for a retry, or stopped (cancel, pause, timeout, stall, shutdown, store outage), each
stop after a final checkpoint unless the handler was cut off mid-item. ``settle`` writes that status
(durable first, retried through a store outage), then announces it. An attempt whose lease was lost
writes nothing more.

The attempt is the ``AttemptPort`` its context talks to (checkpoints, item failures, logs, outputs);
its ``watch`` is what the supervisor looks at on the engine's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from pathlib import Path
from types import CodeType
from typing import Any, NoReturn, Protocol

from . import threads
from .config import Settings
from .context import BrokenInto, OperationContext, OperationStopped, TooManyFailures, format_exception
from .errors import InvalidInput, StoreFailed, StoreHeld
from .files import private_dir, private_dirs
from .lifecycle import CANCEL_WINS, StopReason
from .limits import MAX_RESULT_BYTES
from .models import (
    Checkpoint,
    CheckpointSaved,
    Conflict,
    Event,
    ItemFailed,
    LogRecord,
    NotFound,
    Operation,
    StaleAttempt,
    Status,
    StatusChanged,
    StoreError,
)
from .outage import LogBuffer, StoreHealth, store_failure, why
from .paths import note_other_store
from .profiles import RetryPolicy, TimeoutProfile, stored_profile
from .registry import HandlerSpec, get_handler, other_handler
from .shortage import ran_short, short_of_processes
from .store import Store
from .store.base import ItemDelta, Ledger
from .supervision import Watch
from .text import BrokenValue, NotJSON, bad_text, clean, clean_json, json_bytes, storable

log = logging.getLogger("outlast.engine")

STORE_RETRY = 0.5
"""Seconds between two tries of a final status write while the store fails."""


def _say_checkpoints_gone(host: AttemptHost, op: Operation) -> None:
    """A resume of an operation that had checkpoints finding none at all (evicted from Redis under a
    maxmemory policy, deleted by hand): it starts again from its first item, said in the worker's log and
    the operation's. It went silently: a corrupt checkpoint was said, every one gone was not, and the
    items done were run again with nothing to tell why."""
    message = (
        f"its checkpoints are gone from the store (the newest was {op.checkpoint_seq}): restarting from scratch,"
        " every item is run again"
    )
    log.warning("operation %s: %s", op.id, message)
    host.log_buffer.append(op.id, LogRecord(ts=time.time(), level="warning", message=message))


class AttemptHost(Protocol):
    """What an attempt needs of the engine running it."""

    @property
    def store(self) -> Store: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def health(self) -> StoreHealth: ...
    @property
    def log_buffer(self) -> LogBuffer: ...
    @property
    def closing(self) -> bool:
        """The engine is shutting down: a transient failure is not queued for a retry."""
        ...

    @property
    def stopping(self) -> bool:
        """The engine is draining or shutting down: a final status is not retried through an outage."""
        ...

    @property
    def shutdown_reason(self) -> str: ...
    @property
    def stop_signal(self) -> int | None:
        """The first signal that drained the engine (SIGINT, SIGTERM, SIGHUP), None if none did."""
        ...

    @property
    def abandoned(self) -> dict[str, str]:
        """Operations whose final status could not be written, and why."""
        ...

    @property
    def unwritten(self) -> dict[str, Callable[[], Awaitable[Operation | None]]]:
        """The final write each abandoned operation still needs (``Engine.write_abandoned``)."""
        ...

    @property
    def store_stopped(self) -> set[str]:
        """Operations stopped (interrupted) because the store could not be written."""
        ...

    @property
    def requeues_stopped(self) -> bool:
        """Work this engine stops because the store could not be written is queued again after a backoff,
        not left interrupted: the engine runs the queue with ``auto_resume``."""
        ...

    def publish(self, event: Event) -> None: ...
    def settling(self) -> AbstractContextManager[None]:
        """Held while the final status is written: the attempt's slot is free for the next claim."""
        ...

    def hand_over(self) -> asyncio.Task[None] | None:
        """Claim the next operation for this slot in the same store transaction as the final write
        (a task created right after the write's); None when no claim is due."""
        ...

    def ran_short_of_processes(self) -> None:
        """An attempt found no process or thread to be had: fewer run at once for a while (``ProcessBudget``)."""
        ...


class Attempt:
    """One claimed operation run to a settled status. Build it with ``Attempt.open``."""

    def __init__(
        self,
        host: AttemptHost,
        op: Operation,
        handler: HandlerSpec,
        params: Any,
        profile: TimeoutProfile,
        resume: tuple[Checkpoint, Ledger] | None,
    ) -> None:
        self.host = host
        self.op = op
        self._handler = handler
        self._resumed_from = resume[0].seq if resume is not None else None
        self.ctx = OperationContext(self, op, profile, resume)
        self.ctx.params = params
        self.watch = Watch(op, self.ctx, host.settings.grace_period, host.publish, host.settings.abandon_after)
        self.lost = False
        """The store refused this attempt (its lease is gone): it stops and writes nothing more."""
        self.refused = False
        """The store refused this attempt's final status (its lease ran out before it was written)."""
        self.unsaved_since: tuple[float, str] | None = None
        """Since when (monotonic) and why this attempt's checkpoints fail to be written: other writes
        may still work (a state larger than the disk's free space), so the store's health alone does
        not tell. The supervisor stops the attempt once that lasts ``store_outage_limit``."""

    @classmethod
    async def open(cls, host: AttemptHost, op: Operation) -> Attempt | None:
        """The attempt, ready to run; None when it cannot start (settled as failed: no such handler,
        bad parameters, an unreadable checkpoint)."""
        try:
            handler = get_handler(op.type)
            elsewhere = other_handler(op.type, op.handler)
            if elsewhere is not None:
                raise InvalidInput(elsewhere)
            params = handler.parse_params(op.params)
            profile = stored_profile(op)
            resume = None
            if op.checkpoint_seq or op.resume_seq is not None:
                resume = await host.store.load_checkpoint(op.id, op.resume_seq)
                if resume is None and op.checkpoint_seq and not await host.store.checkpoints(op.id):
                    _say_checkpoints_gone(host, op)
                base = resume[0].seq if resume is not None else 0
                if base != (op.checkpoint_seq or 0):
                    # One chain only: what follows the resume point is abandoned, and this attempt's
                    # checkpoints take its numbers (merged with its deltas, items went uncounted).
                    # The failures listed become the kept chain's: one failed or done only after it is not.
                    failed = resume[1].failed if resume is not None else {}
                    await host.store.discard_checkpoints_after(op.id, base, failed)
                    op = op.model_copy(update={"checkpoint_seq": base or None})
        except StoreError as e:
            # The store is damaged where the resume point is read or the old chain is cut: not the
            # operation's fault. It stays resumable, and the command says store (exit 8). A read that
            # failed this time (StoreFailed: an I/O error) is tried again after a backoff first: left
            # interrupted, nothing resumed it, whatever auto_resume said.
            retry = _store_retry(op, e) if not host.closing else None
            if retry is not None:
                host.log_buffer.append(op.id, LogRecord(ts=time.time(), level="warning", message=retry["message"]))
                await settle(host, op, Status.QUEUED, **_stops_win(op), **retry)
                return None
            host.store_stopped.add(op.id)
            await settle(host, op, Status.INTERRUPTED, message=f"interrupted: {e}")
            return None
        except Exception as e:
            # Params checked again as the attempt starts (a root deleted since the submit, a FIFO made at an
            # output's path): the check's own line, as at submit, not "InvalidInput: ... (at attempt.py:159)".
            error = clean(str(e)) if isinstance(e, InvalidInput) else format_exception(e)
            if isinstance(e, MemoryError):  # not "(at checkpoints.py:113)": the machine's, not a bug of that line
                error = f"the machine ran out of memory: the engine could not start attempt {op.attempt} ({error})"
            # No memory to load it (its handler, its checkpoint's state): the machine's, as a shortage.
            if (ran_short(e) is not None or isinstance(e, MemoryError)) and not host.closing:
                if short_of_processes(e):
                    host.ran_short_of_processes()
                # Importing the handler or reading the checkpoint found no file descriptor (or thread) left:
                # a worker that started more than ``ulimit -n`` allows. The handler never ran.
                policy = RetryPolicy()
                with contextlib.suppress(Exception):
                    policy = stored_profile(op).retry
                retry = _retry(op, policy, error, short=True)
                if retry is not None:
                    host.log_buffer.append(op.id, LogRecord(ts=time.time(), level="warning", message=retry["message"]))
                    await settle(host, op, Status.QUEUED, **_stops_win(op), **retry)
                    return None
            await settle(host, op, Status.FAILED, error=error)
            return None
        return cls(host, op, handler, params, profile, resume)

    # ---- the port the context talks to ---------------------------------------------------------

    async def save_checkpoint(self, cp: Checkpoint, delta: ItemDelta) -> bool:
        """Write a checkpoint; False when the store failed (said once; retried a second later)."""
        t0 = time.perf_counter()
        interval = self.ctx.profile.checkpoint_interval
        # The lines logged before it first (kept for later while the store fails): written on the clock alone,
        # a SIGKILL after the checkpoint lost them for good, as the resume goes on past them (a command's
        # lines before its ``::outlast checkpoint``).
        await self.host.log_buffer.flush(self.op.id)
        try:
            saved = await self.host.store.save_checkpoint(cp, delta, self.host.settings.checkpoints_keep)
        except Exception as e:
            if isinstance(e, MemoryError) or not store_failure(e):  # encoding it: the context ends the attempt
                raise
            self.host.health.failed(e)
            if self.unsaved_since is None or isinstance(e, StoreHeld):  # a stopped holder's time counts for nothing
                self.unsaved_since = (time.monotonic(), why(e))
            self.watch.next_checkpoint = time.monotonic() + min(1.0, interval)
            return False
        self.host.health.ok()
        self.unsaved_since = None
        latency = time.perf_counter() - t0
        self.watch.next_checkpoint = time.monotonic() + interval
        self.host.publish(
            CheckpointSaved(
                operation_id=self.op.id, seq=saved.seq, done=saved.processed_items, size=saved.size, latency=latency
            )
        )
        return True

    def item_failed(self, key: str, error: str) -> None:
        ctx = self.ctx
        ctx.log.warning(f"item failed: {key}: {error}")
        self.host.publish(
            ItemFailed(
                operation_id=ctx.id,
                key=clean(key),  # as the store lists it: every face writes events out as UTF-8 (text.py)
                error=error,
                failures=ctx.failures,
                threshold=ctx.profile.failure_threshold,
            )
        )

    def log(self, record: LogRecord) -> None:
        self.host.log_buffer.append(self.op.id, record)

    @property
    def log_limit(self) -> int:
        return self.host.settings.log_limit

    @property
    def outlast_dirs(self) -> list[Path]:
        settings, store = self.host.settings, self.host.store
        mirror = getattr(getattr(store, "mirror", None), "root", None)  # the store's, which a program may pass
        named = (getattr(store, "state_dir", None), settings.state_dir, settings.checkpoint_mirror, mirror)
        return list(dict.fromkeys(Path(d).expanduser() for d in named if d))

    @property
    def output_dir(self) -> Path:
        store_dir = getattr(self.host.store, "state_dir", None)
        base = Path(store_dir) if store_dir else Path(self.host.settings.state_dir).expanduser()
        # absolute: handlers hand it to programs they start in another directory (pytest's --junitxml,
        # cProfile's -o, PYTHONPATH); a relative --state-dir had them write into the project, and fail
        base = base.absolute()
        private_dirs(base)
        outputs = private_dir(base, "outputs")
        if not store_dir:  # beside a local store's outputs, perhaps: its retention must leave these alone
            note_other_store(base)
        return outputs

    # ---- control -------------------------------------------------------------------------------

    def stop(self, reason: StopReason, restart_grace: bool = False) -> None:
        """Ask the handler to stop at its next safe point (by force after the grace period)."""
        self.watch.stop(reason, time.monotonic(), restart_grace)

    def lose(self) -> None:
        """The lease is gone: stop, and write nothing more (not even the final status)."""
        if not self.lost:
            self.lost = True
            self.stop(StopReason.LOST)

    async def end(self) -> None:
        """After ``run``: kill what the handler left running; a lost attempt lets go of its lock."""
        self.ctx.kill_children()
        await self.ctx.reap_children()
        if self.lost and not self.abandoned:  # the store said when the lease was lost; the stop took effect now
            log.warning(
                "%s: attempt %d stopped after losing its lease; nothing of it is written any more",
                self.op.id,
                self.op.attempt,
            )
            with contextlib.suppress(Exception):
                await self.host.store.release(self.op.id, self.op.epoch)  # recovered like any orphan

    abandoned = False
    """The handler ignored its stop and the forced cancel: the attempt was settled without it (``abandon``)."""
    _abandoning: asyncio.Future[None] | None = None

    async def abandon(self) -> None:
        """Settle the attempt as its stop says without its handler, whose task outlived the forced cancel by
        ``Settings.abandon_after`` (it catches the cancel too): a final checkpoint unless an item was cut off mid-body,
        the status line saying the handler was abandoned, then nothing more of it is written (its context
        refuses, and the rest of ``_run`` writes nothing, as for a lost attempt). Called again, it waits for
        the first call's settle."""
        if self._abandoning is None:
            self._abandoning = asyncio.ensure_future(self._abandon())
        await asyncio.shield(self._abandoning)

    async def _abandon(self) -> None:
        ctx = self.ctx
        self.abandoned = True
        self.watch.settling = True
        ctx.kill_children()
        if self.lost:  # its lease is gone: nothing of it is written anyway
            ctx.abandon()
            return
        after = self.host.settings.abandon_after
        ctx.log.warning(
            f"the handler ignored the stop and, for {after:g}s, the cancel that forced it: abandoned (its"
            " task is left running, and nothing of it is written any more)"
        )
        await self._final_checkpoint(always=True, forced=True)
        ctx.abandon()
        self.lost = True  # whatever the handler does later, the rest of ``_run`` writes nothing
        reason = ctx.stop_reason or StopReason.SHUTDOWN
        if reason is StopReason.STORE:
            self.host.store_stopped.add(self.op.id)
        what = "the handler ignored the stop and was abandoned"
        seq = ctx.checkpoint_seq
        where = f"checkpoint {seq}" if seq else "no checkpoint: resumes from the start"
        cancel_wins = f"{StopReason.CANCEL.message()}; {what}; {where}" if reason.status in CANCEL_WINS else None
        await settle(
            self.host,
            self.op,
            reason.status,
            message=f"{self._stop_message(reason)}; {what}; {where}",
            if_cancelled=cancel_wins,
            progress=self.watch.progress(time.monotonic(), settled=True),
            total_items=ctx.total,
            checkpoint_seq=seq or None,
        )
        await ctx.reap_children()

    # ---- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Invoke the handler until the attempt settles (again after an item failure). Never raises: a
        fault of the engine's own while it settles fails the operation, rather than leave it running with
        no attempt behind it until this process exits."""
        try:
            await self._run()
        except Exception as e:
            log.exception("%s: internal error settling the attempt", self.op.id)
            error = f"internal error: {format_exception(e)}"
            try:
                await self._settle(Status.FAILED, error=error)
            except Exception:  # what the final progress is made of is broken too: the status without it
                log.exception("%s: the final progress cannot be written", self.op.id)
                with contextlib.suppress(Exception):
                    await settle(self.host, self.op, Status.FAILED, error=error)
        finally:
            self.ctx.end()
            if stranded := threads.ended(self.op.id):
                log.warning(
                    "%s: %d call(s) its handler made on a thread (asyncio.to_thread) still running after it ended:"
                    " left to return on their own (a blocking call with no timeout?)",
                    self.op.id,
                    stranded,
                )

    @staticmethod
    def handler_call_code() -> CodeType:
        """The code that calls the handler: a frame of it on the main thread's stack means handler code
        runs above it (what a signal may break into: ``Engine._on_signal_now``)."""
        return Attempt._run.__code__

    async def _run(self) -> None:
        ctx, op = self.ctx, self.op
        threads.RUNNING.set(op.id)  # this task's calls on a thread are the handler's (``threads.ended``)
        if self._resumed_from is not None:
            ctx.log.info(f"resuming from checkpoint {self._resumed_from} ({ctx.done} items done)")
        pid = os.getpid()
        while True:
            self.watch.task = asyncio.current_task()
            self.watch.settling = False
            try:
                try:
                    result = await self._handler.fn(ctx, ctx.params)
                    while inspect.isawaitable(result):  # ``return work(ctx)`` without its await: the work
                        result = await result  # would not have run, and the coroutine was the result
                finally:
                    if os.getpid() != pid:
                        _forked_child_exits()
                    # Out of the handler, whichever way: the final checkpoint and the settle that follow are
                    # not cancelled by a force (a second Ctrl-C while they saved left the operation running).
                    self.watch.settling = True
            except OperationStopped as stop:
                await self._stop_raised(stop)
            except asyncio.CancelledError as e:
                task = asyncio.current_task()
                cancelled = task is not None and task.cancelling() > 0
                broken = isinstance(e, BrokenInto) or self.watch.broken_in is not None  # or another in its place
                if not broken and not self.watch.cancels and cancelled:
                    # The engine did not cancel this task (it counts its own cancels): the handler did
                    # (``asyncio.current_task().cancel()``). It was taken for the engine's forced stop ("paused
                    # ... forced after 10s grace period" 0 s in, no checkpoint, exit 6), left paused by auto_resume.
                    await self._fail(f"the handler cancelled its own task: {format_exception(e)}")
                    return
                if not broken and ctx.stop_reason is None and not cancelled:
                    # Nobody cancelled this task: a task of the handler's own was cancelled and its await
                    # raised here. It was called a forced stop of the engine ("paused ... forced after 10s
                    # grace period") that no worker would retry, though no stop was asked for.
                    await self._fail(f"the handler's own task was cancelled: {format_exception(e)}")
                    return
                # Forced: the handler did not reach a safe point within the grace period, or held the event
                # loop when a second signal came (BrokenInto).
                ctx.kill_children()
                how = (
                    f"{e.by} broke into the handler, which held the event loop at {e.where}"
                    if isinstance(e, BrokenInto)
                    else self.watch.broken_in
                )
                if how:
                    ctx.log.warning(f"stopped by force: {how}")
                await self._stopped(ctx.stop_reason or StopReason.SHUTDOWN, checkpointed=False, forced=True, how=how)
            except TooManyFailures as e:
                await self._final_checkpoint()
                await self._settle(Status.FAILED, error=str(e))
            except StaleAttempt as e:
                if not self.lost:  # else the store said so when it refused the attempt's first write
                    log.warning("%s: %s; this attempt stops without writing", op.id, e)
            except StoreError as e:
                # The store itself is damaged (a checkpoint page garbled on disk), not the handler wrong:
                # the operation stays resumable from its newest good checkpoint, and the command says
                # store (exit 8), as for an outage; a read that failed this time is tried again first.
                retry = _store_retry(op, e) if not self.host.closing else None
                if retry is not None:
                    ctx.log.warning(retry["message"])
                    await self._final_checkpoint()
                    await self._settle(Status.QUEUED, **_stops_win(op, ctx.checkpoint_seq), **retry)
                else:
                    self.host.store_stopped.add(op.id)
                    await self._settle(Status.INTERRUPTED, message=f"interrupted: {e}")
            except Exception as e:
                if (ctx.stop_reason is not None and self.watch.cancels) or self.watch.broken_in is not None:
                    # The cancel that forced the stop, turned into an error of its own by the handler or a library
                    # (``except CancelledError: raise RuntimeError("request aborted")``): a Ctrl-C failed the
                    # operation (exit 1), and a worker's SIGTERM under auto_resume left it failed for good.
                    reason = ctx.stop_reason or StopReason.SHUTDOWN  # a second signal the loop has not seen yet
                    ctx.log.warning(
                        f"the handler raised {type(e).__name__} when the stop ({reason.value}) cancelled it:"
                        f" stopped, not failed ({format_exception(e)})"
                    )
                    ctx.kill_children()
                    await self._stopped(reason, checkpointed=False, forced=True, how=self.watch.broken_in)
                    return
                key = ctx.failed_item(e)
                # An item whose body found the machine short (no descriptor, process or thread) did not fail, nor
                # one whose bookkeeping found the engine out of memory: the attempt is retried.
                if key is not None and ctx.stop_reason is None and ran_short(e) is None and not ctx.short_of_memory:
                    try:
                        ctx.fail(key, e)
                    except TooManyFailures as tm:
                        await self._final_checkpoint()
                        await self._settle(Status.FAILED, error=str(tm))
                        return
                    ctx.reenter()
                    continue  # the handler is entered again and skips the failed item
                await self._failed(e)
            except SystemExit as e:
                # The handler's own code (a script's ``sys.exit``): the end of this operation, not of the
                # process (it took the whole worker down, and every operation running there). A
                # KeyboardInterrupt is left to end the process: a Ctrl-C where no handler for it is installed.
                await self._exited(e)
            except BaseExceptionGroup as group:  # after ``except Exception``: an ExceptionGroup is one
                # A stop raised in tasks of an asyncio.TaskGroup: the stop wins over what its siblings raised.
                stops, _rest = group.split(OperationStopped)
                if stops is not None:
                    await self._stop_raised(_first_leaf(stops), group)
                elif group.subgroup(KeyboardInterrupt) is not None and _ctrl_c_raises():
                    raise
                else:
                    await self._fail(format_exception(group))
            except KeyboardInterrupt as e:
                if _ctrl_c_raises():
                    raise  # the end of the process (a Ctrl-C where no handler is installed), not of the operation
                # Ctrl-C is caught here (the engine's or the dashboard's handler): the handler's own raise. It
                # ended the process with a traceback, exit 130, the other operations stopped as by a kill.
                await self._fail(format_exception(e))
            except BaseException as e:  # the rest that is not an Exception: GeneratorExit, pytest.fail()'s
                await self._fail(format_exception(e))  # Failed, a library's own; it ended the engine's task, with the
                # operation left running until this process exited
            else:
                if ctx.stop_reason is not None and ctx.stop_raised:
                    # The handler caught the stop and returned: its work is not done (it returned what it had),
                    # and "completed" would have left the rest never run, the operation not resumable.
                    ctx.log.warning(
                        f"the handler caught the stop ({ctx.stop_reason.value}) and returned: stopped, not completed;"
                        " its result is not kept"
                    )
                    await self._stopped(ctx.stop_reason, checkpointed=False)
                elif (ctx.stop_reason is not None and self.watch.cancels) or self.watch.broken_in is not None:
                    # It caught the engine's forced cancel (``except asyncio.CancelledError: return partial``, after
                    # the grace period, or the ``BrokenInto`` of a second Ctrl-C where it held the loop) and returned:
                    # "completed at 0/5 items", its items never run, and a completed operation cannot be resumed.
                    # Stopped by force, as if it had let it through.
                    reason = ctx.stop_reason or StopReason.SHUTDOWN  # a second signal the loop has not seen yet
                    ctx.log.warning(
                        f"the handler caught the cancel that forced the stop ({reason.value}) and returned:"
                        " stopped, not completed; its result is not kept"
                    )
                    ctx.kill_children()
                    await self._stopped(reason, checkpointed=False, forced=True, how=self.watch.broken_in)
                elif ctx.too_many_failures is not None:
                    # It caught TooManyFailures (an ``except Exception`` around ``ctx.fail``) and went on: it
                    # completed with every later item failed, past the threshold that was to fail it.
                    ctx.log.warning("the handler caught TooManyFailures and returned: failed, not completed")
                    await self._final_checkpoint()
                    await self._settle(Status.FAILED, error=ctx.too_many_failures)
                else:
                    await self._completed(result)
            return

    async def _stop_raised(self, stop: OperationStopped, raised: BaseException | None = None) -> None:
        """The handler ended with OperationStopped: stopped as asked, or failed when no stop was asked. The
        context raises it only once one is (``ctx.stop_reason`` set); one the handler raised itself was trusted,
        and settled the operation as whatever it claimed: "cancelled" by nobody, "deadline passed (3700s)" 0 s
        into the run. The reason and the checkpoint are the context's, not what the exception says. ``raised``:
        what the handler raised, when not ``stop`` itself (the group holding it), for its line."""
        ctx = self.ctx
        if ctx.stop_reason is None:
            await self._fail(_forged_stop(stop, raised or stop))
            return
        await self._stopped(ctx.stop_reason, checkpointed=stop.checkpointed is True and ctx.stop_raised)

    async def _completed(self, result: Any) -> None:
        ctx = self.ctx
        try:
            result, why = storable(result, "result")
        except BrokenValue as e:
            # Not a result JSON cannot hold (left out below): a value of the handler's that is broken, its
            # mistake, as an exception raised would be. It was an "internal error" with a traceback.
            await self._fail(f"the result cannot be stored: {e}")
            return
        if why is not None:  # the work is done: it completes, without the result it cannot store
            ctx.log.warning(f"result not stored: {why}; a result holds JSON values only")
        left_out = _too_large(result)
        if left_out is not None:  # the work is done: it completes, without a result every listing would read
            result = None
            ctx.log.warning(f"result not stored: {left_out}")
        where = bad_text(result, "result")
        if where is not None:  # a file name's bytes that are not UTF-8: no record stores them (text.py)
            ctx.log.warning(f"{where} holds bytes that are not UTF-8: stored with each such byte as \\xNN")
            result = clean_json(result)
        if ctx.outcomes_unsaved:
            await self._final_checkpoint()  # keep the ledger of failures with the record
        if ctx.total is None or ctx.done > ctx.total:
            ctx.total = ctx.done
        message = f"completed; its result was not stored: {left_out}" if left_out is not None else None
        if ctx.repeated:  # work a later loop skipped, said where `ls` and `show` show it: not only in the log
            n = ctx.repeated
            whose = "their keys were" if n != 1 else "its key was"
            message = (
                f"completed; {n:,} item{'s' if n != 1 else ''} skipped: {whose} done earlier in this run"
                " (item keys are one space for the whole operation: see the log)"
            )
        await self._settle(Status.COMPLETED, result=result, message=message)

    async def _exited(self, e: SystemExit) -> None:
        """``sys.exit()`` or ``sys.exit(0)`` in a handler completes its operation (a script's way of saying
        it is done); another code fails it."""
        if e.code in (None, 0):
            self.ctx.log.info("the handler called sys.exit(0): completed")
            await self._completed(None)
            return
        full = format_exception(e)
        await self._fail(
            f"the handler called sys.exit({e.code!r}){full[full.rfind(' (at ') :] if ' (at ' in full else ''}"
        )

    async def _fail(self, error: str) -> None:
        """The operation fails, never retried (a BaseException, a ``sys.exit``: no error a retry mends); the
        items done and failed so far stay done and listed."""
        await self._final_checkpoint()
        self.ctx.log.error(f"attempt {self.op.attempt} failed: {error}")
        await self._settle(Status.FAILED, error=error)

    async def _failed(self, e: Exception) -> None:
        """Queued again when the profile's retry policy says ``e`` is transient and attempts are left."""
        op, ctx = self.op, self.ctx
        policy = ctx.profile.retry
        error = format_exception(e)
        short = ran_short(e)  # the machine's state, whatever the policy lists as transient
        if short is None and ctx.short_of_memory:  # even the OutOfMemory saying so found no memory
            short = e
            error = f"the machine ran out of memory: the engine could not go on {ctx.short_of_memory}"
        if short is not None and short is not e:
            error = f"{error}; below it: {type(short).__name__}: {short}"
        ctx.log.error(f"attempt {op.attempt} failed: {error}")
        # The items done and failed since the last checkpoint: a retry or resume skips those done, and
        # ``item_failures`` lists those failed (they were counted in progress but listed nowhere).
        await self._final_checkpoint()
        if short_of_processes(e):
            self.host.ran_short_of_processes()
        transient = policy.is_transient(e) or short is not None
        retry = _retry(op, policy, error, short=short is not None) if transient and not self.host.closing else None
        if retry is not None:
            ctx.log.warning(retry["message"])
            # A pause asked meanwhile (seen by this attempt or only stored) keeps the retry from running: it
            # was queued, claimed and run on (paused only once the next attempt polled the request), after the
            # asker was told "pause requested".
            await self._settle(Status.QUEUED, **_stops_win(op, ctx.checkpoint_seq, "failed"), **retry)
            return
        await self._settle(Status.FAILED, error=error)

    async def _stopped(
        self, reason: StopReason, checkpointed: bool, forced: bool = False, how: str | None = None
    ) -> None:
        """Every stop saves a final checkpoint (unless the handler's last act was one), then settles.
        ``how``: what forced it, when not the grace period."""
        if self.lost:
            return  # nothing to write: see lose()
        if not checkpointed:
            await self._final_checkpoint(always=True, forced=forced)
        if self.ctx.stop_reason is StopReason.CANCEL:  # asked after the handler stopped for a pause (or
            reason = StopReason.CANCEL  # while its final checkpoint was written): the cancel wins
        settings = self.host.settings
        msg = self._stop_message(reason)
        if reason is StopReason.STORE:
            self.host.store_stopped.add(self.op.id)
        if forced:  # by what: a second signal (before or while the handler held the loop), or the grace period
            if how:
                msg += " (forced: the handler held the event loop)"
            elif self.watch.forced_by:
                msg += f" (forced by {self.watch.forced_by})"
            else:
                msg += f" (forced after {settings.grace_period:g}s grace period)"
        seq = self.ctx.checkpoint_seq
        where = f"checkpoint {seq}" if seq else "no checkpoint: resumes from the start"
        if reason is StopReason.STORE and self.host.requeues_stopped and not self.host.closing:
            # The store failed for too long, and is often back by now (a peer SIGSTOPped while it held the
            # database's write lock; checkpoints too large for the disk for a while): written interrupted by
            # this live process, no engine ever queued it again (auto_resume queues what a dead process left,
            # found orphaned), and it sat interrupted beside idle workers. Queued again after a backoff, as a
            # store failure's retry (SHORT_ATTEMPTS); interrupted once those are used up.
            retry = _retry(self.op, self.ctx.profile.retry, msg.removeprefix("interrupted: "), short=True)
            if retry is not None:
                self.ctx.log.warning(f"{retry['message']}; {where}")
                await self._settle(Status.QUEUED, **_stops_win(self.op, seq), **retry)
                return
        if reason is StopReason.SHUTDOWN and self.host.requeues_stopped and self.host.stop_signal is not None:
            # A worker with auto_resume stopped by a signal (systemd's stop, a rolling restart, a dropped terminal)
            # is no person's pause: written paused, its work waited for an `outlast resume` nobody gave, beside
            # idle workers and the same worker restarted. Queued again from the final checkpoint, to run at once
            # wherever a slot is free; a pause or cancel asked meanwhile wins in the same write.
            self.ctx.log.info(f"queued again for the next worker: {self.host.shutdown_reason}; {where}")
            await self._settle(
                Status.QUEUED,
                message=f"handed back by its worker: {msg.removeprefix('paused: ')}; {where}",
                attempt=self.op.attempt + 1,
                queued_at=self.op.queued_at,  # its place kept: queued anew, it went behind work submitted after it
                resume_seq=None,
                **_stops_win(self.op, seq, "stopped with its worker"),
            )
            return
        # A cancel asked from anywhere until the status is written wins over a pause (the store decides, in
        # the write itself): the asker was told "cancel requested".
        cancel_wins = f"{StopReason.CANCEL.message()}; {where}" if reason.status in CANCEL_WINS else None
        await self._settle(reason.status, message=f"{msg}; {where}", if_cancelled=cancel_wins)

    def _stop_message(self, reason: StopReason) -> str:
        """The status line of a stop for ``reason``, with what stopped it (the deadline, the stall timeout,
        why the engine or the store stopped)."""
        detail = {
            StopReason.SHUTDOWN: self.host.shutdown_reason,
            # The deadline it passed: the extensions the rate gave counted (it said "deadline passed (2s)" of
            # work stopped after 9s at its max_timeout of 8s).
            StopReason.TIMEOUT: f"{_seconds(self.watch.deadline - self.watch.started)}s",
            StopReason.STALLED: f"{self.ctx.profile.stall_timeout:g}s",
            StopReason.STORE: f"{self.host.settings.store_outage_limit:g}s"
            f" ({self.unsaved_since[1] if self.unsaved_since else self.host.health.why})",
        }.get(reason, "")
        return reason.message(detail)

    async def _final_checkpoint(self, always: bool = False, forced: bool = False) -> None:
        if self.lost:  # the store refused this attempt: nothing more is written (see lose())
            return
        try:
            await self.ctx.final_checkpoint(always=always, forced=forced)
        except StaleAttempt as e:
            # Another attempt holds the operation now (a lease that ran out while a frozen Redis did not
            # answer): nothing more of this one is written. It escaped as an "internal error settling the
            # attempt", with a traceback, and a try at writing `failed` over the new attempt's record.
            log.warning("%s: %s; this attempt stops without writing", self.op.id, e)
            self.lost = True
        except NotJSON as e:
            # The handler's state holds what a checkpoint cannot (the handler was told so when it saved,
            # or is failing for it now): the operation settles with its newest checkpoint as the resume
            # point. It escaped as an "internal error settling the attempt", with a traceback.
            said = str(e).removeprefix("checkpoint not saved: ")  # not said twice
            self.ctx.log.warning(f"final checkpoint not saved: {said}")
        except MemoryError:
            # Encoding it found no memory (a large state): the newest checkpoint written is the resume point. It
            # escaped as an "internal error settling the attempt", with a traceback.
            seq = self.ctx.checkpoint_seq
            where = f"resumes from checkpoint {seq}" if seq else "resumes from the start"
            self.ctx.log.warning(f"final checkpoint not saved: the machine ran out of memory; {where}")

    async def _settle(
        self,
        status: Status,
        *,
        message: str | None = None,
        error: str | None = None,
        if_cancelled: str | None = None,
        if_paused: str | None = None,
        **fields: Any,
    ) -> None:
        if self.lost:
            return  # another attempt owns the operation now
        ctx = self.ctx
        fields["progress"] = self.watch.progress(time.monotonic(), settled=True)
        fields["total_items"] = ctx.total
        fields.update(self.watch.timeout_fields())
        fields["checkpoint_seq"] = ctx.checkpoint_seq or None
        self.watch.settling = True
        written = await settle(
            self.host,
            self.op,
            status,
            message=message,
            error=error,
            if_cancelled=if_cancelled,
            if_paused=if_paused,
            **fields,
        )
        self.refused = written is False


def _forked_child_exits() -> NoReturn:
    """A process the handler forked (``os.fork()``) came back out of the handler into the engine: it ends
    here, before it writes the parent's operation or tears down the event loop it shares with the parent
    (its teardown unregistered the parent's descriptors: the parent hung, deaf to signals)."""
    failed = sys.exc_info()[0] is not None
    with contextlib.suppress(OSError):
        os.write(2, b"outlast: a process the handler forked returned into the engine; it exits here\n")
    os._exit(1 if failed else 0)


def _ctrl_c_raises() -> bool:
    """Whether Ctrl-C raises KeyboardInterrupt in this process (Python's own SIGINT handler is installed):
    then a KeyboardInterrupt may be the user's, and ends the process. Under the engine's or the dashboard's
    handler it is the handler's own raise, and ends only its operation."""
    return signal.getsignal(signal.SIGINT) is signal.default_int_handler


async def settle(
    host: AttemptHost,
    op: Operation,
    status: Status,
    *,
    message: str | None = None,
    error: str | None = None,
    result: Any = None,
    if_cancelled: str | None = None,
    if_paused: str | None = None,
    **fields: Any,
) -> bool | None:
    """Write the final transition of an attempt (durable first), then announce it. When the store fails
    for too long, the attempt is left to the next engine (``host.abandoned`` says why). ``if_cancelled``,
    ``if_paused``: see ``Store.transition`` (a pause the store turns into the cancel asked meanwhile, a
    retry into the pause).

    True: written; False: refused (another attempt holds the operation, or it is gone); None: left."""
    if status is not Status.QUEUED:
        # never before it started (a wall clock stepped back during the attempt: ``Watch.wall``)
        fields.setdefault("finished_at", max(time.time(), op.started_at or 0.0))
    if status is Status.COMPLETED:
        fields["result"] = result
    if error is not None:
        fields["error"] = error
    host.log_buffer.end(op.id)
    await host.log_buffer.flush(op.id)

    def final() -> Awaitable[Operation]:
        return host.store.transition(
            op.id,
            status,
            epoch=op.epoch,
            expect=frozenset({Status.RUNNING}),
            if_cancelled=if_cancelled,
            if_paused=if_paused,
            status_message=message or error,
            **fields,
        )

    # The handler is done, so its slot is free: the next claim for it is queued right behind this
    # write (hand_over), never ahead of it, so the local store commits both in one transaction.
    with host.settling():
        claim: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    write = asyncio.ensure_future(final())
                    if claim is None:
                        claim = host.hand_over()  # queued right behind the write: one transaction
                    written = await write
                    break
                except (StaleAttempt, Conflict, NotFound) as e:  # NotFound: the record is gone (deleted)
                    log.warning("%s: final status %s not written: %s", op.id, status.value, e)
                    await _release(host, op)
                    return False
                except Exception as e:
                    if not store_failure(e):
                        log.exception("%s: final status %s not written", op.id, status.value)
                        await _release(host, op)
                        return None
                    host.health.failed(e)
                    if host.health.give_up(host.stopping):
                        # Keep the lock: this process exits, and the next engine finds the attempt
                        # orphaned (our own recover() must not declare it dead while we live).
                        host.abandoned[op.id] = f"{status.value} not written: {why(e)}"
                        host.unwritten[op.id] = functools.partial(_write_late, host, op, final)
                        return None
                    await asyncio.sleep(STORE_RETRY)
        finally:
            if claim is not None:
                await claim  # never raises; the slot is this task's until the claim is decided
    host.health.ok()
    await _release(host, op)
    host.publish(
        StatusChanged(
            operation_id=op.id, status=written.status, previous=Status.RUNNING, message=written.status_message
        )
    )
    return True


async def _write_late(host: AttemptHost, op: Operation, final: Callable[[], Awaitable[Operation]]) -> Operation | None:
    """The final write of an abandoned attempt, once the store takes writes again; None when another
    engine has taken the operation over since. A store still failing raises (the lock is kept)."""
    try:
        new: Operation | None = await final()
    except (StaleAttempt, Conflict, NotFound):
        new = None
    await _release(host, op)
    return new


async def _release(host: AttemptHost, op: Operation) -> None:
    with contextlib.suppress(Exception):
        await host.store.release(op.id, op.epoch)


SHORT_ATTEMPTS = 5
"""Attempts an operation gets when the machine ran short (``shortage.ran_short``), whatever its policy
says: that is this worker starting more than the machine holds, not the work failing. A command's
policy allows one attempt (a command is not run twice), yet one whose process could not be forked under
a container's pids limit never ran at all. A shortage mid-work resumes from the newest checkpoint, as
after a SIGKILL."""


def _retry(op: Operation, policy: RetryPolicy, error: str, short: bool = False) -> dict[str, Any] | None:
    """The fields that queue ``op`` again after ``error``, resumed from its newest checkpoint after the
    policy's backoff; None when its attempts are used up (``short``: at least ``SHORT_ATTEMPTS``)."""
    attempts = max(policy.max_attempts, SHORT_ATTEMPTS) if short else policy.max_attempts
    if op.retries + 1 >= attempts:
        return None
    delay = policy.delay(op.retries + 1, random.random())
    now = time.time()
    return {
        "message": f"retry {op.retries + 1}/{attempts - 1} in {delay:.1f}s after {error}",
        "retries": op.retries + 1,
        "attempt": op.attempt + 1,
        "not_before": now + delay,
        "backoff_from": now,  # a clock stepped back past this ends the wait (Operation.retry_due)
        "queued_at": now,
        "resume_seq": None,
        "error": error,
    }


def _store_retry(op: Operation, e: StoreError) -> dict[str, Any] | None:
    """The fields of a retry after a store read or write that failed this time (``StoreFailed``), as after the
    machine ran short (``SHORT_ATTEMPTS``, whatever the policy); None for damage, or once they are used up."""
    if not isinstance(e, StoreFailed):
        return None
    policy = RetryPolicy()
    with contextlib.suppress(Exception):
        policy = stored_profile(op).retry
    return _retry(op, policy, f"the store failed: {e.why}", short=True)


def _stops_win(op: Operation, seq: int | None = None, when: str = "was queued again") -> dict[str, str]:
    """``if_cancelled`` and ``if_paused`` of a retry queued as an attempt started, failed or ended: a stop asked
    meanwhile keeps it from running (the request went with the write, and the retry ran to the end)."""
    seq = seq if seq is not None else op.checkpoint_seq
    asked = f"(asked as attempt {op.attempt} {when}); {f'checkpoint {seq}' if seq else 'no checkpoint'}"
    return {
        "if_cancelled": f"{StopReason.CANCEL.message()} {asked}",
        "if_paused": f"{StopReason.PAUSE.message()} {asked}",
    }


def _forged_stop(stop: OperationStopped, raised: BaseException) -> str:
    """The error of an operation whose handler raised OperationStopped with no stop asked: the reason it
    carried named, and the handler's line (where ``raised`` came from)."""
    reason = getattr(stop, "reason", None)
    said = reason.value if isinstance(reason, StopReason) else type(reason).__name__
    full = format_exception(raised)
    at = full[full.rfind(" (at ") :] if " (at " in full else ""
    return f"the handler raised OperationStopped ({said}) with no stop asked: only Outlast raises it{at}"


def _first_leaf(group: BaseExceptionGroup[OperationStopped]) -> OperationStopped:
    """The first stop in a (possibly nested) exception group."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _seconds(x: float) -> str:
    """``0.6``, ``8``, ``2600``: a span for a status line, to a tenth below 10 s."""
    return f"{round(x, 1) if x < 10 else round(x):g}"


def _too_large(result: Any) -> str | None:
    """Why ``result`` (as ``storable`` returned it) is too large to store (``MAX_RESULT_BYTES``); None if not."""
    if result is None:
        return None
    n = len(json_bytes(result, separators=(",", ":")))
    if n <= MAX_RESULT_BYTES:
        return None
    return (
        f"{n:,} bytes of JSON, over the limit of {MAX_RESULT_BYTES:,} (every listing of the store reads a"
        " result): write bulk output to a file and return its path"
    )
