"""The live panel of ``outlast run`` on a terminal, rendered at a fixed width.

A step as long as a test's node id (``comprehensive_test_suite`` shows the running test) sat in a column
of the facts grid: it wrapped below its own label ("step" alone on a line, the test id cut on the next)
and widened that column, pushing rate, eta and elapsed away from where they stood a moment before.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from rich.console import Console

from engine import Operation, Progress, Status
from engine.cli.live import LiveView

LONG_STEP = "tests/test_op_output_db_kill.py::test_a_database_killed_at_each_statement[" + "x" * 120 + "]"


def _running(type_: str, progress: Progress, **fields: Any) -> Operation:
    """An operation running for a minute, as the live panel is given it."""
    now = time.time()
    return Operation(
        id="06bn3k76nb4mc",
        type=type_,
        status=Status.RUNNING,
        created_at=now - 60,
        queued_at=now - 60,
        started_at=now - 60,
        updated_at=now,
        progress=progress,
        **fields,
    )


def _lines(step: str, width: int) -> list[str]:
    op = _running(
        "comprehensive_test_suite",
        Progress(done=4, total=1984, step=step, rate=0.06, eta=3600),
        deadline=time.time() + 3600,
        checkpoint_seq=1,
    )
    view = LiveView("Ctrl-C pauses with a checkpoint")
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(view.render(op))
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [80, 120])
def test_a_long_step_is_one_line_cut_after_its_label_and_the_other_facts_stay_put(width: int) -> None:
    short, long = _lines("item 3", width), _lines(LONG_STEP, width)
    assert len(long) == len(short), "\n".join(long)
    step_lines = [line for line in long if "step" in line]
    assert len(step_lines) == 1, "\n".join(long)
    (line,) = step_lines
    assert "step tests/test_op_output_db_kill.py::" in line and line.rstrip(" │").endswith("…"), line
    # Every fact but the step is where it is with a short step.
    for fact in ("rate", "eta", "elapsed", "deadline in", "checkpoint", "attempt"):
        at_short = next(row.index(fact) for row in short if fact in row)
        at_long = next(row.index(fact) for row in long if fact in row)
        assert at_short == at_long, (fact, "\n".join(long))


HOSTILE = "[/] [bold red]x :smile: [link=file:///etc/passwd]y"


def test_text_from_the_record_and_the_hint_is_drawn_as_written_never_as_markup() -> None:
    """A step, a status message and the hint (it carries the ``--state-dir`` typed) hold any text: ``escape``
    left emoji codes (a step ``:smile:`` drawn as a smiley), and the hint was markup, so ``run`` under a state
    dir named ``a[/]b`` ended with an internal error, its operation left paused."""
    op = _running(
        "demo",
        Progress(done=4, total=10, step="step " + HOSTILE, message="msg " + HOSTILE),
        name=HOSTILE,
        deadline=time.time() + 3600,
    )
    hint = f"outlast --state-dir '/tmp/a{HOSTILE}' resume 06bn3k76nb4mc"
    console = Console(width=200, record=True, force_terminal=False, color_system=None)
    view = LiveView(hint)
    console.print(view.render(op))
    view.stopping = False
    op = op.model_copy(update={"status": Status.FAILED, "status_message": "failed: " + HOSTILE})
    console.print(view.render(op))
    text = console.export_text()
    for shown in ("step step " + HOSTILE, "msg " + HOSTILE, hint, "failed: " + HOSTILE):
        assert shown in text, text


def test_watch_draws_stored_text_as_written(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``outlast watch``'s table: a type stored by another client (``x[/]``) ended it with an internal error."""
    from engine.cli.live import LiveTable

    monkeypatch.setenv("COLUMNS", "400")  # every cell on one line

    now = time.time()
    ops = [
        Operation(
            id="06bn3k76nb4mc",
            type="x" + HOSTILE,
            name="n" + HOSTILE,
            status=Status.QUEUED,
            created_at=now,
            queued_at=now,
            updated_at=now,
        )
    ]
    with LiveTable() as table:  # not a terminal here: the table is printed once, as it stops
        table.update(ops)
    text = capsys.readouterr().out
    assert "x" + HOSTILE in text and "n" + HOSTILE in text, text


def test_a_message_and_log_lines_of_megabytes_are_cut_saying_how_long_they_are() -> None:
    """A handler's message of 1 MB filled the terminal, and wrapped again at each update held the loop the
    handler runs in: an 8-second run took minutes."""
    from engine import LogRecord

    big = "m" * 200_000
    now = time.time()
    op = _running("demo", Progress(done=4, total=10, step=big, message=big))
    view = LiveView("Ctrl-C pauses with a checkpoint")
    view.log(LogRecord(ts=now, level="info", message=big))
    console = Console(width=120, record=True, force_terminal=False, color_system=None)
    console.print(view.render(op))
    lines = console.export_text().splitlines()
    assert len(lines) < 30, len(lines)
    assert sum("… (200,000 characters)" in line for line in lines) == 2, "\n".join(lines)  # the message, the log line
