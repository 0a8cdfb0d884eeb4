"""An Input that applies the keys of a burst in the order typed, and whose cursor stays lit when nobody can
see it blink."""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.widgets import Input


class SteadyInput(Input):
    """An Input that applies every key in the order it arrived, even when keys come in one burst, and does
    not blink when the app runs headless.

    Textual inserts a printable key at once but runs an editing key (backspace, left, ctrl+u...) as a
    binding after the event has bubbled up to the app: in a burst (a slow SSH link, a paste, tmux send-keys)
    "backspace x3, xyz" after "abcdef" left "abcdef" (the characters went in, then the backspaces took them
    out) and "left x3, 12" gave "abcdef12". Here the Input's own bindings run in the key's turn.

    Headless (a pilot, a test, a screenshot) nobody watches the cursor blink, and a screenshot must not
    depend on whether the 0.5 s blink timer fired before it was taken (on a loaded machine it did, and a
    snapshot test failed on a cursor)."""

    _KEYS: dict[str, str] = {
        key.strip(): b.action for b in Input.BINDINGS if isinstance(b, Binding) for key in b.key.split(",")
    }

    def on_mount(self) -> None:
        if self.app.is_headless:
            self.cursor_blink = False

    async def on_key(self, event: events.Key) -> None:
        """Runs before Input's own key handler (a subclass's ``on_key`` before this one); prevent_default
        keeps the later ones from running too."""
        action = self._KEYS.get(event.key)
        if action is not None:
            event.stop()
            event.prevent_default()
            await self.run_action(action)
