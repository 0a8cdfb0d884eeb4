"""A plugin that makes the background runners a command starts slow to start: imported by ``outlast _run-one``
(what ``run --detach`` starts) or ``outlast worker --exit-when-idle`` (what the dashboard's hand-over starts), it
sleeps OUTLAST_TEST_SLOW_RUNNER seconds (default 2) first. A worker already running on the store, started
without it, then claims their work before they do, every time. OUTLAST_TEST_SLOW_RUNNER=exit: they exit at
once, as one whose plugin fails to load would."""

from __future__ import annotations

import os
import sys
import time

if "_run-one" in sys.argv or "--exit-when-idle" in sys.argv:
    if os.environ.get("OUTLAST_TEST_SLOW_RUNNER") == "exit":
        sys.exit(3)
    time.sleep(float(os.environ.get("OUTLAST_TEST_SLOW_RUNNER", "2")))
