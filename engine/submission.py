"""What a submit does before the store: the spec checked, its type's handler found, its params checked,
its profile and timeout resolved, the record of the new operation built (a new id, queued now).

One function for every way an operation is submitted: ``Engine.submit``, and the quick path of
``outlast submit`` (a local store written without an engine: ``store.quick.quick_create``), so that both
store the same record, and refuse the same input with the same line.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from .models import InvalidInput, Operation, OperationSpec, Status, new_id
from .registry import get_handler, handler_of

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .config import Settings
    from .registry import HandlerSpec


def params_context(store: object) -> dict[str, Any] | None:
    """What a type's params may check beyond themselves at submit: the local store's state dir, where its
    default files are (kb_optimization's default knowledge base). None on Redis: the worker that runs it
    has a state dir of its own, which the submitting process does not know."""
    state_dir = getattr(store, "state_dir", None)
    return {"state_dir": str(state_dir)} if state_dir else None


def _stored_params(handler: HandlerSpec, params: BaseModel, context: dict[str, Any]) -> dict[str, Any]:
    """``params`` as stored, refused (InvalidInput naming the field) when the attempt could not read them back: a
    plugin's model whose default does not fit its own type (``x: int = "all"``) was stored with a pydantic
    warning and its source line on stderr, and every such operation failed when it ran, on a worker, later."""
    try:
        return params.model_dump(mode="json", warnings="error")
    except ValueError:  # PydanticSerializationError: a value the model holds is not of its field's type
        stored = params.model_dump(mode="json", warnings=False)
    try:
        handler.parse_params(stored, context)  # what the attempt does with them; a union's other form passes
    except InvalidInput as e:
        raise InvalidInput(f"{e} (the value its params model gave it: a default of another type?)") from None
    return stored


def new_operation(
    spec: OperationSpec | dict[str, Any], settings: Settings, context: dict[str, Any] | None
) -> Operation:
    """The queued operation ``spec`` asks for, not stored yet; InvalidInput (one line) when the spec, its
    type or its params are refused. ``context``: what the type's params may check beyond themselves (the
    local store's state dir: ``params_context``); ``timeout_limit`` is added to it: (seconds, "timeout" or
    "max_timeout"), the longest the operation may run and the setting that says so."""
    if isinstance(spec, OperationSpec):  # checked again, as a copy: a spec changed after it was built
        spec = spec.model_dump(warnings=False)  # (a field set, its params dict edited) skipped its checks
    try:
        spec = OperationSpec.model_validate(spec)
    except ValueError as e:  # pydantic's ValidationError is one: imported only then (2 us a submit)
        from pydantic import ValidationError

        from .profiles import one_line

        if not isinstance(e, ValidationError):
            raise
        raise InvalidInput(f"operation spec: {one_line(e)}") from None
    handler = get_handler(spec.type)
    profile = settings.profile(spec.type).merged(spec.profile)
    # and the longest it may run (its fixed timeout, else its max_timeout): a run that cannot fit in it
    # (load_testing's duration) is refused here, not stopped as timed out when it gets there
    limit = {"timeout_limit": (spec.timeout, "timeout") if spec.timeout else (profile.max_timeout, "max_timeout")}
    params = handler.parse_params(spec.params, {**(context or {}), **limit})
    stored = _stored_params(handler, params, {**(context or {}), **limit})
    if spec.total_items is None and handler.estimated_items is not None:
        spec = spec.model_copy(update={"total_items": handler.estimated_items})  # @migrate_timeout_operation's
    now = time.time()
    op = Operation(
        id=new_id(),
        type=spec.type,
        name=spec.name,
        params=stored,
        priority=spec.priority,
        profile=profile.model_dump(mode="json"),
        profile_overrides=spec.profile,
        tags=spec.tags,
        status=Status.QUEUED,
        created_at=now,
        queued_at=now,
        updated_at=now,
        total_items=spec.total_items,
        timeout=spec.timeout,
        effective_timeout=spec.timeout or profile.effective_timeout(spec.total_items),
        timeout_basis=("fixed by --timeout" if spec.timeout else profile.basis(spec.total_items)),
        idempotency_key=spec.idempotency_key,
        handler=handler_of(spec.type),
    )
    if op.params:
        try:
            json.dumps(op.params)
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"{spec.type} params: not JSON-serialisable ({e})") from None
    return op
