"""Exit codes of the ``outlast`` command: one table, one mapping from status or error to code.

An engine module (not the CLI's): the command line and the HTTP server both map outcomes with it.

Scripts rely on these numbers; they are printed by ``outlast --help`` and listed in the README.
"""

from __future__ import annotations

import signal
from enum import IntEnum

from .errors import Conflict, InvalidInput, NotFound, StoreError
from .lifecycle import Status


class ExitCode(IntEnum):
    OK = 0
    """The command did what was asked; for run/resume/watch: the operation completed."""
    FAILED = 1
    """The operation failed (an error, or more item failures than its failure_threshold)."""
    USAGE = 2
    """Bad usage or input: unknown option or type, bad --param, bad JSON, bad config, ambiguous id."""
    NOT_FOUND = 3
    """No operation (or checkpoint) matches the id."""
    CANCELLED = 4
    """The operation was cancelled."""
    TIMED_OUT = 5
    """The operation passed its deadline or stalled (resumable)."""
    PAUSED = 6
    """The operation is paused or interrupted (Ctrl-C, SIGTERM, SIGHUP, pause): resume it."""
    CONFLICT = 7
    """The operation is not in a state that allows the request (resume a completed one, ...); an idempotency key
    reused for another request (the API's 409 for both)."""
    STORE = 8
    """The store cannot be opened, read or written (corrupt state dir, newer schema, unreachable Redis, disk
    full or read-only: the running operation was left interrupted, resumable)."""
    INTERNAL = 70
    """A bug in Outlast (OUTLAST_DEBUG=1 shows the traceback)."""
    OUTPUT_LOST = 74
    """What the command printed could not all be written to the file its output goes to (a full disk, an I/O
    error): that file is incomplete (sysexits' EX_IOERR). Not for a reader that went away (a closed pipe)."""
    WATCH_HUNG_UP = 129
    """Watching or following stopped on SIGHUP (the terminal hung up); the operation was left as it was.
    128 + SIGHUP, as a shell reports a process a hang-up ended."""
    WATCH_STOPPED = 130
    """You stopped watching or following with Ctrl-C; the operation was left as it was."""
    READER_GONE = 141
    """What read watch's or logs --follow's output went away (``| head``): it stopped following, the
    operation was left as it was. 128 + SIGPIPE: the status a shell reports for any writer a closed pipe
    ends (``yes | head``; ``tail -f | head``), so ``set -o pipefail`` scripts treat it as they treat those;
    not 0, which says the operation completed, nor 130, which says Ctrl-C."""
    WATCH_TERMINATED = 143
    """Watching or following stopped on SIGTERM (``kill``, a supervisor, ``timeout``); the operation was left
    as it was. 128 + SIGTERM, as a shell reports a process SIGTERM ended: not 130, which says Ctrl-C."""


_BY_STATUS = {
    Status.COMPLETED: ExitCode.OK,
    Status.FAILED: ExitCode.FAILED,
    Status.CANCELLED: ExitCode.CANCELLED,
    Status.TIMED_OUT: ExitCode.TIMED_OUT,
    Status.PAUSED: ExitCode.PAUSED,
    Status.INTERRUPTED: ExitCode.PAUSED,
    # Not settled: a follow that ends on these did not see the end (should not happen).
    Status.QUEUED: ExitCode.PAUSED,
    Status.RUNNING: ExitCode.PAUSED,
}

_BY_ERROR: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (NotFound, ExitCode.NOT_FOUND),
    (Conflict, ExitCode.CONFLICT),
    (InvalidInput, ExitCode.USAGE),
    (StoreError, ExitCode.STORE),
)


def code_for_status(status: Status) -> ExitCode:
    """The exit code of a command that followed an operation until it settled with ``status``."""
    return _BY_STATUS[status]


def code_for_error(exc: BaseException) -> ExitCode | None:
    """The exit code for an error the engine raises on purpose; None for an unexpected one."""
    for kind, code in _BY_ERROR:
        if isinstance(exc, kind):
            return code
    return None


def code_for_stopped_watch(sig: int | None) -> ExitCode:
    """The exit code of a command that stopped following work (``watch``, ``logs --follow``, a ``run`` whose
    operation runs in a worker) on the signal ``sig``: 128 + it; Ctrl-C's (130) when none is known."""
    if sig == signal.SIGTERM:
        return ExitCode.WATCH_TERMINATED
    if sig == signal.SIGHUP:
        return ExitCode.WATCH_HUNG_UP
    return ExitCode.WATCH_STOPPED


def exit_codes_help() -> str:
    """The table for ``outlast --help`` and the README."""
    rows = [
        (ExitCode.OK, "completed (or the command succeeded)"),
        (ExitCode.FAILED, "the operation failed"),
        (ExitCode.USAGE, "bad usage or input (option, type, --param, JSON, config, ambiguous id)"),
        (ExitCode.NOT_FOUND, "no operation or checkpoint matches the id"),
        (ExitCode.CANCELLED, "the operation was cancelled"),
        (ExitCode.TIMED_OUT, "the operation timed out or stalled (resumable)"),
        (ExitCode.PAUSED, "paused or interrupted (Ctrl-C, SIGTERM, SIGHUP): resume it"),
        (ExitCode.CONFLICT, "not allowed in the operation's current state; an idempotency key reused"),
        (ExitCode.STORE, "the store cannot be opened or written (corrupt state dir, disk full, Redis down)"),
        (ExitCode.INTERNAL, "a bug in Outlast (OUTLAST_DEBUG=1 shows the traceback)"),
        (ExitCode.OUTPUT_LOST, "the output could not all be written to its file (disk full): it is incomplete"),
        (ExitCode.WATCH_HUNG_UP, "watch/logs --follow stopped by SIGHUP (the terminal hung up)"),
        (ExitCode.WATCH_STOPPED, "you stopped watch/logs --follow with Ctrl-C"),
        (ExitCode.READER_GONE, "watch/logs --follow stopped: what read its output went away (| head)"),
        (ExitCode.WATCH_TERMINATED, "watch/logs --follow stopped by SIGTERM (kill, a supervisor)"),
    ]
    return "\n".join(f"{int(c):>5}  {text}" for c, text in rows)
