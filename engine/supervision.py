"""Supervision: the engine's clock, and the watch it keeps on each running attempt.

``Watch`` is one attempt's clock: its deadline (extended while the rate says the work finishes within
``max_timeout``; a fixed ``--timeout`` is never extended), its stall clock, when a checkpoint and a
progress report are due, and the grace period a stopped handler gets before it is cancelled by force.

``Supervisor`` turns the clock: every tick it looks at each watch, stops the attempts when a store
outage outlasts its limit, polls control requests from other processes, writes live progress, logs
and heartbeats, and looks for work left by dead processes (``recover_orphans``). A lease lost (a
store that fences attempts off, like Redis's, says so) stops the attempt, which then writes nothing.

A handler that ignores its stop and then the forced cancel too (``except BaseException`` around an
endless wait) is abandoned ``Settings.abandon_after`` seconds after the cancel: its attempt settles as the stop says
without it, and nothing of it is written any more (``Attempt.abandon``); the process can then end without
waiting for its task (``threads.let_go``).

``LoopWatch`` is a thread that says when the event loop itself stops: a handler blocking it. It also tells
which handler held it, and for how long (``holds``): that time counts toward no other attempt's stall clock
(``Watch.held``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import limits
from .config import Settings
from .context import LOOP_LATE, OperationContext
from .errors import ControlChanged, StoreError
from .lifecycle import StopReason
from .models import (
    Conflict,
    ControlAction,
    Event,
    LogRecord,
    Operation,
    Progress,
    ProgressReported,
    StaleAttempt,
    Status,
    StatusChanged,
    TimeoutExtended,
)
from .offload import off_loop
from .outage import LogBuffer, StoreHealth, store_failure, why
from .processes import describe_leftovers, kill_engine_leftovers, kill_leftovers
from .profiles import RetryPolicy, stored_profile
from .store import Store

if TYPE_CHECKING:
    from .attempt import Attempt

log = logging.getLogger("outlast.engine")

TICK = 0.1
FIXED = "fixed by --timeout"
PACE_SAMPLES = 64
"""Samples of an attempt's progress kept for its recent rate (spaced at a 32nd of its time so far)."""
LOOP_BLOCKED = 5.0
"""Seconds the event loop may go without turning before the engine says what is blocking it."""
HELD = 1.0
"""Seconds the event loop may go without turning before that time is taken for a hold of the loop (a handler's
blocking code), which counts toward no stall clock but the holder's (``Watch.held``)."""
NUDGE = LOOP_LATE
"""Seconds the clock's tick (every ``TICK``) may be late before the running handlers are told to let the event loop
turn at their next item boundary (``OperationContext.nudge``): asked at each look of the loop's watch thread, so
a loop of items that never await turns four times a second (the lease of a Redis worker renewed, a signal seen).
``ctx.items`` looks at the clock itself too (``clock_ticked``): the watch thread may wait long for the GIL."""
LIVE_REFRESH = 5.0
"""Seconds after which a running attempt's record is written again though no progress moved: its rate and ETA
age while it stands still, and every other reader (the dashboard, ``watch``, the API) shows the record's."""
STOP_SEEN = 0.25
"""Seconds of a gap in which the process neither ran nor waited to run past which it was stopped, for ``held_for``:
a loop not turned in a stop was not held. A shorter stop and the loop's quarter-second mark stay under half a
second together; a smaller margin could take a wait for the GIL for a stop."""
FROZEN = 2.0
"""Seconds the whole process may go without running (its watch thread included) before that time is taken
for a stop of the process (SIGSTOP, Ctrl-Z, a paused machine), which no attempt's clock counts."""


class Watch:
    """The clock of one running attempt, sampled from its context (never from the handler)."""

    def __init__(
        self,
        op: Operation,
        ctx: OperationContext,
        grace_period: float,
        publish: Callable[[Event], None],
        abandon_after: float,
    ):
        now = time.monotonic()
        self.op, self.ctx = op, ctx
        self._grace = grace_period
        self._abandon_after = abandon_after
        self._publish = publish
        self.task: asyncio.Task[Any] | None = None
        """The task running the handler: cancelled when it reaches no safe point within the grace period."""
        self.started = now
        self.start_done = self.units()
        self.counted_from = now
        """When ``start_done`` was taken: the start, or when the handler's count went below it (``tick``)."""
        self.last_done = ctx.done
        self.last_item_at: float | None = None
        """When the clock last saw the count of items done grow in this attempt (monotonic)."""
        self.last_beat = 0
        self.start_beat = ctx.beat
        self.last_beat_at: float | None = None
        """When the clock last saw the handler's signs of life (``ctx.beat``: output, a step, a message) move."""
        self.last_change = now
        self.next_checkpoint = now + ctx.profile.checkpoint_interval
        self.keys_looked = now
        """When the clock last asked for a checkpoint for the size of the keys done since the last one."""
        self.next_report = now + ctx.profile.progress_report_interval
        self.deadline = 0.0
        """Monotonic deadline of this attempt."""
        self.effective_timeout = 0.0
        self.total_seen: int | None = None
        self.stop_at: float | None = None
        """When a stop was asked for: the grace period runs from here."""
        self.forced_by: str | None = None
        """What forced the stop before the grace period ran out ("a second Ctrl-C"); None: nothing did."""
        self.cancelled_at: float | None = None
        """When the handler's task was cancelled by force (monotonic): ``abandon_after`` runs from here."""
        self.cancels = 0
        """Cancels of the handler's task the engine made (``cancel_task``): a CancelledError with none is no
        stop of the engine's, but the handler's own (it cancelled its task: ``Attempt._run``)."""
        self.broken_in: str | None = None
        """How a ``BrokenInto`` broke into the handler where it held the event loop ("a second signal broke into
        ..."), set by the signal handler that raised it: a handler that caught it and returned (or raised another
        error) was stopped by force, not completed."""
        self.abandon_due = False
        """The handler's task outlived its forced cancel by ``abandon_after``: the supervisor abandons it."""
        self.live_dirty = True
        self.live_at = now
        """When the record's live fields were last made (``live_fields``): rewritten after ``LIVE_REFRESH``."""
        self.extensions = 0
        self.settling = False
        """The handler is done and its final status is being written (retried while the store fails)."""
        self.pace: deque[tuple[float, float]] = deque([(now, self.start_done)], maxlen=PACE_SAMPLES)
        """(monotonic time, items done) samples, spaced as the attempt goes on: the recent rate."""
        self.set_deadline()

    def units(self) -> float:
        """Items done with the part of the next one done (``ctx.fraction``): what the rate counts. Counted by
        whole items, a migrated function copying one large file (``progress_callback(0.4, 1)``) had done none
        at its deadline, and was stopped at 2.5%/0.1s with 58s of max_timeout left."""
        return self.ctx.done + self.ctx.fraction

    def rate(self, now: float) -> float | None:
        elapsed = now - self.counted_from
        n = self.units() - self.start_done
        return n / elapsed if elapsed >= 0.1 and n > 0 else None

    def recent_rate(self, now: float) -> float | None:
        """Items a second over the last quarter of the attempt (None: no item done in it)."""
        since = now - (now - self.counted_from) / 4
        t0, d0 = next((s for s in reversed(self.pace) if s[0] <= since), self.pace[0])
        n = self.units() - d0
        return n / (now - t0) if now - t0 >= 0.1 and n > 0 else None

    def steady_rate(self, now: float) -> float | None:
        """Items a second over the attempt while its last item came within twice the attempt's time per item
        before it (None: not so, or no item done in it): slow items, each longer than a quarter of the attempt
        so far, are still being done though none was done in its last quarter."""
        last, n = self.last_item_at, self.units() - self.start_done
        if last is None or n <= 0 or now - last > 2 * (last - self.counted_from) / n:
            return None
        return self.rate(now)

    def alive_lately(self, now: float) -> bool:
        """Signs of life (``ctx.beat``) in the last quarter of the attempt, or the last within twice the
        attempt's time between them before it: all there is to tell work that reports no count (a command
        whose output has no progress lines, a handler saying only its steps) from a hang."""
        last, n = self.last_beat_at, self.ctx.beat - self.start_beat
        if last is None or n <= 0:
            return False
        return now - last <= max((now - self.counted_from) / 4, 2 * (last - self.counted_from) / n)

    def set_deadline(self) -> None:
        """The deadline for the total known now (the profile's ``effective_timeout``, or the fixed one)."""
        ctx = self.ctx
        self.total_seen = ctx.total
        self.effective_timeout = self.op.timeout or ctx.profile.effective_timeout(ctx.total)
        self.timeout_basis = FIXED if self.op.timeout else ctx.profile.basis(ctx.total)
        """How ``effective_timeout`` was computed, for the same total."""
        self.deadline = self.started + self.effective_timeout
        self.live_dirty = True

    def follow_total(self) -> None:
        """The deadline for the total the handler reported since it was last set (at each tick, and at each
        read of the live view: between the report and the next tick, a read gave the new total beside the
        timeout of the old one, and the dashboard, which reads the work it runs every 10 s, showed "timeout
        10m00s = ... 0 items" and "LEFT 9m58s" of a 3,000-item run with an hour left, for those 10 s)."""
        if self.ctx.total != self.total_seen and self.op.timeout is None:
            # An extension stands (the rate gave it, within max_timeout; the next deadline judges the new
            # total): a handler re-estimating its total at each item had its deadline set back to the
            # formula's, passed at once, and extended again, a log line and an event per item.
            extended = self.deadline if self.extensions else 0.0
            self.set_deadline()
            self.deadline = max(self.deadline, extended)

    def timeout_fields(self) -> dict[str, Any]:
        """The record's timeout and its basis for the total known now, for the final write: an attempt
        shorter than the clock's first write of its record (under a second) settled with the basis of its
        submit ("base 600s + 1s x 0 items"), its total learnt since never shown in it."""
        if self.ctx.total != self.total_seen and self.op.timeout is None:
            self.set_deadline()
        return {
            "effective_timeout": self.effective_timeout,
            "timeout_basis": self.timeout_basis,
            # else the count of the clock's last write (once a second): 3 in the record, 6 in the log
            "extensions": self.extensions,
        }

    def wall(self) -> float:
        """The wall clock for this attempt's writes, never before its ``started_at``: a clock stepped back (NTP, a
        VM restored) during the attempt made its progress older than its start, which every face takes for an
        earlier attempt's run time (``humanize.run_seconds``): a 6 s run "completed after 0s", and "time left
        0s" beside a deadline minutes away."""
        return max(time.time(), self.op.started_at or 0.0)

    def progress(self, now: float, wall: float | None = None, settled: bool = False) -> Progress:
        """The attempt's progress at monotonic ``now``, written at ``wall`` (default: ``wall()``). While it runs,
        its rate and ETA are those of the recent pace (``recent_rate``; with none done lately, at most one item in
        the time since the last): from the attempt's average, work that did 500 items in its first second and one a
        second since said "67/s, eta 18s" of 481 s left, and work standing still promised the same ever sooner.
        ``settled``: the attempt's last, whose rate is its average."""
        ctx = self.ctx
        rate = self.rate(now)
        total = ctx.shown_total
        pace = self.recent_rate(now)
        if pace is None and rate is not None:  # none done lately: not faster than one item since the last one
            last = self.started if self.last_item_at is None else self.last_item_at
            pace = min(rate, 1.0 / max(now - last, TICK))
        # What is left to do: items that failed in this attempt, or were skipped, are not done and never will be in it.
        left = None if total is None else total - self.units() - ctx.failed_count - ctx.skipped_count
        eta = max(0.0, left / pace) if pace and left is not None else None
        return Progress.model_construct(
            done=ctx.done,
            total=total,
            failed=ctx.failed_count,
            skipped=ctx.skipped_count,
            step=ctx.step,
            message=ctx.message,
            rate=rate if settled else pace,
            eta=eta,
            metrics=ctx.metrics_to_store(),
            updated_at=self.wall() if wall is None else wall,
            fraction=ctx.fraction,
            ran=now - self.started,
        )

    def live_fields(self, now: float) -> dict[str, Any]:
        """What the store's record shows of a running attempt (written on the clock when it changed)."""
        wall = self.wall()
        self.live_at = now
        return {
            "progress": self.progress(now, wall).model_dump(mode="json"),
            "deadline": wall + (self.deadline - now),
            "effective_timeout": self.effective_timeout,
            "timeout_basis": self.timeout_basis,
            "extensions": self.extensions,
            "total_items": self.ctx.total,
        }

    def live_view(self, now: float) -> dict[str, Any]:
        """What a read of the record shows of a running attempt, fresher than the store's copy."""
        self.follow_total()
        wall = self.wall()
        return {
            "progress": self.progress(now, wall),
            "deadline": wall + (self.deadline - now),
            "effective_timeout": self.effective_timeout,
            # With the timeout it explains: the dashboard showed "43m20s = ... + 1s x 0 items = 600s" (the
            # basis of the submit, from the store) until the clock's next write of the record.
            "timeout_basis": self.timeout_basis,
            "total_items": self.ctx.total,
        }

    def stop(self, reason: StopReason, now: float, restart_grace: bool = False) -> None:
        """Ask the handler to stop; the grace period runs from the first ask (or from now: ``restart_grace``)."""
        self.ctx.request_stop(reason)
        self.stop_at = now if restart_grace else (self.stop_at or now)

    def shift(self, dt: float) -> None:
        """The process was stopped for ``dt`` seconds: the operation did not run, so that time counts toward
        no stall, deadline, grace period or rate (a Ctrl-Z'd ``outlast run`` used to come back stalled)."""
        self.started += dt
        self.counted_from += dt
        self.last_change += dt
        if self.last_item_at is not None:
            self.last_item_at += dt
        if self.last_beat_at is not None:
            self.last_beat_at += dt
        self.deadline += dt
        self.next_checkpoint += dt
        self.next_report += dt
        self.pace = deque(((t + dt, d) for t, d in self.pace), maxlen=PACE_SAMPLES)
        if self.stop_at is not None:
            self.stop_at += dt
        if self.cancelled_at is not None:
            self.cancelled_at += dt

    def held(self, dt: float) -> None:
        """Another handler (or the engine's own code) held the event loop for ``dt`` seconds: this attempt could
        neither report progress nor reach a safe point, so that time counts toward neither its stall clock nor
        its grace period (nor the wait before it is abandoned). A healthy demo beside a handler that
        ``time.sleep(8)``-ed on the loop ended "stalled: no progress for 5s" the moment the loop came back.

        Its deadline still counts it: a deadline bounds the time the user waits (``max_timeout``, a fixed
        ``--timeout``), and one still making progress is extended by its rate as ever. The holder's own clocks
        are not shifted (``Supervisor`` leaves it out): its stall clock and deadline stop a handler that keeps
        holding the loop, after which its neighbours run on."""
        self.last_change += dt
        if self.stop_at is not None and self.forced_by is None:  # a forced stop does not wait again
            self.stop_at += dt
        if self.cancelled_at is not None:
            self.cancelled_at += dt

    def force(self, now: float, by: str) -> None:
        """Stop waiting for a safe point: the handler is cancelled at the next tick. ``by``: what forced it (a
        second signal), said in the log and the status line instead of a grace period that did not run out."""
        self.stop_at = now - self._grace
        self.forced_by = by

    def tick(self, now: float) -> None:
        """Progress moved? A checkpoint or a report due? Stalled, past the deadline, past the grace period?"""
        if self.settling:
            return
        ctx, p = self.ctx, self.ctx.profile
        if ctx.done != self.last_done or ctx.beat != self.last_beat:
            if ctx.done > self.last_done:
                self.last_item_at = now
            if ctx.beat != self.last_beat:
                self.last_beat_at = now
            self.last_done, self.last_beat = ctx.done, ctx.beat
            self.last_change = now
            self.live_dirty = True
        elif ctx.saving:
            # The handler waits at a safe point for its checkpoint to be written: a disk whose fsync stalls
            # (or another process's write transaction) is the store's stall, not the handler's. With a
            # stall_timeout of 3s, a 6s fsync stopped a demo making 19 items/s as stalled, timed_out.
            self.last_change = now
        if now - self.live_at >= LIVE_REFRESH:
            # Standing still, its rate and ETA age: written as they are now (the dashboard showed "19/s, eta 5s"
            # of work stalled for minutes, and the API an estimated completion long past).
            self.live_dirty = True
        if self.units() < self.start_done:
            # A count of its own begun again (this run's list of what is left, from 0 after a resume at 577): the
            # rate is counted from here. From the resume's 577, the attempt had no rate at all, shown or judged.
            self.start_done, self.counted_from = self.units(), now
            self.pace = deque([(now, self.units())], maxlen=PACE_SAMPLES)
        if now - self.pace[-1][0] >= max(TICK, (now - self.counted_from) / PACE_SAMPLES * 2):
            self.pace.append((now, self.units()))
        self.follow_total()
        if now >= self.next_checkpoint:
            self.next_checkpoint = now + p.checkpoint_interval
            ctx.mark_checkpoint_due()
        elif ctx.unsaved_keys_size() > limits.MAX_DELTA_BYTES and now >= self.keys_looked + 1.0:
            # Item keys done since the last checkpoint past what one write should carry: a quick handler's
            # keys of an interval (10M of 100 bytes) grew past SQLite's largest value (1 GB) or a Redis
            # argument (512 MB), and every checkpoint after was refused: the delta only grew, never saved.
            # (Counted at every tick, a tick's new keys at a time; asked for once a second at most.)
            self.keys_looked = now
            ctx.mark_checkpoint_due()
        if now >= self.next_report:
            self.next_report = now + p.progress_report_interval
            self._publish(ProgressReported(operation_id=ctx.id, progress=self.progress(now)))
        if ctx.stop_reason is None:
            if now - self.last_change > p.stall_timeout:
                ctx.log.warning(f"no progress for {p.stall_timeout:g}s: stopping as stalled")
                self.stop(StopReason.STALLED, now)
            elif now >= self.deadline:
                self._deadline_passed(now)
        elif self.task is None or self.task.done():
            pass
        elif self.cancelled_at is not None:
            if now - self.cancelled_at >= self._abandon_after:
                self.abandon_due = True
        elif ctx.stop_swallowed:  # no point waiting out the grace period: it came to a safe point, and went on
            self._cancel(now, "the handler caught the stop and went on: cancelling it")
        elif self.stop_at is not None and now - self.stop_at > self._grace and (self.forced_by or not ctx.saving):
            # Not while the stop's own checkpoint is being written: the handler came to its safe point, and the
            # store is slow. Cancelled there, it ended "forced after 10s grace period" (a 15s fsync stall), the
            # stop it had reached never raised into it (only a second signal forces it then).
            if self.forced_by:
                self._cancel(now, f"stopped by force: {self.forced_by} came before a safe point")
            else:
                self._cancel(now, f"no safe point reached within {self._grace:g}s: cancelling")

    def _cancel(self, now: float, why: str) -> None:
        """Cancel the handler's task by force (once): ``why`` goes to the operation's log."""
        assert self.task is not None
        self.ctx.log.warning(why)
        self.ctx.kill_children()
        self.cancel_task()
        self.stop_at = float("inf")
        self.cancelled_at = now

    def cancel_task(self) -> None:
        """Cancel the handler's task, counted as the engine's cancel (``cancels``)."""
        if self.task is not None:
            self.cancels += 1
            self.task.cancel()

    def _deadline_passed(self, now: float) -> None:
        """Extend the deadline when the rate says the rest fits within ``max_timeout``; else stop.

        The rate is the better of the attempt's average and its recent one: work that starts slowly (a cold
        cache, a first item that sets up) and then goes fast was stopped at 13 of 100 items by the average
        of 4.3 items/s, saying the rest needed 20s past a max_timeout of 14s, while at its 10 items/s it
        finished in 9. The deadline never passes ``max_timeout`` either way."""
        ctx, p = self.ctx, self.ctx.profile
        elapsed = now - self.started
        left = None if ctx.total is None else ctx.total - ctx.done
        extend_to, reason, why = 0.0, "", ""
        if self.op.timeout is not None:  # fixed is fixed
            why = FIXED
        elif elapsed >= p.max_timeout:
            why = f"max_timeout {p.max_timeout:g}s reached"
        elif left is None:
            # No total to reckon the rest by (items from a generator, a cursor, os.walk): extended a slice at a
            # time while items are still being done, up to max_timeout (the stall timeout stops one that stands
            # still). It was stopped at base_timeout at 10 items/s, the common case stopped while at work.
            # Or on its pace: an item every 5s, stopped at a base_timeout of 8s, 3s after its last item.
            if rate := self.recent_rate(now) or self.steady_rate(now):
                extend_to = min(self.started + p.max_timeout, now + max(5.0, elapsed / 4))
                reason = f"{rate:.2f} items/s, no total known, within max_timeout {p.max_timeout:g}s"
            elif self.units() == 0 and self.alive_lately(now):
                # No count at all, in any attempt: its output (or its steps) is the only progress it shows. A
                # build printing a line a second was stopped at base_timeout (1h of a command's 24h
                # max_timeout), "no item done lately", while at work. Silent lately, it stops as before.
                extend_to = min(self.started + p.max_timeout, now + max(5.0, elapsed / 4))
                reason = f"no count reported, output or steps lately, within max_timeout {p.max_timeout:g}s"
            elif self.units() == 0:
                why = "no count reported, and no output or step lately"
            else:
                why = "no total to reckon the rest by, and no item done lately"
        elif left <= 0:
            # Every item done, the handler finishing (writing an index, a report) and showing life, or the
            # stall would have stopped it: it was stopped at 10 of 10 items, and so again on every resume.
            extend_to = min(self.started + p.max_timeout, now + max(5.0, elapsed / 4))
            reason = f"every item done, finishing, within max_timeout {p.max_timeout:g}s"
        elif (rate := max((r for r in (self.rate(now), self.recent_rate(now)) if r), default=None)) is None:
            why = "no item done in this attempt to reckon the rest by"
        elif elapsed + (needed := (left - ctx.fraction) / rate) > p.max_timeout:
            # With the whole: "need 3s more, past max_timeout 3s" of a run 1s in read as 3 <= 3.
            why = (
                f"at {rate:.2f} items/s the {left} left need {needed:.0f}s more, {elapsed + needed:.0f}s in all,"
                f" past max_timeout {p.max_timeout:g}s"
            )
        else:
            extend_to = min(self.started + p.max_timeout, now + needed * 1.25 + 5)
            reason = f"{rate:.2f} items/s, {left} to go, within max_timeout {p.max_timeout:g}s"
        if extend_to > now:
            self.deadline = extend_to
            self.extensions += 1
            self.live_dirty = True
            reason = f"deadline extended by {extend_to - now:.0f}s: {reason}"
            ctx.log.info(reason)
            self._publish(TimeoutExtended(operation_id=ctx.id, deadline=self.wall() + (extend_to - now), reason=reason))
            return
        ctx.log.warning(f"deadline passed after {elapsed:.0f}s ({why or 'max_timeout reached'}): stopping")
        self.stop(StopReason.TIMEOUT, now)


class Supervisor:
    """The engine's clock: deadlines, stalls, checkpoint timers, control polling, live writes, orphans."""

    def __init__(
        self,
        runs: Mapping[str, Attempt],
        store: Store,
        settings: Settings,
        health: StoreHealth,
        logs: LogBuffer,
        recover: Callable[[], Awaitable[Any]],
        abandon: Callable[[Attempt], Awaitable[None]] | None = None,
    ) -> None:
        self._runs = runs
        self._abandon = abandon
        """Settles an attempt without its handler (the engine's: it also frees the slot); None: the attempt's own."""
        self._abandoning: set[asyncio.Task[None]] = set()
        self._store = store
        self._settings = settings
        self._health = health
        self._logs = logs
        self._recover = recover
        self._recover_failing = False
        self._round: asyncio.Task[None] | None = None
        """The store's steps of the clock (``_store_round``), while they run."""
        self._beat: asyncio.Task[None] | None = None
        """The heartbeat, while it runs: on its own schedule, never behind a round's slower writes."""
        self._ticked = time.monotonic()
        """When the clock last ticked (read by the loop's watch thread: ``_nudge``)."""
        self.loop_watch: LoopWatch | None = None
        """While the supervisor runs: when the event loop last turned (``turned``)."""
        self.on_tick: Callable[[], None] | None = None
        """Called at every tick of the clock (the engine's check that its stop signals are still its own)."""
        self._hold_seen: dict[str, tuple[float, tuple[int, int], float]] = {}
        """Per operation whose handler held the loop: the hold (when the loop last turned), its (done, beat) last
        seen by the watch thread, and when they last changed."""
        self.break_in: Callable[[str, float, str], None] | None = None
        """Stops the handler of an operation where it stands, from the loop's watch thread (the id, when the loop
        last turned, what broke in): set by an engine that owns the process's signals; None: not done."""
        if hasattr(store, "on_lease_lost"):  # a store whose attempts can be fenced off says when
            store.on_lease_lost = self.lease_lost

    async def run(self) -> None:
        watch = self.loop_watch = LoopWatch(
            lambda: [f"{a.op.type} {a.op.id}" for a in list(self._runs.values())],
            self._nudge,
            self._held_by_handler,
        )
        try:
            await self._run(watch)
        finally:
            watch.stop()
            self.loop_watch = None
            for task in (self._round, self._beat):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    def _held_by_handler(self, op_id: str, now: float, turned: float, thawed: float) -> None:
        """(From the loop's watch thread.) ``op_id``'s handler holds the event loop (``time.sleep``, a blocking
        call): no tick can stop it, and it was timed out as stalled only once it returned, or never. Past its
        stall timeout and the grace period (or its stop's grace period), ``break_in`` stops it where it stands.
        The time since ``thawed`` only: a process stopped (Ctrl-Z) counts toward no stall, and the tick that
        would shift the clocks for it waits for the loop."""
        attempt = self._runs.get(op_id)
        if attempt is None or self.break_in is None:
            return
        w, grace, ctx = attempt.watch, self._settings.grace_period, attempt.ctx
        # Progress it reports while it holds the loop (ctx.advance in a loop that never awaits) is life the
        # clock's tick, which waits for the loop, has not seen: counted from here.
        key = (ctx.done, ctx.beat)
        seen = self._hold_seen.get(op_id)
        if seen is None or seen[0] != turned:
            seen = (turned, key, w.last_change if key == (w.last_done, w.last_beat) else now)
        elif seen[1] != key:
            seen = (turned, key, now)
        self._hold_seen[op_id] = seen
        if ctx.stop_reason is None:
            stall = ctx.profile.stall_timeout
            if now - max(w.last_change, seen[2], thawed) > stall + grace:
                self.break_in(op_id, turned, f"the stall timeout ({stall:g}s) and grace period ({grace:g}s)")
        elif w.stop_at is not None and now - max(w.stop_at, thawed) > grace:
            self.break_in(op_id, turned, f"the grace period ({grace:g}s) of its stop")

    def _nudge(self, now: float) -> None:
        """(From the loop's watch thread, at each of its looks.) The clock's tick is late by ``NUDGE``: every
        running handler lets the loop turn at its next item boundary. RuntimeError: the runs changed under the
        read (nudged at the next look)."""
        if now - self._ticked >= NUDGE:
            for attempt in list(self._runs.values()):
                attempt.ctx.nudge()

    async def _run(self, watch: LoopWatch) -> None:
        next_poll = next_flush = next_orphans = next_beat = 0.0
        # A lease renewed only with the live progress (every progress_flush_interval, and after that
        # round's other writes) expired under healthy workers when its ttl was short: with lease_ttl=0.5
        # two workers took the operation from each other for ever, items 0-21 run 39 times each.
        beat_every = min(
            self._settings.progress_flush_interval, getattr(self._store, "heartbeat_every", None) or math.inf
        )
        while True:
            await asyncio.sleep(TICK)
            now = self._ticked = time.monotonic()
            for attempt in self._runs.values():
                attempt.ctx.clock_ticked = now  # ctx.items lets the loop turn once this is late (LOOP_LATE)
            frozen = watch.frozen()
            if frozen:
                log.info(
                    "this process was stopped for %.1fs (SIGSTOP, Ctrl-Z, a paused machine): that time counts"
                    " toward no operation's stall, deadline or grace period",
                    frozen,
                )
                for attempt in list(self._runs.values()):
                    attempt.watch.shift(frozen)
            for held, by in watch.holds():
                holders = {op_id for op_id in by if op_id is not None}
                if not holders:
                    # Who held it is not known (a GIL held in C keeps the watch thread from looking, as does
                    # the engine's own code): it counts for everyone, the holder too. Given to all, a handler
                    # holding the GIL in chunks was never stalled (test_a_handler_holding_the_gil_...).
                    continue
                for attempt in list(self._runs.values()):
                    if attempt.op.id not in holders:
                        attempt.watch.held(held)
            # The holds of attempts still running only. The watch thread adds to it: its keys are taken in one
            # call (a comprehension over the dict could see it change size midway).
            for op_id in [k for k in list(self._hold_seen) if k not in self._runs]:
                self._hold_seen.pop(op_id, None)
            try:
                self._check(now)
                if self.on_tick is not None:
                    self.on_tick()
            except Exception:
                log.exception("supervisor tick failed")
            if self._runs and now >= next_beat and (self._beat is None or self._beat.done()):
                self._beat = asyncio.create_task(self._heartbeat(), name="outlast-heartbeat")
                next_beat = now + beat_every
            if self._round is not None and not self._round.done():
                continue  # the store's steps wait for the last round; the clock above never does
            poll, flush, orphans = now >= next_poll and bool(self._runs), now >= next_flush, now >= next_orphans
            if poll or flush or orphans:
                self._round = asyncio.create_task(self._store_round(poll, flush, orphans), name="outlast-store-round")
            if poll:
                next_poll = now + self._settings.control_poll_interval
            if flush:
                next_flush = now + self._settings.progress_flush_interval
            if orphans:
                next_orphans = now + 2.0

    def _check(self, now: float) -> None:
        """Each attempt's clock, and the store outage's limit: never waits on the store. A store that
        does not answer (a frozen Redis: each call waits for its reply, then retries for 30s) held the
        clock in the round's awaits, and an attempt told to stop "unless the store is back within 10s"
        ran on for minutes, its work saved nowhere."""
        for attempt in list(self._runs.values()):
            attempt.watch.tick(now)
            if attempt.watch.abandon_due:
                attempt.watch.abandon_due = False
                attempt.watch.settling = True  # its clock stops: the attempt is settled without the handler
                abandon = self._abandon(attempt) if self._abandon is not None else attempt.abandon()
                task: asyncio.Task[None] = asyncio.ensure_future(abandon)
                self._abandoning.add(task)
                task.add_done_callback(self._abandoning.discard)
        limit = self._health.outage_limit
        over = self._health.over_limit(now)
        since = self._health.since
        held = self._health.held  # a stopped process holds the store: nothing is unsaved for want of a store
        for attempt in self._runs.values():
            unsaved = attempt.unsaved_since
            # The whole store, or this attempt's checkpoints alone (too large for what the disk has left,
            # while smaller writes still work): its work since the last one would be lost to a crash. Not
            # an attempt claimed after the outage began (the store took its claim): one resumed as the
            # store came back was stopped at once, before any other channel had said it works again.
            claimed_since = since is not None and attempt.watch.started > since
            if attempt.ctx.stop_reason is None and (
                (over and not claimed_since) or (unsaved is not None and not held and now - unsaved[0] >= limit)
            ):
                attempt.watch.stop(StopReason.STORE, now)

    async def _store_round(self, poll: bool, flush: bool, orphans: bool) -> None:
        """The clock's store steps that are due, each on its own: a store that fails is said once
        (StoreHealth), never a traceback per round."""
        try:
            if poll and self._runs:
                await self._step(self._poll_controls())
            if flush:
                await self._step(self._flush_live(time.monotonic()))  # says itself when a write worked
                await self._logs.flush()
            if orphans:
                await self._recover_quietly()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("supervisor tick failed")

    async def _heartbeat(self) -> None:
        try:
            if self._runs:
                await self._step(self._store.heartbeat(list(self._runs)))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("heartbeat failed")

    async def _step(self, step: Awaitable[Any]) -> None:
        """Run one step of the tick; a store failure is recorded (said once), never a traceback."""
        try:
            await step
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if store_failure(e):
                self._health.failed(e)
            else:
                log.exception("supervisor tick failed")

    async def _recover_quietly(self) -> None:
        """``recover()`` on the clock. Its failing (a lock file it cannot open) is not this engine's work
        failing to be saved: said once (unless the store is already said to fail), and never stops work."""
        try:
            await self._recover()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if not store_failure(e):
                raise
            if not self._recover_failing and not self._health.failing:
                log.warning("looking for work left by stopped processes failed (%s); retrying", why(e))
            self._recover_failing = True
        else:
            self._recover_failing = False

    async def _poll_controls(self) -> None:
        """Cancel and pause asked for by other processes (through the store)."""
        for op_id, action in (await self._store.pending_controls(list(self._runs))).items():
            attempt = self._runs.get(op_id)
            if attempt is None:
                continue
            reason = attempt.ctx.stop_reason
            # A cancel stands over a stop already under way for another reason (request_stop decides which):
            # dropped here, the operation ended timed out, resumable, after the asker was told "requested".
            if reason is None or (action == "cancel" and reason is not StopReason.CANCEL):
                attempt.watch.stop(StopReason(action), time.monotonic())  # the grace runs from now

    async def _flush_live(self, now: float) -> None:
        updates = []
        for attempt in list(self._runs.values()):
            if attempt.watch.live_dirty:
                attempt.watch.live_dirty = False
                updates.append((attempt.op.id, attempt.op.epoch, attempt.watch.live_fields(now)))
        if updates:
            await self._store.save_live(updates)
            self._health.ok()

    def lease_lost(self, op_id: str, epoch: int) -> None:
        """Another attempt owns the operation now (or may, its lease having expired): stop this attempt's
        handler at its next item boundary (by force after the grace period), write nothing more (the
        store refuses it anyway), and do not settle the operation."""
        attempt = self._runs.get(op_id)
        if attempt is not None and attempt.op.epoch == epoch:
            attempt.lose()


async def recover_orphans(
    store: Store,
    logs: LogBuffer,
    publish: Callable[[Event], None],
    resume: Callable[[str], Awaitable[Any]] | None,
) -> list[Operation]:
    """Mark operations left running by dead processes interrupted, kill on this host what their attempt
    started (a shell's children outlive their engine), and ``resume`` each when given.

    One asked to cancel or pause while its process was gone (or just before it died) is cancelled or
    paused instead of resumed: the request, kept in the record, went with the interrupted mark, and
    another worker ran the operation to completed while `outlast cancel` had said it was asked."""
    found = []
    swept: set[tuple[str | None, int, int | None]] = set()
    """The dead engines whose leftovers were looked for (once each: one may leave several orphans)."""
    orphans = await store.find_orphans()
    asked = await store.pending_controls([op.id for op in orphans]) if orphans else {}
    for op in orphans:
        settled = await _settle_orphan(store, op, asked.get(op.id))
        if settled is None:
            continue
        new, target = settled
        if target is Status.INTERRUPTED:
            log.warning("operation %s was left running by %s: interrupted", op.id, op.worker)
        else:
            log.warning("operation %s: %s, as asked while its process was gone", op.id, target.value)
        killed = await off_loop(kill_leftovers, op.id, None)
        if killed:
            logs.append(op.id, LogRecord(ts=time.time(), level="warning", message=describe_leftovers(killed)))
        w = op.worker
        if w is not None and w.host == socket.gethostname() and (w.boot, w.pid, w.start) not in swept:
            swept.add((w.boot, w.pid, w.start))
            if left := await off_loop(kill_engine_leftovers, w.boot, w.pid, w.start):
                killed += left
                pids = ", ".join(str(p) for p, _a, _g in left)
                line = (
                    f"killed {len(left)} process(es) the dead engine {w} had started without ctx.spawn (pid {pids}):"
                    " left running, they would have gone on beside a resumed attempt"
                )
                logs.append(op.id, LogRecord(ts=time.time(), level="warning", message=line))
        if killed:
            await logs.flush(op.id)  # now: an engine opened only to read (``outlast ls``) does not flush
        publish(StatusChanged(operation_id=op.id, status=target, previous=Status.RUNNING))
        found.append(new)
        if target is Status.INTERRUPTED and new.orphaned_epoch is None:
            log.warning("operation %s: %s", op.id, new.status_message)
            continue
        if resume is not None and target is Status.INTERRUPTED:
            with contextlib.suppress(Conflict):
                await resume(op.id)
    return found


async def _settle_orphan(store: Store, op: Operation, wanted: ControlAction | None) -> tuple[Operation, Status] | None:
    """Write orphan ``op`` interrupted, or paused or cancelled as its pending request (``wanted``, as read) asks;
    None when another process settled or took it first (or its requests keep changing: the next round).

    One write, not interrupted then paused: an engine killed between the two left it interrupted, its request
    gone with the first, and the next engine's auto_resume ran it on. The write checks the request is still the
    one read: a pause stored in between was dropped with the interrupted mark, and auto_resume ran it on."""
    fields = await _checkpointed_progress(store, op)
    crashes = _crashes(op)
    fields.update(crashes=crashes, crash_seq=op.checkpoint_seq)
    limit = _crash_limit(op)
    for _ in range(3):  # a request only grows (none, pause, cancel): read again at most twice
        target = {"cancel": Status.CANCELLED, "pause": Status.PAUSED}.get(wanted or "", Status.INTERRUPTED)
        message = f"the process running it ({op.worker}) stopped"
        orphaned: int | None = op.epoch
        if target is not Status.INTERRUPTED:
            message = f"{target.value} as asked; the process running it ({op.worker}) had stopped"
        elif crashes >= limit:
            orphaned = None  # no engine's auto_resume queues it again (``left_orphaned``)
            message += f"; {CRASHED} ({crashes} in a row, no newer checkpoint): `outlast resume {op.id}` goes on"
        try:
            new = await store.transition(
                op.id,
                target,
                epoch=op.epoch,
                expect=frozenset({Status.RUNNING}),
                expect_control=frozenset({wanted}),
                finished_at=time.time(),
                status_message=message,
                orphaned_epoch=orphaned,
                **fields,
            )
        except ControlChanged:
            wanted = (await store.pending_controls([op.id])).get(op.id)
            continue
        except (Conflict, StaleAttempt):
            return None
        return new, target
    return None


CRASHED = "its process died under it at every attempt: not resumed automatically"
"""Said of an operation ``recover_orphans`` no longer resumes (``_crash_limit``)."""


def _crashes(op: Operation) -> int:
    """Deaths of ``op``'s process in a row without progress, this one included: a checkpoint newer than the one
    the last death found (``crash_seq``) is progress, and the count begins again. Items done since the newest
    checkpoint are not: they are done again by the resume, and an operation whose process dies before its first
    checkpoint, every time, makes none that lasts."""
    if op.crashes and op.checkpoint_seq == op.crash_seq:
        return op.crashes + 1
    return 1


def _crash_limit(op: Operation) -> int:
    """How many deaths in a row ``op`` gets before ``auto_resume`` leaves it to a person: its retry policy's
    ``max_attempts``, as for an attempt that raised, and never fewer than two. A handler that kills its process
    (``os._exit``, a crashing C extension, out of memory) was resumed for ever, each time taking down the worker
    and the work beside it. One death alone is no loop: a ``command`` (``max_attempts`` 1, a failing command is
    not run again) was left interrupted by the first ``kill -9`` of its worker, 64 checkpoints made, its line
    saying it had died "at every attempt"."""
    try:
        attempts = stored_profile(op).retry.max_attempts
    except StoreError:
        attempts = RetryPolicy().max_attempts
    return max(2, attempts)


async def _checkpointed_progress(store: Store, op: Operation) -> dict[str, Any]:
    """The progress orphan ``op`` is written with: its count of done items as of its newest valid checkpoint,
    where a resume goes on from. The record's count is the clock's last write of it (once a second), not a
    checkpoint's: after a ``kill -9`` it stood behind the newest checkpoint (400 of 1,536 done against a
    checkpoint at 700: work that looked lost), or ahead of it (items a resume runs again). Nothing when it
    already agrees, or when there is no checkpoint (a resume starts from scratch: what was reported stays)."""
    try:
        cp = next((c for c in await store.checkpoints(op.id) if c.valid), None)
    except Exception as e:  # the mark comes first: a store that fails here fails the transition too, said there
        if not store_failure(e):
            raise
        return {}
    p = op.progress
    if cp is None or (p.done == cp.processed_items and p.fraction == 0):
        return {}
    return {"progress": p.model_copy(update={"done": cp.processed_items, "fraction": 0.0})}


class LoopWatch:
    """Says, once per stall, when the event loop has not turned for ``LOOP_BLOCKED`` seconds,
    what runs and where the loop's thread stands. A handler doing blocking work on the loop
    (``time.sleep``, a synchronous HTTP call, a long computation) holds back every timer: deadlines,
    Ctrl-C, pause, cancel, checkpoints and the dashboard all wait until it returns, and nothing else
    would say why. A callback on the loop marks each turn; a thread of its own looks at the mark.
    """

    def __init__(
        self,
        running: Callable[[], list[str]],
        nudge: Callable[[float], None] | None = None,
        on_hold: Callable[[str, float, float, float], None] | None = None,
    ) -> None:
        self._limit = LOOP_BLOCKED
        self._nudge = nudge
        """Called from the watch thread at each look (with the time): the handlers let the loop turn between items
        when it does not turn (the caller knows its own clock's pace)."""
        self._on_hold = on_hold
        """Called from the watch thread at each look while an operation's handler holds the loop: its id, the
        time, when the loop last turned, and when a stop of the process last ended (``Supervisor._held_by_handler``)."""
        self._every = min(0.25, self._limit / 4)
        self._running = running
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopped = threading.Event()
        self.turned = time.monotonic()
        """When the loop last ran the mark (monotonic seconds)."""
        self._lock = threading.Lock()
        self._beat = self.turned
        """When the watch thread last woke (or a stop of the process was last counted)."""
        self._threads = [threading.get_native_id()]
        """The native ids of the loop's thread and (once it runs) the watch thread: their run-queue waits."""
        self._ran = _ran(self._threads)
        """``_ran`` at ``_beat``: what the process ran (or waited to run) since then was no stop."""
        self._gaps = 0.0
        """Seconds the process was stopped, seen by the watch thread and not yet taken by ``frozen``."""
        self._thawed = 0.0
        """When a stop of the process was last seen: a loop that had no turn since is not blocked."""
        self._continued = 0.0
        """When a stop of any length was last seen (``_thawed`` counts only those over ``FROZEN``)."""
        from .attempt import Attempt  # at run time: attempt.py imports this module

        self._handler_call = Attempt.handler_call_code()
        self._holding: dict[str | None, float] = {}
        """Seconds of the hold under way (the loop not turned since ``_holding_for``) each operation's handler
        held it, as the watch thread saw where the loop's thread stood; None: the engine's own code, or a task
        of a handler's own (not told apart)."""
        self._holding_for = self.turned
        self._seen = self.turned
        """When the watch thread last gave the hold under way to its holder."""
        self._holds: list[tuple[float, dict[str | None, float]]] = []
        """Holds of the loop over ``HELD`` seconds not yet taken by ``holds``: how long, and who held it."""
        self._mark = self._loop.call_later(self._every, self._turn)
        threading.Thread(target=self._watch, name="outlast-loop-watch", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        self._mark.cancel()

    def frozen(self) -> float:
        """Seconds the whole process was stopped since the last call (SIGSTOP, Ctrl-Z, a paused machine):
        time in which the watch thread, which wakes every quarter second, did not wake either. A handler
        blocking the loop does not count: the thread woke throughout. Counted once, whether the thread or
        this call (made on the loop, perhaps before the thread woke) sees the gap first."""
        with self._lock:
            return self._count(time.monotonic()) + self._take()

    def _take(self) -> float:
        taken, self._gaps = self._gaps, 0.0
        return taken

    def _count(self, now: float) -> float:
        """The part of the gap since the last wake in which the process was stopped (then counted); else 0.

        A gap is a stop only for the time the process neither ran nor waited for a CPU: a handler holding
        the GIL in C (a big ``pow``, a regex backtracking, a sort) keeps this thread from waking as a stop
        does, and was taken for one. Its minutes counted toward no deadline or stall, so a handler doing
        that in chunks ran past ``max_timeout`` and ``stall_timeout`` for ever, said to have run for 1s."""
        gap = now - self._beat - self._every
        if gap <= STOP_SEEN:
            return 0.0
        ran = _ran(self._threads)
        stopped = gap - (ran - self._ran)
        if stopped > STOP_SEEN:
            self._continued = now  # a stop, however short: the loop could not turn in it (``held_for``)
        if stopped <= FROZEN:
            return 0.0
        self._beat = self._thawed = now
        self._ran = ran
        return stopped

    def held_for(self) -> float:
        """Seconds the loop has gone without turning while this process ran: a stop of the whole process
        (Ctrl-Z, SIGSTOP) is no hold, however short, and not yet seen by the watch thread either (a signal's
        handler runs as the process is continued, before that thread wakes). Safe in a signal handler on the
        loop's thread: when that thread holds the lock (the loop turning), the loop is not held."""
        now = time.monotonic()
        if not self._lock.acquire(timeout=0.05):
            return 0.0
        try:
            self._gaps += self._count(now)
            return max(0.0, now - max(self.turned, self._thawed, self._continued))
        finally:
            self._lock.release()

    def holds(self) -> list[tuple[float, dict[str | None, float]]]:
        """The holds of the event loop since the last call, each ``(seconds, {operation id: seconds its handler
        held it})``: time in which no operation could report progress but the one holding the loop. Called on
        the loop (which turns now), the hold that just ended is in it even before the loop's own mark ran."""
        with self._lock:
            self._turned(time.monotonic())
            taken, self._holds = self._holds, []
        return taken

    def _turned(self, now: float) -> None:
        """The loop turns at ``now`` (under the lock): a gap since its last turn over ``HELD`` seconds was a
        hold, less the time the whole process was stopped (``frozen``'s)."""
        self._gaps += self._count(now)
        gap = now - max(self.turned, self._thawed)
        if gap >= HELD:
            held = self._holding if self._holding_for == self.turned else {}
            self._holds.append((gap, held))
        self._holding = {}
        self.turned = self._holding_for = self._seen = now

    def _held_by(self, turned: float, now: float, frame: FrameType | None) -> str | None:
        """The loop, not turned since ``turned``, is held at ``frame``: the time since last seen is its holder's
        (returned: an operation's id, or None for the engine's own code)."""
        holder = None
        f = frame
        while f is not None:
            if f.f_code is self._handler_call:
                op = getattr(f.f_locals.get("self"), "op", None)
                holder = getattr(op, "id", None)
                break
            f = f.f_back
        del f
        with self._lock:
            if self.turned != turned:
                return None  # it turned meanwhile: that hold is counted
            if self._holding_for != turned:
                self._holding, self._holding_for, self._seen = {}, turned, max(turned, self._thawed)
            self._holding[holder] = self._holding.get(holder, 0.0) + max(0.0, now - self._seen)
            self._seen = now
        return holder

    def _turn(self) -> None:
        with self._lock:
            self._turned(time.monotonic())
        if not self._stopped.is_set():
            self._mark = self._loop.call_later(self._every, self._turn)

    def _watch(self) -> None:
        said_for = None  # the stall said already (its ``turned``)
        with self._lock:
            self._threads = [*self._threads, threading.get_native_id()]
            self._ran = _ran(self._threads)
        while not self._stopped.wait(self._every):
            if self._loop.is_closed():
                return  # left running by a loop closed under it: nothing to watch
            now = time.monotonic()
            with self._lock:
                self._gaps += self._count(now)
                self._beat = now
                self._ran = _ran(self._threads)
            if self._nudge is not None:
                with contextlib.suppress(RuntimeError):
                    self._nudge(now)
            turned = self.turned
            blocked = now - max(turned, self._thawed)
            if blocked < min(self._limit, HELD / 2):
                continue
            frame = sys._current_frames().get(self._loop_thread)
            if frame is not None and frame.f_code.co_name == "select":
                continue  # the loop waits for I/O: not blocked (this process was stopped, or starved)
            holder = self._held_by(turned, now, frame)
            if holder is not None and self._on_hold is not None:
                self._on_hold(holder, now, turned, self._thawed)
            if blocked < self._limit or said_for == turned:
                continue
            at = (
                "an unknown place"
                if frame is None
                else f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
            )
            del frame  # a frame keeps its locals alive
            said_for = turned
            try:  # the loop may turn meanwhile and change what runs under this read
                running = ", ".join(self._running()) or "no operation"
            except RuntimeError:
                running = "operations"
            log.warning(
                "the event loop has not turned for %.0fs (running: %s), held at %s: a handler doing blocking "
                "work on the loop holds back timeouts, pause and cancel until it returns (Ctrl-C twice stops it "
                "by force); run that work in asyncio.to_thread",
                blocked,
                running,
                at,
            )


def _ran(threads: list[int]) -> float:
    """Seconds this process has run on a CPU (all its threads), plus those ``threads`` waited for one
    (Linux's schedstat: a loaded machine), so far: neither grows while the process is stopped."""
    waited = 0.0
    for tid in threads:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                waited += int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            pass  # not Linux, or no schedstat: the CPU time alone
    return time.process_time() + waited
