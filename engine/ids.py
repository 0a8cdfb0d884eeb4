"""Ids that are easy to type: the shortest prefix that names each operation among others.

Ids are time-ordered (their first nine characters are a millisecond timestamp), so operations created
minutes apart share their first five or six characters. ``outlast ls`` and the dashboard show each id's
shortest unique prefix (as jj and git do), and every command accepts any unique prefix.
"""

from __future__ import annotations

from collections.abc import Iterable

MIN_PREFIX = 4
"""Never show fewer characters: a prefix that is unique today should stay so for a while."""


def unique_prefix_lengths(ids: Iterable[str], minimum: int = MIN_PREFIX) -> dict[str, int]:
    """For each id, the length of its shortest prefix that no other id in ``ids`` starts with (at
    least ``minimum``, at most the id's length). Sorting puts the ids that share most next to each
    other, so each needs only its two neighbours: O(n log n)."""
    ordered = sorted(set(ids))
    out: dict[str, int] = {}
    for i, current in enumerate(ordered):
        shared = 0
        for j in (i - 1, i + 1):
            if 0 <= j < len(ordered):
                other = ordered[j]
                n = 0
                limit = min(len(current), len(other))
                while n < limit and current[n] == other[n]:
                    n += 1
                shared = max(shared, n)
        out[current] = min(len(current), max(minimum, shared + 1))
    return out
