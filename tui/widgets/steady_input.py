"""An Input whose cursor stays lit when nobody can see it blink."""

from __future__ import annotations

from textual.widgets import Input


class SteadyInput(Input):
    """An Input that does not blink when the app runs headless (a pilot, a test, a screenshot): nobody
    watches, and a screenshot must not depend on whether the 0.5 s blink timer fired before it was taken
    (on a loaded machine it did, and a snapshot test failed on a cursor)."""

    def on_mount(self) -> None:
        if self.app.is_headless:
            self.cursor_blink = False
