"""Blocking client (:class:`InferenceClient`): the same API as the asyncio one, over grpc's
synchronous channel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Self

import grpc
import grpc.aio

from nanovl.client._base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    CallOptions,
    ClientCore,
    InferenceRpcError,
    channel_options,
)
from nanovl.client.events import Event, ModelInfo, Result, Started, collect_result, event_from_proto
from nanovl.client.parts import DEFAULT_CHUNK_SIZE, PromptLike
from nanovl.client.sampling import ChatTemplate, Sampling
from nanovl.client.security import TlsConfig, channel_settings


class Generation:
    """Blocking counterpart of :class:`AsyncGeneration`."""

    def __init__(self, call: Any) -> None:
        # grpc's response iterator (also a grpc.Call), or a plain generator when an
        # interceptor such as OpenTelemetry's wraps the response stream.
        self.call = call
        self.request_id: str | None = None
        self._cancelled = False
        self._finished = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Event:
        if self._cancelled:
            raise StopIteration
        try:
            resp = next(self.call)
        except StopIteration:
            self._finished = True
            raise
        except grpc.RpcError as e:
            self._finished = True
            if self._cancelled and e.code() == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise InferenceRpcError(e) from e
        event = event_from_proto(resp)
        if isinstance(event, Started):
            self.request_id = event.request_id
        return event

    def cancel(self) -> bool:
        """Cancel the RPC; the server aborts the generation. Iteration then stops."""
        self._cancelled = True
        if (cancel := getattr(self.call, "cancel", None)) is not None:
            return bool(cancel())
        if (close := getattr(self.call, "close", None)) is not None:
            # An interceptor's generator: closing it drops the only reference to the
            # grpc call, which grpc cancels when it is collected (at once in CPython).
            close()
            return True
        return False

    def result(self) -> Result:
        return collect_result(self)

    def close(self) -> None:
        """Cancel the RPC unless it has finished (idempotent)."""
        if not self._finished and not self._cancelled:
            self.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # An abandoned generation must not keep the server generating.
        if getattr(self, "call", None) is None:
            return
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown, closed channel
            pass


_GRPC_INTERCEPTORS = (
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
)


def _intercept(channel: grpc.Channel, interceptors: Sequence[Any]) -> grpc.Channel:
    """Wrap ``channel`` so the first interceptor is outermost (as grpc.intercept_channel)."""
    for ic in reversed(list(interceptors)):
        if isinstance(ic, _GRPC_INTERCEPTORS):
            channel = grpc.intercept_channel(channel, ic)
        else:
            # OpenTelemetry's blocking interceptor (opentelemetry.instrumentation.grpc.
            # client_interceptor()) is not a grpc interceptor type: it has its own wrapper.
            from opentelemetry.instrumentation.grpc import grpcext

            channel = grpcext.intercept_channel(channel, ic)
    return channel


class InferenceClient(ClientCore):
    """Blocking client for ``nanovl.v1.Inference`` (same API as the async one).

    ``interceptors`` are blocking ``grpc`` client interceptors, or OpenTelemetry's
    ``client_interceptor()``; ``tls`` and ``token`` as in the async client.
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
        interceptors: Sequence[Any] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        credentials, metadata, options = channel_settings(credentials, tls, token, metadata, options)
        opts = channel_options(max_message_bytes, options)
        if credentials is None:
            channel = grpc.insecure_channel(target, options=opts)
        else:
            channel = grpc.secure_channel(target, credentials, options=opts)
        self._raw_channel = channel
        self.channel: grpc.Channel = _intercept(channel, interceptors)
        self._init_core(self.channel, timeout, metadata)

    def generate(
        self,
        prompt: PromptLike,
        *,
        sampling: Sampling | None = None,
        request_id: str | None = None,
        chat_template: ChatTemplate | None = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> Generation:
        """Generate with the whole prompt in one message (media read into memory)."""
        o = CallOptions(sampling, request_id, chat_template, timeout, metadata)
        return Generation(self._start_generate(prompt, o))

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
    ) -> Generation:
        """Generate, uploading media in ``chunk_size`` pieces read lazily from their files."""
        o = CallOptions(sampling, request_id, chat_template, timeout, metadata)
        return Generation(self._start_stream_generate(prompt, o, chunk_size))

    def generate_text(
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
        """The whole generation (see ``AsyncInferenceClient.generate_text``)."""
        o = CallOptions(sampling, request_id, chat_template, timeout, metadata)
        with self._start_text(prompt, o, upload, chunk_size) as gen:
            return gen.result()

    def get_model_info(
        self, *, timeout: float | None = None, metadata: Sequence[tuple[str, str]] | None = None
    ) -> ModelInfo:
        try:
            info = self._start_get_model_info(timeout, metadata)
        except grpc.RpcError as e:
            raise InferenceRpcError(e) from e
        return ModelInfo.from_proto(info)

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
