"""Control commands: cancel, pause, resume, priority. They work from any process: the store carries
the request to whatever process runs the operation.

Which action applies to which status, and the status a stop request ends in, are the lifecycle's
(``engine.lifecycle``): a refused request is the same one-line Conflict (exit 7) in every face."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..errors import NotFound
from ..exitcodes import ExitCode
from ..lifecycle import SETTLED, Action, Status, StopReason, check_action
from ..limits import Priority
from . import format as fmt
from .common import PRIORITIES, SEQ, App, Seconds, parse_pairs, pass_app, run_async, session

if TYPE_CHECKING:
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
        from .run import wait_settled

        async def go() -> tuple[Operation, bool]:
            async with session(app.settings) as engine:
                full = await engine.resolve(op_id)
                check_action(action, (await engine.get(full)).status, full)
                op = await getattr(engine, action.value)(full)
                if op.status in SETTLED or no_wait:
                    return op, op.status in SETTLED
                return await wait_settled(engine, full, wait_s), True

        op, waited = run_async(go())
        if app.json:
            fmt.echo(fmt.dumps(fmt.op_json(op)))
        if op.status is target:
            if not app.json and not app.quiet:
                cp = f" at checkpoint {op.checkpoint_seq}" if op.checkpoint_seq else ""
                fmt.echo(
                    f"{op.id} {target.value}{cp}"
                    + (f"; resume with: {app.command('resume', op.id)}" if target is Status.PAUSED else "")
                )
            return ExitCode.OK
        if op.status in SETTLED:
            fmt.echo(f"outlast: {op.id} became {op.status.value} before the {action} took effect", err=True)
            return ExitCode.CONFLICT
        if not app.json and not app.quiet:
            where = f" in {op.worker}" if op.worker else ""
            still = f" (still running after {wait_s:g}s)" if waited else ""
            fmt.echo(f"{op.id}: {action} requested{where}{still}; it stops at its next safe point")
        return ExitCode.OK

    command.help = f"{action.value.capitalize()} an operation, wherever it runs (ID: any unique prefix).\n\n" + (
        "It stops at its next item boundary with a checkpoint and can be resumed."
        if action is Action.PAUSE
        else "A cancelled operation keeps its checkpoints and can still be resumed."
    )
    return command


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

    In the foreground with the live display by default, like `run`.

    \b
    Examples:
      outlast resume 06b2                    # any unique id prefix
      outlast resume 06b2 --checkpoint 3     # from an older checkpoint (see `checkpoints`)
      outlast resume 06b2 --detach           # in the background
      outlast resume 06b2 --queue            # for a running `outlast worker`
      outlast resume 06b2 --profile max_timeout=28800 --profile failure_threshold=20
    """
    if detach and queue:
        raise click.UsageError("--detach and --queue exclude each other")
    from ..profiles import resume_fields
    from .run import run_foreground, spawn_detached, submit_or_resume

    async def check() -> str:
        async with session(app.settings) as engine:
            full = await engine.resolve(op_id)
            check_action(Action.RESUME, (await engine.get(full)).status, full)
            if seq is not None:
                have = {c.seq for c in await engine.checkpoints(full)}
                if seq not in have:
                    listed = ", ".join(map(str, sorted(have))) or "none"
                    raise NotFound(f"operation {full} has no checkpoint {seq} (has: {listed})")
            resume_fields(await engine.get(full), overrides)  # a bad key or value: one line, nothing stored
            return full

    overrides = parse_pairs(profile, "--profile")

    full = run_async(check())
    if not detach and not queue:
        return run_async(
            run_foreground(app.settings, app.mode, op_id=full, checkpoint=seq, prefix=app.command(), profile=overrides)
        )
    op = run_async(submit_or_resume(app.settings, None, full, seq, overrides))
    if detach:
        pid = spawn_detached(app.settings, app.prepare_child(), op.id)
        if app.json:
            fmt.echo(fmt.dumps({"id": op.id, "pid": pid}))
        else:
            fmt.echo(op.id)
            if not app.quiet:
                fmt.echo(f"resuming in the background (pid {pid}); follow with: outlast watch {op.id}", err=True)
    elif app.json:
        fmt.echo(fmt.dumps(fmt.op_json(op)))
    elif not app.quiet:
        fmt.echo(f"{op.id} queued again (attempt {op.attempt}); a running `outlast worker` picks it up")
    return ExitCode.OK


@click.command()
@click.argument("op_id", metavar="ID")
@click.argument("level", metavar="high|normal|low", type=PRIORITIES)
@pass_app
def priority(app: App, op_id: str, level: str) -> int:
    """Re-prioritise queued work."""

    async def go() -> Operation:
        async with session(app.settings) as engine:
            full = await engine.resolve(op_id)
            check_action(Action.PRIORITY, (await engine.get(full)).status, full)
            return await engine.set_priority(full, Priority(level.lower()))

    op = run_async(go())
    if app.json:
        fmt.echo(fmt.dumps(fmt.op_json(op)))
    elif not app.quiet:
        fmt.echo(f"{op.id} priority {op.priority.value}")
    return ExitCode.OK


COMMANDS = [cancel, pause, resume, priority]
