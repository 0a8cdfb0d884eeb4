"""Faults a hostile tester found in the dashboard, each driven through Textual's pilot over a real engine.

A checkpoint row acting on the operation the cursor had left; markup typed into the filter crashing the
app (and the command exiting 0); a record vanishing while the store was out; a flood of keys freezing
the app; what quitting said, what the status line counted and clipped, how child labels were cut.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
from typing import Any

import pytest
from rich.cells import cell_len
from textual.keys import _character_to_key
from textual.widgets import Input, Static

from engine import Progress, Settings, Status, StoreError, open_store
from tui import app as app_module
from tui.app import OutlastApp, exit_code
from tui.screens.confirm import ConfirmScreen, QuitScreen
from tui.screens.launch import LaunchScreen
from tui.widgets.checkpoints import CheckpointsPane
from tui.widgets.logs import LogsPane
from tui.widgets.operations import OperationsTable
from tui.widgets.resources import ResourcesPane

from .fixtures_tui import SAMPLE, make_app, select, status_of, wait_for


async def _paused(pilot: Any, app: OutlastApp, name: str) -> str:
    """A ledger operation run here until it has checkpoints, then paused."""
    op = await app.engine.submit({"type": "ledger", "name": name, "params": {"items": 400, "seconds": 0.01}})
    await wait_for(pilot, lambda: (app.engine.live(op.id) or Progress()).done >= 30)
    await app.engine.pause(op.id)
    await wait_for(pilot, lambda: app.ops.get(op.id) is not None and app.ops[op.id].status is Status.PAUSED)
    assert await app.engine.checkpoints(op.id)
    return op.id


def _statusline(app: OutlastApp) -> str:
    return str(app.screen_stack[0].query_one("#statusline", Static).render())


# ---- F1: a checkpoint row acts only on the operation the cursor shows ------------------------------


async def test_a_checkpoint_row_of_the_operation_just_left_resumes_nothing(tui_settings: Settings) -> None:
    app = make_app(tui_settings)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        a = await _paused(pilot, app, "first")
        b = await _paused(pilot, app, "second")
        await wait_for(pilot, lambda: app.dashboard.panes_mounted)  # mounted after the first frame
        pane = app.query_one(CheckpointsPane)
        await select(pilot, b)
        await wait_for(pilot, lambda: pane.op_id == b and pane.row_count > 0)
        # The cursor goes to A; before A's checkpoints are read, enter on a row (still B's) and y.
        app.query_one(OperationsTable).select(a)
        pane.focus()
        await pilot.press("enter")
        asked = app.screen.question if isinstance(app.screen, ConfirmScreen) else None
        await pilot.press("y")
        await pilot.pause(0.5)
        assert await status_of(app, b) is Status.PAUSED, f"B was resumed from A's row; asked: {asked!r}"
        assert asked is None or a in asked
        # Once A's rows are there, its row resumes A, and the question names A by id and name.
        if isinstance(app.screen, ConfirmScreen):
            await pilot.press("n")
        await wait_for(pilot, lambda: pane.op_id == a and pane.row_count > 0)
        assert a in str(pane.border_title)
        pane.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        question = app.screen.question
        assert a in question and "first" in question
        await pilot.press("y")
        await wait_for(pilot, lambda: status_of(app, a), timeout=10)
        await wait_for(pilot, lambda: app.ops[a].status is not Status.PAUSED)
        assert await status_of(app, b) is Status.PAUSED


# ---- F2: markup in the filter and in stored text ----------------------------------------------------


@pytest.mark.parametrize("typed", ["[/", "[/b]", "[bold red]x", "\\[x"])
async def test_markup_typed_into_the_filter_is_shown_as_typed(tui_settings: Settings, typed: str) -> None:
    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        await pilot.press("slash", *(_character_to_key(c) for c in typed))
        await wait_for(pilot, lambda: typed in _statusline(app))
        app._notes = lambda: ["store: [/b] went away"]  # type: ignore[method-assign]
        await wait_for(pilot, lambda: "store: [/b] went away" in _statusline(app))


async def test_an_app_ended_by_an_unhandled_error_exits_non_zero_and_says_so(
    tui_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app(tui_settings)
    with pytest.raises(ZeroDivisionError):
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.engine_started)
            op = await app.engine.submit({"type": "ledger", "params": {"items": 2000, "seconds": 0.01}})
            await wait_for(pilot, lambda: op.id in app.engine.running_ids)
            app.call_later(lambda: 1 / 0)
            await pilot.pause(0.5)
    assert app.return_code == 1
    assert app_module.exit_code(app, None) == 1
    said = capsys.readouterr().out
    assert "the dashboard failed" in said and f"1 operation paused, a checkpoint each: {op.id}" in said
    store = open_store(tui_settings.state_dir)
    await store.open()
    try:
        record = await store.get(op.id)  # what the line says is what the store holds
    finally:
        await store.close()
    assert record.status is Status.PAUSED and record.checkpoint_seq is not None
    assert "the dashboard failed" in (record.status_message or "")
    assert app_module.exit_code(make_app(tui_settings), None) == 0


# ---- F3: a store outage keeps the records held ------------------------------------------------------


async def test_a_refetch_that_fails_on_the_store_keeps_the_record(
    tui_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        op = await app.engine.submit({"type": "ledger", "name": "kept", "params": {"items": 2000, "seconds": 0.01}})
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: op.id in table.ids)

        async def unreachable(op_id: str) -> Any:
            raise StoreError("store unreachable: connection refused")

        monkeypatch.setattr(app.engine, "get", unreachable)
        app.model.refetch.add(op.id)
        await wait_for(pilot, lambda: not app.model.store_ok)
        await pilot.pause(0.5)
        assert op.id in app.ops and op.id in table.ids, "the record left the table while the store was out"
        monkeypatch.undo()
        await wait_for(pilot, lambda: app.model.store_ok)
        await app.engine.cancel(op.id)


# ---- F4: a flood of keys is cut at a length the engine would take -----------------------------------


async def test_the_filter_and_the_launch_form_take_no_more_than_a_bounded_length(tui_settings: Settings) -> None:
    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        await pilot.press("slash")
        box = app.query_one("#filter", Input)
        box.insert_text_at_cursor("ab " * 63)  # most of it at once: a key press is ~80 ms of pilot
        await pilot.press(*"ab " * 4)  # typed past the limit (201 > 200): each key past it takes the same path
        assert len(box.value) <= 200 < 189 + 12
        assert app.query_one(OperationsTable).filter_words == ["ab"]  # one word, not a hundred
        await pilot.press("escape", "escape")
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, LaunchScreen))
        name = app.screen.query_one("#launch-name", Input)
        assert 0 < name.max_length <= 200
        name.focus()
        await pilot.pause()  # focusing selects the field's text: after that, not before
        name.value = "n" * (name.max_length - 5)  # the form fills a default name: replaced
        name.cursor_position = len(name.value)
        await pilot.press(*"n" * 10)  # 5 to the limit, 5 past it
        assert name.value == "n" * name.max_length
        params = [w for w in app.screen.query(Input) if (w.id or "").startswith("param-")]
        assert params and all(0 < w.max_length <= 64 * 1024 for w in params)


def test_the_launch_form_bounds_are_the_engines() -> None:
    from engine.limits import MAX_ITEMS, MAX_NAME_CHARS, MAX_PARAMS_BYTES
    from tui.screens import launch

    assert launch.NAME_MAX == MAX_NAME_CHARS
    assert len(str(MAX_ITEMS)) == launch.ITEMS_MAX
    assert launch.FIELD_MAX <= MAX_PARAMS_BYTES


# ---- F5: what quitting says, what the status line counts and keeps ----------------------------------


async def test_pause_and_quit_says_what_was_paused_and_how_to_resume(tui_settings: Settings) -> None:
    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        op = await app.engine.submit({"type": "ledger", "name": "slow", "params": {"items": 2000, "seconds": 0.01}})
        await wait_for(pilot, lambda: op.id in app.engine.running_ids)
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen))
        await pilot.press("p")
        await wait_for(pilot, lambda: not app.is_running, timeout=15)
    said = app.handed_over or ""
    assert op.id in said and "outlast resume" in said


async def test_quit_says_what_was_written_not_what_was_asked(
    tui_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pause and quit with a store that takes no final status (a disk whose fsync hangs): the line said
    "1 operation paused, a checkpoint each" of an operation whose pause was never written. It says what
    the store holds: nothing written, found interrupted by the next process, resumable from there."""
    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        op = await app.engine.submit({"type": "ledger", "name": "slow", "params": {"items": 2000, "seconds": 0.01}})
        await wait_for(pilot, lambda: op.id in app.engine.running_ids)

        async def never_answers(*args: Any, **kw: Any) -> Any:
            await asyncio.Event().wait()

        monkeypatch.setattr(app.engine.store, "transition", never_answers)
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen))
        await pilot.press("p")
        # Said while it waits (a frozen Redis held a quit a minute on a screen that looked as before).
        await wait_for(pilot, lambda: "quitting: stopping 1 running operation at a checkpoint each" in _statusline(app))
        await wait_for(pilot, lambda: not app.is_running, timeout=30)
    assert exit_code(app, 0) == 8  # the store took no final status: as `outlast run` ends then
    said = app.handed_over or ""
    assert "paused" not in said, said
    assert f"1 operation stopped with nothing written (the store did not answer): {op.id} (slow)" in said, said
    assert "finds it interrupted" in said and "outlast resume ID" in said, said
    store = open_store(tui_settings.state_dir)
    await store.open()
    try:
        assert (await store.get(op.id)).status is Status.RUNNING  # what the line says: nothing written
    finally:
        await store.close()


async def test_the_status_line_counts_every_status_and_keeps_its_notes_past_a_long_filter(
    seeded: Settings,
) -> None:
    app = make_app(seeded)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine_started and app.query_one(OperationsTable).ids)
        await wait_for(pilot, lambda: "interrupted" in _statusline(app))
        assert "1 cancelled" in _statusline(app) and "1 completed" in _statusline(app)
        await pilot.press("slash")
        app.query_one("#filter", Input).insert_text_at_cursor("x" * 140)
        await pilot.press(*("x" * 10))
        app._notes = lambda: ["store unreachable"]  # type: ignore[method-assign]
        await wait_for(pilot, lambda: "store unreachable" in _statusline(app) and "xxxx" in _statusline(app))
        line = _statusline(app)
        for kept in ("store unreachable", "0 shown"):
            assert kept in line and cell_len(line[: line.index(kept) + len(kept)]) <= 120, line


async def test_child_process_labels_are_clipped_by_terminal_cells() -> None:
    from textual.app import App, ComposeResult

    class PaneApp(App[None]):
        def compose(self) -> ComposeResult:
            yield ResourcesPane(id="resources")

    wide, narrow = "0aaaaaaaaaaaa", "0bbbbbbbbbbbb"
    sample = dataclasses.replace(SAMPLE, children={wide: (50.0, 10**8), narrow: (40.0, 10**8)})
    async with PaneApp().run_test(size=(70, 30)) as pilot:
        pane = pilot.app.query_one(ResourcesPane)
        pane.labels = {wide: "#1 " + "索引" * 20, narrow: "#2 nightly"}
        pane.update_data(sample, [sample], 2, 4, {}, True)
        await pilot.pause()
        lines = [line for line in pane.render().plain.splitlines() if "cpu" in line and "#" in line]
    assert len(lines) == 2
    columns = {cell_len(line[: line.index("%")]) for line in lines}
    assert len(columns) == 1, lines  # the CPU figures line up: labels cut at the same cell width


async def test_at_80_columns_the_checkpoint_rows_go_as_soon_as_the_cursor_leaves_their_operation(
    tui_settings: Settings,
) -> None:
    """Narrow, the panes have no border, so no title naming whose rows they are: they are cleared."""
    app = make_app(tui_settings)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        a = await _paused(pilot, app, "first")
        b = await _paused(pilot, app, "second")
        await wait_for(pilot, lambda: app.dashboard.panes_mounted)  # mounted after the first frame
        pane = app.query_one(CheckpointsPane)
        await pilot.press("2")
        await select(pilot, b)
        await wait_for(pilot, lambda: pane.op_id == b and pane.row_count > 0)
        app.query_one(OperationsTable).select(a)
        await pilot.pause()
        assert pane.op_id in (None, a) and (pane.row_count == 0 or pane.op_id == a)
        await wait_for(pilot, lambda: pane.op_id == a and pane.row_count > 0)


# ---- F-start: keys pressed before the panes the first frame goes without are mounted ---------------


@pytest.mark.parametrize("size", [(160, 50), (80, 24)])
async def test_keys_pressed_before_the_deferred_panes_are_mounted_mount_them_and_act(
    tui_settings: Settings, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]
) -> None:
    """The checkpoints and logs panes, the filter box (and, wide, the tabs) are mounted after the first
    frame; here that mount is held back, so each key must mount them itself and act in the same press:
    l goes into the logs pane, the letters typed right behind / go into the filter box, tab goes into the
    next pane. Narrow, the first frame already shows the tabs."""
    from tui.screens.dashboard import DashboardScreen
    from tui.widgets.logs import LogsPane

    monkeypatch.setattr(DashboardScreen, "mount_later", lambda self: None)  # only the keys mount them
    app = make_app(tui_settings)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        dashboard = app.dashboard
        assert not dashboard.panes_mounted and not app.query("#filter") and not app.query(CheckpointsPane)
        assert bool(app.query("#pane-tabs")) == (size[0] < 120)  # narrow: the tabs are in the first frame
        frames = app.query(".pane")
        assert {w.id for w in frames} == {"detail", "checkpoints-frame", "logs-frame", "resources"}
        assert app.query_one("#logs-frame").border_title == "Logs"
        assert "frame" not in app.export_screenshot()  # a frame draws nothing in it (no widget's name)
        await pilot.press("slash", *"abc")
        assert dashboard.panes_mounted and not app.query("#checkpoints-frame, #logs-frame")
        box = app.query_one("#filter", Input)
        assert box.value == "abc" and app.focused is box
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.focused is app.query_one(OperationsTable))
        await pilot.press("l")
        await wait_for(pilot, lambda: isinstance(app.focused, LogsPane))
        assert dashboard.tab == "logs" and app.query_one("#pane-tabs").display == (size[0] < 120)


async def test_tab_pressed_first_mounts_the_panes_and_moves_the_focus(
    tui_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tui.screens.dashboard import DashboardScreen

    monkeypatch.setattr(DashboardScreen, "mount_later", lambda self: None)  # only the keys mount them
    app = make_app(tui_settings)
    async with app.run_test(size=(160, 50)) as pilot:
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: app.focused is table)
        dashboard = app.dashboard
        await pilot.press("tab", "tab")
        assert dashboard.panes_mounted
        await wait_for(pilot, lambda: isinstance(app.focused, CheckpointsPane))


# ---- F-keys: a metric's or a result's name is the handler's text -------------------------------------


async def test_metric_and_result_names_are_shown_as_written_and_a_long_one_leaves_room_for_values(
    tui_settings: Settings,
) -> None:
    """A metric named ``[/] x`` ended the dashboard with a MarkupError as soon as its operation was selected
    (the detail pane's keys went to a rich table as markup); one of 200 characters took the pane's width, the
    values beside every key cut to nothing."""
    op_id = await _stored(
        tui_settings,
        progress=Progress(done=3, total=3, metrics={"[/] x": 7, ":smile: [b]y": 8, "n" * 200: 9}),
        result={"[link=x]z[/link]": [1, 2]},
    )
    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, op_id)
        body = app.query_one("#detail-body")
        await wait_for(pilot, lambda: "· [link=x]z[/link]" in _text(body))  # once read whole
        text = _text(body)
    assert "· [/] x" in text and "· :smile: [b]y 8" in " ".join(text.split()), text
    status = next(line for line in text.splitlines() if line.startswith("status"))
    assert "completed" in status, text  # the values have their column beside the longest key
    assert any(line.startswith("· nnnn") and line.rstrip().endswith("… 9") for line in text.splitlines()), text


async def test_a_step_of_megabytes_is_shown_cut_saying_how_long_it_is(tui_settings: Settings) -> None:
    """A handler's step of 1 MB was folded beside the keys into 70,000 lines at every repaint: the event loop
    held for seconds at a time, the engine's timeouts, pause and cancel with it."""
    big = "s" * 200_000
    op_id = await _stored(tui_settings, progress=Progress(done=3, total=3, step=big, metrics={"m": big}), error=big)
    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, op_id)
        body = app.query_one("#detail-body")
        await wait_for(pilot, lambda: "error:" in "".join(_text(body).split()))  # the whole record shown
        height = body.size.height
        text = _text(body)
    assert height < 500, height
    assert "…(200,000characters)" in "".join(text.split()), text  # folded in the value column


async def test_log_lines_of_megabytes_are_shown_cut_saying_how_long_they_are(tui_settings: Settings) -> None:
    """A command's output without a newline is stored in lines of 1 MB: 20 of them, wrapped at the logs pane's
    width into half a million lines, held the event loop for 30 s (the engine's timeouts, pause and cancel).
    A level another client stored went to the terminal raw."""
    from engine import LogRecord

    big = "A" * 300_000
    op_id = await _stored(
        tui_settings,
        logs=[
            *[LogRecord(ts=time.time(), level="info", message=big + "END")] * 3,
            LogRecord(ts=time.time(), level="\x1b[2J", message="a level another client wrote"),
        ],
    )
    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, op_id)
        pane = app.query_one(LogsPane)
        await wait_for(pilot, lambda: len(pane.shown) == 4)
        text = "".join(strip.text.strip() for strip in pane.lines)
    assert "".join(text.split()).count("…(300,003characters)") == 3 and "END" not in text, text[-300:]
    assert "\\x1b[2j" in text and "\x1b" not in text, text[-300:]  # the level, as every level shows: lower case


async def test_a_result_of_thousands_of_nested_values_shows_the_first_and_how_many_more(tui_settings: Settings) -> None:
    """A plugin's result keyed by file, 20,000 keys, was laid out in 20,000 rows each time its operation was
    selected: 5 s with the event loop held, the engine's timeouts, pause and cancel with it. So were thousands
    of metrics, every second while their operation ran."""
    op_id = await _stored(
        tui_settings,
        result={f"file{i}.py": [i] for i in range(2000)},
        progress=Progress(done=1, total=1, metrics={f"m{i:04}": i for i in range(2000)}),
    )
    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, op_id)
        body = app.query_one("#detail-body")
        await wait_for(pilot, lambda: "file0.py" in _text(body))
        await pilot.pause()
        height, text = body.size.height, "".join(_text(body).split())
    assert height < 150, height
    assert "·file29.py[29]·…1,970more:outlast--jsonshow" in text, text
    assert "·m002929·…1,970moremetrics:outlast--jsonshow" in text, text


async def test_a_name_and_a_worker_another_client_stored_with_escapes_are_shown_escaped(
    tui_settings: Settings,
) -> None:
    """The detail pane wrote a stored name's and a worker host's escape sequences to the terminal raw: the
    terminal's title was set by a record (names with control characters are refused at submit, but a store
    written by another client, or an older version, may hold one)."""
    from engine import WorkerInfo

    evil = "\x1b]0;PWNED\x07\x1b[2J"
    op_id = await _stored(tui_settings, name="n" + evil, worker=WorkerInfo(host="h" + evil, pid=4242))
    app = make_app(tui_settings)
    async with app.run_test(size=(160, 50)) as pilot:
        await select(pilot, op_id)
        body = app.query_one("#detail-body")
        await wait_for(pilot, lambda: "worker" in _text(body))
        text = "".join(_text(body).split())
    assert "\x1b" not in text and "\x07" not in text, repr(text)
    assert "(n\\x1b]0;PWNED\\x07\\x1b[2J)" in text and "h\\x1b]0;PWNED\\x07\\x1b[2J:4242" in text, text


async def test_an_id_another_client_stored_with_escapes_is_shown_escaped_in_the_table(tui_settings: Settings) -> None:
    """The operations table wrote a stored id raw: its escape sequence reached the terminal, and the row was
    drawn short, the table's border pulled out of line."""
    stored = await _stored(tui_settings)
    op_id = "\x1b]0;PWNED\x07ab"  # written behind the store's back, as another client (an older version) could
    db = sqlite3.connect(tui_settings.state_dir / "outlast.db")
    with db:
        record = json.loads(db.execute("SELECT record FROM operations WHERE id=?", (stored,)).fetchone()[0])
        record.update(id=op_id, handle=None)  # no handle: the id is what names it
        db.execute("UPDATE operations SET id=?, record=? WHERE id=?", (op_id, json.dumps(record), stored))
    db.close()
    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: op_id in table.ids)
        await pilot.pause()
        line = table.render_line(1).text
    assert line.split()[0].startswith("\\x1b]0;PWN") and "\x1b" not in line, repr(line)


async def _stored(settings: Settings, logs: list[Any] = (), **fields: Any) -> str:  # type: ignore[assignment]
    """The id of a completed operation stored with ``fields`` and ``logs`` (as another process wrote them)."""
    from engine import Operation

    now = time.time()
    op = Operation(
        id="06b4000000001",
        type="demo",
        status=Status.COMPLETED,
        created_at=now - 60,
        queued_at=now - 60,
        started_at=now - 50,
        finished_at=now - 10,
        updated_at=now - 10,
        **fields,
    )
    store = open_store(settings.state_dir)
    await store.open()
    try:
        await store.create(op)
        if logs:
            await store.append_logs(op.id, list(logs))
    finally:
        await store.close()
    return op.id


def _text(widget: Any) -> str:
    return "\n".join(strip.text for strip in widget.render_strips(widget.size.width, widget.size.height))
