"""When the machine runs short: no file descriptor left (``ulimit -n``), no process or thread to be had
(``ulimit -u``, a container's pids limit), no memory to fork. Whether this process has descriptors left
for one more operation (``FileBudget``), how many may run at once after a fork found no process to be had
(``ProcessBudget``), and whether an error says it ran short (``ran_short``): the
machine's state, not the operation's fault, so the attempt is queued again (``Attempt``), not failed.
Standard library only: the context imports it."""

from __future__ import annotations

import errno
import os
import re
import resource
import time
from collections.abc import Callable

OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE})
SHORT = OUT_OF_FILES | {errno.EAGAIN, errno.ENOMEM}
"""Also EAGAIN and ENOMEM: what fork answers when no process or no memory for one is to be had."""
NO_THREAD = "can't start new thread"
"""Python's RuntimeError when no thread can be started (threads count as processes against the limit)."""


class RanShort(RuntimeError):
    """An item's failure whose text says the machine ran short (``OperationContext.fail``)."""


class BegunWhenShort(Exception):
    """Mixed into a failure of work that had begun when the machine ran short (a command forked, then killed as
    asyncio could not watch it): not queued again as a shortage's work is, which never ran (a command would
    run twice), though the worker still runs fewer at once (``short_of_processes`` looks below it)."""


class OutOfMemory(MemoryError):
    """The engine's own work for an operation found no memory (recording an item done, encoding a checkpoint):
    the machine ran short, not the handler. Raised into the handler at the safe point where it happened; the
    attempt is queued again as for any shortage, from its newest consistent checkpoint. A bare MemoryError
    there blamed the handler's ``async for`` line, and a failure checkpoint held an item's effects without its
    key (the resume ran it again)."""


def memory_left() -> int | None:
    """Bytes this process may still map under its address-space limit (``ulimit -v``); None with no limit (or
    where the size cannot be read). Without such a limit an allocation seldom fails: the kernel's OOM killer
    ends a process instead (a SIGKILL, which a resume covers)."""
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm", "rb") as f:
            size = int(f.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None
    return soft - size


def ran_short(e: BaseException | None, begun: bool = False) -> BaseException | None:
    """The error behind ``e`` (itself, or what it was raised from) that says the machine ran short; below a
    ``BegunWhenShort`` only with ``begun``."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, BegunWhenShort) and not begun:
            return None
        if _says_short(e):
            return e
        seen.add(id(e))
        # An error raised "from None" inside an ``except`` for one (a lock's EAGAIN answered "being written by
        # another operation") says it was not caused by it: it was retried five times as a shortage.
        e = e.__cause__ if e.__cause__ is not None else None if e.__suppress_context__ else e.__context__
    return None


def _says_short(e: BaseException) -> bool:
    """Asked of whatever a handler raised: an errno or a text that cannot be read is not a shortage."""
    try:
        if isinstance(e, (RanShort, OutOfMemory)) or (isinstance(e, OSError) and e.errno in SHORT):
            return True
        return isinstance(e, RuntimeError) and str(e) == NO_THREAD
    except Exception:
        return False


SAID_SHORT = re.compile(rf"^(\w*Error: )?(\[Errno ({'|'.join(map(str, sorted(SHORT)))})\]|{NO_THREAD}$)")
"""The text of such an error as an operation's worker thread or process sends it back: ``str(e)``, or
``f"{type(e).__name__}: {e}"``. At the start only: an item's error that quotes one further on (a test of
the user's whose own failure says "[Errno 11]") is the item's, not the machine's."""


def ran_short_said(error: object) -> bool:
    """Whether an item's error says the machine ran short: an exception (``ran_short``) or its text."""
    if isinstance(error, str):
        return SAID_SHORT.match(error) is not None
    return isinstance(error, BaseException) and ran_short(error) is not None


def out_of_files(e: BaseException | None) -> OSError | None:
    """The EMFILE or ENFILE behind ``e``: this process, or the whole system, had no descriptor left."""
    found = ran_short(e)
    return found if isinstance(found, OSError) and found.errno in OUT_OF_FILES else None


def files_short_opening(what: str, e: BaseException) -> OSError | None:
    """For an open that failed without an errno (SQLite's "unable to open database file", SQLITE_CANTOPEN): an
    EMFILE saying this process ran out of file descriptors opening ``what``, when it has none left now (one is
    tried), else None. Asked before what was opened is closed: once closed, there is room again. A shortage
    (``ran_short``): the attempt is queued again, not failed, as for any other EMFILE."""
    if getattr(e, "sqlite_errorname", None) != "SQLITE_CANTOPEN":
        return None
    try:
        os.close(os.open(os.devnull, os.O_RDONLY))
    except OSError as probe:
        if probe.errno in OUT_OF_FILES:
            return files_short(probe.errno, what, str(e))
    return None


def files_short(code: int, what: str, detail: str = "") -> OSError:
    """The EMFILE (ENFILE: ``code``) of an open of ``what`` that found no file descriptor left, in one line
    naming the limit (``detail``: the error it stands for, when it says more than the errno)."""
    head = "Too many open files in system" if code == errno.ENFILE else "Too many open files"
    return OSError(code, f"{head}: {files_short_why(code)} opening {what}{f' ({detail})' if detail else ''}")


def files_short_why(code: int) -> str:
    """Who ran out of file descriptors (``code``: EMFILE, this process; ENFILE, the system), and its limit."""
    if code == errno.ENFILE:
        return "the system ran out of file descriptors"
    limit = open_files_limit()
    return "this process ran out of file descriptors" + (f" (ulimit -n {limit}: raise it)" if limit is not None else "")


def open_files_limit() -> int | None:
    """How many file descriptors this process may have open (its soft ``ulimit -n``); None: no limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def count_open_files() -> int | None:
    """File descriptors this process has open now (None where the system does not list them)."""
    for where in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(where)) - 1  # listdir's own descriptor of the directory
        except OSError:
            continue
    return None


class FileBudget:
    """Whether this process has file descriptors left for one more operation (``ulimit -n``).

    A running operation holds a lock file and opens its log now and then; its handler opens what it
    reads, its pipes, its pool. A worker that started 30 operations under ``ulimit -n 40`` failed 30 of
    them at once ("Too many open files" importing their handler): now it starts no more while fewer
    than ``reserve`` descriptors are left (the scheduler says so). Counting lists ``/proc/self/fd`` (about
    40 us for 60 descriptors, 500 us for 1,000): done at most once a second while far from the limit,
    at most every ``NEAR_EVERY`` seconds when near it (a settle looks for room each time: a thousand
    looks a second near a limit of 1,024 would list 1,000 descriptors each); between counts each start
    is taken to cost ``PER_OP``, and what ended is not seen until the next count."""

    PER_OP = 2
    NEAR_EVERY = 0.05

    def __init__(
        self,
        limit: int | None = None,
        count: Callable[[], int | None] = count_open_files,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit = limit if limit is not None else open_files_limit()
        self.reserve = max(16, (limit or 0) // 10)
        """Descriptors kept for the store, the logs and what running handlers open next."""
        self._count = count
        self._clock = clock
        self._counted = -float("inf")
        self.in_use = 0
        """Descriptors open at the last count, plus ``PER_OP`` for each start since."""

    def room(self, running: int) -> int:
        """How many more operations may start now, with ``running`` running here (a large number when the
        limit is far). One at least while none runs: nothing would end to make room (under a tight
        ``ulimit -n`` the reserve alone left none, and a worker of one slot waited for ever)."""
        if running == 0:
            return max(1, self._room())
        return self._room()

    def _room(self) -> int:
        if self.limit is None:
            return 1 << 30
        now = self._clock()
        near = self.in_use + self.reserve + self.PER_OP > self.limit
        if now - self._counted >= (self.NEAR_EVERY if near else 1.0):
            n = self._count()
            if n is None:
                self.limit = None
                return 1 << 30
            self.in_use, self._counted = n, now
        return max(0, (self.limit - self.reserve - self.in_use) // self.PER_OP)

    def started(self, n: int = 1) -> None:
        self.in_use += n * self.PER_OP

    def blocked(self, running: int) -> str | None:
        if self.room(running) > 0:
            return None
        return (
            f"open files near this process's limit of {self.limit} (ulimit -n); what runs goes on,"
            " the rest waits: raise the limit or lower --concurrency"
        )


def short_of_processes(e: BaseException | None) -> bool:
    """Whether ``e`` says the machine had no process, thread or memory to give (not a descriptor: ``FileBudget``
    counts those; nor the engine's own ``OutOfMemory``, which no fork or thread was refused for)."""
    short = ran_short(e, begun=True)
    return (
        short is not None
        and not isinstance(short, OutOfMemory)
        and not (isinstance(short, OSError) and short.errno in OUT_OF_FILES)
    )


class ProcessBudget:
    """How many operations may run at once after one ran short of processes (a fork or a thread refused:
    EAGAIN, ENOMEM, under a container's pids limit or ``ulimit -u``): as many as ran then, less the one
    that ran short, until HOLD seconds pass without another shortage (each lowers it again); one at
    least. Nothing else tells how many processes are left: a worker of 12 slots under a pids limit went
    on starting 12 commands, and under load some ran short on each of their five attempts and failed."""

    HOLD = 30.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.ceiling: int | None = None
        self._until = -float("inf")

    def short(self, running: int) -> None:
        """An attempt ran short of processes with ``running`` running here (itself among them)."""
        now = self._clock()
        at_most = max(1, running - 1)
        self.ceiling = at_most if self.ceiling is None or now >= self._until else min(self.ceiling, at_most)
        self._until = now + self.HOLD

    def room(self, running: int) -> int:
        """How many more may start now, with ``running`` running here (a large number when none ran short)."""
        if self.ceiling is not None and self._clock() >= self._until:
            self.ceiling = None
        if self.ceiling is None:
            return 1 << 30
        return max(1 if running == 0 else 0, self.ceiling - running)

    def blocked(self, running: int) -> str | None:
        if self.room(running) > 0:
            return None
        return (
            f"a fork or a thread found no process to be had (a pids limit, ulimit -u): running at most"
            f" {self.ceiling} at once until {self.HOLD:g}s pass without another"
        )
