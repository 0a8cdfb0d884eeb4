"""``outlast``: the headless command line, scriptable over SSH (the package's modules, by role):

- ``root``: the command group, the commands that run work, and ``main`` (errors to exit codes);
- ``read``: ls, show, watch, logs, checkpoints, types, config; ``control``: cancel, pause, resume, priority;
- ``common``: global options, settings, a store session, specs; ``run``: foreground, detached, worker;
- ``follow``: following an operation (plain lines, JSON); ``live``: the rich panel (terminals only);
- ``format``: plain-text rendering (tables, details, one-line progress).
- ``slots``: the store-wide slot count (``outlast slots``).

Importing this package loads nothing but this file: ``main`` imports the command line when called.
"""

from __future__ import annotations

from typing import Any


def main(argv: list[str] | None = None) -> None:
    """The ``outlast`` console script (see ``root.main``)."""
    from .root import main as run

    run(argv)


def __getattr__(name: str) -> Any:
    """``engine.cli.cli`` (the click group) on first use."""
    if name == "cli":
        from .root import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
