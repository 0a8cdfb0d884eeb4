"""``outlast worker --exit-when-idle`` does what its help says: "Stop when nothing is queued or running"
was not it (it exits leaving queued work of types it has no plugin for, and whatever other workers run),
and said nothing of its exit code. The help says when it is idle, what it leaves, and how it exits;
each claim is checked here against real workers."""

from __future__ import annotations

import re
from pathlib import Path

from engine.exitcodes import ExitCode
from tests.fixtures_cli import Cli

PLUGIN = ("--plugin", "tests.ops_for_tests")


def test_the_help_says_when_it_is_idle_what_it_leaves_and_how_it_exits(cli: Cli) -> None:
    r = cli("worker", "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "Stop when nothing is queued or running" not in text
    for claim in (
        "it exits once it runs nothing and the queue holds nothing it can run",
        "A retry waiting out its backoff is waited for",
        "queued work of a type that no plugin loaded here runs is left queued",
        "work other workers run is not waited for",
        "It exits 0 however the operations ended",
        "8 when the store fails",
    ):
        assert claim in text, (claim, text)


def test_it_waits_for_a_retry_leaves_other_types_queued_and_exits_0_when_work_failed(cli: Cli, tmp_path: Path) -> None:
    flaky = tmp_path / "flaky"
    # One transient failure, then a retry due in 2-4 s: past the worker's second of idleness.
    retried = cli(
        *PLUGIN, "submit", "ledger", "-p", "items=3", "-p", "fail_at=1", "-p", f"flaky_file={flaky}",
        "--profile", "retry.backoff_base=3",
    ).stdout.split()[0]  # fmt: skip
    failing = cli("submit", "command", "-p", "argv=false").stdout.split()[0]
    other_type = cli(*PLUGIN, "submit", "ledger", "-p", "items=1").stdout.split()[0]
    r = cli("worker", "--exit-when-idle")  # no plugin: ledger is not its type
    assert r.returncode == 0, r.stderr
    assert re.search(r"leaving 2 queued ledger operation\(s\)", r.stdout), r.stdout
    assert cli.op(failing).status.value == "failed"
    assert cli.op(other_type).status.value == cli.op(retried).status.value == "queued"

    r = cli(*PLUGIN, "worker", "--exit-when-idle")
    assert r.returncode == ExitCode.OK, r.stderr
    op = cli.op(retried)
    assert (op.status.value, op.attempt) == ("completed", 2), op
    assert cli.op(other_type).status.value == "completed"
