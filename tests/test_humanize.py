"""Human formats: one rule per quantity, shared by every face (the CLI showed 0.4 a second as
"24.0/min", the dashboard as "0.4/s")."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import engine.cli.format as cli_format
import tui.format as tui_format
from engine import humanize


@pytest.mark.parametrize(
    ("per_second", "shown"),
    [
        (0.4, "24/min"),
        (0.05, "3.0/min"),
        (0.01, "36/h"),
        (0.0001, "0.4/h"),
        (1.0, "1.0/s"),
        (2.5, "2.5/s"),
        (12.0, "12/s"),
        (999.6, "1.0k/s"),
        (12_345.0, "12k/s"),
        (0.0, "-"),
        (None, "-"),
        (math.nan, "-"),
        (math.inf, "-"),
        (-1.0, "-"),
    ],
)
def test_rate_reads_in_the_largest_unit_that_shows_at_least_one(per_second: float | None, shown: str) -> None:
    assert humanize.rate(per_second) == shown


def test_rate_fits_the_dashboard_column_at_every_magnitude() -> None:
    for exponent in range(-60, 80):
        r = 10 ** (exponent / 10)
        assert len(humanize.rate(r)) <= 7, (r, humanize.rate(r))


@pytest.mark.parametrize("name", ["rate", "duration", "count", "size", "clock", "local_time", "printable"])
def test_both_faces_format_with_the_same_function(name: str) -> None:
    shared = getattr(humanize, name)
    assert getattr(cli_format, name) is shared
    assert getattr(tui_format, name) is shared


def test_duration_count_size() -> None:
    assert [humanize.duration(s) for s in (None, 42, 185, 7380, 277200)] == ["-", "42s", "3m05s", "2h03m", "3d05h"]
    assert [humanize.count(n) for n in (None, 999, 1234, 12_345, 3_400_000)] == ["?", "999", "1.2k", "12k", "3.4M"]
    big = (123_456_789, 2_500_000_000, 10**12)
    assert [humanize.count(n) for n in big] == ["123M", "2.5G", "1.0T"]  # three figures: "123.5M/987." was cut
    assert [humanize.size(n) for n in (None, 512, 12_595, 4_718_592)] == ["-", "512B", "12.3K", "4.5M"]


_WIDE_AND_MARKS = st.text(
    st.sampled_from(["a", "Z", "7", "名", "前", "한", "ｶ", "\u0301", "\u0308", "é", " "]), max_size=12
)


@given(st.lists(st.tuples(_WIDE_AND_MARKS, _WIDE_AND_MARKS), min_size=1, max_size=6))
def test_table_columns_line_up_in_terminal_columns_whatever_the_script(rows: list[tuple[str, str]]) -> None:
    """Padded by ``len``, a name in Chinese pushed the columns after it out of line (``outlast ls``): the
    column after each cell starts at the same terminal column on every line (counted by rich, not by the
    function under test)."""
    from rich.cells import cell_len

    lines = cli_format.table(["NAME", "NOTE", "END"], [[a, b, "|"] for a, b in rows]).splitlines()
    starts = {cell_len(line[: line.rindex("|")]) for line in lines[1:]}
    assert len(starts) == 1, lines


def test_invisible_format_characters_are_shown_escaped_and_the_joiners_text_needs_are_kept() -> None:
    """A zero-width space, a BOM, a word joiner or a bidirectional mark reached the terminal raw: ``deploy``
    and ``de\\u200bploy`` read alike in ``ls``, an RLM moved the neutral characters around it, and a terminal
    that draws U+FEFF or U+200B in a column of its own pushed the dashboard's borders out of line."""
    for c in "\u200b\u200e\u200f\u061c\u2060\u2063\ufeff\u206a\ufff9\u180e":
        assert humanize.printable(f"de{c}ploy") == f"de\\u{ord(c):04x}ploy"
        assert humanize.UNSAFE_IN_OUTPUT.sub(humanize.escape_char, f"a{c}b\n") == f"a\\u{ord(c):04x}b\n"
    kept = "\U0001f469\u200d\U0001f4bb \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 caf\u00e9 \u00ad"
    assert humanize.printable(kept) == kept  # an emoji sequence (ZWJ), Persian (ZWNJ), a soft hyphen


@given(st.text(alphabet=st.characters(blacklist_categories=()), max_size=40), st.booleans())
def test_printable_escapes_each_unsafe_character_as_its_own_escape(text: str, keep_newlines: bool) -> None:
    """Runs of unsafe characters are escaped at once (``str.translate``): each as ``escape_char`` writes it."""
    from engine.text import clean

    def one_by_one(line: str) -> str:
        return humanize.UNSAFE.sub(humanize.escape_char, line)

    s = clean(text)
    expected = "\n".join(map(one_by_one, s.split("\n"))) if keep_newlines else one_by_one(s)
    assert humanize.printable(text, keep_newlines) == expected


def test_a_line_of_binary_output_is_escaped_without_a_python_call_per_character() -> None:
    """``outlast run`` and ``outlast logs`` escaped a megabyte line of NULs a character at a time, a Python call
    each (a second a line: the 64 MB log of ``head -c 200M /dev/zero`` took 7 s to print, and ``outlast run``
    held the command's output meanwhile). Counted in calls, not timed."""
    import sys

    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event == "call"

    line = "\0" * 40_000 + "text" + "\x1b\x01\x7f" * 20_000
    sys.setprofile(count)
    try:
        shown = humanize.printable(line)
    finally:
        sys.setprofile(None)
    assert shown == "\\x00" * 40_000 + "text" + "\\x1b\\x01\\x7f" * 20_000
    assert calls < 1_000, calls
