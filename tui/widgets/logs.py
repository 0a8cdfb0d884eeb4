"""The logs pane: the selected operation's log, or every operation's, following live."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from rich.text import Text
from textual.events import Resize
from textual.widgets import RichLog

from .. import format as fmt

if TYPE_CHECKING:  # the engine's models (pydantic): imported after the first frame
    from engine import LogRecord


LEVEL_STYLE = {"warning": "yellow", "error": "bold red", "critical": "bold red", "debug": "dim"}
LINE_CHARS = 5000
"""Characters of one log line the pane shows, and how long it is (``outlast logs ID`` has all of it): a
command's output without a newline is stored in lines of 1 MB, and 20 of them, wrapped at the pane's width
into half a million lines, held the event loop for 30 s (the engine's timeouts, pause and cancel with it)."""


class LogsPane(RichLog):
    """``mode`` is ``selected`` (one operation) or ``all`` (the operations that run or ran last, by
    whichever process): both read from the store. Long lines wrap at the pane's width. It follows the log
    while it is scrolled to its end (anchored, in Textual's words), and stays where it was scrolled back to
    (home, page up, the wheel) until scrolled to its end again: RichLog's ``auto_scroll`` pulled it back to
    the end at every line written, so a running operation's log could not be read back."""

    def __init__(self, *, id: str | None = None, classes: str = "") -> None:
        super().__init__(
            id=id, classes=classes, max_lines=2000, wrap=True, min_width=20, markup=False, auto_scroll=False
        )
        self.mode = "selected"
        self.op_id: str | None = None
        self.empty = True
        self.said_empty = False
        """"no log lines yet" is written (not ``self.lines``: RichLog holds writes back while the pane has
        no size, a pane behind another tab, so each poll wrote the line once more)."""
        self.log_offset = 0
        """Byte offset in the selected operation's log up to which it has been read."""
        self.offsets: dict[str, int] = {}
        """In ``all`` mode: each operation's offset read up to."""
        self.shown: deque[Text] = deque(maxlen=2000)
        """The lines written, to wrap again at a new width: RichLog wraps a line once, as it is written, so a
        line written behind another tab (80x24) stayed cut at 20 columns, and one written beside the other
        panes stayed as narrow once the terminal grew."""
        self.wrapped_at = 0
        """The width the lines were last wrapped at (0: none yet)."""

    def on_mount(self) -> None:
        self.anchor()

    def clear(self) -> LogsPane:
        self.shown.clear()
        super().clear()
        if self.is_mounted:
            self.anchor()  # another operation's log (or every one's): followed from its end
        return self

    def put(self, line: Text) -> None:
        self.shown.append(line)
        self.write(line)

    def on_resize(self, event: Resize) -> None:
        """Wrap every line again at a new width (before RichLog's own handler, which writes what waited
        for the first size)."""
        width = event.size.width
        if not width:
            return
        if self.wrapped_at and width != self.wrapped_at and self.shown:
            lines = list(self.shown)
            super().clear()
            for line in lines:
                self.write(line)
        self.wrapped_at = width

    def reset(self, op_id: str | None) -> None:
        self.op_id = op_id
        self.log_offset = 0
        self.offsets = {}
        if not self.empty:  # an empty log still saying so stays as it is: no layout at every selection
            self.clear()
            self.said_empty = False
        self.empty = True

    def add(self, records: list[LogRecord], with_id: bool = False) -> None:
        if records and self.empty:
            self.clear()
            self.empty = self.said_empty = False
        elif not records and self.empty and not self.said_empty:
            self.put(Text("no log lines yet", style="dim"))
            self.said_empty = True
        self._add(records, with_id)

    def _add(self, records: list[LogRecord], with_id: bool) -> None:
        for rec in records:
            line = Text()
            line.append(f"{fmt.clock(rec.ts)} ", style="dim")
            if with_id and rec.operation_id:
                line.append(f"{fmt.printable(rec.operation_id[-4:])} ", style="cyan")
            level = rec.level.lower()
            line.append(f"{fmt.printable(level[:4]):4} ", style=LEVEL_STYLE.get(level, "green"))
            line.append(fmt.printable(fmt.abridged(rec.message, LINE_CHARS)))
            self.put(line)
