"""SVG snapshots of the dashboard over fixed records (fixed ids, clock and resource sample).

Regenerate after a deliberate change with ``pytest tests/test_tui_snapshots.py --snapshot-update``
and look at the SVGs under tests/__snapshots__/ before committing them.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.measure import Measurement
from textual.pilot import Pilot
from textual.widgets import DataTable

from engine import Engine, Settings, open_store
from tui.app import OutlastApp
from tui.widgets.checkpoints import CheckpointsPane
from tui.widgets.operations import OperationsTable

from .fixtures_tui import CHECKPOINTED, NOW, make_app, select, wait_for


def _app(settings: Settings) -> OutlastApp:
    """Nothing runs here (the running records belong to the fixture's 'worker'); one resource sample."""
    engine = Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False)
    return make_app(settings, engine=engine, clock=lambda: NOW, poll=3600.0)


def _columns_fit(table: DataTable[Any]) -> bool:
    """Each column is as wide as its widest cell: DataTable widens columns when it is next idle, after
    the rows are added, and a busy CI machine once took the picture in between (the time shown as
    '2026')."""
    console = Console(width=200)
    for column in table.ordered_columns:
        cells = table.get_column(column.key)
        widest = max((Measurement.get(console, console.options, cell).maximum for cell in cells), default=0)
        if (column.content_width if column.auto_width else column.width) < widest:
            return False
    return True


async def _loaded(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, OutlastApp)
    table = app.query_one(OperationsTable)
    await wait_for(pilot, lambda: app.dashboard.panes_mounted)  # mounted after the first frame
    panes = app.query_one(CheckpointsPane)

    # The side panes are read once the cursor has rested (SIDE_DEBOUNCE): wait for them too.
    def ready() -> bool:
        return bool(
            len(table.ids) == 9
            and app.model.history
            and panes.op_id == table.selected_id
            and panes.row_count == len(panes.shown)
            and _columns_fit(panes)
        )

    def looks() -> tuple[Any, ...]:
        return (table.selected_id, panes.op_id, [c.content_width for c in panes.ordered_columns])

    # Ready, and still ready and the same after every message queued by then is handled and a frame: on a
    # busy machine the panes once showed a first selection, were given another, and the picture was taken
    # before the new rows' columns were widened (the time shown as '2026').
    while True:
        await wait_for(pilot, ready)
        before = looks()
        await pilot.pause()
        await pilot.pause(0.3)
        if ready() and looks() == before:
            return


async def _checkpoints(pilot: Pilot[Any]) -> None:
    await _loaded(pilot)
    await select(pilot, CHECKPOINTED)
    await pilot.app.dashboard.action_checkpoints()  # type: ignore[attr-defined]
    pane = pilot.app.query_one(CheckpointsPane)
    await wait_for(pilot, lambda: pane.op_id == CHECKPOINTED and len(pane.shown) == 3 and _columns_fit(pane))
    await pilot.pause(0.3)


def test_main_screen_80x24(seeded: Settings, snap_compare: Any) -> None:
    assert snap_compare(_app(seeded), terminal_size=(80, 24), run_before=_loaded)


def test_main_screen_160x50(seeded: Settings, snap_compare: Any) -> None:
    assert snap_compare(_app(seeded), terminal_size=(160, 50), run_before=_loaded)


def test_checkpoints_pane_80x24(seeded: Settings, snap_compare: Any) -> None:
    assert snap_compare(_app(seeded), terminal_size=(80, 24), run_before=_checkpoints)


async def _remove_dialog(pilot: Pilot[Any]) -> None:
    await _loaded(pilot)
    await select(pilot, CHECKPOINTED)  # paused: the dialog also says it can no longer be resumed
    await pilot.press("d")
    await pilot.pause(0.3)


def test_remove_dialog_80x24(seeded: Settings, snap_compare: Any) -> None:
    assert snap_compare(_app(seeded), terminal_size=(80, 24), run_before=_remove_dialog)
