"""What an adversarial outside hour at the dashboard in a real terminal (tmux) found, each driven through
Textual's pilot (or the model, where no screen is needed).

A live log scrolled back was pulled to its end at every line written, and a flooding one held the keys for
seconds; under 59 columns each row ran past the table's edge (its last letter in the terminal's last
column); a total reported once running left "timeout 10m00s = ... 0 items" and its time left stale for 10 s;
pane keys typed in one burst at 80 columns switched the panes for ever at 90% of a core; a click selected
the row below the one clicked; r r said "another command made it so meanwhile"; a count past its estimate
was shown as "6/3"; on a read-only state dir n opened a form whose content was lost; counts of 100M and up
lost their total; a negative count another client stored pushed its row out of its columns; the progress
sort did not follow the progress.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from rich.cells import cell_len
from textual.app import App, ComposeResult

from engine import Engine, LogRecord, Progress, Settings, Status, open_store
from tui.model import OperationsModel
from tui.widgets.logs import LogsPane
from tui.widgets.operations import OperationsTable

from .fixtures_engine import until
from .fixtures_tui import make_app, select, wait_for


class LogsApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LogsPane(id="logs")


def _records(first: int, n: int) -> list[LogRecord]:
    return [LogRecord(ts=time.time(), level="info", message=f"line {i}") for i in range(first, first + n)]


def _notifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every notification an app shows from now on, as text (shown as well)."""
    from textual.app import App

    notified: list[str] = []
    textual_notify = App.notify

    def notify(self: App[object], message: str, **kw: object) -> None:
        notified.append(str(message))
        textual_notify(self, message, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(App, "notify", notify)
    return notified


async def test_a_live_log_scrolled_back_stays_where_it_was_scrolled_and_follows_again_at_its_end() -> None:
    """The pane follows a running operation's log. Scrolled back (home, page up, the wheel) to read what came
    before, it was pulled back to the end by the next poll's lines, once a second: a chatty log could not
    be read back at all. It follows only while it is at its end, as ``tail -f`` in a pager does."""
    app = LogsApp()
    async with app.run_test(size=(60, 12)) as pilot:
        pane = app.query_one(LogsPane)
        pane.add(_records(0, 100))
        await pilot.pause()
        assert pane.scroll_y == pane.max_scroll_y > 0  # following
        pane.focus()
        await pilot.press("home")
        pane.add(_records(100, 5))
        await pilot.pause()
        await pilot.pause()
        assert pane.scroll_y == 0, (pane.scroll_y, pane.max_scroll_y)
        await pilot.press("pageup", "end")
        pane.add(_records(105, 5))
        await pilot.pause()
        await pilot.pause()
        assert pane.scroll_y == pane.max_scroll_y
        assert "line 109" in pane.lines[-1].text


@pytest.mark.parametrize("width", [40, 50, 58])
async def test_below_the_width_every_column_needs_no_row_runs_past_the_tables_edge(
    seeded: Settings, width: int
) -> None:
    """Under 59 columns the columns no terminal can go without (id, name, status, progress, priority) are
    wider than the table. Each row's line was handed to Textual as ``width`` cells long but held all of them:
    the cells past the edge were written out too, and a terminal that does not wrap (Textual turns wrapping
    off) put each in its last column, so every row ended in the "l" of "normal" or the "w" of "low"."""
    app = make_app(seeded)
    async with app.run_test(size=(width, 12)) as pilot:
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: len(table.ids) == 9)
        await pilot.pause()
        inner = table.scrollable_content_region.width
        for y in range(min(table.size.height, len(table.ids) + 1)):
            strip = table.render_line(y)
            cells = sum(cell_len(segment.text) for segment in strip)
            assert cells == inner, (y, cells, inner, strip.text)


async def test_a_total_learnt_once_running_moves_the_time_left_shown_within_a_poll(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running operation's timeout is computed again once its handler reports its total (1h for no items,
    6h for 3,000). The dashboard reads the records of the work its own engine runs every 10 s only (their
    progress is read live), so for up to 10 s each start said "LEFT 9m58s", "timeout 10m00s = ... 0 items"
    beside an ETA of 26m, where ``outlast show`` said 59m58s left. A poll reads again the record of each
    operation whose live total is not the one its held record has; and a read of the live record gives the
    timeout of the total it gives (the engine computed it at its next tick: a read in between, as at a
    dashboard's start, had the new total beside the old timeout, and was not read again for 10 s)."""
    from engine import supervision

    monkeypatch.setattr(supervision, "TICK", 1.0)  # a second between a total and its timeout, not a tenth
    async with Engine(store=open_store(settings.state_dir), settings=settings) as engine:
        model = OperationsModel(engine)
        op = await engine.submit({"type": "ledger", "params": {"items": 3000, "seconds": 0.5, "total_after": 0.5}})
        await until(lambda: op.id in engine.running_ids)
        await model.poll()  # read as it started: no total yet
        held = model.ops[op.id]
        assert held.status is Status.RUNNING and held.total_items is None, held
        assert "0 items" in (held.timeout_basis or ""), held.timeout_basis
        await until(lambda: (engine.live(op.id) or Progress()).total == 3000, every=0.01)
        await model.poll()  # at once: before the engine's next tick
        shown = model.ops[op.id]
        assert (shown.total_items, shown.effective_timeout) == (3000, 21600.0), shown
        assert "x 3000 items" in (shown.timeout_basis or ""), shown.timeout_basis
        stored = await engine.get(op.id)
        assert shown.deadline is not None and stored.deadline is not None
        assert abs(shown.deadline - stored.deadline) < 1
        await engine.cancel(op.id)


async def test_pane_keys_typed_in_one_burst_at_80_columns_leave_the_last_pane_shown_and_the_app_idle(
    seeded: Settings,
) -> None:
    """At 80x24 the panes share one area under tabs, and 1-4 switch them. "2341" in one read of the terminal (a
    paste, tmux send-keys, a slow SSH link) set the tabs four times before the first TabActivated came back;
    each, handled, set the tabs back to its own pane, which sent another: the four chased one another for as
    long as the dashboard ran, the pane shown flickering through all four and the process at 90% of a core."""
    from textual import events

    app = make_app(seeded)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: len(app.query_one(OperationsTable).ids) == 9)
        screen = app.screen_stack[0]
        shown: list[str] = []
        show_tab = screen.show_tab

        def counted(name: str, focus: bool = False) -> None:
            shown.append(name)
            show_tab(name, focus)

        screen.show_tab = counted  # type: ignore[method-assign]
        for key in "2341":  # at once, as one read of the terminal brings them
            app.post_message(events.Key(key, key))
        await pilot.pause(0.5)
        settled = len(shown)
        await pilot.pause(0.5)
        assert len(shown) == settled, shown[-8:]
        assert screen.tab == "detail" and app.query_one("#pane-tabs").active == "tab-detail"


@pytest.mark.parametrize("size", [(120, 40), (100, 40)])
async def test_a_click_selects_the_row_clicked_and_below_the_last_row_nothing(
    seeded: Settings, size: tuple[int, int]
) -> None:
    """From 120x32 up the table has a border, and a click was counted from it: a click on a row selected the row
    below it (on the last, the last), so the next c or p acted on an operation nobody clicked on. A click on the
    empty lines below the last row selected that last row."""
    app = make_app(seeded)
    async with app.run_test(size=size) as pilot:
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: len(table.ids) == 9)
        top = table.content_region.y - table.region.y + 1  # the first row's line, from the widget's top

        async def click(line: int) -> None:
            assert await pilot.click(OperationsTable, offset=(20, top + line))
            await pilot.pause()

        for row in (3, 0, 8):
            await click(row)
            assert table.selected_id == table.ids[row], row
        await click(1)
        await click(11)  # three lines below the ninth row
        assert table.selected_id == table.ids[1]


@pytest.mark.parametrize(("first", "key", "said"), [("pause", "r", "queued again"), (None, "p", "paused")])
async def test_a_key_pressed_twice_fast_acts_once_and_says_nothing_of_another_command(
    tui_settings: Settings, monkeypatch: pytest.MonkeyPatch, first: str | None, key: str, said: str
) -> None:
    """r r (or p p) in one burst sent two requests for the same operation; the second, refused because the first
    had done it, said "operation ... is queued already: another command made it so meanwhile", a warning about
    a command nobody ran (or "... is paused: only queued, running operations can be paused"). A request still
    on its way is not sent again: the first says what it did."""
    from textual import events

    notified = _notifications(monkeypatch)
    app = make_app(tui_settings, watch_only=True)  # nothing runs here: it stays as the keys leave it
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        op = await app.engine.submit({"type": "ledger", "params": {"items": 10}})
        if first:
            await app.engine.pause(op.id)
        wanted = Status.PAUSED if first else Status.QUEUED
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: op.id in table.ids and app.ops[op.id].status is wanted)
        table.select(op.id)
        await pilot.pause()
        for _ in range(2):
            app.post_message(events.Key(key, key))
        await wait_for(pilot, lambda: any(m.startswith(said) for m in notified))
        await pilot.pause(0.5)
        assert len(notified) == 1, notified  # not "... is queued already: another command made it so meanwhile"


async def test_a_count_past_its_estimate_is_shown_with_no_total_in_the_row_and_the_detail(
    tui_settings: Settings,
) -> None:
    """An operation given an estimate (``--items 3``, the form's item estimate) whose handler counts past it
    without a total of its own: its progress then has no total, as the README says ("a count past it is shown
    with no total, not as 5/3") and ``outlast ls`` shows it. The row fell back on the estimate, "6/3", and the
    detail said "6 of 3"."""
    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        op = await app.engine.submit({"type": "silent", "total_items": 3, "params": {"items": 10, "hang_after": 6}})
        await wait_for(pilot, lambda: (app.engine.live(op.id) or Progress()).done == 6)
        table = app.query_one(OperationsTable)
        await select(pilot, op.id)
        await pilot.pause(1.6)  # a live repaint
        row = next(table.render_line(y).text for y in range(1, 4) if op.id[:8] in table.render_line(y).text)
        assert " 6/?" in row and "6/3" not in row, row
        detail = app.query_one("#detail-body")
        await wait_for(pilot, lambda: "6 of ?" in _text(detail))
        await app.engine.cancel(op.id)


def _text(widget: Any) -> str:
    return "\n".join(strip.text for strip in widget.render_strips(widget.size.width, widget.size.height))


async def test_on_a_read_only_state_dir_a_key_that_would_write_says_so_before_asking_anything(
    tui_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status line says "state dir is read-only ...: nothing can be run or changed", yet n opened the launch
    form, and what was typed in it was lost when the submit was refused once the form had closed; d and c asked
    "Remove ...?" and "Cancel ...?" for a change that could not be made; and each refusal, a store error, had the
    resources pane say STORE DISCONNECTED of a store that answers every read. Each says why at once now, in
    one line, opens nothing and leaves the store's state as shown."""

    from tui.screens.confirm import ConfirmScreen
    from tui.screens.launch import LaunchScreen

    notified = _notifications(monkeypatch)
    async with Engine(store=open_store(tui_settings.state_dir), settings=tui_settings, run_queue=False) as engine:
        op = await engine.submit({"type": "ledger", "params": {"items": 10}})
        await engine.pause(op.id)
    state = tui_settings.state_dir
    state.chmod(0o555)
    try:
        app = make_app(tui_settings)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.engine_started)
            await select(pilot, op.id)
            for key in ("n", "d", "c", "r"):
                notified.clear()
                await pilot.press(key)
                await pilot.pause(0.3)
                assert not isinstance(app.screen, LaunchScreen | ConfirmScreen), key
                assert len(notified) == 1 and "read-only" in notified[0] and notified[0].startswith(key), (
                    key,
                    notified,
                )
                assert app.model.store_ok, key
            assert (await app.engine.store.get(op.id)).status is Status.PAUSED
    finally:
        state.chmod(0o700)


async def _stored_progress(settings: Settings, *progress: Progress) -> list[str]:
    """Paused operations stored with these progress values (as another client may write them): their ids."""
    from engine import Operation

    now = time.time()
    store = open_store(settings.state_dir)
    await store.open()
    ids = []
    try:
        for i, p in enumerate(progress):
            op_id = f"06b40000000{i:02d}"
            ids.append(op_id)
            await store.create(
                Operation(
                    id=op_id,
                    type="demo",
                    status=Status.PAUSED,
                    created_at=now - i,
                    queued_at=now - i,
                    updated_at=now - i,
                    progress=p,
                    profile={"failure_threshold": 3},
                )
            )
    finally:
        await store.close()
    return ids


async def _rows(app: Any, pilot: Any, n: int) -> list[str]:
    table = app.query_one(OperationsTable)
    await wait_for(pilot, lambda: len(table.ids) == n)
    await pilot.pause()
    width = table.scrollable_content_region.width
    rows = []
    for y in range(1, n + 1):
        strip = table.render_line(y)
        assert sum(cell_len(s.text) for s in strip) == width, strip.text  # in its columns, to the edge
        rows.append(strip.text)
    return rows


async def test_counts_of_hundreds_of_millions_of_items_are_shown_whole(tui_settings: Settings) -> None:
    """The engine takes up to 10**12 items. From 100M on "done/total" passed the ITEMS column's 11 cells and
    was cut: "123.5M/987." (its total gone), "1000000.0M/" at 10**12. Counts are shown in three figures at
    most, with k, M, G or T."""
    await _stored_progress(
        tui_settings, Progress(done=123_456_789, total=987_654_321), Progress(done=2_500_000_000, total=10**12)
    )
    app = make_app(tui_settings, watch_only=True)
    async with app.run_test(size=(120, 40)) as pilot:
        rows = await _rows(app, pilot, 2)
    assert " 123M/987M " in rows[0] and " 2.5G/1.0T " in rows[1], rows


async def test_a_negative_count_another_client_stored_keeps_its_row_in_its_columns(tui_settings: Settings) -> None:
    """The engine refuses a negative count from a handler, but a record another client (or an older version)
    wrote may hold one: its percent, negative, drew the bar 5 cells too long, every column after it pushed
    right and the row past the table's edge. The bar is drawn for 0% then."""
    await _stored_progress(tui_settings, Progress(done=-5, total=10), Progress(done=5, total=-10))
    app = make_app(tui_settings, watch_only=True)
    async with app.run_test(size=(120, 40)) as pilot:
        rows = await _rows(app, pilot, 2)
    assert all("──────────" in row for row in rows), rows


async def test_a_log_that_floods_is_read_as_its_last_lines_the_pane_holds_not_all_of_them(settings: Settings) -> None:
    """A command printing 50,000 lines a second: each poll of its log read every line since the last (4 MB at a
    time), made a record of each and wrote each to the logs pane, which keeps 2,000: the dashboard took 3 to 13
    s to answer a key while it was selected, and the pane fell behind the log. A poll reads the last lines the
    pane can hold, and goes on from the log's end."""
    held = LogsPane().max_lines  # what the pane holds: 2,000 lines
    async with Engine(store=open_store(settings.state_dir), settings=settings, run_queue=False) as engine:
        op = await engine.submit({"type": "ledger", "params": {"items": 10}})
        model = OperationsModel(engine)
        await model.poll()
        await engine.store.append_logs(op.id, _records(0, 10))
        side = await model.side(op.id, True, None)  # selected: its tail
        assert [r.message for r in side.logs or []][-1] == "line 9"
        await engine.store.append_logs(op.id, _records(10, 20_000))
        side = await model.side(op.id, True, side.log_offset)
        lines = [r.message for r in side.logs or []]
        assert len(lines) == held and lines[-1] == "line 20009", (len(lines), lines[-1:])
        assert (await model.side(op.id, True, side.log_offset)).logs == []  # from the end on
        offsets: dict[str, int] = {}
        await model.all_logs(offsets)
        await engine.store.append_logs(op.id, _records(20_010, 20_000))
        lines = [r.message for r in await model.all_logs(offsets)]
        assert len(lines) == held and lines[-1] == "line 40009", (len(lines), lines[-1:])


async def test_the_progress_sort_keeps_running_work_in_order_as_it_moves(seeded: Settings) -> None:
    """Sorted by progress (s three times, PROGRESS▼), the rows were sorted when the sort was chosen and when a
    row came, went or changed status, never as the work moved: a run that overtook another stayed below it
    ("slow 83%" over "fast2 89%") until one of them ended. Running work is sorted again at the live repaint."""
    from engine import Progress as P

    app = make_app(seeded)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: len(table.ids) == 9 and app.engine_started)
        first, second = "06b4000000008", "06b4000000009"  # the two running ones
        live = {first: P(done=100, total=1000), second: P(done=900, total=1000)}
        app.engine.live = live.get  # type: ignore[method-assign]
        await pilot.press("s", "s", "s")
        assert table.sort == "progress"
        await wait_for(pilot, lambda: table.ids.index(second) < table.ids.index(first))
        live[first] = P(done=950, total=1000)  # the first overtakes the second
        await wait_for(pilot, lambda: table.ids.index(first) < table.ids.index(second), timeout=5)


async def test_a_total_estimated_anew_at_each_item_is_read_again_now_and_then_not_at_every_poll(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler may estimate its total anew at each item: its record is read again for the new total now and
    then (every TOTAL_AGAIN seconds), not at every poll (a read a second for each such operation)."""
    async with Engine(store=open_store(settings.state_dir), settings=settings) as engine:
        model = OperationsModel(engine)
        op = await engine.submit({"type": "ledger", "params": {"items": 3000, "seconds": 0.5}})
        await until(lambda: (engine.live(op.id) or Progress()).total == 3000)
        await model.poll()
        assert model.ops[op.id].total_items == 3000
        totals = iter(range(4000, 5000))
        live = engine.live
        monkeypatch.setattr(engine, "live", lambda i: live(i) and live(i).model_copy(update={"total": next(totals)}))
        reads: list[str] = []
        get = engine.get

        async def counted(op_id: str) -> Any:
            reads.append(op_id)
            return await get(op_id)

        monkeypatch.setattr(engine, "get", counted)
        for _ in range(5):
            await model.poll()
        assert reads == [op.id], reads
        await engine.cancel(op.id)


async def test_a_resume_of_a_record_with_a_damaged_profile_says_so_and_not_that_the_store_is_out(
    tui_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """r on an operation whose stored timeout profile no longer validates (a byte changed on disk): the engine
    refuses, a store error; the dashboard took it for the store failing and its status line said "store
    unreachable" until the next poll, of a store that answered every read. It says the record is damaged, in one
    line, and the store stays shown as working."""
    notified = _notifications(monkeypatch)
    now = time.time()
    store = open_store(tui_settings.state_dir)
    await store.open()
    try:
        from engine import Operation

        op = Operation(
            id="06b4000000099",
            type="demo",
            status=Status.PAUSED,
            created_at=now,
            queued_at=now,
            updated_at=now,
            profile={"stall_timeout": "soon"},
        )
        await store.create(op)
    finally:
        await store.close()
    app = make_app(tui_settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        await select(pilot, op.id)
        notified.clear()
        await pilot.press("r")
        await wait_for(pilot, lambda: any("damaged" in n for n in notified))
        await pilot.pause(0.3)
        assert app.model.store_ok
        assert "unreachable" not in " ".join(app.dashboard.notes), app.dashboard.notes
        assert (await app.engine.store.get(op.id)).status is Status.PAUSED


async def test_a_name_cut_to_its_column_says_it_was_cut(tui_settings: Settings) -> None:
    """At 80 columns the name column is 10 cells: "restore customers db (DRY RUN)" and "... (FOR REAL)" both read
    "restore cu", with nothing saying there was more, the one to cancel told apart by its id alone. A cut name
    ends in "…"; one that fits is shown whole."""
    app = make_app(tui_settings, watch_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        names = ["restore customers db (DRY RUN)", "restore customers db (FOR REAL)", "short"]
        for name in names:
            await app.engine.submit({"type": "ledger", "name": name, "params": {"items": 3}})
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: len(table.ids) == 3)
        await pilot.pause()
        rows = [table.render_line(y).text for y in range(1, 4)]
        assert sum("restore c" in row and "… " in row for row in rows) == 2, rows
        assert [row for row in rows if "short " in row and "…" not in row], rows


async def test_after_a_removal_the_arrows_go_on_from_the_removed_row_not_from_the_top(tui_settings: Settings) -> None:
    """d, y on a row: nothing is selected after (the next c must not act on a neighbour nobody chose). But down then
    went to the first row: in the middle of 10,000 operations, a cleanup by d, y, down, d selected the top one and
    asked to remove it. Down now selects the row that took the removed one's place, and up the one above it."""
    app = make_app(tui_settings, watch_only=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        for i in range(6):
            op = await app.engine.submit({"type": "ledger", "name": f"old {i}", "params": {"items": 3}})
            await app.engine.cancel(op.id)
        table = app.query_one(OperationsTable)
        await wait_for(
            pilot, lambda: len(table.ids) == 6 and all(app.ops[i].status is Status.CANCELLED for i in table.ids)
        )
        rows = list(table.ids)
        await select(pilot, rows[3])
        await pilot.press("d", "y")
        await wait_for(pilot, lambda: rows[3] not in table.ids)
        assert table.selected_id is None
        await pilot.press("down")
        assert table.selected_id == rows[4]
        await pilot.press("d", "y")
        await wait_for(pilot, lambda: rows[4] not in table.ids)
        await pilot.press("up")
        assert table.selected_id == rows[2]


async def test_the_logs_pane_names_the_operation_whose_lines_it_shows(tui_settings: Settings) -> None:
    """The pane keeps the last operation's lines until the cursor has rested and the store has answered (a slow
    store: seconds), under the detail of the one the cursor is on, and its title said only "Logs": one
    operation's errors read as another's. Its title names whose lines they are, as the checkpoints pane's does."""
    app = make_app(tui_settings, watch_only=True)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: app.engine_started)
        ops = []
        for name in ("alpha", "beta"):
            op = await app.engine.submit({"type": "ledger", "name": name, "params": {"items": 3}})
            await app.engine.store.append_logs(op.id, [LogRecord(ts=time.time(), level="info", message=f"{name} says")])
            ops.append(op)
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: len(table.ids) == 2)
        pane = app.query_one(LogsPane)
        for op in ops:
            await select(pilot, op.id)
            await wait_for(pilot, lambda op=op: any(f"{op.name} says" in line.text for line in pane.lines))
            assert str(pane.border_title) == f"Logs of {op.id} {op.name}"
