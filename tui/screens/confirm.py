"""Small modal questions: confirm an action; what to do with running work on quit."""

from __future__ import annotations

from typing import TypeVar

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label

from ..format import printable

R = TypeVar("R")

SLIM = 60
"""Columns under which a dialog's buttons go two to a row (four in one row ran off a 40-column terminal)."""
SHORT = 20
"""Rows under which a dialog drops its blank rows (at 12, the quit question's buttons were below the screen)."""


class DialogScreen(ModalScreen[R]):
    """A modal question that stays whole on a small terminal (40x12): under ``SLIM`` columns or ``SHORT``
    rows its buttons are one line each (compact) and its padding goes (``-slim``, ``-short`` in app.tcss:
    two buttons to a row when slim); what still does not fit scrolls, the focused button kept in view."""

    def on_resize(self, event: events.Resize) -> None:
        slim, short = event.size.width < SLIM, event.size.height < SHORT
        self.set_class(slim, "-slim")
        self.set_class(short, "-short")
        for button in self.query(Button):
            button.compact = slim or short


class ConfirmScreen(DialogScreen[bool]):
    """Yes or no: y confirms, n or escape declines; enter presses the focused button, No until the user moves to
    Yes (an enter pressed out of habit changes nothing)."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, yes: str = "Yes", explain: str = "") -> None:
        super().__init__()
        self.question = question
        self.yes = yes
        self.explain = explain
        """Under the question, muted: what answering yes does (what goes, what stays)."""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(printable(self.question), classes="question", markup=False)
            if self.explain:
                yield Label(printable(self.explain), classes="explain", markup=False)
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class QuitScreen(DialogScreen[str | None]):
    """Operations still run in this process: hand them over to a background worker, pause them (a
    checkpoint each), or wait until they finish."""

    BINDINGS = [
        Binding("h", "choose('hand_over')", "Hand over and quit"),
        Binding("p", "choose('pause')", "Pause and quit"),
        Binding("w", "choose('wait')", "Wait, then quit"),
        Binding("escape", "choose(None)", "Stay"),
    ]

    def __init__(self, running: int) -> None:
        super().__init__()
        self.running = running

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(_still_running(self.running), classes="question", id="quit-question")
            yield Label(
                "Hand over: a background worker goes on, from a checkpoint each.\n"
                "Pause: each stops at a checkpoint; `outlast resume ID` goes on later.\n"
                "Wait: start nothing new, quit when they have finished.",
                classes="explain",
            )
            with Horizontal(classes="buttons"):
                yield Button("Hand over (h)", variant="success", id="hand_over")
                yield Button("Pause (p)", variant="warning", id="pause")
                yield Button("Wait (w)", variant="primary", id="wait")
                yield Button("Stay (esc)", id="stay")

    def on_mount(self) -> None:
        self.query_one("#hand_over", Button).focus()

    def show_running(self, running: int) -> None:
        """What runs here now (the app calls this every frame while the question is open): the work may
        finish, or queued work start, while it waits for an answer; it said "1 operation still runs" of
        work long completed. The frame may come before this screen has composed (a loaded machine): then there
        is no question yet, and compose writes the count kept here (a lookup of the question raised, and the
        dashboard died with a traceback instead of asking)."""
        if running != self.running:
            self.running = running
            for question in self.query("#quit-question").results(Label):
                question.update(_still_running(running))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "stay" else event.button.id)

    def action_choose(self, choice: str | None) -> None:
        self.dismiss(choice)


def _still_running(n: int) -> str:
    if n == 0:
        return "Nothing runs in this dashboard any more: each choice but Stay quits."
    return f"{n} operation{'s' if n != 1 else ''} still run{'s' if n == 1 else ''} in this dashboard."
