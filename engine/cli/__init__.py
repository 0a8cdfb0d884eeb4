"""``outlast``: the headless command line, scriptable over SSH (the package's modules, by role):

- ``root``: the command group, the commands that run work, and ``main`` (errors to exit codes);
- ``read``: ls, show, watch, logs, checkpoints, types, config; ``control``: cancel, pause, resume, priority;
- ``common``: global options, settings, a store session, specs; ``run``: foreground, detached, worker;
- ``follow``: following an operation (plain lines, JSON); ``live``: the rich panel (terminals only);
- ``format``: plain-text rendering (tables, details, one-line progress).
- ``slots``: the store-wide slot count (``outlast slots``).

Importing this package loads nothing but this file: ``main`` imports the command line when called (with the
cycle collector paused: ``collector_paused``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator


def main(argv: list[str] | None = None) -> None:
    """The ``outlast`` console script (see ``root.main``)."""
    _closed_stdio_to_devnull()
    if argv is None:  # the process's own command line: not a caller's in-process call
        _init_when_pid_1()
    _unencodable_escaped()
    try:
        with collector_paused():  # click and the group's modules: imports, next to no garbage
            from .root import main as run
    except KeyboardInterrupt:  # Ctrl-C as it starts: before root.main can say it in one line
        import sys

        print("outlast: stopped", file=sys.stderr)
        raise SystemExit(130) from None  # ExitCode.WATCH_STOPPED, as root.main exits on Ctrl-C
    try:
        run(argv)
    finally:
        import sys

        threads = sys.modules.get("engine.threads")  # loaded by what ran an event loop
        if threads is not None:
            threads.outcome_released()  # to a caller in this process (a test's): signals as they were


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off inside, and what was made inside frozen when it is back on: importing the
    settings, the models and the handler makes objects by the hundred thousand and almost no garbage (a
    submit's 80-90 collections freed about 700 objects), and collecting anyway, then walking all of it again
    at each full collection, cost 6% of a quick submit's instructions. Every command starts up inside them:
    the command line's import (click, the group, the command's module), the settings' load (``App.settings``)
    and a session's engine (``common.session``); ``ls`` and ``--help`` spent a sixth of their CPU collecting."""
    import gc

    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.freeze()  # what the start-up made stays (modules, models): not traversed again by each full collection
            gc.enable()


def _closed_stdio_to_devnull() -> None:
    """A standard stream that was closed when ``outlast`` started (``outlast worker >&-``, a daemonizer) is
    opened on /dev/null, before anything else opens a file. Python leaves ``sys.stdout`` None then, and
    every command died with an internal error before any work ran; worse, the next file opened takes the
    free descriptor, and what a child writes to its stdout would go into that file (the store)."""
    import os
    import sys

    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            # For the whole process: closed at its exit, as Python's own standard streams are.
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", encoding="utf-8", closefd=False))  # noqa: SIM115


def _init_when_pid_1() -> None:
    """As PID 1 (a container started without an init: ``docker run`` without ``--init``, ``unshare --pid``),
    ``outlast`` is the init of its PID namespace: every process a command leaves behind (put in the
    background, or its shell killed first by a pause, a cancel, a timeout) is handed to it, and it never
    reaped them: ten zombies after five commands, for as long as a worker ran, each holding a slot of the
    container's pids limit. Here the first process stays the init, reaping every child and passing on the
    signals sent to it (an init's unhandled signals are dropped), and a child of it runs the command; its exit
    status is the process's. Returns in that child (and at once when not PID 1).

    A signal the terminal sent (Ctrl-C, Ctrl-Z, a resize: the kernel's, to the whole foreground group) reached
    the child too: passed on again, it was a second Ctrl-C, which forces a stop."""
    import os
    import signal

    if os.getpid() != 1:
        return
    passed = {
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGWINCH,
        signal.SIGTSTP,
        signal.SIGCONT,
    }
    waited = passed | {signal.SIGCHLD}
    # What a terminal sends its whole foreground group, the child with it (a hang-up goes to the session's
    # leader alone: passed on).
    keyboard = {signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGWINCH}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)  # from before the fork: none lost in between
    try:
        child = os.fork()
    except OSError:  # no process to be had (a pids limit): the command runs as it did, as the init
        child = 0
    if child == 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, waited)
        return
    while True:
        info = signal.sigwaitinfo(waited)
        if info.si_signo != signal.SIGCHLD:
            if info.si_code != _SI_KERNEL or info.si_signo not in keyboard:  # the terminal's: to its group
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, info.si_signo)
            continue
        while True:  # each orphan as it ends: one SIGCHLD may stand for several
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if pid == child:
                code = os.waitstatus_to_exitcode(status)
                os._exit(code if code >= 0 else 128 - code)  # as a shell says a process killed by a signal


_SI_KERNEL = 0x80
"""``si_code`` of a signal the kernel sent (Linux): the terminal's, to its foreground process group."""


def _unencodable_escaped() -> None:
    """What the terminal's encoding cannot show is written escaped (``\\u2713``), not raised: under a
    latin-1 or ASCII locale (``PYTHONIOENCODING``, an old server's ``LANG``) a name with a character
    outside it made ``outlast ls`` an internal error, and ``outlast run`` died after its submit, leaving
    a queued operation nobody ran. Python's streams under the C locale with its UTF-8 mode off
    (``PYTHONUTF8=0``) are ASCII with ``surrogateescape``, which raises the same for any other character
    (the lone surrogates it exists for are escaped before anything is written: ``humanize.UNSAFE``)."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) in ("strict", "surrogateescape"):
            reconfigure(errors="backslashreplace")


def __getattr__(name: str) -> Any:
    """``engine.cli.cli`` (the click group) on first use."""
    if name == "cli":
        from .root import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
