"""Outlast's engine: long operations that finish or fail, with checkpoints and resume.

The public API. Importing it pulls in no UI (neither textual nor tui).
"""

from .config import Settings, load_settings
from .context import OperationContext, OperationStopped, TooManyFailures, TransientError
from .engine import Engine
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
    Priority,
    Progress,
    ProgressReported,
    StaleAttempt,
    Status,
    StatusChanged,
    StoreError,
    TimeoutExtended,
    WorkerInfo,
)
from .profiles import SEED_PROFILES, RetryPolicy, TimeoutProfile
from .registry import handlers, migrate_timeout_operation, operation
from .store import open_store

__version__ = "0.1.0"

__all__ = [
    "ACTIVE",
    "RESUMABLE",
    "SEED_PROFILES",
    "SETTLED",
    "TERMINAL",
    "Checkpoint",
    "CheckpointSaved",
    "Conflict",
    "Engine",
    "Event",
    "InvalidInput",
    "ItemFailed",
    "ItemFailure",
    "LogEmitted",
    "LogRecord",
    "NotFound",
    "Operation",
    "OperationContext",
    "OperationSpec",
    "OperationStopped",
    "OperationType",
    "OutlastError",
    "Priority",
    "Progress",
    "ProgressReported",
    "RetryPolicy",
    "Settings",
    "StaleAttempt",
    "Status",
    "StatusChanged",
    "StoreError",
    "TimeoutExtended",
    "TimeoutProfile",
    "TooManyFailures",
    "TransientError",
    "WorkerInfo",
    "__version__",
    "handlers",
    "load_settings",
    "migrate_timeout_operation",
    "open_store",
    "operation",
]
