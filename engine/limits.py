"""What a request may carry: the priority levels and the bounds on names, params, durations and counts
(CLI and API alike).

Plain constants and an enum, no pydantic: the command line builds its options from them without
loading the models (``outlast --help`` starts in a few tens of milliseconds).
"""

from __future__ import annotations

from enum import StrEnum


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def raised(self) -> Priority:
        return _BY_RANK[max(0, self.rank - 1)]

    def lowered(self) -> Priority:
        return _BY_RANK[min(2, self.rank + 1)]


_RANK = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
_BY_RANK = {v: k for k, v in _RANK.items()}


MAX_NAME_CHARS = 200
MAX_IDEMPOTENCY_KEY_CHARS = 255
"""An idempotency key, at most (printable ASCII, as an HTTP header carries it)."""
MAX_TAGS = 50
MAX_TAG_CHARS = 200
"""Each tag's key and value, at most."""
MAX_STEP_CHARS = 2000
"""A handler's ``ctx.step`` and ``ctx.message``, as stored: the rest is cut, saying how long it was (a 1 MB
step was written again at every progress report, and read again by every reader of the record)."""
MAX_PARAMS_BYTES = 64 * 1024
"""Params as JSON text, at most."""
MAX_JSON_DEPTH = 32
"""Lists and objects inside params (or profile values) nest at most this deep."""
MAX_VALUE_DEPTH = 200
"""Lists and dicts in what a handler stores (``ctx.state``, checkpoint context data, a result, a metric) nest at
most this deep: JSON's encoder recurses a frame a level and pydantic's writer stops at 255 (a record, an
answer of the API, is a few levels more). A value deeper is refused naming where (``text.too_deep``)."""
MAX_RESULT_BYTES = 1 << 20
"""A handler's result as JSON, at most: one larger completes its operation without it, said in its status line
and log. A result is part of the record, read by every listing of the store (``ls``, the dashboard, the API):
eight operations with a result of 50 MB each took ``outlast ls`` to 585 MB and ``ls --json`` to 1.7 GB."""
MAX_CHECKPOINT_BYTES = 256 << 20
"""A checkpoint's payload (``ctx.state``, context data, next step) as JSON, at most: one larger is refused at the
handler's safe point (``NotJSON``), naming its size. Past SQLite's largest value (1 GB) or Redis's largest
argument (``proto-max-bulk-len``, 512 MB) the store refused every write of it, which read as a store outage:
the attempt ended interrupted, and so did every resume, with nothing wrong with the store."""
MAX_DELTA_BYTES = 64 << 20
"""The item keys done since the last checkpoint, as JSON, past which a checkpoint is due before its interval
ends: each checkpoint writes them in one value (its delta), which a store holds up to a size (SQLite 1 GB, a
Redis argument 512 MB). Read at each look (a test lowers it)."""
MAX_METRICS_CHARS = 64 * 1024
"""A handler's metrics (``ctx.progress(**metrics)``) as JSON, at most, all together: a metric that would take
them past it is left out, said once. They are part of the record, written again at every progress report and
read by every listing: a 20 MB metric made each write of the record 40 MB (kept twice, with the seed's
``performance_metrics``)."""
MAX_PROFILE_KEYS = 32
MAX_KEY_CHARS = 64
MAX_SECONDS = 366 * 86400.0
"""Any duration (timeout, profile value): at most a year. More is a typo, or an attempt to disable it."""
MAX_ITEMS = 10**12
MAX_COUNT = 2**63 - 1
"""The largest count a store keeps (SQLite's largest integer)."""

MAX_CONCURRENT = 1000
"""Operations one engine runs at once at most (``max_concurrent``, in the settings and ``Engine``)."""
