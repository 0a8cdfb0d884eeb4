"""The detail pane's keys and values (``KeyValues``) draw exactly what rich's padded ``Table.grid`` drew
(its keys as text: ``[bold]x`` is no markup).

The pane builds its lines itself when every value fits on one line beside the keys, and draws a table
otherwise; either way each line's text and styles must be the table's, at any width.
"""

from __future__ import annotations

import io
import random

import pytest
from rich.console import Console, Group
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from tui.widgets.detail import KeyValues

WORDS = [
    "a",
    "step",
    "1234",
    "宽字符",
    "http://x.y/z",
    "x" * 60,
    "[bold]",
    "12:00",
    "'q'",
    "é",
    "end  ",
    " ",
    "\t",
    "…",
]
KEYS = ["status", "id", "message", "· rate_hint", "· [bold]x", "· :smile: 3", "宽键", "checkpoint", "· " + "k" * 30]


def _rows(rnd: random.Random) -> list[tuple[str, Text]]:
    rows = []
    for _ in range(rnd.randint(1, 12)):
        value = Text(
            " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 10))), style=rnd.choice(["", "dim", "bold red"])
        )
        if rnd.random() < 0.5:
            value.append(" tail", style="dim")
        rows.append((rnd.choice(KEYS), value))
    return rows


def _lines(console: Console, renderable: object, width: int, highlight: bool) -> list[list[Segment]]:
    options = console.options.update(width=width, highlight=highlight)
    return [list(Segment.simplify(line)) for line in console.render_lines(Group(renderable, Text("error")), options)]


WIDTHS = (*range(1, 46, 11), *range(56, 140, 22))
"""Every 11 columns up to 45, where the keys' column and the threshold of the padded table fall (the widest key
is 32 cells, and ``KeyValues.SPARE`` 8), then every 22: beyond it each width folds the values the same way."""


@pytest.mark.parametrize("seed", range(4))
def test_key_values_draw_what_the_padded_grid_drew(seed: int) -> None:
    console = Console(width=200, color_system="truecolor", file=io.StringIO())
    rnd = random.Random(seed)
    for _ in range(10):
        rows = _rows(rnd)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        fast = KeyValues()
        for key, value in rows:
            grid.add_row(Text(key), value)  # a key is text as written, never markup
            fast.add(key, value)
        for width in WIDTHS:
            for highlight in (False, True):
                assert _lines(console, fast, width, highlight) == _lines(console, grid, width, highlight), (width, rows)


async def test_the_detail_body_keeps_unchanged_rows_and_draws_what_textual_draws_of_the_whole() -> None:
    """``DetailBody`` draws a row that reads as before from the lines it kept (a running operation's pane is
    drawn again each second, most rows unchanged): every line, at every width, is what Textual draws of the
    whole renderable, rows changed, kept, added and dropped between two draws, an error line below them."""
    from textual.app import App, ComposeResult
    from textual.visual import Visual, visualize

    from tui.widgets.detail import DetailBody

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield DetailBody(id="body")

    rnd = random.Random(7)
    app = One()
    async with app.run_test(size=(120, 40)):
        body = app.query_one(DetailBody)
        for _ in range(12):
            rows = _rows(rnd)
            for width in (12, 30, 57, 110):
                for _ in range(3):  # drawn again with some rows changed: the others come from what was kept
                    grid = KeyValues()
                    for key, value in rows:
                        grid.add(key, value)
                    content = Group(grid, Text("error: it failed", style="bold red"))
                    body.update(content, layout=False)
                    whole = Visual.to_strips(body, visualize(body, content), width, 60, body.visual_style)
                    assert body.render_strips(width, 60) == whole, (width, rows)
                    i = rnd.randrange(len(rows))
                    rows[i] = (rows[i][0], Text(f"{rnd.random():.3f} moved", style=rnd.choice(["", "dim"])))


async def test_nothing_selected_is_laid_out_once_not_at_every_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard shows the selected operation at every frame (5 a second); with none selected (an empty
    store, a filter matching nothing) the pane's "no operation selected" was laid out again each time: a
    layout of the whole screen at 5 Hz while nothing changed (an idle dashboard's CPU went 4x). Shown once
    now, and again when an operation was shown in between."""
    from textual.app import App, ComposeResult

    from tests.fixtures_tui import SEED
    from tui.widgets.detail import DetailBody, DetailPane

    layouts: list[int] = []
    refresh = DetailBody.refresh

    def counted(self: DetailBody, *regions: object, **kw: object) -> object:
        if kw.get("layout"):
            layouts.append(1)
        return refresh(self, *regions, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(DetailBody, "refresh", counted)

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield DetailPane(lambda: 0.0, id="pane")

    app = One()
    async with app.run_test(size=(120, 40)) as pilot:
        pane, body = app.query_one(DetailPane), app.query_one(DetailBody)
        pane.show(None, None)
        await pilot.pause()
        assert "no operation selected" in str(body.render())
        shown = len(layouts)
        for _ in range(10):  # two seconds of frames
            pane.show(None, None)
            await pilot.pause()
        assert len(layouts) == shown, "nothing changed, yet the pane was laid out again"
        pane.show(SEED[0], None)
        await pilot.pause()
        assert "no operation selected" not in str(body.render())
        pane.show(None, None)
        await pilot.pause()
        assert "no operation selected" in str(body.render())
