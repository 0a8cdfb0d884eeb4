"""OperationContext: what a handler gets to report progress, keep state, checkpoint and stop.

The hot path (``progress``, ``advance``, one turn of ``items``) touches a few
attributes and never does I/O or builds a model: the attempt samples the context
on the engine's clock. Everything that needs the attempt's attention (a checkpoint
is due, a stop was asked for) raises one flag, ``_attention``, checked once per item.

The context talks to its attempt through ``AttemptPort`` only; the attempt reads and drives the
context through the public members under "attempt side" (never through a handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dis
import itertools
import json
import math
import operator
import os
import signal
import sys
import sysconfig
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple, Protocol, TypeVar

from .autobot import Pending, SeedContextMethods
from .humanize import abridged
from .items import ItemLedger
from .lifecycle import StopReason
from .limits import MAX_COUNT, MAX_METRICS_CHARS, MAX_STEP_CHARS, MAX_VALUE_DEPTH
from .models import Checkpoint, LogRecord, Operation
from .processes import Children
from .profiles import TimeoutProfile
from .shortage import OUT_OF_FILES, OutOfMemory, RanShort, files_short_why, ran_short_said
from .store.base import ItemDelta, Ledger
from .text import BrokenValue, NotJSON, bad_text, clean, clean_json, storable, too_deep

T = TypeVar("T")

_getframe = sys._getframe

STOP_AGAIN_PAUSE = 0.1
"""Seconds ``ctx.items`` waits before it raises a stop again into a handler that caught it (``_stop_again``)."""
LOOP_TURN = 0.003
"""Seconds ``ctx.items`` gives the event loop at an item boundary once it is told the loop has not turned for a
while (``nudge``): every callback and task ready then runs (the clock's tick, a signal, a control poll) before
the next item."""
LOOP_LATE = 0.3
"""Seconds the engine's clock may be late (``clock_ticked``) before ``ctx.items`` lets the event loop turn at its
next item boundary, looked at by the loop itself every 16th item done (a ``monotonic()``), and by the loop's
watch thread (``nudge``)."""
_monotonic = time.monotonic


def count_of(value: object, what: str) -> int:
    """``value`` as a count of items: an int from 0 to ``MAX_COUNT``, or a float with no fraction.

    Anything else raises a ValueError naming ``what``, in the handler that passed it: a str stored as
    ``done`` hung its operation in ``running`` (the final status could not be computed), and a fraction
    or a NaN was stored, so that the record could no longer be read at all."""
    try:
        if isinstance(value, float):
            if not value.is_integer():
                raise TypeError
            n = int(value)
        else:
            n = operator.index(value)  # type: ignore[arg-type]  # an int, a bool, numpy's ints
    except (TypeError, OverflowError, ValueError):
        raise ValueError(f"{what} must be a whole number of items, not {value!r}") from None
    if n < 0:
        raise ValueError(f"{what} must be 0 or more, not {n}")
    if n > MAX_COUNT:
        raise ValueError(f"{what} must be at most 2**63-1, not {n}")
    return n


class ResumePoint(NamedTuple):
    """Where a seed-style operation would resume: ``processed_items``, ``next_step`` and ``state`` as of one save."""

    processed_items: int
    next_step: str | None
    state: dict[str, Any]
    context_data: dict[str, Any]


class AttemptPort(Protocol):
    """What a context asks of the attempt it belongs to."""

    async def save_checkpoint(self, cp: Checkpoint, delta: ItemDelta) -> bool:
        """Write a checkpoint; False when the store could not (said once; the work goes on)."""
        ...

    def item_failed(self, key: str, error: str) -> None:
        """An item failed (counted already): say so in the log and on the event bus."""
        ...

    def log(self, record: LogRecord) -> None:
        """Add a record to the operation's log (buffered: never blocks, never raises)."""
        ...

    @property
    def output_dir(self) -> Path:
        """Where operations put what they make (the store's state directory, else the settings')."""
        ...

    @property
    def log_limit(self) -> int:
        """Bytes the operation's log may grow to (settings' ``log_limit``)."""
        ...

    @property
    def outlast_dirs(self) -> list[Path]:
        """Outlast's own directories as this engine's settings name them (state directory, checkpoint mirror)."""
        ...


class OperationStopped(BaseException):
    """Raised inside a handler at a safe point after a stop was requested. Do not catch it.

    A BaseException, as ``asyncio.CancelledError`` is, so that ``except Exception`` does not catch it:
    code migrated from the seed wraps each item in one ("log it, go on with the next file"), and a
    stop caught there was logged as that item's failure and ignored until the grace period ran out.
    """

    def __init__(self, reason: StopReason, checkpointed: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.checkpointed = checkpointed


class BrokenInto(asyncio.CancelledError):
    """A stop forced into a handler that holds the event loop (blocking code: ``time.sleep``, a long
    computation): raised where it stands by the second signal the loop has not seen, as the force after
    a grace period is, since the loop that would deliver either never turns. ``by``: what broke in (a second
    signal, or the stall timeout and grace period of a handler that held the loop past them)."""

    def __init__(self, where: str, by: str = "a second signal") -> None:
        super().__init__(where)
        self.where = where
        self.by = by


class TooManyFailures(Exception):
    """More item failures than the profile's failure_threshold."""


class TransientError(Exception):
    """Raise (or subclass) to ask for a retry under the profile's retry policy."""


class ItemsMisused(RuntimeError):
    """``ctx.items`` used in a way its checkpoints cannot follow (two tasks taking items of one loop, two loops
    running items at once): the operation fails, naming it, never the item whose body runs meanwhile (counted
    as that item's failure, the handler was entered again and again until failure_threshold, and the error
    came last, behind "11 item failures exceed failure_threshold")."""


class OperationFailed(RuntimeError):
    """A failure its message says whole (a command's non-zero exit, a program that cannot start): the
    operation's error is the message alone, without the exception's type or the handler's line, which
    would read as a bug in Outlast (``RuntimeError: exit code 1 (at command.py:333)``)."""


class OperationLog:
    """``ctx.log.info("message", key=value)``: into the operation's log, without blocking. ``%`` arguments
    as the logging module takes them (``ctx.log.info("copied %s", path)``): a call ported from a logger
    raised TypeError, an item's failure."""

    __slots__ = ("_emit",)

    def __init__(self, emit: Callable[[str, str, dict[str, Any]], None]) -> None:
        self._emit = emit

    def debug(self, message: str, *args: Any, **fields: Any) -> None:
        self._emit("debug", _formatted(message, args), fields)

    def info(self, message: str, *args: Any, **fields: Any) -> None:
        self._emit("info", _formatted(message, args), fields)

    def warning(self, message: str, *args: Any, **fields: Any) -> None:
        self._emit("warning", _formatted(message, args), fields)

    def error(self, message: str, *args: Any, **fields: Any) -> None:
        self._emit("error", _formatted(message, args), fields)


def _formatted(message: str, args: tuple[Any, ...]) -> str:
    """``message % args`` as logging makes it; arguments that do not fit it are written after it, not lost."""
    if not args:
        return message
    try:
        return str(message) % args
    except Exception:
        return " ".join([str(message), *map(_shown, args)])


def _shown(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"


_YIELDS_TO_CANCEL = frozenset({StopReason.PAUSE, StopReason.SHUTDOWN, StopReason.TIMEOUT, StopReason.STALLED})
"""Stop reasons a later cancel replaces (request_stop)."""


class OperationContext(SeedContextMethods):
    """Handed to every handler as its first argument."""

    def __init__(
        self,
        attempt: AttemptPort,
        op: Operation,
        profile: TimeoutProfile,
        resume: tuple[Checkpoint, Ledger] | None,
    ) -> None:
        self._attempt = attempt
        self.id = op.id
        self.type = op.type
        self.attempt = op.attempt
        self.epoch = op.epoch
        self.profile = profile
        self.params: Any = None
        # Progress, read by the engine's sampler (``done`` and ``total`` checked when set: properties).
        self._done = 0
        self._fraction = 0.0
        self._fraction_at = -1
        """``fraction`` holds while ``_done`` is still ``_fraction_at`` (``advance()`` stays one addition)."""
        self._total: int | None = op.total_items
        self._total_estimated = op.total_items is not None
        """``_total`` is the submitter's estimate (``--items N``), which the handler's own total replaces."""
        self._total_from_loop = False
        """``_total`` is a top-level ``ctx.items`` loop's length (a nested loop drops it: ``items``)."""
        self._step: str | None = None
        self._message: str | None = None
        self.metrics: dict[str, Any] = {}
        self._beat = 0
        """Counts ``progress()`` calls with metrics or a new step or message: the stall clock also restarts
        when it moves."""
        self._ledger = ItemLedger(resume[1] if resume is not None else None)
        self.failures = 0
        """Item failures in this attempt (counted against failure_threshold)."""
        self._too_many: str | None = None
        """What TooManyFailures said, once raised into the handler (which may catch it and return)."""
        self._seq = op.checkpoint_seq or 0
        self._attention = False
        """Set by whatever needs the next item boundary (a checkpoint due or asked for, a stop); set for good
        once a stop is raised into the handler (``ctx.items`` looks at ``_stop_raised`` only when it is set)."""
        self._checkpoint_due = False
        self._turn_due = False
        """The event loop has not turned for a while (``nudge``): the next item boundary lets it turn."""
        self.clock_ticked = math.inf
        """When the engine's clock last ticked (monotonic; set by it at each tick; inf: no clock runs this
        context). ``ctx.items`` lets the event loop turn once it is ``LOOP_LATE`` late: the watch thread's
        ``nudge`` alone came 1-2 s late on a loaded machine, where that thread waited as long for the GIL, and a
        Redis lease of 2 s ran out under a loop of quick items (another worker took the operation over)."""
        self._checkpoint_request: dict[str, Any] | None = None
        self._said_key_text = False
        self._said_metrics: set[str] = set()
        self._saving = asyncio.Lock()
        """One checkpoint save at a time, in seq order: each links to the one before it (its delta's
        hash chain), and tasks of one handler checkpointing at once would otherwise race past that."""
        self._stop: StopReason | None = None
        self._stop_raised = False
        """OperationStopped was raised into the handler: every later safe point raises it again (sticky)."""
        self._swallowed = False
        """The handler reached a safe point after a stop was raised into it: it caught the stop and went on."""
        self._stop_task: asyncio.Task[Any] | None = None
        """The task the stop was first raised into: raised there again, the handler caught it."""
        self._abandoned = False
        """The attempt gave up on the handler (``abandon``): nothing it does is written any more."""
        self._ended = False
        """The attempt is over (``end``): what is logged through this context from now on is not written."""
        self._broken: str | None = None
        """What the engine was doing when its bookkeeping of an item failed part-way (out of memory recording a
        key done): the done-set and ``state`` may disagree, so no checkpoint is written from here on unless the
        final one can finish the recording (``_mend``; else the resume goes from the newest one, as after an
        item cut off mid-body), and every safe point raises."""
        self._unrecorded: str | None = None
        """The key whose body finished and whose recording as done failed part-way (``_mend`` finishes it)."""
        self._short: str | None = None
        """What the engine was doing when it ran out of memory for this attempt (``OutOfMemory``)."""
        self.state: dict[str, Any] = {}
        self.resume_data: dict[str, Any] | None = None
        """The checkpoint resumed from: ``next_step``, ``context_data``, ``metadata``, ``seq``."""
        if resume is not None:
            cp = resume[0]
            self.state = dict(cp.state)
            self.resume_data = {
                "seq": cp.seq,
                "next_step": cp.next_step,
                "context_data": cp.context_data,
                "metadata": cp.metadata,
                "processed_items": cp.processed_items,
                "created_at": cp.created_at,
            }
            self._done = cp.processed_items
            if cp.total_items is not None:
                self._total, self._total_estimated = cp.total_items, (cp.metadata or {}).get("total_estimated") is True
            self._seq = cp.seq
        self._done_at_checkpoint = self._done
        """``done`` at the last checkpoint: ``checkpoint_every`` counts items from there."""
        self._keys_counted = 0
        self._keys_size = 0
        """How many of the keys done since the last checkpoint ``unsaved_keys_size`` has counted, and their size."""
        self._met_done = False
        """A loop of this attempt met a key its checkpoint counted as done (else, resumed: the keys changed?)."""
        self._done_resumed = len(self._ledger.done) if resume is not None else 0
        """Keys the checkpoint resumed from counted as done (not the ones this attempt's loops add)."""
        self.repeated = 0
        """Items a loop of this first attempt skipped because another item of this attempt had their key (a
        second loop over the same keys, nested loops keyed by a name that repeats): item keys are one space for
        the whole operation. Said in the log and in the completed status line, not only the log."""
        self._point: ResumePoint | None = None
        """Set while the handler works in the seed's style (``seed_style()``): its last explicit checkpoint."""
        self._resumed_point: ResumePoint | None = None
        """The checkpoint resumed from, as it was saved (taken by ``seed_style()``)."""
        self._native = False
        """``ctx.items`` was used: the ledger of item keys makes every checkpoint exact, no point is kept."""
        self.log = OperationLog(self._emit_log)
        self._children = Children(op.id, op.attempt, self._engine_warning)

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
    def stop_reason(self) -> StopReason | None:
        return self._stop

    @property
    def output_dir(self) -> Path:
        """A directory for what the operation makes (reports, indexes): ``outputs`` in the state directory."""
        return self._attempt.output_dir

    @property
    def log_limit(self) -> int:
        """Bytes this operation's log may grow to (``log_limit``): cap output files the handler writes at it."""
        return self._attempt.log_limit

    @property
    def outlast_dirs(self) -> list[Path]:
        """Outlast's own directories, as the settings of the engine running this operation name them: its
        state directory (the store's, for a local store) and its checkpoint mirror. What a handler that
        deletes files must never touch: read from the settings a process loaded itself, a ``--config``
        file's mirror was missed."""
        return self._attempt.outlast_dirs

    def is_done(self, key: str) -> bool:
        if (key if key.__class__ is str else self._key_text(key)) not in self._ledger.done:
            return False
        # A handler that leaves the done items out itself (``[f for f in files if not ctx.is_done(f)]``,
        # as the built-ins do) found its keys: its loop meets none of them, and that is no sign that the
        # keys changed. Every resume of an index, a backup or an analysis warned that "every one was run
        # again" when none was.
        self._met_done = True
        return True

    def _key_text(self, key: object) -> str:
        """An item key that is not a ``str`` (an int, a Path): its ``str``, the form a checkpoint lists and a
        resume reads back. Kept as it was, the checkpoint was written but never read back (every resume
        started again from scratch, each done item run twice). Said once per attempt. None is refused: it is
        what a key function without its ``return`` gives, the same for every item, and all but the first were
        skipped as done with the operation completed."""
        if key is None:
            raise TypeError(
                "an item key is None (a key= function that returns nothing?): a key names one item, and every"
                " item whose key is None would be one"
            )
        text = str(key)
        _plain_key(key, text)
        if not self._said_key_text:
            self._said_key_text = True
            self.log.warning(
                f"item key {key!r} ({type(key).__name__}) is not a str: keys are kept as their str ({text!r})"
            )
        return text

    @property
    def done_keys(self) -> frozenset[str]:
        return frozenset(self._ledger.done)

    # ---- progress: O(1), no I/O ----------------------------------------------------------------

    @property
    def done(self) -> int:
        """Items done: set by ``items()``, ``advance()`` and ``progress(done=...)``, or by hand."""
        return self._done

    @done.setter
    def done(self, value: int) -> None:
        self._done = count_of(value, "ctx.done")
        if self._done < self._done_at_checkpoint:
            self._done_at_checkpoint = self._done  # see progress()

    @property
    def fraction(self) -> float:
        """The part of the next item done (0 <= fraction < 1), for progress reported with a fraction (a
        migrated function's ``progress_callback(2.5, 10)``: ``done`` 2, ``fraction`` 0.5): the percent
        counts it (25%, not 20%). It lapses when ``done`` changes."""
        return self._fraction if self._done == self._fraction_at else 0.0

    @fraction.setter
    def fraction(self, value: float) -> None:
        if not (isinstance(value, int | float) and 0 <= value < 1):  # NaN too
            raise ValueError(f"ctx.fraction must be from 0 to less than 1, not {value!r}")
        if value != self.fraction:
            self._beat += 1  # 2.1, 2.2, 2.3 of 10 is progress, not a stall
        self._fraction, self._fraction_at = float(value), self._done

    @property
    def step(self) -> str | None:
        """Where the handler is (shown, and the default ``next_step`` of a checkpoint)."""
        return self._step

    @step.setter
    def step(self, value: object) -> None:
        self._step = _text(value)

    @property
    def message(self) -> str | None:
        return self._message

    @message.setter
    def message(self, value: object) -> None:
        self._message = _text(value)

    def metrics_to_store(self) -> dict[str, Any]:
        """``metrics`` as a record can hold them. A value JSON has no form for but a string (bytes, a
        ``datetime``) is kept as its ``str``, NaN as null; one with none (a cycle, the context itself)
        is left out, said once per name: it stopped every write of the record, the final status too,
        and completed work was found interrupted and run again. So is one whose ``str()`` raises (it was an
        "internal error", exit 70, a traceback at each of the supervisor's ticks)."""
        metrics = self.metrics
        try:
            deep = too_deep(metrics, "", MAX_VALUE_DEPTH + 1)  # a record cannot hold it: storable says why, below
            if (
                deep is None
                and len(json.dumps(metrics, allow_nan=False)) <= MAX_METRICS_CHARS
                and bad_text(metrics, "") is None
            ):
                return dict(metrics)
        except (TypeError, ValueError, RecursionError):
            pass
        kept: dict[str, Any] = {}
        room = MAX_METRICS_CHARS
        for name, value in list(metrics.items()):
            key = clean(str(name))
            try:
                value, why = storable(value, f"metric {key!r}")
            except BrokenValue as e:
                why = str(e)
            if why is None:
                value = clean_json(value)
                n = len(json.dumps(value)) + len(json.dumps(key)) + 2
                if n > room:  # a record written at every progress report, read by every listing
                    if key not in self._said_metrics:
                        self._said_metrics.add(key)
                        self.log.warning(
                            f"not stored: metric {key!r} is {n:,} characters of JSON, past the {MAX_METRICS_CHARS:,}"
                            " all metrics may take (a metric is a count or a short value: keep bulk data in ctx.state"
                            " or your own output)"
                        )
                    continue
                room -= n
                kept[key] = value
            elif key not in self._said_metrics:
                self._said_metrics.add(key)
                self.log.warning(f"not stored: {why}; a metric holds JSON values only")
        return kept

    @property
    def total(self) -> int | None:
        """Items in all (None: not known yet)."""
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = None if value is None else count_of(value, "ctx.total")
        self._total_estimated = self._total_from_loop = False

    @property
    def shown_total(self) -> int | None:
        """The total progress shows: none once ``done`` has passed a total that was only an estimate (``--items
        N``, ``estimated_items``; it still times the attempt). Shown, a command given ``--items 3`` that said
        ``::outlast progress 5`` was listed at 5/3 items, 100%, while it ran."""
        if (self._total_estimated or self._total_from_loop) and self._total is not None and self._done > self._total:
            return None  # a loop's length passed: a second pass over the same files read "15/10 items, 100%, eta 0s"
        return self._total

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
            self._done = count_of(done, "ctx.progress(done=...)")
            if self._done < self._done_at_checkpoint:
                # A count of its own that went back (this run's list of what is left, from 0 after a resume at
                # 4,000): checkpoint_every counts on from here, not from 4,000 (no checkpoint by count came
                # before the count had passed 4,000 again, and a kill repeated all of that work).
                self._done_at_checkpoint = self._done
        if total is not None:
            self._total = count_of(total, "ctx.progress(total=...)")
            self._total_estimated = self._total_from_loop = False
        if step is not None or message is not None:
            said = (self._step, self._message)
            if step is not None:
                self.step = step
            if message is not None:
                self.message = message
            if (self._step, self._message) != said:
                # A new step or message is a sign of life, as metrics are: a long phase reported all along with
                # the counts unchanged ("Finalizing part 3 of 30", the seed's update_progress) ended stalled.
                self._beat += 1
        if metrics:
            self.add_metrics(metrics)
        if self._stop is not None and (self._ledger.current is None or self._stop_raised):
            raise self._stopped(checkpointed=False)

    def add_metrics(self, metrics: dict[str, Any]) -> None:
        """Metrics under any names: ``progress(**metrics)`` takes ``done``, ``total``, ``step`` and ``message``
        as its own arguments (the seed's ``performance_metrics`` dict with a ``"total"`` in seconds failed
        the operation with "got multiple values"). A value that moved restarts the stall clock (bytes copied
        inside one long item: not stalled); the same values again do not, as the same step again does not (a
        handler that reported ``waiting=1`` every second while blocked never stalled)."""
        if metrics:
            had = self.metrics
            if any(_moved(had, name, value) for name, value in metrics.items()):
                self._beat += 1
            had.update(metrics)

    def advance(self, n: int = 1) -> None:
        """``done += n``; the cheapest way to report progress from a tight loop."""
        if n == 1 and n.__class__ is int:  # the common call, one comparison cheaper (about 12 ns of 80)
            self._done += 1
        else:
            if n.__class__ is not int or not 0 <= n <= 4294967295:  # a large one is checked in full, here only
                n = count_of(n, "ctx.advance(n)")
                if self._done + n > MAX_COUNT:  # a count no record keeps: said here, not as "ctx.total" at the end
                    raise ValueError(f"ctx.advance({n}): items done would pass 2**63-1 (at {self._done} now)")
            self._done += n
        if self._stop is not None and (self._ledger.current is None or self._stop_raised):
            raise self._stopped(checkpointed=False)

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
        # The submitter's estimate (--items N) too: what the loop will go through is the real total.
        if self._ledger.current is not None:
            # A loop nested in another's item: its items count in ``done`` as the outer's do, so the outer loop's
            # length is no total (10 directories of 100 files read 90/10, 100%, ETA 0 for the whole run; 300 x 10
            # paused at 221 read 73%). No total then, unless the handler gave one (``ctx.progress(total=)``).
            if self._total_from_loop:
                self.total = None
        elif hasattr(iterable, "__len__"):
            n = len(iterable)  # type: ignore[arg-type]
            if self.total is None or self._total_estimated or self.total == n:  # == n: a resumed one's, as saved
                self.total = n
                self._total_from_loop = True
        try:
            it = iter(iterable)
        except TypeError:
            if hasattr(iterable, "__aiter__"):  # "'async_generator' object is not iterable"
                raise TypeError(
                    "ctx.items() takes an iterable (a list, a generator), not an async one"
                    f" ({type(iterable).__name__}): collect it first (items = [x async for x in source])"
                    " and pass the list"
                ) from None
            raise
        self._native, self._point = True, None
        return _Items(self, self._ledger, it, key or str)

    def fail(self, key: str, error: BaseException | str) -> None:
        """Record that ``key`` failed (the loop goes on); raises TooManyFailures past the threshold.

        An error that says the machine ran short (no descriptor, process or thread left) is raised
        instead (RanShort): the item did not fail, and the attempt is retried with the item not done (a
        backup under a tight ``ulimit -n`` listed the files it could not open as failed and went on)."""
        if self._abandoned:
            return
        if ran_short_said(error):
            raise RanShort(f"item {key}: {error}")
        msg = clean(error) if isinstance(error, str) else _describe(error)  # _describe's is clean
        key = key if key.__class__ is str else self._key_text(key)
        self._ledger.fail(key, msg)
        self.failures += 1
        self._attempt.item_failed(key, msg)
        self._ledger.end_body(key)
        if self.failures > self.profile.failure_threshold:
            self._too_many = (
                f"{self.failures} item failures exceed failure_threshold ({self.profile.failure_threshold});"
                f" last: {key}: {msg}"
            )
            raise TooManyFailures(self._too_many)

    def skip(self, key: str, reason: str | None = None) -> None:
        """Record ``key`` as skipped (not done, not failed); it is not offered again on resume."""
        key = key if key.__class__ is str else self._key_text(key)
        self._ledger.skip(key)
        self._ledger.end_body(key)
        if reason:
            self.log.info(f"skipped {key}: {reason}")

    # ---- the seed's style: results kept by the handler, handed over only to save_checkpoint -----

    def seed_style(self) -> ResumePoint | None:
        """Seed side (``autobot.py``'s methods call it): the handler reports in the seed's style.

        Such a handler keeps its results itself and hands them over only to ``save_checkpoint``, and
        resumes from ``get_resume_data()``'s ``processed_items`` or ``next_step`` with its
        ``intermediate_results``: those agree only as of one save. So from now on a checkpoint the engine
        takes (a stop's, a timeout's) repeats the ``processed_items``, ``next_step`` and ``state`` of the last
        checkpoint the handler asked for (or of the one resumed from, or nothing done): the work since is
        done again, never skipped (a pause at file 150 after a save at 100 skipped 50 files on resume). Not
        once ``ctx.items`` is used: its ledger of item keys makes every checkpoint exact.

        Returns the checkpoint resumed from as it was saved (None: not resuming)."""
        if self._native:
            return None
        if self._point is None:
            data = self.resume_data
            if data is not None:
                done = int(data.get("processed_items") or 0)
                self._resumed_point = ResumePoint(
                    done, data.get("next_step"), copy.deepcopy(self.state), dict(data.get("context_data") or {})
                )
                self._point = self._resumed_point
            else:
                self._point = ResumePoint(0, None, {}, {})
        return self._resumed_point

    # ---- checkpoints ---------------------------------------------------------------------------

    def checkpoint(
        self, next_step: str | None = None, *, now: bool = False, **context_data: Any
    ) -> Coroutine[Any, Any, None]:
        """``_checkpoint``, said in the log when it is called without ``await`` (no checkpoint is taken then)."""
        return Pending(self._checkpoint(next_step, now=now, **context_data), "ctx.checkpoint()", _getframe(1), self)

    async def _checkpoint(self, next_step: str | None = None, *, now: bool = False, **context_data: Any) -> None:
        """Save a checkpoint (inside an item body: at the end of that item, unless ``now``).

        ``now=True`` saves at once from inside an item body, with the item not yet done:
        for work inside one large item (a byte offset in ``ctx.state``), so a resume
        re-enters that item and goes on from the saved state. ``next_step`` and
        ``context_data`` come back in ``ctx.resume_data`` on resume. A store that cannot
        write raises nothing here: the engine says so once, and the next checkpoint saves
        what this one held.
        """
        if self._abandoned:
            raise self._stopped(checkpointed=False)  # nothing of it is written any more
        if self._ledger.current is not None and not now and not self._stop_raised:
            self._checkpoint_request = {"next_step": next_step, "context_data": context_data}
            self._attention = True
            return
        saved = await self._save(next_step, context_data, asked=True)
        if self._stop is not None:
            raise self._stopped(checkpointed=saved)

    async def _at_boundary(self) -> None:
        if self._turn_due:
            # A loop of quick synchronous bodies awaits nothing else: the clock that marks a checkpoint due
            # (and sees a signal, a pause asked by another process) never ran, and 1.9M items over 12s with a
            # checkpoint_interval of 1s were saved by no checkpoint at all, lost whole to a SIGKILL.
            self._turn_due = False
            await asyncio.sleep(LOOP_TURN)
            # A running clock set this itself in that turn; one that no longer ticks (a handler going on after
            # its engine stopped) would have every 16th item turn the loop: at most one turn per LOOP_LATE.
            self.clock_ticked = max(self.clock_ticked, _monotonic())
        req, self._checkpoint_request = self._checkpoint_request, None
        saved = False
        if req is not None or self._checkpoint_due or self._stop is not None:
            saved = await self._save(**(req or {}), asked=req is not None)
        self._attention = self._checkpoint_request is not None or self._stop is not None or self._turn_due
        if self._stop is not None:
            raise self._stopped(checkpointed=saved)

    def _stopped(self, checkpointed: bool) -> OperationStopped:
        """The stop to raise into the handler now; from here on every safe point raises it again. A handler
        that catches it and goes on (``except BaseException: continue`` around its loop) ran an item per
        catch, its stop asked again at each boundary, and ended completed minutes after a pause."""
        assert self._stop is not None
        try:
            task = asyncio.current_task()
        except RuntimeError:  # a thread of the handler's (``asyncio.to_thread``) reporting progress
            task = None
        if not self._stop_raised:
            self._stop_task = task
        elif task is not None and task is self._stop_task:  # not a sibling task (gather) on its way out
            self._swallowed = True
        self._stop_raised = True
        return OperationStopped(self._stop, checkpointed=checkpointed)

    async def _stop_again(self) -> None:
        """``ctx.items``'s next item after a stop was raised into the handler: the stop again, never an item.
        A short wait first, so that a handler catching it in a loop does not spin the event loop (and the
        supervisor that cancels it) at full speed; an abandoned handler waits here for good."""
        if self._abandoned:
            await asyncio.get_running_loop().create_future()  # never set: parked, at no cost, until the process ends
        await asyncio.sleep(STOP_AGAIN_PAUSE)
        raise self._stopped(checkpointed=False)

    async def _save(
        self, next_step: str | None = None, context_data: dict[str, Any] | None = None, asked: bool = False
    ) -> bool:
        """Save a checkpoint; False when the store could not write it (the engine says so once, the
        work goes on, and what it held is kept for the next one). A handler never sees a store error.
        ``asked``: the handler asked for it (not a stop's or the interval's)."""
        if self._abandoned:
            return False  # refused: the attempt was settled without its handler (``abandon``)
        if self._broken is not None:  # a handler that caught the error and went on: nothing of it is written
            raise self._ran_short(self._broken)
        async with self._saving:
            return await self._save_one(next_step, context_data, asked)

    async def _save_one(self, next_step: str | None, context_data: dict[str, Any] | None, asked: bool) -> bool:
        if not isinstance(self.state, dict):
            # ``ctx.state = None`` (or a list): saved, but no resume could read it back, and the next attempt
            # started again from the first item without a word.
            raise NotJSON(
                f"checkpoint not saved: ctx.state is a {type(self.state).__name__}, not a dict; a checkpoint's"
                " state is a dict (set its keys, or assign it a dict)"
            )
        self._checkpoint_due = False
        self._done_at_checkpoint = self.done
        delta = self._ledger.take()
        self._keys_counted = self._keys_size = 0
        self._seq += 1
        done, state, step = self.done, self.state, next_step if next_step is not None else self.step
        context_data = context_data or {}
        point = self._point  # the seed's style (seed_style()): a stop's checkpoint repeats the last asked for
        if point is not None and not asked:
            done, step, state, context_data = point
        # An estimate (``--items N``) passed is no total (as ``shown_total``: "6/?", not 100% "6/3"); one kept
        # says it is one, so a resume does not take it for the handler's own total.
        total, metadata = self.total, {"attempt": self.attempt, "failures": self.failures}
        if (self._total_estimated or self._total_from_loop) and total is not None:  # a loop's passed: none either
            total = None if done > total else total
            if self._total_estimated:
                metadata["total_estimated"] = True
        cp = Checkpoint.model_construct(
            operation_id=self.id,
            seq=self._seq,
            epoch=self.epoch,
            created_at=time.time(),
            progress_percentage=(min(100.0, 100.0 * done / total) if total else None),
            processed_items=done,
            total_items=total,
            done_count=len(self._ledger.done),
            state=state,
            context_data=context_data,
            next_step=step,
            metadata=metadata,
            checksum="",
            size=0,
            valid=True,
        )
        try:
            saved = await self._attempt.save_checkpoint(cp, delta)
        except BaseException as e:
            try:
                self._unsave(delta)
            except BaseException as again:  # the keys of the delta lost: no later checkpoint may go without them
                raise self.broke("keeping the item keys of a checkpoint it could not save", again) from e
            if isinstance(e, MemoryError):  # encoding it (a large state): the machine's, not the handler's
                raise self._ran_short(f"saving checkpoint {cp.seq}", e) from e
            raise
        if point is not None and asked:  # written, or to be written by the next (JSON, then: a safe copy)
            self._point = ResumePoint(done, step, copy.deepcopy(state), copy.deepcopy(context_data))
        if saved:
            return True
        self._unsave(delta)
        return False

    def broke(self, doing: str, e: BaseException, key: str | None = None) -> BaseException:
        """The engine's bookkeeping failed part-way while ``doing`` (``e``; recording ``key`` done): what to raise
        into the handler. From here on no checkpoint is written (``_broken``) and every safe point raises; a
        MemoryError becomes the engine's ``OutOfMemory``."""
        self._broken = doing
        self._unrecorded = key
        self._attention = True  # ctx.items' next turn goes through ``_between``, which raises again
        return self._ran_short(doing, e) if isinstance(e, MemoryError) else e

    def _ran_short(self, doing: str, e: BaseException | None = None) -> BaseException:
        """The ``OutOfMemory`` that says the engine ran out of memory ``doing`` (``e`` itself, should even that
        find no memory: the attempt asks ``short_of_memory``, not the exception's type)."""
        self._short = self._short or doing
        if isinstance(e, OutOfMemory):
            return e
        try:
            return OutOfMemory(f"the machine ran out of memory: the engine could not go on {doing}")
        except MemoryError:
            return e if e is not None else MemoryError()

    def _unsave(self, delta: ItemDelta) -> None:
        """Not saved: keep the delta for the next checkpoint."""
        self._seq -= 1
        self._ledger.restore(delta)
        self._keys_counted = self._keys_size = 0  # put back in front: counted again

    def unsaved_keys_size(self) -> int:
        """About how large, as JSON, the keys of the items done since the last checkpoint are (the next
        checkpoint's delta). Counts only the keys added since the last call: the engine's clock asks at each
        tick, never the hot path."""
        new = self._ledger.new_done
        n = len(new)
        if n > self._keys_counted:
            self._keys_size += sum(map(len, itertools.islice(new, self._keys_counted, None))) + 3 * (
                n - self._keys_counted
            )
            self._keys_counted = n
        return self._keys_size

    # ---- attempt side: called by the attempt running the handler, not by handlers -------------

    @property
    def beat(self) -> int:
        """Counts ``progress()`` calls with metrics or a new step or message: the stall clock also restarts
        when it moves."""
        return self._beat

    @property
    def failed_count(self) -> int:
        """Items failed in this attempt."""
        return len(self._ledger.failed)

    @property
    def skipped_count(self) -> int:
        """Items skipped, this attempt and the ones before it."""
        return len(self._ledger.skipped)

    @property
    def checkpoint_seq(self) -> int:
        """The newest checkpoint saved (0: none): where a resume would start."""
        return self._seq

    @property
    def outcomes_unsaved(self) -> bool:
        """Item failures or skips not yet in a checkpoint, or a retried item done since (a completed run
        saves them with its record)."""
        return self._ledger.outcomes_unsaved

    @property
    def short_of_memory(self) -> str | None:
        """What the engine was doing for this attempt when it found no memory (None: it never ran short)."""
        return self._short

    @property
    def stop_raised(self) -> bool:
        """A stop was raised into the handler (OperationStopped): one that returns after it caught it had not
        finished its work, whatever it returns."""
        return self._stop_raised

    @property
    def too_many_failures(self) -> str | None:
        """TooManyFailures was raised into the handler (its message): one that returns after it caught it failed
        all the same."""
        return self._too_many

    @property
    def saving(self) -> bool:
        """A checkpoint of this attempt is being written (or waits for the one before it): the handler, at a safe
        point, waits on the store, and that time is the store's, not the handler's (``Watch.tick``)."""
        return self._saving.locked()

    @property
    def stop_swallowed(self) -> bool:
        """The handler caught a stop raised into it and went on to another safe point (it ignores stops)."""
        return self._swallowed

    def abandon(self) -> None:
        """The attempt settles without its handler, which ignored the stop and its forced cancel: from now on
        nothing the handler does through this context is written (checkpoints, logs, item failures, spawns),
        every safe point raises the stop, and ``ctx.items`` parks it for good."""
        self._abandoned = True
        self._stop_raised = True
        self._attention = True  # ctx.items checks _stop_raised only when _attention is set
        if self._stop is None:
            self._stop = StopReason.SHUTDOWN

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def end(self) -> None:
        """The attempt is over, its status written: a task the handler left running that still logs through
        this context (or a context kept past the return) wrote lines into a completed operation's log, stamped
        after it completed. Nothing it logs is written from now on, as for an abandoned handler."""
        self._ended = True

    def request_stop(self, reason: StopReason) -> None:
        """Ask the handler to stop at its next safe point. The first reason asked for wins, but a cancel
        replaces a pause or a shutdown (both leave it resumable: the cancel gives it up), which kept the
        pause: a cancel asked behind one was answered "cancel requested" and the operation ended paused."""
        if self._stop is None or (reason is StopReason.CANCEL and self._stop in _YIELDS_TO_CANCEL):
            self._stop = reason
            self._attention = True

    def mark_checkpoint_due(self) -> None:
        """The checkpoint interval passed: save at the next item boundary."""
        self._checkpoint_due = True
        self._attention = True

    def nudge(self) -> None:
        """The event loop has not turned for a while (said by the loop's watch thread): ``ctx.items``' next
        item boundary lets it turn, so that the engine's clock runs between two items of a loop whose bodies
        never await (a checkpoint due, a stop asked for). Two flags set from another thread: each a single
        store, and a boundary that misses one is nudged again at the watch's next look."""
        self._turn_due = True
        self._attention = True

    async def final_checkpoint(self, always: bool = False, forced: bool = False) -> None:
        """Save what is done. ``always``: even when no item changed (a stop: progress, ``state`` and the
        step are saved too). ``forced``: the handler was cancelled where it stood."""
        if self._broken is not None and not self._mend():
            # Its bookkeeping failed part-way (an item's effects in ``state``, its key not recorded) and cannot be
            # finished now: a checkpoint would hold the one without the other (the resume ran that finished item
            # again). The newest checkpoint written stays the resume point, as for an item cut off mid-body.
            seq = self._seq
            where = f"resumes from checkpoint {seq}" if seq else "resumes from the start"
            self.log.warning(f"final checkpoint skipped: the engine ran out of memory {self._broken}; {where}")
            self._ledger.current = None
            return
        cut = self._ledger.cut_off(forced)
        if cut is not None:
            # A body cut off by force may have changed ``state`` half-way: saving it would let the
            # done-set and the state disagree (part of that item counted twice). The newest durable
            # checkpoint stays the resume point: at most one checkpoint interval is done again.
            self.log.warning(f"final checkpoint skipped: item {cut!r} was cut off mid-body")
            self._ledger.current = None
            return
        if always or self._ledger.unsaved:
            await self._save()  # a store that fails is said once (and the status write is still tried)

    def _mend(self) -> bool:
        """Finish recording the item whose recording as done failed part-way (memory may be back, now that the
        handler's frames are gone): True when the done-set, the keys new since the last checkpoint and the count
        agree with ``state`` again. Each step is done unless it was (the count, the last, never was: only a
        MemoryError breaks the recording, and none is raised once the count is stored)."""
        k = self._unrecorded
        if k is None:
            return False
        ledger = self._ledger
        try:
            if k not in ledger.done:
                ledger.done.add(k)
            if not ledger.new_done or ledger.new_done[-1] != k:
                ledger.new_done.append(k)
            self._done += 1
        except MemoryError:
            return False
        self._unrecorded = self._broken = None
        return True

    def failed_item(self, exc: BaseException) -> str | None:
        """The item whose body raised ``exc`` (None: the handler raised it outside any item's body, misused
        ``ctx.items``, or raised ``OperationFailed``: each fails the operation; an ``OperationFailed`` raised in
        an item's body was counted as that item's failure, and the operation completed)."""
        if isinstance(exc, (ItemsMisused, OperationFailed)):
            return None
        return self._ledger.failed_item(exc)

    def reenter(self) -> None:
        """The handler is called again after an item failed: it sees ``resuming`` and skips that item."""
        self.resume_data = self.resume_data or {
            "seq": self._seq,
            "next_step": self.step,
            "context_data": {},
            "metadata": {},
            "processed_items": self.done,
        }

    def _emit_log(self, level: str, message: str, fields: dict[str, Any]) -> None:
        if self._abandoned or self._ended:
            return  # its operation was settled without it: a later attempt's log is not its to write
        self._attempt.log(LogRecord(ts=time.time(), level=level, message=str(message), fields=fields))

    def _engine_warning(self, message: str) -> None:
        """A line of the engine's own about the attempt's processes (what it killed), written after the attempt
        ended too (``end``: the handler's lines are not), as it reaps them after the final status."""
        if self._abandoned:
            return
        self._attempt.log(LogRecord(ts=time.time(), level="warning", message=message, fields={}))

    # ---- subprocesses --------------------------------------------------------------------------

    async def spawn(self, *argv: str, shell: bool = False, **kwargs: Any) -> asyncio.subprocess.Process:
        """Start a subprocess in its own process group; it is killed with its children on stop.

        Its environment carries the operation id and attempt, so that the first spawn of a later
        attempt finds and kills what an earlier one left running (its engine SIGKILLed: a shell's
        children outlive it with parent 1) instead of running the work twice side by side.
        """
        if self._abandoned:
            raise self._stopped(checkpointed=False)
        return await self._children.spawn(*argv, shell=shell, **kwargs)

    def child_pids(self) -> list[int]:
        return self._children.pids()

    def kill_children(self, sig: int = signal.SIGKILL) -> None:
        self._children.kill(sig)

    async def reap_children(self) -> None:
        """Kill what the subprocesses left running outside their process groups (the engine calls this
        when the attempt ends; see ``Children.reap``)."""
        await self._children.reap()


class _Items(AsyncIterator[T]):
    """The iterator behind ``ctx.items``: skips what is done, marks an item done when its loop body
    finished (at the next ``__anext__``), and sees the loop being left (``break``, an exception) at once:
    the loop drops its only reference and ``__del__`` runs there and then, so the context is no longer
    inside an item body.

    A class whose ``__anext__`` is a coroutine, not an async generator behind a wrapper: a turn of the
    loop cost the wrapper's call, the generator's ``asend`` object and its wrapped value on top of the
    work (1 us an item, a bare ``for`` 6 ns); one coroutine per item is the least an ``async for`` costs.
    A turn with nothing to attend to (no stop, no checkpoint asked for or due: ``_attention`` clear, and the
    task that took the item before) does the rest in that one coroutine; any other goes through
    ``_between``, the full turn. A stop raised into the handler leaves ``_attention`` set for good, so the
    quick turn never has to ask about it.

    After a resume, a key equal to the next of the done keys in the order they were done (``ledger.order``)
    is done with a string compare, no hash and no probe of a large set (the skip of 100,000 done items took
    half the time of a resume). Any other key is looked up in the sets; so is every key once the order is
    used up (``_want`` then stays the last done key: a match is still done). A first attempt has no order
    (``_want`` None, which no key equals).
    """

    __slots__ = (
        "_ctx",
        "_done_keys",
        "_every",
        "_failed",
        "_had",
        "_in_order",
        "_it",
        "_k",
        "_keyf",
        "_ledger",
        "_loop",
        "_met",
        "_met_repeat",
        "_outer",
        "_plain",
        "_repeats",
        "_running",
        "_skipped",
        "_task",
        "_want",
    )

    def __init__(self, ctx: OperationContext, ledger: ItemLedger, it: Iterator[T], keyf: Callable[[T], str]) -> None:
        self._ctx = ctx
        self._ledger = ledger
        self._it = it
        self._keyf: Callable[[T], str] | None = None if keyf is str else keyf
        """None: the key is the item's ``str`` (an item that is a ``str`` is its own key, without the call)."""
        self._done_keys, self._failed, self._skipped = ledger.done, ledger.failed, ledger.skipped
        self._every = ctx.profile.checkpoint_every
        self._in_order = itertools.chain.from_iterable(ledger.order)
        self._want = next(self._in_order, None)
        self._repeats = not ctx.resuming
        """Nothing was done before this run: a done key met again came twice in it."""
        # A resume whose loops met none of the done keys: the keys changed (a new version of the handler,
        # another key=), and every item was run again, silently. Said at a loop's end.
        self._had = ctx._done_resumed if ctx.resuming and not ctx._met_done else 0
        self._met = False
        self._met_repeat = False
        """A key done in this attempt came again in this loop (said once a loop)."""
        self._k: str | None = None
        """The key whose body runs (taken by this loop, not finished yet)."""
        self._plain: type | None = None
        """The class of items whose ``str`` was found to be a key (not an address): checked once per class."""
        self._outer = ledger.current
        """The key of the item of another loop whose body this loop runs in (nested loops: directories, then
        their files): its body goes on when this loop ends (``_resume_outer``)."""
        self._running = False
        """A turn is between its items (at a checkpoint): no other task may take an item then."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: object = _NOT_YET
        """The task that took the last item (dropped when the loop ends: it holds the handler's frame)."""

    def __aiter__(self) -> _Items[T]:
        return self

    def __iter__(self) -> Iterator[T]:
        raise TypeError("ctx.items() is iterated with `async for`, not `for` (its items are checkpointed between)")

    async def __anext__(self) -> T:
        ctx = self._ctx
        ledger = self._ledger
        if ctx._attention or _task_now(self._loop) is not self._task:
            await self._between()  # a stop, a checkpoint due, another task: the full turn
        else:  # the same turn without what the two checks above ruled out (a stop sets _attention)
            k = self._k
            if k is not None:  # the body of the item before finished
                self._k = None
                if ledger.current is k:  # fail() or skip() in the body clears it: not done
                    ledger.current = None
                    try:
                        self._done_keys.add(k)
                        ledger.new_done.append(k)
                        ctx._done += 1
                    except MemoryError as e:  # no memory to grow the set: its effects in state, not its key
                        self._end(False)
                        raise ctx.broke(f"recording item {k!r} done", e, k) from e
                elif ledger.current is not None:
                    self._overlapped(k)
                every = self._every
                if every and ctx._done - ctx._done_at_checkpoint >= every:
                    ctx.mark_checkpoint_due()  # checkpoint_every items, or checkpoint_interval seconds: the first
                    await self._boundary()
                # Every 16th item done (the count each item updates anyway; a literal: no global's lookup per
                # item): is the engine's clock late, the event loop held by these items?
                if not ctx._done & 15 and _monotonic() - ctx.clock_ticked >= LOOP_LATE:
                    ctx._turn_due = True
                    await self._boundary()
        done_keys = self._done_keys
        keyf = self._keyf
        want = self._want
        plain = self._plain
        try:
            for item in self._it:
                if keyf is None:
                    if item.__class__ is str:
                        k = item  # type: ignore[assignment]
                    else:
                        k = str(item)
                        if item.__class__ is not plain:
                            plain = self._plain = _plain_key(item, k)
                else:
                    k = keyf(item)
                    if k.__class__ is not str:
                        k = ctx._key_text(k)
                if want is not None and k == want:
                    want = self._want = next(self._in_order, want)
                    self._met = True
                    continue
                if k in done_keys or (ledger.excludes and (k in self._failed or k in self._skipped)):
                    self._met = True
                    if self._repeats and k in done_keys:
                        # Two items with one key, or a second loop over the same keys: said once a loop, counted.
                        ctx.repeated += 1
                        if not self._met_repeat:
                            self._met_repeat = True
                            ctx.log.warning(
                                f"item key {k!r} came again after it was done: skipped, as every later item whose"
                                " key is done (item keys are one space for the whole operation: a second loop over"
                                " the same keys, or nested loops keyed by a name that repeats, needs keys of its own)"
                            )
                    continue
                self._k = ledger.current = k
                ledger.left = None
                return item
        except BaseException:
            self._end(False)
            raise
        self._end(True)
        raise StopAsyncIteration

    async def _between(self) -> None:
        """The part of a turn before the next item is taken, in full: the stop raised into the handler again,
        the task check, the item before done, and a checkpoint or a stop between the two items."""
        ctx = self._ctx
        if ctx._broken is not None:  # the handler caught OutOfMemory and went on: no item runs after it
            self._k = None
            self._end(False)
            raise ctx._ran_short(ctx._broken)
        if ctx._stop_raised:  # a stop went into the handler already: no item runs after it
            self._k = None
            await ctx._stop_again()
        if _task_now(self._loop) is not self._task:  # another task took the item before (or none yet)
            self._another_task()
        k = self._k
        if k is not None:  # the body of the item before finished
            self._k = None
            ledger = self._ledger
            if ledger.current is k:  # fail() or skip() in the body clears it: not done
                ledger.current = None
                try:
                    self._done_keys.add(k)
                    ledger.new_done.append(k)
                    ctx._done += 1
                except MemoryError as e:  # as in ``__anext__``
                    self._end(False)
                    raise ctx.broke(f"recording item {k!r} done", e, k) from e
            elif ledger.current is not None:
                self._overlapped(k)
            every = self._every
            if every and ctx._done - ctx._done_at_checkpoint >= every:
                ctx.mark_checkpoint_due()
            if ctx._attention:
                await self._boundary()
        elif ctx._stop is not None:
            # The loop's first item, a stop asked before it (while the handler listed its files, between two
            # batches): stopped here, where no body runs, not after one more item (a long one held a pause).
            await self._boundary()

    async def _boundary(self) -> None:
        """A checkpoint or a stop between two items (no other task may take an item meanwhile)."""
        self._running = True
        try:
            await self._ctx._at_boundary()
        except BaseException:
            self._end(False)
            raise
        finally:
            self._running = False

    def _another_task(self) -> None:
        """The next item is asked for by another task than the one before (or the first time): allowed
        once no body runs."""
        global _task_now
        loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if _task_now(loop) is not task:  # asyncio keeps its table elsewhere (another Python): ask it each time
            _task_now = _current_task
        if self._k is not None:
            # Asking for the next item ends the body of the one before: from another task that
            # would mark an item done whose body still runs (lost, if the process dies after the
            # checkpoint that lists it).
            raise ItemsMisused(
                "ctx.items() is one loop, its items done one after another: its next item was asked for"
                f" by another task while the body of {self._k!r} runs. Run the work of several"
                " items at once inside one body (a batch as the item), or in a pool whose results one"
                " loop takes in order"
            )
        if self._running:
            raise ItemsMisused("ctx.items(): its next item was asked for while the loop checkpoints between two items")
        self._task = task

    def _overlapped(self, k: str) -> None:
        """The body of ``k`` ended with another loop's item taken meanwhile (two loops in two tasks): which
        one's body runs is one slot, so one of them was never counted done (run again on resume), and a
        checkpoint between the items of one held half of an item of the other."""
        other = self._ledger.current
        self._end(False)
        raise ItemsMisused(
            f"two ctx.items() loops ran at once (item {other!r} of another was taken while the body of {k!r} ran,"
            " in another task): a checkpoint between the items of one would hold half an item of the other. Run"
            " the loops one after the other, or the concurrent work inside the body of one loop's item"
        )

    def _end(self, exhausted: bool) -> None:
        """The loop is over (``exhausted``: it ran out of items; else an exception or ``aclose``)."""
        self._it = iter(())
        self._k = None
        self._task = None
        self._resume_outer()
        ctx = self._ctx
        if self._met:
            ctx._met_done = True
        had = self._had
        self._had = 0
        # Met none of the done keys, and went past the total: the items were run again. A handler that
        # resumes from its own state (``for b in range(ctx.state["next_batch"], ...)``, a loop per batch)
        # meets none of them either, as it should: its count ends at the total, and it was told its keys
        # changed, that every item was run again, when none was.
        total = ctx._total
        if exhausted and had and not ctx._met_done and total is not None and ctx._done > total:
            ctx._met_done = True  # said once
            ctx.log.warning(
                f"none of this run's items was among the {had} its checkpoint counted"
                " as done, so every one was run again: did the item keys change (a new version of the handler,"
                " another key=)?"
            )

    def _leave(self, frame: FrameType | None) -> None:
        """The handler left the body of the current item without finishing it: not done."""
        k, self._k = self._k, None
        self._task = None
        ledger = self._ledger
        if k is not None and ledger.current == k:
            ledger.current = None
            if frame is None:
                ledger.left = None
            else:
                # After the items an inner loop left (nested loops, innermost first): an exception leaving the
                # body of an inner item leaves this one too, and the inner item is the one that failed.
                ledger.left = (*(ledger.left or ()), (k, id(frame), _leaving_at(frame)))
        self._resume_outer()

    def _resume_outer(self) -> None:
        """This loop ran inside the body of another loop's item, which goes on: that item is the one whose body
        runs again, done when its own loop takes the next item (an outer item was never counted done, each one
        run again on every resume, and a stop between two inner loops was raised inside its body)."""
        outer, self._outer = self._outer, None
        ledger = self._ledger
        if outer is not None and ledger.current is None and outer not in ledger.failed and outer not in ledger.skipped:
            ledger.current = outer

    async def aclose(self) -> None:
        self._leave(None)
        self._end(False)

    def __del__(self) -> None:
        # Called where the loop dropped the iterator: frame 1 is the handler, at its ``break`` or at the
        # instruction an exception is leaving the body from (the attempt matches it to the traceback).
        with contextlib.suppress(Exception):
            self._leave(_getframe(1))
            if self._met:
                self._ctx._met_done = True


def _moved(had: dict[str, Any], name: str, value: object) -> bool:
    """Whether a metric's new value differs from the one held (a value that cannot be compared has moved)."""
    if name not in had:
        return True
    try:
        return bool(had[name] != value)
    except Exception:  # an array's ambiguous truth, a __ne__ that raises: counted as a change
        return True


def _plain_key(item: object, text: str) -> type:
    """``item``'s class, once its ``str`` (``text``) is found fit to be its key. An object without a ``__str__``
    of its own is named by its address in memory (``<Task object at 0x7f..>``), another on every run: a
    resume met none of the done keys and ran every item again."""
    if " object at 0x" in text and text.endswith(">"):
        raise TypeError(
            f"item key {text}: an object's default str is its address in memory, another on every run, so a"
            " resume would run every item again; give ctx.items a key= that names the item (key=lambda t: t.path)"
        )
    return item.__class__


_RERAISE, _RAISE = dis.opmap["RERAISE"], dis.opmap["RAISE_VARARGS"]


def _leaving_at(frame: FrameType) -> int:
    """The instruction the handler is leaving the item body from, as its traceback will name it; -1 when it
    is an exception re-raised by an ``except`` that did not take it, or took it and said ``raise`` (or by a
    ``finally``, a ``with``): the frame is at that RERAISE or bare ``raise``, which no traceback names (its
    entry is where the exception was raised), and a body that logged an error and raised it again, or had
    an ``except`` for another error, failed the whole operation at its first failing item."""
    lasti = frame.f_lasti
    code = frame.f_code.co_code
    if 0 <= lasti < len(code) - 1 and (code[lasti] == _RERAISE or (code[lasti] == _RAISE and code[lasti + 1] == 0)):
        return -1
    return lasti


_current_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = getattr(
    asyncio.tasks, "_current_tasks", None
)


def _current_task(loop: asyncio.AbstractEventLoop | None) -> asyncio.Task[Any] | None:
    return None if loop is None else asyncio.current_task(loop)


_task_now: Callable[[asyncio.AbstractEventLoop | None], asyncio.Task[Any] | None] = (
    _current_task if _current_tasks is None else _current_tasks.get  # type: ignore[assignment]
)
"""The task running on a loop: asyncio's own table, read directly (``asyncio.current_task`` is a Python
function on 3.11, a third of a microsecond, once per item), or that function where the table is gone."""


_NOT_YET = object()
"""No task took an item yet."""


def _text(value: object) -> str | None:
    """What ``step`` or ``message`` holds: text, whatever it was given as (``ctx.step = 123`` was stored, and
    the record could not be read back), a file name's undecodable bytes as \\xNN (text.py), at most
    ``MAX_STEP_CHARS`` of it."""
    return None if value is None else abridged(clean(str(value)), MAX_STEP_CHARS)


def _describe(exc: BaseException) -> str:
    try:
        said = str(exc)
    except Exception as e:  # an exception whose __str__ fails: say so, not fail the attempt on it
        said = f"<str() of it failed: {type(e).__name__}>"
    said = said.strip()
    if isinstance(exc, MemoryError) and "memory" not in said.lower():
        # A bare "MemoryError (at indexing.py:165)" (``ulimit -v``, a container's limit) said it in no words.
        said = f"out of memory: {said}" if said else "out of memory"
    elif isinstance(exc, OSError) and exc.errno in OUT_OF_FILES and "ran out of file descriptors" not in said:
        # A bare "[Errno 24] Too many open files (at subprocess.py:1713)" named neither the limit nor the fix.
        said = f"{said}: {files_short_why(exc.errno)}"
    text = clean(f"{type(exc).__name__}: {said}" if said else type(exc).__name__)
    if len(text) > 500:
        text = text[:497] + "..."
    return text


def format_exception(exc: BaseException) -> str:
    """One line for the record, the traceback's last frame included."""
    if isinstance(exc, OperationFailed):
        text = _describe(exc).removeprefix(f"{type(exc).__name__}: ")
        return text if text != type(exc).__name__ else "failed"
    if isinstance(exc, OutOfMemory):  # the engine's, raised at the handler's safe point: not the handler's line
        return _describe(exc)
    tb: list[traceback.FrameSummary] = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, NotJSON):
        # ``ctx.state`` holds what a checkpoint cannot: the handler's mistake, found by the store that writes
        # it. Named at the handler's line that checkpointed (its loop, its ``ctx.checkpoint``), not at the
        # store's ("at base.py:209" read as a bug in Outlast).
        tb = [f for f in tb if not (f.filename.startswith(_ENGINE_DIR) and not f.filename.startswith(_OPERATIONS_DIR))]
    # Raised by the context's own checks (ctx.done = "7"): the handler's line that called it, not ours.
    while len(tb) > 1 and tb[-1].filename in _API_FILES:
        tb = tb[:-1]
    frame = _handler_frame(tb) or (tb[-1] if tb else None)
    where = f" (at {os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
    return _describe(exc) + where


_API_FILES = frozenset({__file__, *(os.path.join(os.path.dirname(__file__), f) for f in ("autobot.py", "registry.py"))})
"""The handler API's own modules (this one, the seed's methods, the registry's params without a model)."""
_ENGINE_DIR = os.path.join(os.path.dirname(__file__), "")
_OPERATIONS_DIR = os.path.join(_ENGINE_DIR, "operations", "")
_LIBRARY_DIRS = tuple(
    os.path.join(p, "")
    for p in {
        *(sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")),
        *(
            sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix}).get(k)
            for k in ("stdlib", "platstdlib")
        ),
    }
    if p
)
"""The standard library's and installed packages' directories."""


def _handler_frame(tb: list[traceback.FrameSummary]) -> traceback.FrameSummary | None:
    """The innermost frame of the handler's own code: an error raised inside a library (pydantic's
    ``__getattr__`` on params, ``json.loads``) is shown at the handler's line that called it, not at
    "main.py:1110". None when the handler itself is an installed package's (the walk reached the engine)."""
    for f in reversed(tb):
        name = f.filename
        if name in _API_FILES or (name.startswith(_LIBRARY_DIRS) and not name.startswith(_ENGINE_DIR)):
            continue
        if name.startswith(_ENGINE_DIR) and not name.startswith(_OPERATIONS_DIR):
            return None  # the engine's own frames, which call the handler
        return f
    return None
