"""Handlers by operation type: ``@operation``, plugins, and the seed's migration decorator."""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib
import inspect
import json
import logging
import math
import os
import re
import sys
import time
import typing
import warnings
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from . import installed
from .models import InvalidInput, bool_for_number, check_type, type_name
from .profiles import SEED_PROFILES, one_line
from .shortage import ran_short

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

log = logging.getLogger("outlast.registry")

Handler = Callable[..., Awaitable[Any]]
ENTRY_POINT_GROUP = installed.OPERATIONS_GROUP
BUILTIN_TYPES = {
    "demo": "engine.operations.demo",
    "command": "engine.operations.command",
    "codebase_indexing": "engine.operations.indexing",
    "comprehensive_test_suite": "engine.operations.test_suite",
    "security_scan": "engine.operations.security_scan",
    "backup_operation": "engine.operations.backup",
    "load_testing": "engine.operations.load_test",
    "migration_operation": "engine.operations.migration",
    "cleanup_operation": "engine.operations.cleanup",
    "monitoring_collection": "engine.operations.monitoring",
    "kb_population": "engine.operations.kb_population",
    "kb_optimization": "engine.operations.kb_optimization",
    "vector_indexing": "engine.operations.vector_indexing",
    "semantic_analysis": "engine.operations.semantic_analysis",
    "code_analysis": "engine.operations.code_analysis",
    "dependency_analysis": "engine.operations.dependency_analysis",
    "integration_testing": "engine.operations.test_profiles",
    "performance_testing": "engine.operations.test_profiles",
    "performance_profiling": "engine.operations.profiling",
}
"""Each built-in type and the module that registers it: a process that runs one type imports one module
(each defines pydantic models, and all of them cost a command's start-up about 0.25 s)."""
BUILTIN_MODULES = tuple(dict.fromkeys(BUILTIN_TYPES.values()))
"""Every built-in module, each once (listing types, the API schema and the launch form load them all)."""


class AnyParams(BaseModel):
    """Params of a handler that declares no model: any JSON object, read as attributes (``params.n``) or
    as a mapping (``params["n"]``, ``params.get("n", 5)``, ``"n" in params``), as a dict would be."""

    model_config = ConfigDict(extra="allow")

    def __getitem__(self, key: str) -> Any:
        extra = self.__pydantic_extra__ or {}
        if key not in extra:
            raise KeyError(key)
        return extra[key]

    def get(self, key: str, default: Any = None) -> Any:
        return (self.__pydantic_extra__ or {}).get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in (self.__pydantic_extra__ or {})

    def keys(self) -> Any:
        return (self.__pydantic_extra__ or {}).keys()


@dataclass(frozen=True)
class HandlerSpec:
    type: str  # the seed's name for it; ``builtins.type`` below is the class
    fn: Handler
    params: builtins.type[BaseModel]
    description: str
    source: str
    """'builtin', 'plugin:NAME' or the defining module."""
    estimated_items: int | None = None
    """The item count a submit without ``total_items`` is timed by (``@migrate_timeout_operation``'s)."""

    def parse_params(self, raw: dict[str, Any], context: dict[str, Any] | None = None) -> BaseModel:
        """``raw`` as the type's params model; ``context`` is pydantic's validation context (``state_dir``:
        the local store's directory, where a type's default files are, when the submitting engine knows it)."""
        said = bool_for_number(self.params, raw)
        if said:
            raise InvalidInput(f"{self.type} params: {said}")
        try:
            return self.params.model_validate(raw, context=context)
        except ValidationError as e:
            raise InvalidInput(f"{self.type} params: {one_line(e, self.params)}") from None
        except (Exception, SystemExit) as e:  # a validator of the plugin's that raised what pydantic passes on
            if ran_short(e) is not None:  # the machine, not the params (no descriptor left): retried, or said so
                raise
            if isinstance(e, FileNotFoundError) and cwd_gone():
                raise InvalidInput(
                    f"{self.type} params: the current directory was deleted, so a relative path (or a default of"
                    " it) names nothing: cd to a directory that exists, or give absolute paths"
                ) from None
            raise InvalidInput(
                f"{self.type} params: its validator raised {type(e).__name__}: {_first_line(e)}"
            ) from None


def cwd_gone() -> bool:
    """The working directory was deleted (``os.getcwd`` fails): a relative path, or ``Path.resolve`` of one,
    raises FileNotFoundError, which a params check said as "its validator raised FileNotFoundError"."""
    try:
        os.getcwd()
    except FileNotFoundError:
        return True
    return False


_HANDLERS: dict[str, HandlerSpec] = {}
_GIVEN: dict[str, Callable[..., Any]] = {}
"""The function each type was registered with (the one ``@migrate_timeout_operation`` decorated, not its handler):
what a second registration is compared with."""
_importing_builtin = False
_loaded_builtins = False
_loaded_entry_points = False
_remembering = False


def operation(
    type_: str,
    params: type[BaseModel] | None = None,
    description: str | None = None,
    estimated_items: int | None = None,
) -> Callable[[Handler], Handler]:
    """Register ``async def handler(ctx, params)`` for an operation type (a string or an ``OperationType``).

    A handler of one argument, ``async def handler(ctx)`` (the seed's style), is registered too. A type
    registered again is the new handler's from then on, for the whole process, with one warning naming the type
    and both functions (the same function again says nothing).
    """
    return _operation(type_, params, description, estimated_items, None)


def _operation(
    type_: str,
    params: type[BaseModel] | None,
    description: str | None,
    estimated_items: int | None,
    given: Callable[..., Any] | None,
) -> Callable[[Handler], Handler]:
    """``operation``; ``given``: the function the handler runs, when that is not the handler itself."""
    try:  # a type no spec can name (``@operation("")``, "Build") registered silently and never ran
        type_ = check_type(type_)
    except ValueError as e:
        raise ValueError(f"@operation({type_!r}): an operation type {e}") from None
    if params is not None and not (isinstance(params, builtins.type) and issubclass(params, BaseModel)):
        # A dataclass or ``dict`` was taken, and every submit of the type was an internal error (exit 70)
        raise TypeError(
            f"operation {type_!r}: params={getattr(params, '__qualname__', params)!r} is not a pydantic model:"
            " give a class deriving from pydantic.BaseModel, or no params= for any JSON object"
        )

    def deco(fn: Handler) -> Handler:
        if inspect.isasyncgenfunction(fn):  # an async def that yields: "must be async def" said what it was
            raise TypeError(
                f"operation {type_!r}: handler {fn.__qualname__} is an async generator (it yields): a handler returns"
                " its result, and reports as it goes with ctx.progress or ctx.items"
            )
        if not inspect.iscoroutinefunction(fn):
            what = "a generator (it yields)" if inspect.isgeneratorfunction(fn) else "a plain def"
            raise TypeError(
                f"operation {type_!r}: handler {fn.__qualname__}{_where(fn)} must be async def, not {what}: a handler"
                " is a coroutine function, its blocking work in asyncio.to_thread"
            )
        _check_signature(type_, fn)
        doc = description or (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
        module = fn.__module__
        source = "builtin" if module.startswith("engine.operations") else module
        call = _context_only(fn) if _positional_count(fn) == 1 else fn
        _replacing(type_, given or fn)
        _HANDLERS[type_] = HandlerSpec(type_, call, params or AnyParams, doc, source, estimated_items)
        _GIVEN[type_] = given or fn
        return fn

    return deco


def _replacing(type_: str, fn: Callable[..., Any]) -> None:
    """One warning when ``fn`` takes ``type_`` from another function: ``@operation("dup")`` twice, or the seed's
    ``@migrate_timeout_operation(OperationType.CODEBASE_INDEXING)``, which replaced the built-in for the whole
    process without a word. A built-in module loading later (``_import_builtin``) keeps the program's."""
    if _importing_builtin:
        return
    before = _GIVEN.get(type_)
    if before is fn:
        return
    if before is None and type_ not in BUILTIN_TYPES:
        return  # a type of its own
    if before is None or before.__module__.startswith("engine.operations."):
        if fn.__module__ == BUILTIN_TYPES.get(type_):
            return  # the built-in registering itself
        replaced = f"the built-in ({BUILTIN_TYPES.get(type_, before and before.__module__)})"
    else:
        replaced = _named(before)
    log.warning("operation type %r: handler %s replaces %s for this process", type_, _named(fn), replaced)


def _named(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a handler's function."""
    return f"{fn.__module__}.{getattr(fn, '__qualname__', fn)}"


BUILTIN_HANDLER = "builtin"
"""``handler_of`` for a built-in type run by its built-in handler."""


def handler_of(type_: str) -> str | None:
    """Which handler runs the built-in type ``type_`` in this process: ``BUILTIN_HANDLER``, or ``module.qualname``
    of the function that replaces it (a plugin's ``@operation``, the seed's ``@migrate_timeout_operation(
    OperationType.X)``). Stored with each operation of such a type (``Operation.handler``), so that a process
    with another handler for it does not run it. None for a type of a plugin's own (only its plugin runs it)."""
    if type_ not in BUILTIN_TYPES:
        return None
    given = _GIVEN.get(type_)
    return BUILTIN_HANDLER if given is None or given.__module__.startswith("engine.operations.") else _named(given)


def other_handler(type_: str, wanted: str | None) -> str | None:
    """One line when this process would run an operation of ``type_`` with another handler than the ``wanted``
    one it was submitted for (None: it would not). A worker started without the plugin whose function replaces
    a built-in (the seed's migrated functions do) ran the built-in on that function's params: it failed, or it
    did other work than asked and said completed; a worker with it ran a plugin's function on the built-in's."""
    here = handler_of(type_)
    if wanted is None or here is None or wanted == here:
        return None

    def named(h: str) -> str:
        return "the built-in handler" if h == BUILTIN_HANDLER else h

    return (
        f"{type_} was submitted for {named(wanted)}, and this process runs {named(here)} for it: not run here;"
        f" resume it where {named(wanted)} runs it"
        + (" (--plugin with its module)" if wanted != BUILTIN_HANDLER else " (without the plugin that replaces it)")
    )


def _check_signature(type_: str, fn: Handler) -> None:
    """Refuse a handler that cannot be called as ``fn(ctx, params)`` or ``fn(ctx)``: ``async def h()``, one with
    a third required argument, or a method taking ``self``. Each registered silently, and every operation of its
    type was stored, then failed when it ran, naming the engine's line (``attempt.py``) rather than the handler."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # no signature to read (a C function): its call says what is wrong
    args: tuple[None, ...] = (None,) if _positional_count(fn) == 1 else (None, None)
    try:
        signature.bind(*args)
    except TypeError as e:
        raise TypeError(
            f"operation {type_!r}: handler {fn.__qualname__}{signature}{_where(fn)} cannot be called with"
            f" (ctx, params): {e}; a handler is async def {fn.__name__}(ctx, params) or async def {fn.__name__}(ctx)"
        ) from None


def _where(fn: Callable[..., Any]) -> str:
    """`` (file.py:line)`` where ``fn`` is defined (its first decorator's line), or nothing when it has no code."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    return f" ({Path(code.co_filename).name}:{code.co_firstlineno})" if code is not None else ""


def _positional_count(fn: Handler) -> int:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in inspect.signature(fn).parameters.values())


def _context_only(fn: Handler) -> Handler:
    """``fn(ctx)`` called as a handler ``(ctx, params)``."""

    async def call(ctx: Any, params: BaseModel) -> Any:
        return await fn(ctx)

    return call


def _import_builtin(name: str) -> None:
    """Import one built-in module; what was registered before it (the program's own handlers, plugins)
    wins over what it registers."""
    global _importing_builtin
    earlier, given = dict(_HANDLERS), dict(_GIVEN)
    _importing_builtin = True  # what it replaces for the moment is put back: said when the program registered
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
    finally:
        _importing_builtin = False
    _HANDLERS.update(earlier)
    _GIVEN.update(given)


def load_builtins() -> None:
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    for name in BUILTIN_MODULES:
        _import_builtin(name)


def remember_entry_points() -> None:
    """From now on in this process, ``load_entry_points`` finds them as ``remembered=True`` does (the command
    line's choice for every command: a handler looked up by ``run``, ``resume`` or a worker scanned every
    installed distribution again, as a submit did before it remembered)."""
    global _remembering
    _remembering = True


def load_entry_points(remembered: bool = False) -> None:
    """The plugins of the ``outlast.operations`` entry points, once a process. ``remembered``: found as the
    last process with the same installed distributions found them (``_remembered_entry_points``); the
    default after ``remember_entry_points``."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    found = _remembered_entry_points() if remembered or _remembering else entry_points(group=ENTRY_POINT_GROUP)
    for ep in found:
        try:
            with _prints_to_stderr():
                obj = ep.load()
        except KeyboardInterrupt:
            raise  # Ctrl-C while it imports: the command stops, as anywhere else
        except BaseException as e:  # sys.exit(3) at import ended every command, silently, with code 3; a library's
            # own BaseException (not an Exception) every `worker` and `run`, with a traceback, exit 1
            what = f"called exit({e.code!r})" if isinstance(e, SystemExit) else f"{type(e).__name__}: {_first_line(e)}"
            log.warning("plugin %s (%s) failed to load: %s", ep.name, ep.value, what)
            continue
        if callable(obj) and not inspect.iscoroutinefunction(obj) and not isinstance(obj, type):
            with _suppress_all():
                obj()  # a register() hook


def entry_points(group: str) -> list[EntryPoint]:
    """``importlib.metadata.entry_points(group=group)``: a scan of every installed distribution's metadata,
    importlib.metadata imported only then (``installed``)."""
    from importlib.metadata import entry_points as scan

    return list(scan(group=group))


def _remembered_entry_points() -> list[EntryPoint]:
    """``entry_points(group=ENTRY_POINT_GROUP)`` as the last process with the same installed distributions
    found them (``installed.remembered``): the scan was 3 ms of ``outlast submit``'s start-up, 7-17 ms on a
    busy machine, and importlib.metadata's import about as much again."""
    found = installed.remembered(ENTRY_POINT_GROUP)
    if not found:
        return []
    from importlib.metadata import EntryPoint

    return [EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in found]


_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")


def load_plugin(module: str) -> None:
    """Import a plugin module by name (``--plugin``); its ``@operation`` calls register handlers.

    Whatever goes wrong while importing it (a syntax error, an exception, even ``sys.exit``) is
    InvalidInput naming the module and the error in one line, never a crash or a silent exit.
    """
    if not _MODULE_RE.match(module):
        raise InvalidInput(f"plugin {module!r}: not a module name (dotted Python names, e.g. mypkg.operations)")
    try:  # a built-in module imported later keeps what this registers (see _import_builtin)
        with _prints_to_stderr():
            importlib.import_module(module)
    except SystemExit as e:
        raise InvalidInput(f"plugin {module!r} called exit({e.code!r}) while being imported") from None
    except SyntaxError as e:
        where = f"{Path(e.filename).name}, line {e.lineno}" if e.filename else f"line {e.lineno}"
        raise InvalidInput(f"plugin {module!r} has a syntax error: {e.msg} ({where})") from None
    except ImportError as e:
        raise InvalidInput(f"plugin {module!r} cannot be imported: {_first_line(e)}") from None
    except KeyboardInterrupt:
        raise  # Ctrl-C while it imports: the command stops, as anywhere else
    except BaseException as e:  # a library's own BaseException (not an Exception) too: it was a traceback, exit 1
        raise InvalidInput(
            f"plugin {module!r} failed while being imported: {type(e).__name__}: {_first_line(e)}"
        ) from None


@contextlib.contextmanager
def _prints_to_stderr() -> Iterator[None]:
    """A plugin's ``print()`` while it is imported goes to stderr: on stdout it came before the command's own
    output, so ``outlast --plugin p --json ls`` was no JSON and ``ID=$(outlast -q submit ...)`` held more
    than the id."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def ensure_loaded(plugins: list[str] | tuple[str, ...] = (), builtins: bool = True) -> None:
    """Plugins (entry points and ``plugins``), and every built-in type unless ``builtins`` is false:
    then each built-in module loads when its type is first asked for (``get_handler``)."""
    if builtins:
        load_builtins()
    load_entry_points()
    for p in plugins:
        load_plugin(p)


def get_handler(type_: str) -> HandlerSpec:
    load_entry_points()
    spec = _HANDLERS.get(type_)
    if spec is None and type_ in BUILTIN_TYPES:
        _import_builtin(BUILTIN_TYPES[type_])
        spec = _HANDLERS.get(type_)
    if spec is None:
        load_builtins()  # every type, to name them
        spec = _HANDLERS.get(type_)
    if spec is None:
        known = ", ".join(sorted(_HANDLERS)) or "none"
        near = nearest_type(type_)
        # Not a misspelling: likely a plugin's type that a worker elsewhere runs; a submit validates its params
        # here, so the plugin is needed here too, which "unknown" alone did not say (an outside hour on Redis).
        hint = f"did you mean {near!r}?" if near else "a plugin's type needs its plugin here too (--plugin MODULE)"
        raise InvalidInput(f"unknown operation type {type_!r}: {hint} (known: {known})")
    return spec


def handlers() -> dict[str, HandlerSpec]:
    ensure_loaded()
    return dict(sorted(_HANDLERS.items()))


_runnable: tuple[int, frozenset[str]] = (-1, frozenset())
"""``runnable_types``' answer, and how many handlers were registered when it was made."""


def runnable_types() -> frozenset[str]:
    """The types this process has a handler for, or can load one for (a built-in loads when first run):
    what its claims take from a shared queue. Read at each claim, since a program may register a handler
    after its engine started; made again only when one was (handlers are added, never removed), so each
    claim gets the same set and the stores' caches of its encoded form hit."""
    global _runnable
    load_entry_points()
    if _runnable[0] != len(_HANDLERS):
        _runnable = (len(_HANDLERS), frozenset(_HANDLERS).union(BUILTIN_TYPES))
    return _runnable[1]


def unknown_types(types: Iterable[str]) -> list[str]:
    """Those of ``types`` that no handler registered here (a ``--plugin``, a config's ``plugins``, the program's
    own ``@operation``), built-in type, seed profile or installed plugin knows, in their order. The installed
    plugins (entry points) are imported only when a name is none of the others, so a check of names that
    are costs no import."""
    names = list(types)

    def unknown() -> list[str]:
        return [t for t in names if t not in _HANDLERS and t not in BUILTIN_TYPES and t not in SEED_PROFILES]

    if not unknown():
        return []
    load_entry_points()
    return unknown()


def nearest_type(type_: str) -> str | None:
    """The known type nearest to ``type_`` (a misspelling's meaning: ``codebase_indexin``), if one is near."""
    import difflib  # here: asked only of a name that is no type

    near = difflib.get_close_matches(type_, type_names(), n=1)
    return near[0] if near else None


def type_names() -> list[str]:
    """The types known without importing anything more: registered, built-in (loaded or not), or with a
    seed profile (``known_types`` imports every built-in module to list their handlers)."""
    return sorted(set(_HANDLERS) | set(BUILTIN_TYPES) | set(SEED_PROFILES))


def known_types() -> list[str]:
    """Every type with a handler or a seed profile."""
    return sorted(set(handlers()) | set(SEED_PROFILES))


class _suppress_all:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type | None, e: BaseException | None, tb: object) -> bool:
        if e is not None and not isinstance(e, KeyboardInterrupt):
            log.warning("plugin hook failed: %s", e)
            return True
        return False


def migrate_timeout_operation(
    type_: str, estimated_items: int | None = None, params: type[BaseModel] | None = None
) -> Callable[[Handler], Handler]:
    """Turn an existing ``async def f(...)`` into an operation of ``type_``, leaving its callers alone (a
    plain ``def`` too: it stays one for its callers, and runs on the event loop as blocking code does).

    Called directly, ``f`` behaves exactly as before. Run as an operation (``outlast run TYPE``), its
    params become keyword arguments. A ``progress_callback`` parameter, if it has one, receives a
    callback that reports to the engine in either style, awaited or not: the seed's
    ``await progress_callback("Step i", i, 100)`` (step, done, total) or ``progress_callback(done,
    total, message)``. A function without one runs as a single item under the type's timeout profile.
    ``estimated_items`` seeds the timeout until the real total is known.
    """
    type_ = type_name(type_)

    def deco(fn: Handler) -> Handler:
        # Run as an operation, a generator's body never ran (it runs when iterated), and the operation completed
        # with the generator's repr as its result. Refused when run, not when decorated: its direct callers
        # (which iterate it) go on as before, as the decorator promises.
        generator = inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn)
        takes_callback = "progress_callback" in inspect.signature(fn).parameters
        model = params or signature_params(fn)

        async def handler(ctx: Any, p: BaseModel) -> Any:
            if generator:
                from .context import OperationFailed

                raise OperationFailed(
                    f"{fn.__qualname__} is a generator (it yields), whose body runs only when iterated: run as"
                    " an operation, a function returns its result"
                )
            kwargs = p.model_dump() if isinstance(p, AnyParams) else {k: getattr(p, k) for k in type(p).model_fields}
            if ctx.resuming and ctx.done:
                # The function keeps no state the engine can give back: resumed, it starts over. The resume
                # said "resuming from checkpoint 1 (34 items done)" and the function ran those 34 again, its
                # progress going back from 34 to 1, without a word.
                ctx.log.warning(
                    f"{fn.__name__}() (@migrate_timeout_operation) cannot resume from a checkpoint: it starts"
                    f" again from the beginning, and the {ctx.done} items done before are done again"
                )
                ctx.progress(0)
            first_total = estimated_items if estimated_items is not None else (None if takes_callback else 1)
            if ctx.total is None and first_total is not None:
                ctx.progress(0, total=first_total)
            if takes_callback:
                result = await _awaited(fn(**kwargs, progress_callback=progress_reporter(ctx)))
            else:
                import asyncio  # running: loaded (not at import: a submit checks params without a loop)

                beat = asyncio.create_task(_heartbeat(ctx))
                try:
                    result = await _awaited(fn(**kwargs))
                finally:
                    beat.cancel()
            if ctx.total is not None and ctx.done < ctx.total:
                ctx.progress(ctx.total)  # it returned: all done (the seed's last call says i = 99 of 100)
            return result

        handler.__module__ = fn.__module__
        handler.__doc__ = fn.__doc__
        _operation(type_, model, None, estimated_items, fn)(handler)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                return await fn(*args, **kwargs)

        else:  # a plain ``def``: its callers get what they got (an async wrapper handed them a coroutine)

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return fn(*args, **kwargs)

        wrapper.operation_type = type_  # type: ignore[attr-defined]
        return wrapper

    return deco


def signature_params(fn: Callable[..., Any]) -> type[BaseModel] | None:
    """A params model made from ``fn``'s signature (``progress_callback`` left out): its parameters, typed as
    annotated, required unless they have a default, and no other key. Without one, params that do not fit
    the function (a name missing or misspelt, a list given as a string) were taken at submit and stored,
    and the operation failed when it ran ("missing 1 required positional argument", on a worker, later).
    None (any JSON object, as before) for a function that takes ``*args``, ``**kwargs`` or positional-only
    parameters, or one whose names, annotations or defaults pydantic cannot model or JSON cannot hold."""
    try:
        hints = typing.get_type_hints(fn)
        fields: dict[str, Any] = {}
        for name, param in inspect.signature(fn).parameters.items():
            if name == "progress_callback":
                continue
            if param.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
                return None
            annotation = hints.get(name, Any)
            if param.default is inspect.Parameter.empty:
                fields[name] = (annotation, ...)
                continue
            try:
                TypeAdapter(annotation).validate_python(param.default)
            except ValidationError:  # ``patterns: List[str] = None``: the default is taken as given, as Python does
                annotation = annotation | None if param.default is None else Any
            json.dumps(TypeAdapter(annotation).dump_python(param.default, mode="json"))
            fields[name] = (annotation, param.default)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a name that shadows BaseModel's own (``json``, ``copy``)
            model = create_model(
                f"{fn.__name__}_params", __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields
            )
        model.model_json_schema()  # the API's schema and the launch form read it (a Callable has none)
    except Exception:  # whatever pydantic or typing refuses: the params stay any JSON object
        return None
    return model if set(model.model_fields) == set(fields) else None


async def _awaited(result: Any) -> Any:
    """What a migrated function returned, awaited when it is awaitable: a plain ``def`` returns its
    result itself (awaiting it failed the operation after the function had done its work: "object dict
    can't be used in 'await' expression")."""
    while inspect.isawaitable(result):
        result = await result
    return result


class _Reported:
    """What a progress callback returns: awaiting it is a no-op, so callers may await it (the seed) or not."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


_REPORTED = _Reported()


SEED_CALLBACK = ("current_step", "processed_items", "total_items", "performance_metrics", "status_message")
"""The seed's progress arguments in their order (``update_progress``'s, ``OperationProgress``'s names)."""


def progress_reporter(ctx: Any) -> Callable[..., _Reported]:
    """A ``progress_callback`` reporting to ``ctx`` in the seed's style, ``(step, done, total,
    performance_metrics=None, status_message=None)``, or the plain one, ``(done, total=None,
    message=None, **metrics)``: a first argument that is a string is a step name. The seed's style may
    name its arguments as the seed does (``current_step=..., processed_items=..., total_items=...``): they
    were taken as metrics, and the operation showed no progress and completed at "0/0 items"."""

    def report(done: Any, total: Any, step: str | None, message: Any) -> None:
        whole, fraction, count = _counts(done, total)
        ctx.progress(whole, total=count, step=step, message=message)
        if whole is not None:
            ctx.fraction = fraction

    def progress_callback(*args: Any, **kw: Any) -> _Reported:
        if (args and isinstance(args[0], str)) or (
            not args and "done" not in kw and ("processed_items" in kw or "current_step" in kw)
        ):
            seed = dict(zip(SEED_CALLBACK, args, strict=False))  # more than five: the rest ignored, as before
            metrics = {**(seed.get("performance_metrics") or {}), **(kw.pop("performance_metrics", None) or {})}
            seed.update((name, kw.pop(name)) for name in SEED_CALLBACK if name in kw)
            ctx.add_metrics(metrics)  # any names (a "total" in seconds): not as **kwargs of progress()
            report(
                seed.get("processed_items"),
                seed.get("total_items"),
                seed.get("current_step"),
                seed.get("status_message"),
            )
        else:
            done, total, message = (*args, None, None, None)[:3]
            done, total = kw.pop("done", done), kw.pop("total", total)
            message = kw.pop("message", message)
            ctx.add_metrics(kw)  # the rest are metrics, whatever their names ("step" too)
            report(done, total, None, message)
        return _REPORTED

    return progress_callback


def _counts(done: Any, total: Any) -> tuple[int | None, float, int | None]:
    """A migrated function's ``(done, total)`` as the engine counts items: (whole items done, the part of the
    next one done, total). A function may report fractions (0.5 of 1, 2.5 of 10): they were cut to whole
    items (0 of 1, 2 of 10: 0% and 20% shown for 50% and 25%). A fractional total is rounded (at least 1),
    and ``done`` scaled with it, so the percent is the one reported. Whatever ``float()`` reads is taken
    (a numpy number, a Decimal, "2.5"), as ``int()`` took it; ``ctx.progress`` refuses what is no count."""
    if total is not None and not isinstance(total, int):
        exact = float(total)
        total = int(exact) if exact.is_integer() else max(1, round(exact))
        if done is not None and total != exact:
            done = float(done) * total / exact
    if done is None or isinstance(done, int):
        return done, 0.0, total
    value = float(done)
    whole = math.floor(value)
    return whole, value - whole, total


HEARTBEAT = 5.0
"""Seconds between the signs of life of a migrated function that cannot report progress."""


async def _heartbeat(ctx: Any) -> None:
    """A migrated function without a progress callback cannot say it is alive: while it runs, the
    elapsed seconds are its progress (so only its deadline ends it, never the stall timeout)."""
    import asyncio

    start = time.monotonic()
    while True:
        await asyncio.sleep(HEARTBEAT)
        if ctx.cancelled:
            return  # the stop reaches the function when the engine cancels it
        ctx.progress(elapsed=round(time.monotonic() - start))
