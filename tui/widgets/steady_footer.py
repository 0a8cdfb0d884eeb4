"""A Footer that lays its keys out again only when what it shows changed, once for a burst of changes."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from textual.screen import Screen
from textual.widgets import Footer


class SteadyFooter(Footer):
    """Textual's Footer recomposes (every key a new widget, styled and laid out: ~20 ms here) after each
    change of the screen's bindings, and the change is delivered late: at start-up the screen's mount, its
    focus and its stack each said so, and the footer was laid out three times before the first frame (60-70
    ms of it), the last two showing what the first did. Here a change while a recompose is pending adds
    none (the pending one reads the bindings as they are when it runs), and a recompose that would show
    what is shown is skipped: what the footer shows is the same, it is built less often."""

    _recompose_pending = False
    _shown: Hashable = None
    """What the last compose showed (``_showing``)."""

    async def show_keys(self) -> None:
        """Lay out the keys that apply now, before the next frame: what the screen calls once it is mounted
        and has its selection, so that the first frame shows them. (A change of bindings is delivered after
        a refresh: the first frame showed no keys, or composed earlier, the keys of no operation.)"""
        self._bindings_ready = True
        done = asyncio.Event()

        async def show() -> None:
            try:
                await self._recompose_if_changed()
            finally:
                done.set()

        # Composed in the footer's own turn: Footer.compose binds its keys to what composes it.
        if self.call_later(show):  # False: the footer is closing (nothing to wait for)
            await done.wait()

    def bindings_changed(self, screen: Screen[object]) -> None:
        self._bindings_ready = True
        if not screen.app.app_focus:
            return
        if self.is_attached and screen is self.screen and not self._recompose_pending:
            self._recompose_pending = True
            self.call_after_refresh(self._recompose_if_changed)

    def _showing(self) -> Hashable:
        """Everything ``Footer.compose`` reads: the shown bindings (enabled or not, tooltips), the palette."""
        return (
            tuple(
                (b.key, b.action, b.description, self.app.get_key_display(b), b.group, b.tooltip, enabled, tooltip)
                for (_, b, enabled, tooltip) in self.screen.active_bindings.values()
                if b.show or b.key == self.app.COMMAND_PALETTE_BINDING
            ),
            self.show_command_palette,
            self.app.ENABLE_COMMAND_PALETTE,
        )

    async def _recompose_if_changed(self) -> None:
        self._recompose_pending = False  # first: a change from here on is not seen by this one, so it adds one
        showing = self._showing()
        if showing == self._shown:
            return
        self._shown = showing
        await self.recompose()
