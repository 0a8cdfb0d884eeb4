"""The operations table's progress bars, read as a terminal shows them.

The part of a bar still to go was drawn in the text's own colour (Textual's Rich style of
``$foreground 20%`` drops the 20%) and with the same thick line as the part done, so on a terminal a
paused operation at 0% and one at 40% showed a bar as full as a completed one's; only the percent
beside it told them apart.
"""

from __future__ import annotations

from rich.color import Color as RichColor
from rich.style import Style

from engine import Settings
from tui.widgets.operations import OperationsTable

from .fixtures_tui import make_app, wait_for

CANCELLED_AT_40 = "06b4000000004"
"""The seeded 'demo 4', cancelled with 40 of 100 items done."""


def _rgb(color: RichColor | None) -> tuple[int, int, int]:
    assert color is not None
    triplet = color.get_truecolor()
    return triplet.red, triplet.green, triplet.blue


def _distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> int:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True))


async def test_the_part_of_a_bar_still_to_go_is_drawn_fainter_than_the_text(seeded: Settings) -> None:
    app = make_app(seeded)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: CANCELLED_AT_40 in table.ids and table.cursor != table.ids.index(CANCELLED_AT_40))
        for theme in ("outlast-dark", "outlast-light"):
            app.theme = theme
            await pilot.pause()
            strip = table.render_line(table.ids.index(CANCELLED_AT_40) + 1)
            segments = [(seg.text, seg.style or Style()) for seg in strip]
            text = "".join(t for t, _ in segments)
            assert "demo 4" in text and "40%" in text, text
            name_style = next(style for t, style in segments if "demo 4" in t)
            bar = [(t, style) for t, style in segments if t and set(t) <= set("━╸─")]
            (done_text, done), (to_go_text, to_go) = bar[0], bar[-1]
            # Told apart without colour too: the part done a thick line, the part to go a thin one.
            assert set(done_text) == {"━"} and set(to_go_text) == {"─"}, bar
            assert done.color != to_go.color, (theme, bar)
            background = _rgb(table.rich_style.bgcolor)
            foreground = _rgb(name_style.color or table.rich_style.color)
            to_go_rgb = _rgb(to_go.color)
            # Nearer the background than the text: a bar's empty part reads as empty.
            assert _distance(to_go_rgb, background) < _distance(to_go_rgb, foreground), (theme, to_go_rgb)


async def test_on_a_wide_terminal_the_bar_takes_the_width_the_name_does_not_need(seeded: Settings) -> None:
    """At 320 columns the name column took 200 of them: each name stood that far from the rest of its row,
    behind a bar of 10. Up to 188 columns nothing changes (the name takes what is left, as before)."""
    app = make_app(seeded)
    async with app.run_test(size=(320, 40)) as pilot:
        table = app.query_one(OperationsTable)
        await wait_for(pilot, lambda: CANCELLED_AT_40 in table.ids)
        width = table.scrollable_content_region.width
        widths = {col.key: w for col, w in table.columns(width)}
        assert widths["name"] <= 64 < widths["progress"], widths
        assert {col.key: w for col, w in table.columns(160)}["progress"] == 15
        strip = table.render_line(table.ids.index(CANCELLED_AT_40) + 1)
        text = "".join(seg.text for seg in strip)
        assert strip.cell_length == width, text
        bar = widths["progress"] - 5
        assert text.count("━") + text.count("╸") + text.count("─") == bar, text
        assert abs(text.count("━") - 0.4 * bar) <= 1, text  # 40% of the whole bar
