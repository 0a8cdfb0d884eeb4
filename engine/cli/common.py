"""What every ``outlast`` command shares: global options, settings, output mode, a store session, specs."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click

from ..errors import InvalidInput, NotFound, StoreFailed, StoreRefused
from ..files import read_regular
from ..limits import MAX_ITEMS, MAX_JSON_DEPTH, MAX_SECONDS, Priority
from ..paths import config_file, default_state_dir
from . import collector_paused

if TYPE_CHECKING:  # loaded by the commands that use them: ``--help`` and ``ls`` start without pydantic
    from ..config import Settings
    from ..models import OperationSpec

Mode = Literal["live", "plain", "json", "quiet"]
"""How a followed operation is shown: the rich panel, plain lines, JSON lines, or nothing."""

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
PRIORITIES = click.Choice([p.value for p in Priority], case_sensitive=False)
COUNT = click.IntRange(1, 10**9)
"""A count on the command line (--limit): big enough for anything stored, small enough for SQLite."""
SEQ = click.IntRange(0, 2**62)
SETTINGS_KEYS = (
    *("state_dir", "store", "namespace", "checkpoint_mirror", "max_concurrent", "auto_resume"),
    *("checkpoints_keep", "grace_period", "abandon_after", "store_outage_limit", "aging_seconds"),
    *("control_poll_interval", "progress_flush_interval", "max_memory_percent", "max_cpu_percent", "theme"),
    *("plugins", "log_limit"),
)
"""The settings an OUTLAST_* variable may set (``Settings``' fields; a test keeps them equal)."""


class Seconds(click.FloatRange):
    """Seconds on the command line: finite and at most a year (click's FloatRange lets nan and inf by)."""

    name = "seconds"

    def __init__(self, min_open: bool = False) -> None:
        super().__init__(min=0, max=MAX_SECONDS, min_open=min_open)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return rv


class App:
    """The global options; settings are loaded on first use (``--help`` never reads a config).

    A plain class, not a dataclass: ``dataclasses`` is one import more at every start-up."""

    def __init__(
        self,
        state_dir: str | None = None,
        store: str | None = None,
        config: str | None = None,
        plugins: tuple[str, ...] = (),
        json: bool = False,
        quiet: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.store = store
        self.config = config
        self.plugins = plugins
        self.json = json
        self.quiet = quiet
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The settings; plugins are imported here, so every command refuses a broken one alike."""
        if self._settings is None:
            with collector_paused():  # pydantic, the models and the plugins: imports, next to no garbage
                configure_logging()  # the engine may log from now on (``--help`` and ``ls`` never load logging)
                from ..installed import skip_pydantic_plugin_scan

                skip_pydantic_plugin_scan()  # before pydantic's first model: its plugins, as the entry points are
                from ..config import load_settings
                from ..registry import load_plugin, remember_entry_points

                remember_entry_points()  # when a handler is looked up (run, resume, a worker), as submit does
                from .checked import sweep_cache

                sweep_cache()  # what a command killed while writing the cache left there

                config = self.config_file()
                content = read_regular(config) if config is not None and self._defaults_but_config() else None
                settings = load_settings(
                    self.config,
                    state_dir=self.state_dir,
                    store=self.store,
                    plugins=list(self.plugins) or None,
                )
                for plugin in settings.plugins:
                    load_plugin(plugin)
                refuse_unknown_profiles(settings)
            self._settings = settings
            if config is not None and content is not None and read_regular(config) == content:
                from .checked import remember

                remember(config, content)  # what was checked is what the file still holds
        return self._settings

    def config_file(self) -> Path | None:
        """The config file the settings are read from, if any (as ``load_settings`` finds it)."""
        return config_file(self.config, os.environ)

    def _defaults_but_config(self) -> bool:
        """No --store or --plugin, and no OUTLAST_* setting but the state dir and the config file: then
        only the config file (and where the state dir is) can differ from the defaults."""
        if self.store is not None or self.plugins or self.state_dir == "" or self.config == "":
            return False
        env = os.environ
        if env.get("OUTLAST_STATE_DIR") == "":
            return False
        return not any(f"OUTLAST_{key.upper()}" in env for key in SETTINGS_KEYS if key != "state_dir")

    def quick_state_dir(self) -> Path | None:
        """The state dir, when every setting but it is a default (no --store or --plugin, no other
        OUTLAST_* setting, and either no config file or one whose content passed the full check before
        and sets no store or plugins: ``checked``): then a read-only command (``ls``) may read the local
        store without loading and validating the settings. None: load them (``settings``)."""
        # Given at all (even empty: the full path says what is wrong with it) means not the defaults.
        if self._settings is not None or not self._defaults_but_config():
            return None
        from_config = None
        config = self.config_file()
        if config is not None:
            from .checked import checked_state_dir

            checked, from_config = checked_state_dir(config)
            if not checked:
                return None
        env = os.environ
        chosen = self.state_dir or env.get("OUTLAST_STATE_DIR") or from_config
        if chosen is not None and not chosen.strip():
            return None  # blank: not a directory but an error, which the settings say
        return Path(chosen or default_state_dir())

    def prepare_child(self) -> list[str]:
        """The global options for a detached child process, which inherits this process's environment.

        The store URL may hold a password and a command line is readable by every user (``ps``), so
        it goes to the child as OUTLAST_STORE in this process's environment instead (readable by the
        same user only); for the child it ranks as --store did here (environment over config file).
        """
        args: list[str] = []
        if self.state_dir:
            args += ["--state-dir", self.state_dir]
        if self.store:
            os.environ["OUTLAST_STORE"] = self.store
        if self.config:
            args += ["--config", self.config]
        for p in self.plugins:
            args += ["--plugin", p]
        return args

    def command(self, *words: str) -> str:
        """``outlast [global options as given] WORDS``: a hint a person can paste as printed (anywhere: paths
        made absolute), naming the store this command used (without --state-dir it would look in the default
        one and find nothing). A store URL's password is left out (``***``): it is never printed."""
        from ..config import redact_url

        parts = ["outlast"]
        # Absolute: a hint is read later and elsewhere too (the detached log, a terminal's scrollback), and a
        # relative --state-dir pasted in another directory named another store, made anew and empty.
        if self.state_dir:
            parts += ["--state-dir", shell_word(os.path.abspath(self.state_dir))]
        if self.store:
            parts += ["--store", shell_word(redact_url(self.store) or "")]
        if self.config:
            parts += ["--config", shell_word(os.path.abspath(self.config))]
        for plugin in self.plugins:
            parts += ["--plugin", shell_word(plugin)]
        return " ".join([*parts, *words])

    @property
    def mode(self) -> Mode:
        """How to show a followed operation: the live panel on a terminal that takes escape sequences, plain
        lines otherwise (a pipe, a file, ``TERM=dumb``)."""
        from . import format as fmt

        if self.json:
            return "json"
        if self.quiet:
            return "quiet"
        return "live" if fmt.capable_terminal(sys.stdout) else "plain"


def refuse_unknown_profiles(settings: Settings) -> None:
    """InvalidInput, in one line naming the config file, the table and the nearest known type, when the
    settings hold a profile (``[profiles.TYPE]``) for a type that nothing loaded knows: a misspelt
    ``[profiles.codebase_indexin]`` was kept and never used, so a limit the user set was not applied, without
    a word, where every other wrong key of the file is refused.

    Why here, in ``App.settings``, and only for the command line:

    - The types are known here: right after the plugins the settings name (a config's ``plugins``,
      ``OUTLAST_PLUGINS``, ``--plugin``) are imported, and before any command uses the settings; the
      built-in types, the seed's profiles and the installed plugins (entry points) count too. Checked when
      the settings are read (``load_settings``), a plugin's type was not registered yet; checked when an
      engine starts or a profile is resolved, commands that start none (``types``, ``config``, ``cancel``)
      went on taking the file.
    - It costs nothing on the quick paths: ``--help`` and a quick ``ls`` never load the settings, and a
      config whose profiles are all for built-in, seed or loaded types is checked against names in memory
      (no import); the installed plugins are imported only to look for a name that is none of those.
    - Every command refuses the file alike, as it refuses any other wrong key of it (exit 2, nothing
      stored). A profile for a plugin's type counts once the plugin is loaded by every command: given in
      the config file (``plugins = [...]``) or installed as an entry point, not ``--plugin`` on some
      commands only; the line says so when no known type is near.
    - A program that builds its engine itself (``load_settings``, ``Engine``) is not refused: it may register
      its handlers after reading its settings; its engine warns at start (``Engine._say_unknown_profiles``).
    """
    if not settings.profiles:
        return
    from ..registry import nearest_type, type_names, unknown_types
    from ..text import quoted

    unknown = unknown_types(settings.profiles)
    if not unknown:
        return
    type_ = unknown[0]
    origin = settings.origins.get("profiles", "config")
    shown = type_ if type_.isascii() and type_.replace("_", "").isalnum() and len(type_) <= 64 else quoted(type_)
    near = nearest_type(type_)
    if near is not None:
        said = f"did you mean {near}?"
    else:
        said = (
            f"known: {', '.join(type_names())}; a plugin's type is known once its plugin is loaded:"
            ' plugins = ["MODULE"] in the config file'
        )
    raise InvalidInput(f"{origin}: [profiles.{shown}]: no such operation type ({said})")


def shell_word(word: str) -> str:
    """``word`` as a shell reads it back, safe to print: quoted (``shlex.quote``); one holding a character
    a terminal must not be sent (a newline, an escape, a file name's byte that is not UTF-8) in ``$'...'``,
    each such character escaped (``\\n``, ``\\x1b``, ``\\xe9``, ``\\u202e``), which bash, zsh and ksh read
    back as it was. Quoted alone, the printed hint showed such a character as ``\\x1b`` inside plain
    quotes: pasted, it named another directory (made anew, empty: "no operation matches")."""
    import shlex

    from ..humanize import UNSAFE

    if not UNSAFE.search(word):
        return shlex.quote(word)
    out = []
    for c in word:
        o = ord(c)
        if c in "\\'":
            out.append("\\" + c)
        elif c in _C_ESCAPES:
            out.append(_C_ESCAPES[c])
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that is not UTF-8, as Python decodes a file name's
            out.append(f"\\x{o - 0xDC00:02x}")
        elif UNSAFE.match(c) or (o < 0x100 and not c.isprintable()):
            out.append(f"\\x{o:02x}" if o < 0x80 else f"\\u{o:04x}")
        else:
            out.append(c)
    return "$'" + "".join(out) + "'"


_C_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


pass_app = click.make_pass_decorator(App)


def json_option(f: F) -> F:
    """``--json`` on a read command (the same as the global ``outlast --json``)."""

    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(App).json = True

    return click.option(
        "--json", "json_", is_flag=True, expose_value=False, callback=callback, help="Print JSON for machines."
    )(f)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, with asyncio imported only by the commands that need it (not ``--help``, ``ls``); a
    handler's thread still blocked at the end is not waited for (``engine.threads``)."""
    with collector_paused():  # asyncio: imports
        from ..threads import run

    return run(coro)


class NoStore(NotFound):
    """A command that only reads found no local store where the settings point (exit 3, as no operation
    matches): it made none there. ``ls`` lists nothing, ``slots`` says none are set."""


def no_store(settings: Settings) -> NoStore | None:
    """``NoStore`` naming the path and where it was given, when the settings point at a local store that is
    not there (``store.quick.missing``); None: a store to open (or Redis, which has nothing to make)."""
    key = "store" if settings.store else "state_dir"
    target = str(settings.store or settings.state_dir)
    if "://" in target:
        return None
    from ..store.quick import missing

    try:
        path = Path(target).expanduser()
    except RuntimeError:  # "~nouser/x": the store's open says so
        return None
    what = missing(path)
    if what is None:
        return None
    origin = settings.origins.get(key, "default")
    given = {"argument": f"--{key.replace('_', '-')}", "environment": f"OUTLAST_{key.upper()}"}.get(origin)
    where = f"from {given or f'{key} in {origin}'}" if origin != "default" else "the default"
    if what == "no state directory":
        return NoStore(f"no state directory at {path} ({where}): nothing is stored there")
    return NoStore(f"no store at {path} ({where}): the directory holds {what}")


def valid_ids(*op_ids: str) -> None:
    """Each id checked before the store is looked for (``session(create=False)``): a bad one is bad usage
    (exit 2) where no store is too, not "no state directory"."""
    with collector_paused():  # the models, which the settings load next anyway: imports
        from ..models import validate_id_prefix

    for op_id in op_ids:
        validate_id_prefix(op_id)


@contextlib.asynccontextmanager
async def session(
    settings: Settings, recover: bool = True, reading: bool = False, create: bool = True
) -> AsyncIterator[Any]:
    """An engine on the open store, without running anything (reads and control requests).

    ``recover`` first marks operations left running by dead processes interrupted, so what a
    command shows is the truth. ``reading``: the command only reads (``ls``, ``show``, ``logs``,
    ``checkpoints``): a store that answers reads but refuses writes (a Redis read-only replica, or one
    full under noeviction), or fails them (a local store whose disk is full), is listed as it is, with one
    line saying why nothing was marked. Such a store refused every listing (exit 8), so nobody could see
    what had been running on it: on a full disk, `outlast ls` and `logs` of the very operation that
    stopped for it. ``create=False``: a local store that is not there is ``NoStore``, not made (a read of a
    mistyped ``--state-dir`` left a store behind there).
    """
    if not create and (absent := no_store(settings)) is not None:
        raise absent
    with collector_paused():  # the engine's and the store's modules: imports, as the settings' (``App.settings``)
        from .run import make_engine

        engine = make_engine(settings, run_queue=False)
    await engine.store.open()
    try:
        if recover:
            try:
                await engine.recover()
            except (StoreRefused, StoreFailed) as e:
                if not reading:
                    raise
                say_unmarked(e)
        yield engine
    finally:
        await engine.store.close()


def say_unmarked(e: Exception) -> None:
    """The one line of a reading command whose store refused the write that marks dead work interrupted."""
    import logging

    logging.getLogger("outlast").warning(
        "%s; shown as stored: work whose process stopped is not marked interrupted until it takes writes", e
    )


def loads(text: str, option: str) -> Any:
    """JSON from an option; ValueError when it is not JSON, one-line BadParameter when it nests too deep
    to parse (the model's limit on depth is far below that) or gives a key twice in one object."""
    try:
        return json.loads(text, parse_int=_json_int, object_pairs_hook=functools.partial(_once, option))
    except RecursionError:
        raise click.BadParameter(
            f"JSON nested deeper than {MAX_JSON_DEPTH} levels (the limit)", param_hint=option
        ) from None


def _once(option: str, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are given once each: ``{"items": 2, "items": 3}`` was silently the last, as
    ``-p items=2 -p items=3`` was before it was refused (``parse_pairs``): which one was meant is not ours to
    guess."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise click.BadParameter(f"{key!r} given more than once", param_hint=option)
        out[key] = value
    return out


def _json_int(text: str) -> int:
    """An integer of JSON text; one longer than Python reads (4,300 digits) as one of its size, its first digits
    then zeros: past 2**63, the spec refuses it as it does 10**111 ("1e+5000 is out of range"), where Python's
    words were "use sys.set_int_max_str_digits() to increase the limit" (as "not valid JSON")."""
    try:
        return int(text)
    except ValueError:
        digits = text.lstrip("-")
        return (-1 if text.startswith("-") else 1) * int(digits[:20]) * 10 ** (len(digits) - 20)


def parse_value(raw: str, option: str = "--param") -> Any:
    """A ``--param`` value: JSON when it parses as JSON (``5``, ``true``, ``[1,2]``), else the string.

    A number that is not finite (``NaN``, ``Infinity``, ``1e309``, which Python's JSON reads as one) is the
    string as typed: the param's model then says what it is and what is allowed ("seconds: 1e309 is not a
    finite number (allowed: 0 <= seconds <= 3600)"), where the spec's check said "inf is not a finite number"
    of 1e309, and of the same param typed ``nan`` pydantic said "less than or equal to 3600"."""
    try:
        value = loads(raw, option)
    except ValueError:
        return raw
    return raw if isinstance(value, float) and not math.isfinite(value) else value


def parse_pairs(pairs: tuple[str, ...], option: str, text: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, each value read as JSON when it is JSON; for the keys in ``text``, only a JSON
    string is read (``-p 'command="ls -l"'``, as before), anything else is taken as typed. A key given
    twice is refused: ``-p n=1 -p n=2`` was silently the last, which one of the two was meant is not ours
    to guess."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint=option)
        if key in out:
            raise click.BadParameter(f"{key!r} given more than once", param_hint=option)
        out[key] = _text_value(value) if key in text else parse_value(value, option)
    return out


def _text_value(raw: str) -> str:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    return value if isinstance(value, str) else raw


def text_params(settings: Settings, type_: str) -> frozenset[str]:
    """The params of ``type_`` its model types as text (``str``, or ``str`` or None) or as words split from a line (a
    program's ``args``, the command's ``argv``): a ``--param`` gives them what was typed. Read as JSON, ``-p
    command=true`` was the boolean, refused as "not a valid string" (the command ``true`` could not be run that
    way), and ``-p root=2024`` a number. Empty when the type is unknown or a plugin does not load (the submit says
    so) or it declares no model."""
    import types
    import typing

    from ..registry import ensure_loaded, get_handler

    try:
        ensure_loaded(settings.plugins, builtins=False)
        model = get_handler(type_).params
    except InvalidInput:
        return frozenset()
    names: set[str] = set()
    for name, field in model.model_fields.items():
        kinds: tuple[Any, ...] = (field.annotation,)
        if typing.get_origin(field.annotation) in (typing.Union, types.UnionType):
            kinds = tuple(a for a in typing.get_args(field.annotation) if a is not type(None))
        split = isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("split") == "shell"
        if kinds == (str,) or split:  # words: a line split as a shell would (``-p argv=true`` was a boolean)
            names.add(field.alias or name)
    return frozenset(names)


def build_spec(
    type_: str,
    params: tuple[str, ...],
    params_json: str | None,
    priority: str,
    profile: tuple[str, ...],
    items: int | None,
    timeout: float | None,
    name: str | None,
    idempotency_key: str | None = None,
    text: frozenset[str] = frozenset(),
) -> OperationSpec:
    """The spec from command-line options; InvalidInput (one line) when it does not validate. ``text``:
    the params whose ``--param`` value is taken as typed (``text_params``)."""
    from pydantic import ValidationError

    from ..models import OperationSpec
    from ..profiles import one_line

    data: dict[str, Any] = {}
    if params_json is not None:
        try:
            loaded = loads(params_json, "--params-json")
        except ValueError as e:
            raise click.BadParameter(f"not valid JSON ({e})", param_hint="--params-json") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("expected a JSON object", param_hint="--params-json")
        data.update(loaded)
    for key, value in parse_pairs(params, "--param", text).items():
        if key in data:  # as a key given twice in either: which one was meant is not ours to guess
            raise click.BadParameter(f"{key!r} given in --params-json and again as --param", param_hint="--param")
        data[key] = value
    try:
        return OperationSpec(
            type=type_,
            params=data,
            priority=Priority(priority.lower()),
            profile=parse_pairs(profile, "--profile"),
            total_items=items,
            timeout=timeout,
            name=name,
            idempotency_key=idempotency_key,
        )
    except ValidationError as e:
        raise InvalidInput(f"operation spec: {one_line(e)}") from None


def spec_options(f: F) -> F:
    """The options of ``run`` and ``submit`` that describe the operation."""
    for deco in reversed(
        [
            click.argument("type_", metavar="TYPE"),
            click.option(
                "--param",
                "-p",
                "params",
                multiple=True,
                metavar="KEY=VALUE",
                help="A param: a JSON value, or as typed for a text param.",
            ),
            click.option("--params-json", metavar="JSON", help="All params as one JSON object."),
            click.option("--priority", type=PRIORITIES, default="normal", show_default=True),
            click.option("--profile", multiple=True, metavar="KEY=VALUE", help="Override the timeout profile."),
            click.option("--items", type=click.IntRange(0, MAX_ITEMS), help="Estimated item count (sets the timeout)."),
            click.option("--timeout", type=Seconds(min_open=True), help="A fixed timeout, seconds."),
            click.option("--name", help="A name to show instead of the type."),
        ]
    ):
        f = deco(f)
    return f


def configure_logging() -> None:
    """Engine warnings (an orphan found, a checkpoint skipped) as one escaped line each on stderr;
    DEBUG with OUTLAST_DEBUG. Called when a command first needs the settings (so the engine), never
    by ``--help`` or a quick ``ls``, which do not load logging."""
    import logging

    from . import format as fmt

    class StderrLines(logging.Handler):
        lost = 0
        """Lines that could not be written (no memory to format one): said once, not a traceback each."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                fmt.echo(fmt.printable(self.format(record)), err=True)
            except Exception:  # a log line must never be what breaks a command
                self.handleError(record)

        def handleError(self, record: logging.LogRecord) -> None:
            # logging's own printed "--- Logging error ---" and a traceback for every line that failed: under
            # memory pressure, one for each of thousands of lines.
            self.lost += 1
            if self.lost == 1:
                what = sys.exc_info()[0]
                with contextlib.suppress(Exception):
                    os.write(
                        2,
                        b"outlast: WARNING: a log line could not be written to stderr ("
                        + (what.__name__ if what else "error").encode()
                        + b"); the next ones that cannot are left out without a word\n",
                    )

    root = logging.getLogger("outlast")
    if not any(h.get_name() == "outlast-stderr" for h in root.handlers):  # main() may run more than once
        handler = StderrLines()
        handler.set_name("outlast-stderr")
        handler.setFormatter(logging.Formatter("outlast: %(levelname)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if os.environ.get("OUTLAST_DEBUG") else logging.WARNING)
