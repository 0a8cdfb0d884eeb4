"""OperationContext: what a handler gets to report progress, keep state, checkpoint and stop.

The hot path (``progress``, ``advance``, one turn of ``items``) touches a few
attributes and never does I/O or builds a model: the engine samples the context
on its own clock. Everything that needs the engine's attention (a checkpoint
is due, a stop was asked for) raises one flag, ``_attention``, checked once per item.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from .autobot import SeedContextMethods
from .models import Checkpoint, LogRecord, Operation
from .profiles import TimeoutProfile
from .store.base import ItemDelta, Ledger

if TYPE_CHECKING:
    from .engine import Engine

T = TypeVar("T")

STOP_REASONS = ("cancel", "pause", "timeout", "stalled", "shutdown", "store")
ENV_OPERATION = "OUTLAST_OPERATION_ID"
ENV_ATTEMPT = "OUTLAST_ATTEMPT"


class OperationStopped(Exception):
    """Raised inside a handler at a safe point after a stop was requested. Do not catch it."""

    def __init__(self, reason: str, checkpointed: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.checkpointed = checkpointed


class TooManyFailures(Exception):
    """More item failures than the profile's failure_threshold."""


class TransientError(Exception):
    """Raise (or subclass) to ask for a retry under the profile's retry policy."""


class OperationLog:
    """``ctx.log.info("message", key=value)``: into the operation's log, without blocking."""

    __slots__ = ("_emit",)

    def __init__(self, emit: Callable[[str, str, dict[str, Any]], None]) -> None:
        self._emit = emit

    def debug(self, message: str, **fields: Any) -> None:
        self._emit("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit("info", message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._emit("warning", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit("error", message, fields)


class OperationContext(SeedContextMethods):
    """Handed to every handler as its first argument."""

    def __init__(
        self,
        engine: Engine,
        op: Operation,
        profile: TimeoutProfile,
        resume: tuple[Checkpoint, Ledger] | None,
    ) -> None:
        self._engine = engine
        self.id = op.id
        self.type = op.type
        self.attempt = op.attempt
        self.epoch = op.epoch
        self.profile = profile
        self.params: Any = None
        # Progress, read by the engine's sampler.
        self.done = 0
        self.total: int | None = op.total_items
        self.step: str | None = None
        self.message: str | None = None
        self.metrics: dict[str, Any] = {}
        self._beat = 0
        """Counts ``progress()`` calls with metrics: the stall clock also restarts when it moves."""
        # Item ledger: what is done (for resume-skip) and what changed since the last checkpoint.
        self._done_keys: set[str] = set()
        self._failed_keys: dict[str, str] = {}
        self._skipped_keys: set[str] = set()
        self._new_done: list[str] = []
        self._new_failed: dict[str, str] = {}
        self._new_skipped: list[str] = []
        self.failures = 0
        """Item failures in this attempt (counted against failure_threshold)."""
        self._current: str | None = None
        """Key of the item whose loop body is running: a checkpoint now would not be consistent."""
        self._left: tuple[str, int, int] | None = None
        """(key, frame id, instruction) where the handler left an item body without finishing it."""
        self._seq = op.checkpoint_seq or 0
        self._attention = False
        self._checkpoint_due = False
        self._checkpoint_request: dict[str, Any] | None = None
        self._stop: str | None = None
        self._dirty = False
        self._procs: set[asyncio.subprocess.Process] = set()
        self._swept = False
        self.state: dict[str, Any] = {}
        self.resume_data: dict[str, Any] | None = None
        """The checkpoint resumed from: ``next_step``, ``context_data``, ``metadata``, ``seq``."""
        if resume is not None:
            cp, ledger = resume
            self.state = dict(cp.state)
            self.resume_data = {
                "seq": cp.seq,
                "next_step": cp.next_step,
                "context_data": cp.context_data,
                "metadata": cp.metadata,
                "processed_items": cp.processed_items,
                "created_at": cp.created_at,
            }
            self._done_keys = ledger.done
            self._skipped_keys = ledger.skipped
            self.done = cp.processed_items
            self.total = cp.total_items if cp.total_items is not None else self.total
            self._seq = cp.seq
        self._done_at_checkpoint = self.done
        """``done`` at the last checkpoint: ``checkpoint_every`` counts items from there."""
        self.log = OperationLog(self._emit_log)

    # ---- state of the run ----------------------------------------------------------------------

    @property
    def resuming(self) -> bool:
        """True when this run continues from a checkpoint."""
        return self.resume_data is not None

    @property
    def cancelled(self) -> bool:
        """A stop (cancel, pause, timeout, shutdown) was asked for: finish the item and return soon."""
        return self._stop is not None

    @property
    def stop_reason(self) -> str | None:
        return self._stop

    def is_done(self, key: str) -> bool:
        return key in self._done_keys

    @property
    def done_keys(self) -> frozenset[str]:
        return frozenset(self._done_keys)

    # ---- progress: O(1), no I/O ----------------------------------------------------------------

    def progress(
        self,
        done: int | None = None,
        total: int | None = None,
        step: str | None = None,
        message: str | None = None,
        **metrics: Any,
    ) -> None:
        """Report where the operation is. Raises OperationStopped outside an item when a stop is due."""
        if done is not None:
            self.done = done
        if total is not None:
            self.total = total
        if step is not None:
            self.step = step
        if message is not None:
            self.message = message
        if metrics:
            self.metrics.update(metrics)
            self._beat += 1  # progress inside one long item (bytes copied): not stalled
        if self._stop is not None and self._current is None:
            raise OperationStopped(self._stop, checkpointed=False)

    def advance(self, n: int = 1) -> None:
        """``done += n``; the cheapest way to report progress from a tight loop."""
        self.done += n
        if self._stop is not None and self._current is None:
            raise OperationStopped(self._stop, checkpointed=False)

    # ---- items ---------------------------------------------------------------------------------

    def items(self, iterable: Iterable[T], key: Callable[[T], str] | None = None) -> AsyncIterator[T]:
        """Iterate with progress, resume-skip, failure counting, checkpoints and cancellation.

        An item is done when its loop body finishes; items done before a resume are not
        yielded again. A body that raises records a failure of that item (the handler is
        then called again with ``ctx.resuming`` True, and the item is not retried in this
        attempt) until failure_threshold is exceeded. A body left by ``break`` is not done
        (a resume offers it again), and the handler is outside the loop from then on:
        checkpoints, stops and the final checkpoint work as anywhere else.
        """
        if self.total is None and hasattr(iterable, "__len__"):
            self.total = len(iterable)  # type: ignore[arg-type]
        return _Items(self, iter(iterable), key or str)

    def fail(self, key: str, error: BaseException | str) -> None:
        """Record that ``key`` failed (the loop goes on); raises TooManyFailures past the threshold."""
        msg = error if isinstance(error, str) else _describe(error)
        self._failed_keys[key] = msg
        self._new_failed[key] = msg
        self.failures += 1
        self._dirty = True
        self._engine._item_failed(self, key, msg)
        if self._current == key:
            self._current = None
        if self.failures > self.profile.failure_threshold:
            raise TooManyFailures(
                f"{self.failures} item failures exceed failure_threshold ({self.profile.failure_threshold});"
                f" last: {key}: {msg}"
            )

    def skip(self, key: str, reason: str | None = None) -> None:
        """Record ``key`` as skipped (not done, not failed); it is not offered again on resume."""
        self._skipped_keys.add(key)
        self._new_skipped.append(key)
        self._dirty = True
        if self._current == key:
            self._current = None
        if reason:
            self.log.info(f"skipped {key}: {reason}")

    # ---- checkpoints ---------------------------------------------------------------------------

    async def checkpoint(self, next_step: str | None = None, *, now: bool = False, **context_data: Any) -> None:
        """Save a checkpoint (inside an item body: at the end of that item, unless ``now``).

        ``now=True`` saves at once from inside an item body, with the item not yet done:
        for work inside one large item (a byte offset in ``ctx.state``), so a resume
        re-enters that item and goes on from the saved state. ``next_step`` and
        ``context_data`` come back in ``ctx.resume_data`` on resume. A store that cannot
        write raises nothing here: the engine says so once, and the next checkpoint saves
        what this one held.
        """
        if self._current is not None and not now:
            self._checkpoint_request = {"next_step": next_step, "context_data": context_data}
            self._attention = True
            return
        saved = await self._save(next_step, context_data)
        if self._stop is not None:
            raise OperationStopped(self._stop, checkpointed=saved)

    async def _at_boundary(self) -> None:
        req, self._checkpoint_request = self._checkpoint_request, None
        saved = False
        if req is not None or self._checkpoint_due or self._stop is not None:
            saved = await self._save(**(req or {}))
        self._attention = self._checkpoint_request is not None or self._stop is not None
        if self._stop is not None:
            raise OperationStopped(self._stop, checkpointed=saved)

    async def _save(self, next_step: str | None = None, context_data: dict[str, Any] | None = None) -> bool:
        """Save a checkpoint; False when the store could not write it (the engine says so once, the
        work goes on, and what it held is kept for the next one). A handler never sees a store error."""
        self._checkpoint_due = False
        self._done_at_checkpoint = self.done
        # Cleared in place: items() holds a reference to _new_done.
        delta = ItemDelta(self._new_done[:], dict(self._new_failed), self._new_skipped[:])
        self._new_done.clear()
        self._new_failed.clear()
        self._new_skipped.clear()
        self._seq += 1
        cp = Checkpoint.model_construct(
            operation_id=self.id,
            seq=self._seq,
            epoch=self.epoch,
            created_at=time.time(),
            progress_percentage=(min(100.0, 100.0 * self.done / self.total) if self.total else None),
            processed_items=self.done,
            total_items=self.total,
            done_count=len(self._done_keys),
            state=self.state,
            context_data=context_data or {},
            next_step=next_step if next_step is not None else self.step,
            metadata={"attempt": self.attempt, "failures": self.failures},
            checksum="",
            size=0,
            valid=True,
        )
        self._dirty = False
        try:
            if await self._engine._save_checkpoint(self, cp, delta):
                return True
        except BaseException:
            self._unsave(delta)
            raise
        self._unsave(delta)
        return False

    def _unsave(self, delta: ItemDelta) -> None:
        """Not saved: keep the delta for the next checkpoint."""
        self._seq -= 1
        self._new_done[:0] = delta.done
        self._new_failed.update({k: v for k, v in delta.failed.items() if k not in self._new_failed})
        self._new_skipped[:0] = delta.skipped
        self._dirty = True

    def _has_unsaved(self) -> bool:
        return self._dirty or bool(self._new_done or self._new_failed or self._new_skipped)

    # ---- engine side ---------------------------------------------------------------------------

    def _request_stop(self, reason: str) -> None:
        if self._stop is None:
            self._stop = reason
            self._attention = True

    def _mark_checkpoint_due(self) -> None:
        self._checkpoint_due = True
        self._attention = True

    def _emit_log(self, level: str, message: str, fields: dict[str, Any]) -> None:
        self._engine._log(self.id, LogRecord(ts=time.time(), level=level, message=str(message), fields=fields))

    # ---- subprocesses --------------------------------------------------------------------------

    async def spawn(self, *argv: str, shell: bool = False, **kwargs: Any) -> asyncio.subprocess.Process:
        """Start a subprocess in its own process group; it is killed with its children on stop.

        Its environment carries the operation id and attempt, so that the first spawn of a later
        attempt finds and kills what an earlier one left running (its engine SIGKILLed: a shell's
        children outlive it with parent 1) instead of running the work twice side by side.
        """
        kwargs.setdefault("start_new_session", True)
        env = dict(kwargs.get("env") or os.environ)
        env[ENV_OPERATION], env[ENV_ATTEMPT] = self.id, str(self.attempt)
        kwargs["env"] = env
        if not self._swept and self.attempt > 1:
            self._swept = True
            killed = await asyncio.to_thread(kill_leftovers, self.id, self.attempt)
            if killed:
                self.log.warning(describe_leftovers(killed) + " before starting this one")
        if shell:
            if len(argv) != 1:
                raise ValueError("shell=True takes one command string")
            proc = await asyncio.create_subprocess_shell(argv[0], **kwargs)
        else:
            proc = await asyncio.create_subprocess_exec(*argv, **kwargs)
        self._procs.add(proc)
        return proc

    def child_pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.returncode is None]

    def kill_children(self, sig: int = signal.SIGKILL) -> None:
        for p in list(self._procs):
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, sig)
            else:
                self._procs.discard(p)


class _Items(AsyncIterator[T]):
    """The iterator behind ``ctx.items``: an async generator does the work; this wrapper sees the loop
    being left (``break``, an exception) at once: the loop drops its only reference and ``__del__``
    runs there and then, so the context is no longer inside an item body (the generator itself is
    only closed later, by the event loop).
    """

    __slots__ = ("_ctx", "_current", "_gen")

    def __init__(self, ctx: OperationContext, it: Iterator[T], keyf: Callable[[T], str]) -> None:
        self._ctx = ctx
        self._current: list[str | None] = [None]
        """The key whose body runs, shared with the generator (which must not refer to this object)."""
        self._gen = _iterate(self._current, ctx, it, keyf)

    def __aiter__(self) -> _Items[T]:
        return self

    def __anext__(self) -> Awaitable[T]:
        return self._gen.__anext__()

    def _leave(self, frame: FrameType | None) -> None:
        """The handler left the body of the current item without finishing it: not done."""
        k, self._current[0] = self._current[0], None
        ctx = self._ctx
        if k is not None and ctx._current == k:
            ctx._current = None
            ctx._left = (k, id(frame), frame.f_lasti) if frame is not None else None

    async def aclose(self) -> None:
        self._leave(None)
        await self._gen.aclose()

    def __del__(self) -> None:
        # Called where the loop dropped the iterator: frame 1 is the handler, at its ``break`` or at the
        # instruction an exception is leaving the body from (the engine matches it to the traceback).
        with contextlib.suppress(Exception):
            self._leave(sys._getframe(1))


async def _iterate(
    current: list[str | None], ctx: OperationContext, it: Iterator[T], keyf: Callable[[T], str]
) -> AsyncIterator[T]:
    """The work of ``ctx.items``: skip what is done, mark an item done when its body finished."""
    done_keys, failed, skipped, new_done = ctx._done_keys, ctx._failed_keys, ctx._skipped_keys, ctx._new_done
    every = ctx.profile.checkpoint_every
    for item in it:
        k = keyf(item)
        if k in done_keys or k in failed or k in skipped:
            continue
        current[0] = ctx._current = k
        ctx._left = None
        yield item
        current[0] = None
        if ctx._current is not None:  # fail() or skip() in the body clears it: not done
            ctx._current = None
            done_keys.add(k)
            new_done.append(k)
            ctx.done += 1
        if every and ctx.done - ctx._done_at_checkpoint >= every:
            ctx._mark_checkpoint_due()  # checkpoint_every items, or checkpoint_interval seconds: the first
        if ctx._attention:
            await ctx._at_boundary()


def item_of(ctx: OperationContext, exc: BaseException) -> str | None:
    """The item whose body raised ``exc``: the current one, or the one the exception left by."""
    if ctx._current is not None:
        return ctx._current
    left, ctx._left = ctx._left, None
    if left is None:
        return None
    key, frame_id, lasti = left
    tb = exc.__traceback__
    while tb is not None:
        if id(tb.tb_frame) == frame_id and tb.tb_lasti == lasti:
            return key
        tb = tb.tb_next
    return None  # raised after a ``break``: not the item's failure


def kill_leftovers(op_id: str, attempt: int | None, wait: float = 5.0) -> list[tuple[int, str, int]]:
    """SIGKILL every process (and its process group) whose environment says it was started for
    ``op_id`` by an attempt other than ``attempt`` (None: by any); wait until they are gone.
    (pid, attempt, pgid) of each; [] where there is no /proc (not Linux)."""
    mark = f"{ENV_OPERATION}={op_id}".encode()
    own = {os.getpid(), os.getpgrp()}
    found: list[tuple[int, str, int]] = []
    for pid in _pids():
        if pid in own:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
            pgid = os.getpgid(pid)
        except (OSError, ValueError):
            continue  # gone, or not ours to read
        if mark not in env:
            continue
        prefix = f"{ENV_ATTEMPT}=".encode()
        theirs = next((e[len(prefix) :].decode() for e in env if e.startswith(prefix)), "?")
        if theirs != str(attempt):
            found.append((pid, theirs, pgid))
    for pid, _a, pgid in found:
        with contextlib.suppress(OSError):
            if pgid not in own:
                os.killpg(pgid, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + wait
    while found and any(_running(pid) for pid, _a, _g in found) and time.monotonic() < end:
        time.sleep(0.02)
    return found


def describe_leftovers(killed: list[tuple[int, str, int]]) -> str:
    """One log line for what ``kill_leftovers`` killed."""
    attempts = ", ".join(sorted({a for _p, a, _g in killed}))
    groups = ", ".join(str(g) for g in sorted({g for _p, _a, g in killed}))
    return f"killed {len(killed)} process(es) left running by attempt {attempts} (process group {groups})"


def _pids() -> list[int]:
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan stays one until init reaps it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return False


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    if len(text) > 500:
        text = text[:497] + "..."
    return text


def format_exception(exc: BaseException) -> str:
    """One line for the record, the traceback's last frame included."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
    return _describe(exc) + where
