"""The REST endpoints: submit, read, list, control, checkpoints, logs, types, health, metrics.

Handlers call only the engine's public API; its errors become statuses in ``app.py``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import Field, create_model

from .. import __version__
from ..engine import Engine, SubmitUnknown
from ..models import (
    ID_RE,
    SETTLED,
    Conflict,
    InvalidInput,
    NotFound,
    Operation,
    OperationSpec,
    Status,
    check_idempotency_key,
)
from ..registry import AnyParams, HandlerSpec, get_handler, handlers
from .metrics import CONTENT_TYPE
from .schemas import (
    CheckpointList,
    CheckpointOut,
    ControlOut,
    ErrorOut,
    Health,
    LogPage,
    OperationOut,
    OperationPage,
    ResumeIn,
    SubmitIn,
    SubmitOut,
    TypeOut,
)

CODE_TYPES = frozenset(
    {"command", "comprehensive_test_suite", "integration_testing", "performance_testing", "performance_profiling"}
)
"""Types that run code a client chooses (a command; pytest runs the conftest.py files under any path,
with any interpreter; a profiled program): refused unless the server was started with --allow-commands."""
SEED_ENDPOINTS = {
    "codebase/index": "codebase_indexing",
    "testing/comprehensive": "comprehensive_test_suite",
    "knowledge-base/populate": "kb_population",
    "security/scan": "security_scan",
}
"""The seed's typed submit endpoints and the operation type each one queues."""


class Forbidden(Exception):
    """The server was not started to allow this (code-running operations without --allow-commands)."""


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    words = {
        403: "Not allowed on this server: a code-running type without --allow-commands, or an output path "
        "outside the directories API clients may write to",
        404: "No operation matches the id",
        409: "The operation's state does not allow this",
        413: "The request body is over the server's limit (1 MiB unless --max-body-size says otherwise)",
        422: "Invalid input (the field or id is named)",
    }
    return {c: {"model": ErrorOut, "description": words[c]} for c in codes}


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]
OpId = Annotated[
    str,
    PathParam(
        description="An operation id, or a unique prefix of one",
        examples=["06b2w5rv"],
        json_schema_extra={"pattern": "^[0-9a-hjkmnp-tv-z]{1,13}$"},  # documented; the engine says what is wrong
    ),
]


def known_query(request: Request) -> None:
    """Refuse a query parameter the route does not take (422 naming it): a typo (``?stauts=running``)
    was ignored, and the listing answered with everything."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not request.query_params:
        return
    takes: set[str] = set()
    todo = [dependant]
    while todo:  # the route's own query parameters and its dependencies'
        d = todo.pop()
        takes |= {p.alias for p in d.query_params}
        todo += d.dependencies
    unknown = sorted(set(request.query_params) - takes)
    if unknown:
        which = f"it takes {', '.join(sorted(takes))}" if takes else "it takes none"
        raise InvalidInput(f"query.{unknown[0]}: unknown query parameter ({which})")


router = APIRouter(prefix="/api", dependencies=[Depends(known_query)])


async def resolve(engine: Engine, raw: str) -> str:
    """A full id, or the one id a prefix names (NotFound / InvalidInput otherwise)."""
    return raw if ID_RE.match(raw) else await engine.resolve(raw)


def _forbid_command(request: Request, type_: str) -> None:
    if type_ in CODE_TYPES and not request.app.state.allow_commands:
        raise Forbidden(f"{type_} operations run code and are disabled on this server (start it with --allow-commands)")


def _refuse_outputs(request: Request, type_: str, params: dict[str, Any]) -> None:
    refusal = request.app.state.output_roots.refusal(type_, params)
    if refusal:
        raise Forbidden(refusal)


def _prechecked(type_: str | None) -> Any:
    """A dependency of the submit routes: an output outside the roots is refused (403) from the body as
    sent, before the params are validated, so the answer does not depend on what the validators check
    first (nor tells whether a path outside the roots exists)."""

    async def precheck(request: Request) -> None:
        try:
            body = json.loads(await request.body() or b"null")
        except (ValueError, RecursionError):
            return  # not JSON (or nested past what can be parsed here): the validation says so
        if not isinstance(body, dict):
            return
        kind = type_ if type_ is not None else body.get("type")
        if isinstance(kind, str) and isinstance(body.get("params"), dict):
            _refuse_outputs(request, kind, body["params"])

    return Depends(precheck)


def _confine_outputs(request: Request, spec: OperationSpec) -> OperationSpec:
    """``spec`` with its output paths resolved; Forbidden when one is outside the roots API clients may write to."""
    params = get_handler(spec.type).parse_params(spec.params).model_dump()  # InvalidInput (422), like the engine
    _refuse_outputs(request, spec.type, params)
    return spec.model_copy(
        update={"params": {**spec.params, **request.app.state.output_roots.pinned(spec.type, params)}}
    )


async def _submit(request: Request, response: Response, engine: Engine, spec: OperationSpec) -> SubmitOut:
    _forbid_command(request, spec.type)
    keys = request.headers.getlist("idempotency-key")
    if len(keys) > 1:
        raise InvalidInput(f"Idempotency-Key header: sent {len(keys)} times; a request has one key")
    if keys:  # the header's key, as the body's: a request sent again gets the first one's answer
        try:
            key = check_idempotency_key(keys[0])
        except InvalidInput as e:
            raise InvalidInput(f"Idempotency-Key header: {e}") from None
        if spec.idempotency_key not in (None, key):
            raise InvalidInput("idempotency key: the Idempotency-Key header and the body name different keys")
        spec = spec.model_copy(update={"idempotency_key": key})
    if (
        spec.type == "load_testing"
        and spec.params.get("allow_remote") not in (None, False, "false")
        and not (request.app.state.allow_commands)
    ):  # the server would load any host a client names
        raise Forbidden("load_testing with allow_remote is disabled on this server (start it with --allow-commands)")
    if spec.type == "demo" and spec.params.get("crash_at") is not None and not request.app.state.allow_commands:
        # A demo of a crash kills the process that runs it: this server, or a worker on its store, and
        # every other operation running there (left interrupted), at any client's request.
        raise Forbidden(
            "demo with crash_at kills the process that runs it: off on this server (start it with --allow-commands)"
        )
    try:
        op, before = await engine.submit_once(_confine_outputs(request, spec))
    except SubmitUnknown as e:
        # Not "not done": the create may land when the store answers, and a client retrying on that word
        # ran the work twice. The id is known: say where to look first (and point there, as a 202 does).
        url = f"/api/operations/{e.operation_id}"
        detail = f"{e}; check GET {url} once the store answers, before submitting it again (404: not created)"
        raise HTTPException(503, detail, headers={"Location": url}) from None
    url = f"/api/operations/{op.id}"
    response.headers["Location"] = url
    if before:  # the same answer as the first request's, said to be one (nothing was queued now)
        response.headers["Idempotent-Replayed"] = "true"
    return SubmitOut(operation_id=op.id, type=op.type, status=op.status, url=url)


@router.post(
    "/operations",
    status_code=202,
    response_model=SubmitOut,
    responses=_errors(403, 409, 413, 422),
    summary="Queue an operation of any registered type",
    tags=["operations"],
    dependencies=[_prechecked(None)],
)
async def submit(request: Request, response: Response, engine: EngineDep, spec: OperationSpec) -> SubmitOut:
    return await _submit(request, response, engine, spec)


def typed_router() -> APIRouter:
    """The seed's typed submit endpoints. Built when the app is (after plugins are loaded), so a
    registered handler's params model documents the body in /openapi.json."""
    r = APIRouter(prefix="/api", dependencies=[Depends(known_query)])
    known = handlers()
    for path, type_ in SEED_ENDPOINTS.items():
        _typed_endpoint(r, path, type_, _body_model(type_, known.get(type_)))
    return r


def _body_model(type_: str, spec: HandlerSpec | None) -> type[SubmitIn]:
    if spec is None or spec.params is AnyParams:
        return SubmitIn
    required = any(f.is_required() for f in spec.params.model_fields.values())
    default = Field(...) if required else Field(default_factory=spec.params)
    name = "".join(w.capitalize() for w in type_.split("_")) + "Submit"
    return create_model(name, __base__=SubmitIn, params=(spec.params, default))


def _typed_endpoint(r: APIRouter, path: str, type_: str, model: type[SubmitIn]) -> None:
    async def endpoint(request: Request, response: Response, engine: EngineDep, body: Any = None) -> SubmitOut:
        spec = body.spec(type_) if body is not None else OperationSpec(type=type_)
        return await _submit(request, response, engine, spec)

    endpoint.__annotations__["body"] = Annotated[model | None, Body()]
    r.add_api_route(
        f"/operations/{path}",
        endpoint,
        methods=["POST"],
        status_code=202,
        response_model=SubmitOut,
        responses=_errors(403, 409, 413, 422),
        summary=f"Queue a {type_} operation",
        operation_id=f"submit_{type_}",
        tags=["operations"],
        dependencies=[_prechecked(type_)],
    )


@router.get(
    "/operations/",
    response_model=OperationPage,
    responses=_errors(422),
    summary="List operations, newest first",
    tags=["operations"],
)
async def list_operations(
    engine: EngineDep,
    status: Annotated[list[Status] | None, Query(description="Only these statuses (repeat for several)")] = None,
    types: Annotated[list[str] | None, Query(alias="type", description="Only these types (repeat for several)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> OperationPage:
    ops = await engine.list_operations(statuses=status, types=types, limit=limit + 1, offset=offset)
    more = len(ops) > limit
    return OperationPage(
        items=[OperationOut.of(o) for o in ops[:limit]],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if more else None,
    )


router.add_api_route(
    "/operations",
    list_operations,
    methods=["GET"],
    response_model=OperationPage,
    responses=_errors(422),
    summary="List operations, newest first (the same as /api/operations/)",
    operation_id="list_operations_no_slash",
    tags=["operations"],
)


@router.get(
    "/operations/{op_id}",
    response_model=OperationOut,
    responses=_errors(404, 422),
    summary="One operation's record",
    tags=["operations"],
)
async def get_operation(engine: EngineDep, op_id: OpId) -> OperationOut:
    return OperationOut.of(await engine.get(await resolve(engine, op_id)))


def _control_out(op: Operation, action: str) -> ControlOut:
    pending = op.status not in SETTLED and not (action == "resume" and op.status is Status.QUEUED)
    if action == "resume":
        message = op.status_message or "queued again"
    elif pending:
        message = f"{action} requested: the operation stops at its next safe point, with a checkpoint"
    else:
        message = op.status_message or op.status.value
    return ControlOut(operation_id=op.id, action=action, status=op.status, pending=pending, message=message)  # type: ignore[arg-type]


_PENDING = "Requested: a running operation stops at its next safe point"


def _control_route(action: str) -> None:
    async def endpoint(engine: EngineDep, op_id: OpId, response: Response) -> ControlOut:
        full = await resolve(engine, op_id)
        op = await (engine.cancel(full) if action == "cancel" else engine.pause(full))
        out = _control_out(op, action)
        response.status_code = 202 if out.pending else 200
        return out

    router.add_api_route(
        f"/operations/{{op_id}}/{action}",
        endpoint,
        methods=["POST"],
        response_model=ControlOut,
        responses={202: {"model": ControlOut, "description": _PENDING}, **_errors(404, 409, 422)},
        summary=f"{action.capitalize()} an operation (a running one stops at its next safe point, with a checkpoint)",
        operation_id=f"{action}_operation",
        tags=["control"],
    )


for _action in ("cancel", "pause"):
    _control_route(_action)


ALREADY = "already queued (by another client, or never stopped): it runs when a slot is free"
"""A resume's answer for work found queued."""


@router.post(
    "/operations/{op_id}/resume",
    status_code=202,
    response_model=ControlOut,
    responses=_errors(403, 404, 409, 413, 422),
    summary="Queue a stopped operation again, from its newest valid checkpoint or the one given",
    tags=["control"],
)
async def resume_operation(
    request: Request, engine: EngineDep, op_id: OpId, body: Annotated[ResumeIn | None, Body()] = None
) -> ControlOut:
    full = await resolve(engine, op_id)
    stored = await engine.get(full)
    _forbid_command(request, stored.type)
    # Its outputs again: checked when it was submitted, a directory on the way may have been made a link
    # out of the roots since (by another operation: a backup restoring one). Nothing is changed if so.
    refusal = request.app.state.output_roots.refusal(stored.type, stored.params)
    if refusal is not None:
        raise Forbidden(f"not resumed: {refusal}")
    body = body or ResumeIn()
    try:
        op = await engine.resume(full, body.checkpoint, body.profile)
    except Conflict:
        # Queued already, or by another client since (two resumes at once): as this one would have left it, as
        # `outlast resume --queue` answers. Not with a checkpoint or a profile: the other did not apply them.
        now = await engine.get(full)
        if now.status is not Status.QUEUED or body.checkpoint is not None or body.profile:
            raise
        return ControlOut(operation_id=now.id, action="resume", status=now.status, pending=False, message=ALREADY)
    return _control_out(op, "resume")


@router.get(
    "/operations/{op_id}/checkpoints",
    response_model=CheckpointList,
    responses=_errors(404, 422),
    summary="An operation's checkpoints, newest first (without their state: GET one checkpoint for it)",
    tags=["operations"],
)
async def list_checkpoints(engine: EngineDep, op_id: OpId) -> CheckpointList:
    full = await resolve(engine, op_id)
    await engine.get(full)  # NotFound for an id that is well formed but unknown
    return CheckpointList(operation_id=full, checkpoints=[CheckpointOut.of(c) for c in await engine.checkpoints(full)])


@router.get(
    "/operations/{op_id}/checkpoints/{seq}",
    response_model=CheckpointOut,
    responses=_errors(404, 422),
    summary="One checkpoint in full: its state (intermediate_results) and context_data",
    tags=["operations"],
)
async def get_checkpoint(
    engine: EngineDep, op_id: OpId, seq: Annotated[int, PathParam(ge=1, le=2**53)]
) -> CheckpointOut:
    full = await resolve(engine, op_id)
    await engine.get(full)
    found = await engine.store.load_checkpoint(full, seq)
    if found is None or found[0].seq != seq:
        raise NotFound(f"operation {full} has no valid checkpoint {seq}")
    return CheckpointOut.of(found[0], full=True)


@router.get(
    "/operations/{op_id}/logs",
    response_model=LogPage,
    responses=_errors(404, 422),
    summary="An operation's log records from an offset (pass next_offset back to follow)",
    tags=["operations"],
)
async def read_logs(
    engine: EngineDep,
    op_id: OpId,
    offset: Annotated[int, Query(ge=0, le=2**53)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> LogPage:
    full = await resolve(engine, op_id)
    await engine.get(full)
    # The records right after ``offset``: the last ``limit`` of all those after it (a tail) passed over the
    # rest, and a client paging on from next_offset never saw them (4,000 of 5,000 lines).
    records, next_offset = await engine.logs(full, offset, first=limit)
    return LogPage(operation_id=full, records=records, next_offset=next_offset)


def params_schema(handler: HandlerSpec) -> dict[str, Any]:
    """The JSON schema of a type's params; for a plugin's model that has none (a field of a class of its own,
    ``arbitrary_types_allowed``), an object schema saying so: pydantic's error made ``GET /api/types`` a 500 for
    every type, one plugin's model being enough."""
    try:
        return handler.params.model_json_schema()
    except Exception as e:  # PydanticInvalidForJsonSchema, or a schema hook of the plugin's that raised
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"type": "object", "title": handler.params.__name__, "description": f"no JSON schema: {why}"}


@router.get("/types", response_model=list[TypeOut], summary="Registered operation types", tags=["meta"])
async def list_types(engine: EngineDep) -> list[TypeOut]:
    return [
        TypeOut(
            type=t,
            description=h.description,
            source=h.source,
            params_schema=params_schema(h),
            profile=engine.settings.profile(t).model_dump(mode="json"),
        )
        for t, h in handlers().items()
    ]


@router.get("/health", response_model=Health, summary="The server is up; its store and slots", tags=["meta"])
async def health(engine: EngineDep) -> Health:
    store = engine.store.url.rsplit("@", 1)[-1]  # never a password from a redis URL
    return Health(
        version=__version__,
        store=store,
        slots=engine.max_concurrent,
        store_slots=await engine.store.get_slots(),
        running=len(engine.running_ids),
    )


metrics_router = APIRouter()


@metrics_router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
    summary="Prometheus metrics",
    tags=["meta"],
)
async def metrics(request: Request) -> Response:
    body = await request.app.state.metrics.render()
    return Response(body, media_type=CONTENT_TYPE)
