"""WebSockets: live progress of one operation or of all of them.

One operation: a ``snapshot`` message (the record), then ``status_changed``, ``progress_update``,
``checkpoint_saved``, ``timeout_extended``, ``item_failed`` and ``log`` messages, and a ``final``
message when it settles; then the server closes the socket (code 1000). An unknown id gets an
``error`` message and close code 4404; a malformed one 4422.

All operations: a ``snapshot`` of the active ones, then the same messages for every operation
(no logs), with a ``final`` per operation as it settles; the socket stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ..engine import Engine
from ..models import ACTIVE, SETTLED, InvalidInput, NotFound
from .progress import ProgressHub, Subscriber, final_message
from .routes import resolve
from .schemas import OperationOut

ws_router = APIRouter()
_CLOSED = (WebSocketDisconnect, RuntimeError, ConnectionError)


def _parts(ws: WebSocket) -> tuple[Engine, ProgressHub]:
    return ws.app.state.engine, ws.app.state.hub


async def _accept(ws: WebSocket) -> None:
    """Accept; a client that sent its token as subprotocols ``["bearer", TOKEN]`` gets "bearer" back."""
    await ws.accept(subprotocol="bearer" if "bearer" in (ws.scope.get("subprotocols") or []) else None)


def _record(op: Any) -> dict[str, Any]:
    return OperationOut.of(op).model_dump(mode="json")


async def _pump(ws: WebSocket, sub: Subscriber, close_on_final: bool) -> None:
    """Send the subscriber's messages until the client goes (or, for one operation, it settles)."""

    async def client_gone() -> None:
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass  # clients have nothing to say; anything they send is ignored

    gone = asyncio.create_task(client_gone())
    try:
        while True:
            nxt = asyncio.create_task(sub.queue.get())
            done, _ = await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                return
            msg = nxt.result()
            await ws.send_json(msg)
            if close_on_final and msg["type"] == "final":
                await ws.close(1000)
                return
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError, *_CLOSED):
            await gone


@ws_router.websocket("/api/operations/progress")
async def all_progress(ws: WebSocket) -> None:
    engine, hub = _parts(ws)
    await _accept(ws)
    sub = Subscriber(None)
    hub.add(sub)
    try:
        active = await engine.list(statuses=list(ACTIVE), limit=1000)
        await ws.send_json({"type": "snapshot", "operations": [_record(o) for o in active]})
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
            await ws.send_json({"type": "error", "detail": str(e)})
            await ws.close(4404 if isinstance(e, NotFound) else 4422)
        return
    sub = Subscriber(full)
    hub.add(sub)
    try:
        op = await engine.get(full)  # again, now that no change can slip between read and subscribe
        await ws.send_json({"type": "snapshot", "operation": _record(op)})
        if op.status in SETTLED:
            await ws.send_json(final_message(op))
            await ws.close(1000)
            return
        await _pump(ws, sub, close_on_final=True)
    except _CLOSED:
        pass
    finally:
        hub.remove(sub)
