"""Shortest unique prefixes of operation ids: checked against a brute force on generated id sets."""

from __future__ import annotations

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.ids import unique_prefix_lengths
from engine.models import new_id

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def brute(ids: set[str], minimum: int) -> dict[str, int]:
    out = {}
    for i in ids:
        n = min(len(i), minimum)
        while n < len(i) and any(o != i and o.startswith(i[:n]) for o in ids):
            n += 1
        out[i] = n
    return out


@settings(max_examples=300 if os.environ.get("OUTLAST_SOAK") else 60, deadline=None)
@given(st.sets(st.text(alphabet="01ab", min_size=1, max_size=8), max_size=30), st.integers(1, 5))
def test_matches_brute_force(ids: set[str], minimum: int) -> None:
    assert unique_prefix_lengths(ids, minimum) == brute(ids, minimum)


def test_real_ids_created_moments_apart_get_short_distinct_prefixes() -> None:
    rng = random.Random(7)
    ids = {new_id() for _ in range(200)} | {"".join(rng.choice(ALPHABET) for _ in range(13)) for _ in range(50)}
    lengths = unique_prefix_lengths(ids)
    prefixes = [i[: lengths[i]] for i in ids]
    assert len(set(prefixes)) == len(ids)
    for p in prefixes:  # each one names exactly one id
        assert sum(i.startswith(p) for i in ids) == 1
