"""The asyncio client (:class:`AsyncInferenceClient`, :class:`AsyncGeneration`); the
package docstring (``nanovl.client``) shows how to use it."""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import grpc
import grpc.aio

from nanovl.client._base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    CallOptions,
    ClientCore,
    InferenceRpcError,
    channel_options,
)
from nanovl.client.events import Event, ModelInfo, Result, Started, _ResultBuilder, event_from_proto
from nanovl.client.parts import DEFAULT_CHUNK_SIZE, PromptLike
from nanovl.client.sampling import ChatTemplate, Sampling
from nanovl.client.security import TlsConfig, channel_settings

_T = TypeVar("_T")


async def _aiter_in_thread(it: Iterator[_T]) -> AsyncIterator[_T]:
    """Drive a blocking iterator (file reads) from a worker thread, one item at a time."""
    done = object()
    try:
        while (item := await asyncio.to_thread(next, it, done)) is not done:
            yield item  # type: ignore[misc]
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            try:
                close()
            except ValueError:  # still running in the worker thread: it closes on GC
                pass


# grpc.aio's status for a write that Core refused because the call had already ended. A
# client still uploading when the server rejects its StreamGenerate (a bad header, say)
# gets it instead of the server's status: grpc.aio sets it over (or before) the status
# the server sent, which its status watcher sets again when it arrives.
_CORE_WRITE_FAILED = "Internal error from Core"
_REAL_STATUS_WAIT_S = 2.0


def _status_now(call: Any) -> tuple[grpc.StatusCode, str] | None:
    """The call's status, read without waiting (from a done callback)."""
    try:
        code, details = call.code(), call.details()
    except Exception:  # noqa: BLE001 - best effort, never from a finalizer-ish path
        return None

    def now(coro: Any) -> Any:
        try:
            coro.send(None)
        except StopIteration as stop:
            return stop.value
        except Exception:  # noqa: BLE001
            return None
        coro.close()  # it would have to wait: not set yet
        return None

    code, details = now(code), now(details)
    return (code, details or "") if code is not None else None


def _on_status(generation: weakref.ref[AsyncGeneration], call: Any) -> None:
    # Runs each time grpc.aio sets the call's status (possibly twice, see above).
    if (self := generation()) is not None and (status := _status_now(call)) is not None:
        self._statuses.append(status)
        self._status_set.set()


class AsyncGeneration:
    """The events of one generation. Leaving ``async with``, ``await aclose()``,
    ``cancel()``, or dropping the object before the stream ends cancels the RPC (the
    server then aborts the generation)."""

    def __init__(self, call: Any) -> None:
        self.call = call  # the raw grpc.aio call (for metadata, code, ...)
        self.request_id: str | None = None
        self._cancelled = False
        self._statuses: list[tuple[grpc.StatusCode, str]] = []
        self._status_set = asyncio.Event()
        add_done_callback = getattr(call, "add_done_callback", None)
        if add_done_callback is not None:
            # Weakly: grpc.aio's tasks keep the call alive, and the call must not keep
            # this object alive (its finalizer is what cancels an abandoned call).
            add_done_callback(functools.partial(_on_status, weakref.ref(self)))

    async def _server_status(self, error: grpc.RpcError) -> InferenceRpcError | None:
        """The error to raise: the server's own status when grpc.aio reports a refused
        write as INTERNAL (None: the server ended the call with OK while this client, in
        breach of the protocol, was still writing)."""
        if error.code() != grpc.StatusCode.INTERNAL or error.details() != _CORE_WRITE_FAILED:
            return InferenceRpcError(error)
        deadline = asyncio.get_running_loop().time() + _REAL_STATUS_WAIT_S
        while True:
            real = [s for s in self._statuses if s != (grpc.StatusCode.INTERNAL, _CORE_WRITE_FAILED)]
            if real:
                code, details = real[0]
                return None if code == grpc.StatusCode.OK else InferenceRpcError(error, code=code, details=details)
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return InferenceRpcError(error)
            self._status_set.clear()
            try:
                await asyncio.wait_for(self._status_set.wait(), remaining)
            except TimeoutError:
                pass

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        if self._cancelled:
            raise StopAsyncIteration
        try:
            resp = await self.call.read()
        except grpc.RpcError as e:
            if (error := await self._server_status(e)) is None:
                raise StopAsyncIteration from None
            raise error from e
        except asyncio.CancelledError:
            # grpc.aio reports a locally cancelled call as CancelledError; after our own
            # cancel() that is a normal end, unless this task itself is being cancelled.
            task = asyncio.current_task()
            if self._cancelled and (task is None or task.cancelling() == 0):
                raise StopAsyncIteration from None
            raise
        if resp is grpc.aio.EOF:
            raise StopAsyncIteration
        event = event_from_proto(resp)
        if isinstance(event, Started):
            self.request_id = event.request_id
        return event

    def cancel(self) -> bool:
        """Cancel the RPC; the server aborts the generation. Iteration then stops."""
        self._cancelled = True
        return bool(self.call.cancel())

    async def aclose(self) -> None:
        """Cancel the RPC unless it has finished (idempotent)."""
        if not self.call.done():
            self.cancel()

    async def result(self) -> Result:
        builder = _ResultBuilder()
        async for event in self:
            builder.add(event)
        return builder.build()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # An abandoned generation (the caller stopped iterating and dropped it) must not
        # keep the server generating: grpc.aio's own call outlives it, held by its tasks.
        call = getattr(self, "call", None)
        if call is None:
            return
        try:
            if not call.done():
                call.cancel()
        except Exception:  # noqa: BLE001 - the loop may be closed already
            pass


class AsyncInferenceClient(ClientCore):
    """asyncio client for ``nanovl.v1.Inference``.

    ``interceptors`` are grpc.aio client interceptors (e.g. OpenTelemetry's, which
    propagate the trace context); ``timeout`` is the default deadline per call in seconds;
    ``tls`` (a :class:`TlsConfig`) and ``token`` (sent as ``authorization: Bearer``) reach a
    secured server (README "Securing a deployment").
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        tls: TlsConfig | None = None,
        token: str | None = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        credentials, metadata, options = channel_settings(credentials, tls, token, metadata, options)
        opts = channel_options(max_message_bytes, options)
        ic = list(interceptors) or None
        if credentials is None:
            channel = grpc.aio.insecure_channel(target, options=opts, interceptors=ic)
        else:
            channel = grpc.aio.secure_channel(target, credentials, options=opts, interceptors=ic)
        self._init(channel, timeout, metadata)

    @classmethod
    def from_channel(
        cls, channel: grpc.aio.Channel, *, timeout: float | None = None, metadata: Sequence[tuple[str, str]] = ()
    ) -> AsyncInferenceClient:
        self = cls.__new__(cls)
        self._init(channel, timeout, metadata)
        return self

    def _init(self, channel: grpc.aio.Channel, timeout: float | None, metadata: Sequence[tuple[str, str]]) -> None:
        self.channel = channel
        self._init_core(channel, timeout, metadata)

    def generate(
        self,
        prompt: PromptLike,
        *,
        sampling: Sampling | None = None,
        request_id: str | None = None,
        chat_template: ChatTemplate | None = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> AsyncGeneration:
        """Generate with the whole prompt in one message (media read into memory)."""
        o = CallOptions(sampling, request_id, chat_template, timeout, metadata)
        return AsyncGeneration(self._start_generate(prompt, o))

    def stream_generate(
        self,
        prompt: PromptLike,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        sampling: Sampling | None = None,
        request_id: str | None = None,
        chat_template: ChatTemplate | None = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> AsyncGeneration:
        """Generate, uploading media in ``chunk_size`` pieces read lazily from their files."""
        o = CallOptions(sampling, request_id, chat_template, timeout, metadata)
        return AsyncGeneration(self._start_stream_generate(prompt, o, chunk_size, adapt=_aiter_in_thread))

    async def generate_text(
        self,
        prompt: PromptLike,
        *,
        sampling: Sampling | None = None,
        request_id: str | None = None,
        chat_template: ChatTemplate | None = None,
        upload: Literal["auto", "unary", "stream"] = "auto",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> Result:
        """The whole generation. ``upload="auto"`` streams the upload when the media are
        larger than one chunk."""
        o = CallOptions(sampling, request_id, chat_template, timeout, metadata)
        async with self._start_text(prompt, o, upload, chunk_size) as gen:
            return await gen.result()

    async def get_model_info(
        self, *, timeout: float | None = None, metadata: Sequence[tuple[str, str]] | None = None
    ) -> ModelInfo:
        try:
            info = await self._start_get_model_info(timeout, metadata)
        except grpc.RpcError as e:
            raise InferenceRpcError(e) from e
        return ModelInfo.from_proto(info)

    async def close(self, grace: float | None = None) -> None:
        await self.channel.close(grace)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
