"""What an outside tester's first hour with the dashboard found, each driven through Textual's pilot.

A terminal made smaller left the selected row off the screen (the detail pane showed an operation the
table did not).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from engine import Engine, Operation, Progress, Settings, Status, load_settings, open_store
from tui.widgets.operations import OperationsTable

from .fixtures_tui import NOW, make_app, wait_for

MANY = 60
"""More operations than a 40-line terminal shows."""


def _history(state_dir: Path, n: int) -> None:
    """``n`` completed operations, one a minute, the newest first in the table."""

    async def go() -> None:
        store = open_store(state_dir)
        await store.open()
        try:
            for i in range(n):
                t = NOW - 3600 + i * 60
                await store.create(
                    Operation(
                        id=f"06b5{i:09d}",
                        type="demo",
                        name=f"demo {i}",
                        status=Status.COMPLETED,
                        created_at=t,
                        queued_at=t,
                        started_at=t,
                        finished_at=t + 30,
                        updated_at=t + 30,
                        progress=Progress(done=10, total=10),
                    )
                )
        finally:
            await store.close()

    asyncio.run(go())


@pytest.fixture
def history(state_dir: Path) -> Settings:
    _history(state_dir, MANY)
    return load_settings(state_dir=state_dir)


def _cursor_shown(table: OperationsTable) -> bool:
    rows = table.size.height - 1  # the header takes the first line
    return int(table.scroll_y) <= table.cursor < int(table.scroll_y) + rows


@pytest.mark.parametrize("size", [(80, 24), (40, 12)])
async def test_the_selected_row_stays_on_the_screen_when_the_terminal_gets_smaller(
    history: Settings, size: tuple[int, int]
) -> None:
    """The cursor on the last row a 120x40 screen shows, the terminal made smaller: the table kept its top row
    and the selected one went off the bottom, the detail pane naming an operation no row showed, and the next
    c or p acting on it. The table now scrolls to it, as a key moving the cursor does."""
    engine = Engine(store=open_store(history.state_dir), settings=history, run_queue=False)
    app = make_app(history, engine=engine, clock=lambda: NOW, poll=3600.0)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: len(table.ids) == MANY)
        tall = table.size.height
        bottom = tall - 2  # the last row on the screen
        await pilot.press(*["down"] * bottom)
        await pilot.pause()
        assert table.cursor == bottom and int(table.scroll_y) == 0 and _cursor_shown(table)
        selected = table.selected_id
        await pilot.resize_terminal(*size)
        await wait_for(pilot, lambda: table.size.height < tall)
        await pilot.pause()
        assert table.selected_id == selected
        assert _cursor_shown(table), (table.cursor, table.scroll_y, table.size)
        await pilot.resize_terminal(120, 40)
        await wait_for(pilot, lambda: table.size.height == tall)
        await pilot.pause()
        assert table.selected_id == selected and _cursor_shown(table)


async def test_editing_keys_typed_in_one_burst_in_the_filter_apply_in_the_order_typed(history: Settings) -> None:
    """In the filter box, "backspace x3, xyz" sent at once after "abcdef" left "abcdef" (the characters went
    in first, then the backspaces took them out), "left x3, 12" gave "abcdef12", and "end, ctrl+u, paused" an
    empty filter showing everything: Textual runs an Input's editing keys as bindings, after the keys
    behind them. The launch form's fields had been mended so; the filter had not."""
    from textual import events
    from textual.widgets import Input

    engine = Engine(store=open_store(history.state_dir), settings=history, run_queue=False)
    app = make_app(history, engine=engine, clock=lambda: NOW, poll=3600.0)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: len(table.ids) == MANY)
        await pilot.press("slash", *"abcdef")
        box = app.query_one("#filter", Input)
        await wait_for(pilot, lambda: box.value == "abcdef")
        for burst, want in (
            (["backspace"] * 3 + list("xyz"), "abcxyz"),
            (["left"] * 3 + list("12"), "abc12xyz"),
            (["end", "ctrl+u", *"demo", "space", *"17"], "demo 17"),
        ):
            for key in burst:  # posted at once: nothing waits for a key to be handled
                app.post_message(events.Key(key, key if len(key) == 1 else " " if key == "space" else None))
            await pilot.pause(0.3)
            assert box.value == want, burst
        await wait_for(pilot, lambda: table.ids == ["06b5000000017"])


async def test_keys_typed_in_one_burst_across_a_switch_reach_the_fields_behind_it() -> None:
    """The command form typed in one burst (tmux send-keys, a paste, a slow SSH link): the command, tab,
    space (the shell switch on), tab x3 and a progress regex. The regex was lost: the switch, a Textual
    Switch, toggled as a binding after the keys behind it and dropped the letters that reached it before
    the tabs had moved the focus on; the form launched without it. Now the switch takes space and tab in
    the key's turn and hands a key that reaches it late to the field that has the focus, as the text
    fields do."""
    from textual import events

    from engine import handlers

    from .test_tui_launch import LaunchApp

    app = LaunchApp({"command": handlers()["command"]}, initial_type="command")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        app.screen.query_one("#param-command").focus()
        await pilot.pause()
        keys = [*"date", "tab", "space", "tab", "tab", "tab", *"step (?P<done>[0-9]+)", "ctrl+s"]
        for key in keys:  # posted at once: nothing waits for a key to be handled
            app.post_message(events.Key(key, " " if key == "space" else key if len(key) == 1 else None))
        await pilot.pause(0.5)
    (spec,) = app.results
    assert spec is not None
    assert {k: spec.params.get(k) for k in ("command", "shell", "progress_regex")} == {
        "command": "date",
        "shell": True,
        "progress_regex": "step (?P<done>[0-9]+)",
    }


async def test_keys_typed_in_one_burst_across_a_choice_reach_the_fields_behind_it(tmp_path: Path) -> None:
    """The same across a choice (security_scan's format, a Select): "tab, tab, out.json" typed at once from
    the field before it launched without the output path."""
    from textual import events

    from engine import handlers

    from .test_tui_launch import LaunchApp

    app = LaunchApp({"security_scan": handlers()["security_scan"]}, initial_type="security_scan")
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.pause()
        root = app.screen.query_one("#param-root")
        root.value = str(tmp_path)  # type: ignore[attr-defined]
        app.screen.query_one("#param-rules").focus()
        await pilot.pause()
        keys = [*"secrets", "tab", "tab", *"out.json", "ctrl+s"]
        for key in keys:  # posted at once: nothing waits for a key to be handled
            app.post_message(events.Key(key, key if len(key) == 1 else None))
        await pilot.pause(0.5)
    (spec,) = app.results
    assert spec is not None
    assert spec.params["rules"] == ["secrets"] and str(spec.params.get("output")).endswith("/out.json"), spec.params


async def test_the_quit_question_says_what_runs_now_not_what_ran_when_it_opened(tui_settings: Settings) -> None:
    """q while an operation ran asked what to do with "1 operation still runs in this dashboard", and said it
    still when that operation had completed while the question waited for an answer."""
    from textual.widgets import Label

    from tui.screens.confirm import QuitScreen

    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        op = await app.engine.submit({"type": "ledger", "params": {"items": 15, "seconds": 0.1}})
        await wait_for(pilot, lambda: op.id in app.engine.running_ids)
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen))
        question = app.screen.query_one(".question", Label)
        assert "1 operation still runs" in str(question.render())
        await wait_for(pilot, lambda: not app.engine.running_ids)
        await wait_for(pilot, lambda: "Nothing runs" in str(question.render()), timeout=5)
        await pilot.press("escape")


async def test_the_quit_question_takes_what_runs_before_it_is_drawn(tui_settings: Settings) -> None:
    """The app gives the quit question what runs at every frame (``show_running``, from the frame timer). A frame
    between ``push_screen`` and the question's compose (a loaded machine; q as the last operation finished) found
    no question to update: NoMatches, and the dashboard died with a traceback instead of asking (the 40x12 test's
    escape then went unanswered, two runs in 28 under load). Called here where that frame came, before compose."""
    from textual.widgets import Label

    from tui.screens.confirm import QuitScreen

    app = make_app(tui_settings)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = QuitScreen(1)
        app.push_screen(screen)  # its compose runs in its own task: not before this test awaits
        assert not screen.query("#quit-question")
        screen.show_running(0)
        await wait_for(pilot, lambda: screen.query("#quit-question"))
        await pilot.pause()
        assert "Nothing runs" in str(screen.query_one("#quit-question", Label).render())  # what it was given
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is not screen)


def test_a_hand_over_from_a_dashboard_on_a_relative_state_dir_names_its_log_by_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cd /tmp; outlast --state-dir rel tui`, then q and h: "its log: rel/detached/worker-....log", a path
    that names nothing once read from another directory (every hint of the command line is absolute)."""
    import os
    import time

    from tui.handover import spawn_worker

    from .fixtures_cli import REPO, until

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.chdir(tmp_path)
    settings = load_settings(state_dir=Path("rel state"))
    pid, log_path = spawn_worker(settings)  # nothing queued: it exits at once
    monkeypatch.chdir(REPO)
    assert log_path.is_absolute() and log_path.is_relative_to(tmp_path / "rel state"), log_path
    until(lambda: "worker stopped" in log_path.read_text(), timeout=30, what="the worker stopped")
    with contextlib.suppress(ChildProcessError):
        end = time.monotonic() + 10
        while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < end:
            time.sleep(0.05)


@pytest.mark.parametrize("width", [40, 120])
async def test_the_palette_key_ends_at_the_right_edge_so_no_key_shows_past_it(history: Settings, width: int) -> None:
    """At 40 columns the footer ended "^p paletteg": its keys, wider than the terminal, scroll under the
    palette key docked on the right, and the margin compact keys keep on their right left the last column
    to them. Flush with the edge (its padding in place of the margin), it covers them at any width."""
    engine = Engine(store=open_store(history.state_dir), settings=history, run_queue=False)
    app = make_app(history, engine=engine, clock=lambda: NOW, poll=3600.0)
    async with app.run_test(size=(width, 12)) as pilot:
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: len(table.ids) == MANY)
        await pilot.pause()
        palette = app.screen.query_one("FooterKey.-command-palette")
        assert palette.region.right == width, palette.region
        assert str(palette.render()).rstrip().endswith("palette")
