"""The checkpoint mirror's ``store.json`` under racing writers: the handle count it keeps never goes down,
whatever order the writers of several processes (here threads, each with its own lock file description)
read and write it in."""

from __future__ import annotations

import itertools
import json
import random
import threading
from pathlib import Path

from engine.store.mirror import CheckpointMirror


def test_concurrent_removals_never_take_back_a_higher_handle(tmp_path: Path) -> None:
    """Two processes removing operations at once each read ``store.json``, took the larger of its count and
    theirs, and wrote it: the one that read first and wrote last put back a lower count (a restore after
    Redis was emptied would then give a removed operation's handle to a new one). Each writer here removes
    operations in handle order, as one process finds the counter growing; a reader watches the count."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    writers = 4
    mirrors = [CheckpointMirror(tmp_path, "t") for _ in range(writers)]
    for m in mirrors:
        m.open_sync()
    path = tmp_path / "t" / "store.json"
    gate = threading.Barrier(writers + 1)
    done = threading.Event()
    seen: list[int] = []

    def remove(m: CheckpointMirror, start: int) -> None:
        gate.wait()
        for h in range(start, 400, writers):
            m.write_identity_sync("store-1", "redis://x", h + rng.randrange(2))

    def watch() -> None:
        gate.wait()
        while not done.is_set():
            if path.exists():
                seen.append(json.loads(path.read_bytes())["handles"])

    threads = [threading.Thread(target=remove, args=(m, i)) for i, m in enumerate(mirrors)]
    reader = threading.Thread(target=watch)
    for t in [*threads, reader]:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    final = json.loads(path.read_bytes())["handles"]
    drops = [(a, b) for a, b in itertools.pairwise(seen) if b < a]
    assert not drops, f"seed {seed}: the count went down {len(drops)} times, first {drops[0]}"
    assert final >= 396, f"seed {seed}"
    assert mirrors[0].handles_sync() == final
