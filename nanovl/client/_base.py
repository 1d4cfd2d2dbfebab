"""What the async and blocking clients share: channel options, per-call defaults, the
RPC error type, and the calls themselves (:class:`ClientCore`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import grpc.aio

from nanovl.client.parts import Prompt, PromptLike
from nanovl.client.requests import build_generate_request, iter_stream_chunks
from nanovl.client.sampling import ChatTemplate, Sampling
from nanovl.errors import InvalidArgument, NanovlError
from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
"""Client-side send/receive limit; the server's own limit (ModelInfo.max_message_bytes)
is what usually binds."""


# grpc-core's words for a response stream that ended without a gRPC status (no trailers),
# which it reports as UNKNOWN (chttp2 transport: "Stream removed (<reason>)").
_STREAM_REMOVED = "Stream removed"


def _cut_stream_status(code: grpc.StatusCode, details: str) -> tuple[grpc.StatusCode, str]:
    """A stream that ended without any status from the server was cut on its way: an HTTP/2
    proxy in between (HAProxy, nginx) ends the client's stream cleanly, without trailers, when
    its connection to the server breaks (the server died), and grpc-core calls that UNKNOWN.
    gRPC's own rule for a client whose call broke after data was sent is UNAVAILABLE
    (grpc/doc/statuscodes.md, "Some data transmitted ... before connection breaks"), which
    is also what this client reports when it talks to the server directly and it dies: the
    same event gets the same, retryable, status."""
    if code == grpc.StatusCode.UNKNOWN and details.startswith(_STREAM_REMOVED):
        return grpc.StatusCode.UNAVAILABLE, (
            "the response stream ended without a gRPC status: the connection to the server broke on the way "
            f"(e.g. a proxy's upstream replica went away); retry ({details})"
        )
    return code, details


class InferenceRpcError(NanovlError):
    """The server (or the channel) failed the RPC; ``code`` and ``details`` are gRPC's, except
    that a stream cut without any status is UNAVAILABLE (``_cut_stream_status``)."""

    def __init__(
        self, error: grpc.RpcError, *, code: grpc.StatusCode | None = None, details: str | None = None
    ) -> None:
        if code is None:
            code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        if details is None:
            details = (error.details() if hasattr(error, "details") else None) or str(error)
        code, details = _cut_stream_status(code, details)
        super().__init__(f"{code.name}: {details}", code=code)
        self.details: str = details


def channel_options(max_message_bytes: int, extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """gRPC channel options: message size limits for large media, plus ``extra``."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *extra,
    ]


@dataclass(frozen=True)
class _CallDefaults:
    """Per-client defaults merged into every call: deadline and metadata."""

    timeout: float | None
    metadata: tuple[tuple[str, str], ...]

    def merge(self, timeout: float | None, metadata: Sequence[tuple[str, str]] | None) -> dict[str, Any]:
        md = self.metadata + tuple(metadata or ())
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": md or None}


def _upload_mode(prompt: Prompt, upload: str, chunk_size: int) -> Literal["unary", "stream"]:
    if upload == "auto":
        # One message is simplest while it is small; beyond a chunk, streaming avoids
        # message limits and overlaps server-side decoding with the upload.
        return "stream" if prompt.media_bytes > chunk_size else "unary"
    if upload not in ("unary", "stream"):
        raise InvalidArgument(f"upload must be 'auto', 'unary' or 'stream', got {upload!r}")
    return upload  # type: ignore[return-value]


@dataclass(frozen=True)
class CallOptions:
    """The per-call options every generation method takes (see ``AsyncInferenceClient.generate``)."""

    sampling: Sampling | None = None
    request_id: str | None = None
    chat_template: ChatTemplate | None = None
    timeout: float | None = None
    metadata: Sequence[tuple[str, str]] | None = None


class ClientCore:
    """The one implementation behind both clients: builds each RPC's request from a prompt
    and starts the call on ``self.stub``. The async and blocking clients differ only in the
    stub they hold (``grpc.aio`` or ``grpc``) and in how they wrap the returned call."""

    stub: pb_grpc.InferenceStub
    _defaults: _CallDefaults

    def _init_core(self, channel: Any, timeout: float | None, metadata: Sequence[tuple[str, str]]) -> None:
        self.stub = pb_grpc.InferenceStub(channel)
        self._defaults = _CallDefaults(timeout, tuple(metadata))

    def _start_generate(self, prompt: PromptLike, o: CallOptions) -> Any:
        req = build_generate_request(
            prompt, sampling=o.sampling, request_id=o.request_id, chat_template=o.chat_template
        )
        return self.stub.Generate(req, **self._defaults.merge(o.timeout, o.metadata))

    def _start_stream_generate(self, prompt: PromptLike, o: CallOptions, chunk_size: int, adapt: Any = None) -> Any:
        chunks = iter_stream_chunks(
            Prompt.of(prompt),  # validated now, not on the first read
            chunk_size=chunk_size,
            sampling=o.sampling,
            request_id=o.request_id,
            chat_template=o.chat_template,
        )
        return self.stub.StreamGenerate(
            adapt(chunks) if adapt else chunks, **self._defaults.merge(o.timeout, o.metadata)
        )

    def _start_get_model_info(self, timeout: float | None, metadata: Sequence[tuple[str, str]] | None) -> Any:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(), **self._defaults.merge(timeout, metadata))

    def _start_text(self, prompt: PromptLike, o: CallOptions, upload: str, chunk_size: int) -> Any:
        """``generate`` or ``stream_generate`` (on the concrete client) by upload mode."""
        p = Prompt.of(prompt)
        kw: dict[str, Any] = {
            "sampling": o.sampling,
            "request_id": o.request_id,
            "chat_template": o.chat_template,
            "timeout": o.timeout,
            "metadata": o.metadata,
        }
        if _upload_mode(p, upload, chunk_size) == "stream":
            return self.stream_generate(p, chunk_size=chunk_size, **kw)  # type: ignore[attr-defined]
        return self.generate(p, **kw)  # type: ignore[attr-defined]
