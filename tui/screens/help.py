"""The help screen (``?``): every key and what it does, over the dashboard."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

INTRO = (
    "Outlast runs long operations so they finish or fail, never silently die. "
    "Everything here also works headless: outlast --help."
)
COLUMNS = (
    "RATE, ETA, ELAPSED and LEFT are the current attempt's: a resume starts them again (the detail says which attempt)."
)


class HelpScreen(ModalScreen[None]):
    """The keys as a two-column table; escape, ``?`` or ``q`` closes it."""

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    #help-dialog {
        width: 72;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: round $primary;
        border-title-style: bold;
        background: $surface;
        padding: 0 1;
    }
    #help-intro {
        color: $text-muted;
        margin-bottom: 1;
    }
    #help-keys {
        height: auto;
    }
    #help-columns {
        color: $text-muted;
        margin-top: 1;
    }
    #help-close {
        color: $text-muted;
        margin-top: 1;
        text-align: right;
    }
    """

    AUTO_FOCUS = "#help-dialog"

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def __init__(self, bindings: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = list(bindings)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog") as dialog:
            dialog.border_title = "Keys"
            yield Static(INTRO, id="help-intro")
            yield Static(self.key_table(), id="help-keys")
            yield Static(COLUMNS, id="help-columns")
            yield Static("esc, ? or q to close", id="help-close")

    def key_table(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(justify="right", style="bold", no_wrap=True)
        table.add_column()
        for key, description in self.keys:
            table.add_row(Text(key), Text(description))
        return table

    def action_close(self) -> None:
        self.dismiss(None)
