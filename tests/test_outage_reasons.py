"""The reason a store outage is said with: one line, whole, or cut at a word and said to be cut."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.outage import WHY_CHARS, why
from engine.store.redis.connection import UNKNOWN


def test_a_redis_outcome_unknown_reason_is_said_whole() -> None:
    """It was cut at 200 characters: "... (sent, with no reply: Redis may st"."""
    reason = (
        "redis 127.0.0.1:63799: Error 111 connecting to 127.0.0.1:63799. Connection refused.;"
        f" 06bjpx0387qby -> completed (attempt epoch 12): {UNKNOWN}"
    )
    assert 200 < len(reason) <= WHY_CHARS and why(ConnectionError(reason)) == reason


@given(st.text(min_size=1, max_size=600))
def test_a_reason_is_one_line_whole_or_cut_at_a_word(text: str) -> None:
    said = why(RuntimeError(text))
    line = next((ln for ln in text.splitlines() if ln.strip()), "RuntimeError")
    assert len(said.splitlines()) == 1 and len(said) <= WHY_CHARS
    if len(line) <= WHY_CHARS:
        assert said == line
    else:  # a prefix of it, cut where a word ends (or where the window has no space), and said to be cut
        kept = said.removesuffix("...")
        assert said.endswith("...") and line.startswith(kept)
        assert line[len(kept)] in " ,;:" or " " not in line[: WHY_CHARS - 3]
