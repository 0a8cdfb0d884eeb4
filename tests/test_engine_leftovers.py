"""What a handler starts without ``ctx.spawn`` (``subprocess.Popen``, as the seed's handlers do) carries no
mark of its operation: left running by a SIGKILLed engine, it went on writing beside the resumed attempt.
It carries the engine's mark, and is killed when the engine's orphans are found."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.fixtures_cli import Cli, until
from tests.test_op_test_suite import alive


def test_a_process_a_handler_started_itself_is_killed_with_its_dead_engines_orphans(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = "import time,sys\nwhile True:\n    open(sys.argv[1], 'a').write('x\\n'); time.sleep(0.05)\n"
    bystander = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "bystander")])  # no engine's
    try:
        op_id = cli("--plugin", "tests.ops_for_tests", "submit", "plain_child", "-p", f"out={out}").stdout.split()[0]
        worker = cli.start("--plugin", "tests.ops_for_tests", "worker", "--concurrency", "1")
        try:
            child = int(until(lambda: Path(f"{out}.pid").exists() and Path(f"{out}.pid").read_text(), 30))
            until(lambda: out.exists() and out.stat().st_size > 0, 30)
            os.kill(worker.popen.pid, signal.SIGKILL)
            worker.popen.wait(10)
        finally:
            worker.kill()
        assert alive(child), "the child died with its engine: nothing to test"
        assert cli("ls").returncode == 0  # finds the orphan
        until(lambda: not alive(child), 10, what="the leftover killed")
        said = cli("logs", op_id).stdout
        assert f"started without ctx.spawn (pid {child})" in said, said
        assert alive(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()
        if out.with_suffix(".pid").exists() and alive(child := int(out.with_suffix(".pid").read_text())):
            os.kill(child, signal.SIGKILL)  # the old code's leftover, not the next test's
