"""Outlast's engine: long operations that finish or fail, with checkpoints and resume.

The public API. Importing it pulls in no UI (neither textual nor tui).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names below are, for type checkers; at run time they load on first use
    from .config import Settings, load_settings, save_setting
    from .context import OperationContext, OperationFailed, OperationStopped, TooManyFailures, TransientError
    from .engine import Engine
    from .errors import DamagedRecord, StoreLost
    from .exitcodes import ExitCode
    from .handoff import run_by, taker, wait_taken
    from .ids import unique_prefix_lengths
    from .lifecycle import ACTIONS, Action, applies
    from .limits import Priority
    from .models import (
        ACTIVE,
        RESUMABLE,
        SETTLED,
        TERMINAL,
        Checkpoint,
        CheckpointSaved,
        Conflict,
        Event,
        InvalidInput,
        ItemFailed,
        ItemFailure,
        LogEmitted,
        LogRecord,
        NotFound,
        Operation,
        OperationSpec,
        OperationType,
        OutlastError,
        Progress,
        ProgressReported,
        StaleAttempt,
        Status,
        StatusChanged,
        StoreError,
        TimeoutExtended,
        WorkerInfo,
    )
    from .paths import config_dir
    from .processes import stopped_note
    from .profiles import SEED_PROFILES, RetryPolicy, TimeoutProfile, error_message
    from .registry import HandlerSpec, handlers, migrate_timeout_operation, operation, runnable_types
    from .resources import ResourceSample
    from .store import open_store
    from .threads import LoopThreads

_WHERE = {
    **dict.fromkeys(("Settings", "load_settings", "save_setting"), "config"),
    # Where config.config_dir and models.Priority come from: the dashboard's first frame loads no pydantic.
    "config_dir": "paths",
    "Priority": "limits",
    **dict.fromkeys(
        ("OperationContext", "OperationFailed", "OperationStopped", "TooManyFailures", "TransientError"), "context"
    ),
    "Engine": "engine",
    "ExitCode": "exitcodes",
    "LoopThreads": "threads",
    **dict.fromkeys(
        ("ACTIVE", "RESUMABLE", "SETTLED", "TERMINAL", "Status", "ACTIONS", "Action", "applies"), "lifecycle"
    ),
    "unique_prefix_lengths": "ids",
    **dict.fromkeys(("run_by", "taker", "wait_taken"), "handoff"),
    "ResourceSample": "resources",
    "HandlerSpec": "registry",
    **dict.fromkeys(
        (
            "Conflict",
            "DamagedRecord",
            "InvalidInput",
            "NotFound",
            "OutlastError",
            "StaleAttempt",
            "StoreError",
            "StoreLost",
        ),
        "errors",
    ),
    **dict.fromkeys(
        (
            "Checkpoint",
            "CheckpointSaved",
            "Event",
            "ItemFailed",
            "ItemFailure",
            "LogEmitted",
            "LogRecord",
            "Operation",
            "OperationSpec",
            "OperationType",
            "Progress",
            "ProgressReported",
            "StatusChanged",
            "TimeoutExtended",
            "WorkerInfo",
        ),
        "models",
    ),
    **dict.fromkeys(("SEED_PROFILES", "RetryPolicy", "TimeoutProfile", "error_message"), "profiles"),
    **dict.fromkeys(("handlers", "migrate_timeout_operation", "operation", "runnable_types"), "registry"),
    "open_store": "store",
    "stopped_note": "processes",
}
"""Each public name and the module it lives in: imported on first use, so that ``outlast --help``
(and anything else that needs one corner of the engine) does not pay for pydantic models, psutil,
asyncio and the stores at start-up."""


def __getattr__(name: str) -> Any:
    """A public name on first use (PEP 562); cached in the module afterwards."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__version__ = "0.1.0"

__all__ = [
    "ACTIONS",
    "ACTIVE",
    "RESUMABLE",
    "SEED_PROFILES",
    "SETTLED",
    "TERMINAL",
    "Action",
    "Checkpoint",
    "CheckpointSaved",
    "Conflict",
    "DamagedRecord",
    "Engine",
    "Event",
    "ExitCode",
    "HandlerSpec",
    "InvalidInput",
    "ItemFailed",
    "ItemFailure",
    "LogEmitted",
    "LogRecord",
    "LoopThreads",
    "NotFound",
    "Operation",
    "OperationContext",
    "OperationFailed",
    "OperationSpec",
    "OperationStopped",
    "OperationType",
    "OutlastError",
    "Priority",
    "Progress",
    "ProgressReported",
    "ResourceSample",
    "RetryPolicy",
    "Settings",
    "StaleAttempt",
    "Status",
    "StatusChanged",
    "StoreError",
    "StoreLost",
    "TimeoutExtended",
    "TimeoutProfile",
    "TooManyFailures",
    "TransientError",
    "WorkerInfo",
    "__version__",
    "applies",
    "config_dir",
    "error_message",
    "handlers",
    "load_settings",
    "migrate_timeout_operation",
    "open_store",
    "operation",
    "run_by",
    "runnable_types",
    "save_setting",
    "stopped_note",
    "taker",
    "unique_prefix_lengths",
    "wait_taken",
]
