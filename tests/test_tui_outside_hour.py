"""What an adversarial outside hour at the dashboard in a real terminal found, each driven through Textual's pilot.

A live log scrolled back to read was pulled to its end at the next line written; below 59 columns the
table's rows ran past the screen's edge, and the terminal showed their last letter in its last column.
"""

from __future__ import annotations

import time

from textual.app import App, ComposeResult

from engine import LogRecord
from tui.widgets.logs import LogsPane


class LogsApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LogsPane(id="logs")


def _records(first: int, n: int) -> list[LogRecord]:
    return [LogRecord(ts=time.time(), level="info", message=f"line {i}") for i in range(first, first + n)]


async def test_a_live_log_scrolled_back_stays_where_it_was_scrolled_and_follows_again_at_its_end() -> None:
    """The pane follows a running operation's log. Scrolled back (home, page up, the wheel) to read what came
    before, it was pulled back to the end by the next poll's lines, once a second: a chatty log could not
    be read back at all. It follows only while it is at its end, as ``tail -f`` in a pager does."""
    app = LogsApp()
    async with app.run_test(size=(60, 12)) as pilot:
        pane = app.query_one(LogsPane)
        pane.add(_records(0, 100))
        await pilot.pause()
        assert pane.scroll_y == pane.max_scroll_y > 0  # following
        pane.focus()
        await pilot.press("home")
        pane.add(_records(100, 5))
        await pilot.pause()
        await pilot.pause()
        assert pane.scroll_y == 0, (pane.scroll_y, pane.max_scroll_y)
        await pilot.press("pageup", "end")
        pane.add(_records(105, 5))
        await pilot.pause()
        await pilot.pause()
        assert pane.scroll_y == pane.max_scroll_y
        assert "line 109" in pane.lines[-1].text
