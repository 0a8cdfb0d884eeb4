"""``outlast``: the headless command line, scriptable over SSH; the composition root.

Commands that run work are here; read commands live in ``read``, control requests in
``control``. Errors are turned into one line and an exit code in one place (``main``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import click

from .. import __version__
from ..exitcodes import ExitCode, code_for_error, exit_codes_help
from ..models import InvalidInput, OperationSpec
from . import format as fmt
from .common import App, build_spec, json_option, pass_app, spec_options
from .run import run_foreground, run_one, run_worker, spawn_detached, submit_or_resume

HELP = f"""Run long operations that finish or fail: dynamic timeouts, checkpoints, resume.

Without a command, opens the dashboard on a terminal (prints this help otherwise).

\b
Examples:
  outlast run demo -p items=500 -p seconds=0.02     follow it live; Ctrl-C pauses
  outlast run codebase_indexing -p root=. --detach  in the background; prints the id
  outlast ls --status running --status paused
  outlast watch 0kf3                                any unique id prefix works
  outlast resume 0kf3                               on from the newest checkpoint
  outlast worker --concurrency 4                    run what is queued
  outlast cancel 0kf3

\b
Exit codes:
{exit_codes_help()}
"""


@click.group(help=HELP, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", type=click.Path(file_okay=False), envvar=None, help="State directory (local store).")
@click.option("--store", "store_url", metavar="URL", help="Store: a directory or redis://host:port/db.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Config file (TOML).")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Import a module of operations.")
@click.option("--json", "json_", is_flag=True, help="Machine output: JSON (lines for watch/logs --follow).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (and ids); rely on exit codes.")
@click.version_option(__version__, "--version", "-V", prog_name="outlast")
@click.pass_context
def cli(
    ctx: click.Context,
    state_dir: str | None,
    store_url: str | None,
    config_file: str | None,
    plugins: tuple[str, ...],
    json_: bool,
    quiet: bool,
) -> int | None:
    ctx.obj = App(state_dir, store_url, config_file, plugins, json_, quiet)
    if ctx.invoked_subcommand is None:
        if sys.stdout.isatty():
            return open_dashboard(ctx.obj)
        click.echo(ctx.get_help())
    return None


def open_dashboard(app: App) -> int:
    """The Textual dashboard, imported only now (the headless commands never load textual)."""
    settings = app.settings
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        fmt.echo("outlast: the dashboard needs a terminal (for scripts: outlast ls, watch, run)", err=True)
        return ExitCode.USAGE
    try:
        import tui.app as tui_app
    except ImportError as e:
        fmt.echo(f"outlast: the dashboard is not available: {e}", err=True)
        return ExitCode.USAGE
    return int(tui_app.main(settings) or 0)


@cli.command()
@pass_app
def tui(app: App) -> int:
    """Open the dashboard (the same as `outlast` on a terminal)."""
    return open_dashboard(app)


@cli.command()
@spec_options
@click.option("--detach", "-d", is_flag=True, help="Run in a background process; print the id and return.")
@pass_app
def run(app: App, detach: bool, **spec_args: object) -> int:
    """Submit an operation and follow it until it settles.

    \b
    On a terminal: a live progress display. In a pipe: one line per progress report.
    Ctrl-C, SIGTERM and SIGHUP pause it with a checkpoint; `outlast resume ID` goes on.
    The exit code says how it ended (see `outlast --help`).

    \b
    Examples:
      outlast run demo -p items=500 -p seconds=0.02
      outlast run codebase_indexing -p root=. --profile checkpoint_interval=30
      outlast run demo --params-json '{"items": 1000, "seconds": 0.01}' --priority high --detach
      ID=$(outlast -q run demo --detach) && outlast watch $ID
    """
    spec = build_spec(**spec_args)  # type: ignore[arg-type]
    if detach:
        op = asyncio.run(submit_or_resume(app.settings, spec, None, None))
        return _detach(app, op.id)
    return asyncio.run(run_foreground(app.settings, app.mode, spec=spec, prefix=app.command()))


@cli.command()
@click.argument("op_id", metavar="ID")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE", help="Change a param (JSON value).")
@click.option("--profile", multiple=True, metavar="KEY=VALUE", help="Change the timeout profile.")
@click.option("--detach", "-d", is_flag=True, help="Run in a background process; print the id and return.")
@click.option("--queue", is_flag=True, help="Only queue it, for a worker.")
@pass_app
def rerun(app: App, op_id: str, params: tuple[str, ...], profile: tuple[str, ...], detach: bool, queue: bool) -> int:
    """Run an operation again as a new one: same type, params, priority, profile, name and tags.

    \b
    A settled operation (resume goes on with a stopped one; this starts afresh).
    Examples:
      outlast rerun 06b2                     # the same again, in the foreground
      outlast rerun 06b2 -p root=../other    # with one param changed
    """
    if detach and queue:
        raise click.UsageError("--detach and --queue exclude each other")
    spec = asyncio.run(_rerun_spec(app, op_id, params, profile))
    if detach or queue:
        op = asyncio.run(submit_or_resume(app.settings, spec, None, None))
        if queue:
            fmt.echo(fmt.dumps(fmt.op_json(op)) if app.json else op.id)
            return ExitCode.OK
        return _detach(app, op.id)
    return asyncio.run(run_foreground(app.settings, app.mode, spec=spec, prefix=app.command()))


async def _rerun_spec(app: App, op_id: str, params: tuple[str, ...], profile: tuple[str, ...]) -> OperationSpec:
    """The spec of ``op_id`` again, with the params and profile keys given changed."""
    from pydantic import ValidationError

    from ..lifecycle import Action, check_action
    from ..profiles import one_line
    from .common import parse_pairs, session

    async with session(app.settings) as engine:
        old = await engine.get(await engine.resolve(op_id))
    check_action(Action.RERUN, old.status, old.id)
    try:
        return OperationSpec(
            type=old.type,
            params={**old.params, **parse_pairs(params, "--param")},
            priority=old.priority,
            profile={**old.profile_overrides, **parse_pairs(profile, "--profile")},
            timeout=old.timeout,
            name=old.name,
            tags=old.tags,
        )
    except ValidationError as e:
        raise InvalidInput(f"operation spec: {one_line(e)}") from None


def _detach(app: App, op_id: str) -> int:
    pid = spawn_detached(app.settings, app.prepare_child(), op_id)
    if app.json:
        fmt.echo(fmt.dumps({"id": op_id, "pid": pid}))
    else:
        fmt.echo(op_id)
        if not app.quiet:
            fmt.echo(f"running in the background (pid {pid}); follow with: outlast watch {op_id}", err=True)
    return ExitCode.OK


@cli.command()
@spec_options
@pass_app
def submit(app: App, **spec_args: object) -> int:
    """Queue an operation for a worker; print its id."""
    spec = build_spec(**spec_args)  # type: ignore[arg-type]
    op = asyncio.run(submit_or_resume(app.settings, spec, None, None))
    fmt.echo(fmt.dumps(fmt.op_json(op)) if app.json else op.id)
    return ExitCode.OK


@cli.command()
@click.option("--concurrency", "-c", type=click.IntRange(1, 1000), help="Operations at once [config: max_concurrent].")
@click.option("--exit-when-idle", is_flag=True, help="Stop when nothing is queued or running.")
@pass_app
def worker(app: App, concurrency: int | None, exit_when_idle: bool) -> int:
    """Run queued operations: for tmux, systemd, or many machines sharing one store.

    SIGINT/SIGTERM/SIGHUP pause running work with a checkpoint, then exit 0.

    \b
    Examples:
      outlast worker --concurrency 4
      outlast --store redis://queue-host:6379/0 worker      # one of many machines
      outlast worker --exit-when-idle                      # drain the queue, e.g. from cron
    """
    mode = "json" if app.json else ("quiet" if app.quiet else "plain")
    return asyncio.run(run_worker(app.settings, concurrency, exit_when_idle, mode))


@cli.command("_run-one", hidden=True)
@click.argument("op_id")
@pass_app
def run_one_cmd(app: App, op_id: str) -> int:
    """Run one queued operation (the detached process)."""
    return asyncio.run(run_one(app.settings, op_id))


@cli.command()
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


def _register() -> None:
    from . import control, read

    for command in (*read.COMMANDS, *control.COMMANDS):
        cli.add_command(command)
    # ``--json`` after the command too (``outlast run demo --json``), on every command that takes it
    # before (``outlast --json run demo``): people type it where the command's other options are.
    for command in cli.commands.values():
        if not any(p.name == "json_" for p in command.params):
            json_option(command)


_register()


class _StderrLines(logging.Handler):
    """Engine warnings (an orphan found, a checkpoint skipped) as one escaped line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fmt.echo(fmt.printable(self.format(record)), err=True)
        except Exception:  # a log line must never be what breaks a command
            self.handleError(record)


def _configure_logging() -> None:
    root = logging.getLogger("outlast")
    if not any(isinstance(h, _StderrLines) for h in root.handlers):  # main() may run more than once
        handler = _StderrLines()
        handler.setFormatter(logging.Formatter("outlast: %(levelname)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if os.environ.get("OUTLAST_DEBUG") else logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """The console script: run a command, map every outcome to an exit code, never a traceback for
    a user's mistake."""
    _configure_logging()
    try:
        rv = cli.main(args=argv, prog_name="outlast", standalone_mode=False)
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "outlast"
        fmt.echo(f"{cmd}: error: {e.format_message()} (see: {cmd} --help)", err=True)
        code = ExitCode.USAGE
    except click.ClickException as e:
        fmt.echo(f"outlast: error: {e.format_message()}", err=True)
        code = ExitCode.USAGE
    except (click.Abort, KeyboardInterrupt):
        fmt.echo("outlast: stopped", err=True)
        code = ExitCode.WATCH_STOPPED
    except Exception as e:
        known = code_for_error(e)
        if known is None:
            if os.environ.get("OUTLAST_DEBUG"):
                raise
            fmt.echo(
                f"outlast: internal error: {type(e).__name__}: {e} (OUTLAST_DEBUG=1 shows the traceback)", err=True
            )
            code = ExitCode.INTERNAL
        else:
            fmt.echo(f"outlast: {e}", err=True)
            code = known
    else:
        code = int(rv) if isinstance(rv, int) else ExitCode.OK
    sys.exit(int(code))
