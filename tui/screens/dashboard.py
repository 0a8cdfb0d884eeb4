"""The dashboard's screen: the operations table over the side panes, the filter, the status line.

A view: it shows what ``OperationsModel`` holds and says upward (messages) when the selection or
the logs pane's mode changed; reading the store and acting on operations is the App's.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len, set_cell_size
from textual import events, on
from textual.app import ComposeResult, RenderResult
from textual.binding import Binding
from textual.containers import Container
from textual.content import Content
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Input, Tab, Tabs
from textual.worker import Worker

from engine import Status

from .. import format as fmt
from ..actions import key_applies
from ..model import OperationsModel
from ..widgets.detail import DetailPane
from ..widgets.operations import SORTS, SORTS_UNMARKED, OperationsTable
from ..widgets.resources import ResourcesPane
from ..widgets.status_line import KEPT, StatusLine
from ..widgets.steady_footer import SteadyFooter
from ..widgets.steady_input import SteadyInput

if TYPE_CHECKING:  # the engine's models (pydantic): imported after the first frame
    from engine import Operation, Progress

    from ..widgets.checkpoints import CheckpointsPane
    from ..widgets.logs import LogsPane


if TYPE_CHECKING:  # engine.resources imports psutil: not before the first frame
    from engine import ResourceSample

NARROW_WIDTH = 120
NARROW_HEIGHT = 32
PANES = ("detail", "checkpoints", "logs", "resources")
LIVE_REPAINT = 1.5
"""Seconds after which the live figures are repainted when no poll has landed (the engine not started, a
slow store). Normally they move once a second, at the frame after each poll (``polled``): the table's
rows, the detail pane's figures, the resources pane and the records just read, all in that one frame.
Repainted on their own clocks (the table's, the wall clock's second, the poll's) they made three frames
a second, each a pass of the compositor over the screen. The rows of 100 reporting operations at every
frame were most of the dashboard's CPU, and at 0.5 s they still were (htop's default is 1.5 s). A key,
a new record or a status change repaints at the next frame."""
SIDE_DEBOUNCE = 0.25
"""Seconds the cursor rests on an operation before its checkpoints and log are read."""
DEFERRED = ("checkpoints", "logs")
"""Panes the first frame draws as their empty frame (``PaneFrame``): each is mounted after it (a DataTable,
a RichLog with rich.pretty and attrs behind it: 40 ms of the start, of CPU)."""
FILTER_SHOWN = 30
"""Cells of the filter's text the status line shows at most (the rest as "…")."""
STATUS_WORTH = {
    Status.RUNNING: 80,
    Status.FAILED: 75,
    Status.TIMED_OUT: 70,
    Status.INTERRUPTED: 65,
    Status.PAUSED: 60,
    Status.QUEUED: 50,
    Status.CANCELLED: 30,
    Status.COMPLETED: 20,
}
"""What a status's count in the status line is worth: the narrowest line keeps what may need the user."""
FILTER_MAX = 200
"""Characters the filter box takes: Textual's Input does work in its length at every key, and 10,000 keys
arriving at once (no bracketed paste) froze the dashboard and the engine in it for 23 s."""
TITLES = {
    "detail": "Detail",
    "checkpoints": "Checkpoints (enter resumes)",
    "resources": "Resources",
    "logs": "Logs",
}


Work = Callable[[Callable[[], Coroutine[Any, Any, Any]], str, str, bool], Worker[Any]]
"""Runs ``call()`` in a worker: a callable, so that a worker an exclusive group cancels before it
starts leaves no coroutine that was never awaited."""
"""``work(coroutine, group, what, exclusive)``."""


class PaneFrame(Widget):
    """A pane's bordered, titled frame and nothing in it: what the first frame draws in the pane's place
    (the layout does not move when the pane takes it over)."""

    def render(self) -> RenderResult:
        return ""  # a Widget's own render is its name and id


class PaneTabs(Tabs):
    """The panes' tabs. The active one is named when they are made; when the app closes while they mount
    (quit at once, the deferred panes still mounting), their Tab widgets may never be mounted, and Textual's
    Tabs refused that name at its mount: "No Tab with id 'tab-detail'" instead of a clean exit. A name
    among the tabs made is taken even while its Tab is not mounted (then nothing is highlighted)."""

    def __init__(self, *tabs: Tab, **kw: Any) -> None:
        super().__init__(*tabs, **kw)
        self.made = {tab.id for tab in tabs}

    def validate_active(self, active: str) -> str:
        if active in self.made:
            return active
        return super().validate_active(active)


class DashboardScreen(Screen[None]):
    """``model`` is what is shown; ``live(op_id)`` the progress of what this process runs."""

    AUTO_FOCUS = "#ops"
    BINDINGS = [
        Binding("enter", "detail", "Detail", show=False),
        Binding("s", "sort", "Sort", show=False),
        Binding("escape", "to_table", "Back", show=False),
        Binding("tab", "focus_next", show=False),
        Binding("shift+tab", "focus_previous", show=False),
        *(Binding(str(i), f"pane('{name}')", name.capitalize(), show=False) for i, name in enumerate(PANES, 1)),
    ]

    def __init__(
        self,
        model: OperationsModel,
        live: Callable[[str], Progress | None],
        clock: Callable[[], float],
        work: Work,
    ) -> None:
        super().__init__()
        self.model = model
        self.live = live
        self.clock = clock
        self.work = work
        """Runs a coroutine in a worker whose failure the App handles (in one place)."""
        self.selected: str | None = None
        self.narrow: bool | None = None
        self.tab = "detail"
        self.notes: list[str] = []
        """What the App adds to the status line (quitting, engine stopped, watch only)."""
        self._notes_shown: list[str] = []
        self._binding_state: tuple[object, ...] = ()
        self._ticked = 0.0
        self.tick = 0
        """Counts the live repaints: what the detail pane of a running operation is keyed on."""
        self.polled = False
        """A poll has landed since the last live repaint (the App sets it)."""
        self._resources_due = False
        self._reorder = False
        """The sort or the filter changed: every row is sorted again, not only those that moved."""
        self.panes_mounted = False
        """The widgets the first frame goes without (``mount_deferred``) are mounted: the checkpoints and
        logs panes, the filter box, the tabs."""
        self._mounting: asyncio.Task[None] | None = None

    def compose(self) -> ComposeResult:
        yield StatusLine(id="statusline")
        yield OperationsTable(self.model.ops, self.live, self.clock, id="ops")
        if self._is_narrow(self.app.size.width, self.app.size.height):  # the first frame shows them
            yield self._tabs()
        with Container(id="panes"):
            yield DetailPane(self.clock, id="detail", classes="pane")
            for name in DEFERRED:
                yield PaneFrame(id=f"{name}-frame", classes="pane")
            yield ResourcesPane(id="resources", classes="pane")
        yield SteadyFooter(compact=True)

    def _tabs(self) -> Tabs:
        return PaneTabs(
            *(Tab(f"{i} {name.capitalize()}", id=f"tab-{name}") for i, name in enumerate(PANES, 1)),
            id="pane-tabs",
            active=f"tab-{self.tab}",
        )

    async def on_mount(self) -> None:
        with self.app.batch_update():  # the first frame whole: nothing drawn while the footer's keys mount
            for name, title in TITLES.items():
                self.query_one(f"#{name}-frame" if name in DEFERRED else f"#{name}").border_title = title
            self.apply_layout(self.app.size.width, self.app.size.height)
            if self.model.structure_dirty:  # records of the first look: the first frame lists them
                self.refresh_view(running=False)
            self.update_statusline()
            await self.query_one(SteadyFooter).show_keys()  # the keys of the selected operation, in the first frame

    def mount_later(self) -> None:
        """Once the first frame is on the terminal (the App's Ready): what it went without, in the
        background. (``call_after_refresh`` from ``on_mount`` ran before that frame: the screen is not yet
        the current one then, and its callbacks run at once.)"""
        self._start_mount()

    def _start_mount(self) -> asyncio.Task[None]:
        if self._mounting is None:
            self._mounting = asyncio.create_task(self._mount_deferred())
            self._mounting.add_done_callback(self._mount_done)
        return self._mounting

    def _mount_done(self, task: asyncio.Task[None]) -> None:
        """A failure is said even when no key waited for the mount (a key that did gets it raised too)."""
        if not task.cancelled() and (error := task.exception()) is not None and self.app.is_running:
            self.app.notify(f"the dashboard's panes did not load: {error!r}", severity="error", timeout=30)

    async def mount_deferred(self) -> None:
        """Mount what the first frame went without, or wait until it is: a key that needs it (l, /, tab)
        pressed before then mounts it and acts in the same press. Shielded: a worker of an exclusive group
        cancelled while it waits here does not cancel the mount."""
        if not self.panes_mounted:
            await asyncio.shield(self._start_mount())

    async def _mount_deferred(self) -> None:
        from ..widgets.checkpoints import CheckpointsPane
        from ..widgets.logs import LogsPane

        panes = {
            "checkpoints": CheckpointsPane(id="checkpoints", classes="pane"),
            "logs": LogsPane(id="logs", classes="pane"),
        }
        frames = [self.query_one(f"#{name}-frame") for name in DEFERRED]
        box = SteadyInput(
            placeholder="filter: words that must all appear (enter keeps, esc clears)",
            id="filter",
            max_length=FILTER_MAX,
        )
        with self.app.batch_update():  # one frame: no pane drawn twice, no layout in between
            mounts = []
            for frame, (name, pane) in zip(frames, panes.items(), strict=True):
                pane.border_title = TITLES[name]
                pane.set_class(frame.has_class("-active"), "-active")
                mounts.append(frame.parent.mount(pane, after=frame))  # type: ignore[union-attr]
            mounts.append(self.mount(box, after="#ops"))
            if not self.query("#pane-tabs"):
                mounts.append(self.mount(self._tabs(), before="#panes"))
            for mounted in mounts:
                await mounted
            for frame in frames:
                await frame.remove()
        self.panes_mounted = True
        self.load_side_panes()

    def _side(self) -> tuple[CheckpointsPane, LogsPane] | None:
        """The checkpoints and logs panes, once mounted."""
        if not self.panes_mounted:
            return None
        from ..widgets.checkpoints import CheckpointsPane
        from ..widgets.logs import LogsPane

        return self.query_one(CheckpointsPane), self.query_one(LogsPane)

    def _mounted_side(self) -> tuple[CheckpointsPane, LogsPane]:
        side = self._side()
        assert side is not None, "mount_deferred first"
        return side

    @property
    def table(self) -> OperationsTable:
        return self.query_one(OperationsTable)

    @property
    def selected_op(self) -> Operation | None:
        op_id = self.table.selected_id
        return self.model.ops.get(op_id) if op_id else None

    # ---- layout ----------------------------------------------------------------------------------

    def on_resize(self, event: events.Resize) -> None:
        self.apply_layout(event.size.width, event.size.height)

    @staticmethod
    def _is_narrow(width: int, height: int) -> bool:
        return width < NARROW_WIDTH or height < NARROW_HEIGHT

    def apply_layout(self, width: int, height: int) -> None:
        """Side by side when there is room; otherwise the panes share one area under tabs."""
        narrow = self._is_narrow(width, height)
        if narrow == self.narrow:
            return
        self.narrow = narrow
        if narrow and not self.query("#pane-tabs"):  # narrowed before the tabs were mounted: now
            self.mount(self._tabs(), before="#panes")
        self.set_class(narrow, "-narrow")
        self.show_tab(self.tab)

    def show_tab(self, name: str, focus: bool = False) -> None:
        """Show one pane (at 80 columns the others hide under their tabs); ``focus``: and go into it (the
        deferred panes mounted first: ``mount_deferred``)."""
        self.tab = name
        for pane in self.query(".pane"):
            pane.set_class(pane.id in (name, f"{name}-frame"), "-active")
        for tabs in self.query("#pane-tabs").results(Tabs):
            if tabs.active != f"tab-{name}":
                tabs.active = f"tab-{name}"
        if focus and (name != "detail" or not self.narrow):
            self.query_one(f"#{name}").focus()

    @on(Tabs.TabActivated, "#pane-tabs")
    def _tab_activated(self, event: Tabs.TabActivated) -> None:
        # Only the tab active now: one activated since (1-4 typed in one burst) sent its own message. Each
        # stale one, handled, set the tabs back to its pane and sent another, and "2341" chased one another
        # for as long as the dashboard ran (the pane flickering, 90% of a core).
        if event.tab.id and event.tab.id == event.tabs.active:
            self.show_tab(event.tab.id.removeprefix("tab-"))

    # ---- the frame -------------------------------------------------------------------------------

    def refresh_view(self, running: bool) -> None:
        """What changed in the model since the last frame (``running``: work is running, whose progress,
        elapsed time and time left move without the model knowing)."""
        model, table = self.model, self.table
        now = time.monotonic()
        tick = self.polled or now - self._ticked >= LIVE_REPAINT
        if tick:
            self.polled, self._ticked = False, now
            self.tick += 1
        if tick and running and table.sort == "progress":
            # Sorted by what moves on its own: sorted again at the live repaint, once a second (a run that
            # overtook another stayed below it until one of them ended).
            self._reorder = True
            model.structure_dirty = True
        if model.structure_dirty:
            model.structure_dirty = False
            model.repaint = False
            moved, model.moved = model.moved, set()
            table.rebuild(None if self._reorder else moved)
            self._reorder = False
            self.update_statusline()
        else:
            if self.notes != self._notes_shown:  # watch only, quitting, engine stopped: said as they change
                self.update_statusline()
            # A record read again (its values, not its place) waits for the live repaint: one frame a second.
            if not table.fetched:
                table.refresh()
            elif tick and (model.repaint or running):
                model.repaint = False
                table.refresh_changed()  # the rows whose line reads otherwise now
        if tick and self._resources_due:
            self._resources_due = False
            self.query_one(ResourcesPane).repaint_changed()  # its lines that moved: a sparkline, a figure
        self.show_selected()

    def show_selected(self) -> None:
        """The detail of the selected operation, its side panes when it changed, the keys that apply."""
        selected = self.table.selected_id
        if selected != self.selected:
            self.selected = selected
            if self.narrow and (side := self._side()):
                # No border here, so no title naming whose rows they are: the previous operation's rows
                # go at once rather than stand under the new one until its own are read.
                side[0].show(None, [])
            self.load_side_panes(debounce=True)
        op = self.model.ops.get(selected) if selected else None
        if self.tab == "detail" or not self.narrow:
            live = self.live(selected) if selected else None
            self.query_one(DetailPane).show(op, live, self.model.full_of(selected), self.tick)
        # The footer is rebuilt only when the keys that apply change, not at every cursor move.
        state = (op is None, op.status if op else None, op.priority if op else None, *self.notes)
        if state != self._binding_state:
            self._binding_state = state
            self.app.refresh_bindings()

    @on(OperationsTable.Highlighted)
    def _highlighted(self) -> None:
        self.show_selected()  # at once, not at the next frame: the key press is answered now

    def load_side_panes(self, logs: bool = True, poll: bool = False, debounce: bool = False) -> None:
        """Read the selected operation's checkpoints and log (new lines only when polling)."""
        if poll and not (self.selected and self.selected in self.model.ops):
            return
        read = functools.partial(self._side_panes, self.selected, logs, debounce)
        self.work(read, "side", "reading the selected operation", True)

    def load_all_logs(self) -> None:
        """In the logs pane's all-operations mode: every operation's new log lines."""
        if (side := self._side()) and side[1].mode == "all":
            self.work(self._all_logs, "all-logs", "reading the logs", True)

    async def _side_panes(self, op_id: str | None, logs: bool, debounce: bool) -> None:
        # After a pause in cursor moves: scrolling through rows does not read (and lay out) every row's panes.
        await asyncio.sleep(SIDE_DEBOUNCE if debounce else 0)
        await self.mount_deferred()
        cps_pane, logs_pane = self._mounted_side()
        if op_id is None:
            cps_pane.show(None, [])
            if logs_pane.mode == "selected":
                logs_pane.reset(None)
                logs_pane.border_title = TITLES["logs"]
            return
        if not self.model.started:
            return
        logs = logs and logs_pane.mode == "selected"
        fresh = logs_pane.op_id != op_id
        side = await self.model.side(op_id, logs, None if fresh else logs_pane.log_offset)
        # Every change to the panes in one go: one layout, not one per pane.
        cps_pane.show(op_id, side.checkpoints, _title_label(self.model.ops.get(op_id), op_id))
        if side.logs is not None and logs_pane.mode == "selected":
            if fresh:
                logs_pane.reset(op_id)
                # Named, as the checkpoints are: the lines stay the last operation's until the cursor has rested and
                # the store has answered, under the detail of the one the cursor is on.
                logs_pane.border_title = Content(f"Logs of {_title_label(self.model.ops.get(op_id), op_id)}")
            logs_pane.log_offset = side.log_offset
            logs_pane.add(side.logs)

    async def _all_logs(self) -> None:
        _, logs = self._mounted_side()
        records = await self.model.all_logs(logs.offsets)
        if logs.mode == "all":
            logs.add(records, with_id=True)

    def show_resources(self, sample: ResourceSample, running: int, slots: int) -> None:
        model = self.model
        pane = self.query_one(ResourcesPane)
        pane.labels = {i: _label(model.ops.get(i), i) for i in sample.children}
        # Painted with the records the same poll reads, at the live repaint (refresh_view): one frame.
        pane.update_data(sample, list(model.history), running, slots, model.queue_depth(), model.store_ok, False)
        self._resources_due = True

    def update_statusline(self) -> None:
        """One line: what this dashboard says (store unreachable, read-only, watch only), the
        filter and the sort. Built as Content, not markup: filter words are typed and notes hold the
        store's errors ("[/" crashed the dashboard). The notes and the filter (its text clipped) come
        before the counts: a long filter, or many statuses, pushed them off the line."""
        counts = self.model.counts()
        table = self.table
        n, stored = len(self.model.ops), self.model.loading
        if stored is not None and n < stored:
            head = Content.assemble(("Outlast", "bold"), f"  {n:,} of {stored:,} operations read")
        else:
            head = Content.assemble(("Outlast", "bold"), f"  {n:,} operation{'s' if n != 1 else ''}")
        # Each field with its worth: at 80 columns the least worth goes first, whole (the sort, which the
        # header's ▼ says too, unless a narrow table left its column out; then the finished counts), never
        # a count cut in half.
        fields: list[tuple[int, Content]] = [(KEPT, Content.styled(fmt.printable(note), "bold")) for note in self.notes]
        if table.filter_words:
            words = fmt.printable(" ".join(table.filter_words))
            if cell_len(words) > FILTER_SHOWN:
                words = set_cell_size(words, FILTER_SHOWN - 1) + "…"
            fields.append((90, Content.assemble(f"{len(table.ids):,} shown by filter ", (words, "bold"))))
        # Every status held, in the table's order: an interrupted operation waits on the user as a paused one.
        for status in sorted(counts, key=fmt.STATUS_ORDER.__getitem__):
            fields.append((STATUS_WORTH[status], Content(f"{counts[status]:,} {status.value}")))
        if table.sort != SORTS[0]:
            fields.append((85 if table.sort in SORTS_UNMARKED else 10, Content(f"sort {table.sort}")))
        self._notes_shown = list(self.notes)
        self.query_one("#statusline", StatusLine).show(head, fields)

    # ---- the table: sort and filter --------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return key_applies(action, self.selected_op)

    def action_detail(self) -> None:
        self.show_tab("detail", focus=True)

    async def action_checkpoints(self) -> None:
        await self.mount_deferred()
        self.show_tab("checkpoints", focus=True)

    async def action_focus_next(self) -> None:
        """Tab: into the next pane, the panes mounted after the first frame among them (mounted first when
        tab comes before them)."""
        await self.mount_deferred()
        self.app.action_focus_next()

    async def action_focus_previous(self) -> None:
        await self.mount_deferred()
        self.app.action_focus_previous()

    def action_pane(self, name: str) -> None:
        """1-4: show a pane (at 80 columns this is how the tabs are switched). The focus stays where
        it is, so the arrows still move through the operations and the pane follows; tab or the
        pane's own key (enter, l) goes into it."""
        self.show_tab(name)

    def action_sort(self) -> None:
        self.table.sort = SORTS[(SORTS.index(self.table.sort) + 1) % len(SORTS)]
        self.model.structure_dirty = self._reorder = True
        self.refresh_view(running=False)

    async def action_filter(self) -> None:
        """Focus the filter box in this turn (not ``focus()``, which waits a turn): the keys typed right
        behind "/" are handed by the app to whatever has the focus when it reads each of them (the box
        mounted first if "/" came before it was: the app reads no key while this waits)."""
        await self.mount_deferred()
        box = self.query_one("#filter", Input)
        box.display = True
        self.set_focus(box)

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        # Each word once: a word repeated 2,000 times was matched 2,000 times against every record (2 s a rebuild).
        self.table.filter_words = list(dict.fromkeys(event.value.lower().split()))
        self.model.structure_dirty = self._reorder = True

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        box = self.query_one("#filter", Input)
        if not box.value.strip():
            box.display = False
        self.call_after_refresh(self.table.focus)

    def action_to_table(self) -> None:
        """Escape: clear the filter when typing one, else go back to the table."""
        for box in self.query("#filter").results(Input):  # none before it is mounted: nothing typed in it
            if box.has_focus or (box.display and self.focused is self.table):
                box.value = ""
                box.display = False
        self.call_after_refresh(self.table.focus)

    def on_key(self, event: events.Key) -> None:
        """``a`` in the logs pane: one operation's log / every operation's."""
        _, logs = self._side() or (None, None)
        if event.key == "a" and logs is not None and self.focused is logs:
            logs.mode = "all" if logs.mode == "selected" else "selected"
            logs.border_title = "Logs: all operations" if logs.mode == "all" else "Logs"
            tab = self.query_one("#tab-logs", Tab)
            tab.label = "3 Logs: all" if logs.mode == "all" else "3 Logs"  # at 80 columns the tab is the title
            logs.reset(None)
            if logs.mode == "all":
                self.load_all_logs()
            else:
                self.load_side_panes()
            event.stop()


def _title_label(op: Operation | None, op_id: str) -> str:
    """``06bhpkg8cfyx1 nightly backup``: the id and the label (the type for an unnamed one), as the
    questions name an operation: two unnamed operations of one type differ by id only."""
    return f"{op_id} {fmt.printable(op.label)}" if op is not None else op_id


def _label(op: Operation | None, op_id: str) -> str:
    """``#12 nightly backup``: the handle (or the id) and the name, for a short list."""
    if op is None:
        return op_id
    head = f"#{op.handle}" if op.handle else op_id
    return f"{head} {fmt.printable(op.name)}" if op.name else head
