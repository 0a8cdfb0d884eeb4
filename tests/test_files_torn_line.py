"""``cut_torn_line``: what a kill inside an append leaves is cut, every whole line kept."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.files import cut_torn_line


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=6),
    st.binary(max_size=70_000),
)
def test_every_whole_line_is_kept_and_only_a_torn_last_one_cut(
    tmp_path_factory, lines: list[bytes], tail: bytes
) -> None:
    tail = tail.replace(b"\n", b"")  # up to 70 KB: past the 64 KB read back at a time
    path = tmp_path_factory.mktemp("t") / "m.jsonl"
    whole = b"".join(lines)
    path.write_bytes(whole + tail)
    assert cut_torn_line(path) is bool(tail)
    assert path.read_bytes() == whole


def test_a_missing_file_has_nothing_to_cut(tmp_path: Path) -> None:
    assert cut_torn_line(tmp_path / "none.jsonl") is False
    assert not (tmp_path / "none.jsonl").exists()
