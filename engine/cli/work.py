"""The commands that run work: run, rerun, submit, worker, the detached runner, serve, and the dashboard.

Loaded only when one of them is invoked (or ``--help`` lists them): see ``root.LAZY``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import InvalidInput
from ..exitcodes import ExitCode
from ..store.quick import missing
from . import collector_paused
from . import format as fmt
from .common import App, Mode, NoStore, build_spec, no_store, pass_app, run_async, spec_options, text_params

if TYPE_CHECKING:
    from ..config import Settings
    from ..models import Operation, OperationSpec


def open_dashboard(app: App, watch_only: bool = False) -> int:
    """The Textual dashboard, imported only now (the headless commands never load textual)."""
    quick = quick_look(app)
    settings = app.settings if quick is None else None  # first, as before: what is wrong with them is said first
    if watch_only and (quick is None or missing(quick[0]) is not None):
        # It only shows: a mistyped --state-dir made a store there (and showed it empty), as reads no longer do.
        gone = no_store(app.settings)
        if gone is not None:
            raise NoStore(f"{gone}; a dashboard --watch-only makes none (without --watch-only it makes one)")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        fmt.echo("outlast: the dashboard needs a terminal (for scripts: outlast ls, watch, run)", err=True)
        return ExitCode.USAGE
    try:
        with collector_paused():  # Textual, Rich and the dashboard: imports, next to no garbage (the
            import tui.app as tui_app  # collections while they load were 5-7% of the start to the first frame)
    except ImportError as e:
        fmt.echo(f"outlast: the dashboard is not available: {e}", err=True)
        return ExitCode.USAGE
    if not getattr(sys.stderr, "isatty", lambda: False)():
        # Textual draws on standard error: `outlast 2>log` kept the terminal blank while the dashboard ran,
        # and ran queued work, unseen, its keys (and the quit's question) answered blind, its frames in the file.
        fmt.echo(
            "outlast: the dashboard draws on standard error, which is not the terminal here (2> a file?):"
            " leave it on the terminal (warnings are shown in the dashboard)",
            err=True,
        )
        return ExitCode.USAGE
    # Its hints (what it paused as it quit: go on with `outlast resume ID`) carry this command line's global
    # options, as every hint of the command line does: pasted, they name the store the dashboard showed.
    hint = app.command
    if quick is not None:  # the settings (pydantic, the config and models) load after the first frame
        state_dir, theme = quick
        look = _looker(state_dir)
        later = _settings_later(app)
        return int(tui_app.main(later, watch_only=watch_only, first_look=look, theme=theme, command=hint) or 0)
    assert settings is not None
    target = settings.store or settings.state_dir
    # The local store: its records listed on the first frame, the engine behind it.
    first_look = _looker(Path(target)) if "://" not in str(target) else None
    return int(tui_app.main(settings, watch_only=watch_only, first_look=first_look, command=hint) or 0)


def quick_look(app: App) -> tuple[Path, str | None] | None:
    """The state dir and theme the first frame needs, when they are all the settings could change of it
    (``App.quick_state_dir``: defaults but a config file the full check accepted before, which names no
    store or plugins); None: the settings are loaded first, and say what is wrong before any screen."""
    state_dir = app.quick_state_dir()
    if state_dir is None:
        return None
    config = app.config_file()
    if config is None:
        return state_dir, None
    import tomllib

    from ..files import read_regular

    try:
        theme = tomllib.loads((read_regular(config) or b"").decode("utf-8")).get("theme")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return (state_dir, theme) if theme is None or isinstance(theme, str) else None


def _settings_later(app: App) -> Callable[[], Settings]:
    """The settings, loaded when the dashboard first needs them (after its first frame). The dashboard owns
    the terminal by then: its handler takes the engine's warnings, not the stderr one loading adds."""

    def load() -> Settings:
        import logging

        logger = logging.getLogger("outlast")
        held = logger.handlers[:]
        try:
            return app.settings
        finally:
            logger.handlers = held

    return load


def _looker(state_dir: Path) -> Callable[[list[str], int], list[dict[str, Any]] | None]:
    """The first look at a local store: its records read as ``outlast ls`` reads them, without the engine."""
    from ..store.quick import quick_list

    def first_look(statuses: list[str], limit: int) -> list[dict[str, Any]] | None:
        return quick_list(state_dir, statuses, None, limit)

    return first_look


@click.command()
@click.option("--watch-only", is_flag=True, help="Show the store; start no queued work here (w toggles).")
@pass_app
def tui(app: App, watch_only: bool) -> int:
    """Open the dashboard (the same as `outlast` on a terminal)."""
    return open_dashboard(app, watch_only)


@click.command()
@spec_options
@click.option("--detach", "-d", is_flag=True, help="Run in a background process; print the id and return.")
@pass_app
def run(app: App, detach: bool, **spec_args: object) -> int:
    """Submit an operation and follow it until it settles.

    \b
    On a terminal: a live progress display. In a pipe (or TERM=dumb): one line per progress report.
    Ctrl-C, SIGTERM and SIGHUP (ignored under nohup) pause it with a checkpoint; `outlast resume ID` goes on.
    The exit code says how it ended (see `outlast --help`).

    \b
    Examples:
      outlast run demo -p items=500 -p seconds=0.02
      outlast run codebase_indexing -p root=. --profile checkpoint_interval=30
      outlast run demo --params-json '{"items": 1000, "seconds": 0.01}' --priority high --detach
      ID=$(outlast -q run demo --detach) && outlast watch $ID
    """
    with collector_paused():  # the engine's modules: imports
        from .run import detach_dir, run_foreground, submit_or_resume

    text = text_params(app.settings, str(spec_args["type_"]))
    spec = build_spec(**spec_args, text=text)  # type: ignore[arg-type]
    refuse_before_made(app.settings, spec)
    if detach:
        detach_dir(app.settings)  # before anything is stored
        op = run_async(submit_or_resume(app.settings, spec, None, None, prefix=app.command()))
        return _detach(app, op)
    return run_async(run_foreground(app.settings, app.mode, spec=spec, prefix=app.command()))


@click.command()
@click.argument("op_id", metavar="ID")
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change a param: a JSON value, or as typed for a text param.",
)
@click.option("--profile", multiple=True, metavar="KEY=VALUE", help="Change the timeout profile.")
@click.option("--detach", "-d", is_flag=True, help="Run in a background process; print the id and return.")
@click.option("--queue", is_flag=True, help="Only queue it, for a worker.")
@pass_app
def rerun(app: App, op_id: str, params: tuple[str, ...], profile: tuple[str, ...], detach: bool, queue: bool) -> int:
    """Run an operation again as a new one: same type, params, priority, profile, name and tags.

    Any but queued or running work (that would run it twice at once): `resume` goes on with a stopped
    one from its checkpoint, this starts afresh.

    \b
    Examples:
      outlast rerun 06b2                     # the same again, in the foreground
      outlast rerun 06b2 -p root=../other    # with one param changed
    """
    if detach and queue:
        raise click.UsageError("--detach and --queue exclude each other")
    with collector_paused():  # the engine's modules: imports
        from .run import detach_dir, run_foreground, submit_or_resume

    spec = run_async(_rerun_spec(app, op_id, params, profile))
    if detach:
        detach_dir(app.settings)  # before anything is stored
    if detach or queue:
        op = run_async(submit_or_resume(app.settings, spec, None, None, prefix=app.command()))
        if queue:
            fmt.echo(fmt.dumps(fmt.op_json(op)) if app.json else op.id)
            return ExitCode.OK
        return _detach(app, op)
    return run_async(run_foreground(app.settings, app.mode, spec=spec, prefix=app.command()))


async def _rerun_spec(app: App, op_id: str, params: tuple[str, ...], profile: tuple[str, ...]) -> OperationSpec:
    """The spec of ``op_id`` again, with the params and profile keys given changed."""
    from pydantic import ValidationError

    from ..humanize import printable
    from ..lifecycle import Action, check_action
    from ..models import OperationSpec
    from ..profiles import one_line, overridden
    from .common import parse_pairs, session, valid_ids

    valid_ids(op_id)
    async with session(app.settings, create=False) as engine:
        old = await engine.get(await engine.resolve(op_id))
    check_action(Action.RERUN, old.status, old.id)
    # As a resume's: a timeout key given here replaces a timeout fixed at submit (--timeout).
    in_force, fixed = overridden(old.profile_overrides, parse_pairs(profile, "--profile"), old.timeout)
    try:
        return OperationSpec(
            type=old.type,
            params={**old.params, **parse_pairs(params, "--param", text_params(app.settings, old.type))},
            priority=old.priority,
            profile=in_force,
            timeout=fixed,
            # Stored by an older version or another client, a name may hold what a spec refuses (an escape
            # sequence): it comes along escaped, or the operation could not be run again at all.
            name=None if old.name is None else printable(old.name),
            tags={printable(k): printable(v) for k, v in old.tags.items()},
        )
    except ValidationError as e:
        raise InvalidInput(f"operation spec: {one_line(e)}") from None


def _detach(app: App, queued: Operation) -> int:
    with collector_paused():  # the engine's modules: imports
        from .run import say_detached, spawn_detached

    runner = spawn_detached(app.settings, app.prepare_child(), queued.id, app.command())
    return say_detached(app.settings, queued, runner, app.json, app.quiet, app.command(), "running")


@click.command()
@spec_options
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="Queue nothing if an operation was submitted with KEY: print that one (a retried submit runs once);"
    " KEY used for other work is exit 7.",
)
@pass_app
def submit(app: App, **spec_args: object) -> int:
    """Queue an operation for a worker; print its id (with --idempotency-key, the first one's)."""
    with collector_paused():
        settings = app.settings  # its plugins first, then the entry points', as before (the last one wins)
        from ..registry import load_entry_points

        load_entry_points(remembered=True)
        text = text_params(settings, str(spec_args["type_"]))
        spec = build_spec(**spec_args, text=text)  # type: ignore[arg-type]
        refuse_before_made(app.settings, spec)
        op = quick_submit(app.settings, spec)
    if op is None:
        with collector_paused():  # the engine's modules: imports
            from .run import submit_or_resume

        op = run_async(submit_or_resume(app.settings, spec, None, None, prefix=app.command()))
    fmt.echo(fmt.dumps(fmt.op_json(op)) if app.json else op.id)
    if fmt.output_lost() is not None:
        # Queued, and its id, all a script keeps of it, lost with standard output (a full disk): a script that
        # submitted again on exit 74 queued the work twice. Said where it can still be read.
        fmt.echo(f"outlast: queued as {op.id}; its id could not be written to standard output", err=True)
    return ExitCode.OK


def refuse_before_made(settings: Settings, spec: OperationSpec) -> None:
    """InvalidInput (one line) for a spec its submit would refuse, before a local store that is not there yet
    is made for it: the store is opened before the params are checked (its errors are said first), so a
    typo in a param on a new --state-dir left a state dir, a database and its files behind, with nothing in
    them. The same check as the submit's (``submission.new_operation``), made only when no store is there."""
    target = str(settings.store or settings.state_dir)
    if "://" in target:
        return
    state_dir = Path(target).expanduser()
    if missing(state_dir) is None:
        return
    from ..submission import new_operation

    new_operation(spec, settings, {"state_dir": str(state_dir)})


def quick_submit(settings: Settings, spec: OperationSpec) -> Operation | None:
    """``spec`` queued in the local store without an engine, an event loop or the store's thread (their
    modules and their start and stop were a fifth of a submit's time): the same record, written by the same
    functions (``store.quick.quick_create``: the store's open and insert, ``submission.new_operation``).
    None, with nothing written: the engine's path does it (a Redis store; an orphan to mark first, an
    idempotency key used before)."""
    target = str(settings.store or settings.state_dir)
    if "://" in target:
        return None  # Redis (or a URL open_store refuses, in its words)
    from ..store.quick import quick_create
    from ..submission import new_operation, params_context

    return quick_create(Path(target), lambda store: new_operation(spec, settings, params_context(store)))


@click.command()
@click.option("--concurrency", "-c", type=click.IntRange(1, 1000), help="Operations at once [config: max_concurrent].")
@click.option(
    "--exit-when-idle", is_flag=True, help="Exit once idle: nothing running here, nothing queued it can run (below)."
)
@pass_app
def worker(app: App, concurrency: int | None, exit_when_idle: bool) -> int:
    """Run queued operations: for tmux, systemd, or many machines sharing one store.

    SIGINT/SIGTERM/SIGHUP pause running work with a checkpoint, then exit 0; with auto_resume on,
    that work is queued again from the checkpoint instead, for the next worker.

    With --exit-when-idle it exits once it runs nothing and the queue holds nothing it can run, seen
    twice a second apart. A retry waiting out its backoff is waited for; queued work of a type that no
    plugin loaded here runs is left queued (said once per type), and work other workers run is not
    waited for. It exits 0 however the operations ended (outlast ls shows how); 8 when the store
    fails, or holds queued work but takes no claim (a full disk).

    \b
    Examples:
      outlast worker --concurrency 4
      outlast --store redis://queue-host:6379/0 worker      # one of many machines
      outlast worker --exit-when-idle                      # drain the queue, e.g. from cron
    """
    with collector_paused():  # the engine's modules: imports
        from .run import run_worker

    mode: Mode = "json" if app.json else ("quiet" if app.quiet else "plain")
    return run_async(run_worker(app.settings, concurrency, exit_when_idle, mode))


@click.command("_run-one", hidden=True)
@click.argument("op_id")
@pass_app
def run_one_cmd(app: App, op_id: str) -> int:
    """Run one queued operation (the detached process)."""
    with collector_paused():  # the engine's modules: imports
        from .run import run_one

    return run_async(run_one(app.settings, op_id, app.command()))


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--token-file", type=click.Path(dir_okay=False), help="File holding the API token.")
@click.option("--allow-commands", is_flag=True, help="Allow code-running types (command, test suites).")
@click.option(
    "--allow-output-root",
    "output_roots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="A directory API clients may write outputs under, besides the state dir's outputs (repeatable).",
)
@click.option(
    "--max-body-size",
    "max_body",
    type=click.IntRange(1024, 1 << 30),
    default=1 << 20,
    show_default=True,
    help="Bytes: larger request bodies are refused (413) unread.",
)
@pass_app
def serve(
    app: App,
    host: str,
    port: int,
    token_file: str | None,
    allow_commands: bool,
    output_roots: tuple[str, ...],
    max_body: int,
) -> int:
    """Serve the HTTP API."""
    settings = app.settings
    try:
        from ..api.server import serve as serve_api
    except ImportError as e:
        fmt.echo(
            f"outlast: the API is not available ({e}): install the api extra: pip install 'outlast[api]'", err=True
        )
        return ExitCode.USAGE
    return int(serve_api(settings, host, port, token_file, allow_commands, output_roots, max_body) or 0)


COMMANDS = [tui, run, rerun, submit, worker, run_one_cmd, serve]
