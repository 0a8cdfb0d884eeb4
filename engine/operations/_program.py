"""The params of an operation that runs a program (a Python script, pytest): its arguments, its environment
and its interpreter, checked at submit. Apart from ``_common``: worker processes import that one, and this one
imports pydantic."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field


def split_args(value: Any) -> Any:
    """``-p args='-k fast'`` from the command line is one string: split as a shell would (a ValueError
    saying what to do when it cannot be: pydantic's line was shlex's bare "No closing quotation"). A string
    that is a JSON list is that list (``-p args='["a b"]'``: the command line hands the text over as typed)."""
    import json
    import shlex

    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):  # a shell line starting so (``[ -f x ]``) is no JSON
        try:
            listed = json.loads(value)
        except (ValueError, RecursionError):
            pass
        else:
            if isinstance(listed, list):
                return listed
    try:
        return shlex.split(value)
    except ValueError as e:
        raise ValueError(
            f"cannot be split into words as a shell would ({e}): close its quotes, or give a JSON list"
        ) from None


def program_args(value: list[str]) -> list[str]:
    """``value`` unless an argument holds a NUL, which no program can be given (a ValueError naming it)."""
    for i, arg in enumerate(value):
        if "\0" in arg:
            raise ValueError(f"args[{i}] contains a NUL character")
    return value


_NOT_IN_NAME = re.compile(r"[=\x00-\x1f\x7f-\x9f]")
"""What no variable name holds: ``=`` and NUL, which ``execve`` cannot pass in a name, and the other control
characters (C0, DEL, C1). ``execve`` passes those, but no shell can name such a variable, and a newline cut
the name in two in every listing by lines (``env``, ``export -p``, a log): "A\nB=x" read as "A" and "B=x"."""


def env_vars(value: dict[str, str]) -> dict[str, str]:
    """``value`` when each name can be a variable of a program's environment and no value holds a NUL, else
    a ValueError naming it: stored as they were, they failed each run at its start ("embedded null byte",
    "illegal environment variable name"), and the operation with "no run finished"."""
    for name, v in value.items():
        if not name or _NOT_IN_NAME.search(name):
            raise ValueError(f"{name!r} is not a variable name (empty, or with = or a control character in it)")
        if "\0" in v:
            raise ValueError(f"{name} contains a NUL character")
    return value


def python_executable(value: str) -> str:
    """An interpreter by name or path, resolved on PATH, as an absolute path (the worker that runs it may
    run in another directory), or a ValueError."""
    import shutil

    found = shutil.which(value)
    if found is None:
        raise ValueError(f"python {value!r} is not an executable")
    return os.path.abspath(found)


ProgramArgs = Annotated[
    list[str], BeforeValidator(split_args), AfterValidator(program_args), Field(json_schema_extra={"split": "shell"})
]
"""A program's arguments: a list, or one string split as a shell does (``split_args``), no NUL in any. The
schema's ``split`` tells a form to hand the text over as it was typed (split at commas, the dashboard's
``-m "not slow"`` was one argument, where the command line's ``-p args='-m "not slow"'`` was two)."""
EnvVars = Annotated[dict[str, str], AfterValidator(env_vars)]
"""Extra environment variables of a program (``env_vars``)."""
PythonExecutable = Annotated[str, AfterValidator(python_executable)]
"""An interpreter by name or path, stored as an absolute path (``python_executable``)."""
