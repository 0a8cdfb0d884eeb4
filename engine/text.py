"""Strings that can be stored: file names whose bytes are not UTF-8, made text.

Python gives a file name whose bytes are not UTF-8 lone surrogates (``os.fsdecode``, ``os.listdir``:
``b"caf\\xe9.py"`` is ``"caf\\udce9.py"``). Such a string has no UTF-8 form: written into a record it
failed the write, and escaped by ``json.dumps`` it was stored and then refused by every reader, so one
file name in a progress step made the whole listing unreadable. So:

- text people read (steps, messages, log lines, errors, results, item failures) is stored with each
  such byte written as ``\\xNN`` (``clean``, ``clean_json``): ``caf\\xe9.py``;
- a file's name that a database keys by (the operations' indexes and results) is ``stored_name``: the same,
  but with each backslash doubled, so no two names become one key;
- data that must come back exactly (item keys, checkpoint state) is stored as JSON with ASCII escapes,
  which Python's ``json`` reads back unchanged (``json_bytes``);
- what a user submits (params, a name, tags) is refused with the place named (``models.check_json``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .limits import MAX_VALUE_DEPTH

if TYPE_CHECKING:  # not imported: the quick paths (``outlast ls``) show text without pydantic
    from pydantic import BaseModel


def clean(s: str) -> str:
    """``s``, with each lone surrogate written out: a file name's undecodable byte as ``\\xNN``."""
    if s.isascii():
        return s
    try:
        s.encode()
    except UnicodeEncodeError:
        return "".join(_written(c) if "\ud800" <= c <= "\udfff" else c for c in s)
    return s


def quoted(s: str, limit: int = 40) -> str:
    """``s`` quoted for a one-line message, as ``repr`` quotes it (control characters escaped), clipped to its
    first ``limit`` characters and "…"; with a byte that is not UTF-8 in it, as bytes (``'\\xff'``, where repr
    wrote ``'\\udcff'``, which no one typed). An id or a type a user typed is quoted so: 5,000 characters
    pasted made a message of 5,000."""
    cut = s if len(s) <= limit else s[:limit] + "…"
    if clean(cut) is cut:
        return repr(cut)
    try:
        return repr(cut.encode("utf-8", "surrogateescape"))[1:].replace("\\xe2\\x80\\xa6", "…")
    except UnicodeEncodeError:  # a surrogate no byte stands for
        return repr(cut)


def stored_name(s: str) -> str:
    """A file name as a database stores and looks it up: ``s`` itself when it has no backslash and no byte that
    is not UTF-8 (every ordinary name, so existing databases keep their keys); else each backslash as ``\\\\``
    and each such byte as ``\\xNN``.

    Injective, unlike ``clean`` (which is for reading): ``clean`` gives the name with the byte 0xff and the name
    written with the characters ``\\xff`` the same string, one key for two files."""
    if "\\" not in s and clean(s) is s:
        return s
    return "".join("\\\\" if c == "\\" else _written(c) if "\ud800" <= c <= "\udfff" else c for c in s)


def _written(c: str) -> str:
    o = ord(c)
    return f"\\x{o - 0xDC00:02x}" if 0xDC80 <= o <= 0xDCFF else f"\\u{o:04x}"


def clean_json(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, scalars) with every string and key ``clean``."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k) if isinstance(k, str) else k: clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def clean_json_text(text: str) -> str:
    """JSON text (``ensure_ascii=False``) with its strings ``clean``: a lone surrogate stands only inside a
    string literal, where the backslash of its written form is escaped."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return "".join(_written(c).replace("\\", "\\\\") if "\ud800" <= c <= "\udfff" else c for c in text)
    return text


def model_json(model: BaseModel) -> str:
    """``model.model_dump_json()``; with a string that is not text in it (the engine's own messages quote
    paths), that string ``clean`` instead of a failed write."""
    try:
        return model.model_dump_json()
    except ValueError:  # PydanticSerializationError: a string that is not text
        dumped = json.dumps(model.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))
        return clean_json_text(dumped)


def json_bytes(value: Any, **kw: Any) -> bytes:
    """``json.dumps(value, ensure_ascii=False, **kw)`` as UTF-8; a value holding a lone surrogate as
    ASCII-escaped JSON instead, which ``json.loads`` turns back into the very same strings."""
    text = json.dumps(value, ensure_ascii=False, **kw)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, **kw).encode()


class NotJSON(TypeError):
    """A checkpoint holds a value JSON cannot (its message names the value and where it is)."""

    too_deep: bool = False
    """Nested past ``MAX_VALUE_DEPTH``: no string stands for that (the seed's ``save_checkpoint`` writes a
    ``datetime`` as its ``str``, and must not try it for this)."""


def not_json(value: Any, where: str, _seen: frozenset[int] = frozenset()) -> str | None:
    """What in ``value`` ``json.dumps`` cannot write, as ``where.key[2] is a datetime``; None if nothing."""
    if value is None or isinstance(value, str | bool | float):
        return None
    if isinstance(value, int):
        too_long = value.bit_length() * 0.30103 >= sys.get_int_max_str_digits() > 0  # digits, as str() counts
        return f"{where} is an integer too long for JSON" if too_long else None
    if not isinstance(value, dict | list | tuple):
        return f"{where} is {a_kind(value)}"
    if id(value) in _seen:
        return f"{where} refers back to itself"
    seen = _seen | {id(value)}
    pairs = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in pairs:
        here = f"{where}[{k!r}]" if isinstance(value, dict) else f"{where}[{k}]"
        if isinstance(value, dict) and not (k is None or isinstance(k, str | int | float | bool)):
            return f"{where} has a key that is {a_kind(k)} ({k!r})"
        found = not_json(v, here, seen)
        if found:
            return found
    return None


def too_deep(value: Any, where: str, limit: int) -> str | None:
    """How deep ``value`` nests, and down which keys, when it is more than ``limit`` levels of lists and dicts
    (``ctx.state['x']['x']['x']['x']... nests 1,201 lists or dicts deep, past the limit of 200``); None if it is not.

    JSON's encoder and pydantic's writer recurse, one level a frame: past Python's stack a 1,200-level state
    failed as "internal error: RecursionError", and a 300-level result stopped every write of its record.
    Iterative, and each list or dict is measured once (a shared one is not walked again, a cycle not followed)."""
    if not isinstance(value, dict | list | tuple):
        return None
    height: dict[int, int] = {}
    frames: list[tuple[Any, Any, list[int]]] = [(value, _children(value), [0])]
    on_path = {id(value)}
    while frames:
        node, children, best = frames[-1]
        for _, child in children:
            if isinstance(child, dict | list | tuple) and id(child) not in on_path:
                if id(child) in height:
                    best[0] = max(best[0], height[id(child)])
                else:
                    on_path.add(id(child))
                    frames.append((child, _children(child), [0]))
                    break
        else:
            frames.pop()
            on_path.discard(id(node))
            height[id(node)] = best[0] + 1
            if frames:
                frames[-1][2][0] = max(frames[-1][2][0], best[0] + 1)
    depth = height[id(value)]
    if depth <= limit:
        return None
    path, node = where, value
    for _ in range(4):  # the first keys down the deepest branch: enough to find it in the handler's code
        step = next(
            (
                (k, c)
                for k, c in _children(node)
                if isinstance(c, dict | list | tuple) and height.get(id(c)) == height[id(node)] - 1
            ),
            None,
        )
        if step is None:
            break
        parent, (k, node) = node, step
        path += f"[{clean(k) if isinstance(k, str) else k!r}]" if isinstance(parent, dict) else f"[{k}]"
    return (
        f"{path}{'...' if height[id(node)] > 1 else ''} nests {depth:,} lists or dicts deep, past the limit of {limit}"
    )


def _children(value: Any) -> Iterator[tuple[Any, Any]]:
    """``(key, child)`` pairs of a dict, or ``(index, child)`` of a list or tuple."""
    return iter(value.items()) if isinstance(value, dict) else enumerate(value)


def a_kind(value: Any) -> str:
    """``a set``, ``an int``: the kind of ``value`` with its article ("a int" read as a slip)."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


_WRITTEN_AS_TEXT = frozenset({int, float, bool, type(None)})
"""Dict keys JSON writes as strings without a word (``{7: 1}`` is ``{"7": 1}``)."""


def key_not_text(value: Any, where: str) -> str | None:
    """Where in ``value`` a dict has a key that is not a string (``where[3] has the key 7, an int``); None if
    nowhere. JSON writes such a key as its string, so what is read back differs from what was saved: a set of
    done item numbers kept as dict keys came back as strings, and a resumed handler ran those items again."""
    stack: list[tuple[Any, str]] = [(value, where)]
    seen: set[int] = set()
    while stack:
        v, here = stack.pop()
        if id(v) in seen:
            continue  # a cycle (or a shared part, looked at once): JSON's encoder refuses the cycle, naming it
        seen.add(id(v))
        if type(v) is dict:
            kinds = set(map(type, v))
            if not kinds <= {str} and kinds & _WRITTEN_AS_TEXT:  # a tuple key JSON refuses outright: not_json
                k = next(k for k in v if type(k) in _WRITTEN_AS_TEXT)
                return f"{here} has the key {k!r}, {a_kind(k)}"
            stack += [(c, f"{here}[{k!r}]") for k, c in v.items() if type(c) is dict or type(c) is list]
        elif type(v) is list:
            stack += [(c, f"{here}[{i}]") for i, c in enumerate(v) if type(c) is dict or type(c) is list]
    return None


class BrokenValue(ValueError):
    """A value of the handler's (in a result, a metric) whose ``str()`` raised: no text stands for it, and JSON
    has no other form. The handler's mistake, said in one line naming the value's type and where it is: it
    escaped as an "internal error" (exit 70), with tracebacks in the worker's log."""


def _raised(e: BaseException) -> str:
    """``RuntimeError: boom``: what an exception says, even when its own ``str()`` raises too."""
    try:
        said = str(e)
    except Exception:
        said = ""
    said = clean(said.strip())
    if len(said) > 200:
        said = said[:197] + "..."
    return f"{type(e).__name__}: {said}" if said else type(e).__name__


def _path_to(value: Any, target: Any, where: str) -> str:
    """Where ``target`` is inside ``value`` (``result['files'][2]``), ``where`` itself when not found. Called only
    on the way to an error, on a value ``too_deep`` passed."""
    stack: list[tuple[Any, str]] = [(value, where)]
    seen: set[int] = set()
    while stack:
        v, here = stack.pop()
        if v is target:
            return here
        if id(v) in seen or not isinstance(v, dict | list | tuple):
            continue
        seen.add(id(v))
        for k, c in reversed(list(_children(v))):
            stack.append(
                (c, f"{here}[{clean(k) if isinstance(k, str) else k!r}]" if isinstance(v, dict) else f"{here}[{k}]")
            )
    return where


def _as_text(value: Any, where: str) -> Callable[[Any], Any]:
    """``json.dumps``' ``default`` for ``storable``: a value as its ``str``; ``BrokenValue`` when that raises. A
    pydantic model or a dataclass is its fields: a plugin returning its own result model (its params are one)
    had ``"files=3 words=9"`` stored, a string of its ``str``."""

    import dataclasses  # here: only for a value JSON has no form for

    def default(v: Any) -> Any:
        kind = type(v)
        try:
            if hasattr(kind, "model_fields") and hasattr(kind, "model_dump"):
                return v.model_dump(mode="json")
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                return dataclasses.asdict(v)
        except Exception:  # a model that cannot dump itself: its str, as before
            pass
        try:
            return str(v)
        except Exception as e:
            try:
                at = _path_to(value, v, where)
            except Exception:  # a key whose repr() raises on the way
                at = where
            raise BrokenValue(f"{at} is {a_kind(v)} whose str() raised {_raised(e)}") from None

    return default


def storable(value: Any, where: str) -> tuple[Any, str | None]:
    """``value`` as JSON can hold it, and None; or None and why it cannot be (``not_json``'s words).

    The value returned is a copy (JSON's reading of it: a key that is a number is its string, as stored).
    A value JSON has no form for but a string (a ``datetime``, a ``Path``: what the seed's results
    carry) is written as its ``str``, and NaN or an infinity as null (as pydantic writes records, and
    what strict JSON readers take); one that has none (a cycle, a tuple key, an integer too long to
    write, nesting past ``MAX_VALUE_DEPTH``) cannot be stored at all. ``BrokenValue``: a value in it whose
    ``str()`` raises (the caller decides: a metric is left out, a result fails its operation)."""
    deep = too_deep(value, where, MAX_VALUE_DEPTH)
    if deep is not None:  # before the encoder: past the stack it raised RecursionError, and pydantic fails at 255
        return None, deep
    try:
        # A copy, taken now: a handler's task still running after it returned changed the result it gave
        # (a cycle added), and the final status, written later, could not be (the operation run again).
        return json.loads(json.dumps(value, allow_nan=False)), None
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return json.loads(json.dumps(value, default=_as_text(value, where)), parse_constant=lambda _: None), None
    except BrokenValue:
        raise
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        why = not_json(value, where)
    except RecursionError:
        why = None
    except Exception as e:  # not_json names a key by its repr(), which raised
        why = f"{where} has a key whose repr() raised {_raised(e)}"
    return None, why or f"{where} is nested too deep for JSON"


def bad_text(value: Any, where: str) -> str | None:
    """Where in ``value`` a string (or key) is not text (a lone surrogate), as ``where.key[2]``; None if
    nowhere."""
    if isinstance(value, str):
        return where if clean(value) is not value else None
    if isinstance(value, dict):
        for k, v in value.items():
            here = f"{where}.{clean(k) if isinstance(k, str) else k}"
            if isinstance(k, str) and clean(k) is not k:
                return here
            found = bad_text(v, here)
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = bad_text(v, f"{where}[{i}]")
            if found:
                return found
    return None
