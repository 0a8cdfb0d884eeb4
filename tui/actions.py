"""The dashboard's actions as data: each key's title and help, and which operations it applies to.

No Textual here. Which status an action applies to is the engine's lifecycle table
(``engine.ACTIONS``); the dashboard adds only what a key itself needs (an operation selected; for
the priority keys, a priority left to move to).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from engine import Action, Priority, Status, applies

from . import format as fmt

if TYPE_CHECKING:  # the engine's models (pydantic): imported after the first frame
    from engine import Operation


class KeyAction(NamedTuple):
    title: str
    help: str
    action: Action | None = None
    """The lifecycle action behind the key (None: the key does not act on an operation's status)."""
    needs_op: bool = False
    """Applies only with an operation selected."""


KEY_ACTIONS: dict[str, KeyAction] = {
    "launch": KeyAction("Launch operation", "A form: type, params, priority, item estimate"),
    "cancel": KeyAction("Cancel operation", "Cancel the selected operation (asks first)", Action.CANCEL),
    "pause": KeyAction("Pause operation", "Pause the selected operation with a checkpoint", Action.PAUSE),
    "resume": KeyAction("Resume operation", "Resume the selected operation from its newest checkpoint", Action.RESUME),
    "remove": KeyAction(
        "Remove operation",
        "Remove the selected finished operation: its record, checkpoints and logs (asks first)",
        Action.REMOVE,
    ),
    "raise_priority": KeyAction("Raise priority", "Queued work: one priority level up", Action.PRIORITY),
    "lower_priority": KeyAction("Lower priority", "Queued work: one priority level down", Action.PRIORITY),
    "detail": KeyAction(
        "Show detail", "The selected operation's detail: step, timeout and why, failures", needs_op=True
    ),
    "filter": KeyAction("Filter operations", "Show only operations whose id, name, type, status or priority match"),
    "sort": KeyAction("Sort operations", "Cycle the sort: status, created, priority, progress, name, type"),
    "logs": KeyAction("Focus logs", "The logs pane, following live (a: one operation / all)"),
    "checkpoints": KeyAction(
        "Show checkpoints", "The checkpoints pane; enter resumes from the chosen one", needs_op=True
    ),
    "toggle_run_queue": KeyAction(
        "Watch only / run queued work", "Start no queued work here (only watch), or run it again"
    ),
    "cycle_theme": KeyAction("Next theme", "Cycle through the themes (remembered in the config)"),
    "help": KeyAction("Help", "Every key"),
    "quit": KeyAction("Quit", "Quit (running work: hand over to a background worker, pause, or wait)"),
}
"""Every dashboard action, in the order the help and the command palette list them."""

OTHER_KEYS = [
    ("1-4", "Show the detail, checkpoints, logs or resources pane"),
    ("esc", "Back to the table (clears the filter)"),
    ("tab", "Next pane (at 80 columns: the pane tabs, then left/right)"),
    ("a", "In the logs pane: one operation's log / every operation's"),
    ("ctrl+p", "Command palette: every action by name"),
    ("ctrl+z", "Suspend to the shell; fg comes back (work here stops meanwhile)"),
]
"""Keys the help lists besides the actions'."""

LIMIT = {"raise_priority": Priority.HIGH, "lower_priority": Priority.LOW}
"""The priority keys: the priority at which there is nowhere left to move."""


def key_applies(name: str, op: Operation | None) -> bool:
    """Whether the dashboard action ``name`` makes sense for the selected operation ``op``."""
    spec = KEY_ACTIONS.get(name)
    if spec is None:
        return True
    if spec.action is not None:
        if op is None or not applies(spec.action, op.status):
            return False
        return op.priority is not LIMIT[name] if name in LIMIT else True
    return op is not None or not spec.needs_op


def resume_question(op: Operation, seq: int, items: int, newer: int) -> str:
    """What resuming ``op`` from checkpoint ``seq`` (``items`` done then, ``newer`` checkpoints after
    it) will cost, asked before doing it. It names the operation by label and id, as cancel and remove
    do: the label alone (the type, for an unnamed one) did not tell two operations apart."""
    done = op.progress.done if op.progress is not None else items
    again = max(0, done - items)
    dropped = f"; {newer} newer checkpoint{'s' if newer != 1 else ''} dropped" if newer else ""
    return (
        f"Resume {op.label} ({op.id}) from checkpoint {seq} ({fmt.count(items)} items done)? "
        f"{fmt.count(again)} item{'s' if again != 1 else ''} will be done again{dropped}."
    )


def remove_refusal(op: Operation | None) -> str | None:
    """Why ``op`` cannot be removed, and what to do, in one line (None: it can be, or none is selected).
    Queued and running work is refused, as ``outlast rm`` refuses it: cancel it first."""
    if op is None or applies(Action.REMOVE, op.status):
        return None
    return f"{op.id} is {op.status.value}: cancel it first (c), then remove it (d)"


def remove_question(op: Operation) -> tuple[str, str]:
    """The question asked before removing ``op`` (naming it), and what goes with it."""
    kind = "" if op.label == op.type else f"{op.type}, "  # unnamed: its label is its type, said once
    question = f"Remove {op.label} ({op.id}, {kind}{op.status.value})?"
    lost = "Its record, checkpoints and logs are deleted from the store; files it wrote stay."
    if op.status in (Status.PAUSED, Status.INTERRUPTED):
        lost += " It can no longer be resumed."
    return question, lost
