"""The dashboard on a 40x12 terminal, and its filter against what the rows show.

At 40x12 the launch form's buttons, name and priority were below the screen, and the quit question's
buttons past its right edge (two of four) with its question above the top: each dialog now drops its
blank rows and draws its buttons on one line each there, so every control is on screen. The filter looked
in the raw text of a name another client stored with a control character, which the row shows escaped
(``\\x1b``): typing what the row showed found nothing."""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot
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


async def filter_by(pilot: Pilot[Any], *keys: str) -> None:
    await pilot.press("slash", *keys)
    await pilot.pause()


async def test_the_filter_finds_a_name_by_the_escape_its_row_shows(tui_settings: Settings) -> None:
    engine = Engine(store=open_store(tui_settings.state_dir), settings=tui_settings, run_queue=False)
    app = make_app(tui_settings, engine=engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        evil = await engine.submit(OperationSpec(type="ledger", name="plain", params={"items": 5}))
        other = await engine.submit(OperationSpec(type="ledger", name="x1bname", params={"items": 5}))
        # A spec refuses control characters in a name: this one was stored by another client (an older version).
        await engine.store.update(evil.id, name="evil\x1bname")
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: evil.id in table.ids and app.model.ops[evil.id].name == "evil\x1bname")
        rows = lambda: "\n".join(table.render_line(y).text for y in range(4))  # noqa: E731
        await wait_for(pilot, lambda: "evil\\x1bname" in rows())  # the row shows the escape
        await filter_by(pilot, *"evil", "backslash", *"x1bname")  # what the row shows, typed
        await wait_for(pilot, lambda: table.ids == [evil.id])
        await pilot.press("escape")
        await filter_by(pilot, *"x1bname")
        await wait_for(pilot, lambda: set(table.ids) == {evil.id, other.id})
