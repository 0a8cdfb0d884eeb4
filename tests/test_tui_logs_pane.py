"""The logs pane wraps its lines at its width whenever that changes.

RichLog wraps a line once, as it is written: at 80x24 a line written while the pane was behind another tab
stayed cut at 20 columns ("12:49:24 info" / "resuming from" / "checkpoint 5 (372" ...) once its tab was
shown, and lines written beside the other panes stayed as narrow once the terminal grew.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult

from tui.widgets.logs import LogsPane

LINE = "12:49:24 info resuming from checkpoint 5 (372 items done) " * 3


class LogsApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LogsPane(id="logs")


async def test_lines_are_wrapped_again_when_the_pane_widens_and_narrows() -> None:
    app = LogsApp()
    async with app.run_test(size=(30, 20)) as pilot:
        pane = app.query_one(LogsPane)
        await pilot.pause()
        pane.put(Text(LINE))
        await pilot.pause()
        narrow = len(pane.lines)
        await pilot.resize_terminal(80, 20)  # no wider: RichLog wraps at the console's width too (80 here)
        await pilot.pause()
        wide = len(pane.lines)
        assert max(len(s.text) for s in pane.lines) > 60 and wide < narrow, [s.text for s in pane.lines]
        await pilot.resize_terminal(30, 20)
        await pilot.pause()
        assert len(pane.lines) == narrow > 1
        assert " ".join(s.text for s in pane.lines).split() == LINE.split()  # every word, once
