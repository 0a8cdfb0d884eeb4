"""The stores' public surface: both implement the Store protocol, none shadows the builtin ``list``,
both seal a checkpoint the same way, and no script or test reaches into a store's private names."""

from __future__ import annotations

import re
import time
from pathlib import Path

from engine.models import Checkpoint
from engine.store import LocalStore, RedisStore, Store
from engine.store.base import ROOT, ItemDelta, checksum, encode_payload, link, seal

ROOT_DIR = Path(__file__).resolve().parent.parent
PRIVATE = re.compile(r"from engine\.store[\w.]* import [^\n]*\b_[A-Za-z]|\bstore\._[A-Za-z]")


def test_both_stores_implement_the_protocol_and_none_shadows_list(tmp_path: Path) -> None:
    stores = [LocalStore(tmp_path), RedisStore("redis://127.0.0.1:1/0")]  # not opened: nothing connects
    for store in stores:
        assert isinstance(store, Store)
        assert not hasattr(store, "list"), type(store).__name__
    assert not hasattr(Store, "list")


def test_a_sealed_checkpoint_covers_its_payload_and_the_delta_linked_to_the_one_before() -> None:
    cp = Checkpoint(operation_id="op", seq=2, epoch=1, created_at=time.time(), state={"n": 2})
    before = ItemDelta(done=["a"]).encode(ROOT)
    sealed = seal(cp, ItemDelta(done=["b"]), before)
    assert sealed.delta == ItemDelta(done=["b"]).encode(link(before))
    assert sealed.payload == encode_payload(cp)
    assert sealed.checkpoint.checksum == checksum(sealed.payload, sealed.delta)
    assert sealed.checkpoint.size == len(sealed.payload) + len(sealed.delta)
    assert '"state"' not in sealed.info and sealed.checkpoint.checksum in sealed.info
    # Delta 1 starts the chain; a missing delta before breaks it (never resumable through it).
    assert seal(cp.model_copy(update={"seq": 1}), ItemDelta(), None).delta.startswith(b'{"p":""')
    assert seal(cp, ItemDelta(), None).delta.startswith(b'{"p":"missing"')


def test_scripts_and_tests_use_no_private_store_names() -> None:
    found = [
        f"{path.relative_to(ROOT_DIR)}: {m.group(0)}"
        for folder in ("scripts", "tests")
        for path in sorted((ROOT_DIR / folder).rglob("*.py"))
        if path.name != Path(__file__).name
        for m in PRIVATE.finditer(path.read_text(encoding="utf-8"))
    ]
    assert found == []
