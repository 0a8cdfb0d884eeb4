"""SVG snapshots of the dashboard over fixed records (fixed ids, clock and resource sample).

Regenerate after a deliberate change with ``pytest tests/test_tui_snapshots.py --snapshot-update``
and look at the SVGs under tests/__snapshots__/ before committing them.
"""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot

from engine import Engine, Settings, open_store
from tui.app import OutlastApp
from tui.widgets.checkpoints import CheckpointsPane
from tui.widgets.operations import OperationsTable

from .fixtures_tui import CHECKPOINTED, NOW, make_app, select, wait_for


def _app(settings: Settings) -> OutlastApp:
    """Nothing runs here (the running records belong to the fixture's 'worker'); one resource sample."""
    engine = Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False)
    return make_app(settings, engine=engine, clock=lambda: NOW, poll=3600.0)


async def _loaded(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, OutlastApp)
    table = app.query_one(OperationsTable)
    panes = app.query_one(CheckpointsPane)
    # The side panes are read once the cursor has rested (SIDE_DEBOUNCE): wait for them too.
    await wait_for(
        pilot,
        lambda: (
            len(table.ids) == 9
            and app.model.history
            and panes.op_id == table.selected_id
            and panes.row_count == len(panes.shown)
        ),
    )
    # Every message queued by then handled (the rows' widths are measured after they are added), then a
    # frame: a loaded CI machine once took the picture with the checkpoint columns not yet widened.
    await pilot.pause()
    await pilot.pause(0.3)


async def _checkpoints(pilot: Pilot[Any]) -> None:
    await _loaded(pilot)
    await select(pilot, CHECKPOINTED)
    pilot.app.dashboard.action_checkpoints()  # type: ignore[attr-defined]
    pane = pilot.app.query_one(CheckpointsPane)
    await wait_for(pilot, lambda: pane.op_id == CHECKPOINTED and len(pane.shown) == 3)
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
