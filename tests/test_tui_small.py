"""The dashboard on a 40x12 terminal.

At 40x12 the launch form's buttons, name and priority were below the screen, and the quit question's
buttons past its right edge (two of four) with its question above the top: each dialog now drops its
blank rows and draws its buttons on one line each there, so every control is on screen."""

from __future__ import annotations

from textual.widget import Widget
from textual.widgets import Button

from engine import Engine, OperationSpec, Settings, open_store
from tui.screens.confirm import ConfirmScreen, QuitScreen
from tui.screens.launch import LaunchScreen
from tui.widgets.operations import OperationsTable

from .fixtures_tui import make_app, select, wait_for

SMALL = (40, 12)


def whole_on_screen(widget: Widget, within: Widget) -> bool:
    """Whether ``widget`` is drawn whole inside what ``within`` (its dialog) shows, on the screen."""
    r = widget.region
    return r.area > 0 and within.content_region.contains_region(r) and widget.screen.region.contains_region(r)


def hidden(scope: Widget, *selectors: str) -> list[str]:
    """The selectors of ``scope``'s widgets that are not drawn whole in its ``.dialog`` or launch form."""
    dialog = scope.query_one(".dialog, #launch-dialog")
    return [s for s in selectors if not whole_on_screen(scope.query_one(s), dialog)]


async def test_the_dialogs_show_every_button_at_40x12(tui_settings: Settings) -> None:
    engine = Engine(store=open_store(tui_settings.state_dir), settings=tui_settings, run_queue=False)
    app = make_app(tui_settings, engine=engine)
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        op = await engine.submit(OperationSpec(type="ledger", name="nightly", params={"items": 5}))
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: op.id in table.ids)
        await select(pilot, op.id)

        await pilot.press("c")  # cancel: a question and two buttons
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.pause()
        assert hidden(app.screen, ".question", "#yes", "#no") == []
        await pilot.press("y")
        await wait_for(pilot, lambda: app.model.ops[op.id].status.value == "cancelled")

        await pilot.press("d")  # remove: a question, what goes, two buttons
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.pause()
        assert hidden(app.screen, ".question", ".explain", "#yes", "#no") == []
        await pilot.press("n")
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen))

        app.push_screen(QuitScreen(1))  # what q asks while work runs here: four buttons
        await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen))
        await pilot.pause()
        assert hidden(app.screen, ".question", ".explain", "#hand_over", "#pause", "#wait", "#stay") == []
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, QuitScreen))

    # At 80x24 the dialogs are as they were: roomy, with full buttons.
    app = make_app(tui_settings, engine=Engine(store=open_store(tui_settings.state_dir), settings=tui_settings))
    async with app.run_test(size=(80, 24)) as pilot:
        app.push_screen(QuitScreen(1))
        await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen))
        await pilot.pause()
        assert not any(b.compact for b in app.screen.query(Button))
        assert not app.screen.has_class("-slim") and not app.screen.has_class("-short")
        await pilot.press("escape")


async def test_the_launch_form_shows_its_fields_and_buttons_at_40x12(tui_settings: Settings) -> None:
    app = make_app(tui_settings)
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen))
        await pilot.pause()
        form = app.screen
        assert hidden(form, "#launch-type", "#launch-priority", "#launch-items", "#launch-name") == []
        assert hidden(form, "#launch-submit", "#launch-cancel") == []
        assert form.query_one("#launch-params").region.height >= 3  # a param and its rules at least
        await pilot.click("#launch-cancel")  # where it is drawn
        await wait_for(pilot, lambda: not isinstance(app.screen, LaunchScreen))
