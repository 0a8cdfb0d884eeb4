"""Read commands: ls, show, watch, logs, checkpoints, types, config (``--json`` on each)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import click

from ..errors import NotFound
from ..exitcodes import ExitCode, code_for_status, code_for_stopped_watch
from ..lifecycle import SETTLED, Status
from . import collector_paused
from . import format as fmt
from .common import COUNT, App, NoStore, json_option, no_store, pass_app, run_async, session, valid_ids

if TYPE_CHECKING:
    from ..models import Checkpoint, LogRecord, Operation


def checkpoint_listing(cp: Any) -> dict[str, Any]:
    """A checkpoint as listings show it (the seed's names beside Outlast's): see engine.autobot."""
    from ..autobot import checkpoint_listing as listing

    return listing(cp)


async def checkpoints_in_full(store: Any, cps: list[Any]) -> list[dict[str, Any]]:
    from ..autobot import checkpoints_in_full as in_full

    return await in_full(store, cps)


STATUSES = click.Choice([s.value for s in Status], case_sensitive=False)


QUIET_NOTE = 3.0
"""Seconds without a new line before ``logs --follow`` says what it waits for."""


@click.command("ls")
@click.option("--status", "-s", "statuses", multiple=True, type=STATUSES, help="Only these statuses (repeatable).")
@click.option("--type", "-t", "types", multiple=True, metavar="TYPE", help="Only these types (repeatable).")
@click.option("--limit", "-n", type=COUNT, default=50, show_default=True)
@json_option
@pass_app
def ls_cmd(app: App, statuses: tuple[str, ...], types: tuple[str, ...], limit: int) -> int:
    """List operations, newest first."""
    if not all(t.isascii() for t in types):
        from ..errors import InvalidInput
        from ..text import clean, quoted

        # No operation has a type that is not text: the store was asked for it, and the query failed (exit 70)
        for t in types:
            if clean(t) is not t:
                raise InvalidInput(f"unknown operation type {quoted(t)}: it is not text (see: outlast types)")
    if app.json:
        records = _quick_records(app, list(statuses), list(types), limit)
        if records is not None:
            _check_types(app, types, {r["type"] for r in records})
            fmt.echo(fmt.dumps(records))
            return ExitCode.OK
    else:
        rows = _quick_rows(app, list(statuses), list(types), limit)
        if rows is not None:
            _check_types(app, types, {r.type for r in rows})
            if rows:
                _echo_ls(app, rows)
            elif not app.quiet:
                fmt.echo("no operations", err=True)
            return ExitCode.OK

    async def go() -> list[Operation]:
        async with session(app.settings, reading=True, create=False) as engine:
            return await engine.list([Status(s) for s in statuses] or None, list(types) or None, limit)

    try:
        ops = run_async(go())
    except NoStore:  # a fresh machine's first `ls`: nothing yet, which is no error (and none is made)
        ops = []
    _check_types(app, types, {o.type for o in ops})
    if app.json:
        fmt.echo(fmt.dumps([fmt.op_json(o) for o in ops]))
    elif ops:
        _echo_ls(app, [fmt.LsRow.of(o) for o in ops])
    elif not app.quiet:
        fmt.echo("no operations", err=True)
    return ExitCode.OK


def _echo_ls(app: App, rows: list[fmt.LsRow]) -> None:
    """The listing; with ``-q`` the ids alone, one a line, newest first (``outlast -q ls -s failed | xargs -n1
    outlast resume``), as ``docker ps -q`` does; it printed the whole table, which a script had to cut."""
    if app.quiet:
        fmt.echo("\n".join(r.id for r in rows))
    else:
        fmt.echo_ls(rows)


def _check_types(app: App, types: tuple[str, ...], listed: set[str]) -> None:
    """Refuse (usage error, one line) a ``--type`` no handler, profile or stored operation knows: a typo
    (``-t nosuch``) listed nothing and exited 0, as if there were just no such operations. Asked only of a
    type the listing did not show, so a plain ``ls -t TYPE`` of a listed type costs nothing more."""
    unseen = [t for t in dict.fromkeys(types) if t not in listed]
    if not unseen:
        return
    from ..errors import InvalidInput
    from ..registry import known_types
    from ..text import quoted

    settings = app.settings  # imports --plugin and configured plugins: their types are known
    known = set(known_types()) | set(settings.profiles)
    unknown = [t for t in unseen if t not in known]
    if not unknown:
        return

    async def stored(type_: str) -> bool:
        try:  # a type whose plugin is not loaded now, run before
            async with session(settings, create=False) as engine:
                return bool(await engine.list(None, [type_], 1))
        except NoStore:  # none stored where no store is (and none is made)
            return False

    for t in unknown:
        if not run_async(stored(t)):
            raise InvalidInput(
                f"unknown operation type {quoted(t)} (known: {', '.join(sorted(known))}; see: outlast types)"
            )


def _quick_rows(app: App, statuses: list[str], types: list[str], limit: int) -> list[fmt.LsRow] | None:
    """The table's rows read straight from the local store with default settings (a start-up of a
    bare interpreter's order, not an engine's); None: take the full path (see ``engine.store.quick``)."""
    state_dir = app.quick_state_dir()
    if state_dir is None:
        return None
    from .quickjson import dumps

    # Only records the full path reads as they are: it skips one that does not validate (with a warning) and
    # reads others with defaults and conversions, which a row made from the record as read did not.
    # Each one's newest checkpoint is read as the full path reads it (not shown): a damaged page there is
    # one the full path reports (exit 8), not one to list past.
    with collector_paused():  # what the read imports (Python 3.13's Path.as_uri imports urllib.parse) and makes
        records = dumps(state_dir, [s.lower() for s in statuses], types, limit, checkpoint_seq=True)
    if records is None:
        return None
    try:
        return [fmt.LsRow.of_record(r) for r in records]
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None  # a record that does not read (an infinite count, say): the full path skips it with a warning


def _quick_records(app: App, statuses: list[str], types: list[str], limit: int) -> list[dict[str, Any]] | None:
    """What ``ls --json`` prints, read straight from the local store with default settings, when every
    record is in the form the full path would print it; None: take the full path (see ``quickjson``)."""
    state_dir = app.quick_state_dir()
    if state_dir is None:
        return None
    from .quickjson import records

    with collector_paused():  # as _quick_rows
        return records(state_dir, [s.lower() for s in statuses], types, limit)


@click.command()
@click.argument("op_id", metavar="ID")
@json_option
@pass_app
def show(app: App, op_id: str) -> int:
    """Everything about one operation (ID: its handle, the # of `ls`, or a unique id prefix)."""

    async def go() -> tuple[Operation, list[Checkpoint]]:
        valid_ids(op_id)
        async with session(app.settings, reading=True, create=False) as engine:
            full = await engine.resolve(op_id)
            return await engine.get(full), await engine.checkpoints(full)

    op, cps = run_async(go())
    if app.json:
        fmt.echo(fmt.dumps({**fmt.op_json(op), "checkpoints": [checkpoint_listing(c) for c in cps]}))
    else:
        fmt.echo(fmt.show_text(op, cps, app.command()))
    return ExitCode.OK


@click.command()
@click.argument("op_ids", metavar="[ID]...", nargs=-1)
@json_option
@pass_app
def watch(app: App, op_ids: tuple[str, ...]) -> int:
    """Follow operations live, wherever they run (all active ones when no id is given).

    \b
    Exits when the operations settle, with the code of the first one that did not complete;
    Ctrl-C stops watching (exit 130; SIGTERM 143, SIGHUP 129) and leaves them running.
    """
    with collector_paused():  # the engine's modules: imports
        from .follow import (
            PlainView,
            WatchedGone,
            WatchStopped,
            follow,
            make_view,
            store_made,
            unless_signalled,
            watch_many,
        )
        from .run import report_final

    mode = app.mode
    fmt.end_when_reader_gone()  # `outlast watch ID | head -1` ends with head, as `tail -f | head` does

    async def go() -> int:
        valid_ids(*op_ids)
        said = not op_ids and no_store(app.settings) is not None  # all, where no store is: waited for, not made
        if said and (stopped := await store_made(app.settings, mode)) is not None:
            return stopped
        async with session(app.settings, reading=True, create=False) as engine:
            engine.install_signal_handlers()
            ids = [await engine.resolve(i) for i in op_ids]
            try:
                if len(ids) == 1:
                    view = PlainView(json_lines=True) if mode == "json" else make_view(mode, "Ctrl-C stops watching")
                    finals = [
                        await unless_signalled(engine, follow(engine, ids[0], view, local=False, prefix=app.command()))
                    ]
                    if mode in ("plain", "live"):  # how it ended and why, and how to resume it, as a run says
                        report_final(finals[0], mode, app.command())
                else:
                    many = watch_many(engine, list(dict.fromkeys(ids)) or None, mode, idle_said=said)
                    finals = await unless_signalled(engine, many)
            except WatchStopped:  # 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP
                return code_for_stopped_watch(engine.stop_signal)
            except WatchedGone as e:
                # Found when the watch began, removed since (`outlast clean` or `rm` between two looks, or the
                # store emptied) before its end was seen: said so, not as "no operation ID", the answer to a
                # mistyped id. One whose end was seen is reported as it ended, removed or not (watch_many).
                was = f"; it was last seen {e.last.value}" if e.last is not None else ""
                fmt.echo(
                    f"outlast: {e.op_id} is gone from the store (removed by outlast clean or rm, or the store"
                    f" emptied) before its end was seen{was}",
                    err=True,
                )
                return ExitCode.NOT_FOUND
            except NotFound:  # another read of a record removed under the watch
                gone = ids[0] if len(ids) == 1 else "an operation watched"
                fmt.echo(f"outlast: {gone} is gone from the store (deleted, or the store emptied)", err=True)
                return ExitCode.NOT_FOUND
        codes = [code_for_status(o.status) for o in finals]
        return next((c for c in codes if c != ExitCode.OK), ExitCode.OK)

    return run_async(go())


TAIL_HELD = 10_000
"""``logs -n N``: up to this many records are read from the end of the log and held; more are counted first, then
written as they are read (a page held at a time)."""


@click.command()
@click.argument("op_id", metavar="ID")
@click.option("--follow", "-f", "follow_", is_flag=True, help="Keep printing new records until the operation settles.")
@click.option("--limit", "-n", type=COUNT, help="Only the last N records.")
@json_option
@pass_app
def logs(app: App, op_id: str, follow_: bool, limit: int | None) -> int:
    """An operation's log. With --follow, exits with the operation's code when it settles."""

    def emit(records: list, lines: bool) -> None:
        for rec in records:
            fmt.echo(fmt.dumps(rec.model_dump(mode="json")) if lines else fmt.log_line(rec))

    async def go() -> int:
        import asyncio

        with collector_paused():  # the engine's modules: imports
            from .follow import OrphanLook, WatchStopped, rest_of_log, unless_signalled

        valid_ids(op_id)
        async with session(app.settings, reading=not follow_, create=False) as engine:
            full = await engine.resolve(op_id)
            skip, last = 0, limit
            if last is not None and last > TAIL_HELD and not follow_:
                # More records than are wise to hold at once (-n 1000000 of a 64 MB log held 765 MB): counted a
                # page at a time, then the last ``last`` written as they are read again.
                total, offset = 0, 0
                while True:
                    page, after = await engine.logs(full, offset)
                    if after == offset:
                        break
                    total, offset = total + len(page), after
                skip, last = max(0, total - last), None
            records, offset = await engine.logs(full, 0, last)
            if last is None and not follow_:
                # The whole log, a page at a time (a command's log can be larger than is wise to hold), and
                # in JSON one array written as it goes, a record per line.
                opened = False
                if not records and not app.json and not app.quiet:
                    # As ls and checkpoints say when there is nothing: a log that printed nothing looked like
                    # a command that failed to read it.
                    fmt.echo("no log lines", err=True)
                while True:
                    if skip:
                        records, skip = records[skip:], max(0, skip - len(records))
                    for rec in records:
                        if app.json:
                            fmt.echo(("," if opened else "[") + fmt.dumps(rec.model_dump(mode="json")))
                            opened = True
                        else:
                            fmt.echo(fmt.log_line(rec))
                    records, after = await engine.logs(full, offset)
                    if after == offset:
                        break
                    offset = after
                if app.json:
                    fmt.echo("]" if opened else "[]")
                return ExitCode.OK
            if not follow_:
                if app.json:
                    fmt.echo(fmt.dumps([r.model_dump(mode="json") for r in records]))
                elif records:
                    emit(records, False)
                elif not app.quiet:
                    fmt.echo("no log lines", err=True)
                return ExitCode.OK
            engine.install_signal_handlers()
            fmt.end_when_reader_gone()  # `outlast logs -f ID | head -1` ends with head, as `tail -f | head` does

            async def follow_log(records: list[LogRecord], offset: int) -> int:
                emit(records, app.json)
                quiet_since = time.monotonic()
                said = False
                orphans = OrphanLook(engine, reading=True)
                while True:
                    await orphans()
                    op = await engine.get(full)
                    records, offset = await engine.store.read_logs(full, offset)
                    emit(records, app.json)
                    if records:
                        quiet_since, said = time.monotonic(), False
                    if op.status in SETTLED:
                        await rest_of_log(engine, full, offset, lambda records: emit(records, app.json))
                        return code_for_status(op.status)
                    if engine.draining:
                        return code_for_stopped_watch(engine.stop_signal)
                    if not said and time.monotonic() - quiet_since >= QUIET_NOTE and not app.quiet:
                        # A quiet follow looked hung: say once what it waits for (stderr: stdout stays the log).
                        waits = f"{op.status.value}; exits when it settles, Ctrl-C stops"
                        fmt.echo(f"waiting for new log lines of {full} ({waits})", err=True)
                        said = True
                    fmt.check_reader()
                    await asyncio.sleep(0.5)

            try:
                return await unless_signalled(engine, follow_log(records, offset))
            except WatchStopped:
                return code_for_stopped_watch(engine.stop_signal)

    return run_async(go())


@click.command()
@click.argument("op_id", metavar="ID")
@click.option("--full", is_flag=True, help="JSON with each one's state (intermediate_results) and context_data.")
@json_option
@pass_app
def checkpoints(app: App, op_id: str, full: bool) -> int:
    """An operation's checkpoints, newest first (resume from one with `resume --checkpoint SEQ`)."""

    async def go() -> tuple[list[Checkpoint], list[dict[str, Any]] | None]:
        valid_ids(op_id)
        async with session(app.settings, reading=True, create=False) as engine:
            full_id = await engine.resolve(op_id)
            cps = await engine.checkpoints(full_id)
            return cps, (await checkpoints_in_full(engine.store, cps) if full else None)

    cps, in_full = run_async(go())
    if app.json or full:
        fmt.echo(fmt.dumps(in_full if in_full is not None else [checkpoint_listing(c) for c in cps]))
    elif cps:
        fmt.echo(fmt.checkpoints_table(cps))
    elif not app.quiet:
        fmt.echo("no checkpoints", err=True)
    return ExitCode.OK


@click.command()
@json_option
@pass_app
def types(app: App) -> int:
    """Every operation type: whether it has a handler (built-in or plugin) and its timeout profile.

    \b
    HANDLER: built-in (ships with Outlast), plugin (--plugin or the outlast.operations entry points),
    or "-" (a seed type with a profile only: it runs once a plugin registers a handler for it).
    """
    from ..profiles import SEED_PROFILES
    from ..registry import ensure_loaded, handlers

    settings = app.settings
    ensure_loaded(settings.plugins)
    hs = handlers()
    names = sorted(set(hs) | set(SEED_PROFILES))
    out: list[dict[str, Any]] = []
    for name in names:
        h = hs.get(name)
        out.append(
            {
                "type": name,
                "runnable": h is not None,
                "builtin": h is not None and h.source == "builtin",
                "source": h.source if h else "profile only",
                "description": h.description if h else "",
                "profile": settings.profile(name).model_dump(mode="json"),
            }
        )
    if app.json:
        fmt.echo(fmt.dumps(out))
        return ExitCode.OK
    rows = []
    for t in out:
        p = t["profile"]
        rows.append(
            [
                t["type"],
                "built-in" if t["builtin"] else ("plugin" if t["runnable"] else "-"),
                fmt.duration(p["base_timeout"]),
                f"{p['per_item_timeout']:g}s",
                fmt.duration(p["max_timeout"]),
                fmt.duration(p["checkpoint_interval"]),
                fmt.duration(p["progress_report_interval"]),
                str(p["failure_threshold"]),
                fmt.duration(p["stall_timeout"]),
                fmt.clipped(t["description"], 80),
            ]
        )
    headers = ["TYPE", "HANDLER", "BASE", "PER ITEM", "MAX", "CHECKPOINT", "REPORT", "FAILURES", "STALL", "DESCRIPTION"]
    fmt.echo(fmt.table(headers, rows))
    return ExitCode.OK


@click.command()
@json_option
@pass_app
def config(app: App) -> int:
    """The effective configuration and where each value came from."""
    s = app.settings
    data = s.shown()
    if app.json:
        fmt.echo(fmt.dumps({"settings": data, "origins": s.origins}))
        return ExitCode.OK
    rows = []
    for key, value in data.items():
        shown = json.dumps(value) if not isinstance(value, str) else value
        rows.append([key, shown, s.origins.get(key, "default")])
    fmt.echo(fmt.table(["SETTING", "VALUE", "FROM"], rows))
    return ExitCode.OK


COMMANDS = [ls_cmd, show, watch, logs, checkpoints, types, config]
