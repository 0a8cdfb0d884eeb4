"""The detail pane: everything about the selected operation, including how its timeout was computed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.cells import cell_len, set_cell_size
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.strip import Strip
from textual.visual import RichVisual, Visual, VisualType

from engine import Status, stopped_note

from .. import format as fmt
from .lines import ChangedLines

if TYPE_CHECKING:  # the engine's models (pydantic): imported after the first frame
    from engine import Operation, Progress


STATUS_COLOUR = {
    Status.RUNNING: "$success",
    Status.QUEUED: "$accent",
    Status.PAUSED: "$warning",
    Status.INTERRUPTED: "$warning",
    Status.COMPLETED: "$success",
    Status.FAILED: "$error",
    Status.TIMED_OUT: "$error",
    Status.CANCELLED: "$text-muted",
}


def result_summary(result: object) -> str:
    """A finished operation's result for people: its plain values (counts with separators, paths,
    words) on one line, and how many entries each nested value has; the nested ones follow below."""
    if not isinstance(result, dict):
        return _plain(result)
    parts = []
    for k, v in result.items():
        if isinstance(v, dict | list):
            parts.append(f"{k}: {len(v):,} {'entry' if len(v) == 1 else 'entries'}")
        else:
            parts.append(f"{k}: {_plain(v)}")
    return " · ".join(parts) or "(empty)"


def _plain(v: object) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "-"}[v]
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    text = str(v)
    return text if len(text) <= 200 else text[:199] + "…"


def _param(v: object) -> str:
    """A param as ``-p KEY=VALUE`` takes it and ``outlast show`` prints it: text as it is, anything else JSON
    (``null``, ``["*.py"]``), where Python's ``None`` and ``['*.py']`` read as nothing a user could type."""
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def local_time(ts: float | None) -> str:
    """``HH:MM:SS`` in local time (the date too when it is not today)."""
    lt = fmt.local_time(ts)
    if lt is None:
        return "-"
    if time.strftime("%Y-%m-%d", lt) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M:%S", lt)
    return time.strftime("%Y-%m-%d %H:%M", lt)


class KeyValues:
    """Keys (bold) and their values beside them, drawn as ``Table.grid(padding=(0, 1))`` with a bold
    ``no_wrap`` column and an ``overflow="fold"`` one draws them, for a tenth of its work (the pane is drawn
    again every second while its operation runs: 1.8 ms a time with the table, a third of the dashboard's
    repaint). Every key is plain text, never markup (a metric's name is the handler's: ``[/]`` in one raised
    MarkupError and ended the dashboard). When every value is a Text, the lines are built here, as the table
    lays them out (a long value folded in the column left beside the keys); otherwise the table draws them,
    without its cells' padding (rich wraps every cell of a padded table in a ``Padding``, rendered on its
    own) but with the key's own last character as the space between the columns. Narrower than the keys
    and a few columns, where rich would cut the key column (its padding then counts apart from the text),
    the padded table is drawn, as before."""

    SPARE = 8
    """Columns beyond the widest key from which the key column is never cut (below: the padded table)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, RenderableType]] = []

    def add(self, key: str, value: RenderableType) -> None:
        self.rows.append((key, value))

    def table(self, padded: bool) -> Table:
        grid = Table.grid(padding=(0, 1) if padded else 0)
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for key, value in self.rows:
            grid.add_row(Text(key if padded else f"{key} "), value)  # a key is stored text: never markup
        return grid

    def _padded(self, width: int) -> bool:
        return width < max((cell_len(key) for key, _ in self.rows), default=0) + 1 + self.SPARE

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = self._lines(console, options)
        if lines is None:
            yield self.table(self._padded(options.max_width))
        else:
            yield from lines

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.table(self._padded(options.max_width)))

    def _lines(self, console: Console, options: ConsoleOptions) -> list[Segment] | None:
        """The table's lines, built here: every key plain text and every value a Text laid out as the column
        says (a value too long for the width left beside the keys is folded there, as the table folds it);
        None otherwise (the table draws them)."""
        laid = self.layout(options)
        if laid is None:
            return None
        rows, key_width, value_width = laid
        out: list[Segment] = []
        for key, value in rows:
            out += self.row_lines(console, key, value, key_width, value_width)
        return out

    def layout(self, options: ConsoleOptions) -> tuple[list[tuple[str, Text]], int, int] | None:
        """The rows, the key column's width and the value column's, when the lines are built here (``_lines``);
        None when the table draws them (a narrow width, a key or value it alone lays out)."""
        if options.highlight or self._padded(options.max_width):
            return None
        rows: list[tuple[str, Text]] = []
        key_width = value_width = 0
        for key, value in self.rows:
            if not isinstance(value, Text) or "\t" in key:
                return None
            if value.justify or value.overflow or value.no_wrap is not None or "\n" in value or "\t" in value:
                return None
            rows.append((key, value))
            key_width = max(key_width, cell_len(key) + 1)
            value_width = max(value_width, value.cell_len)
        value_width = min(value_width, options.max_width - key_width)  # the table's fold column, narrowed
        return rows, key_width, value_width

    @staticmethod
    def row_lines(console: Console, key: str, value: Text, key_width: int, value_width: int) -> list[Segment]:
        """One row's lines, as the table lays them out: the value wrapped (folded) and padded to the column
        (its ``justify="left"``) in the value's own style, which ``join`` makes a span (a Text with no spans
        renders without it)."""
        bold, new_line = console.get_style("bold"), Segment.line()
        lines = value.wrap(console, value_width, justify="left", overflow="fold")
        gap = Segment(key + " " * (key_width - cell_len(key)), bold)
        out: list[Segment] = []
        for line in Segment.split_lines(Text("\n").join(lines).render(console)):
            out.append(gap)
            out.extend(line)
            out.append(new_line)
            gap = Segment(" " * key_width, bold)
        return out


class _Segments:
    """Segments already laid out, as a renderable."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.segments


class DetailBody(ChangedLines):
    """What the detail pane shows, drawn as a Static draws it; a new renderable repaints only the lines that
    changed (a running operation's items, rate and elapsed time move each second; its other lines do not)."""

    DEFAULT_CSS = "DetailBody { height: auto; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._content: VisualType = ""
        self._rows: dict[tuple[object, ...], list[Strip]] = {}
        """The lines of each key and value last drawn (``render_strips``), by what they hold."""

    def render_strips(self, width: int, height: int) -> list[Strip]:
        """As Textual draws the content, but a ``KeyValues`` row that reads as it did is not laid out and
        styled again: its lines are kept (a running operation moves four or five of its twenty each second)."""
        content = self._content
        parts = content.renderables if isinstance(content, Group) else []
        grid = parts[0] if parts and isinstance(parts[0], KeyValues) else None
        app = self.app
        laid = None if grid is None else grid.layout(app.console_options.update(highlight=False, width=width))
        if grid is None or laid is None:
            self._rows = {}
            return super().render_strips(width, height)
        rows, key_width, value_width = laid
        style = self.visual_style
        kept, self._rows = self._rows, {}
        strips: list[Strip] = []
        for key, value in rows:
            held = (key, value.plain, tuple(value.spans), value.style, key_width, value_width, width, style)
            lines = kept.get(held) or self._rows.get(held)
            if lines is None:
                segments = grid.row_lines(app.console, key, value, key_width, value_width)
                lines = Visual.to_strips(self, RichVisual(self, _Segments(segments)), width, None, style)
            self._rows[held] = lines
            strips += lines
        for part in parts[1:]:
            strips += Visual.to_strips(self, RichVisual(self, part), width, None, style)
        return strips[:height]

    def render(self) -> VisualType:
        return self._content

    def update(self, content: VisualType, layout: bool = True) -> None:
        self._content = content
        if layout:
            self.refresh(layout=True)
        else:
            self.repaint_changed()


class DetailPane(VerticalScroll, can_focus=True):
    """Shows one operation; ``show`` is called at the app's frame rate while it runs."""

    def __init__(self, clock: Callable[[], float], *, id: str | None = None, classes: str = "") -> None:
        super().__init__(id=id, classes=classes)
        self.clock = clock
        self._body = DetailBody(id="detail-body")
        self._height = 0
        """Lines given to the body: changed (a new layout) only when the content outgrows it or shrinks a lot."""
        self._last: tuple[object, ...] = ()
        """Lengths of what was shown last: a new layout only when they change, not every frame."""

    def compose(self):  # type: ignore[no-untyped-def]
        yield self._body

    def show(
        self, op: Operation | None, live: Progress | None, full: Operation | None = None, tick: int | None = None
    ) -> None:
        """``op`` as the table holds it (fresh), ``full`` the whole record when read (params, result);
        ``tick`` counts the screen's live repaints (None: the wall clock's seconds)."""
        if op is None:
            # Shown once, not at every frame while nothing is selected: a new layout at 5 Hz of an idle screen.
            if self._last == (None, self.app.theme):
                return
            self._height = 0
            self._body.styles.height = "auto"
            self._last = (None, self.app.theme)
            self._body.update(Text("no operation selected", style="dim"))
            return
        # A running operation: its live figures at the screen's live repaint, once a second, in the same
        # frame as the table's (a layout of this pane at 5 Hz was most of a frame). Any other: when its
        # record changes.
        if op.status is Status.RUNNING:
            when: float = int(self.clock()) if tick is None else tick
        else:
            when = op.updated_at
        key = (op.id, op.status, when, full is not None, self.app.theme)
        if key == self._last:
            return  # nothing shown would change, or not for long: no new layout, no repaint
        self._last = key
        renderable, lengths = self.render_op(op, live, full)
        # Estimated lines (values wrap in the column right of the keys); a layout of the whole screen
        # only when the estimate leaves the height held now, not at every operation the cursor passes.
        width = max(10, self.size.width - 16)
        lines = sum(max(1, -(-n // width)) for n in lengths)
        if not (lines < self._height <= lines + 6):
            self._height = lines + 3
            self._body.styles.height = self._height
        self._body.update(renderable, layout=False)

    def render_op(
        self, op: Operation, live: Progress | None, full: Operation | None = None
    ) -> tuple[RenderableType, list[int]]:
        """The renderable, and the length of each line it holds before wrapping (what decides its height)."""
        p = live or op.progress
        now = self.clock()
        theme = self.app.current_theme
        colours = {
            "$success": theme.success,
            "$accent": theme.accent,
            "$warning": theme.warning,
            "$error": theme.error,
        }
        status_colour = colours.get(STATUS_COLOUR[op.status]) or "grey50"
        grid = KeyValues()
        shape: list[int] = []

        def row(key: str, value: str | Text | None) -> None:
            if value not in (None, ""):
                # Stored text as Text: never read as markup, its control characters escaped, cut to VALUE_CHARS.
                value = Text(_shown(value)) if isinstance(value, str) else value
                grid.add(key, value)
                shape.append(len(value) + 1)

        status = Text(op.status.value, style=f"bold {status_colour}")
        if op.status_message:
            status.append(f"  {_shown(op.status_message)}", style="")
        row("status", status)
        result = full.result if full is not None else op.result
        if result is not None and op.status is Status.COMPLETED:
            row("result", result_summary(result))
        row("id", op.id + (f"  (#{op.handle})" if op.handle is not None else ""))
        kind = Text(fmt.printable(op.type + (f"  ({op.name})" if op.name else "")))
        if full is not None and op.status is Status.QUEUED and op.type not in _runnable_types():
            # It waits for a worker that has its plugin: nothing here said why it never started. (Asked once the
            # whole record is read: the engine is up, the first frame drawn without the registry's imports.)
            kind.append(
                "  no handler for this type here (its plugin is not loaded: --plugin MODULE);"
                " a worker that loads it runs it",
                style=colours["$warning"],
            )
        row("type", kind)
        if full is not None and full.params:
            row("params", " ".join(f"{k}={_param(v)}" for k, v in full.params.items()))
        row("step", p.step)
        row("message", p.message)
        total = fmt.total_of(op, p)
        pct = f" ({p.percent:.1f}%)" if p.percent is not None else ""
        row("items", f"{p.done:,} of {total:,}{pct}" if total is not None else f"{p.done:,} of ?")
        if op.status is Status.RUNNING:
            row("rate", f"{fmt.rate(p.rate)}   eta {fmt.duration(p.eta)}")
        timeout = Text(f"{fmt.duration(op.effective_timeout)}" if op.effective_timeout else "-")
        if op.timeout_basis:
            timeout.append(f"  = {fmt.printable(op.timeout_basis)}", style="dim")
        row("timeout", timeout)
        if op.deadline and op.status is Status.RUNNING:
            ext = f"  (extended {op.extensions}x)" if op.extensions else ""
            row("deadline", f"{local_time(op.deadline)}, {fmt.duration(op.seconds_left(now))} left{ext}")
        threshold = op.profile.get("failure_threshold")
        failed = max(p.failed, op.item_failures)
        fail = Text(f"{failed}" + (f" of {threshold} allowed" if threshold is not None else ""))
        if threshold is not None and failed and failed >= threshold:
            fail.stylize(f"bold {colours['$error']}")
        row("failures", fail)
        row("attempt", f"{op.attempt}" + (f"  ({op.retries} retries)" if op.retries else ""))
        row("priority", op.priority.value)
        worker = Text(fmt.printable(str(op.worker))) if op.worker else None  # a host another client stored
        if worker is not None and op.worker is not None and op.status is Status.RUNNING:
            # Its process on this host stopped (Ctrl-Z, SIGSTOP): the rate and ETA above are its last.
            w = op.worker
            stopped = stopped_note(w.host, w.pid, getattr(w, "boot", None), getattr(w, "start", None))
            if stopped:
                worker.append(f": {stopped}", style=f"bold {colours['$warning']}")
        row("worker", worker)
        row("created", local_time(op.created_at))
        row("started", local_time(op.started_at) if op.started_at else None)
        if op.elapsed_at(now) is not None:  # a resumed one waiting: none (its last attempt's start is kept)
            row("elapsed", fmt.elapsed(op.elapsed_at(now), op.attempt))
        row("finished", local_time(op.finished_at) if op.finished_at and op.status.value != "running" else None)
        row("checkpoint", f"#{op.checkpoint_seq}" if op.checkpoint_seq else None)
        metrics = sorted(p.metrics.items())
        for k, v in metrics[:NESTED_ROWS]:
            row(_key(k), str(v))
        if len(metrics) > NESTED_ROWS:
            row("· …", f"{len(metrics) - NESTED_ROWS:,} more metrics: outlast --json show {op.id} has them")
        parts: list[RenderableType] = [grid]
        if op.error:
            parts.append(Text(f"error: {_shown(op.error, keep_newlines=True)}", style=f"bold {colours['$error']}"))
        if isinstance(result, dict) and op.status is Status.COMPLETED:
            nested = [(k, v) for k, v in result.items() if isinstance(v, dict | list)]
            for k, v in nested[:NESTED_ROWS]:
                text = fmt.printable(json.dumps(v, default=str))
                row(_key(str(k)), text if len(text) <= 400 else text[:399] + "…")
            if len(nested) > NESTED_ROWS:
                row("· …", f"{len(nested) - NESTED_ROWS:,} more: outlast --json show {op.id} has them")
        if op.error:
            shape.append(min(len(op.error), VALUE_CHARS + 30) + 7)
        return Group(*parts), shape


VALUE_CHARS = 1000
"""Characters of one value (a step, a message, a metric, an error) the detail pane shows, and how long it is:
a handler's step of 1 MB, folded beside the keys into 70,000 lines at each second's repaint, held the
event loop (the engine's timeouts, pause and cancel with it) for seconds at a time. ``outlast show ID`` or
``--json`` has all of it."""


def _shown(text: str, keep_newlines: bool = False) -> str:
    """``text`` escaped, and cut to ``VALUE_CHARS`` saying how long it is."""
    return fmt.printable(fmt.abridged(text, VALUE_CHARS), keep_newlines)


NESTED_ROWS = 30
"""Rows of metrics, and of a result's nested values, the detail pane shows at most: a plugin's result keyed
by file, 20,000 keys, was laid out in 20,000 rows each time the operation was selected (5 s with the event
loop held), and so were a running operation's metrics, each second."""

KEY_CELLS = 20
"""Columns of a metric's or a result's name, at most, in the detail pane's key column: a name is the
handler's text, and one of 200 characters took the whole pane's width, every value beside the keys cut to
nothing."""


def _key(name: str) -> str:
    """``· name`` for the key column, escaped and cut to ``KEY_CELLS`` columns with an ellipsis."""
    key = f"· {fmt.printable(name)}"
    return key if cell_len(key) <= KEY_CELLS else set_cell_size(key, KEY_CELLS - 1) + "…"


def _runnable_types() -> frozenset[str]:
    """``engine.runnable_types``, imported when first asked: the registry's imports (pydantic) come after the
    first frame, which this module is part of."""
    from engine import runnable_types

    return runnable_types()
