"""The subprocesses of an attempt, and those an earlier attempt left running.

Every subprocess a handler spawns runs in its own process group (killed with its children on stop) and
carries the operation id and attempt in its environment: a SIGKILLed engine's shell children outlive it
(parent 1), and the next attempt (or the engine that finds the orphan) finds and kills them instead of
running the work twice side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any

from .offload import off_loop

ENV_OPERATION = "OUTLAST_OPERATION_ID"
ENV_ATTEMPT = "OUTLAST_ATTEMPT"
ENV_ENGINE = "OUTLAST_ENGINE"
"""Set in an engine's own environment, so every process started from it carries it (``mark_engine``)."""
ENV_SPAWN = "OUTLAST_SPAWN"
"""Which spawn of this process started it: what a start that failed after its fork left running is found by."""
_spawns = itertools.count(1)


class StartedThenKilled(RuntimeError):
    """A subprocess was forked and ran its program, then its start failed (asyncio found no thread to watch it
    with: "can't start new thread"; no descriptor for its pidfd): what it started was killed at once, before
    the failure was handled. Raised from the failure, which says whether the machine ran short."""

    def __init__(self, killed: list[int], cause: BaseException) -> None:
        self.killed = killed
        what = f"killed at once (pid {_pids_of(killed)})" if killed else "it had exited already"
        super().__init__(f"the process was started, then could not be watched ({_said(cause)}): {what}")


def engine_mark(boot: str, pid: int, start: int) -> str:
    """Who an engine's process is (this boot's id, its pid, its start): the value of ``ENV_ENGINE``."""
    return f"{boot}/{pid}/{start}"


def mark_engine(boot: str | None, pid: int, start: int | None) -> None:
    """Put the engine's mark in this process's environment: a process a handler starts without ``ctx.spawn``
    (``subprocess.Popen``, ``asyncio.create_subprocess_exec``, as the seed's handlers do) carries no mark of
    its operation, and one left running by a SIGKILLed engine went on writing beside the resumed attempt;
    with the engine's mark it is found and killed with the engine's orphans (``kill_engine_leftovers``)."""
    if boot is not None and start is not None:
        os.environ[ENV_ENGINE] = engine_mark(boot, pid, start)


def kill_engine_leftovers(boot: str | None, pid: int, start: int | None) -> list[tuple[int, str, int]]:
    """SIGKILL every process that carries the mark of the engine ``(boot, pid, start)`` (started from it, by
    any handler, any operation), once that engine's process no longer runs: it is all it left. Each
    process alone, not its group (a process started without a session of its own is in the group of the
    engine's shell, beside other workers that shell started). (pid, "?", pgid) of each; [] while the engine
    runs, where there is no /proc, or when the record does not say who the process was."""
    if boot is None or start is None or process_start(pid) == (boot, start):
        return []
    mark = f"{ENV_ENGINE}={engine_mark(boot, pid, start)}".encode()
    own = os.getpid()
    found: list[tuple[int, str, int]] = []
    for _ in range(ROUNDS):
        more = []
        killed = {f[0] for f in found}  # SIGKILLed in a round before, and not gone yet: listed once
        for other in _pids():
            if other == own or other in killed:
                continue
            if (seen := _environ(other)) is None:
                continue
            env, pgid = seen
            if mark in env and _running(other):
                with contextlib.suppress(OSError):
                    os.kill(other, signal.SIGKILL)
                    more.append((other, "?", pgid))
        if not more:
            break
        found += more
    return found


class Children:
    """The subprocesses one attempt spawned."""

    def __init__(self, op_id: str, attempt: int, warn: Callable[[str], None]) -> None:
        self.op_id = op_id
        self.attempt = attempt
        self._warn = warn
        self._procs: set[asyncio.subprocess.Process] = set()
        self._swept = False
        self._spawned = False

    async def spawn(self, *argv: str, shell: bool = False, **kwargs: Any) -> asyncio.subprocess.Process:
        """Start a subprocess in its own process group, marked with the operation and attempt; the first
        spawn of a later attempt first kills what earlier attempts left running."""
        kwargs.setdefault("start_new_session", True)
        env = dict(kwargs.get("env") or os.environ)
        env[ENV_OPERATION], env[ENV_ATTEMPT] = self.op_id, str(self.attempt)
        kwargs["env"] = env
        if not self._swept and self.attempt > 1:
            self._swept = True
            killed = await off_loop(kill_leftovers, self.op_id, self.attempt)
            if killed:
                self._warn(describe_leftovers(killed) + " before starting this one")
        if shell and len(argv) != 1:
            raise ValueError("shell=True takes one command string")
        env[ENV_SPAWN] = token = f"{os.getpid()}/{next(_spawns)}"
        try:
            if shell:
                proc = await asyncio.create_subprocess_shell(argv[0], **kwargs)
            else:
                proc = await asyncio.create_subprocess_exec(*argv, **kwargs)
        except BaseException as e:
            if _in_popen(e):
                raise  # the fork or the exec failed: nothing of it runs
            # Forked and exec'd, then asyncio could not watch it (its child watcher's thread refused under a
            # process limit): nothing would ever kill it, and the attempt's retry ran the whole command a
            # second time beside it. Killed here, at once, without a thread (none may be had).
            gone = kill_spawned(token)
            if not isinstance(e, Exception):  # a cancel: asyncio killed and waited for it already
                if gone:
                    self._warn(f"{argv[0]!r} was started as its spawn was cancelled: killed (pid {_pids_of(gone)})")
                raise
            if not gone and not _in_asyncio_watch(e):
                # Another event loop's own spawn (uvloop's, libuv's) refused it: its program not found, its
                # fork refused. Nothing of it runs: said as such, and a shortage queued again.
                raise
            failure = StartedThenKilled(gone, e)
            self._warn(f"{argv[0]!r}: {failure}")
            raise failure from e
        self._procs.add(proc)
        self._spawned = True
        return proc

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.returncode is None]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal every live child's process group (SIGKILL: they and their children are gone)."""
        for p in list(self._procs):
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, sig)
            else:
                self._procs.discard(p)

    async def reap(self) -> None:
        """When the attempt ends: kill what its subprocesses left running outside their process groups
        (``setsid``, a daemon), found by their mark. Such a process kept the command's output open, so
        the attempt waited out its grace period, and it ran on after a cancel."""
        if not self._spawned:
            return
        killed = await off_loop(kill_leftovers, self.op_id, self.attempt, this_attempt=True)
        if killed:
            pids = ", ".join(str(p) for p, _a, _g in killed)
            self._warn(f"killed {len(killed)} process(es) left running in a session of their own (pid {pids})")


class Marks:
    """Which operation each running process was started for, by the ``ENV_OPERATION`` its environment carries:
    what a command left running in a session of its own (a daemon, re-parented to init) is no descendant of the
    process spawned, yet it is the operation's work. A process's environment is read at its first two looks
    only (the first may fall between its fork and its exec, the engine's environment still), so a look costs a
    listing of /proc and the reads of what is new."""

    def __init__(self) -> None:
        self._of: dict[int, tuple[str | None, int]] = {}
        """Per pid: the operation its environment names (None: none, or not ours to read), and the looks read."""

    def processes(self, op_ids: Iterable[str]) -> dict[str, list[int]]:
        """The pids of the running processes started for each of ``op_ids`` ({} where there is no /proc)."""
        wanted = set(op_ids)
        if not wanted:
            return {}
        prefix = f"{ENV_OPERATION}=".encode()
        own = os.getpid()
        of: dict[int, tuple[str | None, int]] = {}
        found: dict[str, list[int]] = {}
        for pid in _pids():
            op, looks = self._of.get(pid, (None, 0))
            if op is None and looks < 2 and pid != own:
                seen = _environ(pid)
                env = [] if seen is None else seen[0]
                op = next((e[len(prefix) :].decode(errors="replace") for e in env if e.startswith(prefix)), None)
                looks += 1
            of[pid] = (op, looks)
            if op in wanted:
                found.setdefault(op, []).append(pid)
        self._of = of
        return found


ROUNDS = 20
"""Scans for leftovers at most: one process may start another between a scan and its kill (a respawning
daemon did, every 10 ms), so the scan is made again until it finds nothing."""


def kill_leftovers(
    op_id: str, attempt: int | None, wait: float = 5.0, this_attempt: bool = False
) -> list[tuple[int, str, int]]:
    """SIGKILL every process (and its process group) whose environment says it was started for
    ``op_id`` by an attempt other than ``attempt`` (None: by any; ``this_attempt``: by ``attempt``
    itself); wait until they are gone, and look again until a look finds none (ROUNDS at most).
    (pid, attempt, pgid) of each; [] where there is no /proc."""
    prefix = f"{ENV_ATTEMPT}=".encode()

    def attempt_of(env: list[bytes]) -> str | None:
        theirs = next((e[len(prefix) :].decode() for e in env if e.startswith(prefix)), "?")
        return theirs if (theirs == str(attempt)) == this_attempt else None

    return _kill_all_marked(f"{ENV_OPERATION}={op_id}".encode(), attempt_of, wait, 0.02)


def kill_spawned(token: str, wait: float = 1.0) -> list[int]:
    """SIGKILL every process (and its process group, when not ours) that spawn ``token`` started (``ENV_SPAWN``),
    wait (``wait`` seconds at most) until they are gone, and reap the one this process forked: asyncio, which
    failed to watch it, never will (each zombie held a slot of the process limit it ran short of). Run on the
    calling thread: called when no thread could be started. The pids killed; [] where there is no /proc."""
    found = [pid for pid, _a, _g in _kill_all_marked(f"{ENV_SPAWN}={token}".encode(), lambda env: "", wait, 0.005)]
    for pid in found:
        fields = _stat(pid)
        if fields is not None and len(fields) > 1 and fields[1] == str(os.getpid()).encode():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
    return found


def _in_popen(e: BaseException) -> bool:
    """Whether ``e`` was raised inside ``subprocess.Popen`` (its fork refused, or its exec failing in the child,
    which Popen reaps): then no process of it runs. Raised after Popen returned (asyncio's child watcher), the
    process was started and runs its program."""
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == subprocess.__file__:
            return True
        tb = tb.tb_next
    return False


def _in_asyncio_watch(e: BaseException) -> bool:
    """Whether ``e`` was raised in asyncio's own subprocess start (its ``unix_events``, where its child watcher
    is set after Popen returned), not in another event loop's spawn. Under uvloop, a program not found (or a
    fork refused) is raised from the loop's own code, past no Popen: it was said as a command "started, then
    could not be watched", not run again, where nothing of it had run."""
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == asyncio.unix_events.__file__:
            return True
        tb = tb.tb_next
    return False


def _pids_of(pids: list[int]) -> str:
    return ", ".join(map(str, pids))


def _said(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _kill_all_marked(
    mark: bytes, pick: Callable[[list[bytes]], str | None], wait: float, every: float
) -> list[tuple[int, str, int]]:
    """SIGKILL what ``_kill_marked`` finds, wait (``wait`` seconds at most, looking every ``every``) until it is
    gone, and look again until a look finds none (ROUNDS at most): (pid, what ``pick`` said, pgid) of each."""
    found: list[tuple[int, str, int]] = []
    end = time.monotonic() + wait
    for _ in range(ROUNDS):
        more = _kill_marked(mark, pick)
        if not more:
            break
        found += more
        while any(_running(pid) for pid, _a, _g in more) and time.monotonic() < end:
            time.sleep(every)
    return found


def _kill_marked(mark: bytes, pick: Callable[[list[bytes]], str | None]) -> list[tuple[int, str, int]]:
    """One scan: SIGKILL every running process (and its process group, when not ours) whose environment holds
    ``mark`` and which ``pick`` takes (what it returns for its environment; None: not this one), (pid, that,
    pgid) of each."""
    own = {os.getpid(), os.getpgrp()}
    found: list[tuple[int, str, int]] = []
    for pid in _pids():
        if pid in own:
            continue
        if (seen := _environ(pid)) is None:
            continue
        env, pgid = seen
        if mark not in env:
            continue
        if (said := pick(env)) is not None and _running(pid):
            found.append((pid, said, pgid))
    for pid, _a, pgid in found:
        with contextlib.suppress(OSError):
            if pgid not in own:
                os.killpg(pgid, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
    return found


_NOT_STOPPED: set[int] = set()
"""Processes under this one that ``stop_descendants`` leaves running (``never_stop``)."""


def never_stop(pid: int, never: bool = True) -> None:
    """Leave ``pid`` running when this process stops its descendants for a Ctrl-Z (``never=False``: no longer):
    a command's watcher, which must see this process die while stopped to kill the command. Stopped with it,
    a SIGKILL of the stopped run left the watcher stopped for ever (parent 1, in a session of its own, which
    no SIGCONT reaches), and the command's processes stopped until the next ``outlast`` opened the store."""
    if never:
        _NOT_STOPPED.add(pid)
    else:
        _NOT_STOPPED.discard(pid)


def stop_descendants() -> list[tuple[int, tuple[str, int] | None]]:
    """SIGSTOP every process under this one (its children, theirs, ...), before this one stops (Ctrl-Z): a
    command runs in a session of its own, where the terminal's SIGTSTP does not reach it, and went on doing
    its items while the engine that reads its progress and checkpoints was stopped (a SIGKILL of the
    stopped engine then cost every item since the Ctrl-Z, done again). Looked for again until a look finds
    none new (one may start another meanwhile). (pid, who it is) of each, for ``continue_stopped``."""
    stopped: list[tuple[int, tuple[str, int] | None]] = []
    seen: set[int] = set()
    for _ in range(ROUNDS):
        more = [pid for pid in _descendants(os.getpid()) if pid not in seen and pid not in _NOT_STOPPED]
        if not more:
            break
        for pid in more:
            seen.add(pid)
            fields = _stat(pid)
            if fields is None or fields[0] in (b"T", b"t", b"Z"):  # stopped already (the terminal's SIGTSTP
                continue  # reached those in this group; the shell's fg continues them), or gone
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append((pid, _who(fields)))
    return stopped


def continue_stopped(stopped: list[tuple[int, tuple[str, int] | None]]) -> None:
    """SIGCONT what ``stop_descendants`` stopped, once this process goes on (``fg``): those in this process's
    group get it from the shell, the others from here. A pid another process has taken since is left."""
    for pid, who in stopped:
        if who is None or process_start(pid) == who:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)


def _descendants(pid: int) -> list[int]:
    """Every live process under ``pid``, from /proc (parent pids); [] where there is no /proc."""
    children: dict[int, list[int]] = {}
    for other in _pids():
        fields = _stat(other)
        if fields is None or fields[0] == b"Z" or len(fields) < 2:
            continue
        with contextlib.suppress(ValueError):
            children.setdefault(int(fields[1]), []).append(other)
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def _environ(pid: int) -> tuple[list[bytes], int] | None:
    """The environment process ``pid`` started with, and its process group; None when it is gone, or not
    ours to read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read().split(b"\0")
        return env, os.getpgid(pid)
    except (OSError, ValueError):
        return None


def describe_leftovers(killed: list[tuple[int, str, int]]) -> str:
    """One log line for what ``kill_leftovers`` killed."""
    attempts = ", ".join(sorted({a for _p, a, _g in killed}))
    groups = ", ".join(str(g) for g in sorted({g for _p, _a, g in killed}))
    return f"killed {len(killed)} process(es) left running by attempt {attempts} (process group {groups})"


def _pids() -> list[int]:
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []


def _stat(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command's name (``[0]``: the state, field 3), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields or None


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan stays one until init reaps it)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != b"Z"


def stopped_note(host: str, pid: int, boot: str | None = None, start: int | None = None) -> str | None:
    """What every face says of running work whose process on this host is stopped (Ctrl-Z, SIGSTOP) or gone
    (killed, while the store waits for proof: a Redis lease runs out), else None: it was listed running, its
    last rate and ETA shown, while nothing ran. Its first word says which ("stopped", "gone").

    Stopped: state T, and, with ``boot`` and ``start``, still the process recorded. Gone: with ``boot`` and
    ``start`` recorded (a record without them is not judged), no such process, a zombie, or another process
    with its pid. Neither where /proc cannot tell, or of another host's process."""
    import socket

    if host != socket.gethostname():
        return None
    fields = _stat(pid)
    who = _who(fields) if fields is not None else None
    if fields is not None and fields[0] in (b"T", b"t") and (boot is None or start is None or who == (boot, start)):
        return f"stopped (Ctrl-Z or SIGSTOP): kill -CONT {pid} to go on"
    if boot is None or start is None or not os.path.exists("/proc/self/stat"):
        return None
    if fields is None or fields[0] == b"Z" or (who is not None and who != (boot, start)):
        return f"gone (process {pid} no longer runs: killed?): it is marked interrupted once found orphaned"
    return None


def command_of(pid: int, width: int = 80) -> str | None:
    """What process ``pid`` runs, for a line that names it: ``outlast run demo -p items=200`` (an interpreter and
    the directories of its script and of long paths left out), control characters escaped, clipped to ``width``
    characters with "…"; None where /proc cannot tell (no such process, another user's hidden by ``hidepid``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [os.fsdecode(a) for a in fh.read().split(b"\0") if a]
    except OSError:
        return None
    if len(argv) > 1 and os.path.basename(argv[0]).startswith("python"):
        argv = argv[1:]  # /usr/bin/python3 /venv/bin/outlast run ...: the script is the command
        if argv[0] == "-m" and len(argv) > 1:
            argv = ["outlast" if argv[1] == "engine.cli" else argv[1], *argv[2:]]
        elif argv[0] == "-c":
            argv = ["python", "-c", "..."]
    if not argv:
        return None
    # A long path as its last part: "--state-dir …/state run demo", not the path with the command clipped off
    words = [
        os.path.basename(argv[0]),
        *("…/" + os.path.basename(a) if "/" in a and len(a) > 24 else a for a in argv[1:]),
    ]
    text = " ".join(words)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= width else text[: width - 1] + "…"


def process_start(pid: int) -> tuple[str, int] | None:
    """Who process ``pid`` is, whatever the wall clock did: this boot's id and the process's start in
    clock ticks since boot (``/proc/PID/stat``). A pid taken by another process since has another start.
    None where there is no /proc, or no such process (a zombie is none: it has exited)."""
    fields = _stat(pid)
    return None if fields is None or fields[0] == b"Z" else _who(fields)


def boot_id() -> str | None:
    """This boot's id (the kernel's, new at each boot); None where there is none (not Linux)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as fh:
            return fh.read().strip().decode() or None
    except (OSError, UnicodeDecodeError):
        return None


def _who(fields: list[bytes]) -> tuple[str, int] | None:
    """This boot's id and the start (field 22) of the process whose stat ``fields`` are."""
    boot = boot_id()
    try:
        return None if boot is None else (boot, int(fields[19]))  # field 22 of stat; [0] here is field 3 (state)
    except (IndexError, ValueError):
        return None
