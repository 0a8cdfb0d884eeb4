"""Repainting only the lines of a pane that changed.

A pane whose figures move once a second (the detail of a running operation, the resources) was repainted
whole at each change: every line styled again by Textual, cut into the screen's regions and encoded for the
terminal, though most of them read as before. ``ChangedLines`` renders the widget's lines itself, keeps them,
and at ``repaint_changed`` asks Textual to repaint only the lines that differ from those on screen.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.visual import Visual, visualize
from textual.widget import Widget


class ChangedLines(Widget):
    """A widget drawn from ``render()`` whose ``repaint_changed`` repaints the lines that changed only.
    Any other refresh (a new size, a style or theme change, ``refresh()``) draws every line again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._painted: list[Strip] | None = None
        """The lines as last drawn (None: draw them all again at the next paint)."""
        self._painted_size = Size(0, 0)
        self._kept: dict[tuple[object, ...], list[Strip]] = {}
        """The lines of a Text last drawn (``render_strips``), by what each holds."""

    def render_strips(self, width: int, height: int) -> list[Strip]:
        """Every line of the content at this size: ``render()`` as Textual draws it. A rich Text that is not
        wrapped (``no_wrap``) is drawn line by line, and a line that reads as it did is not laid out again."""
        content = self.render()
        if not isinstance(content, Text) or not content.no_wrap:
            self._kept = {}
            return Visual.to_strips(self, visualize(self, content), width, height, self.visual_style)
        style = self.visual_style
        kept, self._kept = self._kept, {}
        strips: list[Strip] = []
        for y, line in enumerate(content.split("\n", allow_blank=True)):
            if y >= height:
                break
            held = (line.plain, tuple(line.spans), line.style, width, style, y)
            lines = kept.get(held) or self._kept.get(held)
            if lines is None:
                # Drawn alone, a line's cells are offset as the first line's (what text selection reads).
                lines = [s.apply_offsets(0, y) for s in Visual.to_strips(self, visualize(self, line), width, 1, style)]
            self._kept[held] = lines
            strips += lines
        return strips

    def repaint_changed(self) -> None:
        """Repaint the lines whose content changed since they were drawn; every line when the size changed
        or nothing is drawn yet."""
        size = self.size
        old = self._painted
        if old is None or size != self._painted_size or not self.is_mounted or not size.area:
            self.refresh()
            return
        new = self.render_strips(size.width, size.height)
        self._painted = new
        blank = Strip.blank(size.width, self.visual_style.rich_style)
        changed = [
            y
            for y in range(min(size.height, max(len(new), len(old))))
            if (new[y] if y < len(new) else blank) != (old[y] if y < len(old) else blank)
        ]
        if changed:
            super().refresh(*(Region(0, y, size.width, 1) for y in changed))

    def refresh(self, *regions: Region, **kwargs: Any) -> Any:
        if not regions:
            self._painted = None
        return super().refresh(*regions, **kwargs)

    def notify_style_update(self) -> None:
        self._painted = None
        super().notify_style_update()

    def render_line(self, y: int) -> Strip:
        size = self.size
        if self._painted is None or size != self._painted_size:
            self._painted = self.render_strips(size.width, size.height)
            self._painted_size = size
        if y < len(self._painted):
            return self._painted[y]
        return Strip.blank(size.width, self.visual_style.rich_style)
