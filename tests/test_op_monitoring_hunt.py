"""monitoring_collection against hostile params."""

from __future__ import annotations

import pytest

from tests.fixtures_cli import Cli
from tests.fixtures_ops import bad_params


@pytest.mark.parametrize("pid", [2**31, 2**32, 2**62])
def test_a_pid_past_a_c_int_is_no_process(cli: Cli, pid: int) -> None:
    """It was refused as "its validator raised OverflowError: signed integer is greater than maximum"."""
    bad_params(cli, "monitoring_collection", {"pids": [pid], "duration": 1}, f"pids: no process {pid}")
