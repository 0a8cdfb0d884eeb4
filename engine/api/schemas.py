"""Request and response bodies of the HTTP API, and the WebSocket messages (pydantic, no FastAPI).

Request bodies reuse the engine's own models (``OperationSpec``) so the API accepts exactly what
the CLI does and names the same field when something is wrong.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from ..autobot import seed_checkpoint, seed_progress
from ..models import Checkpoint, InvalidInput, LogRecord, NumbersNotBools, Operation, OperationSpec, Progress, Status
from ..profiles import one_line


class ErrorOut(BaseModel):
    """Every error: one line saying what is wrong (the field, the id, the state)."""

    detail: str


class _SubmitBase(NumbersNotBools):
    model_config = ConfigDict(extra="forbid")

    def spec(self, type_: str) -> OperationSpec:
        """The OperationSpec of ``type_``: InvalidInput (one line) when the engine's model refuses it."""
        try:
            return OperationSpec(type=type_, **self.model_dump())  # not mode="json": it would turn inf into null
        except ValidationError as e:
            raise InvalidInput(f"body: {one_line(e)}") from None


SubmitIn = create_model(
    "SubmitIn",
    __base__=_SubmitBase,
    __doc__="The body of the typed submit endpoints: an OperationSpec without its type (set by the path).",
    **{name: (f.annotation, f) for name, f in OperationSpec.model_fields.items() if name != "type"},  # type: ignore[call-overload]
)
"""The fields, defaults and limits are OperationSpec's, so both endpoints accept the same bodies."""


class SubmitOut(BaseModel):
    operation_id: str
    type: str
    status: Status
    url: str
    """Where the record is: ``GET`` it, or open ``{url}/progress`` as a WebSocket."""


class ResumeIn(NumbersNotBools):
    model_config = ConfigDict(extra="forbid")

    checkpoint: int | None = Field(default=None, ge=0, validation_alias=AliasChoices("checkpoint", "checkpoint_id"))
    """The checkpoint seq to resume from (default: the newest valid one). Also taken as ``checkpoint_id``,
    the name the seed's API and the checkpoint listings give it (``{"checkpoint_id": "3"}``)."""
    profile: dict[str, Any] = Field(default_factory=dict)
    """Timeout profile changes from this attempt on (``{"max_timeout": 28800, "failure_threshold": 20}``)."""

    @model_validator(mode="before")
    @classmethod
    def _one_name(cls, data: Any) -> Any:
        """Both names at once: which one was meant is not known (pydantic said "Extra inputs are not permitted"
        of the second, as if it were not a name of this field)."""
        if isinstance(data, dict) and "checkpoint" in data and "checkpoint_id" in data:
            raise ValueError("give the checkpoint as checkpoint or as checkpoint_id, not both")
        return data


class ControlOut(BaseModel):
    """The answer to cancel, pause and resume."""

    operation_id: str
    action: Literal["cancel", "pause", "resume"]
    status: Status
    """The status now. A running operation stops at its next safe point: ``pending`` is then true."""
    pending: bool
    message: str


class ProgressOut(BaseModel):
    """Progress as the WebSocket and the records show it: ``percent`` is computed; the seed's field names
    (AutoBot's ``OperationProgress``: ``current_step``, ``progress_percentage``, ``status_message``, ...)
    come beside Outlast's own."""

    percent: float | None = None
    done: int = 0
    total: int | None = None
    failed: int = 0
    skipped: int = 0
    rate: float | None = None
    eta: float | None = None
    step: str | None = None
    message: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    updated_at: float | None = None
    current_step: str = ""
    progress_percentage: float = 0.0
    processed_items: int = 0
    total_items: int = 0
    estimated_completion: str | None = None
    """ISO 8601, when the rate gives an ETA."""
    performance_metrics: dict[str, Any] = Field(default_factory=dict)
    status_message: str = ""
    detailed_status: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, p: Progress, op_id: str = "", status: Status | None = None) -> ProgressOut:
        seed = seed_progress(op_id, p, None if status is None else status.value)
        del seed["operation_id"]
        return cls(
            **seed,
            percent=p.percent,
            done=p.done,
            total=p.total,
            failed=p.failed,
            skipped=p.skipped,
            rate=p.rate,
            eta=p.eta,
            step=p.step,
            message=p.message,
            metrics=dict(p.metrics),
            updated_at=p.updated_at,
        )


class OperationOut(Operation):
    """The stored record, with its progress as ``ProgressOut`` (percent included)."""

    progress: ProgressOut = Field(default_factory=ProgressOut)  # type: ignore[assignment]

    @classmethod
    def of(cls, op: Operation) -> OperationOut:
        data = {k: getattr(op, k) for k in Operation.model_fields if k != "progress"}
        return cls.model_construct(**data, progress=ProgressOut.of(op.progress, op.id, op.status))


class OperationPage(BaseModel):
    items: list[OperationOut]
    limit: int
    offset: int
    next_offset: int | None
    """The offset of the next page, or null when this page is the last."""


class CheckpointOut(Checkpoint):
    """A checkpoint, with the seed's field names beside Outlast's (AutoBot's ``OperationCheckpoint``):
    ``checkpoint_id`` (the seq), ``timestamp`` (ISO 8601), ``intermediate_results`` (``state``).

    A listing leaves ``state``/``intermediate_results`` and ``context_data`` out (null, ``full`` false):
    they can be large; ``GET /api/operations/{id}/checkpoints/{seq}`` gives one checkpoint in full."""

    state: dict[str, Any] | None = None  # type: ignore[assignment]
    context_data: dict[str, Any] | None = None  # type: ignore[assignment]
    checkpoint_id: str
    timestamp: str | None = None
    intermediate_results: dict[str, Any] | None = None
    full: bool = False

    @classmethod
    def of(cls, cp: Checkpoint, full: bool = False) -> CheckpointOut:
        data = {k: getattr(cp, k) for k in Checkpoint.model_fields}
        data.update(seed_checkpoint(cp, full))
        if not full:
            data["state"] = data["context_data"] = None
        return cls.model_construct(**data)


class CheckpointList(BaseModel):
    operation_id: str
    checkpoints: list[CheckpointOut]
    """Newest first, without ``state``/``intermediate_results`` and ``context_data`` (see CheckpointOut)."""


class LogPage(BaseModel):
    operation_id: str
    records: list[LogRecord]
    next_offset: int
    """Pass as ``offset`` to read what was written after this page."""


class TypeOut(BaseModel):
    type: str
    description: str
    source: str
    params_schema: dict[str, Any]
    profile: dict[str, Any]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    store: str
    slots: int
    """Operations this server's engine runs at once."""
    store_slots: int | None = None
    """Operations every engine on the store runs at once together (``outlast slots``); None: not set."""
    running: int


# ---- WebSocket messages (documented here; WebSockets are not part of OpenAPI) --------------------


class ProgressUpdate(BaseModel):
    """``data`` is the seed's message body (AutoBot's ``OperationProgress``), so a client written for it
    reads ``update.data.progress_percentage`` and ``update.data.status_message`` unchanged."""

    type: Literal["progress_update"] = "progress_update"
    operation_id: str
    status: Status
    progress: ProgressOut
    timestamp: float
    data: dict[str, Any]


class StatusMessage(BaseModel):
    type: Literal["status_changed"] = "status_changed"
    operation_id: str
    status: Status
    previous: Status | None = None
    message: str | None = None
    timestamp: float


class FinalMessage(BaseModel):
    """Sent once when an operation settles (completed, failed, cancelled, timed out, paused, interrupted)."""

    type: Literal["final"] = "final"
    operation_id: str
    status: Status
    result: Any = None
    error: str | None = None
    message: str | None = None
    resumable: bool
    progress: ProgressOut
    timestamp: float
