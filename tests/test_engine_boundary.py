"""The engine is UI-free: importing it (and the store, and every built-in operation) pulls in no textual,
rich or tui. Checked in a fresh interpreter so other tests' imports cannot hide a leak."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

CHECK = """
import sys
import engine, engine.store, engine.registry
[getattr(engine, name) for name in engine.__all__]  # the public names load on first use: load them all
engine.registry.ensure_loaded()
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'tui'))
print(' '.join(bad))
"""


def test_engine_imports_no_ui() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"engine pulls in UI modules: {out.stdout.strip()}"
