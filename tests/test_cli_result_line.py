"""The line that ends a run (and ``show``'s result row) names the files a result points at, however long the
result is: security_scan's ``reports`` and performance_profiling's files came after a list of findings or
functions, and the line cut at RESULT_CHARS showed the list and never said where the reports were."""

from __future__ import annotations

import time

import pytest

from engine import Operation, Status
from engine.cli import format as fmt
from engine.cli.run import report_final
from engine.models import new_id


def _op(result: dict) -> Operation:
    now = time.time()
    op = Operation(id=new_id(), type="t", status=Status.COMPLETED, created_at=now, queued_at=now, updated_at=now)
    op.result = result
    return op


def test_what_a_long_result_points_at_is_on_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    top = [{"file": f"src/m{i}.py", "line": i, "message": "Use of weak SHA1 hash for security" * 3} for i in range(20)]
    op = _op(
        {"files": 336, "findings": 318, "top": top, "reports": {"json": "/r/scan-1.json", "sarif": "/r/scan-1.sarif"}}
    )
    report_final(op, "text")
    line = capsys.readouterr().out.strip()
    assert '"reports": {"json": "/r/scan-1.json", "sarif": "/r/scan-1.sarif"}' in line, line
    assert '"files": 336' in line and '"top": [… 20 items]' in line, line
    assert f"outlast show {op.id} --json has all" in line and len(line) < fmt.RESULT_CHARS + 300, line
    row = next(r for r in fmt.show_text(op, []).splitlines() if r.startswith("result"))
    assert '"sarif": "/r/scan-1.sarif"' in row and len(row) < fmt.RESULT_CHARS + 300, row


@pytest.mark.timeout(60)  # about 0.3 s; the old code's walk over every key per key took minutes on these
def test_a_result_with_too_many_short_values_is_still_cut(capsys: pytest.CaptureFixture[str]) -> None:
    """A result of 50,000 short values ends the run in one cut line; the line is printed at once (5,000 took
    3 s of CPU: the longest value was looked for again among all after each one was shortened)."""
    op = _op({f"key_{i:05d}": i for i in range(50_000)})
    report_final(op, "text")
    line = capsys.readouterr().out.strip()
    assert len(line) < fmt.RESULT_CHARS + 300 and "characters; outlast show" in line, line[-300:]


def test_a_short_result_is_shown_whole(capsys: pytest.CaptureFixture[str]) -> None:
    op = _op({"sum": 4950, "items": 100, "failures": 0})
    report_final(op, "text")
    assert capsys.readouterr().out.strip().endswith('result {"sum": 4950, "items": 100, "failures": 0}')


def test_the_items_not_done_are_counted_on_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A backup whose source lost a directory under it ended "completed at 837/992 items after 1s": the 154
    files gone since the listing (skipped) and the one that kept changing (failed) were nowhere on the line
    that ends the run, nor skipped ones on the progress lines, and 155 items looked lost."""
    op = _op({"files": 837, "failures": 1})
    op.progress.done, op.progress.total, op.progress.failed, op.progress.skipped = 837, 992, 1, 154
    report_final(op, "text")
    line = capsys.readouterr().out.strip()
    assert f"{op.id} completed at 837/992 items (1 failed, 154 skipped) after " in line, line
    assert "837/992 items  1 failed  154 skipped" in fmt.progress_line(op), fmt.progress_line(op)
    op.progress.failed = op.progress.skipped = 0
    report_final(op, "text")
    assert f"{op.id} completed at 837/992 items after " in capsys.readouterr().out
