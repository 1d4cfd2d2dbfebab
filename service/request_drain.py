"""Read what a refused client is still sending before its status goes out.

grpc.aio's client sends a streaming call's messages from a task of its own; when the
server's status arrives while one of those writes is still in flight, the write fails
and the client reports ``INTERNAL: Internal error from Core`` instead of the server's
status (``grpc.aio._call._StreamRequestMixin._write`` → ``set_internal_error``: whichever
the client's event loop sees first wins). A client that has half-closed, or whose writes
have all landed, gets the real status. So a refusal of a client-streaming call first reads
(and drops) what the client is still sending, within bounds a refused client cannot
stretch (verify-10e D3).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

# Stop once the client has sent nothing for this long: its writes have landed (a stalled
# uploader, a bidirectional client waiting for an answer).
DRAIN_IDLE_S = 1.0
# Never read for longer than this in all, nor more than this many bytes, however the
# client keeps sending.
DRAIN_MAX_S = 5.0
DRAIN_MAX_BYTES = 64 * 2**20


async def drain_requests(
    iterator: AsyncIterator[Any],
    size: Callable[[Any], int],
    *,
    idle_s: float = DRAIN_IDLE_S,
    max_s: float = DRAIN_MAX_S,
    max_bytes: int = DRAIN_MAX_BYTES,
) -> None:
    """Read and drop ``iterator``'s messages until the client half-closes, sends nothing
    for ``idle_s`` seconds, ``max_s`` seconds pass or ``size`` (bytes of one message) sums
    past ``max_bytes``. Never raises but ``CancelledError`` (a request stream that fails
    or ends is the end of the drain)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    drained = 0
    try:
        while drained <= max_bytes and (remaining := deadline - loop.time()) > 0:
            message = await asyncio.wait_for(iterator.__anext__(), min(idle_s, remaining))
            drained += size(message)
    except asyncio.CancelledError:
        raise
    except BaseException:  # noqa: BLE001 - half-closed, idle, or the call ended: done
        return


__all__ = ["DRAIN_IDLE_S", "DRAIN_MAX_BYTES", "DRAIN_MAX_S", "drain_requests"]
