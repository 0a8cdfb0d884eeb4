"""An optional choice left empty in the launch form reads "none", as the text fields do: security_scan's
fail_on read "Select" (Textual's own word), which an outside tester took for a value to pick before
launching."""

from __future__ import annotations

from textual.widgets import Select

from engine import handlers
from tests.test_tui_launch import LaunchApp


async def test_an_empty_optional_choice_reads_none() -> None:
    app = LaunchApp(handlers(), initial_type="security_scan")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        fail_on = app.screen.query_one("#param-fail_on", Select)
        assert fail_on.is_blank() and fail_on.prompt == "none", fail_on.prompt
