"""Requests whose bytes are not the RPC's protobuf message: INVALID_ARGUMENT, not a bug.

grpc.aio deserializes a request before (unary) or while (streaming) the servicer runs, and
a ``DecodeError`` there surfaces as INTERNAL or UNKNOWN with a traceback in the log: the
single byte ``0x0a``, invalid UTF-8 in a ``string`` field, a ``Struct`` nested past
protobuf's recursion limit. :class:`MalformedRequestInterceptor` wraps every method of
every service on the server (Inference, Profiling, health, reflection): its deserializer
returns a marker instead of raising, and the handler answers the marker with
INVALID_ARGUMENT naming the message type. It must be the first interceptor, so the ones
after it (tracing) see a clean status.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from nanovl.errors import NanovlError, ResourceExhausted
from nanovl.units import KiB

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Malformed:
    """Stands in for a request message that did not decode, or that a pre-parse check
    refused (``refusal``: its status and message)."""

    message_type: str
    error: str
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    refusal: str | None = None

    @property
    def details(self) -> str:
        return self.refusal or f"the request is not a valid {self.message_type}: {self.error}"


# A check of a request's wire bytes before protobuf parses them (on the event loop:
# grpc.aio deserializes there); raises NanovlError to refuse the request with its status.
Precheck = Callable[[bytes], None]

# The largest request of a method that has no pre-parse check of its own (a
# ``service.request_limits.WireCounter``): GetModelInfo and GetBudget take an empty
# message, reflection a symbol name, the other Profiling requests a few numbers (PlanBudget
# is given more by the server). Without it such a request could be ``--max-message-bytes``
# (64 MiB) of unknown fields, parsed by upb on the event loop: verify-10d F3, 4 x 60 MB
# GetModelInfo stalled health 0.6 s. 64 KiB parses in well under a millisecond.
SMALL_REQUEST_BYTES = 64 * KiB
# grpc.health.v1's HealthCheckRequest holds one service name (a few bytes); 4 x 60 MB
# checks on the plaintext --health-port stalled every probe 2.9 s (verify-10d F3).
HEALTH_REQUEST_BYTES = 4 * KiB
HEALTH_METHODS = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List")


def size_limit(method: str, limit: int) -> Precheck:
    """A precheck refusing a request of ``method`` over ``limit`` bytes: RESOURCE_EXHAUSTED,
    as gRPC answers a message over ``grpc.max_receive_message_length``, naming the limit."""

    def check(data: bytes) -> None:
        if len(data) > limit:
            raise ResourceExhausted(
                f"the {method} request is {len(data)} bytes, over this server's limit of {limit} bytes "
                "for that method (its requests need a few bytes)"
            )

    return check


def _message_type(deserializer: Callable[[bytes], Any] | None, method: str) -> str:
    # A deserializer may name its type (service.grpc_standard's reflection v1); generated
    # handlers deserialize with the message class's bound FromString.
    if named := getattr(deserializer, "message_type", None):
        return str(named)
    cls = getattr(deserializer, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None) or f"request message of {method}"


def _tolerant(
    deserializer: Callable[[bytes], Any], message_type: str, precheck: Precheck | None = None
) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        if precheck is not None:
            try:
                precheck(data)
            except NanovlError as exc:
                return Malformed(message_type, exc.message, code=exc.code, refusal=exc.message)
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, RecursionError, UnicodeDecodeError, ...
            reason = str(exc) or type(exc).__name__
            # upb says "Error parsing message with type 'X': why"; X is named already.
            reason = reason.split("': ", 1)[1] if reason.startswith("Error parsing message") else reason
            return Malformed(message_type, f"{reason} ({len(data)} bytes)")

    return deserialize


async def _abort(context: grpc.aio.ServicerContext, bad: Malformed, method: str) -> None:
    log.info("%s: %s request: %s", method, "refused" if bad.refusal else "malformed", bad.details)
    await context.abort(bad.code, bad.details)


def _abort_sync(context: grpc.ServicerContext, bad: Malformed, method: str) -> None:
    # grpc.aio's context for sync handlers sends the status and returns (it does not
    # raise); grpc then raises the abort once the handler returns.
    log.info("%s: %s request: %s", method, "refused" if bad.refusal else "malformed", bad.details)
    context.abort(bad.code, bad.details)


async def _checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Malformed):
            await _abort(context, request, method)  # raises AbortError through the servicer
        yield request


def _checked_sync(requests: Iterator[Any], context: grpc.ServicerContext, method: str) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, Malformed):
            _abort_sync(context, request, method)
            return
        yield request


def _wrap(
    behavior: Callable[..., Any], method: str, *, stream_request: bool, stream_response: bool
) -> Callable[..., Any]:
    """``behavior`` with a Malformed request (unary) or request message (streaming)
    answered INVALID_ARGUMENT. The wrapper keeps the behaviour's kind (coroutine, async
    generator, function, generator): grpc.aio dispatches on it."""

    def check(request: Any, context: Any) -> Any:
        if stream_request:
            return (_checked if is_async else _checked_sync)(request, context, method)
        return request

    is_async = inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)
    if inspect.isasyncgenfunction(behavior):

        async def async_gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Malformed):
                await _abort(context, request, method)
            async for response in behavior(check(request, context), context):
                yield response

        return async_gen
    if inspect.iscoroutinefunction(behavior):

        async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await _abort(context, request, method)
            return await behavior(check(request, context), context)

        return coroutine

    # Sync handlers (e.g. a generated servicer's UNIMPLEMENTED defaults). grpc.aio calls a
    # streaming one on the event loop and iterates its result in the thread pool, so the
    # check (a blocking abort) must run inside the generator, never at the call.
    if stream_response:

        def generator(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            if isinstance(request, Malformed):
                _abort_sync(context, request, method)
                return
            yield from behavior(check(request, context), context)

        return generator

    def function(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            _abort_sync(context, request, method)
            return None
        return behavior(check(request, context), context)

    return function


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Undecodable request bytes → INVALID_ARGUMENT naming the message type, no traceback.
    ``prechecks``: per method path, a check of the request bytes before they are parsed
    (``service.request_limits.WireCounter``: element counts); a method without one is held
    to ``size_limit`` (``HEALTH_REQUEST_BYTES`` for health, else ``SMALL_REQUEST_BYTES``)."""

    def __init__(self, prechecks: Mapping[str, Precheck] | None = None) -> None:
        self._prechecks = dict(prechecks or {})

    def _precheck(self, method: str) -> Precheck:
        if (check := self._prechecks.get(method)) is None:
            limit = HEALTH_REQUEST_BYTES if method in HEALTH_METHODS else SMALL_REQUEST_BYTES
            check = self._prechecks[method] = size_limit(method, limit)
        return check

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        message_type = _message_type(handler.request_deserializer, method)
        replaced: dict[str, Any] = {
            "request_deserializer": _tolerant(handler.request_deserializer, message_type, self._precheck(method))
        }
        # RpcMethodHandler is a namedtuple: exactly one of the four behaviours is set.
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            if (behavior := getattr(handler, kind)) is not None:
                replaced[kind] = _wrap(
                    behavior, method, stream_request=kind.startswith("stream"), stream_response=kind.endswith("stream")
                )
        return handler._replace(**replaced)


def rejecting_malformed(
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (), prechecks: Mapping[str, Precheck] | None = None
) -> list[grpc.aio.ServerInterceptor]:
    """``interceptors`` with :class:`MalformedRequestInterceptor` first, for
    ``grpc.aio.server(interceptors=...)``."""
    return [MalformedRequestInterceptor(prechecks), *interceptors]


__all__ = [
    "HEALTH_METHODS",
    "HEALTH_REQUEST_BYTES",
    "SMALL_REQUEST_BYTES",
    "Malformed",
    "MalformedRequestInterceptor",
    "Precheck",
    "rejecting_malformed",
    "size_limit",
]
