"""Resource sampling (psutil) and admission control: start no new work on a starved machine.

psutil is imported where it is used (about 7 ms): a command that opens an engine to read or queue one
operation never samples anything, and paid for it at each start."""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .processes import Marks, process_start
from .shortage import FileBudget, ProcessBudget


@dataclass
class ResourceSample:
    ts: float
    cpu_percent: float
    """System-wide CPU use, percent of all cores."""
    memory_percent: float
    memory_used: int
    memory_total: int
    process_cpu_percent: float
    """This process (the engine), percent of one core."""
    process_rss: int
    children: dict[str, tuple[float, int]] = field(default_factory=dict)
    """Per operation id: CPU percent and memory of the child processes it started (their proportional set size
    where Linux gives it, else their RSS)."""


class CpuMeter:
    """System-wide CPU use since this meter's own last reading, percent of all cores.

    ``psutil.cpu_percent(None)`` measures since the last call made by anyone in the process: the dashboard's
    sample, the admission check and a ``monitoring_collection`` in one engine each cut the others' windows
    short, down to a few milliseconds (0% or 50% on an idle machine, 0% under load)."""

    def __init__(self) -> None:
        self._last = self._times()
        self._percent = 0.0

    @staticmethod
    def _times() -> tuple[float, float]:
        """(all the CPU time, the idle part) so far, as psutil reckons them."""
        import psutil

        t = psutil.cpu_times()
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)  # counted in user and nice
        return total, t.idle + getattr(t, "iowait", 0.0)

    def percent(self) -> float:
        """Since the last reading; the last figure again when no clock tick of the kernel's passed since."""
        total, idle = self._times()
        dt, di = total - self._last[0], idle - self._last[1]
        if dt <= 0:
            return self._percent
        self._last = total, idle
        self._percent = round(min(100.0, max(0.0, 100.0 * (dt - di) / dt)), 1)
        return self._percent


class ResourceMonitor:
    """Samples on demand and keeps a short history for sparklines."""

    def __init__(self, history: int = 300) -> None:
        import psutil

        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)
        self._cpu = CpuMeter()
        self.history: deque[ResourceSample] = deque(maxlen=history)
        self._children: dict[int, _Seen] = {}
        """Every process the last sample measured (descendants of the spawned ones too), by pid: its CPU is what
        it used since then. psutil's ``cpu_percent`` of a new object reads 0% (each sample made new ones for the
        descendants: a command's shell showed 0% while the pipeline beneath it took a whole core)."""
        self._last = time.time()
        """When the last sample was taken (wall clock)."""
        self._last_boot = _since_boot()
        """The same in seconds since boot, as /proc gives a process's start (None: not Linux)."""
        self._marks = Marks()

    def sample(self, op_children: dict[str, list[int]] | None = None) -> ResourceSample:
        import psutil

        now, boot_now = time.time(), _since_boot()
        window = max(now - self._last, 1e-3)
        vm = psutil.virtual_memory()
        children: dict[str, tuple[float, int]] = {}
        measured: dict[int, _Seen] = {}
        op_children = op_children or {}
        # What a command left running in a session of its own too (a daemon: no descendant of what it spawned).
        marked = self._marks.processes(op_children)
        for op_id, pids in op_children.items():
            used, rss, counted = 0.0, 0, set()
            for pid in [*pids, *marked.get(op_id, ())]:
                try:
                    top = psutil.Process(pid)
                    tree = [top, *top.children(recursive=True)]
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                for q in tree:
                    if q.pid in counted:
                        continue  # a spawned process's child that was spawned too: counted once
                    try:
                        with q.oneshot():
                            seen = _Seen(q, q.ppid(), *_cpu_seconds(q.cpu_times()))
                            rss += _pss(q.pid) or q.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    used += self._used(seen)
                    counted.add(q.pid)
                    measured[q.pid] = seen
            # What the processes that ended since were seen to use is in their parents' reaped time now, whole.
            used -= sum(g.own + g.reaped for pid, g in self._children.items() if _reaped_by(pid, g, measured, counted))
            if counted:  # an operation that starts no process (most) is not listed with zeros
                children[op_id] = (max(0.0, 100.0 * used / window), rss)
        self._children, self._last, self._last_boot = measured, now, boot_now
        with self._proc.oneshot():
            s = ResourceSample(
                ts=time.time(),
                cpu_percent=self._cpu.percent(),
                memory_percent=vm.percent,
                memory_used=vm.total - vm.available,
                memory_total=vm.total,
                process_cpu_percent=self._proc.cpu_percent(None),
                process_rss=self._proc.memory_info().rss,
                children=children,
            )
        self.history.append(s)
        return s

    def _used(self, seen: _Seen) -> float:
        """CPU seconds ``seen``'s process used since the last sample, with those of the children it reaped since
        (a build's compilers, each born and gone between two samples). One first seen now counts all it used when
        it started after the last sample; an older one (new to this monitor) counts from now on."""
        before = self._children.get(seen.proc.pid)
        if before is not None and before.proc == seen.proc:  # equal: the same pid and start time
            return max(0.0, seen.own - before.own) + max(0.0, seen.reaped - before.reaped)
        return seen.own + seen.reaped if self._born_since(seen.proc) else 0.0

    def _born_since(self, proc: Any) -> bool:
        """Whether ``proc`` started after the last sample. By its start since boot where there is /proc: psutil's
        ``create_time`` adds the boot time in whole seconds, off by up to one from the clock (a daemon started
        just after the last sample was taken for an older process, its CPU counted from the next one only)."""
        start = process_start(proc.pid) if self._last_boot is not None else None
        if start is not None and self._last_boot is not None:
            return start[1] / _TICKS >= self._last_boot
        try:
            return float(proc.create_time()) >= self._last
        except Exception:  # psutil's errors: gone meanwhile
            return False


@dataclass
class _Seen:
    """A process as a sample measured it: its parent, its CPU seconds and those of the children it reaped."""

    proc: Any
    ppid: int
    own: float
    reaped: float


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
"""Clock ticks a second, the unit of a process's start in /proc."""


def _since_boot() -> float | None:
    """Seconds since boot, as /proc counts a process's start (None where there is no such clock)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return None if clock is None else time.clock_gettime(clock)


def _pss(pid: int) -> int | None:
    """Bytes of memory process ``pid`` uses, its pages shared with others split among them (its proportional set
    size, /proc's ``smaps_rollup``); None where there is none. The RSS of each counts the pages it shares whole:
    a command that forked 4 workers of a 300 MB parent was shown at 1.5 GB, for 306 MB used."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_seconds(t: Any) -> tuple[float, float]:
    """(user + system, the same of the children reaped) of psutil's ``cpu_times``."""
    return t.user + t.system, getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)


def _reaped_by(pid: int, gone: _Seen, measured: dict[int, _Seen], parents: set[int]) -> bool:
    """Whether ``gone`` (pid ``pid``, measured by the last sample) ended since, reaped by its parent, measured now
    among ``parents``."""
    ended = pid not in measured or measured[pid].proc != gone.proc
    return ended and gone.ppid in parents


class Admission:
    """Whether the machine has room for one more operation: memory and CPU limits (percent), the file
    descriptors this process may still open, and how many may run at once since a fork found no process."""

    def __init__(
        self,
        max_memory_percent: float | None,
        max_cpu_percent: float | None,
        files: FileBudget | None = None,
        processes: ProcessBudget | None = None,
    ) -> None:
        self.max_memory = max_memory_percent
        self.max_cpu = max_cpu_percent
        self.files = files or FileBudget()
        self.processes = processes or ProcessBudget()
        self._last = 0.0
        self._cached: str | None = None
        self._cpu = CpuMeter() if max_cpu_percent else None

    def room(self, running: int) -> int:
        """How many operations may start now, with ``running`` running here, by open files and processes
        (memory and CPU are ``blocked``)."""
        return min(self.files.room(running), self.processes.room(running))

    def started(self, n: int = 1) -> None:
        self.files.started(n)

    def blocked(self, running: int) -> str | None:
        """None when work may start, with ``running`` running here, else the reason (memory and CPU
        checked at most once a second)."""
        short = self.files.blocked(running) or self.processes.blocked(running)
        if short is not None:
            return short
        if not (self.max_memory or self.max_cpu):
            return None
        now = time.monotonic()
        if now - self._last < 1.0:
            return self._cached
        self._last = now
        import psutil

        reason = None
        if self.max_memory and (m := psutil.virtual_memory().percent) > self.max_memory:
            reason = f"memory at {m:.0f}% (limit {self.max_memory:g}%)"
        elif self.max_cpu and self._cpu is not None and (c := self._cpu.percent()) > self.max_cpu:
            reason = f"CPU at {c:.0f}% (limit {self.max_cpu:g}%)"
        self._cached = reason
        return reason
