"""``python -m engine.cli``: the same as the ``outlast`` script (detached runs start this way)."""

from . import main

main()
