"""Control commands: cancel, pause, resume, priority. They work from any process: the store carries
the request to whatever process runs the operation.

Which action applies to which status, and the status a stop request ends in, are the lifecycle's
(``engine.lifecycle``): a refused request is the same one-line Conflict (exit 7) in every face."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import click

from ..errors import Conflict, NotFound, OutlastError, StoreError, requested_unread
from ..exitcodes import ExitCode
from ..lifecycle import SETTLED, Action, Status, StopReason, check_action
from ..limits import Priority
from ..text import quoted
from . import collector_paused
from . import format as fmt
from .common import PRIORITIES, SEQ, App, NoStore, Seconds, parse_pairs, pass_app, run_async, session, valid_ids

if TYPE_CHECKING:
    from ..config import Settings
    from ..models import Operation


def _control(action: Action) -> click.Command:
    """``cancel`` or ``pause``: ask, then wait (``--wait``) for the status the lifecycle says it ends in."""
    target = StopReason(action.value).status

    @click.command(action.value)
    @click.argument("op_id", metavar="ID")
    @click.option(
        "--wait",
        "wait_s",
        type=Seconds(),
        default=10.0,
        show_default=True,
        metavar="S",
        help="Seconds to wait for the operation to stop.",
    )
    @click.option("--no-wait", is_flag=True, help="Only ask; do not wait for it to stop.")
    @pass_app
    def command(app: App, op_id: str, wait_s: float, no_wait: bool) -> int:
        with collector_paused():  # the engine's modules: imports
            from .run import wait_settled

        asked: list[Operation] = []

        async def go() -> tuple[Operation, bool]:
            valid_ids(op_id)
            async with session(app.settings, create=False) as engine:  # no store: none made for nothing to stop
                full = await engine.resolve(op_id)
                check_action(action, (await engine.get(full)).status, full)
                op = await getattr(engine, action.value)(full)
                asked.append(op)
                if op.status in SETTLED or no_wait or _stopped(op):
                    return op, op.status in SETTLED
                try:
                    return await wait_settled(engine, full, wait_s, op.attempt), True
                except StoreError as e:  # asked all the same
                    raise requested_unread(full, action.value, e) from None

        op, waited = run_async(go())
        if app.json:
            fmt.echo(fmt.dumps(fmt.op_json(op)))
        if asked and op.attempt != asked[0].attempt and op.status is not target:
            # Another command resumed it between two looks: the attempt asked about ended (as asked,
            # most likely), which "became completed before the cancel took effect" denied.
            fmt.echo(
                f"outlast: {op.id}: its attempt {asked[0].attempt} ended and another command resumed it"
                f" (attempt {op.attempt}, now {op.status.value}); {app.command(action.value, op.id)} stops that one",
                err=True,
            )
            return ExitCode.CONFLICT
        if op.status is target:
            if not app.json and not app.quiet:
                cp = f" at checkpoint {op.checkpoint_seq}" if op.checkpoint_seq else ""
                fmt.echo(
                    f"{op.id} {target.value}{cp}"
                    + (f"; resume with: {fmt.resume_command(app.command(), op)}" if target is Status.PAUSED else "")
                )
            return ExitCode.OK
        if op.status in SETTLED:
            fmt.echo(f"outlast: {op.id} became {op.status.value} before the {action} took effect", err=True)
            return ExitCode.CONFLICT
        if not app.json and not app.quiet:
            where = f" in {op.worker}" if op.worker else ""
            if stopped := _stopped(op):
                fmt.echo(f"{op.id}: {action} requested{where}, which is {stopped}; it stops at its next safe point")
                return ExitCode.OK
            still = f" (still running after {wait_s:g}s)" if waited else ""
            fmt.echo(f"{op.id}: {action} requested{where}{still}; it stops at its next safe point")
        return ExitCode.OK

    command.help = (
        f"{action.value.capitalize()} an operation, wherever it runs "
        "(ID: its handle, the # of `ls`, or a unique id prefix).\n\n"
    ) + (
        "It stops at its next item boundary with a checkpoint and can be resumed."
        if action is Action.PAUSE
        else "A cancelled operation keeps its checkpoints and can still be resumed."
    )
    return command


def _stopped(op: Operation) -> str | None:
    """The note of running work whose process here is stopped (Ctrl-Z, SIGSTOP), else None: it acts on no
    request until continued, so a cancel or pause waited its 10 s for nothing and then said "still running"."""
    w = op.worker
    if w is None or op.status in SETTLED:
        return None
    note = fmt.stopped_note(w.host, w.pid, w.boot, w.start)
    return note if note is not None and note.startswith("stopped") else None


cancel = _control(Action.CANCEL)
pause = _control(Action.PAUSE)


@click.command()
@click.argument("op_id", metavar="ID")
@click.option("--checkpoint", "seq", type=SEQ, metavar="SEQ", help="Resume from this checkpoint (see `checkpoints`).")
@click.option("--detach", "-d", is_flag=True, help="Go on in a background process; print the id.")
@click.option("--queue", is_flag=True, help="Only put it back in the queue, for a running worker.")
@click.option("--profile", multiple=True, metavar="KEY=VALUE", help="Change the timeout profile from this attempt on.")
@pass_app
def resume(app: App, op_id: str, seq: int | None, detach: bool, queue: bool, profile: tuple[str, ...]) -> int:
    """Go on with a stopped operation from its newest valid checkpoint (or --checkpoint SEQ).

    In the foreground with the live display by default, like `run`. A queued operation (one no worker
    has taken) is run as it is.

    \b
    Examples:
      outlast resume 12                      # by handle (the # of `ls`), or any unique id prefix: 06b2
      outlast resume 06b2 --checkpoint 3     # from an older checkpoint (see `checkpoints`)
      outlast resume 06b2 --detach           # in the background
      outlast resume 06b2 --queue            # for a running `outlast worker`
      outlast resume 06b2 --profile max_timeout=28800 --profile failure_threshold=20
    """
    if detach and queue:
        raise click.UsageError("--detach and --queue exclude each other")
    from ..errors import InvalidInput

    with collector_paused():  # pydantic, the models and the engine's modules: imports
        from ..profiles import resume_fields
        from ..registry import get_handler
        from .run import detach_dir, run_foreground, say_detached, spawn_detached, submit_or_resume

    async def check() -> tuple[str, Operation | None]:
        valid_ids(op_id)
        async with session(app.settings, create=False) as engine:
            full = await engine.resolve(op_id)
            op = await engine.get(full)
            # Queued (submitted, requeued by `ls` after its runner died, a retry waiting out its backoff):
            # nothing to resume, and refusing left it waiting for a worker nobody had started. Run it
            # here (or in the background) as it is; a checkpoint or profile of the resume needs it stopped.
            waiting = op.status is Status.QUEUED
            if waiting and (seq is not None or overrides):
                raise Conflict(
                    f"operation {full} is queued, not stopped: --checkpoint and --profile apply to a stopped"
                    f" operation (pause it first: {app.command('pause', full)})"
                )
            if not waiting:
                check_action(Action.RESUME, op.status, full)
            if not queue:  # run by this process (or its detached child, with the same plugins)
                try:
                    get_handler(op.type)
                except InvalidInput:
                    # Resumed anyway, its attempt failed at once: a forgotten --plugin changed the record.
                    raise InvalidInput(
                        f"operation {full} is a {op.type!r}, and no plugin loaded here runs that type: resume"
                        f" with the plugin that defines it ({app.command()} --plugin MODULE resume {full}),"
                        " or --queue it for a worker that has it"
                    ) from None
            if seq is not None:
                have = {c.seq for c in await engine.checkpoints(full)}
                if seq not in have:
                    listed = ", ".join(map(str, sorted(have))) or "none"
                    raise NotFound(f"operation {full} has no checkpoint {seq} (has: {listed})")
            resume_fields(await engine.get(full), overrides)  # a bad key or value: one line, nothing stored
            return full, op if waiting else None

    overrides = parse_pairs(profile, "--profile")

    full, waiting = run_async(check())  # waiting: the queued record, run as it is
    if not detach and not queue:
        return run_async(
            run_foreground(
                app.settings,
                app.mode,
                op_id=full,
                checkpoint=seq,
                prefix=app.command(),
                profile=overrides,
                queued=waiting is not None,
            )
        )
    if detach:
        detach_dir(app.settings)  # before anything is stored
    if waiting is None:
        try:
            op = run_async(submit_or_resume(app.settings, None, full, seq, overrides))
        except Conflict:
            # Resumed by another command since the look above (two resumes at once): queued, as this one would
            # have left it, and as it is when found so at that look. Not when a checkpoint or a profile was asked
            # for: the other resume did not apply them.
            now = run_async(now_of(app.settings, full))
            if now.status is not Status.QUEUED or seq is not None or overrides:
                check_action(Action.RESUME, now.status, full)  # as it is now (running: claimed already)
                raise
            waiting = now
    if waiting is not None:
        op = waiting
        if queue:
            if app.json:
                fmt.echo(fmt.dumps(fmt.op_json(op)))
            elif app.quiet:  # its id, as a quiet resume, submit or rerun prints theirs
                fmt.echo(op.id)
            else:
                fmt.echo(f"{op.id} is already queued; {picked_up(app, op)}")
            return ExitCode.OK
    if detach:
        runner = spawn_detached(app.settings, app.prepare_child(), op.id, app.command())
        how = "running" if waiting else "resuming"
        return say_detached(app.settings, op, runner, app.json, app.quiet, app.command(), how)
    if app.json:
        fmt.echo(fmt.dumps(fmt.op_json(op)))
    elif app.quiet:  # its id, as a quiet resume, submit or rerun prints theirs
        fmt.echo(op.id)
    else:
        fmt.echo(f"{op.id} queued again (attempt {op.attempt}); {picked_up(app, op)}")
    return ExitCode.OK


def picked_up(app: App, op: Operation) -> str:
    """Who runs ``op`` now that it is queued: a worker started as this command was, when this process has a
    handler for its type; else one with the plugin that has it ("a running `outlast worker` picks it up" was
    said of a plugin's type after a resume without ``--plugin``, and such a worker leaves it queued)."""
    from ..registry import BUILTIN_TYPES, runnable_types

    if op.type in BUILTIN_TYPES or op.type in runnable_types():
        return f"a running `{app.command('worker')}` picks it up"
    return f"a running worker with the plugin of {op.type!r} picks it up (no plugin loaded here runs that type)"


async def now_of(settings: Settings, op_id: str) -> Operation:
    """The record of ``op_id`` as it is now."""
    async with session(settings, recover=False) as engine:
        return await engine.get(op_id)


@click.command()
@click.argument("op_id", metavar="ID")
@click.argument("level", metavar="high|normal|low", type=PRIORITIES)
@pass_app
def priority(app: App, op_id: str, level: str) -> int:
    """Re-prioritise queued work."""

    async def go() -> Operation:
        valid_ids(op_id)
        async with session(app.settings, create=False) as engine:
            full = await engine.resolve(op_id)
            check_action(Action.PRIORITY, (await engine.get(full)).status, full)
            return await engine.set_priority(full, Priority(level.lower()))

    op = run_async(go())
    if app.json:
        fmt.echo(fmt.dumps(fmt.op_json(op)))
    elif not app.quiet:
        fmt.echo(f"{op.id} priority {op.priority.value}")
    return ExitCode.OK


@click.command("rm")
@click.argument("op_ids", metavar="ID...", nargs=-1, required=True)
@pass_app
def rm(app: App, op_ids: tuple[str, ...]) -> int:
    """Remove settled operations: their records, checkpoints and logs (their outputs stay).

    Queued and running work is refused (cancel it first), and so is one that a resume reached first;
    a paused or interrupted one is removed with its checkpoints (it can no longer be resumed). A bad or
    ambiguous id removes nothing (exit 2); past that, each id is removed or refused on its own (one no
    operation matches, one still running): the exit code is the first refusal's.

    \b
    Examples:
      outlast rm 06b2 06b3
      outlast clean --older-than 7d        # every completed or cancelled one older than a week
    """

    from ..errors import InvalidInput

    async def go() -> list[tuple[str, BaseException | None]]:
        valid_ids(*op_ids)  # a mistyped id is bad usage before the store is looked for
        out: list[tuple[str, BaseException | None]] = []
        async with session(app.settings, create=False) as engine:
            # Every id resolved before any is removed: `rm 1 06` (06 ambiguous) removed 1, then said "bad input"
            # (exit 2), which stores nothing. One that matches nothing is a refusal of its own, as a running one
            # is: the others go (a second `rm` of the same ids after a partial one removes what is left).
            resolved: list[tuple[str, str | None, OutlastError | None]] = []
            for raw in dict.fromkeys(op_ids):
                try:
                    resolved.append((raw, await engine.resolve(raw), None))
                except InvalidInput:
                    raise
                except OutlastError as e:
                    resolved.append((raw, None, e))
            seen: set[str] = set()
            for raw, full, error in resolved:
                if full is None:
                    out.append((raw, error))
                    continue
                if full in seen:
                    continue  # named twice (its handle and an id prefix): removed once
                seen.add(full)
                try:
                    await engine.remove(full)
                    out.append((full, None))
                except OutlastError as e:
                    out.append((full, e))
        return out

    return _report_removed(app, run_async(go()))


def _refused(error: BaseException) -> ExitCode:
    """Say a refused removal in one line; its exit code."""
    from ..exitcodes import code_for_error

    fmt.echo(fmt.printable(f"outlast: {error}"), err=True)
    return ExitCode(code_for_error(error) or ExitCode.USAGE)


def _report_removed(app: App, results: list[tuple[str, BaseException | None]]) -> int:
    code = ExitCode.OK
    for op_id, error in results:
        if error is None:
            if not app.quiet and not app.json:
                fmt.echo(f"{op_id} removed")
        else:
            refused = _refused(error)  # said whatever came before
            code = code or refused
    if app.json:
        fmt.echo(fmt.dumps({"removed": [i for i, e in results if e is None]}))
    return int(code)


AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)\Z", re.ASCII)
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _age(value: str, now: float) -> float:
    """``value`` (``7d``) in seconds. Its unit is needed: a bare number was seconds, so ``--older-than 30``
    meant as a month removed every finished operation but those of the last half minute. Zero is refused
    (``0d``: a script's empty count, which removed every finished operation), and so is an age reaching
    before 1970 (``99999999999999d``: a typo that removed nothing, said as "0 removed")."""
    m = AGE.match(value.strip())
    if m is None:
        if value.strip().startswith("-"):
            raise click.BadParameter(f"{quoted(value)}: an age is not negative (7d, 12h, 90m)")
        raise click.BadParameter(f"{quoted(value)}: expected a number with s, m, h, d or w (7d, 12h, 90m)")
    if float(m[1]) <= 0:
        raise click.BadParameter(
            f"{quoted(value)}: an age of zero takes every finished operation: give one above zero, or leave"
            " --older-than out to remove them all"
        )
    if not m[2]:
        raise click.BadParameter(f"{quoted(value)}: give its unit: {m[1]}s, {m[1]}m, {m[1]}h, {m[1]}d or {m[1]}w")
    seconds = float(m[1]) * _UNIT[m[2]]
    if seconds >= now:
        raise click.BadParameter(
            f"{quoted(value)}: reaches back before 1970, when no operation can have finished: give a shorter age"
        )
    return seconds


@click.command("clean")
@click.option("--older-than", "older", metavar="AGE", help="Only those finished more than AGE ago (7d, 12h, 90m).")
@click.option(
    "--status",
    "-s",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status if s in SETTLED], case_sensitive=False),
    help="Only these statuses (repeatable; default: completed and cancelled).",
)
@click.option("--dry-run", "-n", is_flag=True, help="Only list what would be removed.")
@pass_app
def clean(app: App, older: str | None, statuses: tuple[str, ...], dry_run: bool) -> int:
    """Remove finished operations in bulk (records, checkpoints, logs; their outputs stay)."""
    import time

    now = time.time()
    cutoff = None if older is None else now - _age(older, now)
    wanted = [Status(s) for s in statuses] or [Status.COMPLETED, Status.CANCELLED]
    done: list[str] = []
    code = ExitCode.OK

    def said(op_id: str, error: BaseException | None) -> None:
        """Say each one as it goes: an interrupted clean (Ctrl-C after thousands) said nothing of them."""
        nonlocal code
        if error is not None:
            refused = _refused(error)
            code = code or refused
            return
        done.append(op_id)
        if not app.quiet and not app.json:
            fmt.echo(f"{op_id} would be removed" if dry_run else f"{op_id} removed")

    async def go() -> None:
        async with session(app.settings, create=not dry_run) as engine:
            # A page at a time, not every record at once (20,000 held 200 MB); what is removed leaves the
            # listing, so the next page starts after what was kept.
            kept = 0
            while True:
                page = await engine.list_operations(wanted, limit=CLEAN_PAGE, offset=kept)
                for op in page:
                    if cutoff is not None and op.ended_at > cutoff:
                        kept += 1
                        continue
                    if dry_run:
                        kept += 1
                        said(op.id, None)
                        continue
                    try:
                        await engine.remove(op.id, statuses=frozenset(wanted), ended_before=cutoff)
                    except NotFound:
                        # Removed since the listing by another command (a clean at the same time, an rm): what
                        # was asked, not an error; and gone from the listing, not kept in it.
                        continue
                    except OutlastError as e:
                        try:
                            now_op = await engine.get(op.id)
                        except NotFound:
                            continue
                        except OutlastError:
                            now_op = op  # as it was
                        if now_op.status not in wanted:
                            # Resumed since the listing (a person's `outlast resume`): not finished any more, so not
                            # this clean's to remove, as a clean a moment later would not have listed it.
                            continue
                        kept += 1  # still listed: the next page begins after it
                        if cutoff is not None and now_op.ended_at > cutoff:
                            continue  # resumed and ended anew since the listing: not old, as a later clean sees it
                        said(op.id, e)
                    else:
                        said(op.id, None)
                if len(page) < CLEAN_PAGE:
                    return

    try:
        run_async(go())
    except NoStore:  # a dry run where no store is: nothing would be removed (and none is made)
        pass
    finally:  # interrupted too: what was removed before the stop is said
        if app.json:
            fmt.echo(fmt.dumps({"would_remove" if dry_run else "removed": done}))
        elif not app.quiet:  # a dry run that finds nothing said nothing at all, where a clean says "0 removed"
            fmt.echo(f"{len(done)} would be removed" if dry_run else f"{len(done)} removed", err=True)
    return int(code)


CLEAN_PAGE = 500
"""Operations ``outlast clean`` reads at once."""


COMMANDS = [cancel, pause, resume, priority, rm, clean]
