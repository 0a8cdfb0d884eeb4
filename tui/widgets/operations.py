"""The operations table: a virtual table (Line API) that renders only the rows on screen.

Textual's DataTable measures every cell when rows are added and repaints on every change,
which froze the loop for about a second with 10,000 operations. This table keeps an
ordered list of ids over the app's dict of records and builds a line only when it is
painted, so the cost of a frame is the rows visible, not the rows stored.
"""

from __future__ import annotations

import textwrap
from bisect import insort
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from engine import Status, stopped_note, unique_prefix_lengths

from .. import format as fmt
from ..format import STATUS_ORDER

if TYPE_CHECKING:  # the engine's models (pydantic): imported after the first frame
    from typing import Self

    from engine import Operation, Progress


HANDLE_WIDTH = 5
"""The handle column's least width (handles up to 99,999)."""


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    width: int
    right: bool = False


COLUMNS: tuple[Column, ...] = (
    Column("handle", "#", HANDLE_WIDTH, right=True),
    Column("id", "ID", 13),
    Column("name", "NAME", 0),
    Column("type", "TYPE", 24),
    Column("status", "STATUS", 11),
    Column("progress", "PROGRESS", 15),
    Column("items", "ITEMS", 11, right=True),
    Column("rate", "RATE", 7, right=True),
    Column("eta", "ETA", 7, right=True),
    Column("elapsed", "ELAPSED", 7, right=True),
    Column("left", "LEFT", 7, right=True),
    Column("priority", "PRIO", 6),
)
DROP_ORDER = ("type", "elapsed", "rate", "left", "handle", "items", "eta")
"""Columns given up, in this order, when the terminal is too narrow for all of them."""
NAME_MIN = 10
NAME_MAX = 64
"""The name column's widest: past it, a wide terminal's width goes to the progress bar (at 320 columns the
names stood 200 columns away from the rest of their rows, behind a 10-column bar)."""
BAR = 9

SORTS: tuple[str, ...] = ("status", "created", "priority", "progress", "name", "type")
"""Sort keys cycled by the sort action; ``status`` puts work a user may act on first."""

_PRIO = {"high": 0, "normal": 1, "low": 2}
INCREMENTAL = 500
"""Rows moved at once up to which they are put back one by one; more, and everything is sorted again."""


def sort_key(name: str, live: Callable[[str], Progress | None]) -> Callable[[Operation], tuple]:
    """The key function for one sort; every sort ends with newest first, then the id, so the order is
    total (a moved row goes back exactly where a full sort puts it, even between equal times)."""

    if name == "status":
        return lambda op: (STATUS_ORDER[op.status], -op.created_at, op.id)
    if name == "priority":
        return lambda op: (_PRIO[op.priority.value], STATUS_ORDER[op.status], -op.created_at, op.id)
    if name == "progress":

        def by_progress(op: Operation) -> tuple:
            p = live(op.id) or op.progress
            return (-(p.percent or 0.0), -op.created_at, op.id)

        return by_progress
    if name == "name":
        return lambda op: (op.label.lower(), -op.created_at, op.id)
    if name == "type":
        return lambda op: (op.type, -op.created_at, op.id)
    return lambda op: (-op.created_at, op.id)


def _fitted(text: str, width: int) -> str:
    """``text`` in exactly ``width`` cells, ending in "…" when it was cut: "restore db (DRY RUN)" and "restore db
    (FOR REAL)" both read "restore db" in a narrow name column, with nothing saying there was more."""
    if cell_len(text) <= width:
        return set_cell_size(text, width)
    return set_cell_size(text, max(0, width - 1)) + "…"


def matches(op: Operation, words: list[str]) -> bool:
    """Every word of the filter appears in the id, name, type, status or priority, as the table shows them:
    a name another client stored with a control character reads ``\\x1b`` in its row, and typing what was
    read found nothing (the filter looked in the raw text, which no key types)."""
    hay = f"{_shown(op.id)} {_shown(op.name or '')} {_shown(op.type)} {op.status.value} {op.priority.value}"
    return all(w in hay.lower() for w in words)


def _shown(text: str) -> str:
    """``text`` as a row shows it (``fmt.printable``); text with nothing to escape as it is, at no cost
    (``isprintable`` is false for every character ``printable`` escapes)."""
    return text if text.isprintable() else fmt.printable(text)


class OperationsTable(ScrollView, can_focus=True):
    """Every operation in the store, one line each; ``ids`` is the filtered, sorted view."""

    COMPONENT_CLASSES = {
        "ops--header",
        "ops--cursor",
        "ops--cursor-blur",
        "ops--dim",
        "ops--bar",
        "ops--bar-empty",
        "ops--running",
        "ops--queued",
        "ops--paused",
        "ops--completed",
        "ops--failed",
        "ops--cancelled",
        "ops--high",
        "ops--low",
    }

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
    ]

    cursor: reactive[int] = reactive(0, always_update=False, repaint=False)

    class Highlighted(Message):
        """The cursor moved to another operation (or to none)."""

        def __init__(self, op_id: str | None) -> None:
            super().__init__()
            self.op_id = op_id

    def __init__(
        self,
        ops: dict[str, Operation],
        live: Callable[[str], Progress | None],
        clock: Callable[[], float],
        *,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.ops = ops
        self.live = live
        self.clock = clock
        self.ids: list[str] = []
        self.short: dict[str, int] = {}
        self._shown: set[str] = set()
        """The ids in ``ids``, for membership without a scan."""
        self._short_of: set[str] = set()
        """The ids ``short`` was computed over: computed again only when operations come or go."""
        self.sort = SORTS[0]
        self.filter_words: list[str] = []
        self.fetched = False
        """True once the first full list has been read (until then the table says it is loading)."""
        self._gap = 0
        """The row the selected operation stood at when it left the view by a change of its own (``_from``)."""
        self.failed: str | None = None
        """Why the engine did not start: said whole in the empty table (the status line cuts it off, a
        notification goes away), instead of "loading operations..." for ever."""
        self._styles: dict[str, Style] = {}
        self._styles_theme: str | None = None
        self._last_highlight: str | None = None
        self._columns: dict[int, list[tuple[Column, int]]] = {}
        self._handle_width = HANDLE_WIDTH
        """The handle column's width: the digits of the largest handle held, at least HANDLE_WIDTH."""
        self._stopped: dict[tuple[str, int], tuple[float, str | None]] = {}
        """Per worker (host, pid): when it was last looked at, and "stopped" or "gone" if its process was."""
        self._painted: dict[int, tuple[object, ...]] = {}
        """Per line (y) on screen: what it was last drawn with (its row's cells, the cursor, the width)."""
        self._prepared: dict[int, tuple[tuple[object, ...], list[tuple[str, Style | None]]]] = {}
        """Cells ``refresh_changed`` built for the lines it repaints, for ``render_line`` to draw."""

    # ---- the view --------------------------------------------------------------------------

    @property
    def selected_id(self) -> str | None:
        return self.ids[self.cursor] if 0 <= self.cursor < len(self.ids) else None

    def rebuild(self, moved: Iterable[str] | None = None) -> None:
        """Filter and sort again: every row (the filter or sort changed), or only the rows of ``moved``
        (records that came, went or changed status): each taken out and put back in its place, so a
        status change costs a few comparisons instead of a sort of every operation."""
        keep, row = self.selected_id, self.cursor
        moved = None if moved is None else set(moved)
        if moved is None or len(moved) > INCREMENTAL or self.sort == "progress" or not self._place(moved):
            ops: Iterable[Operation] = self.ops.values()
            if self.filter_words:
                ops = [op for op in ops if matches(op, self.filter_words)]
            self.ids = [op.id for op in sorted(ops, key=sort_key(self.sort, self.live))]
            self._shown = set(self.ids)
        if self.ops.keys() != self._short_of:  # a status change moves rows but changes no prefix
            self.short = unique_prefix_lengths(self.ops)  # among every operation the dashboard knows
            self._short_of = set(self.ops)
            # Handle 100,000 and up: the column widens with it (the row did, and pushed its last column off).
            most = max((op.handle or 0 for op in self.ops.values()), default=0)
            width = max(HANDLE_WIDTH, len(str(most)))
            if width != self._handle_width:
                self._handle_width = width
                self._columns.clear()
        if keep is not None:
            try:
                self.cursor = self.ids.index(keep)
            except ValueError:
                # Gone from the view by a change of its own (it completed under a "running" filter, another
                # process removed it): nothing is selected until the cursor moves. Moved onto a neighbour, it
                # had the next c or p act on an operation nobody chose. A new filter or sort: the top row.
                self.cursor = -1 if moved is not None else 0
                self._gap = row
        elif self.cursor != -1 or moved is None:
            self.cursor = 0
        size = Size(self.size.width, len(self.ids) + 1)
        if size != self.virtual_size:  # a new virtual size lays out the whole screen: only when rows came or went
            self.virtual_size = size
        self._scroll_to_cursor()
        self._announce()
        self.refresh()

    def _place(self, moved: set[str]) -> bool:
        """Take the ``moved`` rows out of the sorted view and insert each where it now belongs (if it is
        still there and matches the filter). False: the view was not in order; sort everything."""
        key = sort_key(self.sort, self.live)
        ops = self.ops
        out = moved & self._shown
        if len(out) == 1:
            self.ids.remove(next(iter(out)))  # a scan in C: a few microseconds for 10,000 rows
        elif out:  # one pass, not a scan per row: 500 rows out of 100,000 took half a second
            self.ids = [i for i in self.ids if i not in out]
        self._shown -= out
        kept = self.ids
        try:
            for op_id in moved:
                op = ops.get(op_id)
                if op is not None and (not self.filter_words or matches(op, self.filter_words)):
                    insort(kept, op_id, key=lambda i: key(ops[i]))
                    self._shown.add(op_id)
        except KeyError:  # a row whose record is gone without being named: sort everything
            return False
        return True

    def select(self, op_id: str) -> bool:
        """Put the cursor on this operation if it is in the view."""
        try:
            self.cursor = self.ids.index(op_id)
        except ValueError:
            return False
        self._scroll_to_cursor()
        self._announce()
        self.refresh()
        return True

    def _announce(self) -> None:
        current = self.selected_id
        if current != self._last_highlight:
            self._last_highlight = current
            self.post_message(self.Highlighted(current))

    def _scroll_to_cursor(self) -> None:
        rows = max(1, self.size.height - 1)
        top = int(self.scroll_y)
        if self.cursor < 0:
            return  # nothing selected
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + rows:
            self.scroll_to(y=self.cursor - rows + 1, animate=False, immediate=True)

    # ---- keys and mouse --------------------------------------------------------------------

    def action_cursor(self, delta: int) -> None:
        self._move(self._from(delta) + delta)

    def action_page(self, direction: int) -> None:
        self._move(self._from(direction) + direction * max(1, self.size.height - 2))

    def _from(self, delta: int) -> int:
        """The row a move of ``delta`` starts from: the cursor's; with nothing selected since the selected row left
        the view (``rebuild``), from where it stood, so that down selects the row that took its place and up the one
        above it. From no row, down went to the top of the list: d, y, then down in the middle of 10,000 operations
        selected the first, and the next d asked about it."""
        if self.cursor >= 0:
            return self.cursor
        return self._gap - 1 if delta > 0 else self._gap

    def action_jump(self, where: int) -> None:
        self._move(0 if where == 0 else len(self.ids) - 1)

    def _move(self, row: int) -> None:
        if not self.ids:
            return
        row = max(0, min(len(self.ids) - 1, row))
        if row != self.cursor:
            old, top = self.cursor, int(self.scroll_y)
            self.cursor = row
            self._scroll_to_cursor()
            self._announce()
            if int(self.scroll_y) == top:  # only the two rows the cursor left and reached are painted again
                for r in (old, row):
                    self.refresh(Region(0, r - top + 1, self.size.width, 1))
            else:
                self.refresh()

    def on_click(self, event: events.Click) -> None:
        """A click on a row selects it: counted from the content's top (``event.y`` counts from the border, and
        a click selected the row below the one clicked); the header and the empty lines below the last row
        select nothing (the last row was selected)."""
        at = event.get_content_offset(self)
        if at is None or at.y < 1:
            return
        row = int(self.scroll_y) + at.y - 1
        if row < len(self.ids):
            self._move(row)

    def refresh_changed(self) -> None:
        """Repaint the rows whose line would read otherwise now (figures moved, a status, the clock's
        elapsed time), not every row on screen: a table of finished work with a few running repaints a
        few lines a second. What moves rows (a sort, a filter, a scroll, the cursor) repaints as before."""
        self._prepared = {}
        if not self._painted or not self.is_mounted:
            self.refresh()
            return
        width = self.scrollable_content_region.width
        changed = []
        for y in range(1, self.scrollable_content_region.height):
            key, cells = self._line(y, width)
            if self._painted.get(y) != key:  # tuples of cells: (text, Style) compare by value
                changed.append(y)
                if cells is not None:
                    self._prepared[y] = (key, cells)
        if changed:
            super().refresh(*(Region(0, y, self.size.width, 1) for y in changed))

    def refresh(self, *regions: Region, **kwargs: Any) -> Self:
        if not regions:
            self._painted.clear()
        return super().refresh(*regions, **kwargs)

    def _stamp(self, y: int, width: int) -> tuple[object, ...]:
        """Where line ``y`` (below the header) is: its row's id, the width, the cursor and the focus on it."""
        row = int(self.scroll_y) + y - 1
        on_cursor = row == self.cursor
        return (self.ids[row] if row < len(self.ids) else None, width, on_cursor, on_cursor and self.has_focus)

    def _line(self, y: int, width: int) -> tuple[tuple[object, ...], list[tuple[str, Style | None]] | None]:
        """What line ``y`` (below the header) shows: a key that differs when its text or styles would (its
        ``_stamp`` first), and its row's cells (None: not an operation's row)."""
        stamp = self._stamp(y, width)
        op_id = stamp[0]
        op = self.ops.get(op_id) if isinstance(op_id, str) else None
        if op is None:
            return (*stamp, len(self.ids), self.fetched, self.failed, bool(self.ops)), None
        cells = self._row(op, width)
        return (*stamp, *cells), cells

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(event.size.width, len(self.ids) + 1)
        # Made smaller, the table kept its top row: the selected one went off the bottom, the detail pane
        # naming an operation no row showed (and the next c or p acting on it).
        self._scroll_to_cursor()

    # ---- painting --------------------------------------------------------------------------

    def _style(self, name: str) -> Style:
        """A component style (and ``base``: the widget's own), computed once per theme and style change."""
        theme = self.app.theme
        if theme != self._styles_theme:
            self._styles = {c: self._component_style(c) for c in self.COMPONENT_CLASSES}
            self._styles["base"] = self.rich_style  # ~0.15 ms each time it is asked: once per line was a third
            self._styles_theme = theme
        return self._styles[name]

    def _component_style(self, name: str) -> Style:
        """A component's Rich style, a translucent colour (``$foreground 20%``, the bar's part to go) blended
        over the table's background: Textual's Rich style drops the alpha, and the part to go was drawn in
        the text's own colour, so a bar at 0% looked as full as one at 100%."""
        style = self.get_component_rich_style(name, partial=True)
        color = self.get_component_styles(name).color
        if color.a < 1:
            style += Style(color=(self.background_colors[1] + color).rich_color)
        return style

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles_theme = None

    def columns(self, width: int) -> list[tuple[Column, int]]:
        """The columns that fit ``width``, with the name column taking what is left (up to NAME_MAX; the progress
        bar the rest)."""
        cached = self._columns.get(width)
        if cached is None:
            cached = self._columns[width] = self._fit(width, self._handle_width)
        return cached

    @staticmethod
    def _fit(width: int, handle_width: int = 0) -> list[tuple[Column, int]]:
        cols = [replace(c, width=handle_width) if c.key == "handle" and handle_width else c for c in COLUMNS]
        while True:
            fixed = sum(c.width for c in cols if c.key != "name") + len(cols) - 1
            left = width - fixed
            if left >= NAME_MIN or not any(c.key in DROP_ORDER for c in cols):
                break
            drop = next(k for k in DROP_ORDER if any(c.key == k for c in cols))
            cols = [c for c in cols if c.key != drop]
        name = max(NAME_MIN, left)
        surplus = name - NAME_MAX if name > NAME_MAX and any(c.key == "progress" for c in cols) else 0
        widths = {"name": name - surplus}
        return [(c, widths.get(c.key, c.width + (surplus if c.key == "progress" else 0))) for c in cols]

    def _empty_lines(self, width: int) -> list[str]:
        """What the table says while it lists nothing."""
        if self.failed is not None and not self.ops:
            said = textwrap.wrap(f"the engine did not start: {self.failed}", max(20, width - 2))
            return [*said, "", "nothing can be listed or run here until that is mended; q quits"]
        if not self.fetched:
            return ["loading operations..."]
        return ["no operations match" if self.ops else "no operations yet: press n to launch one"]

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self._style("base")
        if y == 0:
            return self._header(width, base)
        prepared = self._prepared.pop(y, None)  # unless the cursor, the focus or the rows moved since
        stale = prepared is None or prepared[0][:4] != self._stamp(y, width)
        key, cells = self._line(y, width) if stale or prepared is None else prepared
        self._painted[y] = key
        row = int(self.scroll_y) + y - 1
        if cells is None or row >= len(self.ids):
            lines = self._empty_lines(width) if not self.ids else []
            if row < len(lines):
                style = self._style("ops--dim") if self.failed is None else self._style("ops--failed")
                return Strip([Segment(f" {lines[row]}".ljust(width)[:width], base + style)], width)
            return Strip.blank(width, base)
        line = base
        if row == self.cursor:
            # The cursor's own colours for every cell: a status or bar colour chosen to read on the
            # background need not read on the cursor (red on blue, yellow on yellow). Bold is kept.
            line = base + self._style("ops--cursor" if self.has_focus else "ops--cursor-blur")
            cells = [(text, Style(bold=True) if style and style.bold else None) for text, style in cells]
        # Segments built directly (no rich Text to lay out): a line costs a third of what it did. Cells of one
        # style in a row are one segment (the spaces between columns, most cells): Textual cuts, styles and
        # encodes a line segment by segment, and a row of 30 made the table most of a repaint.
        segments: list[Segment] = []
        texts: list[str] = []
        last: Style | None = None
        for text, own in cells:
            drawn = line + own if own else line
            if drawn is not last and texts:
                segments.append(Segment("".join(texts), last))
                texts = []
            texts.append(text)
            last = drawn
        if texts:
            segments.append(Segment("".join(texts), last))
        cols = self.columns(width)
        if sum(w for _, w in cols) + len(cols) - 1 > width:
            # Narrower than the columns no row goes without (under 59 cells): cut at the edge. Said to be
            # ``width`` cells long, the line was written whole, and a terminal that does not wrap put every
            # cell past its edge in its last column (each row ended in the "l" of "normal").
            return Strip(segments).crop(0, width).adjust_cell_length(width, line)
        return Strip(segments, width).adjust_cell_length(width, line)

    def _header(self, width: int, base: Style) -> Strip:
        style = base + self._style("ops--header")
        parts = []
        for col, w in self.columns(width):
            title = col.title + ("▼" if col.key == _SORT_COLUMN.get(self.sort) else "")
            parts.append(title.rjust(w) if col.right else title.ljust(w))
        line = " ".join(parts)
        return Strip([Segment(line.ljust(width)[:width], style)], width)

    def _row(self, op: Operation, width: int) -> list[tuple[str, Style | None]]:
        """The pieces of one line: text and its style (None: the line's own)."""
        p = self.live(op.id) if op.status is Status.RUNNING else None
        now = self.clock()
        stopped = self._process_stopped(op, now) if p is None and op.status is Status.RUNNING else None
        p = p or op.progress
        if stopped and p.updated_at is not None:
            now = p.updated_at  # its elapsed and time left hold while it is stopped (they count only running)
        out: list[tuple[str, Style | None]] = []
        for col, w in self.columns(width):
            if out:
                out.append((" ", None))
            if col.key == "progress":
                self._bar(out, p, w)
                continue
            if col.key == "id":  # the shortest unique prefix stands out: what to type (as jj and git show it)
                ident = op.id if op.id.isascii() and op.id.isalnum() else fmt.printable(op.id)  # another client's
                n = min(w, self.short.get(op.id, len(ident)))
                out.append((ident[:n], Style(bold=True)))
                out.append((ident[n:w].ljust(w - n), self._style("ops--dim")))
                continue
            if stopped and col.key in ("status", "rate", "eta"):  # its last rate and ETA are not what it does now
                said = stopped.ljust(w)[:w] if col.key == "status" else "-".rjust(w)
                out.append((said, self._style("ops--paused")))
                continue
            value, style = self._cell(col.key, op, p, now)
            if col.key in ("name", "type"):  # exactly w columns: ljust would count a CJK character as one
                out.append((_fitted(value, w), style))
                continue
            value = value[:w]  # the handle column is as wide as the largest handle (rebuild)
            out.append((value.rjust(w) if col.right else value.ljust(w), style))
        return out

    def _process_stopped(self, op: Operation, now: float) -> str | None:
        """ "stopped" when running work another process runs on this host is stopped there (Ctrl-Z, SIGSTOP),
        "gone" when that process no longer runs (killed: a Redis store waits for its lease to run out), else
        None; looked at once every ``STOPPED_EVERY`` seconds per process. The row said "running" with the rate
        and ETA it last stored for as long as it stayed so (the detail pane's worker line says what to do)."""
        w = op.worker
        if w is None:
            return None
        key = (w.host, w.pid)
        seen = self._stopped.get(key)
        if seen is None or now - seen[0] >= STOPPED_EVERY:
            note = stopped_note(w.host, w.pid, getattr(w, "boot", None), getattr(w, "start", None))
            if len(self._stopped) > 4096:
                self._stopped.clear()
            seen = self._stopped[key] = (now, note.split(" ", 1)[0] if note else None)
        return seen[1]

    def _cell(self, key: str, op: Operation, p: Progress, now: float) -> tuple[str, Style | None]:
        running = op.status is Status.RUNNING
        if key == "handle":  # what to type in a shell: outlast watch 12
            return ("" if op.handle is None else str(op.handle)), None
        if key == "id":
            return op.id, self._style("ops--dim")
        if key == "name":
            return fmt.printable(op.label), None
        if key == "type":
            return fmt.printable(op.type), None
        if key == "status":
            return op.status.value, self._style(_STATUS_STYLE[op.status])
        if key == "items":
            return f"{fmt.count(p.done)}/{fmt.count(fmt.total_of(op, p))}", None
        if key == "rate":
            return (fmt.rate(p.rate) if running else "-"), None
        if key == "eta":
            return (fmt.duration(p.eta) if running else "-"), None
        if key == "elapsed":
            return fmt.duration(op.elapsed_at(now)), None
        if key == "left":
            return (fmt.duration(op.seconds_left(now)) if op.deadline and running else "-"), None
        value = op.priority.value
        return value, self._style("ops--high") if value == "high" else self._style(
            "ops--low"
        ) if value == "low" else None

    def _bar(self, out: list[tuple[str, Style | None]], p: Progress, w: int) -> None:
        """The part done a thick line, the part to go a thin one, faint: told apart without colour (on the
        cursor's row the whole bar is in the cursor's colour), as a bar at 0% looked full where the
        terminal drew both in one colour."""
        pct = p.percent
        bar = max(1, w - 5)
        done, todo = self._style("ops--bar"), self._style("ops--bar-empty")
        rest = "─"
        if pct is None:
            out += [("─" * bar, todo), ("    ?", None)]
            return
        filled = max(0.0, pct) / 100 * bar  # a negative count another client stored drew the bar 5 cells too long
        full = int(filled)
        out.append(("━" * full, done))
        if full < bar:
            half = filled - full >= 0.5
            out += [("╸" if half else rest, done if half else todo), (rest * (bar - full - 1), todo)]
        out.append((f"{pct:4.0f}%"[-5:].rjust(5), None))


STOPPED_EVERY = 2.0
"""Seconds between two looks at whether another process's running work is stopped (a /proc read each)."""

_STATUS_STYLE = {
    Status.RUNNING: "ops--running",
    Status.QUEUED: "ops--queued",
    Status.PAUSED: "ops--paused",
    Status.INTERRUPTED: "ops--paused",
    Status.COMPLETED: "ops--completed",
    Status.FAILED: "ops--failed",
    Status.TIMED_OUT: "ops--failed",
    Status.CANCELLED: "ops--cancelled",
}
_SORT_COLUMN = {
    "status": "status",
    "created": "id",
    "priority": "priority",
    "progress": "progress",
    "name": "name",
    "type": "type",
}
SORTS_UNMARKED = frozenset(sort for sort, column in _SORT_COLUMN.items() if column in DROP_ORDER)
"""Sorts whose column a narrow table leaves out, and its ▼ with it: only the status line says them."""
