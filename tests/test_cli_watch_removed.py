"""``outlast watch`` of operations removed (``outlast clean``) once they settled: one whose end the watch
saw is reported as it ended, and one removed before the watch saw its end is said to be so, not answered
as a mistyped id."""

from __future__ import annotations

import signal

from engine.exitcodes import ExitCode
from tests.fixtures_cli import Cli


def test_a_watched_operation_cleaned_after_its_end_was_seen_keeps_its_outcome(cli: Cli) -> None:
    """Watching A and B, A completed (the watch showed it), was cleaned while B ran: the next look at A
    found no record, and the watch ended "an operation watched is gone from the store", exit 3."""
    worker = cli.start("worker", "--concurrency", "2")
    short = cli("submit", "demo", "-p", "items=2", "-p", "seconds=0.1").stdout.split()[0]
    long = cli("submit", "demo", "-p", "items=10000", "-p", "seconds=0.1").stdout.split()[0]
    watch = cli.start("watch", short, long)
    watch.wait_line(lambda ln: short in ln and " completed " in ln)
    assert cli("clean").returncode == 0
    assert cli("show", short).returncode == ExitCode.NOT_FOUND  # removed
    assert cli("cancel", long).returncode == 0
    # The look that sees the cancel read the cleaned one first (ids in order).
    assert watch.wait(30) == ExitCode.CANCELLED, watch.err
    assert not [ln for ln in watch.err if "gone" in ln or "removed" in ln], watch.err
    worker.signal(signal.SIGTERM)
    worker.wait(30)


def test_a_watched_operation_cleaned_before_its_end_was_seen_is_said_removed(cli: Cli) -> None:
    """The watch stopped (Ctrl-Z) while its operation completed and was cleaned: continued, it finds no
    record, and says it was removed before its end was seen, with the status it last saw."""
    worker = cli.start("worker")
    op_id = cli("submit", "demo", "-p", "items=20", "-p", "seconds=0.1").stdout.split()[0]
    watch = cli.start("watch", op_id)
    watch.wait_line(lambda ln: " running " in ln)
    watch.signal(signal.SIGSTOP)
    try:
        cli.wait_status(op_id, {"completed"})
        assert cli("clean").returncode == 0
    finally:
        watch.signal(signal.SIGCONT)
    code = watch.wait(30)
    if code == ExitCode.OK:  # its read was under way when it stopped, and saw the end: reported as it ended
        assert any(" completed " in ln for ln in watch.out), watch.out
    else:
        assert code == ExitCode.NOT_FOUND, watch.err
        assert watch.err == [
            f"outlast: {op_id} is gone from the store (removed by outlast clean or rm, or the store emptied)"
            " before its end was seen; it was last seen running"
        ], watch.err
    worker.signal(signal.SIGTERM)
    worker.wait(30)
