"""A handler's result is part of its record, which every listing of the store reads (``ls``, the dashboard,
the API): eight operations with a result of 50 MB each took ``outlast ls`` to 585 MB and ``ls --json`` to
1.7 GB, and a result past SQLite's largest value could not be stored at all. A result over
``MAX_RESULT_BYTES`` as JSON completes its operation without it, said in its status line and its log."""

from __future__ import annotations

import json

from engine import Status
from engine.limits import MAX_RESULT_BYTES
from tests.fixtures_cli import Cli

PLUGIN = ("--plugin", "tests.ops_for_tests")


def test_a_result_over_the_limit_completes_without_it_saying_so(cli: Cli) -> None:
    over = cli(*PLUGIN, "-q", "run", "big_result", "-p", f"chars={MAX_RESULT_BYTES}")
    assert over.returncode == 0, over.stderr
    ops = {o["params"]["chars"]: o for o in json.loads(cli("--json", "ls").stdout)}
    op = ops[MAX_RESULT_BYTES]
    assert op["status"] == Status.COMPLETED and op["result"] is None, op["status_message"]
    said = f"its result was not stored: {MAX_RESULT_BYTES + 11:,} bytes of JSON, over the limit of {MAX_RESULT_BYTES:,}"
    assert said in op["status_message"], op["status_message"]
    assert "write bulk output to a file" in cli("logs", op["id"]).stdout

    under = MAX_RESULT_BYTES - len('{"text":""}')  # exactly at the limit: kept whole
    assert cli(*PLUGIN, "-q", "run", "big_result", "-p", f"chars={under}").returncode == 0
    kept = {o["params"]["chars"]: o for o in json.loads(cli("--json", "ls").stdout)}[under]
    assert kept["result"] == {"text": "r" * under} and kept["status_message"] is None, kept["status_message"]
