"""The launch form, driven with keys through Textual's pilot in a tiny app of its own.

Bad values show one message under their field and dismiss nothing; a good form yields the
OperationSpec the engine then accepts as is.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Input, Label, Static, Switch

from engine import Engine, OperationSpec, Priority, Settings, Status, handlers
from engine.registry import HandlerSpec
from tui.screens.launch import LaunchScreen

from . import zygote
from .fixtures_cli import REPO
from .fixtures_tui import wait_for


class LaunchApp(App[None]):
    """Pushes the launch form on start and keeps what it dismisses with."""

    def __init__(self, types: dict[str, HandlerSpec], initial_type: str | None = "demo") -> None:
        super().__init__()
        self.types = types
        self.initial_type = initial_type
        self.results: list[OperationSpec | None] = []

    def compose(self) -> ComposeResult:
        yield Label("main screen")

    def on_mount(self) -> None:
        self.push_screen(LaunchScreen(self.types, self.initial_type), self.results.append)


def demo_only() -> dict[str, HandlerSpec]:
    return {"demo": handlers()["demo"]}


async def replace(pilot: Pilot[Any], selector: str, text: str) -> None:
    """Focus an input, clear it with a backspace per character and type ``text``.

    Long values are set up to their last character, which is typed (pilot key presses are slow).
    """
    widget = pilot.app.screen.query_one(selector, Input)
    widget.focus()
    if widget.max_length and len(text) > widget.max_length:
        # Longer than the field takes from keys or a paste (the rest is dropped as it comes): set as
        # another way in would (the form's messages must stay one short line whatever the value).
        widget.value = text
        await pilot.press("end")
    elif len(text) > 8:
        widget.value = text[:-1]
        await pilot.press("end", text[-1])
    else:
        await pilot.press("end", *["backspace"] * len(widget.value), *text)


def error_text(app: App[Any], key: str) -> str:
    widget = app.screen.query_one(f"#error-{key}", Static)
    return str(widget.render()) if widget.has_class("-shown") else ""


async def test_bad_value_shows_its_message_and_submits_nothing_then_a_good_form_yields_the_spec(
    settings: Settings,
) -> None:
    app = LaunchApp(demo_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await replace(pilot, "#param-items", "-3")
        await replace(pilot, "#param-seconds", "0")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.results == []
        assert isinstance(app.screen, LaunchScreen)
        assert error_text(app, "items") == "Input should be greater than or equal to 0"
        assert app.screen.query_one("#param-items").has_class("-error")
        assert app.focused is app.screen.query_one("#param-items")  # straight to the first thing to fix
        assert error_text(app, "seconds") == ""

        await replace(pilot, "#param-items", "12")  # fixing it clears the message as it is typed
        await pilot.pause()
        assert error_text(app, "items") == ""
        await replace(pilot, "#launch-items", "12")
        await replace(pilot, "#launch-name", "nightly")
        app.screen.query_one("#launch-priority").value = "high"
        await pilot.press("enter")  # enter in any input launches
        await pilot.pause()
    assert app.results == [
        OperationSpec(
            type="demo", params={"items": 12, "seconds": 0.0}, priority=Priority.HIGH, total_items=12, name="nightly"
        )
    ]
    spec = app.results[0]
    assert spec is not None
    async with Engine(settings=settings, run_queue=False) as engine:
        op = await engine.submit(spec)  # the engine takes the form's spec as it is
        stored = await engine.get(op.id)
    assert stored.status is Status.QUEUED and stored.params["items"] == 12 and stored.total_items == 12


async def test_a_refused_value_is_selected_so_what_is_typed_next_replaces_it() -> None:
    """Enter pressed in the field it refuses kept the focus there with the cursor at the end of the refused
    text: "x3" refused, then "5" typed, made "x35". Selected, as a field the focus moves to is; the arrows
    still edit it."""
    app = LaunchApp(demo_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await replace(pilot, "#param-items", "x3")
        await pilot.press("enter")
        await pilot.pause()
        field = app.screen.query_one("#param-items", Input)
        assert app.results == [] and app.focused is field and error_text(app, "items")
        await pilot.press("5")
        assert field.value == "5"
        await replace(pilot, "#param-items", "x3")
        await pilot.press("enter", "end", "backspace", "backspace", "4")
        assert field.value == "4"


async def test_required_fields_are_marked_and_named_until_filled(tmp_path: Path) -> None:
    app = LaunchApp(handlers(), initial_type="codebase_indexing")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        labels = [str(label.render()) for label in app.screen.query(".field-label.-required").results(Label)]
        assert "root *" in labels
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.results == []
        assert error_text(app, "root") == "Field required"
        await replace(pilot, "#param-root", str(tmp_path / "missing"))
        await pilot.pause()
        assert "is not an existing directory" in error_text(app, "root")
        await replace(pilot, "#param-root", str(tmp_path))
        await replace(pilot, "#param-patterns", "*.py, *.md")
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert app.results == [
        OperationSpec(type="codebase_indexing", params={"root": str(tmp_path.resolve()), "patterns": ["*.py", "*.md"]})
    ]


async def test_a_programs_arguments_are_split_as_the_command_line_splits_them(tmp_path: Path) -> None:
    """``-m "not slow"`` in the form's args was one argument (the form split at commas), where
    ``-p args='-m "not slow"'`` on the command line is two: pytest refused the marker expression."""
    app = LaunchApp(handlers(), initial_type="comprehensive_test_suite")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await replace(pilot, "#param-path", str(tmp_path))
        await replace(pilot, "#param-args", """-m "not slow" -k 'a or b' -x""")
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert [s.params["args"] if s else None for s in app.results] == [["-m", "not slow", "-k", "a or b", "-x"]]


async def test_a_commands_argv_is_split_as_the_command_line_splits_it() -> None:
    """``sh -c "echo hi there"`` in the form's argv was one word (the form split at commas, and there was
    none), the program's name: the command failed with "cannot start 'sh -c "echo hi there"'". A quote left
    open is said under the field, and nothing is launched."""
    app = LaunchApp({"command": handlers()["command"]}, initial_type="command")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await replace(pilot, "#param-argv", 'sh -c "echo hi')
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.results == []
        assert error_text(app, "argv").startswith("cannot be split into words as a shell would (No closing quot")
        assert error_text(app, "command") == ""  # not "give either argv or command": argv was given
        await replace(pilot, "#param-argv", """sh -c "echo hi, there" 'it''s'""")
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert [s.params["argv"] if s else None for s in app.results] == [["sh", "-c", "echo hi, there", "its"]]


async def test_a_number_past_what_a_float_holds_is_said_to_be_out_of_range_under_its_field() -> None:
    """1e309 in the form's seconds was "Input should be less than or equal to 3600"."""
    app = LaunchApp(demo_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await replace(pilot, "#param-seconds", "1e309")  # the field takes the characters of a number only
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.results == []
        assert error_text(app, "seconds") == "1e309 is out of range (allowed: 0 <= seconds <= 3600)"


async def test_a_number_typed_in_the_form_is_taken_or_refused_as_the_command_line_takes_it(tmp_path: Path) -> None:
    """The number fields dropped the keys Textual's number inputs do not take: 1e9 typed in items launched 19
    items, 5.0 launched 50, inf in seconds launched the default, 1e3 as the item estimate 13; the command
    line refused 1e9, inf and 1e3 there, and read 1e2 and 5.0 as 100 and 5."""
    typed = [("#param-items", "1e9"), ("#param-items", "5.0"), ("#param-seconds", "inf"), ("#launch-items", "1e3")]
    clis = []
    for i, (selector, text) in enumerate(typed):  # the command line's answers, all at once
        name = selector.removeprefix("#param-")
        option = ["--items", text] if selector == "#launch-items" else ["-p", f"{name}={text}"]
        clis.append(
            zygote.popen(
                ["--state-dir", str(tmp_path / str(i)), "--json", "submit", "demo", *option],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        )
    for (selector, text), proc in zip(typed, clis, strict=True):
        name = selector.removeprefix("#param-")
        out, _ = proc.communicate(timeout=60)
        app = LaunchApp(demo_only())
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.pause()
            await replace(pilot, selector, text)
            await pilot.press("ctrl+s")
            await pilot.pause()
        launched = app.results[0] if app.results else None
        if proc.returncode == 0:
            stored = json.loads(out)
            assert launched is not None, (selector, text, "refused by the form only")
            if selector == "#launch-items":
                assert launched.total_items == stored["total_items"], (text, launched)
            else:
                params = demo_only()["demo"].params.model_validate(launched.params).model_dump()
                assert params[name] == stored["params"][name], (text, launched.params)
        else:
            assert launched is None, (selector, text, "launched by the form, refused by the command line", launched)


async def test_changing_type_rebuilds_the_params_and_form_level_errors_show() -> None:
    app = LaunchApp(handlers())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        app.screen.query_one("#launch-type").value = "command"
        await pilot.pause()
        assert not app.screen.query("#param-items")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert error_text(app, "command") == "give either argv (a list) or command (a string)"
        await replace(pilot, "#param-argv", "echo hi")
        await replace(pilot, "#param-env", "A=1, B")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.results == []
        assert error_text(app, "env") == "'B': expected KEY=VALUE"
        await replace(pilot, "#param-env", '{"A": "1"}')
        await replace(pilot, "#launch-items", "-1")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert error_text(app, "spec-items") == "item estimate: Input should be greater than or equal to 0"
        await replace(pilot, "#launch-items", "")
        await pilot.press("ctrl+s")
        await pilot.pause()
    # cwd: the directory the form was filled in, stored (a worker elsewhere runs the command there)
    params = {"argv": ["echo", "hi"], "env": {"A": "1"}, "cwd": os.getcwd()}
    assert app.results == [OperationSpec(type="command", params=params)]


async def test_a_long_param_name_widens_the_label_column_and_a_short_one_narrows_it() -> None:
    """``fail_on_test_failure`` showed as ``fail_on_test_failu``: the column was 18 cells for every type."""
    app = LaunchApp(handlers())
    async with app.run_test(size=(110, 50)) as pilot:

        def columns() -> tuple[set[int], set[int], str]:
            screen = app.screen
            labels = {w.size.width for w in screen.query(".field-label").exclude("#launch-items-label") if w.display}
            helps = {w.styles.padding.left for w in screen.query(".field-help, #launch-type-help") if w.display}
            return labels, helps, str(screen.query_one("#param-fail_on_test_failure").parent.children[0].render())

        await pilot.pause()
        app.screen.query_one("#launch-type").value = "comprehensive_test_suite"
        await pilot.pause()
        labels, helps, long_one = columns()
        assert long_one == "fail_on_test_failure"
        assert labels == helps == {len("fail_on_test_failure") + 2}  # one column, the help under the controls
        await replace(pilot, "#param-path", "tests/unit")
        app.screen.query_one("#param-fail_on_test_failure", Switch).value = True
        app.screen.query_one("#launch-type").value = "demo"
        await pilot.pause()
        assert {w.size.width for w in app.screen.query(".field-label").exclude("#launch-items-label") if w.display} == {
            18
        }
        # What was typed for a type is back when it is chosen again (a look at another type's params lost it),
        # and goes to no other type's param of the same name.
        app.screen.query_one("#launch-type").value = "integration_testing"
        await pilot.pause()
        assert app.screen.query_one("#param-path", Input).value != "tests/unit"
        app.screen.query_one("#launch-type").value = "comprehensive_test_suite"
        await pilot.pause()
        assert app.screen.query_one("#param-path", Input).value == "tests/unit"
        assert app.screen.query_one("#param-fail_on_test_failure", Switch).value is True


class Window(BaseModel):
    """A params model with a check across fields: its error names no field."""

    model_config = ConfigDict(extra="forbid")
    start: int = 0
    end: int = 10

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end < self.start:
            raise ValueError("end comes before start")
        return self


async def window_handler(ctx: Any, p: Window) -> None:
    """Never run: the form only reads the params model."""


async def test_an_error_naming_no_field_is_shown_for_the_form() -> None:
    types = {"window": HandlerSpec("window", window_handler, Window, "a window", "test")}
    app = LaunchApp(types, initial_type="window")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await replace(pilot, "#param-start", "20")
        await pilot.press("ctrl+s")
        await pilot.pause()
        form = app.screen.query_one("#launch-form-error", Static)
        assert form.has_class("-shown") and str(form.render()) == "end comes before start"
        assert app.results == []
        await replace(pilot, "#param-end", "30")
        await pilot.pause()
        assert not form.has_class("-shown")
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert app.results == [OperationSpec(type="window", params={"start": 20, "end": 30})]


async def test_escape_dismisses_with_none() -> None:
    app = LaunchApp(demo_only())
    async with app.run_test() as pilot:
        await pilot.pause()
        await replace(pilot, "#param-items", "-1")
        await pilot.press("escape")
        await pilot.pause()
        assert app.results == [None]
        assert not isinstance(app.screen, LaunchScreen)


def test_snapshot_launch_form_with_a_validation_error(snap_compare: Any) -> None:
    async def bad_items(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        await replace(pilot, "#param-items", "-3")
        await pilot.press("ctrl+s")
        await pilot.pause()

    assert snap_compare(LaunchApp(demo_only()), terminal_size=(80, 24), run_before=bad_items)


async def test_a_headless_screenshot_does_not_depend_on_when_it_is_taken() -> None:
    """The snapshot above failed once on a loaded machine: the focused field's cursor had blinked off
    before the screenshot. Headless, the form's fields do not blink."""
    app = LaunchApp(demo_only())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await replace(pilot, "#param-items", "-3")
        await pilot.pause()
        first = app.export_screenshot()
        await pilot.pause(0.6)  # past the 0.5 s blink
        assert app.export_screenshot() == first


async def test_keys_and_submit_in_one_burst_launch_what_was_typed(settings: Settings) -> None:
    """Keys that arrive together (a slow SSH link, a paste) and ctrl+s or enter right behind them:
    the form submits the text typed, not the value validated before the last keys were handled."""
    from textual import events

    for submit in ("ctrl+s", "enter"):
        app = LaunchApp(demo_only())
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.pause()
            field = app.screen.query_one("#param-items", Input)
            field.focus()
            field.value = ""
            await pilot.pause()
            for key in [*"4711", submit]:  # posted at once: nothing waits for a key to be handled
                app.post_message(events.Key(key, key if len(key) == 1 else None))
            await pilot.pause()
            await pilot.pause()
        assert [s.params.get("items") if s else None for s in app.results] == [4711], submit


async def test_editing_keys_and_tab_in_a_burst_apply_in_the_order_typed(settings: Settings) -> None:
    """Textual runs an Input's editing keys (backspace, end) as bindings after the event bubbles up,
    so in a burst they applied after the characters typed behind them ("backspace x3, 421789" gave
    "421"), and keys typed after a tab landed in the field being left."""
    from textual import events

    app = LaunchApp(demo_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        app.screen.query_one("#param-items", Input).focus()
        await pilot.pause(0.2)
        keys = ["end", *["backspace"] * 5, *"4217", "tab", "end", *["backspace"] * 6, *"0.001", "ctrl+s"]
        for key in keys:
            app.post_message(events.Key(key, key if len(key) == 1 else None))
        await pilot.pause(0.5)
    assert [s.params if s else None for s in app.results] == [{"items": 4217, "seconds": 0.001}]


async def test_a_burst_right_after_the_type_changed_goes_to_the_new_types_fields(settings: Settings) -> None:
    """The params of a new type were mounted after an await, so a tab and the values typed right behind
    the type change (over SSH, or fast) went to fields being removed or past them, and the form
    launched the new type with its defaults: the wrong job. The burst here is posted in the same turn
    as the change, before the form has handled it."""
    from textual import events
    from textual.widgets import Select

    for before in ("command", "codebase_indexing"):  # no params in common, then an `items` of its own
        app = LaunchApp(handlers(), initial_type=before)
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.pause()
            select = app.screen.query_one("#launch-type", Select)
            select.focus()
            await pilot.pause()
            select.value = "demo"
            keys = ["tab", "end", *["backspace"] * 6, *"4217", "tab", "end", *["backspace"] * 6, *"0.001"]
            for key in keys:  # straight into the type field's queue, as the app hands on keys to the focus
                select.post_message(events.Key(key, key if len(key) == 1 else None))
            app.post_message(events.Key("ctrl+s", None))
            await pilot.pause(0.5)
        assert [(s.type, s.params) if s else None for s in app.results] == [
            ("demo", {"items": 4217, "seconds": 0.001})
        ], before


async def test_keys_the_type_field_does_not_hand_on_keep_their_meaning(settings: Settings) -> None:
    """Held behind a swap or not, a key the type field does not pass on does what it does on a Select:
    enter opens the list of types, escape cancels the form."""
    from textual import events
    from textual.widgets import Select

    for held in (False, True):
        app = LaunchApp(handlers(), initial_type="command")
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.pause()
            select = app.screen.query_one("#launch-type", Select)
            select.focus()
            await pilot.pause()
            if held:
                select.value = "demo"  # the swap is not mounted when the keys come
            app.post_message(events.Key("enter", None))  # as a terminal's key comes: through the app
            await pilot.pause(0.3)
            assert select.expanded, held
            await pilot.press("escape")  # closes the list
            await pilot.pause()
            assert not select.expanded and app.results == [], held
            await pilot.press("escape")  # cancels the form
            await pilot.pause()
        assert app.results == [None], held


async def test_a_type_picked_from_the_list_in_a_burst_is_the_one_launched(settings: Settings) -> None:
    """enter (open the list), down, enter (pick the next type), tab, a value and ctrl+s in one burst: the
    list's overlay took the focus a turn after the enter that opened it, so down and the second enter
    reached the closed field and were lost, and the form launched the old type with its defaults.

    Then, with the list already open (its overlay has the focus), down, enter and ctrl+s in one burst: the
    list's pick reached the Select as a message a few turns after the enter, and ctrl+s, waiting only for
    the overlay's own queue, launched the type shown before with its params (a demo of 6 items, the form
    showing dependency_analysis). So did down and enter sent to the field before its list took the focus
    (a loaded machine), with ctrl+s arriving once the list had it. The picked type's form is validated:
    its required root is asked for.

    The form's other selects did the same: with load_testing's method DELETE, enter, home, enter (GET) and
    ctrl+s in one burst launched a DELETE load test; with the priority list open, down, enter (low) and
    ctrl+s launched at normal.
    """
    from textual import events
    from textual.widgets import Select

    types = {t: handlers()[t] for t in ("demo", "dependency_analysis", "load_testing")}
    app = LaunchApp(types, initial_type="demo")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        app.screen.query_one("#launch-type", Select).focus()
        await pilot.pause()
        for key in ["enter", "down", "enter", "tab", *"/tmp", "ctrl+s"]:  # at once, through the app
            app.post_message(events.Key(key, key if len(key) == 1 else None))
        await wait_for(pilot, lambda: app.results)  # not a fixed 0.5 s: a loaded machine took longer
        assert [(s.type, s.params.get("root")) if s else None for s in app.results] == [("dependency_analysis", "/tmp")]

        for reached in ("the list", "the field"):
            app.push_screen(LaunchScreen(types, "demo"), app.results.append)  # the same app: no second start
            launched = len(app.results)
            await pilot.pause()
            await replace(pilot, "#param-items", "6")
            select = app.screen.query_one("#launch-type", Select)
            select.focus()
            await pilot.press("enter")  # the list open, its overlay focused
            assert select.expanded and app.screen.focused is not select
            for key in ["down", "enter"]:  # the next type picked
                # Through the app to the list, or sent to the field before the list took the focus.
                (app if reached == "the list" else select).post_message(events.Key(key, None))
            app.post_message(events.Key("ctrl+s", None))  # at once
            await wait_for(pilot, lambda n=launched: len(app.results) > n or app.screen.query("#error-root.-shown"))
            assert app.results[launched:] == [], (reached, [(s.type, s.params) for s in app.results[launched:] if s])
            assert select.value == "dependency_analysis", reached
            assert "required" in error_text(app, "root").lower(), reached
            await pilot.press("escape")  # the form cancelled
            assert app.results[launched:] == [None], reached

        for field, opened, keys, picked in (
            ("#param-method", False, ["enter", "home", "enter"], ("GET", Priority.NORMAL)),  # opened in the burst
            ("#launch-priority", True, ["down", "enter"], ("DELETE", Priority.LOW)),  # the list already open
        ):
            app.push_screen(LaunchScreen(types, "load_testing"), app.results.append)
            launched = len(app.results)
            await pilot.pause()
            await replace(pilot, "#param-url", "http://127.0.0.1:9/")
            app.screen.query_one("#param-method", Select).value = "DELETE"  # picked before
            select = app.screen.query_one(field, Select)
            select.focus()
            await pilot.pause()
            if opened:
                await pilot.press("enter")
                assert select.expanded and app.screen.focused is not select
            for key in [*keys, "ctrl+s"]:  # at once, through the app
                app.post_message(events.Key(key, None))
            await wait_for(pilot, lambda n=launched: len(app.results) > n)
            got = [(s.type, s.params.get("method", "GET"), s.priority) if s else None for s in app.results[launched:]]
            assert got == [("load_testing", *picked)], field


async def test_keys_typed_behind_a_pick_and_a_tab_reach_the_next_field(settings: Settings) -> None:
    """A choice picked from its list, tab, a value and ctrl+s in one burst (type-ahead, a laggy SSH link):
    the list took the focus and the pick gave it back to the select once the app got to them, after the tab
    had moved on, so the value typed behind the tab went to the closed list or the select and was lost. The
    form launched without it: "enter down enter tab 5 ctrl+s" on the priority gave a low-priority job with
    no item estimate (5 of 5 on the code before); on load_testing's method, the headers typed behind were
    dropped the same way."""
    from textual import events

    types = {t: handlers()[t] for t in ("demo", "load_testing")}
    app = LaunchApp(types, initial_type="demo")
    async with app.run_test(size=(100, 40)) as pilot:
        for op_type, field, keys, want in (
            ("demo", "#launch-priority", ["enter", "down", "enter", "tab", "5"], ("low", 5)),
            ("demo", "#launch-priority", ["down", "down", "enter", "tab", "1", "2"], ("low", 12)),
            ("load_testing", "#param-method", ["enter", "end", "enter", "tab", *"a=b"], ("OPTIONS", {"a": "b"})),
        ):
            if app.results:  # the first form is the one the app opens with
                app.push_screen(LaunchScreen(types, op_type), app.results.append)
            await pilot.pause()
            if op_type == "load_testing":
                await replace(pilot, "#param-url", "http://127.0.0.1:9/")
            app.screen.query_one(field).focus()
            await pilot.pause()
            launched = len(app.results)
            for key in [*keys, "ctrl+s"]:  # at once, through the app
                app.post_message(events.Key(key, key if len(key) == 1 else None))
            await wait_for(pilot, lambda n=launched: len(app.results) > n)
            spec = app.results[launched]
            assert spec is not None, keys
            if op_type == "demo":
                assert (spec.priority.value, spec.total_items) == want, keys
            else:
                assert (spec.params.get("method"), spec.params.get("headers")) == want, keys


async def test_a_type_name_typed_on_the_type_field_picks_it_and_the_keys_behind_go_to_its_fields(
    settings: Settings,
) -> None:
    """``n``, then a type's name, tab and a value, as a user types them: the letters went nowhere (a closed
    Select ignores them) and the tab and value into the fields of the type shown before, so ctrl+s
    launched a job other than the one meant. Letters pick the type whose name starts with them (or has
    them), in one burst or one by one; a letter no type has keeps the type shown."""
    from textual import events
    from textual.widgets import Select

    builtin = {t: h for t, h in handlers().items() if h.source == "builtin"}  # not the types other tests register
    app = LaunchApp(builtin, initial_type="demo")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        select = app.screen.query_one("#launch-type", Select)
        assert app.screen.focused is select  # where the form opens
        await pilot.press(*"integ")
        assert select.value == "integration_testing"
        await pilot.press("escape")
    app = LaunchApp(builtin, initial_type="demo")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await pilot.press(*"suite", "!")
        assert app.screen.query_one("#launch-type", Select).value == "comprehensive_test_suite"
        await pilot.press("n")  # in no name's start nor a word's (backup_operation has an n): kept
        assert app.screen.query_one("#launch-type", Select).value == "comprehensive_test_suite"
        await pilot.press("escape")
    assert app.results == [None]
    app = LaunchApp(builtin, initial_type="demo")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        for key in [*"command", "tab", *"true", "ctrl+s"]:  # at once, through the app
            app.post_message(events.Key(key, key if len(key) == 1 else None))
        await wait_for(pilot, lambda: app.results)  # three types swapped in on the way: no fixed pause
    assert [(s.type, s.params.get("argv")) if s else None for s in app.results] == [("command", ["true"])]


def shown_lines(app: App[Any], key: str) -> list[str]:
    """The rows the error line under ``key`` takes on screen, as a user reads them."""
    widget = app.screen.query_one(f"#error-{key}", Static)
    return [strip.text.rstrip() for strip in widget.render_lines(widget.region.reset_offset)] if widget.display else []


async def test_a_pasted_number_too_long_for_python_is_one_short_line_naming_the_field() -> None:
    """4,301 digits pasted into the item estimate: int() refused them (Python's 4,300-digit limit), and the
    message quoted all 4,301, some sixty rows that pushed the buttons off the screen; it called a whole
    number "not a whole number", and sat under the priority, naming no field."""
    app = LaunchApp(demo_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await replace(pilot, "#launch-items", "9" * 4301)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.results == []
        message = error_text(app, "spec-items")
        assert message == "item estimate: too large (4,301 digits)", message[:200]
        assert len(shown_lines(app, "spec-items")) == 1
        await replace(pilot, "#launch-items", "12x" + "7" * 5000)
        await pilot.pause()
        message = error_text(app, "spec-items")
        assert message == f"item estimate: {'12x' + '7' * 37 + '…'!r} is not a whole number", message[:200]
        assert app.screen.query_one("#launch-submit").region.bottom <= 40  # the buttons are on the screen


async def test_a_pasted_pair_without_equals_is_quoted_clipped_on_one_line() -> None:
    """The form's own message for a pair without '=' quoted the pasted pair whole, as many rows as it took."""
    app = LaunchApp({"command": handlers()["command"]}, initial_type="command")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await replace(pilot, "#param-argv", "echo hi")
        await replace(pilot, "#param-env", "A=1, " + "B" * 5000)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert error_text(app, "env") == f"{'B' * 40 + '…'!r}: expected KEY=VALUE"
        assert len(shown_lines(app, "env")) == 1


async def test_a_value_a_handlers_own_validator_quotes_is_clipped_on_one_line() -> None:
    """A handler's validator quoting the value (``{v!r} is not ...``, as the built-in ones do: a url, a
    table name) showed a pasted value whole, as many rows as it took."""
    app = LaunchApp({"named": HandlerSpec("named", named_handler, Named, "a named thing", "test")}, "named")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await replace(pilot, "#param-label", "x" * 5000 + "\x1b[2J")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert error_text(app, "label") == f"{'x' * 40 + '…'!r} is not a plain name"
        assert len(shown_lines(app, "label")) == 1


class Named(BaseModel):
    """A params model whose validator quotes the value, as the built-in handlers' do."""

    label: str = "a"

    @field_validator("label")
    @classmethod
    def _plain(cls, v: str) -> str:
        if not v.isalnum():
            raise ValueError(f"{v!r} is not a plain name")
        return v


async def named_handler(ctx: Any, p: Named) -> None:
    """Never run: the form only reads the params model."""


def test_a_message_is_one_line_of_clipped_values_whoever_wrote_it() -> None:
    """The helper every message passes through: control characters escaped, line breaks joined, each
    long unbroken run clipped with its quotes kept, a value the form clipped left as it is, and a long
    text with spaces cut at MESSAGE_MAX."""
    from tui.screens.launch import CLIP, MESSAGE_MAX, one_line, quoted

    assert one_line("Field required") == "Field required"
    assert one_line("a\nb\x1b[2J") == "a b\\x1b[2J"
    assert one_line(f"url {'h' * 500!r}: expected http://") == f"url {'h' * CLIP + '…'!r}: expected http://"
    assert one_line(f"{quoted('B' * 500)}: expected KEY=VALUE") == f"{quoted('B' * 500)}: expected KEY=VALUE"
    long = one_line("word " * 100)
    assert len(long) == MESSAGE_MAX + 1 and long.endswith("…")


async def test_a_cleared_optional_field_launches_none_as_its_placeholder_says(tmp_path: Path) -> None:
    """integration_testing's marker defaults to "integration" and may be None (every test). Cleared, the
    field shows "none"; it launched marker "integration" (the tests marked so only), and the form had no
    way to ask for every test."""
    app = LaunchApp(handlers(), initial_type="integration_testing")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        marker = app.screen.query_one("#param-marker", Input)
        assert marker.value == "integration"
        await replace(pilot, "#param-path", str(tmp_path))
        await replace(pilot, "#param-marker", "")
        assert marker.value == "" and marker.placeholder == "none"
        await pilot.press("ctrl+s")
        await pilot.pause()
    [spec] = app.results
    assert spec is not None and spec.params["marker"] is None
    # A field left at its default is launched with that default, and an empty one without a default
    # that is not None stays the default too (its placeholder shows no "none").
    params = handlers()["integration_testing"].params.model_validate(spec.params)
    assert params.max_failures is None and params.collect_timeout == 600


async def test_a_cleared_field_with_a_default_says_the_default_it_launches() -> None:
    """demo's items cleared showed an empty field, and the form launched 100 items (the default): the field
    now says so. What is launched is that default."""
    app = LaunchApp(demo_only())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await replace(pilot, "#param-items", "")
        await replace(pilot, "#param-seconds", "")
        items, seconds = (app.screen.query_one(f"#param-{n}", Input) for n in ("items", "seconds"))
        assert (items.value, items.placeholder) == ("", "100 (default)")
        assert (seconds.value, seconds.placeholder) == ("", "0.05 (default)")
        await pilot.press("ctrl+s")
        await pilot.pause()
    [spec] = app.results
    assert spec is not None
    params = handlers()["demo"].params.model_validate(spec.params)
    assert (params.items, params.seconds) == (100, 0.05)


async def test_a_handler_without_a_params_model_launches_with_its_json_field_empty() -> None:
    import tests.ops_for_tests  # noqa: F401 (registers thread_blocker: its params have no model)

    app = LaunchApp({"thread_blocker": handlers()["thread_blocker"]}, initial_type="thread_blocker")
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        assert app.screen.query_one("#param-json-params", Input).value == ""
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert app.results == [OperationSpec(type="thread_blocker")]


async def test_a_text_field_is_taken_as_typed_as_the_command_line_takes_it(settings: Settings) -> None:
    """A text param's spaces at either end are part of it, as ``--param body=' x '`` keeps them: the form
    alone dropped them (a body, a pattern with a leading space). A field of spaces alone shows nothing and
    is left to its default, as an empty one is."""
    types = {"load_testing": handlers()["load_testing"]}
    app = LaunchApp(types, initial_type="load_testing")
    async with app.run_test(size=(100, 40)) as pilot:
        await replace(pilot, "#param-url", "http://127.0.0.1:9/")
        await replace(pilot, "#param-body", " a b ")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.results)
        app.push_screen(LaunchScreen(types, "load_testing"), app.results.append)
        await pilot.pause()
        await replace(pilot, "#param-url", "http://127.0.0.1:9/")
        await replace(pilot, "#param-body", "   ")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: len(app.results) == 2)
    first, second = app.results
    assert first is not None and first.params["body"] == " a b "
    assert second is not None and second.params.get("body", "") == ""
