"""Where an API client may make the server write: the state dir's ``outputs`` and the allowed roots.

A client of ``outlast serve`` is not the user who started it, so a path it names for an output
(an index, a scan report, a backup destination) must stay where the server's user said it may
write. The path, with ``~``, ``..`` and symbolic links resolved (a relative one against the server's
working directory, as the params models do), must fall under one of the roots, or the request is
refused (403) before anything is stored; it is stored resolved.

Code-running types (``command``, ``comprehensive_test_suite``) are not confined here: they are
refused without ``--allow-commands``, and with it the code they run can write anywhere anyway.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

WRITTEN: dict[str, tuple[str, ...]] = {
    "codebase_indexing": ("output",),
    "security_scan": ("output",),
    "backup_operation": ("destination",),
    "migration_operation": ("database",),
    "cleanup_operation": ("root", "manifest", "state_dir"),  # root: where it deletes
    "monitoring_collection": ("output",),
    "kb_population": ("kb",),
    "kb_optimization": ("kb",),
    "vector_indexing": ("kb",),
    "semantic_analysis": ("kb", "output"),
    "code_analysis": ("output",),
    "dependency_analysis": ("output",),
}
"""The params of each built-in type that name a place the operation writes to."""

SIBLING_SUFFIXES: dict[str, tuple[str, ...]] = {"security_scan": (".json", ".sarif")}
"""Types that also write beside their output, with these suffixes (a scan's format=both)."""


def outputs_dir(store: Any, state_dir: str | Path) -> Path:
    """The outputs directory operations default to: ``outputs`` in the store's state dir, else the settings'."""
    base = getattr(store, "state_dir", None) or state_dir
    return Path(base).expanduser() / "outputs"


class OutputRoots:
    """The directories API clients may write under: the outputs dir, then the allowed roots."""

    def __init__(self, outputs: Path, extra: Sequence[str | Path] = ()) -> None:
        self.outputs = outputs
        self.roots = tuple(Path(os.path.realpath(Path(r).expanduser())) for r in (outputs, *extra))

    def describe(self) -> str:
        return ", ".join(str(r) for r in self.roots)

    def pinned(self, type_: str, params: Mapping[str, Any]) -> dict[str, str]:
        """The output params of ``type_`` that are set, as the real absolute paths that were checked.

        Stored that way, an operation writes where it was checked to write, whichever process runs it
        and from whatever working directory.
        """
        out = {}
        for f in WRITTEN.get(type_, ()):
            real = real_path(params.get(f))
            if real is not None:
                out[f] = str(real)
        return out

    def refusal(self, type_: str, params: Mapping[str, Any]) -> str | None:
        """One line naming the field when an output of ``type_`` in ``params`` (as sent, or as validated)
        resolves outside every root (or cannot be resolved at all)."""
        for f in WRITTEN.get(type_, ()):
            value = params.get(f)
            if isinstance(value, str) and value and not self.allows(type_, value):
                return (
                    f"params.{f}: {value!r} is outside the directories API clients may write to "
                    f"({self.describe()}); give a path under one of them, or start the server with "
                    "--allow-output-root DIR"
                )
        return None

    def allows(self, type_: str, value: str) -> bool:
        """What ``type_`` writes for the output ``value`` (siblings included) is all under the roots."""
        real = real_path(value)
        if real is None or not self.inside(real):
            return False
        siblings = [real_path(str(real.with_suffix(s))) for s in SIBLING_SUFFIXES.get(type_, ())] if real.name else []
        return all(p is not None and self.inside(p) for p in siblings)

    def inside(self, real: Path) -> bool:
        """``real`` (resolved) is one of the roots or under one."""
        return any(real == r or real.is_relative_to(r) for r in self.roots)


def real_path(value: Any) -> Path | None:
    """``value`` with ``~``, ``..`` and every symbolic link resolved; None when it is no path (not a
    string, empty, a NUL byte, an unknown ``~user``)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return Path(os.path.realpath(Path(value).expanduser()))
    except (ValueError, OSError, RuntimeError):
        return None
