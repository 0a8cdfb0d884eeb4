"""``outlast logs ID`` of an operation that has logged nothing (yet) says so, as ``ls`` and ``checkpoints``
do when they have nothing to list: it printed nothing at all and exited 0, which read as a command that had
failed to find the log."""

from __future__ import annotations

import json

from .fixtures_cli import Cli


def test_logs_of_an_operation_with_no_lines_says_so_on_stderr_and_json_stays_an_empty_list(cli: Cli) -> None:
    op_id = cli.here("submit", "demo", "-p", "items=3").stdout.strip()
    for args in (["logs", op_id], ["logs", op_id, "-n", "5"]):
        r = cli.here(*args)
        assert (r.returncode, r.stdout, r.stderr.strip()) == (0, "", "no log lines"), args
    r = cli.here("logs", op_id, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [] and r.stderr == ""
    r = cli.here("-q", "logs", op_id)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert cli.here("checkpoints", op_id).stderr.strip() == "no checkpoints"
