"""Handlers by operation type: ``@operation``, plugins, and the seed's migration decorator."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .models import InvalidInput
from .profiles import SEED_PROFILES, one_line

log = logging.getLogger("outlast.registry")

Handler = Callable[..., Awaitable[Any]]
ENTRY_POINT_GROUP = "outlast.operations"
BUILTIN_MODULES = (
    "engine.operations.demo",
    "engine.operations.command",
    "engine.operations.indexing",
    "engine.operations.test_suite",
    "engine.operations.security_scan",
    "engine.operations.backup",
    "engine.operations.code_analysis",
    "engine.operations.dependency_analysis",
    "engine.operations.test_profiles",
    "engine.operations.profiling",
)


class AnyParams(BaseModel):
    """Params of a handler that declares no model: any JSON object."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class HandlerSpec:
    type: str
    fn: Handler
    params: type[BaseModel]
    description: str
    source: str
    """'builtin', 'plugin:NAME' or the defining module."""

    def parse_params(self, raw: dict[str, Any]) -> BaseModel:
        try:
            return self.params.model_validate(raw)
        except ValidationError as e:
            raise InvalidInput(f"{self.type} params: {one_line(e)}") from None


_HANDLERS: dict[str, HandlerSpec] = {}
_loaded_builtins = False
_loaded_entry_points = False


def operation(
    type_: str, params: type[BaseModel] | None = None, description: str | None = None
) -> Callable[[Handler], Handler]:
    """Register ``async def handler(ctx, params)`` for an operation type."""

    def deco(fn: Handler) -> Handler:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"operation {type_!r}: handler {fn.__qualname__} must be async def")
        doc = description or (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
        module = fn.__module__
        source = "builtin" if module.startswith("engine.operations") else module
        _HANDLERS[type_] = HandlerSpec(type_, fn, params or AnyParams, doc, source)
        return fn

    return deco


def load_builtins() -> None:
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    for name in BUILTIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise


def load_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:
            log.warning("plugin %s (%s) failed to load: %s", ep.name, ep.value, e)
            continue
        if callable(obj) and not inspect.iscoroutinefunction(obj) and not isinstance(obj, type):
            with _suppress_all():
                obj()  # a register() hook


_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def load_plugin(module: str) -> None:
    """Import a plugin module by name (``--plugin``); its ``@operation`` calls register handlers.

    Whatever goes wrong while importing it (a syntax error, an exception, even ``sys.exit``) is
    InvalidInput naming the module and the error in one line, never a crash or a silent exit.
    """
    if not _MODULE_RE.match(module):
        raise InvalidInput(f"plugin {module!r}: not a module name (dotted Python names, e.g. mypkg.operations)")
    try:
        importlib.import_module(module)
    except SystemExit as e:
        raise InvalidInput(f"plugin {module!r} called exit({e.code!r}) while being imported") from None
    except SyntaxError as e:
        where = f"{Path(e.filename).name}, line {e.lineno}" if e.filename else f"line {e.lineno}"
        raise InvalidInput(f"plugin {module!r} has a syntax error: {e.msg} ({where})") from None
    except ImportError as e:
        raise InvalidInput(f"plugin {module!r} cannot be imported: {_first_line(e)}") from None
    except Exception as e:
        raise InvalidInput(
            f"plugin {module!r} failed while being imported: {type(e).__name__}: {_first_line(e)}"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def ensure_loaded(plugins: list[str] | tuple[str, ...] = ()) -> None:
    load_builtins()
    load_entry_points()
    for p in plugins:
        load_plugin(p)


def get_handler(type_: str) -> HandlerSpec:
    ensure_loaded()
    spec = _HANDLERS.get(type_)
    if spec is None:
        known = ", ".join(sorted(_HANDLERS)) or "none"
        raise InvalidInput(f"unknown operation type {type_!r} (known: {known})")
    return spec


def handlers() -> dict[str, HandlerSpec]:
    ensure_loaded()
    return dict(sorted(_HANDLERS.items()))


def known_types() -> list[str]:
    """Every type with a handler or a seed profile."""
    return sorted(set(handlers()) | set(SEED_PROFILES))


class _suppress_all:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type | None, e: BaseException | None, tb: object) -> bool:
        if e is not None and isinstance(e, Exception):
            log.warning("plugin hook failed: %s", e)
            return True
        return False


def migrate_timeout_operation(
    type_: str, estimated_items: int | None = None, params: type[BaseModel] | None = None
) -> Callable[[Handler], Handler]:
    """Turn ``async def f(..., progress_callback=None)`` into an operation, leaving its callers alone.

    Called directly, ``f`` behaves exactly as before. Run as an operation (``outlast run TYPE``),
    its params become keyword arguments and ``progress_callback(done, total=None, message=None)``
    reports to the engine. ``estimated_items`` seeds the timeout until the real total is known.
    """
    type_ = getattr(type_, "value", type_)

    def deco(fn: Handler) -> Handler:
        if "progress_callback" not in inspect.signature(fn).parameters:
            raise TypeError(f"{fn.__qualname__} has no progress_callback parameter to migrate")

        async def handler(ctx: Any, p: BaseModel) -> Any:
            if estimated_items is not None and ctx.total is None:
                ctx.progress(0, total=estimated_items)

            def progress_callback(done: float, total: float | None = None, message: str | None = None, **kw: Any):
                ctx.progress(int(done), total=None if total is None else int(total), message=message, **kw)

            return await fn(**p.model_dump(), progress_callback=progress_callback)

        handler.__module__ = fn.__module__
        handler.__doc__ = fn.__doc__
        operation(type_, params=params)(handler)

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)

        wrapper.operation_type = type_  # type: ignore[attr-defined]
        return wrapper

    return deco
