"""CPU readings of the machine: each reader measures over its own window, whatever else samples."""

from __future__ import annotations

import time

from engine.resources import Admission, ResourceMonitor


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
