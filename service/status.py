"""The one path from an exception to a gRPC status, for every servicer.

Lower layers raise ``nanovl.errors.NanovlError`` subclasses carrying their status and an
actionable message (vLLM's own exceptions are translated by type in ``service.engine``).
Here they become ``context.abort``; anything else is a bug: INTERNAL, logged with its
traceback. Both servicers use :func:`abort_with` (the Inference servicer inside its
admission context, the Profiling servicer through :func:`grpc_errors`).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from nanovl.errors import NanovlError, bounded
from profiling.telemetry.tracing import record_rpc_error

log = logging.getLogger(__name__)
T = TypeVar("T")


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for ``exc``; the message is bounded
    (``nanovl.errors.bounded``) so it fits gRPC's metadata limit whatever it echoes."""
    if isinstance(exc, NanovlError):
        return exc.code, exc.message
    return grpc.StatusCode.INTERNAL, bounded(f"internal error: {type(exc).__name__}: {exc}")


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """Abort the RPC with ``exc``'s status; an unexpected exception is logged as a bug."""
    code, message = status_of(exc)
    bug = code == grpc.StatusCode.INTERNAL and not isinstance(exc, NanovlError)
    if bug:
        log.error("RPC failed with an unexpected error", exc_info=exc)
    record_rpc_error(code, message, exc if bug else None)
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def grpc_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a servicer method (unary coroutine or server-streaming async generator)
    so any exception it raises becomes the RPC's status through :func:`abort_with`."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort_with(context, exc)

        return stream

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, exc)

    return unary


__all__ = ["abort_with", "grpc_errors", "status_of"]
