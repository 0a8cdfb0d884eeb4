"""``outlast slots``: the store-wide slot count, shared by every engine on the store.

``--concurrency`` (``max_concurrent``) caps one process; the store's slots cap the operations running
on the whole store, whichever engines run them (workers, dashboards, foreground runs). Unset by
default: each engine's own limit only, so a fleet of workers sized to their machines is never capped
by a default it did not ask for.
"""

from __future__ import annotations

import click

from ..errors import InvalidInput
from ..exitcodes import ExitCode
from ..lifecycle import Status
from . import format as fmt
from .common import App, NoStore, pass_app, run_async, session


def parse_count(raw: str) -> int | None:
    """``N`` (1..SLOTS_MAX) or ``off`` from the command line; InvalidInput (one line) for anything else."""
    from ..store.base import SLOTS_MAX  # not at import: ``outlast --help`` builds every command

    text = raw.strip()
    if text.lower() == "off":
        return None
    # len first: int() refuses a text of more than 4,300 digits, which was an internal error
    if text.isascii() and text.isdigit() and len(text) <= 20 and 1 <= int(text) <= SLOTS_MAX:
        return int(text)
    raise InvalidInput(f"store slots {raw!r}: expected a whole number from 1 to {SLOTS_MAX}, or off")


def describe(slots: int | None, running: int) -> str:
    """The line ``outlast slots`` prints."""
    if slots is None:
        return "store slots: not set (each engine's own limit)"
    return f"store slots: {slots} ({running} running)"


@click.command(context_settings={"ignore_unknown_options": True})  # ``slots -1``: our one line, not click's
@click.argument("value", metavar="[N|off]", required=False)
@pass_app
def slots(app: App, value: str | None) -> int:
    """Show or set how many operations may run at once on this store, by all its engines together.

    Each engine's own --concurrency still caps that engine; the store's slots cap the total. A new
    count applies at every engine's next claim (no restart). Unset (the default): no store-wide limit.

    \b
    Examples:
      outlast slots          # store slots: 4 (2 running)
      outlast slots 4        # at most 4 running on this store
      outlast slots off      # no store-wide limit
    """
    new = parse_count(value) if value is not None else None  # a bad value: one line before the store opens

    async def go() -> tuple[int | None, int]:
        async with session(app.settings, create=value is not None) as engine:
            if value is not None:
                await engine.store.set_slots(new)
            current = await engine.store.get_slots()
            return current, (await engine.store.counts()).get(Status.RUNNING, 0)

    try:
        current, running = run_async(go())
    except NoStore:  # a look where no store is: none set, nothing running (and none made)
        current, running = None, 0
    if app.json:
        fmt.echo(fmt.dumps({"slots": current, "running": running}))
    elif not app.quiet:
        fmt.echo(describe(current, running))
    return ExitCode.OK


COMMANDS = [slots]
