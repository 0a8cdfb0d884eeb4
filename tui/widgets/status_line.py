"""The dashboard's status line: fields that fit its width, whole, the least useful dropped first."""

from __future__ import annotations

from rich.cells import cell_len
from textual.content import Content
from textual.widgets import Static

SEPARATOR = " · "
ELLIPSIS = "…"


KEPT = 100
"""A field of this worth or more (what the dashboard says of the store, say) is never dropped: cut."""


def fit_fields(head: Content, fields: list[tuple[int, Content]], width: int) -> Content:
    """``head`` and then ``fields`` (each with its worth: the lowest is dropped first), joined by
    ``SEPARATOR``, within ``width`` cells. Whole fields are dropped until the rest fit; what still does not
    (the head or a field of worth ``KEPT``) is cut at a space, with an ellipsis: never a count cut in half
    ("12 compl", "3 runn"), which read as another number or word."""
    kept = list(enumerate(fields))

    def line() -> Content:
        return Content(SEPARATOR).join([head, *(f for _, (_, f) in kept)])

    while width > 0 and line().cell_length > width:
        droppable = [item for item in kept if item[1][0] < KEPT]
        if not droppable:
            return cut_at_space(line(), width)
        kept.remove(min(droppable, key=lambda item: (item[1][0], -item[0])))  # the least worth; of equals, the last
    return line()


def cut_at_space(content: Content, width: int) -> Content:
    """``content`` cut to ``width`` cells at its last space that leaves room for an ellipsis."""
    plain = content.plain
    room = width - cell_len(ELLIPSIS)
    end = 0
    used = 0
    for i, ch in enumerate(plain):
        used += cell_len(ch)
        if used > room:
            break
        if ch == " ":
            end = i
    cut = content[:end].rstrip()
    if cut.plain.endswith("·"):
        cut = cut[: len(cut.plain) - 1].rstrip()
    return Content.assemble(cut, " " if cut.plain else "", ELLIPSIS) if cut.plain else Content(ELLIPSIS)


class StatusLine(Static):
    """One line of fields, laid out again for the width it has at each render (a resize too)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self._head = Content("")
        self._fields: list[tuple[int, Content]] = []

    def show(self, head: Content, fields: list[tuple[int, Content]]) -> None:
        """Show ``head`` and ``fields`` (see ``fit_fields``); one line high whatever they say: no layout."""
        self._head, self._fields = head, fields
        self.update(fit_fields(head, fields, self.content_size.width), layout=False)

    def on_resize(self) -> None:
        self.update(fit_fields(self._head, self._fields, self.content_size.width), layout=False)
