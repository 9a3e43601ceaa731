"""Work that ends when its HTTP caller is gone: a blocking call or a streamed body whose `cancel`
event is set the moment the client disconnects, so generation stops at its next step and its
engine slot is free (rather than running the chunk, or the whole job, to its end)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive


async def run_while_connected(request: Request, cancel: threading.Event, call: Callable[..., Any], *args) -> Any:
    """`call(*args)` in a worker thread; `cancel` is set if the client disconnects before it returns."""

    async def watch() -> None:
        # The body has been read: the next message is the disconnect. (Request.is_disconnected's
        # cancelled receive can lose it inside BaseHTTPMiddleware's task groups, so wait for it.)
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancel.set()

    def outcome() -> tuple[Any, Exception | None]:  # raised outside the task group, not in an ExceptionGroup
        try:
            return call(*args), None
        except Exception as exc:
            return None, exc

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            value, error = await anyio.to_thread.run_sync(outcome)
        finally:
            group.cancel_scope.cancel()
    if error is not None:
        raise error
    return value


class CancellingStream(StreamingResponse):
    """A StreamingResponse that sets `cancel` when its client disconnects (or the body ends), and
    then closes its body generator, so the generator's own cleanup (its audit line, its engine slot)
    runs however the response ended: Starlette drops a body cancelled between two chunks unclosed."""

    def __init__(self, content, cancel: threading.Event, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.cancel = cancel
        self.content = content

    async def listen_for_disconnect(self, receive: Receive) -> None:
        try:
            await super().listen_for_disconnect(receive)
        finally:
            self.cancel.set()

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.cancel.set()
            close = getattr(self.content, "close", None)
            if close is not None:  # a sync generator: no step of it runs now (anyio waits for a cancelled step)
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(close)
