"""The stores' public surface: both implement the Store protocol, none shadows the builtin ``list``,
both seal a checkpoint the same way, and no script or test reaches into a store's private names."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import InvalidInput, Settings
from engine.models import Checkpoint
from engine.store import LocalStore, RedisStore, Store, open_store
from engine.store.base import ROOT, ItemDelta, checksum, encode_payload, link, seal
from engine.text import NotJSON, key_not_text

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


def _json_reference(state: Any) -> str | None:
    """What the json module alone makes of a state: its canonical text read back, or None where a
    checkpoint must refuse it (a value json cannot write, or a key it would write as a string)."""
    try:
        if key_not_text(state, "ctx.state") is not None:
            return None
        return json.dumps(json.loads(json.dumps(state, ensure_ascii=False)))
    except (TypeError, ValueError, RecursionError):
        return None


_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**70)
    | st.floats()
    | st.text(max_size=5)
    | st.sampled_from(["\ud800", "\udcff-x", "é", "\x00"])
    | st.decimals(allow_nan=False, places=1)
    | st.datetimes()
    | st.binary(max_size=3)
)
_KEYS = st.text(max_size=4) | st.integers(-3, 3) | st.booleans() | st.none() | st.floats(0, 1)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=4),
        st.recursive(
            _LEAVES,
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.tuples(inner, inner)
                | st.frozensets(st.integers(0, 3), max_size=2)
                | st.dictionaries(_KEYS, inner, max_size=3)
            ),
            max_leaves=12,
        ),
        max_size=4,
    )
)
def test_a_payload_reads_back_as_the_json_module_reads_the_state(state: dict[str, Any]) -> None:
    """The payload is written the quick way (pydantic-core) only when json.loads gives back what was saved;
    otherwise as before: refused with NotJSON where json cannot write it or would turn a key into a string,
    written by json where it can (a tuple as a list, NaN)."""
    cp = Checkpoint.model_construct(
        operation_id="op", seq=1, epoch=1, created_at=0.0, state=state, context_data={}, next_step=None,
        metadata={}, processed_items=0, total_items=None, done_count=0,
    )  # fmt: skip
    want = _json_reference(state)
    if want is None:
        with pytest.raises(NotJSON):
            encode_payload(cp)
    else:
        assert json.dumps(json.loads(encode_payload(cp))["state"]) == want


class _BytesPath:
    def __fspath__(self) -> bytes:
        return b"/tmp/x"


@pytest.mark.parametrize(
    ("target", "says"),
    [
        (123, "store 123: expected a directory path (a str or os.PathLike) or a redis:// URL, not int"),
        (b"/tmp/x", "store b'/tmp/x': expected a directory path (a str or os.PathLike) or a redis:// URL, not bytes"),
        (_BytesPath(), "not bytes"),
        ("", "store '': an empty path; expected a directory path or a redis:// URL"),
        ("a\0b", "store 'a\\x00b': a NUL byte in a path; expected a directory path or a redis:// URL"),
    ],
    ids=["int", "bytes", "pathlike of bytes", "empty", "nul"],
)
def test_open_store_refuses_what_names_no_directory_and_makes_none(
    target: Any, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``open_store(123)`` made ``./123/`` (and ``""`` used the current directory) once opened; ``b"/tmp/x"`` a
    directory named ``b'/tmp/x'``."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInput) as e:
        open_store(target)
    assert says in str(e.value) and "\n" not in str(e.value), e.value
    assert list(tmp_path.iterdir()) == []


def test_open_store_of_none_is_the_configured_state_dir(tmp_path: Path) -> None:
    """None is documented as the default: the settings' state directory."""
    store = open_store(None, settings=Settings(state_dir=tmp_path / "state"))
    assert isinstance(store, LocalStore) and store.state_dir == tmp_path / "state"
