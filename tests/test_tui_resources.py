"""The resources pane and the help screen, each in a tiny app of its own, driven by the pilot."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from textual.app import App, ComposeResult
from textual.widgets import Label

from engine import Priority
from engine.resources import ResourceMonitor, ResourceSample
from tui.screens.help import HelpScreen
from tui.widgets.resources import ResourcesPane, sparkline

DEPTH = {Priority.HIGH: 2, Priority.NORMAL: 5, Priority.LOW: 0}


class PaneApp(App[None]):
    def compose(self) -> ComposeResult:
        yield ResourcesPane(id="resources")


def text_of(pane: ResourcesPane) -> str:
    return pane.render().plain


def test_sparkline_keeps_spikes_and_the_newest_value_at_the_end() -> None:
    assert sparkline([0, 50, 100], 4) == " ▁▅█"
    assert sparkline([0.0] * 50 + [100.0] + [0.0] * 49, 10).count("█") == 1  # a 1 s spike survives bucketing
    assert len(sparkline([float(i % 100) for i in range(300)], 37)) == 37
    assert sparkline([], 10) == "" and sparkline([50.0], 0) == ""


async def test_pane_shows_real_samples_of_this_process_and_its_children() -> None:
    """A real sample from psutil with a real child process, as the dashboard takes it."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        monitor = ResourceMonitor()
        op_id, no_process = "0abcdefghjkmn", "0abcdefghjkmp"
        for _ in range(3):
            sample = monitor.sample({op_id: [child.pid], no_process: []})
        app = PaneApp()
        async with app.run_test(size=(70, 16)) as pilot:
            pane = app.query_one(ResourcesPane)
            assert text_of(pane) == "sampling…"
            pane.update_data(sample, list(monitor.history), 1, 4, DEPTH, True)
            await pilot.pause()
            text = text_of(pane)
            # Ids started in the same second share 8 characters: the dashboard names them by handle.
            pane.labels = {op_id: "#12 nightly backup"}
            pane.refresh()
            await pilot.pause()
            labelled = text_of(pane)
    finally:
        child.kill()
        child.wait()
    rss_m = sample.process_rss / 2**20
    assert f"{sample.cpu_percent:3.0f}%" in text and f"{rss_m:.0f}M" in text
    assert "Slots   1/4" in text and "Queued  high 2 · normal 5\n" in text  # no "low 0": none held
    assert op_id in text and "DISCONNECTED" not in text
    assert "#12 nightly backup" in labelled and op_id not in labelled
    assert sample.children[op_id][1] > 0  # the child's RSS was measured
    assert no_process not in sample.children  # an operation that started no process is not listed


def one_sample(cpu_percent: float) -> ResourceSample:
    """A sample of a machine half its memory used, this process at 5% and 80 MB, no children."""
    return ResourceSample(
        ts=1.0,
        cpu_percent=cpu_percent,
        memory_percent=50.0,
        memory_used=2**33,
        memory_total=2**34,
        process_cpu_percent=5.0,
        process_rss=80 * 2**20,
    )


async def test_store_disconnected_is_plain_and_clears_when_back() -> None:
    sample = one_sample(cpu_percent=95.0)
    app = PaneApp()
    async with app.run_test(size=(70, 16)) as pilot:
        pane = app.query_one(ResourcesPane)
        pane.update_data(sample, [sample], 0, 4, {p: 0 for p in Priority}, False)
        await pilot.pause()
        assert "STORE DISCONNECTED" in text_of(pane) and pane.has_class("-disconnected")
        assert pane.border_subtitle == "store disconnected"
        assert "nothing waiting" in text_of(pane)
        pane.update_data(sample, [sample], 0, 4, {p: 0 for p in Priority}, True)
        await pilot.pause()
        assert "DISCONNECTED" not in text_of(pane) and not pane.has_class("-disconnected")


class HelpApp(App[None]):
    def compose(self) -> ComposeResult:
        yield Label("main")


async def test_help_lists_every_key_and_closes_with_escape_or_question_mark() -> None:
    keys = [("n", "Launch an operation"), ("c", "Cancel"), ("?", "Help")]
    app = HelpApp()
    async with app.run_test(size=(80, 24)) as pilot:
        for close in ("escape", "question_mark"):
            closed: list[Any] = []
            app.push_screen(HelpScreen(keys), closed.append)
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            assert isinstance(app.screen, HelpScreen)
            rendered = "".join(seg.text for seg in app.console.render(app.screen.key_table()))
            assert all(k in rendered and d in rendered for k, d in keys)
            await pilot.press(close)
            await pilot.pause()
            assert closed == [None] and not isinstance(app.screen, HelpScreen)


async def test_the_pane_keeps_unchanged_lines_and_draws_what_textual_draws_of_the_whole() -> None:
    """Drawn again each second, the pane lays out only the lines that read otherwise (a sparkline, a figure):
    every line, at every size, is what Textual draws of the pane's whole text, as samples come."""
    from textual.visual import Visual, visualize

    app = PaneApp()
    async with app.run_test(size=(90, 30)):
        pane = app.query_one(ResourcesPane)
        history: list[ResourceSample] = []
        for i in range(40):
            sample = ResourceSample(
                ts=float(i),
                cpu_percent=float(i * 37 % 100),
                memory_percent=50.0 + i % 3,
                memory_used=2**33 + i * 2**20,
                memory_total=2**34,
                process_cpu_percent=float(i % 7),
                process_rss=80 * 2**20,
                children={"0abcdefghjkmn": (float(i % 5) * 30, 2**25)} if i % 4 else {},
            )
            history.append(sample)
            pane.update_data(sample, list(history), i % 5, 4, DEPTH, i % 9 != 0, refresh=False)
            for width, height in ((70, 16), (40, 6), (88, 28)):
                whole = Visual.to_strips(pane, visualize(pane, pane.render()), width, height, pane.visual_style)
                assert pane.render_strips(width, height) == whole, (i, width)


async def test_the_queue_names_only_the_priorities_that_hold_work() -> None:
    """Two normal operations queued read "high 0 · normal 2 · low 0", as if something were high; the status
    line above counts only the statuses held, and so does this line."""
    sample = one_sample(cpu_percent=5.0)
    app = PaneApp()
    async with app.run_test(size=(70, 16)) as pilot:
        pane = app.query_one(ResourcesPane)
        pane.update_data(sample, [sample], 3, 3, {Priority.HIGH: 0, Priority.NORMAL: 2, Priority.LOW: 0}, True)
        await pilot.pause()
        queued = next(line for line in text_of(pane).splitlines() if line.startswith("Queued"))
        assert queued == "Queued  normal 2", queued
        pane.update_data(sample, [sample], 3, 3, {Priority.HIGH: 1, Priority.NORMAL: 0, Priority.LOW: 4}, True)
        await pilot.pause()
        queued = next(line for line in text_of(pane).splitlines() if line.startswith("Queued"))
        assert queued == "Queued  high 1 · low 4", queued
