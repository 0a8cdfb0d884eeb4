"""CPU readings of the machine: each reader measures over its own window, whatever else samples."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from engine.resources import Admission, ResourceMonitor, ResourceSample

from .fixtures_cli import until


def busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_admission_check_is_not_cut_short_by_the_dashboards_sample() -> None:
    """Both read ``psutil.cpu_percent(None)``, which measures since the last call by anyone in the process: a
    dashboard's sample just before the scheduler's check left it a window of microseconds, read as 0% CPU
    (or 50%, whatever one clock tick made it), so a limit of CPU use let work start on a busy machine."""
    admission = Admission(max_memory_percent=None, max_cpu_percent=0.001)
    monitor = ResourceMonitor()
    busy(0.3)  # CPU used: over its window, the check sees more than 0.001%
    monitor.sample()
    assert admission.blocked(0) is not None
    # and the other way round: the dashboard's sample after another engine's check
    other = Admission(max_memory_percent=None, max_cpu_percent=0.001)
    busy(0.3)
    assert other.blocked(0) is not None
    assert monitor.sample().cpu_percent > 0


def test_two_monitoring_samplers_in_one_engine_each_measure_their_own_interval() -> None:
    """Two ``monitoring_collection`` operations in one worker: each sample's CPU covered only the time since
    the other's last one (milliseconds: 0% on a busy machine), not its own interval."""
    from engine.operations.monitoring import Sampler

    first, second = Sampler([]), Sampler([])
    for _ in range(5):  # a window of milliseconds may hold a tick of the kernel's clock: not each of five
        busy(0.1)
        second.sample()
        assert first.sample()["cpu_percent"] > 0


BURN = "import time\nend = time.process_time() + {0}\nwhile time.process_time() < end: pass\n{1}"


@contextlib.contextmanager
def process_group(script: str) -> Iterator[subprocess.Popen[bytes]]:
    """``sh -c script`` in a session of its own, as ``ctx.spawn`` starts a command; killed with its group after."""
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cpu_seconds(before: ResourceSample, after: ResourceSample, op_id: str) -> float:
    """The CPU seconds ``after`` says ``op_id``'s processes used since ``before``."""
    return after.children[op_id][0] / 100 * (after.ts - before.ts)


def test_a_commands_grandchild_counts_in_its_cpu() -> None:
    """A command's shell with its work in a child of its own (a pipeline, a script running a program): psutil
    gave each descendant a new object at each sample, whose first ``cpu_percent`` is always 0, so an operation
    taking a whole core showed 0% CPU in the resources pane."""
    monitor = ResourceMonitor()
    with process_group(f"{sys.executable} -c 'while True: pass' & wait") as sh:
        busy = until(lambda: psutil.Process(sh.pid).children(), what="the busy child")[0]
        first = monitor.sample({"op": [sh.pid]})
        used = sum(busy.cpu_times()[:2])
        until(lambda: sum(busy.cpu_times()[:2]) > used + 0.3, what="0.3 s of CPU used by the child")
        used = sum(busy.cpu_times()[:2]) - used
        second = monitor.sample({"op": [sh.pid]})
    assert cpu_seconds(first, second, "op") >= used / 2


def test_children_born_and_gone_between_two_samples_count_in_its_cpu(tmp_path: Path) -> None:
    """A build's compilers, a test runner's processes: each lives less than a sample's second, and was counted
    nowhere (nor in the shell that reaped it)."""
    go, done = tmp_path / "go", tmp_path / "done"
    burn = BURN.format(0.3, f"open({str(done)!r}, 'w').close()")
    script = f'while [ ! -e {go} ]; do sleep 0.02; done; {sys.executable} -c "{burn}"; sleep 60'
    monitor = ResourceMonitor()
    with process_group(script) as sh:
        first = monitor.sample({"op": [sh.pid]})
        go.touch()
        until(done.exists, what="the burner to end")
        until(lambda: any(p.name() == "sleep" for p in psutil.Process(sh.pid).children()), what="the shell to go on")
        second = monitor.sample({"op": [sh.pid]})
    assert cpu_seconds(first, second, "op") >= 0.2


DAEMON = (
    "import os, sys\nif os.fork(): sys.exit()\nos.setsid()\nif os.fork(): sys.exit()\n"
    "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\nos.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass\n"
)
"""Forks twice (a session of its own), writes its pid to the file named, and spins for a minute at most: one the
test could not find and kill (a failure before it had the pid) spun at a full core for an hour of a suite."""


def test_a_daemon_a_command_left_in_a_session_of_its_own_counts_in_its_cpu(tmp_path: Path) -> None:
    """A command that starts a daemon (forked twice, in a session of its own: its parent is init, not the command):
    found only by the operation id its environment carries, it was counted nowhere, 100% of a core shown as 0%."""
    env = {**os.environ, "OUTLAST_OPERATION_ID": "op"}
    monitor = ResourceMonitor()
    pid_file = tmp_path / "daemon.pid"
    proc = subprocess.Popen([sys.executable, "-c", DAEMON, str(pid_file)], env=env)
    proc.wait()  # the daemon runs on, its parent gone
    # By the pid it wrote: the first fork, gone a moment later, has the same command line.
    until(pid_file.exists, what="the daemon")
    daemon = psutil.Process(int(pid_file.read_text()))
    try:
        with process_group("exec sleep 60") as sh:
            monitor.sample({"op": [sh.pid]})  # first seen: measured from here
            first = monitor.sample({"op": [sh.pid]})
            used = sum(daemon.cpu_times()[:2])
            until(lambda: sum(daemon.cpu_times()[:2]) > used + 0.3, what="0.3 s of CPU used by the daemon")
            used = sum(daemon.cpu_times()[:2]) - used
            second = monitor.sample({"op": [sh.pid]})
    finally:
        daemon.kill()
    assert cpu_seconds(first, second, "op") >= used / 2


FORKS = (
    "import os, time\nx = bytearray(64 * 2**20)\nx[::4096] = b'x' * len(x[::4096])\n"
    "for _ in range(4):\n    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)\ntime.sleep(60)\n"
)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="no proportional set size here")
def test_memory_a_command_shares_with_its_forks_counts_once() -> None:
    """A command that forks workers (a server's, a test runner's): the RSS of each counted the parent's pages it
    shares whole, so 4 forks of a 300 MB process were shown as 1.5 GB, 306 MB used."""
    monitor = ResourceMonitor()
    with process_group(f'{sys.executable} -c "{FORKS}"') as sh:
        parent = until(lambda: psutil.Process(sh.pid).children(), what="the python process")[0]
        until(lambda: len(parent.children()) == 4, what="its 4 forks")
        shown = monitor.sample({"op": [sh.pid]}).children["op"][1]
        rss = parent.memory_info().rss
    assert shown < 2 * rss, (shown, rss)
