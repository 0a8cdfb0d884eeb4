"""Running operations from the command line: in the foreground, detached, or as a worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ..config import Settings
from ..engine import Engine, StoreUnwritable, SubmitUnknown
from ..errors import OutlastError
from ..exitcodes import ExitCode, code_for_status, code_for_stopped_watch
from ..files import private_dir, private_dirs, state_opener
from ..lifecycle import Action, StopReason, check_action
from ..models import (
    SETTLED,
    Conflict,
    Event,
    NotFound,
    Operation,
    OperationSpec,
    Status,
    StatusChanged,
    StoreError,
)
from ..paths import DETACHED, detached_log, note_other_store
from ..statedir import refusal
from ..store import open_store
from . import format as fmt
from .common import Mode
from .follow import OrphanLook, PlainView, WatchStopped, follow, make_view, pause_queued, unless_signalled

log = logging.getLogger("outlast.worker")
T = TypeVar("T")

PAUSE_HINT = "Ctrl-C pauses with a checkpoint"


def make_engine(settings: Settings, **kw: object) -> Engine:
    return Engine(open_store(settings.store or settings.state_dir, settings=settings), settings=settings, **kw)  # type: ignore[arg-type]


async def run_foreground(
    settings: Settings,
    mode: Mode,
    spec: OperationSpec | None = None,
    op_id: str | None = None,
    checkpoint: int | None = None,
    prefix: str = "outlast",
    profile: dict[str, Any] | None = None,
    queued: bool = False,
) -> ExitCode:
    """Submit (or resume) one operation and run it in this process until it settles; ``queued``: ``op_id``
    is queued already, run it as it is (a resume of one nobody runs).

    SIGINT, SIGTERM and SIGHUP (not under nohup) pause it with a checkpoint (a second one forces the stop). ``prefix``:
    ``outlast`` with the global options given, so that every hint printed can be pasted as it is.
    """
    if mode in ("json", "quiet"):
        fmt.keep_stdout()
    async with make_engine(settings, run_queue=False) as engine:
        engine.install_signal_handlers()
        if spec is not None:
            op = await submit_checked(engine, spec, prefix)
        else:
            assert op_id is not None
            if queued:
                op = await engine.get(op_id)
            else:
                try:
                    op = await engine.resume(op_id, checkpoint, profile)
                except Conflict:
                    # Resumed by another command since the caller looked (two resumes at once, a worker's
                    # auto_resume): queued, as this resume would have left it, and run as it is, as when found
                    # so at that look; not when a checkpoint or profile was asked for, which that one did not apply.
                    op = await engine.get(op_id)
                    if op.status is not Status.QUEUED or checkpoint is not None or profile:
                        check_action(Action.RESUME, op.status, op_id)  # as it is now (running: claimed already)
                        raise
                    queued = True
        if mode == "plain":
            how = "submitted" if spec is not None else "started" if queued else "resumed"  # not "submitted" each time
            fmt.echo(f"{fmt.clock(time.time())} {op.id} {op.label} {how}: {PAUSE_HINT}; {prefix} resume {op.id}")
        elif mode == "quiet":  # its id, at once, as `-q submit` and `--detach` print it: ID=$(outlast -q run ...)
            fmt.echo(op.id)
        try:
            await claim_here(engine, op.id, None if mode == "quiet" else f"{prefix} slots")
            local = True
        except Conflict:
            local = False  # a worker claimed it first: follow it there
            if mode != "quiet":
                from ..handoff import claimed, taker

                try:
                    now: Operation | None = await engine.get(op.id)
                except OutlastError:
                    now = None  # follow says what it can read
                if now is not None and claimed(now, op.epoch):  # named: another run or resume is no worker
                    fmt.echo(f"{op.id} was taken by {taker(now, op.epoch)}; following it there", err=True)
                elif now is None or now.status not in SETTLED:
                    fmt.echo(f"{op.id} was taken by a running worker; following it there", err=True)
                else:  # paused or cancelled while it waited (for a slot): nobody took it
                    fmt.echo(f"{op.id} was {now.status.value} by another command before it started here", err=True)
        except Exception:
            if spec is not None:  # queued by this command, which could not start it (ulimit -n 9): taken back,
                # or a worker would run it later, unasked, and the run typed again after the fix a second time
                with contextlib.suppress(Exception):
                    await engine.store.delete(op.id, expect=frozenset({Status.QUEUED}))
            raise
        back: Operation | None = None
        try:
            view = make_view(mode, f"{PAUSE_HINT} · {prefix} resume {op.id}", settings.log_limit)
            following = follow(engine, op.id, view, local, prefix)
            # Followed elsewhere, it runs nothing here: a stop signal ends the following as it ends `outlast
            # watch`, without waiting for a read of a store that does not answer (a frozen Redis: 30 s).
            final = await (following if local else unless_signalled(engine, following))
        except WatchStopped:
            fmt.echo(f"stopped following {op.id}; it goes on in its worker", err=True)
            return code_for_stopped_watch(engine.stop_signal)
        except StoreUnwritable:
            report_unwritable(engine, op.id, mode, prefix)
            return ExitCode.STORE
        except NotFound:
            # Said once the engine has stopped the attempt, after what its store says of it then: the
            # record was missing when it was read, but a restore from the checkpoint mirror (this
            # process's or another's) may have put it back meanwhile.
            final = None
            back = await read_again(engine, op.id)
        stopped_by_store = op.id in engine.store_stopped
    if final is None and back is not None and back.status in SETTLED and not back.status.resumable:
        final = back  # settled meanwhile (restored completed, cancelled elsewhere): said as it is
    if final is None:
        if back is not None:
            if mode != "quiet":
                fmt.echo(restored_line(back, engine, prefix), err=True)
            return ExitCode.PAUSED
        if mode != "quiet":
            fmt.echo(f"{op.id} stopped: it is gone from the store (deleted, or the store emptied)", err=True)
        return ExitCode.NOT_FOUND
    report_final(final, mode, prefix)
    return ExitCode.STORE if stopped_by_store else code_for_status(final.status)


GONE_SETTLE = 15.0
"""Seconds a run whose record went missing waits for its attempt to stop before reading the store again
(the attempt stops at its next item boundary once its lease is found gone; by force after the grace)."""


async def read_again(engine: Engine, op_id: str) -> Operation | None:
    """The record of ``op_id`` as the store holds it now (with a checkpoint mirror: once this engine's
    attempt of it has stopped, and the store looked at as a new command would); None when it is really
    gone (or the store cannot say). A Redis emptied under a run with a checkpoint mirror is restored
    from the mirror by the first process that notices, often this one: the run ended "gone from the
    store", exit 3, a line after its own process had put it back."""
    if getattr(engine.store, "mirror", None) is not None:
        deadline = time.monotonic() + GONE_SETTLE
        while op_id in engine.running_ids and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        with contextlib.suppress(OutlastError):
            # As the next command would at its start: notice a Redis emptied and restore what the mirror
            # holds (done already when one of this attempt's writes noticed it; its lease renewal does
            # not), and queue again what no live process runs any more.
            await engine.recover()
    try:
        return await engine.store.get(op_id)
    except (NotFound, StoreError):
        return None


def restored_line(op: Operation, engine: Engine, prefix: str) -> str:
    """The last line of a run whose record was lost and is back in the store: what it is now and how
    to go on (a queued one runs with ``resume`` here or by any worker)."""
    mirror = getattr(engine.store, "mirror", None)
    how = f"restored from the checkpoint mirror {mirror.root}" if mirror is not None else "back in the store"
    where = f" at checkpoint {op.checkpoint_seq}" if op.checkpoint_seq else ""
    go_on = f"{prefix} resume {op.id}"
    state = f"{op.status.value}{where}"
    if op.status is Status.QUEUED:
        go_on += f", or a running `{prefix} worker` picks it up"
    elif op.status is Status.RUNNING:  # as restored, with the lease this run lost: nobody runs it
        state += ", by nobody: the next outlast command that finds it so queues it again"
    return f"{op.id} stopped: the store lost it, and it is {how} ({state}); go on with: {go_on}"


SLOT_POLL = 0.25
"""Seconds between claims while a foreground run waits for a store slot."""

YIELD_FOR = 2.0
"""Seconds a run that waited for a store slot leaves a slot that came free to queued work of a higher priority
(a worker takes it within a second), before it takes it itself: no engine may be running the queue."""


async def outranked(engine: Engine, op_id: str) -> bool:
    """Whether a store slot is free and work of a higher priority than queued ``op_id``'s is queued for it
    (a retry waiting out its backoff included)."""
    slots = await engine.store.get_slots()
    if slots is None or (await engine.store.counts()).get(Status.RUNNING, 0) >= slots:
        return False
    mine = (await engine.get(op_id)).priority
    depth = await engine.store.queue_depth()
    return any(n and p.rank < mine.rank for p, n in depth.items())


async def claim_here(engine: Engine, op_id: str, slots_hint: str | None) -> None:
    """Claim the queued ``op_id`` and run it in this engine; Conflict when it is not queued (another
    engine took it, or it was stopped).

    While every store slot is in use (``outlast slots``) the claim is refused and the operation stays
    queued: wait, say so once on stderr (``slots_hint``: the command that shows them; None: say
    nothing), and claim it when a slot frees, once work of a higher priority queued meanwhile has had
    ``YIELD_FOR`` to take it: claimed at once, a low-priority run took the slot ahead of high-priority work
    that waited for it too. A signal while waiting pauses it, as it would pause it running (the start line
    says Ctrl-C pauses), so it is left resumable, not queued for anyone."""
    said = slots_hint is None
    waiting = False
    yielding: float | None = None  # since when (monotonic) a free slot has been left to higher-priority work
    while True:
        if waiting and await outranked(engine, op_id):
            yielding = time.monotonic() if yielding is None else yielding
        else:
            yielding = None
        if yielding is None or time.monotonic() - yielding >= YIELD_FOR:
            try:
                await engine.run_now(op_id)
                return
            except Conflict:
                if (await engine.get(op_id)).status is not Status.QUEUED:
                    raise
            waiting = True
        if engine.draining:
            await pause_queued(engine, op_id)  # a worker that took it meanwhile is asked to pause it
            return
        if not said:
            slots = await engine.store.get_slots()
            running = (await engine.store.counts()).get(Status.RUNNING, 0)
            if slots is not None and running >= slots:
                fmt.echo(f"waiting for a slot: {running} of {slots} store slots in use ({slots_hint})", err=True)
                said = True
        await asyncio.sleep(SLOT_POLL)


def report_final(op: Operation, mode: Mode, prefix: str = "outlast") -> None:
    """The end of a foreground run: the record (--json) or a line, and how to resume (``prefix``: the
    command with the global options this run was given)."""
    if mode == "json":
        fmt.echo(fmt.dumps(fmt.op_json(op)))
    elif mode == "quiet":
        if op.status in (Status.FAILED, Status.TIMED_OUT):  # an error: said, once, on stderr (cron mails it)
            fmt.echo(f"{op.id} {op.status.value}: {op.error or op.status_message or 'no reason given'}", err=True)
    else:
        p = op.progress
        status = op.status.value
        line = f"{op.id} {status} at {fmt.items(p)} items{fmt.not_done(p)} after {fmt.duration(op.elapsed)}"
        # A retry paused while it waited: the error of the attempt before is not why it stopped.
        detail = (op.status_message if op.status is Status.PAUSED else op.error or op.status_message) or ""
        detail = detail.removeprefix(status).removeprefix(" by user").lstrip(":; ")
        if op.status is Status.COMPLETED and op.result is not None:
            whole = f"; {prefix} show {op.id} --json has all"
            line += f"; result {fmt.abridged_result(op.result, fmt.RESULT_CHARS, whole)}"
        elif detail:
            line += f" ({detail})"
        fmt.echo(line)
    if op.status.resumable and mode != "quiet":
        where = f" (checkpoint {op.checkpoint_seq})" if op.checkpoint_seq else ""
        fmt.echo(f"resume{where} with: {fmt.resume_command(prefix, op)}", err=mode == "json")


def report_unwritable(engine: Engine, op_id: str, mode: Mode, prefix: str) -> None:
    """The end of a run whose store could not be written: what became of it, and what to do. The outage's
    first line was said when it began, maybe long before among the progress lines."""
    if mode == "quiet":
        return
    if engine.health.lost:
        then = "its record went with the state dir, so it cannot be resumed"
    elif (there := engine.health.moved_to) is not None:
        then = f"its record is there, to resume: outlast --state-dir {shlex.quote(there)} resume {op_id}"
    else:
        then = f"the next outlast process finds it interrupted; once the store can be written: {prefix} resume {op_id}"
    final = engine.abandoned.get(op_id) or f"the store could not be written ({engine.health.why})"
    fmt.echo(f"{op_id} stopped, {final}; {then}", err=True)


# ---- detached -------------------------------------------------------------------------------------


def detach_dir(settings: Settings) -> Path:
    """Where detached runs write their output, made if missing. Called before the operation is submitted:
    a file in its place was an internal error after it, which left a queued operation nobody ran."""
    state = Path(settings.state_dir).expanduser()
    if (refused := refusal(state)) is not None:  # as the store's open refuses it: before anything is made there
        raise StoreError(refused)
    private_dirs(state)
    made = private_dir(state, DETACHED)
    if settings.store and (
        "://" in settings.store or Path(settings.store).expanduser().absolute() != state.absolute()
    ):  # another store's runs: not the local store's retention to remove as logs of operations gone from it
        note_other_store(state)
    return made


def detach_log(settings: Settings, op_id: str) -> Path:
    detach_dir(settings)  # made if missing
    return detached_log(settings.state_dir, op_id)


def spawn_detached(
    settings: Settings, global_args: list[str], op_id: str, prefix: str = "outlast"
) -> subprocess.Popen[bytes]:
    """Start ``outlast _run-one ID`` in a new session (it survives the terminal closing). ``prefix``:
    ``outlast`` with the global options given, for the hints of an error."""
    log_path = detach_log(settings, op_id)
    try:
        with open(log_path, "ab", opener=state_opener) as out:
            return subprocess.Popen(
                [sys.executable, "-m", "engine.cli", *global_args, "_run-one", op_id],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd=os.getcwd(),
            )
    except OSError as e:  # no process could be started (out of memory, a process limit, no space for the log)
        raise OutlastError(
            f"operation {op_id} is queued, but no background process could be started for it"
            f" ({e.strerror or e}): run it with `{prefix} worker`, or cancel it with `{prefix} cancel {op_id}`"
        ) from None


async def detached_outcome(settings: Settings, op_id: str, runner: subprocess.Popen[bytes]) -> Operation:
    """The record of ``op_id`` once its background ``runner`` (``spawn_detached``) or another took it."""
    from ..handoff import wait_taken
    from .common import session

    async with session(settings, recover=False) as engine:
        return (await wait_taken(engine.get, [op_id], runner))[op_id]


def say_detached(
    settings: Settings,
    queued: Operation,
    runner: subprocess.Popen[bytes],
    json: bool,
    quiet: bool,
    prefix: str,
    how: str,
) -> ExitCode:
    """Start nothing more: say who runs ``queued`` (its record as queued for the ``runner`` just started; ``how``:
    "running" or "resuming"). A worker already running on the store may have claimed it first: then the runner
    found nothing to do and exited, and its pid (printed as the one to follow or kill) named no process.
    Another command may have paused or cancelled it first: then nobody took it (its record still names the
    process of its attempt before, which was said to have taken it). A runner that exited without it being
    taken (a plugin that fails to load, a store it could not open) is an error naming its log; the operation
    stays queued."""
    from ..handoff import claimed, run_by, taker
    from .common import run_async

    op_id = queued.id
    op = run_async(detached_outcome(settings, op_id, runner))
    pid = runner.pid
    follow_ = f"{prefix} watch {op_id}"
    if op.status is Status.QUEUED and runner.poll() is not None:
        # Not an internal error (a bare OutlastError read as one, exit 70): the id (it is queued), one line, 1.
        fmt.echo(fmt.dumps({"id": op_id, "pid": None}) if json else op_id)
        fmt.echo(
            f"outlast: operation {op_id} is queued, but its background process (pid {pid}) exited (code"
            f" {runner.returncode}) without running it; its output: {detached_log(settings.state_dir, op_id)};"
            f" run it with `{prefix} worker`, or cancel it with `{prefix} cancel {op_id}`",
            err=True,
        )
        return ExitCode.FAILED
    ours = op.status is Status.QUEUED or run_by(op, pid)  # still queued: it waits for a slot, alive
    by = None if ours else taker(op, queued.epoch)
    if json:
        fmt.echo(fmt.dumps({"id": op_id, "pid": pid if ours else None, **({"taken_by": by} if by else {})}))
        return ExitCode.OK
    fmt.echo(op_id)
    if quiet:
        return ExitCode.OK
    if by is not None and not claimed(op, queued.epoch):
        fmt.echo(
            f"{op.status.value} by another command meanwhile, before the background process this command started"
            f" (pid {pid}) took it: it found nothing to do; see: {prefix} show {op_id}",
            err=True,
        )
    elif by is not None:
        fmt.echo(
            f"taken by {by} meanwhile, not by the background process this command started (pid {pid}: it"
            f" found nothing to do); follow with: {follow_}",
            err=True,
        )
    elif op.status in SETTLED:  # a quick one: done before it was looked at
        fmt.echo(f"{op.status.value} in the background (pid {pid}, exited); see: {prefix} show {op_id}", err=True)
    elif op.status is Status.QUEUED:
        fmt.echo(f"{how} in the background (pid {pid}), waiting for a slot; follow with: {follow_}", err=True)
    else:
        fmt.echo(f"{how} in the background (pid {pid}); follow with: {follow_}", err=True)
    return ExitCode.OK


async def submit_checked(engine: Engine, spec: OperationSpec, prefix: str = "outlast") -> Operation:
    """``engine.submit(spec)``; a create the store got without answering says how to look for it before
    submitting again (``prefix``: the command with the global options given), not that it was not done."""
    try:
        op, before = await engine.submit_once(spec)
    except SubmitUnknown as e:
        check = f"check with `{prefix} show {e.operation_id}` once the store answers, before submitting it again"
        raise SubmitUnknown(f"{e}; {check}", e.operation_id) from None
    if before:  # a cron job run twice is told that nothing was queued, and what became of the first
        fmt.echo(f"submitted before with this idempotency key: {op.id} is {op.status.value}; nothing queued", err=True)
    return op


async def submit_or_resume(
    settings: Settings,
    spec: OperationSpec | None,
    op_id: str | None,
    checkpoint: int | None,
    profile: dict[str, Any] | None = None,
    prefix: str = "outlast",
) -> Operation:
    """Queue an operation (new, or a resume) without running it (``prefix``: for the hint of an error)."""
    async with make_engine(settings, run_queue=False) as engine:
        if spec is not None:
            return await submit_checked(engine, spec, prefix)
        assert op_id is not None
        return await engine.resume(op_id, checkpoint, profile)


async def run_one(settings: Settings, op_id: str, prefix: str = "outlast") -> ExitCode:
    """The detached process: run one queued operation with plain output to its log file (``prefix``: its
    command with the global options it was given, for the hints it writes there)."""
    async with make_engine(settings, run_queue=False) as engine:
        engine.install_signal_handlers()
        queued = await engine.get(op_id)
        try:
            await claim_here(engine, op_id, f"{prefix} slots")
        except Conflict as e:
            from ..handoff import claimed, taker

            why = str(e)
            op = await engine.get(op_id)
            epoch = queued.epoch if queued.status is Status.QUEUED else None
            if claimed(op, epoch) and op.worker != engine.worker:
                # Claimed first by a worker already running on the store: it runs it, and this process,
                # whose pid the command that started it may have printed, is gone.
                why = f"{taker(op, epoch)} took {op_id} first ({op.status.value}); follow with: {prefix} watch {op_id}"
            fmt.echo(f"{fmt.clock(time.time())} not run here: {why}")
            return ExitCode.CONFLICT
        # Status and progress only: echoed here too, the operation's log lines grew this file without
        # the log's cap (62 MB for 30 MB of output, with the log itself capped at 2 MB).
        fmt.echo(f"{fmt.clock(time.time())} {op_id}: its log lines: {prefix} logs {op_id}")
        try:
            final = await follow(engine, op_id, PlainView(logs=False), local=True, prefix=prefix)
        except StoreUnwritable:
            report_unwritable(engine, op_id, "plain", prefix)
            return ExitCode.STORE
    report_final(final, "plain", prefix)
    return code_for_status(final.status)


# ---- worker ---------------------------------------------------------------------------------------


async def run_worker(settings: Settings, concurrency: int | None, exit_when_idle: bool, mode: Mode) -> ExitCode:
    """Run queued work until a signal (drain: running work is paused with a checkpoint, or with auto_resume
    queued again from it) or, with ``exit_when_idle``, until it runs nothing and nothing queued is its to run."""
    if mode in ("json", "quiet"):
        fmt.keep_stdout()
    engine = make_engine(settings, max_concurrent=concurrency, run_queue=True)

    def on_event(ev: Event) -> None:
        if isinstance(ev, StatusChanged) and mode != "quiet":
            if mode == "json":
                fmt.echo(fmt.dumps({"event": "status", **ev.model_dump(mode="json")}))
            else:
                fmt.echo(f"{fmt.clock(ev.ts)} {ev.operation_id} {fmt.status_text(ev.status, ev.message)}")

    failed = False
    async with engine:
        try:
            if engine.store.read_only:  # it would wait for ever for work it cannot claim
                why = getattr(engine.store, "read_only_reason", "is on a read-only file system")
                raise StoreError(f"{engine.store.url} {why}: no work can be run from it")
            engine.install_signal_handlers()
            engine.subscribe(on_event)
            if mode == "plain":
                store_slots = await engine.store.get_slots()
                shared = f" (store: {store_slots})" if store_slots is not None else ""
                fmt.echo(
                    f"{fmt.clock(time.time())} worker {engine.worker} on {engine.store.url}: "
                    f"{engine.max_concurrent} slots{shared}; Ctrl-C or SIGTERM "
                    + (
                        "queues running work again from a checkpoint"
                        if engine.requeues_stopped
                        else "pauses running work with a checkpoint"
                    )
                )
            idle_since: float | None = None
            queue = QueueLook(engine, mode)
            while True:
                await asyncio.sleep(0.25)
                if engine.store_failed:  # said when the store failed: exit, so the next engine can recover the work
                    # Interrupted, not paused: auto_resume queues it again (a pause waits for a person's resume, and
                    # said "paused: the engine stopped" of work the user had just resumed).
                    engine.drain(StopReason.STORE)
                    failed = True
                if engine.draining:
                    if not engine.running_ids:
                        break
                    continue
                if engine.running_ids:
                    idle_since = None
                    continue
                if exit_when_idle and engine.health.over_limit(time.monotonic()):
                    # Work is queued but the store takes no claim (a Redis over maxmemory, a full disk): a
                    # cron drain ended never. As a store failure with work running ends a worker: one line, 8.
                    log.error("no queued work can be claimed: %s; exiting", engine.health.why)
                    failed = True
                    break
                if exit_when_idle or queue.due():
                    try:
                        busy = await _unless_draining(engine, queue.holds_work())
                    except StoreError as e:
                        if not engine.running_ids:
                            raise  # idle: the store's error, one line, exit 8
                        # Work claimed while the look failed (a disk's I/O error, a blip): it ended the worker, and
                        # that work paused ("the engine stopped"), though the store took its claim. It runs on; its
                        # own writes say when the store fails for too long.
                        log.debug("the queue could not be read: %s", e)
                        continue
                    if busy is None:
                        continue  # asked to stop while the store was not answering: nothing runs, so go now
                    if not exit_when_idle or busy:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since >= 1.0:  # twice idle, a second apart: not a gap
                        break
        except StoreError:
            # The worker ends for its store: what it runs ends interrupted (any worker with auto_resume
            # queues it again), not paused for a person's resume as "the engine stopped".
            engine.drain(StopReason.STORE)
            raise

    if mode == "plain":
        fmt.echo(f"{fmt.clock(time.time())} worker stopped")
    return ExitCode.STORE if failed else ExitCode.OK


async def _unless_draining(engine: Engine, look: Coroutine[Any, Any, T]) -> T | None:
    """``look``'s answer, or None once the engine drains (a signal): an idle worker asked to stop while
    the store did not answer waited out the store's retries (30 s on Redis), then exited 8."""
    task = asyncio.ensure_future(look)
    while not task.done():
        await asyncio.wait({task}, timeout=0.1)
        if engine.draining and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
    return task.result()


PASSED_LOOK = 1000
"""Queued operations an idle worker reads (newest first) to say which of their types it passes over."""


class QueueLook:
    """What an idle worker sees in the queue: whether any of it is its own to run, and, said once per
    type, which operations it passes over because it has no handler for their type (their plugin is
    not loaded here: another worker's, or a forgotten ``--plugin``)."""

    def __init__(self, engine: Engine, mode: Mode) -> None:
        self._engine, self._mode = engine, mode
        self._told: set[str] = set()
        self._next = 0.0
        self._none_in: tuple[int, ...] | None = None
        """The queue depth at the last look that found none of it runnable here: not read again unchanged."""

    def due(self) -> bool:
        """Whether to look again (every 2 s while idle: on Redis a queue of others' work is read whole,
        by its records' type fields)."""
        return time.monotonic() >= self._next

    async def holds_work(self) -> bool:
        """Whether an operation is queued (or waiting out a retry's backoff) that this worker can run."""
        from ..registry import runnable_types

        self._next = time.monotonic() + 2.0
        store = self._engine.store
        depth = tuple((await store.queue_depth()).values())
        if not any(depth) or depth == self._none_in:
            return False
        runs = runnable_types()
        if await store.list_operations([Status.QUEUED], types=sorted(runs), limit=1):
            return True
        self._none_in = depth
        listed = await store.list_operations([Status.QUEUED], limit=PASSED_LOOK)
        # Only so many read: of a queue longer than that, a count is how many at least ("leaving 1000" of 1,500).
        cut = len(listed) >= PASSED_LOOK
        passed = [op for op in listed if op.type not in runs]
        for type_ in sorted({op.type for op in passed} - self._told):
            self._told.add(type_)
            n = sum(op.type == type_ for op in passed)
            if self._mode == "json":
                event: dict[str, Any] = {"event": "passed_over", "type": type_, "queued": n}
                if cut:
                    event["at_least"] = True
                fmt.echo(fmt.dumps(event))
            elif self._mode == "plain":
                fmt.echo(
                    f"{fmt.clock(time.time())} leaving {'at least ' if cut else ''}{n} queued"
                    f" {fmt.printable(type_)} operation(s) to a worker that has their plugin (none loaded here runs"
                    " that type: --plugin MODULE)"
                )
        return False


async def wait_settled(engine: Engine, op_id: str, timeout: float, attempt: int | None = None) -> Operation:
    """Poll until the operation is settled or ``timeout`` passes; the newest record either way. With
    ``attempt``, also once another attempt has begun (resumed meanwhile: the one waited for has ended).

    It looks for orphans as a follower does: a pause asked of work whose process had just died (a Redis
    lease not yet run out) waited out its time, "still running", with nobody left to stop it."""
    end = time.monotonic() + timeout
    look = OrphanLook(engine)
    while True:
        op = await engine.get(op_id)
        if op.status in SETTLED or time.monotonic() >= end or (attempt is not None and op.attempt != attempt):
            return op
        await asyncio.sleep(0.1)
        await look()
