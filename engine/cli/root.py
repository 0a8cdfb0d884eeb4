"""``outlast``: the headless command line, scriptable over SSH; the composition root.

The group and its global options are here, and ``main``, where errors become one line and an exit
code. The commands live in ``work`` (run, worker, ...), ``read`` (ls, show, ...) and ``control``
(cancel, pause, ...), each module imported only when one of its commands is used.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

import click

from .. import __version__
from ..exitcodes import ExitCode, code_for_error, exit_codes_help
from ..shortage import open_files_limit, out_of_files
from . import collector_paused
from . import format as fmt
from .common import App, json_option

LAZY = {
    **dict.fromkeys(("ls", "show", "watch", "logs", "checkpoints", "types", "config"), "read"),
    **dict.fromkeys(("cancel", "pause", "resume", "priority", "rm", "clean"), "control"),
    **dict.fromkeys(("tui", "run", "rerun", "submit", "worker", "_run-one", "serve"), "work"),
    "kb": "kb",
    "slots": "slots",
}
"""Each command and the module (of this package) that defines it, in its ``COMMANDS``."""


class _Commands(click.Group):
    """A group whose commands are built when used: ``outlast ls`` imports and builds ``read`` alone,
    not the engine or the other commands (``--help`` lists them all, so it builds them all)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY:
            with collector_paused():  # the command's module: imports
                module = import_module(f"{__package__}.{LAZY[cmd_name]}")
            for command in module.COMMANDS:
                # ``--json`` after the command too (``outlast run demo --json``), on every command that
                # takes it before (``outlast --json run demo``): people type it where the other options are.
                if not any(p.name == "json_" for p in command.params):
                    json_option(command)
                self.add_command(command)
        return self.commands.get(cmd_name)


HELP = f"""Run long operations that finish or fail: dynamic timeouts, checkpoints, resume.

Without a command, opens the dashboard on a terminal (without one: exit 2).

\b
Examples:
  outlast run demo -p items=500 -p seconds=0.02     follow it live; Ctrl-C pauses
  outlast run codebase_indexing -p root=. --detach  in the background; prints the id
  outlast ls --status running --status paused
  outlast watch 12                                  by handle (the # of ls) or any unique id prefix
  outlast resume 12                                 on from the newest checkpoint
  outlast worker --concurrency 4                    run what is queued
  outlast cancel 06b2

An ID is an operation's handle, the number `outlast ls` shows under # (never reused), or any unique
prefix of its id, as in git.

\b
Exit codes:
{exit_codes_help()}
"""


@click.group(
    cls=_Commands, help=HELP, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]}
)
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
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            # A cron line whose $CMD was empty printed the help and exited 0: the mistake went unseen.
            fmt.echo("outlast: no command given, and the dashboard needs a terminal (see: outlast --help)", err=True)
            return ExitCode.USAGE
        from .work import open_dashboard

        return open_dashboard(ctx.obj)
    return None


GLOBAL_OPTIONS = frozenset({"--state-dir", "--store", "--config", "--plugin", "--quiet", "-q"})
"""The options given before the command only (``--json`` is taken after it too)."""


def main(argv: list[str] | None = None) -> None:
    """The console script: run a command, map every outcome to an exit code, never a traceback for
    a user's mistake."""
    try:
        rv = cli.main(args=argv, prog_name="outlast", standalone_mode=False)
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "outlast"
        # click lays a missing choice's list out on lines of its own ("Choose from:\n\thigh,\n\tnormal"),
        # which the one-line error showed as '\n\t' between the choices
        msg = e.format_message().replace(":\n\t", ": ").replace(",\n\t", ", ")
        name = getattr(e, "option_name", None)
        if isinstance(e, click.NoSuchOption) and name in GLOBAL_OPTIONS and " " in cmd:
            # `outlast ls --state-dir X` said "No such option: --state-dir Did you mean --status?"
            sub = cmd.split(" ", 1)[1]
            msg = f"{name} is one of outlast's global options: give it before the command (outlast {name} ... {sub})"
        _error(f"{cmd}: error: {msg} (see: {cmd} --help)")
        code = ExitCode.USAGE
    except click.ClickException as e:
        _error(f"outlast: error: {e.format_message()}")
        code = ExitCode.USAGE
    except (click.Abort, KeyboardInterrupt):
        command = _command(sys.argv[1:] if argv is None else argv)
        if command in CHANGES:  # stopped while it waited on the store (a hung disk): it may have been done
            said = f"whether the {command} was done is not known (outlast show ID, or ls, tells)"
            fmt.echo(f"outlast: stopped before the store answered: {said}", err=True)
        else:
            fmt.echo("outlast: stopped", err=True)
        code = ExitCode.WATCH_STOPPED
    except fmt.ReaderGone:  # nothing said: what would read it is gone, and stderr may be the same pipe
        code = ExitCode.READER_GONE
    except Exception as e:
        known = code_for_error(e)
        short = out_of_files(e) if known is None else None
        if known is None and isinstance(e, OSError) and _click_printing(e):
            fmt.output_failed(e)  # its help or version to a full disk: 74 below, not an internal error
            code = ExitCode.OK
        elif short is not None:  # not a bug: too few to open the store or import an operation (ulimit -n 9)
            _error(f"outlast: {short}: this process may open {open_files_limit()} files (ulimit -n); raise it")
            code = ExitCode.STORE
        elif known is None:
            if os.environ.get("OUTLAST_DEBUG"):
                raise
            _error(f"outlast: internal error: {type(e).__name__}: {e} (OUTLAST_DEBUG=1 shows the traceback)")
            code = ExitCode.INTERNAL
        else:
            _error(f"outlast: {e}")
            code = known
    else:
        code = int(rv) if isinstance(rv, int) else ExitCode.OK
    if (lost := fmt.output_lost()) is not None and code == ExitCode.OK:
        _error(f"outlast: standard output could not be written ({lost}): what this command printed is incomplete")
        code = ExitCode.OUTPUT_LOST
    fmt.standard_streams_back()
    threads = sys.modules.get("engine.threads")  # imported by what ran an event loop; not by --help or ls
    if threads is not None:
        threads.exit_now_if_blocked(int(code))
    sys.exit(int(code))


CHANGES = frozenset({"cancel", "pause", "priority", "rm", "clean", "submit", "rerun"})
"""The commands that change the store and return once it answered (``run``, ``resume`` and ``worker`` handle
their signals themselves)."""

_VALUED = frozenset({"--state-dir", "--store", "--config", "--plugin"})


def _command(args: list[str]) -> str | None:
    """The command named in ``args``: the first word that is no global option nor its value."""
    words = iter(args)
    for word in words:
        if word in _VALUED:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _click_printing(e: BaseException) -> bool:
    """Whether ``e`` was raised where click writes what it prints itself (``--help``, ``--version``): an
    ``outlast --help > /dev/full`` ended "internal error", exit 70."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_name == "echo" and tb.tb_frame.f_globals.get("__name__") == "click.utils"


def _error(line: str) -> None:
    """An error, on one line whatever it quotes: a newline in a params key or a stored name is shown
    as ``\\n``, never as a second line that a script reading stderr would take for another message."""
    fmt.echo(fmt.printable(line), err=True)
