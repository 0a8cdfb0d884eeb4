"""The dashboard: a Textual app that embeds an engine and shows everything in the store.

The records and how they are kept fresh live in ``model.OperationsModel`` (no Textual there);
this module holds the screen: layout, keys and actions, themes, the frame timer and quitting.
Progress of what this engine runs is read straight from the engine (``engine.live``); the screen
is refreshed by one timer at a fixed frame rate: events only mark things dirty in the model, so a
burst of progress never turns into a burst of repaints.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Input, Static, Tab, Tabs

from engine import (
    ACTIVE,
    RESUMABLE,
    Engine,
    LogRecord,
    Operation,
    OperationSpec,
    OutlastError,
    Priority,
    Progress,
    Settings,
    Status,
    handlers,
)
from engine.config import save_setting
from engine.resources import ResourceSample

from . import format as fmt
from .model import OperationsModel
from .screens.confirm import ConfirmScreen, QuitScreen
from .screens.help import HelpScreen
from .screens.launch import LaunchScreen
from .themes import DEFAULT_THEME, next_theme, register_themes
from .widgets.checkpoints import CheckpointsPane
from .widgets.detail import DetailPane
from .widgets.logs import LogsPane
from .widgets.operations import SORTS, OperationsTable
from .widgets.resources import ResourcesPane

log = logging.getLogger("outlast.tui")

FRAME = 0.2
"""Seconds between refreshes of the screen (5 Hz)."""
POLL = 1.0
"""Seconds between reads of active operations from the store."""
SIDE_DEBOUNCE = 0.25
"""Seconds the cursor rests on an operation before its checkpoints and log are read."""
ALL_LOGS_OPS = 20
"""In the logs pane's all-operations mode: the running operations and this many last updated."""
ALL_LOGS_TAIL = 50
"""Lines of each operation's log shown when the all-operations mode starts."""
NARROW_WIDTH = 120
NARROW_HEIGHT = 32
PANES = ("detail", "checkpoints", "logs", "resources")

Sampler = Callable[[dict[str, list[int]]], ResourceSample]


def _while_mounted(fn: Callable[..., Any]) -> Callable[..., Any]:
    """For timers and workers: once the panes are gone (the app is closing) they stop quietly."""
    if asyncio.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kw: Any) -> Any:
            with contextlib.suppress(NoMatches):
                return await fn(*args, **kw)

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kw: Any) -> Any:
        with contextlib.suppress(NoMatches):
            return fn(*args, **kw)

    return run


class OutlastApp(App[int]):
    """``OutlastApp(settings).run()``; ``engine``, ``clock`` and ``sampler`` are seams for tests."""

    CSS_PATH = "app.tcss"
    TITLE = "Outlast"
    AUTO_FOCUS = "#ops"

    BINDINGS = [
        Binding("n", "launch", "Launch"),
        Binding("c", "cancel", "Cancel"),
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("plus", "raise_priority", "Prio+", key_display="+"),
        Binding("minus", "lower_priority", "Prio-", key_display="-"),
        Binding("enter", "detail", "Detail", show=False),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "sort", "Sort", show=False),
        Binding("l", "logs", "Logs"),
        Binding("t", "cycle_theme", "Theme", show=False),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("escape", "to_table", "Back", show=False),
        *(Binding(str(i), f"pane('{name}')", name.capitalize(), show=False) for i, name in enumerate(PANES, 1)),
    ]

    ACTIONS_HELP = {
        "launch": ("Launch operation", "A form: type, params, priority, item estimate"),
        "cancel": ("Cancel operation", "Cancel the selected operation (asks first)"),
        "pause": ("Pause operation", "Pause the selected operation with a checkpoint"),
        "resume": ("Resume operation", "Resume the selected operation from its newest checkpoint"),
        "raise_priority": ("Raise priority", "Queued work: one priority level up"),
        "lower_priority": ("Lower priority", "Queued work: one priority level down"),
        "detail": ("Show detail", "The selected operation's detail: step, timeout and why, failures"),
        "filter": ("Filter operations", "Show only operations whose id, name, type or status match"),
        "sort": ("Sort operations", "Cycle the sort: status, created, priority, progress, name, type"),
        "logs": ("Focus logs", "The logs pane, following live (a: one operation / all)"),
        "checkpoints": ("Show checkpoints", "The checkpoints pane; enter resumes from the chosen one"),
        "cycle_theme": ("Next theme", "Cycle through the themes (remembered in the config)"),
        "help": ("Help", "Every key"),
        "quit": ("Quit", "Quit (asks what to do with running work)"),
    }

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
        sampler: Sampler | None = None,
        frame: float = FRAME,
        poll: float = POLL,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.engine = engine or Engine(settings=settings)
        self.clock = clock
        self.sampler: Sampler = sampler or self.engine.resources.sample
        self.frame = frame
        self.poll_every = poll
        self.model = OperationsModel(self.engine)
        self.ops = self.model.ops
        """Every record shown, by id (the model's dict)."""
        self.engine_started = False
        self.engine_error: str | None = None
        self.waiting_to_quit = False
        self._selected: str | None = None
        self._full: Operation | None = None
        """The selected operation's whole record (the table holds slim ones): params, result."""
        self._binding_state: tuple[Any, ...] = ()
        self._theme_names: list[str] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._narrow: bool | None = None
        self._tab = "detail"
        self._boot_task: asyncio.Task[None] | None = None
        self.warnings: deque[str] = deque()
        """Log lines to show as notifications (filled by main's logging handler)."""

    def notify(self, message: str, **kw: Any) -> None:  # type: ignore[override]
        """Every notification is plain text: names and errors are stored text (``[`` is no markup,
        control characters are shown escaped)."""
        kw.setdefault("markup", False)
        super().notify(fmt.printable(message, keep_newlines=True), **kw)

    # ---- layout ----------------------------------------------------------------------------

    @property
    def dashboard(self) -> Screen[Any]:
        """The dashboard's own screen: queries must not look into a dialog open on top of it."""
        return self.screen_stack[0] if self.screen_stack else self.screen

    def compose(self) -> ComposeResult:
        yield Static("", id="statusline")
        yield OperationsTable(self.ops, self._live, self.clock, id="ops")
        yield Input(placeholder="filter: words that must all appear (enter keeps, esc clears)", id="filter")
        yield Tabs(
            *(Tab(f"{i} {name.capitalize()}", id=f"tab-{name}") for i, name in enumerate(PANES, 1)), id="pane-tabs"
        )
        with Container(id="panes"):
            yield DetailPane(self.clock, id="detail", classes="pane")
            yield CheckpointsPane(id="checkpoints", classes="pane")
            yield LogsPane(id="logs", classes="pane")
            yield ResourcesPane(id="resources", classes="pane")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._setup_themes()
        for name, title in (
            ("detail", "Detail"),
            ("checkpoints", "Checkpoints (enter resumes)"),
            ("resources", "Resources"),
            ("logs", "Logs"),
        ):
            self.dashboard.query_one(f"#{name}").border_title = title
        self._apply_layout(self.size.width, self.size.height)
        self.call_after_refresh(self.dashboard.query_one(OperationsTable).focus)
        self._update_statusline()
        self.set_interval(self.frame, self._on_frame, name="frame")
        self._boot_task = asyncio.create_task(self._boot())
        self._boot_task.add_done_callback(self._boot_done)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        """SIGTERM, or SIGHUP when an SSH session drops: pause what runs (a checkpoint each), then exit."""
        work = self._hang_up() if sig == signal.SIGHUP else self._quit_now("the dashboard was asked to stop (SIGTERM)")
        self.run_worker(work, group="quit", exclusive=True)

    async def _hang_up(self) -> None:
        """The terminal is gone: pause the work, then leave at once. Restoring a terminal that no longer
        exists blocked Textual's writer for good (the process stayed behind after the SSH session)."""
        await self.stop_engine("the dashboard's terminal hung up (SIGHUP: a dropped SSH session?)")
        os._exit(128 + signal.SIGHUP)

    def on_resize(self, event: events.Resize) -> None:
        self._apply_layout(event.size.width, event.size.height)

    def _apply_layout(self, width: int, height: int) -> None:
        """Side by side when there is room; otherwise the panes share one area under tabs."""
        narrow = width < NARROW_WIDTH or height < NARROW_HEIGHT
        if narrow == self._narrow:
            return
        self._narrow = narrow
        self.screen.set_class(narrow, "-narrow")
        self._show_tab(self._tab)

    def _show_tab(self, name: str) -> None:
        self._tab = name
        for pane in PANES:
            self.dashboard.query_one(f"#{pane}").set_class(pane == name, "-active")
        tabs = self.dashboard.query_one("#pane-tabs", Tabs)
        if tabs.active != f"tab-{name}":
            tabs.active = f"tab-{name}"

    @on(Tabs.TabActivated, "#pane-tabs")
    def _tab_activated(self, event: Tabs.TabActivated) -> None:
        if event.tab.id:
            self._show_tab(event.tab.id.removeprefix("tab-"))

    def _setup_themes(self) -> None:
        """Register the theme files; the configured theme, or the default when it is not known."""
        self._theme_names = register_themes(self, warn=lambda msg: log.warning("%s", msg))
        wanted = self.settings.theme
        if wanted not in self.available_themes:
            log.warning("theme %r not found; using %s", wanted, DEFAULT_THEME)
            wanted = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else self._theme_names[0]
        self.theme = wanted

    # ---- the engine ------------------------------------------------------------------------

    def _boot_done(self, task: asyncio.Task[None]) -> None:
        """A start-up that raised must say so: unobserved, the table would say "loading" forever."""
        if not task.cancelled() and task.exception() is not None:
            e = task.exception()
            log.error("dashboard start-up failed: %r", e)
            self.notify(f"start-up failed: {e!r}", severity="error", timeout=60)

    async def _boot(self) -> None:
        """Start the engine and read every operation, off the first paint."""
        try:
            await self.engine.start()
        except Exception as e:
            self.engine_error = str(e)
            self.model.store_ok = False
            self.notify(f"the engine did not start: {e}", severity="error", timeout=30)
            self._update_statusline()
            return
        self.engine_started = True
        self._unsubscribe = self.engine.subscribe(self.model.on_event)
        table = self.dashboard.query_one(OperationsTable)
        try:  # what the first screen shows (status sort: active work on top) before the rest
            for op in await self.engine.list(statuses=list(ACTIVE)):
                self.model.keep(op)
        except Exception as e:
            self.model.failed(e)
        table.fetched = True
        table.refresh()  # an empty store changes no row: without this the table would say "loading" forever
        self._on_frame()
        self.set_interval(self.poll_every, self._poll, name="poll")
        await self.model.reload_all()
        self._poll()

    @work(exclusive=True, group="poll")
    @_while_mounted
    async def _poll(self) -> None:
        """A resource sample; the model's poll; the selected operation's side panes (new lines)."""
        if not self.engine_started:
            return
        self._sample_resources()
        await self.model.poll()
        if self._selected and self._selected in self.ops:
            self._load_side_panes(self._selected, poll=True)
        if self.dashboard.query_one(LogsPane).mode == "all":
            self._load_all_logs()

    @work(exclusive=True, group="all-logs")
    @_while_mounted
    async def _load_all_logs(self) -> None:
        """Every operation's log lines, merged by time: those that run now and the last ones updated,
        whichever process runs them (the engine's own events would show only this dashboard's)."""
        pane = self.dashboard.query_one(LogsPane)
        records: list[LogRecord] = []
        for op_id in dict.fromkeys([*self.model.active, *(o.id for o in self.model.recent(ALL_LOGS_OPS))]):
            try:
                if op_id in pane.offsets:
                    got, offset = await self.engine.logs(op_id, pane.offsets[op_id])
                else:
                    got, offset = await self.engine.logs(op_id, 0, ALL_LOGS_TAIL)
            except Exception as e:
                log.debug("log of %s: %s", op_id, e)
                continue
            pane.offsets[op_id] = offset
            for rec in got:
                rec.operation_id = op_id
            records += got
        if pane.mode == "all":
            pane.add(sorted(records, key=lambda r: r.ts), with_id=True)

    def _live(self, op_id: str) -> Progress | None:
        return self.engine.live(op_id) if self.engine_started else None

    def _sample_resources(self) -> None:
        try:
            sample = self.sampler(self.engine.child_pids())
        except Exception as e:
            log.debug("resource sample failed: %s", e)
            return
        history = self.model.history
        history.append(sample)
        self.dashboard.query_one(ResourcesPane).update_data(
            sample,
            list(history),
            len(self.engine.running_ids),
            self.engine.max_concurrent,
            self.model.queue_depth(),
            self.model.store_ok,
        )

    # ---- the frame -------------------------------------------------------------------------

    @_while_mounted
    def _on_frame(self) -> None:
        """Everything the screen shows, refreshed at most once per frame."""
        model = self.model
        table = self.dashboard.query_one(OperationsTable)
        if model.refetch and self.engine_started:
            self._refetch_now()
        if model.structure_dirty:
            model.structure_dirty = False
            model.repaint = False
            table.rebuild()
            self._update_statusline()
        elif model.repaint or self.engine.running_ids or not table.fetched:
            model.repaint = False
            table.refresh()
        self._show_selected()
        if self._selected in model.checkpointed:
            self._load_side_panes(self._selected, logs=False)
        model.checkpointed.clear()
        while model.errors:  # the store failing, said once when it begins
            self.notify(model.errors.popleft(), severity="error")
        while self.warnings:
            self.notify(self.warnings.popleft(), severity="warning", timeout=8)
        if self.waiting_to_quit and self.engine_started and not self.engine.running_ids:
            self.waiting_to_quit = False
            self.run_worker(self._quit_now())

    @_while_mounted
    def _show_selected(self) -> None:
        """The detail of the selected operation, its side panes when it changed, the keys that apply."""
        selected = self.dashboard.query_one(OperationsTable).selected_id
        if selected != self._selected:
            self._selected = selected
            self._load_side_panes(selected)
        op = self.ops.get(selected) if selected else None
        if self._tab == "detail" or not self._narrow:
            full = self._full if self._full is not None and self._full.id == selected else None
            self.dashboard.query_one(DetailPane).show(op, self._live(selected) if selected else None, full)
        # The footer is rebuilt only when the keys that apply change, not at every cursor move.
        state = (op is None, op.status if op else None, op.priority if op else None, self.waiting_to_quit)
        if state != self._binding_state:
            self._binding_state = state
            self.refresh_bindings()

    @on(OperationsTable.Highlighted)
    def _highlighted(self) -> None:
        self._show_selected()  # at once, not at the next frame: the key press is answered now

    @work(exclusive=True, group="refetch")
    async def _refetch_now(self) -> None:
        await self.model.fetch(set(self.model.refetch))

    @work(exclusive=True, group="side")
    @_while_mounted
    async def _load_side_panes(self, op_id: str | None, logs: bool = True, poll: bool = False) -> None:
        """Checkpoints and log of the selected operation (new lines only when polling)."""
        # After a pause in cursor moves: scrolling through rows does not read (and lay out) every row's panes.
        await asyncio.sleep(0 if poll else SIDE_DEBOUNCE)
        cps_pane = self.dashboard.query_one(CheckpointsPane)
        logs_pane = self.dashboard.query_one(LogsPane)
        if op_id is None:
            cps_pane.show(None, [])
            if logs_pane.mode == "selected":
                logs_pane.reset(None)
            return
        if not self.engine_started:
            return
        try:
            full = self._full
            if full is None or full.id != op_id or full.status is not self.ops[op_id].status:
                self._full = await self.engine.get(op_id)
            checkpoints = await self.engine.checkpoints(op_id)
            records: list[Any] = []
            fresh = logs and logs_pane.mode == "selected" and logs_pane.op_id != op_id
            if fresh:
                records, offset = await self.engine.logs(op_id, 0, 500)  # the tail
            elif logs and logs_pane.mode == "selected":
                records, offset = await self.engine.logs(op_id, logs_pane.log_offset)
        except Exception as e:
            log.debug("side panes of %s: %s", op_id, e)
            return
        # Every change to the panes in one go: one layout, not one per pane.
        cps_pane.show(op_id, checkpoints)
        if fresh:
            logs_pane.reset(op_id)
        if logs and logs_pane.mode == "selected":
            logs_pane.log_offset = offset
            logs_pane.add(records)

    def _update_statusline(self) -> None:
        counts = self.model.counts()
        table = self.dashboard.query_one(OperationsTable)
        n = len(self.ops)
        parts = [f"[b]Outlast[/b]  {n:,} operation{'s' if n != 1 else ''}"]
        for status in (Status.RUNNING, Status.QUEUED, Status.PAUSED, Status.FAILED):
            if counts.get(status):
                parts.append(f"{counts[status]} {status.value}")
        if table.filter_words:
            parts.append(f"filter [b]{' '.join(table.filter_words)}[/b] ({len(table.ids)} shown)")
        if table.sort != SORTS[0]:
            parts.append(f"sort {table.sort}")
        if self.waiting_to_quit:
            parts.append("[b]waiting for running work to finish, then quitting[/b]")
        if self.engine_error:
            parts.append(f"[b]engine stopped: {self.engine_error}[/b]")
        elif not self.model.store_ok:
            parts.append("[b]store unreachable[/b]")
        self.dashboard.query_one("#statusline", Static).update(" · ".join(parts))

    # ---- actions ---------------------------------------------------------------------------

    @property
    def selected_op(self) -> Operation | None:
        op_id = self.dashboard.query_one(OperationsTable).selected_id
        return self.ops.get(op_id) if op_id else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Only the keys that apply to the selected operation are active (and shown in the footer)."""
        if self.screen is not self.screen_stack[0]:
            return action not in self.ACTIONS_HELP  # a dialog is open: its keys, not the dashboard's
        return self._applies(action)

    def _applies(self, action: str) -> bool:
        """Whether a dashboard action makes sense for the selected operation."""
        op = self.selected_op
        status = op.status if op else None
        if action == "cancel":
            return status in (Status.QUEUED, Status.RUNNING, Status.PAUSED, Status.INTERRUPTED)
        if action == "pause":
            return status in ACTIVE
        if action == "resume":
            return status in RESUMABLE
        if action == "raise_priority":
            return status is Status.QUEUED and op is not None and op.priority is not Priority.HIGH
        if action == "lower_priority":
            return status is Status.QUEUED and op is not None and op.priority is not Priority.LOW
        if action in ("detail", "checkpoints"):
            return op is not None
        return True

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every dashboard action that applies now, then Textual's own commands."""
        for action, (title, help_) in self.ACTIONS_HELP.items():
            if self._applies(action):
                yield SystemCommand(title, help_, getattr(self, f"action_{action}"))
        yield from super().get_system_commands(screen)

    def _act(self, what: str, op_id: str, call: Callable[[], Any]) -> None:
        """Run an engine call in the background; a refusal is one notification line."""

        async def go() -> None:
            try:
                result = await call()
            except OutlastError as e:
                self.notify(str(e), severity="warning")
            else:
                if isinstance(result, Operation) and result.id == op_id:
                    self.model.keep(result)
                self.notify(f"{what}: {op_id}", timeout=3)
            self.model.refetch.add(op_id)

        self.run_worker(go(), group="act")

    def action_cancel(self) -> None:
        op = self.selected_op
        if op is None:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._act("cancelled", op.id, lambda: self.engine.cancel(op.id))

        self.push_screen(ConfirmScreen(f"Cancel {op.label} ({op.id})?", yes="Cancel it"), answer)

    def action_pause(self) -> None:
        if op := self.selected_op:
            self._act("pausing", op.id, lambda: self.engine.pause(op.id))

    def action_resume(self) -> None:
        if op := self.selected_op:
            self._act("resumed", op.id, lambda: self.engine.resume(op.id))

    @on(CheckpointsPane.ResumeFrom)
    def _resume_from(self, event: CheckpointsPane.ResumeFrom) -> None:
        op = self.ops.get(event.op_id)
        if op is not None and op.status not in RESUMABLE:
            self.notify(f"{op.id} is {op.status.value}: pause it first to resume from a checkpoint", severity="warning")
            return
        done = op.progress.done if op is not None and op.progress is not None else event.items
        again = max(0, done - event.items)
        dropped = f"; {event.newer} newer checkpoint{'s' if event.newer != 1 else ''} dropped" if event.newer else ""
        question = (
            f"Resume {op.label if op else event.op_id} from checkpoint {event.seq} "
            f"({fmt.count(event.items)} items done)? {fmt.count(again)} item{'s' if again != 1 else ''} "
            f"will be done again{dropped}."
        )

        def answer(yes: bool | None) -> None:
            if yes:
                self._act(
                    f"resumed from checkpoint {event.seq}",
                    event.op_id,
                    lambda: self.engine.resume(event.op_id, checkpoint=event.seq),
                )

        self.push_screen(ConfirmScreen(question, yes="Resume"), answer)

    def _reprioritise(self, up: bool) -> None:
        op = self.selected_op
        if op is None:
            return
        new = op.priority.raised() if up else op.priority.lowered()
        self.model.keep(op.model_copy(update={"priority": new}))  # a second key press builds on this one
        self._act(f"priority {new.value}", op.id, lambda: self.engine.set_priority(op.id, new))

    def action_raise_priority(self) -> None:
        self._reprioritise(True)

    def action_lower_priority(self) -> None:
        self._reprioritise(False)

    def action_detail(self) -> None:
        self._show_tab("detail")
        if not self._narrow:
            self.dashboard.query_one(DetailPane).focus()

    def action_checkpoints(self) -> None:
        self._show_tab("checkpoints")
        self.dashboard.query_one(CheckpointsPane).focus()

    def action_pane(self, name: str) -> None:
        """1-4: show a pane (at 80 columns this is how the tabs are switched). The focus stays where
        it is, so the arrows still move through the operations and the pane follows; tab or the
        pane's own key (enter, l) goes into it."""
        self._show_tab(name)

    def action_logs(self) -> None:
        self._show_tab("logs")
        self.dashboard.query_one(LogsPane).focus()

    def action_sort(self) -> None:
        table = self.dashboard.query_one(OperationsTable)
        table.sort = SORTS[(SORTS.index(table.sort) + 1) % len(SORTS)]
        self.model.structure_dirty = True
        self._on_frame()

    def action_filter(self) -> None:
        box = self.dashboard.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        table = self.dashboard.query_one(OperationsTable)
        table.filter_words = event.value.lower().split()
        self.model.structure_dirty = True

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        box = self.dashboard.query_one("#filter", Input)
        if not box.value.strip():
            box.display = False
        self.dashboard.query_one(OperationsTable).focus()

    def action_to_table(self) -> None:
        """Escape: clear the filter when typing one, else go back to the table."""
        box = self.dashboard.query_one("#filter", Input)
        if box.has_focus or (box.display and self.focused is self.dashboard.query_one(OperationsTable)):
            box.value = ""
            box.display = False
        self.dashboard.query_one(OperationsTable).focus()

    def action_cycle_theme(self) -> None:
        new = next_theme(self._theme_names, self.theme)
        self.theme = new
        try:
            saved = save_setting("theme", new, os.environ.get("OUTLAST_CONFIG") or None)
        except (OSError, OutlastError) as e:
            self.notify(f"theme {new}, not saved: {e}", severity="warning")
        else:
            # The user's config file, whatever --state-dir says: a theme is the person's, not the store's.
            self.notify(f"theme {new}, saved in {saved}", timeout=3)

    def action_help(self) -> None:
        keys = [
            (b.key_display or b.key, self.ACTIONS_HELP[b.action][1])
            for b in self.BINDINGS
            if isinstance(b, Binding) and b.action in self.ACTIONS_HELP
        ]
        keys += [
            ("1-4", "Show the detail, checkpoints, logs or resources pane"),
            ("esc", "Back to the table (clears the filter)"),
            ("tab", "Next pane (at 80 columns: the pane tabs, then left/right)"),
            ("a", "In the logs pane: one operation's log / every operation's"),
            ("ctrl+p", "Command palette: every action by name"),
        ]
        self.push_screen(HelpScreen(keys))

    def action_launch(self) -> None:
        op = self.selected_op

        def launched(spec: OperationSpec | None) -> None:
            if spec is not None:
                self._submit(spec)

        self.push_screen(LaunchScreen(handlers(), initial_type=op.type if op else None), launched)

    @work(group="act")
    @_while_mounted
    async def _submit(self, spec: OperationSpec) -> None:
        try:
            op = await self.engine.submit(spec)
        except OutlastError as e:
            self.notify(str(e), severity="error")
            return
        self.model.keep(op)
        self.notify(f"queued {op.label}: {op.id}", timeout=3)
        self._on_frame()
        self.dashboard.query_one(OperationsTable).select(op.id)

    def on_key(self, event: events.Key) -> None:
        if event.key == "a" and self.focused is self.dashboard.query_one(LogsPane):
            logs = self.dashboard.query_one(LogsPane)
            logs.mode = "all" if logs.mode == "selected" else "selected"
            logs.border_title = "Logs: all operations" if logs.mode == "all" else "Logs"
            tab = self.dashboard.query_one("#tab-logs", Tab)
            tab.label = "3 Logs: all" if logs.mode == "all" else "3 Logs"  # at 80 columns the tab is the title
            logs.reset(None)
            if logs.mode == "selected":
                self._load_side_panes(self._selected)
            else:
                self._load_all_logs()
            event.stop()

    # ---- quitting --------------------------------------------------------------------------

    async def action_quit(self) -> None:
        running = len(self.engine.running_ids) if self.engine_started else 0
        if not running:
            await self._quit_now()
            return

        def chosen(choice: str | None) -> None:
            if choice == "pause":
                self.run_worker(self._quit_now("the dashboard quit (pause and quit)"))
            elif choice == "wait":
                self.engine.run_queue = False
                self.waiting_to_quit = True
                self._update_statusline()
                self.notify("starting nothing new; quitting when the running operations finish", timeout=5)
            elif self.waiting_to_quit:  # asked again while waiting, and chose to stay: back to work
                self.engine.run_queue = True
                self.waiting_to_quit = False
                self._update_statusline()

        self.push_screen(QuitScreen(running), chosen)

    async def _quit_now(self, reason: str = "the dashboard quit") -> None:
        """Pause what still runs (a checkpoint each), close the store, exit."""
        await self.stop_engine(reason)
        self.exit(0)

    async def stop_engine(self, reason: str = "the dashboard quit") -> None:
        """``reason`` ends the paused operations' status line: "paused: REASON"."""
        if self._unsubscribe:
            self._unsubscribe()
            self._unsubscribe = None
        if self._boot_task and not self._boot_task.done():
            self._boot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._boot_task
        if self.engine_started:
            self.engine_started = False
            await self.engine.shutdown(reason=reason)

    async def on_unmount(self) -> None:
        await self.stop_engine()


class _Warnings(logging.Handler):
    """Engine warnings while the dashboard owns the terminal: kept for the app to show as notifications
    (a line written to stderr would tear the screen). Any thread may log; a deque append is atomic."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[str] = deque(maxlen=100)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main(settings: Settings) -> int:
    """``outlast`` / ``outlast tui``: run the dashboard until the user quits; the exit code."""
    app = OutlastApp(settings)
    logger = logging.getLogger("outlast")
    saved = logger.handlers[:]
    handler = _Warnings()
    app.warnings = handler.lines
    logger.handlers = [handler]
    try:
        rv = app.run()
    finally:
        logger.handlers = saved
    return int(rv or 0)
