"""The launch form (``n``): operation type, its params generated from the handler's model, priority.

Each param gets one control chosen by its annotation (text, number, switch, choice, list,
mapping), filled with its default, marked when required, with the field's description as help.
Validation is the engine's own (the handler's pydantic model, then ``OperationSpec``): every
error is shown as one line under the field it names, and nothing is submitted while any remain.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePath
from typing import Any, Literal, Self, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from rich.cells import cell_len
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Input, Label, OptionList, Select, Static, Switch
from textual.widgets._select import SelectOverlay  # the list a Select opens: not exported (textual 8.2)

from engine import HandlerSpec, OperationSpec, Priority, error_message

from ..format import printable
from ..widgets.steady_input import SteadyInput

W = TypeVar("W", bound=Widget)

Kind = Literal["str", "int", "float", "bool", "choice", "list", "words", "dict", "json"]
RESERVED_ROWS = 14
"""Rows of the form outside the params: borders, type and its help, the params' rules, priority
and estimate, name, a message under each of those, and the buttons."""
SHORT_ROWS = 20
"""Terminal rows under which the form is ``-short``: the type's help one line, no blank rows, the params
given what is left (at 12 rows the buttons, the name and the priority were below the screen)."""
SLIM_COLUMNS = 70
"""Terminal columns under which the priority and the item estimate take a row each (``-slim``)."""
SHORT_RESERVED = 7
"""Rows of a short form outside the params (whose max height counts their rules): borders, type, its
help's one line, priority and estimate, name and the buttons (a message shown under a field scrolls)."""
JSON_FIELD = "__json__"
"""The one field of a handler without a params model: all params as a JSON object."""
CLIP = 40
"""Characters of a value a message quotes; the rest is "…"."""
MESSAGE_MAX = 160
"""Characters of a message at most, whatever wrote it: a backstop for a long text with spaces in it (a
pasted paragraph a validator quoted), which clipping each unbroken run does not shorten."""


NAME_MAX = 200
"""Characters of a name the engine takes (``engine.limits.MAX_NAME_CHARS``: the dashboard imports only the
engine's public names, and a test holds the two equal)."""
ITEMS_MAX = 13
"""Digits of an item estimate: the engine takes up to 10**12 (``MAX_ITEMS``)."""
FIELD_MAX = 4096
"""Characters a param's field takes (a path, a command line: PATH_MAX is 4096). Textual's Input does work
in its length at every key, and 10,000 keys arriving at once (no bracketed paste) froze the dashboard
and the engine it runs for 23 s; past the bound a key is dropped at once. The engine takes 64 KiB of
params in all (``MAX_PARAMS_BYTES``): more in one field is for ``outlast submit --params-json``."""
NUMBER_MAX = 64
"""Characters a number's field takes (a float written out in full is under 30)."""


class FieldError(ValueError):
    """A value that cannot even be handed to pydantic (bad JSON, a pair without '=')."""


@dataclass(frozen=True)
class ParamField:
    """One param of a handler's model, and how the form edits it."""

    name: str
    kind: Kind
    required: bool
    nullable: bool
    default: Any
    description: str
    choices: tuple[Any, ...] = ()

    @property
    def hint(self) -> str:
        return {
            "list": "comma-separated or JSON list",
            "words": "split as a shell splits them, or a JSON list",
            "dict": "k=v, k2=v2 or JSON",
            "json": "JSON",
        }.get(self.kind, "")

    def initial_text(self) -> str:
        """The default as the text shown in the control."""
        v = self.default
        if v is None:
            return ""
        if self.kind == "words":
            return shlex.join(v)
        if self.kind == "list":
            items = list(v)
            if all(isinstance(i, str) and "," not in i for i in items):
                return ", ".join(items)
            return json.dumps(items)
        if self.kind == "dict":
            return json.dumps(v) if v else ""
        if self.kind == "json":
            return json.dumps(v)
        return str(v.value if isinstance(v, Enum) else v)

    def raw(self, text: str) -> Any:
        """The value handed to pydantic for ``text``; ``_UNSET`` leaves the field to its default.

        An empty field that may be None is None, as its placeholder ("none") says: left to its default,
        one whose default is not None (integration_testing's marker) launched that default instead. A text
        field's value is taken as typed, spaces at either end included, as ``--param`` takes it (a pattern's
        leading space was dropped here only); one of spaces alone, which the field does not show, is empty."""
        typed, text = text, text.strip()
        if not text:
            return None if self.nullable and not self.required and self.name != JSON_FIELD else _UNSET
        if self.kind == "words":  # the model splits the text as a shell would, as from the command line
            return _json(text) if text.startswith("[") else text
        if self.kind == "list":
            if text.startswith("["):
                return _json(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        if self.kind == "dict":
            if text.startswith("{"):
                return _json(text)
            out: dict[str, str] = {}
            for pair in text.split(","):
                key, sep, value = pair.partition("=")
                if not sep or not key.strip():
                    raise FieldError(f"{quoted(pair.strip())}: expected KEY=VALUE")
                out[key.strip()] = value.strip()
            return out
        if self.kind == "json":
            try:
                return json.loads(text)
            except ValueError:
                return text
        if self.kind in ("int", "float"):
            return _number(text, self.nullable)
        return typed  # str: as typed


_UNSET: Any = object()


def clip(text: str, limit: int = CLIP) -> str:
    """``text`` cut to its first ``limit`` characters, with "…" when it was longer: the one way a message
    shows a value (4,300 pasted digits were quoted whole, sixty rows under their field)."""
    return text if len(text) <= limit else text[:limit] + "…"


def quoted(value: str) -> str:
    """``value`` quoted in a message: clipped, then as Python quotes it (control characters escaped)."""
    return repr(clip(value))


_LONG_RUN = re.compile(rf"\S{{{CLIP + 3},}}")
_RUN_HEAD = "'\"([{"
_RUN_TAIL = "'\":,;.)]}"


def _clip_run(m: re.Match[str]) -> str:
    """One unbroken run of a message clipped as a value, its quotes and punctuation kept around it."""
    run = m.group()
    inner = run.lstrip(_RUN_HEAD)
    body = inner.rstrip(_RUN_TAIL)
    if body.endswith("…") and len(body) <= CLIP + 1:
        return run  # a value the form clipped already
    return run[: len(run) - len(inner)] + clip(body) + inner[len(body) :]


def one_line(message: str) -> str:
    """``message`` as the form shows it, whoever wrote it (the form, pydantic, a handler's own validator
    quoting the value): control characters escaped, on one line, every unbroken run longer than a quoted
    value clipped as one (``'xxxx…':``), and ``MESSAGE_MAX`` characters at most."""
    text = printable(" ".join(message.split()))
    return clip(_LONG_RUN.sub(_clip_run, text), MESSAGE_MAX)


def _number(text: str, nullable: bool) -> Any:
    """A number field's text as ``-p NAME=TEXT`` reads it, so the form and the command line take and refuse
    the same values: a finite JSON number (``1e3``, ``5.0``, ``-0``) is that number, ``null`` is None where
    None is allowed, anything else goes to pydantic as typed (``1_000``; ``inf``, ``nan``, ``0x10``, which it
    names). The field was Textual's number input, which dropped the keys it would not take: ``1e9`` typed in
    ``items`` launched 19 items, ``5.0`` 50, and ``inf`` in ``seconds`` the default, where the command line
    refused ``1e9`` and ``inf`` and read ``1e3`` as 1000."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    if value is None and nullable:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return text


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise FieldError(f"not valid JSON ({e.args[0].split(':')[0]})") from None


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            return args[0], nullable
        return annotation, nullable
    return annotation, False


def _kind(annotation: Any) -> tuple[Kind, tuple[Any, ...]]:
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "bool", ()
    if annotation is int:
        return "int", ()
    if annotation is float:
        return "float", ()
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, PurePath)):
        return "str", ()
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "choice", tuple(annotation)
    if origin is Literal:
        return "choice", typing.get_args(annotation)
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set):
        return "list", ()
    if origin is dict or annotation is dict:
        return "dict", ()
    return "json", ()


def param_fields(model: type[BaseModel]) -> list[ParamField]:
    """The form's fields for a params model, in declaration order."""
    out = []
    for name, info in model.model_fields.items():
        annotation, nullable = _unwrap_optional(info.annotation)
        kind, choices = _kind(annotation)
        extra = info.json_schema_extra
        if kind == "list" and isinstance(extra, dict) and extra.get("split") == "shell":
            kind = "words"
        out.append(
            ParamField(
                name=name,
                kind=kind,
                required=info.is_required(),
                nullable=nullable,
                default=None if info.is_required() else _default(info),
                description=(info.description or "").strip(),
                choices=choices,
            )
        )
    if not out and model.model_config.get("extra") == "allow":
        out.append(ParamField(JSON_FIELD, "json", False, True, None, "all params as one JSON object"))
    return out


def _default(info: FieldInfo) -> Any:
    try:
        return info.get_default(call_default_factory=True, validated_data={})
    except TypeError:
        return None


def _choice_value(choice: Any) -> Any:
    return choice.value if isinstance(choice, Enum) else choice


class FormInput(SteadyInput):
    """A form's field: every key applied in the order it arrived, even when keys come in one burst.

    ``SteadyInput`` runs the Input's own bindings (backspace, end, enter...) in the key's turn: in a burst
    (a slow SSH link, a paste, tmux send-keys) "backspace x3, 421789" gave "421". Here tab runs in the key's
    turn too (keys typed after a tab landed in the field being left), and a key that reaches this field
    after the focus moved on is handed to the field that has it now.
    """

    async def on_key(self, event: events.Key) -> None:
        """Runs before SteadyInput's key handler; prevent_default keeps that one from running too."""
        if _hand_on(self, event):
            event.stop()
            event.prevent_default()


def _hand_on(field: Widget, event: events.Key) -> bool:
    """What a form field does first with a key, in the key's turn: hand it to the field that has the
    focus now (it came after a tab moved on), or move the focus for a tab. False: neither applied."""
    focused = field.screen.focused if field.is_attached else None
    if focused is not None and focused is not field:
        focused.post_message(events.Key(event.key, event.character))
    elif event.key == "tab":
        field.screen.focus_next()
    elif event.key == "shift+tab":
        field.screen.focus_previous()
    else:
        return False
    return True


class FormSwitch(Switch):
    """A form's on/off field, which takes the keys of a burst in the order typed, as ``FormInput`` does:
    space and enter toggle it and tab moves the focus in the key's turn, and a key that reaches it after the
    focus moved on is handed to the field that has it now. A Switch toggles as a binding, after the keys
    behind it, and drops letters: "space, tab x3, a regex" sent at once launched the form without the regex.
    """

    async def on_key(self, event: events.Key) -> None:
        if _hand_on(self, event):
            pass
        elif event.key in ("space", "enter"):  # the Switch's own binding, in this turn
            self.action_toggle_switch()
        else:
            return
        event.stop()
        event.prevent_default()


class FormSelect(Select[Any]):
    """A form's choice (the type, a param's, the priority), which takes the keys of a burst in the order
    typed. Like ``FormInput``, tab moves the focus in the key's turn, and a key that reaches it after the
    focus moved on is handed to the field that has it now: a Select leaves tab to the app's binding and drops
    letters, and "tab, tab, out.json" sent at once from the field before it launched the form without the
    path. enter, space, up and down open its list in the key's turn, and the list's keys apply in theirs
    (``list_key``, ``FormList``): a Select opens its list, moves the highlight and picks as bindings, once a
    key has bubbled up to the app, and the pick reaches it as a message turns later, so ctrl+s in the same
    burst (type-ahead, a laggy SSH link) launched the value shown before: a DELETE load test when GET was
    picked, the normal priority when low was."""

    @property
    def holding(self) -> bool:
        """Keys that reach this field wait (``TypeSelect``, while a type's params swap in)."""
        return False

    def list_key(self, key: str) -> bool:
        """A key for the open list, applied to it in this turn, whether it reached the list (``FormList``) or
        this field. The list takes the focus a turn after the key that opened it, so keys typed right behind
        that key (one burst) reach this field: down and enter were lost, and the form launched the old value.
        An arrow (home, end, page up/down) moves the highlight as it comes, not as the list's binding once the
        key has bubbled up to the app, behind the keys after it. False: not a key of the list."""
        overlay = self.query_one(FormList)
        action = _LIST_KEYS.get(key)
        if action is not None:
            getattr(overlay, f"action_{action}")()
        elif key == "escape":
            self.expanded = False
            self.screen.set_focus(self)  # in this turn, as a pick does
        elif key == "enter" and overlay.highlighted is not None:
            self.pick(overlay.highlighted)
        else:
            return False
        return True

    def pick(self, index: int) -> None:
        """Choose the option at ``index`` in the list, in this turn, and close the list, the focus back on this
        field. A Select takes a pick as a message from its list a few turns after the enter (``UpdateSelection``),
        and ctrl+s sent with that enter launched the value shown before."""
        value = self._options[index][1]
        if value != self.value:
            self.value = value
        self.expanded = False
        # In this turn: a tab typed behind the enter moves on from here. Focused later (``focus``, as a
        # Select's own pick does), the field took the focus back after that tab had moved it, and the keys
        # typed behind the tab went to the field: "enter down enter tab 5" on the priority lost the 5.
        self.screen.set_focus(self)

    def compose(self) -> ComposeResult:
        for widget in super().compose():
            if isinstance(widget, SelectOverlay):
                widget = FormList(type_to_search=self._type_to_search).data_bind(compact=Select.compact)
            yield widget

    def take_key(self, event: events.Key) -> bool:
        """Apply a key in its turn. False: not one of this field's (a Select's own, or the form's)."""
        if self.expanded:
            # Not one the list had (it stops those): one sent here before the list took the focus.
            return self.list_key(event.key)
        if event.key in _OPEN_KEYS and self.screen.focused is self:
            self.action_show_overlay()  # in this turn, not as a binding after the keys behind it: see list_key
            return True
        return _hand_on(self, event)

    async def on_key(self, event: events.Key) -> None:
        if self.take_key(event):
            event.stop()
            event.prevent_default()


class TypeSelect(FormSelect):
    """The type field. Choosing a type swaps in that type's params, which takes a turn or two to mount;
    keys typed right behind the choice (a tab and the values, in one burst over SSH) are held here until
    the new fields are there, then applied in the order typed, so they never land in the old type's
    fields or past the new ones. Letters typed on it pick a type by its name (``type_ahead``); other keys
    do what they do on any of the form's selects (``FormSelect``)."""

    def __init__(self, options: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self._values = [value for _prompt, value in options]
        """The types, in the list's order."""
        self._held: list[events.Key | Callable[[], None]] = []
        """Keys (and a launch) that came while params are being swapped in."""
        self._swaps = 0
        """Swaps not mounted yet (a second type chosen before the first one's fields are in)."""
        self._typed = ""
        """What was typed on the closed field so far: the type it picks (``type_ahead``)."""

    @property
    def holding(self) -> bool:
        return self._swaps > 0

    def hold(self) -> None:
        """Until the matching ``release``, keys that reach this field wait."""
        self._swaps += 1

    def release(self) -> None:
        """A swap is mounted: once none is left, hand on what was held, in this field's turn (behind the
        keys already on their way to it, which are then held too)."""
        self.call_later(self._released)

    def defer(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after the keys held so far have been handed on (at once when none are held)."""
        if self.holding:
            self._held.append(callback)
        else:
            callback()

    def _released(self) -> None:
        self._swaps -= 1
        if self._swaps:
            return
        held, self._held = self._held, []
        for i, item in enumerate(held):
            if self.holding:  # a letter picked another type: the rest wait for its params, in order
                self._held = held[i:] + self._held
                return
            if not isinstance(item, events.Key):
                item()
            elif item.is_printable and item.character and self.screen.focused is self:
                self.type_ahead(item.character)  # here, in order: posted, it came after the keys behind it
            elif not _hand_on(self, item):
                self.post_message(item)  # not one this field hands on: as if it came now

    def type_ahead(self, character: str) -> None:
        """Typing on the closed field picks the type: the first (in the list's order) whose name starts
        with what was typed, else the first with a word (after a "_") that does ("suite"); a letter that
        fits none starts again from itself, and one that still fits none leaves the type as it is (a bell).
        Typed letters went nowhere, and the tab and values behind them into the fields of the type shown
        before."""
        for typed in (self._typed + character, character):
            low = typed.lower()
            found = next((v for v in self._values if v.lower().startswith(low)), None)
            found = found or next((v for v in self._values if f"_{low}" in f"_{v.lower()}"), None)
            if found is not None:
                self._typed = typed
                if found != self.value:
                    self.value = found  # the params swap in, holding the keys behind
                return
        self._typed = ""
        self.app.bell()

    def on_blur(self) -> None:
        self._typed = ""

    def take_key(self, event: events.Key) -> bool:
        if self.expanded:
            return super().take_key(event)
        if self.holding:
            self._held.append(events.Key(event.key, event.character))
            return True
        if event.is_printable and event.character and self.screen.focused is self and event.key not in _OPEN_KEYS:
            self.type_ahead(event.character)
            return True
        if not super().take_key(event):
            return False  # a Select's own key, or the form's
        self._typed = ""
        return True


_OPEN_KEYS = ("enter", "down", "space", "up")
"""The keys that open a select's list (a Select's own binding's)."""
_LIST_KEYS: dict[str, str] = {
    key.strip(): b.action
    for b in OptionList.BINDINGS
    if isinstance(b, Binding) and b.action != "select"
    for key in b.key.split(",")
}
"""The keys that move a list's highlight, and the action of each (enter, its pick, is ``FormSelect.pick``)."""


class FormList(SelectOverlay):
    """A form's select's open list, which takes its keys in their turn, in the order typed
    (``FormSelect.list_key``). A Select's list moves its highlight and picks as bindings, once a key has
    bubbled up to the app, and the pick reaches the Select as a message turns later: enter and ctrl+s in one
    burst (type-ahead, a laggy SSH link) launched the value shown before (the type, with its params; a
    param's choice; the priority), while the field showed the one picked. A key that reaches the type's list
    after a pick closed it goes on to the field (which holds it behind the swap), not to the closed list's
    search."""

    def focus(self, scroll_visible: bool = True) -> Self:
        """Take the focus in this turn (the select opened its list), not once the app gets to it: the list
        focused a turn later took the focus from where a pick and a tab typed behind it (one burst) had
        moved it, and the keys behind the tab were lost to the closed list."""
        if self.is_attached:
            self.screen.set_focus(self, scroll_visible=scroll_visible)
            return self
        return super().focus(scroll_visible)

    async def on_key(self, event: events.Key) -> None:
        """Runs before the list's own key handler (its search); prevent_default keeps that from running too."""
        select = self.parent
        if not isinstance(select, FormSelect):
            return
        if select.expanded and select.list_key(event.key):
            event.stop()
            event.prevent_default()
        elif not select.expanded and select.holding:
            event.prevent_default()  # it bubbles on to the field, which holds it


class LaunchScreen(ModalScreen[OperationSpec | None]):
    """A modal form that dismisses with a validated ``OperationSpec``, or None on escape."""

    DEFAULT_CSS = """
    LaunchScreen {
        align: center middle;
    }
    #launch-dialog {
        width: 90;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        overflow-y: auto;
        border: round $primary;
        border-title-style: bold;
        background: $surface;
        padding: 0 1;
    }
    #launch-dialog .row {
        height: auto;
    }
    #launch-dialog .field-label {
        width: 18;
        height: 1;
    }
    #launch-dialog .field-label.-required {
        text-style: bold;
    }
    #launch-dialog .field-control {
        width: 1fr;
    }
    #launch-dialog Switch.field-control {
        width: 6;
        height: 1;
        border: none;
        padding: 0 1;
    }
    #launch-dialog Switch.field-control:focus {
        border: none;
        background-tint: $foreground 15%;
    }
    #launch-dialog .switch-state {
        width: 1fr;
        padding-left: 1;
    }
    #launch-dialog .field-help {
        color: $text-muted;
        padding-left: 18;
        height: auto;
    }
    #launch-dialog .field-error {
        color: $text-error;
        padding-left: 18;
        height: auto;
        display: none;
    }
    #launch-dialog .field-error.-shown {
        display: block;
    }
    #launch-dialog .-error {
        background: $error 25%;
    }
    #launch-type-help {
        color: $text-muted;
        padding-left: 18;
    }
    #launch-params > .params-box {
        height: auto;
    }
    #launch-params {
        height: auto;
        max-height: 14;
        border-top: solid $panel-lighten-1;
        border-bottom: solid $panel-lighten-1;
    }
    #launch-form-error {
        color: $text-error;
        height: auto;
        display: none;
    }
    #launch-form-error.-shown {
        display: block;
    }
    #launch-buttons {
        height: 1;
        align-horizontal: right;
    }
    #launch-priority {
        width: 14;
    }
    #launch-items-label {
        width: auto;
        padding: 0 1 0 2;
    }
    #launch-buttons Button {
        margin-left: 2;
    }
    #launch-note {
        color: $text-muted;
        width: 1fr;
    }
    LaunchScreen.-slim #launch-spec-row {
        layout: grid;
        grid-size: 2;
        grid-rows: 1;
    }
    LaunchScreen.-slim #launch-dialog SelectCurrent Static#label {
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    LaunchScreen.-slim #launch-buttons Button {
        min-width: 10;
        margin-left: 1;
    }
    LaunchScreen.-slim #launch-items-label {
        padding: 0;
    }
    LaunchScreen.-slim #launch-priority {
        width: 1fr;
    }
    LaunchScreen.-short #launch-type-help {
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    AUTO_FOCUS = "#launch-type"
    """Named here: the app's own AUTO_FOCUS (its table) matches nothing on this screen."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "launch", "Launch", priority=True),
    ]

    def __init__(
        self,
        handlers: dict[str, HandlerSpec],
        initial_type: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.handlers = dict(handlers)
        self.context = context
        """The validation context the engine's submit checks params with (``Engine.params_context()``): the
        form checks the same, or a value it passed was refused once the form had closed, what was typed lost
        (kb_optimization without a kb, where the state dir has no default knowledge base)."""
        first = next(iter(self.handlers), None)
        self.op_type: str | None = initial_type if initial_type in self.handlers else first
        self.fields: list[ParamField] = self._fields_for(self.op_type)
        self._tried = False
        """After a first submit, every change re-validates so messages clear as they are fixed."""
        self._typed: dict[tuple[str, str], Any] = {}
        """What was set in each type's param controls other than their defaults, by type and param: a type
        chosen again shows it (switching the type to look at another's params lost every value typed). Not
        carried to another type's param of the same name: an index's ``output`` typed, then security_scan
        chosen, would have written its report over that index."""

    # ---- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Vertical(id="launch-dialog") as dialog:
            dialog.border_title = "Launch an operation"
            with Horizontal(classes="row"):
                yield Label("type", classes="field-label -required")
                yield TypeSelect(
                    [(f"{t}", t) for t in self.handlers],
                    value=self.op_type if self.op_type else Select.NULL,
                    allow_blank=self.op_type is None,
                    prompt="no operation types registered" if not self.handlers else "choose a type",
                    compact=True,
                    classes="field-control",
                    id="launch-type",
                )
            yield Static(self._type_help(), id="launch-type-help", markup=False)
            with VerticalScroll(id="launch-params", can_focus=False):
                yield self._params_box()
            yield from self._spec_widgets()
            yield Static("", id="launch-form-error", markup=False)
            with Horizontal(id="launch-buttons"):
                yield Static("* required · ctrl+s launch · esc cancel", id="launch-note")
                yield Button("Launch", variant="primary", compact=True, id="launch-submit")
                yield Button("Cancel", compact=True, id="launch-cancel")

    def on_resize(self, event: events.Resize) -> None:
        """The params scroll within what the rest of the form leaves, so the buttons stay on screen; on a
        short terminal the rest is made smaller first (``-short``), and what still does not fit scrolls."""
        short, slim = event.size.height < SHORT_ROWS, event.size.width < SLIM_COLUMNS
        self.set_class(short, "-short")
        self.set_class(slim, "-slim")
        height = event.size.height - slim  # a slim form's priority and estimate take two rows
        rows = max(1, height - SHORT_RESERVED) if short else max(4, height - RESERVED_ROWS)
        self.query_one("#launch-params").styles.max_height = rows

    def _fields_for(self, op_type: str | None) -> list[ParamField]:
        return param_fields(self.handlers[op_type].params) if op_type else []

    def _type_help(self) -> str:
        if not self.op_type:
            return "no operation types are registered" if not self.handlers else ""
        return self.handlers[self.op_type].description or ""

    def _params_box(self) -> Vertical:
        """The current type's param rows, in a box of their own: a new type's box goes in beside the old
        one (whose ids it may share) in the turn the type changes."""
        return Vertical(*self._param_widgets(), classes="params-box")

    def _param_widgets(self) -> list[Widget]:
        if self.op_type and not self.fields:
            return [Static("this type takes no params", classes="field-help")]
        width = self._label_width()  # set as they are made: not yet mounted, a query would not find them
        out: list[Widget] = []
        for f in self.fields:
            label = _fit(
                Label(_label(f), classes="field-label" + (" -required" if f.required else ""), markup=False), width
            )
            row: list[Widget] = [label, self._control(f)]
            if f.kind == "bool":
                row.append(Label(_on_off(bool(f.default)), classes="switch-state", id=f"state-{_wid(f.name)}"))
            out.append(Horizontal(*row, classes="row"))
            help_text = "; ".join(p for p in (f.description, f.hint) if p)
            if help_text:
                out.append(_fit(Static(help_text, classes="field-help", markup=False), width))
            out.append(_fit(Static("", classes="field-error", id=f"error-{_wid(f.name)}", markup=False), width))
        return out

    def _control(self, f: ParamField) -> Widget:
        wid = f"param-{_wid(f.name)}"
        value = self._typed.get((self.op_type or "", f.name), _initial(f))
        if f.kind == "bool":
            return FormSwitch(bool(value), id=wid, classes="field-control")
        if f.kind == "choice":
            default = _initial(f)
            return FormSelect(
                [(str(_choice_value(c)), _choice_value(c)) for c in f.choices],
                value=value,
                allow_blank=default is Select.NULL or f.nullable,
                # As the text fields say it (security_scan's fail_on read "Select").
                prompt="required" if f.required else "none",
                compact=True,
                id=wid,
                classes="field-control",
            )
        # Text, not Textual's number inputs, which drop every key they do not take (see ``_number``).
        return FormInput(
            str(value),
            max_length=NUMBER_MAX if f.kind in ("int", "float") else FIELD_MAX,
            placeholder=_placeholder(f),
            compact=True,
            id=wid,
            classes="field-control",
        )

    def _spec_widgets(self) -> ComposeResult:
        # One row for both: the form fits 80x24; two under SLIM_COLUMNS (``-slim``: a grid), where the priority
        # was squeezed to nothing.
        with Horizontal(classes="row", id="launch-spec-row"):
            yield Label("priority", classes="field-label")
            yield FormSelect(
                [(p.value, p.value) for p in Priority],
                value=Priority.NORMAL.value,
                allow_blank=False,
                compact=True,
                id="launch-priority",
                classes="field-control",
            )
            yield Label("item estimate", classes="field-label", id="launch-items-label")
            yield FormInput(
                placeholder="unknown",  # text: an integer input made 13 of a typed 1e3
                max_length=ITEMS_MAX,
                compact=True,
                id="launch-items",
                classes="field-control",
            )
        yield Static("", classes="field-error", id="error-spec-items", markup=False)
        with Horizontal(classes="row"):
            yield Label("name", classes="field-label")
            yield FormInput(
                placeholder="optional label",
                max_length=NAME_MAX,
                compact=True,
                id="launch-name",
                classes="field-control",
            )
        yield Static("", classes="field-error", id="error-spec-name", markup=False)

    # ---- events ----------------------------------------------------------------------------

    def on_mount(self) -> None:
        # Called as the value is set, not when Select.Changed reaches the screen: keys typed right
        # behind the choice (a tab, the values) must find the new type's fields already there.
        self.watch(self.query_one("#launch-type", Select), "value", self._type_changed, init=False)
        self._fit_labels()

    def _type_changed(self, value: object) -> None:
        """Swap in the new type's params in this turn (nothing awaited): its fields are in the focus chain
        before the next key is handled, and the old ones, hidden at once, never take a key again."""
        new_type = None if value is Select.NULL else str(value)
        if new_type == self.op_type:
            return
        self._keep_typed()
        self.op_type = new_type
        self.fields = self._fields_for(new_type)
        self._tried = False
        params = self.query_one("#launch-params", VerticalScroll)
        old = list(params.children)
        for box in old:
            box.display = False
            box.remove_class("params-box").add_class("-gone")  # no longer read, validated or shown
        select = self.query_one("#launch-type", TypeSelect)
        select.hold()
        mounted = params.mount(self._params_box())
        removed = params.remove_children(old)
        self._show({}, [])
        self.query_one("#launch-type-help", Static).update(self._type_help())

        async def swapped() -> None:
            try:
                await mounted
                await removed
            finally:
                select.release()

        self.run_worker(swapped(), group="swap")
        self._fit_labels()

    def _keep_typed(self) -> None:
        """Note what the current type's controls hold other than their defaults (``_typed``)."""
        if self.op_type is None:
            return
        box = self._params()
        for f in self.fields:
            found = box.query(f"#param-{_wid(f.name)}")
            control = found.first() if found else None
            value = control.value if isinstance(control, Switch | Select | Input) else None
            if value is None or value == _initial(f):
                self._typed.pop((self.op_type, f.name), None)
            else:
                self._typed[(self.op_type, f.name)] = value

    def _label_width(self) -> int:
        """The label column as wide as the type's longest param name (``fail_on_test_failure`` was cut to
        18 cells), every row's alike so the controls and the help below them stay in one column."""
        return min(MAX_LABEL_WIDTH, max([LABEL_WIDTH - 2, *(cell_len(_label(f)) for f in self.fields)]) + 2)

    def _fit_labels(self) -> None:
        width = self._label_width()
        for w in self.query(".field-label, .field-help, .field-error, #launch-type-help"):
            _fit(w, width)
        self.query_one("#launch-spec-row").styles.grid_columns = f"{width} 1fr"  # its labels' column when slim

    @on(Input.Changed)
    @on(Switch.Changed)
    @on(Select.Changed)
    def _revalidate(self, event: Input.Changed | Switch.Changed | Select.Changed) -> None:
        if self._tried and getattr(event.control, "id", None) != "launch-type":
            self._show(*self.validate()[1:])

    @on(Switch.Changed)
    def _switch_state(self, event: Switch.Changed) -> None:
        name = (event.switch.id or "").removeprefix("param-")
        for label in self._params().query(f"#state-{name}").results(Label):
            label.update(_on_off(event.value))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_launch()

    @on(Button.Pressed, "#launch-submit")
    def _launch_pressed(self) -> None:
        self.action_launch()

    @on(Button.Pressed, "#launch-cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_launch(self) -> None:
        """Submit once the keys already sent to the focused field are in its value.

        ctrl+s is a priority binding: it runs as soon as it arrives, while keys typed just before it
        (a burst over SSH, a paste) may still wait in the focused Input's queue. A callback posted to
        that queue runs after them, so the form is read as typed, never as validated a moment ago.
        """
        self._launch_after_keys(self.focused)

    def _launch_after_keys(self, target: Widget | None) -> None:
        if isinstance(target, TypeSelect) and target.holding:
            target.defer(lambda: self._launch_after_keys(target))  # after the keys it holds are handed on
        elif isinstance(target, FormSelect | FormList):
            self._launch_after_select_keys(target)
        elif target is None or not target.call_later(self._launch_now, target):
            self._launch_now(target)

    def _launch_after_select_keys(self, target: FormSelect | FormList) -> None:
        """Submit once the keys sent to a select (the type, a param's choice, the priority) and to its list are
        handled: while the focus moves between the two (to the list a turn after it opens, back a turn after a
        pick) keys wait in either. The list's first, as a key it does not take goes on to the field, then the
        field's. Waiting on the list alone, ctrl+s ran before the field took the keys sent to it, or before a
        pick reached it."""
        select = target if isinstance(target, FormSelect) else target.parent
        assert isinstance(select, FormSelect)

        def then_the_field() -> None:
            if not select.call_later(self._launch_now, target):
                self._launch_now(target)

        if not select.query_one(FormList).call_later(then_the_field):
            then_the_field()

    def _launch_now(self, waited_on: Widget | None = None) -> None:
        """Dismiss with the spec when the form validates; otherwise show every message."""
        if not self.is_active:
            return  # dismissed meanwhile (a second submit in the same burst)
        if self.focused is not waited_on and self.focused is not None:
            # A tab in the burst moved the focus: the keys after it went to the new field's queue.
            self._launch_after_keys(self.focused)
            return
        type_select = self.query_one("#launch-type", TypeSelect)
        if type_select.holding:
            # A type picked by the keys before it (on the field, or in its list, whose overlay may still have
            # the focus): its params swap in, and the keys behind wait for them.
            self._launch_after_keys(type_select)
            return
        self._tried = True
        spec, field_errors, form_errors = self.validate()
        self._show(field_errors, form_errors)
        if spec is not None:
            self.dismiss(spec)
            return
        first_bad = next(iter(self._current(".field-control.-error", Widget)), None)
        if first_bad is not None and first_bad.focusable:
            first_bad.focus()  # straight to the first thing to fix
            if isinstance(first_bad, Input):
                # Its refused text selected, as a field the focus moves to has it: what is typed next replaces
                # it, and an arrow key edits it. Refused in the field that had the focus (enter pressed in it),
                # the cursor stayed at its end, and the digits typed next were put after the bad ones ("x35").
                first_bad.select_all()

    # ---- validation ------------------------------------------------------------------------

    def validate(self) -> tuple[OperationSpec | None, dict[str, str], list[str]]:
        """The spec, or the messages: by error-widget key (``items``, ``spec-name``) and for the form."""
        field_errors: dict[str, str] = {}
        form_errors: list[str] = []
        if not self.op_type:
            return None, {}, ["choose an operation type"]
        handler = self.handlers[self.op_type]
        raw: dict[str, Any] = {}
        for f in self.fields:
            try:
                value = self._read(f)
            except FieldError as e:
                field_errors[f.name] = str(e)
                continue
            if value is _UNSET:
                continue
            if f.name == JSON_FIELD:
                if not isinstance(value, dict):
                    field_errors[f.name] = "expected a JSON object"
                else:
                    raw.update(value)
            else:
                raw[f.name] = value
        params: dict[str, Any] = {}
        try:
            params = handler.params.model_validate(raw, context=self.context).model_dump(
                mode="json", exclude_defaults=True
            )
        except ValidationError as e:
            names = {f.name for f in self.fields}
            for err in e.errors():
                loc = err["loc"]
                msg = _message(err, handler.params)
                if loc and loc[0] in names:
                    field_errors.setdefault(str(loc[0]), msg)
                elif JSON_FIELD in names:
                    field_errors.setdefault(JSON_FIELD, f"{'.'.join(map(str, loc))}: {msg}" if loc else msg)
                else:
                    where = ".".join(map(str, loc))
                    form_errors.append(f"{where}: {msg}" if where else msg)
        items_text = self.query_one("#launch-items", Input).value.strip()
        total: Any = None
        if items_text:
            try:
                total = int(items_text)
            except ValueError:
                # Its line is under the priority, beside it: it names its field.
                if _WHOLE.fullmatch(items_text):  # int() refuses 4,300 digits and more
                    digits = sum(c.isdigit() for c in items_text)
                    field_errors["spec-items"] = f"item estimate: too large ({digits:,} digits)"
                else:
                    field_errors["spec-items"] = f"item estimate: {quoted(items_text)} is not a whole number"
                total = None
        priority = Priority(str(self.query_one("#launch-priority", Select).value))
        name = self.query_one("#launch-name", Input).value.strip() or None
        try:  # checked even while params are wrong, so every message shows at once
            spec = OperationSpec(type=self.op_type, params=params, priority=priority, total_items=total, name=name)
        except ValidationError as e:
            spec = None
            for err in e.errors():
                key = {"total_items": "spec-items", "name": "spec-name"}.get(str(err["loc"][0]) if err["loc"] else "")
                if key:
                    where = "item estimate: " if key == "spec-items" else ""
                    field_errors.setdefault(key, where + _message(err))
                else:
                    form_errors.append(f"{'.'.join(map(str, err['loc']))}: {_message(err)}")
        if spec is None or field_errors or form_errors:
            return None, field_errors, form_errors
        return spec, {}, []

    def _params(self) -> Vertical:
        """The current type's param rows (a type changed a moment ago may leave the old ones, hidden)."""
        return self.query_one(".params-box", Vertical)

    def _current(self, selector: str, kind: type[W]) -> list[W]:
        """The form's widgets matching ``selector``, without those of a type being swapped out."""
        return [w for w in self.query(selector).results(kind) if not any(a.has_class("-gone") for a in w.ancestors)]

    def _read(self, f: ParamField) -> Any:
        control = self._params().query_one(f"#param-{_wid(f.name)}")
        if isinstance(control, Switch):
            return control.value
        if isinstance(control, Select):
            value = control.value
            if value is Select.NULL:
                return None if f.nullable and not f.required else _UNSET
            return value
        assert isinstance(control, Input)
        return f.raw(control.value)

    def _show(self, field_errors: dict[str, str], form_errors: list[str]) -> None:
        """Put each message under its field (one line each) and mark the controls."""
        for widget in self._current(".field-error", Static):
            key = (widget.id or "").removeprefix("error-")
            message = one_line(field_errors.get(_unwid(key), field_errors.get(key, "")))
            widget.update(message)
            widget.set_class(bool(message), "-shown")
        for control in self._current(".field-control", Widget):
            cid = control.id or ""
            key = {"launch-items": "spec-items", "launch-name": "spec-name"}.get(
                cid, _unwid(cid.removeprefix("param-"))
            )
            control.set_class(key in field_errors, "-error")
        form = self.query_one("#launch-form-error", Static)
        form.update("\n".join(one_line(m) for m in form_errors))
        form.set_class(bool(form_errors), "-shown")


LABEL_WIDTH = 18
"""Cells of a field's label column (``.field-label`` in the CSS), unless a param's name needs more."""
MAX_LABEL_WIDTH = 32


def _initial(f: ParamField) -> Any:
    """What ``f``'s control holds before anything is set in it."""
    if f.kind == "bool":
        return bool(f.default)
    if f.kind == "choice":
        return _choice_value(f.default) if f.default is not None else Select.NULL
    return f.initial_text()


def _placeholder(f: ParamField) -> str:
    """What an empty text field says: what it launches. Cleared, a field with a default launches that default
    (demo's items: 100), and it showed nothing, as if it would launch nothing or be refused."""
    if f.required:
        return "required"
    if f.nullable:
        return "none"
    shown = f.initial_text()
    return f"{shown} (default)" if shown else ""


def _label(f: ParamField) -> str:
    return ("params" if f.name == JSON_FIELD else f.name) + (" *" if f.required else "")


def _fit(w: W, width: int) -> W:
    """``w`` (a field's label, or the help or error line below it) lined up with a label column ``width`` wide."""
    if w.has_class("field-label") and w.id != "launch-items-label":  # that one follows the priority
        w.styles.width = width
    elif w.has_class("field-help") or w.has_class("field-error") or w.id == "launch-type-help":
        w.styles.padding = (0, 0, 0, width)
    return w


_WHOLE = re.compile(r"[+-]?\d+(?:_\d+)*")
"""A whole number as ``int()`` reads one (``1_000`` too), however long."""


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _message(err: Any, model: type[BaseModel] | None = None) -> str:
    """Pydantic's message, or for a number that is not finite, that it is not (with the field's bounds): nan
    was said to be "greater than the most" (the value is shown above it: a finite one is not named again)."""
    return error_message(err, model, finite_too=False).replace("\n", " ")


def _wid(name: str) -> str:
    """A widget id for a field name (ids may not start with '_')."""
    return "json-params" if name == JSON_FIELD else name


def _unwid(key: str) -> str:
    return JSON_FIELD if key == "json-params" else key
