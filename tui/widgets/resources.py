"""The resources pane: system, engine and per-operation child processes, slots, queue, sparklines.

``update_data`` only stores the figures and asks for a repaint; ``render`` builds a dozen lines
of text sized to the pane (sparklines squeeze the whole history into the width left). At the
dashboard's 1 Hz that is a fraction of a millisecond per second.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.cells import set_cell_size
from rich.style import Style
from rich.text import Text

from engine import Priority

from .lines import ChangedLines

if TYPE_CHECKING:  # engine.resources imports psutil: not before the first frame
    from engine import ResourceSample

SPARK = "▁▂▃▄▅▆▇█"
LABEL = 8
"""Width of the label column."""
VALUE = 16
"""Width of the value column; sparklines take what is left."""
LABEL_CELLS = 20
"""Terminal cells of an operation's label in the child-process list."""
HOT = 90.0
"""Percent at which CPU and memory figures turn to the warning colour."""


def sparkline(values: Sequence[float], width: int, top: float = 100.0) -> str:
    """``values`` (oldest first) as ``width`` block characters on a fixed 0..top scale.

    With more values than columns, each column shows the highest value of its slice (a spike
    stays visible); with fewer, the line is right-aligned so the newest is always at the end.
    """
    if width <= 0 or not values:
        return ""
    n = len(values)
    cols = [max(values[i * n // width : (i + 1) * n // width]) for i in range(width)] if n > width else values
    top = top or 1.0
    last = len(SPARK) - 1
    line = "".join(SPARK[max(0, min(last, round(v / top * last)))] for v in cols)
    return line.rjust(width)


def size(n: int) -> str:
    """Bytes as ``512B``, ``85M``, ``15.6G``."""
    value = float(n)
    for unit in ("B", "K", "M"):
        if value < 1024:
            return f"{value:.0f}{unit}"
        value /= 1024
    return f"{value:.1f}G"


def span(history: Sequence[ResourceSample]) -> str:
    """How long the history covers: ``45s``, ``5m``."""
    if len(history) < 2:
        return ""
    seconds = history[-1].ts - history[0].ts
    return f"{seconds:.0f}s" if seconds < 90 else f"{seconds / 60:.0f}m"


class ResourcesPane(ChangedLines, can_focus=True):
    """Resource use at a glance; ``update_data`` about once a second."""

    COMPONENT_CLASSES = {
        "resources--label",
        "resources--dim",
        "resources--cpu",
        "resources--mem",
        "resources--engine",
        "resources--hot",
        "resources--ok",
        "resources--bad",
    }

    DEFAULT_CSS = """
    ResourcesPane {
        height: 1fr;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    ResourcesPane > .resources--label { text-style: bold; }
    ResourcesPane > .resources--dim { color: $text-muted; }
    ResourcesPane > .resources--cpu { color: $primary; }
    ResourcesPane > .resources--mem { color: $secondary; }
    ResourcesPane > .resources--engine { color: $accent; }
    ResourcesPane > .resources--hot { color: $warning; text-style: bold; }
    ResourcesPane > .resources--ok { color: $success; }
    ResourcesPane > .resources--bad { color: $text-error; text-style: bold reverse; }
    """

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.border_title = "Resources"
        self.sample: ResourceSample | None = None
        self.history: Sequence[ResourceSample] = ()
        self.slots_used = 0
        self.slots_max = 0
        self.queue_depth: dict[Priority, int] = {}
        self.store_ok = True
        self.labels: dict[str, str] = {}
        """How to name an operation in the child-process list (its handle and name); else its id."""

    def update_data(
        self,
        sample: ResourceSample,
        history: Sequence[ResourceSample],
        slots_used: int,
        slots_max: int,
        queue_depth: dict[Priority, int],
        store_ok: bool,
        refresh: bool = True,
    ) -> None:
        """Keep the figures and repaint (nothing is computed until the pane is drawn); ``refresh`` False:
        the caller repaints the pane (with the rest of the screen, in one frame: ``repaint_changed``)."""
        self.sample = sample
        self.history = history
        self.slots_used = slots_used
        self.slots_max = slots_max
        self.queue_depth = queue_depth
        if store_ok != self.store_ok:
            self.set_class(not store_ok, "-disconnected")
            self.border_subtitle = "" if store_ok else "store disconnected"
        self.store_ok = store_ok
        if refresh:
            self.refresh()

    # ---- drawing ---------------------------------------------------------------------------

    def _style(self, name: str) -> Style:
        return self.get_component_rich_style(f"resources--{name}", partial=True)

    def render(self) -> Text:
        width = self.content_region.width or self.size.width
        s = self.sample
        if s is None:
            return Text("sampling…", style=self._style("dim"))
        out = Text(no_wrap=True, overflow="ellipsis")
        if not self.store_ok:
            out.append(" STORE DISCONNECTED ", self._style("bad"))
            out.append(" showing the last known state\n", self._style("dim"))
        spark_w = max(0, width - LABEL - VALUE - 1)
        hist = self.history
        self._row(out, "CPU", f"{s.cpu_percent:3.0f}%", s.cpu_percent, "cpu", [h.cpu_percent for h in hist], spark_w)
        mem = f"{s.memory_percent:3.0f}% {size(s.memory_used)}/{size(s.memory_total)}"
        self._row(out, "Memory", mem, s.memory_percent, "mem", [h.memory_percent for h in hist], spark_w)
        engine = f"{s.process_cpu_percent:3.0f}% {size(s.process_rss)}"
        values = [h.process_cpu_percent for h in hist]
        self._row(out, "Engine", engine, s.process_cpu_percent, "engine", values, spark_w)
        if spark_w >= 12 and (label := span(hist)):
            out.append(" " * (LABEL + VALUE + 1) + f"{label + ' ago':<{spark_w - 3}}now\n", self._style("dim"))
        self._slots(out)
        self._queue(out)
        self._children(out, s)
        out.rstrip()
        return out

    def _row(self, out: Text, label: str, value: str, pct: float, kind: str, values: list[float], width: int) -> None:
        out.append(f"{label:<{LABEL}}", self._style("label"))
        out.append(f"{value:<{VALUE}}", self._style("hot") if pct >= HOT else Style())
        if width:
            out.append(" " + sparkline(values, width), self._style(kind))
        out.append("\n")

    def _slots(self, out: Text) -> None:
        used, most = self.slots_used, self.slots_max
        out.append(f"{'Slots':<{LABEL}}", self._style("label"))
        out.append(f"{used}/{most} ")
        if most <= 24:
            out.append("■" * min(used, most), self._style("ok"))
            out.append("□" * max(0, most - used), self._style("dim"))
        out.append("\n")

    def _queue(self, out: Text) -> None:
        """The queue by priority, the priorities that hold work only (as the status line counts only the
        statuses held): "high 0 · normal 2 · low 0" read as if something were high."""
        out.append(f"{'Queued':<{LABEL}}", self._style("label"))
        parts = sorted(((p, n) for p, n in self.queue_depth.items() if n), key=lambda kv: kv[0].rank)
        if not parts:
            out.append("nothing waiting\n", self._style("dim"))
            return
        for i, (priority, n) in enumerate(parts):
            if i:
                out.append(" · ", self._style("dim"))
            out.append(f"{priority.value} ", self._style("dim"))
            out.append(str(n), self._style("hot") if priority is Priority.HIGH else Style())
        out.append("\n")

    def _children(self, out: Text, s: ResourceSample) -> None:
        if not s.children:
            return
        out.append("Child processes of operations\n", self._style("label"))
        rows = sorted(s.children.items(), key=lambda kv: (-kv[1][0], kv[0]))
        height = self.content_region.height
        room = max(2, height - out.plain.count("\n")) if height else len(rows)
        shown = rows if len(rows) <= room else rows[: room - 1]
        for op_id, (cpu, rss) in shown:
            # Ids started in the same second share their first 8 characters: the handle tells them apart.
            # Cut and padded by terminal cells, not characters: a CJK name is two cells a character, and
            # its 20 characters pushed the CPU figure 20 cells right.
            out.append(f"  {set_cell_size(self.labels.get(op_id, op_id), LABEL_CELLS)}  ", self._style("dim"))
            out.append(f"{cpu:4.0f}% cpu ", self._style("hot") if cpu >= HOT else Style())
            out.append(f"{size(rss):>6}\n")
        if len(shown) < len(rows):
            out.append(f"  +{len(rows) - len(shown)} more\n", self._style("dim"))
