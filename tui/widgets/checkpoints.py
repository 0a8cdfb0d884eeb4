"""The checkpoints pane: the selected operation's checkpoints; enter resumes from the one chosen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.text import Text
from textual.content import Content
from textual.message import Message
from textual.widgets import DataTable

from .. import format as fmt
from .detail import local_time

if TYPE_CHECKING:  # the engine's models (pydantic): imported after the first frame
    from engine import Checkpoint


COLUMNS = ("seq", "time", "%", "items", "size", "next step")
TITLE = "Checkpoints (enter resumes)"
"""The pane's title while it shows no operation's rows."""


class CheckpointsPane(DataTable[str | Text]):
    """A few rows at most (the store keeps the newest N), so a DataTable is the right tool here."""

    class ResumeFrom(Message):
        """The user chose a checkpoint to resume from."""

        def __init__(self, op_id: str, seq: int, items: int, newer: int, valid: bool = True) -> None:
            super().__init__()
            self.op_id = op_id
            self.seq = seq
            self.items = items
            """Items done as of the chosen checkpoint."""
            self.newer = newer
            """How many newer checkpoints a resume from it drops."""
            self.valid = valid
            """False: the checkpoint fails its checksum (✗), and the engine refuses to resume from it."""

    def __init__(self, *, id: str | None = None, classes: str = "") -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=False)
        self.op_id: str | None = None
        self.shown: list[Checkpoint] = []

    def on_mount(self) -> None:
        self._columns([])

    def _columns(self, rows: list[tuple[str | Text, ...]]) -> None:
        """The columns, each as wide as its widest cell, set here rather than left to DataTable's own
        widening: that happens when the table is next idle, after any frame painted meanwhile cached its
        lines at the old widths, and those lines were shown until something else changed (the time cut
        to "2026", until the cursor moved)."""
        self.clear(columns=True)
        for i, label in enumerate(COLUMNS):
            width = max([cell_len(label), *(cell_len(str(row[i])) for row in rows)])
            self.add_column(label, width=width, key=label)

    def show(self, op_id: str | None, checkpoints: list[Checkpoint], label: str = "") -> None:
        """Replace the rows (newest first), keeping the cursor on the same checkpoint. The title names
        the operation the rows are of (``op_id``, ``label``): they stay a moment after the cursor has
        moved on (the side panes are read once it rests), and must not pass for the new operation's."""
        if op_id == self.op_id and [(c.seq, c.checksum, c.valid) for c in checkpoints] == [
            (c.seq, c.checksum, c.valid) for c in self.shown
        ]:
            return  # (a checkpoint found corrupt since keeps its seq and its recorded checksum: shown ✗ now)
        # Content, not a str: a str title is markup, and a name is stored text ("[/b]" is no tag).
        self.border_title = Content(f"Checkpoints of {label or op_id} · enter resumes" if op_id else TITLE)
        keep = self.shown[self.cursor_row].seq if op_id == self.op_id and self.shown and self.row_count else None
        self.op_id = op_id
        self.shown = sorted(checkpoints, key=lambda c: -c.seq)
        rows: list[tuple[str | Text, ...]] = []
        for cp in self.shown:
            pct = f"{cp.progress_percentage:.0f}" if cp.progress_percentage is not None else "-"
            items = f"{fmt.count(cp.processed_items)}/{fmt.count(cp.total_items)}"
            seq = f"{cp.seq}" if cp.valid else f"{cp.seq} ✗"
            rows.append(
                (seq, local_time(cp.created_at), pct, items, fmt.size(cp.size), Text(fmt.printable(cp.next_step or "")))
            )
        self._columns(rows)
        for cp, row in zip(self.shown, rows, strict=True):
            self.add_row(*row, key=str(cp.seq))
        if keep is not None:
            for i, cp in enumerate(self.shown):
                if cp.seq == keep:
                    self.move_cursor(row=i)

    @property
    def chosen(self) -> Checkpoint | None:
        if not self.shown or not (0 <= self.cursor_row < len(self.shown)):
            return None
        return self.shown[self.cursor_row]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a row: ask the App to resume the operation the rows are of (``op_id``), which it does
        only if that is still the operation the cursor is on."""
        event.stop()
        cp = self.chosen
        if cp is not None and self.op_id is not None:
            newer = sum(1 for c in self.shown if c.seq > cp.seq)
            self.post_message(self.ResumeFrom(self.op_id, cp.seq, cp.processed_items, newer, cp.valid))
