"""WebSockets: live progress of one operation or of all of them.

One operation: a ``snapshot`` message (the record), then ``status_changed``, ``progress_update``,
``checkpoint_saved``, ``timeout_extended``, ``item_failed`` and ``log`` messages, and a ``final``
message when it settles; then the server closes the socket (code 1000), but after an ``interrupted`` one (a
worker may take the operation up again: the messages go on until the next ``final``). One settled already gets its
``snapshot``, its last ``progress_update`` and its ``final``. An unknown id gets an
``error`` message and close code 4404; a malformed one 4422. An operation removed from the store before
its ``final`` was sent (``outlast rm`` just after it settled) gets the same ``error`` and 4404.

All operations: a ``snapshot`` of every active one (however many), then the same messages for every operation
(no logs), with a ``final`` per operation as it settles, however long the queue; one removed before its
``final`` could be read (settled and removed between two polls) gets that ``error`` message instead (with
its ``operation_id``); the socket stays open. A large snapshot
comes in several ``snapshot`` messages, ``more`` true on all but the last.

Every message fits in FRAME_MAX bytes, well under the 1 MiB clients accept by default: fields too
large for it are null and named in ``truncated``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ..engine import Engine
from ..humanize import escape_controls
from ..models import ACTIVE, SETTLED, InvalidInput, NotFound, Status
from .progress import ProgressHub, Subscriber, final_message, progress_message
from .routes import resolve
from .schemas import OperationOut

ws_router = APIRouter()
_CLOSED = (WebSocketDisconnect, RuntimeError, ConnectionError)


def _parts(ws: WebSocket) -> tuple[Engine, ProgressHub]:
    return ws.app.state.engine, ws.app.state.hub


async def _accept(ws: WebSocket) -> None:
    """Accept; a client that sent its token as subprotocols ``["bearer", TOKEN]`` gets "bearer" back."""
    await ws.accept(subprotocol="bearer" if "bearer" in (ws.scope.get("subprotocols") or []) else None)


FRAME_MAX = 512 << 10
"""Bytes of one message the server sends: half the 1 MiB that WebSocket clients accept by default."""
_KEEP = frozenset({"type", "operation_id", "id", "status", "timestamp", "truncated", "more"})
"""Fields never left out of a message trimmed to fit a frame: what says what the message is about."""


def _encode(msg: Any) -> str:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def trim(msg: dict[str, Any], limit: int = FRAME_MAX) -> dict[str, Any]:
    """``msg``, or a copy whose JSON fits in ``limit`` bytes.

    What does not fit (a large result, params, tags, metrics or error) is set to null, largest first,
    and named in ``truncated`` (``"operation.params"``); the full record is at ``GET /api/operations/ID``.
    """
    if _size(msg) <= limit:
        return msg
    msg = dict(msg)
    fields: list[tuple[int, tuple[str, ...]]] = []
    for key, value in msg.items():
        if key in _KEEP:
            continue
        if isinstance(value, dict) and key in ("operation", "progress"):
            msg[key] = value = dict(value)
            fields += [(_size(v), (key, k)) for k, v in value.items() if k not in _KEEP]
        else:
            fields.append((_size(value), (key,)))
    msg["truncated"] = truncated = []
    for _, path in sorted(fields, reverse=True):
        holder = msg[path[0]] if len(path) == 2 else msg
        holder[path[-1]] = None
        truncated.append(".".join(path))
        if _size(msg) <= limit:
            break
    return msg


def snapshot_frames(records: list[dict[str, Any]], limit: int = FRAME_MAX) -> list[str]:
    """The all-operations snapshot as frames of at most ``limit`` bytes: ``more`` is true on all but the last."""
    frames: list[str] = []
    batch: list[str] = []
    room = limit - _size({"type": "snapshot", "more": False, "operations": []})
    for record in records:
        text = _encode(trim(record, limit // 2))
        if batch and sum(len(t.encode()) + 1 for t in batch) + len(text.encode()) > room:
            frames.append('{"type":"snapshot","more":true,"operations":[' + ",".join(batch) + "]}")
            batch = []
        batch.append(text)
    frames.append('{"type":"snapshot","more":false,"operations":[' + ",".join(batch) + "]}")
    return frames


async def send(ws: WebSocket, msg: dict[str, Any]) -> None:
    """Send ``msg`` in one frame that every client accepts (trimmed to FRAME_MAX bytes)."""
    text = _encode(msg)
    if len(text) * 4 > FRAME_MAX and len(text.encode()) > FRAME_MAX:  # 4: the most bytes a character takes
        text = _encode(trim(msg))
    await ws.send_text(text)


def _record(op: Any) -> dict[str, Any]:
    return OperationOut.of(op).model_dump(mode="json")


def ends_stream(msg: dict[str, Any]) -> bool:
    """A ``final`` ends a one-operation stream, but not one saying ``interrupted``: that is where a process that
    died left the operation, and a worker takes it up again without anyone asking (a Redis worker whose lease
    ran out, any engine with ``auto_resume``), under the same id. The stream closed there, and a client reading
    only ``progress_update`` (the seed's page) showed its bar stopped, while the operation ran on to the end."""
    return msg["type"] == "final" and msg.get("status") != Status.INTERRUPTED.value


async def _pump(ws: WebSocket, sub: Subscriber, close_on_final: bool) -> None:
    """Send the subscriber's messages until the client goes (or, for one operation, it settles)."""

    async def client_gone() -> None:
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass  # clients have nothing to say; anything they send is ignored

    gone = asyncio.create_task(client_gone())
    try:
        while True:
            nxt = asyncio.create_task(sub.get())
            done, _ = await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                return
            msg = nxt.result()
            await send(ws, msg)
            if close_on_final and ends_stream(msg):
                await ws.close(1000)
                return
            if close_on_final and msg["type"] == "error":  # removed from the store: it will never settle
                await ws.close(4404)
                return
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError, *_CLOSED):
            await gone


SNAPSHOT_PAGE = 1000
"""Operations read from the store at once for the all-operations snapshot."""


async def _every_active(engine: Engine, page: int = SNAPSHOT_PAGE) -> list[Any]:
    """Every active operation, read a page at a time: the snapshot was cut at 1,000, silently. One that
    moves while the pages are read may be listed twice (once here) or missed; the stream, subscribed to
    before, announces its change either way."""
    found: dict[str, Any] = {}
    offset = 0
    while True:
        batch = await engine.list_operations(statuses=list(ACTIVE), limit=page, offset=offset)
        for op in batch:
            found.setdefault(op.id, op)
        if len(batch) < page:
            return list(found.values())
        offset += page


@ws_router.websocket("/api/operations/progress")
async def all_progress(ws: WebSocket) -> None:
    engine, hub = _parts(ws)
    await _accept(ws)
    sub = Subscriber(None)
    hub.add(sub)
    try:
        for frame in snapshot_frames([_record(o) for o in await _every_active(engine)]):
            await ws.send_text(frame)
        await _pump(ws, sub, close_on_final=False)
    except _CLOSED:
        pass
    finally:
        hub.remove(sub)


@ws_router.websocket("/api/operations/{op_id}/progress")
async def one_progress(ws: WebSocket, op_id: str) -> None:
    engine, hub = _parts(ws)
    await _accept(ws)
    try:
        full = await resolve(engine, op_id)
        op = await engine.get(full)
    except (NotFound, InvalidInput) as e:
        with contextlib.suppress(*_CLOSED):
            await send(ws, {"type": "error", "detail": escape_controls(str(e))})
            await ws.close(4404 if isinstance(e, NotFound) else 4422)
        return
    sub = Subscriber(full)
    hub.add(sub)
    try:
        try:
            op = await engine.get(full)  # again, now that no change can slip between read and subscribe
        except NotFound as e:  # removed meanwhile
            await send(ws, {"type": "error", "detail": escape_controls(str(e))})
            await ws.close(4404)
            return
        await send(ws, {"type": "snapshot", "operation": _record(op)})
        if op.status in SETTLED:
            # Its last progress first, as a stream that saw it settle gets: a client that reads only
            # `progress_update` (the seed's page) connected just after a quick operation ended, and its
            # bar stayed at 0.
            await send(ws, progress_message(op))
            final = final_message(op)
            await send(ws, final)
            if ends_stream(final):
                await ws.close(1000)
                return
        await _pump(ws, sub, close_on_final=True)
    except _CLOSED:
        pass
    finally:
        hub.remove(sub)
