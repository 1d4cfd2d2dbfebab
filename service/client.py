"""Python client for the nanovl ``Inference`` API: an asyncio client and a blocking one.

Build a prompt from :class:`Part` s (or chat :class:`Message` s), then either iterate typed
events::

    async with AsyncInferenceClient("localhost:50051") as client:
        async with client.generate([Part.image("cat.jpg"), "What is this?"]) as stream:
            async for event in stream:
                if isinstance(event, Delta):
                    print(event.text, end="")

or take the whole answer with ``await client.generate_text(...)`` (a :class:`Result`).
``stream_generate`` uploads media in chunks straight from the files, so multi-megabyte
media are never held twice in memory and the server decodes each part while the next
one uploads. Leaving the ``async with`` block (or calling ``cancel()``) cancels the RPC,
and the server aborts the generation. Failed RPCs raise :class:`InferenceRpcError`;
prompts that cannot be built raise ``service.errors.InvalidArgument``.

The raw protobuf layer stays available: ``client.stub`` is the generated stub,
:func:`build_generate_request` / :func:`iter_stream_chunks` build the request messages.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import grpc
import grpc.aio
import numpy as np
from google.protobuf import struct_pb2

from nanovl.v1 import inference_pb2 as pb
from nanovl.v1 import inference_pb2_grpc as pb_grpc
from service.errors import InvalidArgument, NanovlError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "AsyncGeneration",
    "AsyncInferenceClient",
    "ChatTemplate",
    "Delta",
    "Event",
    "Final",
    "FinishReason",
    "Generation",
    "InferenceClient",
    "InferenceRpcError",
    "Logprob",
    "Message",
    "Modality",
    "MediaItem",
    "ModalityInfo",
    "ModalityTokens",
    "ModelInfo",
    "Part",
    "PcmSpec",
    "Prompt",
    "PromptLike",
    "RawFramesSpec",
    "Result",
    "Sampling",
    "Started",
    "StructuredOutput",
    "Timings",
    "TokenLogprobs",
    "Usage",
    "build_generate_request",
    "build_stream_header",
    "channel_options",
    "collect_result",
    "event_from_proto",
    "iter_stream_chunks",
]

DEFAULT_CHUNK_SIZE = 1 << 20
"""StreamGenerate payload bytes per message: small enough to stay far below any gRPC
message limit, large enough that per-message overhead is negligible."""

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
"""Client-side send/receive limit; the server's own limit (ModelInfo.max_message_bytes)
is what usually binds."""

_T = TypeVar("_T")
MediaSource = str | os.PathLike[str] | bytes | bytearray | memoryview


# ---------------------------------------------------------------------------- prompt parts


@dataclass(frozen=True)
class RawFramesSpec:
    """Shape of a decoded-frames video payload (packed RGB24, frame after frame)."""

    width: int
    height: int
    num_frames: int
    fps: float


@dataclass(frozen=True)
class PcmSpec:
    """Layout of a raw PCM audio payload (little-endian, channels interleaved)."""

    encoding: Literal["s16le", "f32le"]
    sample_rate: int
    channels: int = 1


_PCM_ENCODINGS = {"s16le": pb.PCM_ENCODING_S16LE, "f32le": pb.PCM_ENCODING_F32LE}


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise InvalidArgument(f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class Part:
    """One piece of a prompt: text, or a media item whose bytes live in a file or in memory.

    Build with the constructors :meth:`text`, :meth:`image`, :meth:`video`,
    :meth:`video_frames`, :meth:`audio`, :meth:`pcm`. File payloads are read only when a
    request is sent (whole for ``generate``, chunk by chunk for ``stream_generate``).
    """

    kind: Literal["text", "image", "video", "audio"]
    text_value: str = ""
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)  # megabytes: keep out of logs
    format: str = ""
    num_frames: int | None = None  # video: frames the server samples
    fps: float | None = None  # video: sample one frame every 1/fps seconds
    max_frames: int | None = None  # video: cap on sampled frames
    raw_frames: RawFramesSpec | None = None  # video payload is decoded RGB24 frames
    pcm_spec: PcmSpec | None = None  # audio payload is raw PCM
    # Payload size captured when the part was built, so a file that changes before it is
    # uploaded is caught instead of silently sending a mismatched declaration.
    size: int = field(default=0, compare=False)

    # -- constructors

    @staticmethod
    def text(text: str) -> Part:
        return Part(kind="text", text_value=text)

    @staticmethod
    def image(source: MediaSource, *, format: str = "") -> Part:
        """An encoded image (PNG, JPEG, ...) from a file path or bytes."""
        return Part._media("image", source, format=format)

    @staticmethod
    def video(
        source: MediaSource,
        *,
        num_frames: int | None = None,
        format: str = "",
        fps: float | None = None,
        max_frames: int | None = None,
    ) -> Part:
        """An encoded video (MP4, WebM, ...) from a file path or bytes; the server samples
        ``num_frames`` frames uniformly over the clip by presentation time, or one every
        ``1 / fps`` seconds, at most ``max_frames`` (its defaults when None)."""
        _check_positive("num_frames", num_frames)
        _check_positive("max_frames", max_frames)
        if fps is not None and not fps > 0:
            raise InvalidArgument(f"fps must be > 0, got {fps}")
        return Part._media("video", source, format=format, num_frames=num_frames, fps=fps, max_frames=max_frames)

    @staticmethod
    def video_frames(
        frames: np.ndarray | bytes,
        *,
        fps: float,
        width: int | None = None,
        height: int | None = None,
        num_frames: int | None = None,
    ) -> Part:
        """Already-decoded frames: a uint8 array ``[T, H, W, 3]``, or packed RGB24 bytes
        with ``width`` and ``height``. ``num_frames`` is how many the server samples."""
        if not fps > 0:
            raise InvalidArgument(f"video_frames: fps must be > 0, got {fps}")
        _check_positive("num_frames", num_frames)
        if isinstance(frames, np.ndarray):
            if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
                raise InvalidArgument(
                    f"video_frames: expected a uint8 array [T, H, W, 3], got {frames.dtype} {frames.shape}"
                )
            t, h, w, _ = frames.shape
            payload = np.ascontiguousarray(frames).tobytes()
        else:
            if not width or not height or width <= 0 or height <= 0:
                raise InvalidArgument("video_frames: raw bytes need positive width and height")
            payload = bytes(frames)
            frame_bytes = width * height * 3
            t, rem = divmod(len(payload), frame_bytes)
            if rem or t == 0:
                raise InvalidArgument(
                    f"video_frames: {len(payload)} bytes is not a whole number of "
                    f"{width}x{height} RGB24 frames ({frame_bytes} bytes each)"
                )
            h, w = height, width
        spec = RawFramesSpec(width=int(w), height=int(h), num_frames=int(t), fps=float(fps))
        return Part(kind="video", data=payload, raw_frames=spec, num_frames=num_frames, size=len(payload))

    @staticmethod
    def audio(source: MediaSource, *, format: str = "") -> Part:
        """An encoded audio file (WAV, FLAC, MP3, ...) from a file path or bytes."""
        return Part._media("audio", source, format=format)

    @staticmethod
    def pcm(
        samples: np.ndarray | bytes,
        *,
        sample_rate: int,
        channels: int | None = None,
        encoding: Literal["s16le", "f32le"] | None = None,
    ) -> Part:
        """Raw PCM audio: an int16 or float32 array (``[N]`` mono or ``[N, channels]``),
        or little-endian bytes with an explicit ``encoding``."""
        if sample_rate <= 0:
            raise InvalidArgument(f"pcm: sample_rate must be > 0, got {sample_rate}")
        if isinstance(samples, np.ndarray):
            # Keyed by kind and width so either byte order is accepted (and converted).
            by_dtype = {("i", 2): "s16le", ("f", 4): "f32le"}
            inferred = by_dtype.get((samples.dtype.kind, samples.dtype.itemsize))
            if inferred is None or samples.ndim not in (1, 2):
                raise InvalidArgument(
                    f"pcm: expected an int16 or float32 array [N] or [N, channels], got {samples.dtype} {samples.shape}"
                )
            if encoding is not None and encoding != inferred:
                raise InvalidArgument(f"pcm: encoding {encoding!r} contradicts the array dtype {samples.dtype}")
            array_channels = 1 if samples.ndim == 1 else samples.shape[1]
            if channels is not None and channels != array_channels:
                raise InvalidArgument(f"pcm: channels={channels} contradicts the array shape {samples.shape}")
            little = samples.astype("<i2" if inferred == "s16le" else "<f4", copy=False)
            payload = np.ascontiguousarray(little).tobytes()
            enc, ch = inferred, array_channels
        else:
            if encoding not in _PCM_ENCODINGS:
                raise InvalidArgument("pcm: raw bytes need encoding='s16le' or 'f32le'")
            payload, enc, ch = bytes(samples), encoding, channels or 1
            frame = (2 if enc == "s16le" else 4) * ch
            if len(payload) % frame:
                raise InvalidArgument(f"pcm: {len(payload)} bytes is not a whole number of {enc} x {ch} frames")
        spec = PcmSpec(encoding=enc, sample_rate=sample_rate, channels=ch)  # type: ignore[arg-type]
        return Part(kind="audio", data=payload, pcm_spec=spec, size=len(payload))

    @staticmethod
    def _media(kind: Literal["image", "video", "audio"], source: MediaSource, **kw: Any) -> Part:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if not data:
                raise InvalidArgument(f"{kind}: empty bytes")
            return Part(kind=kind, data=data, size=len(data), **kw)
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise InvalidArgument(f"{kind}: cannot read {path}: {e.strerror or e}") from e
        if not path.is_file():
            raise InvalidArgument(f"{kind}: {path} is not a regular file")
        if size == 0:
            raise InvalidArgument(f"{kind}: {path} is empty")
        return Part(kind=kind, path=path, size=size, **kw)

    # -- payload access

    @property
    def is_media(self) -> bool:
        return self.kind != "text"

    @property
    def size_bytes(self) -> int:
        """Payload size in bytes (0 for text)."""
        return self.size

    def read_payload(self) -> bytes:
        """The whole payload (empty for text)."""
        if self.data is not None:
            return self.data
        if self.path is None:
            return b""
        return b"".join(self.iter_payload(max(self.size, 1)))

    def iter_payload(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The payload in pieces of at most ``chunk_size`` bytes, read lazily from the file."""
        if chunk_size <= 0:
            raise InvalidArgument(f"chunk_size must be > 0, got {chunk_size}")
        if self.data is not None:
            view = memoryview(self.data)
            for start in range(0, len(view), chunk_size):
                yield bytes(view[start : start + chunk_size])
            return
        if self.path is None:
            return
        sent = 0
        try:
            with self.path.open("rb") as f:
                while chunk := f.read(min(chunk_size, self.size - sent + 1)):
                    sent += len(chunk)
                    if sent > self.size:
                        break
                    yield chunk
        except OSError as e:
            raise InvalidArgument(f"{self.kind}: cannot read {self.path}: {e.strerror or e}") from e
        if sent != self.size:
            raise InvalidArgument(
                f"{self.kind}: {self.path} changed while being sent (was {self.size} bytes, read {sent}+)"
            )

    # -- protobuf

    def to_proto(self) -> pb.ContentPart:
        """The complete part, payload included (for Generate)."""
        return self._proto(self.read_payload())

    def declare(self) -> pb.DeclaredPart:
        """The part as a StreamGenerate header declares it: everything but the payload."""
        if not self.is_media:
            return pb.DeclaredPart(part=pb.ContentPart(text=self.text_value))
        return pb.DeclaredPart(part=self._proto(b""), size_bytes=self.size)

    def _proto(self, payload: bytes) -> pb.ContentPart:
        if self.kind == "text":
            return pb.ContentPart(text=self.text_value)
        if self.kind == "image":
            return pb.ContentPart(image=pb.Image(data=payload, format=self.format))
        if self.kind == "video":
            video = pb.Video(format=self.format)
            if self.raw_frames is not None:
                r = self.raw_frames
                video.raw_frames.CopyFrom(
                    pb.RawFrames(rgb24=payload, width=r.width, height=r.height, num_frames=r.num_frames, fps=r.fps)
                )
            else:
                video.encoded = payload  # sets the oneof even when empty (header)
            if self.num_frames is not None:
                video.num_frames = self.num_frames
            if self.fps is not None:
                video.fps = self.fps
            if self.max_frames is not None:
                video.max_frames = self.max_frames
            return pb.ContentPart(video=video)
        audio = pb.Audio(format=self.format)
        if self.pcm_spec is not None:
            p = self.pcm_spec
            audio.pcm.CopyFrom(
                pb.Pcm(
                    data=payload,
                    encoding=_PCM_ENCODINGS[p.encoding],
                    sample_rate=p.sample_rate,
                    channels=p.channels,
                )
            )
        else:
            audio.encoded = payload
        return pb.ContentPart(audio=audio)


def _as_part(item: str | Part) -> Part:
    if isinstance(item, Part):
        return item
    if isinstance(item, str):
        return Part.text(item)
    raise InvalidArgument(f"prompt parts must be str or Part, got {type(item).__name__}")


@dataclass(frozen=True, init=False)
class Message:
    """One chat turn; rendered with the checkpoint's chat template."""

    role: str
    parts: tuple[Part, ...]

    def __init__(self, role: str, parts: str | Part | Iterable[str | Part]) -> None:
        if isinstance(parts, (str, Part)):
            parts = (parts,)
        object.__setattr__(self, "role", role)
        object.__setattr__(self, "parts", tuple(_as_part(p) for p in parts))

    @classmethod
    def system(cls, *parts: str | Part) -> Message:
        return cls("system", parts)

    @classmethod
    def user(cls, *parts: str | Part) -> Message:
        return cls("user", parts)

    @classmethod
    def assistant(cls, *parts: str | Part) -> Message:
        return cls("assistant", parts)


@dataclass(frozen=True)
class Prompt:
    """A normalised prompt: exactly one of ``parts`` (raw) and ``messages`` (chat) is set."""

    parts: tuple[Part, ...] = ()
    messages: tuple[Message, ...] = ()

    @staticmethod
    def of(prompt: PromptLike) -> Prompt:
        """Accepts a str, a Part, a Message, a sequence of str/Part, or of Messages."""
        if isinstance(prompt, Prompt):
            return prompt
        if isinstance(prompt, (str, Part)):
            return Prompt(parts=(_as_part(prompt),))
        if isinstance(prompt, Message):
            return Prompt(messages=(prompt,))
        items = list(prompt)
        if not items:
            raise InvalidArgument("the prompt is empty")
        messages = [i for i in items if isinstance(i, Message)]
        if len(messages) == len(items):
            return Prompt(messages=tuple(messages))
        if messages:
            raise InvalidArgument("a prompt is either raw parts or chat messages, not both")
        return Prompt(parts=tuple(_as_part(i) for i in items if not isinstance(i, Message)))

    def flat_parts(self) -> tuple[Part, ...]:
        """All parts in declaration order (the numbering MediaChunk.part_index uses)."""
        if self.parts:
            return self.parts
        return tuple(p for m in self.messages for p in m.parts)

    @property
    def media_bytes(self) -> int:
        return sum(p.size_bytes for p in self.flat_parts())


PromptLike = str | Part | Message | Prompt | Iterable[str | Part] | Iterable[Message]
"""What the client methods accept as a prompt (see :meth:`Prompt.of`)."""


# ---------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class StructuredOutput:
    """One output constraint; build with :meth:`json`, :meth:`regex`, :meth:`choice`,
    :meth:`grammar` or :meth:`json_object`."""

    kind: Literal["json_schema", "regex", "choice", "grammar", "json_object"]
    value: str | tuple[str, ...] | bool
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None

    @staticmethod
    def json(schema: str | Mapping[str, Any], **flags: Any) -> StructuredOutput:
        text = schema if isinstance(schema, str) else json.dumps(schema)
        return StructuredOutput("json_schema", text, **flags)

    @staticmethod
    def regex(pattern: str, **flags: Any) -> StructuredOutput:
        return StructuredOutput("regex", pattern, **flags)

    @staticmethod
    def choice(options: Iterable[str], **flags: Any) -> StructuredOutput:
        return StructuredOutput("choice", tuple(options), **flags)

    @staticmethod
    def grammar(grammar: str, **flags: Any) -> StructuredOutput:
        return StructuredOutput("grammar", grammar, **flags)

    @staticmethod
    def json_object(**flags: Any) -> StructuredOutput:
        return StructuredOutput("json_object", True, **flags)

    def to_proto(self) -> pb.StructuredOutput:
        msg = pb.StructuredOutput(
            disable_any_whitespace=self.disable_any_whitespace,
            disable_additional_properties=self.disable_additional_properties,
        )
        if self.whitespace_pattern is not None:
            msg.whitespace_pattern = self.whitespace_pattern
        if self.kind == "choice":
            msg.choice.choices.extend(self.value)  # type: ignore[arg-type]
        else:
            setattr(msg, self.kind, self.value)
        return msg


# Scalar SamplingOptions fields copied only when set, so "None" keeps vLLM's default.
_SAMPLING_SCALARS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "min_tokens",
    "seed",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "ignore_eos",
    "logprobs",
    "prompt_logprobs",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "include_stop_str_in_output",
)
_SAMPLING_LISTS = ("stop", "stop_token_ids", "allowed_token_ids", "bad_words")


@dataclass(frozen=True)
class Sampling:
    """Sampling options (see ``SamplingOptions`` in inference.proto); None = vLLM default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    max_tokens: int | None = None
    min_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    ignore_eos: bool | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    logit_bias: Mapping[int, float] | None = None
    allowed_token_ids: tuple[int, ...] = ()
    bad_words: tuple[str, ...] = ()
    structured_output: StructuredOutput | None = None

    def to_proto(self) -> pb.SamplingOptions:
        msg = pb.SamplingOptions()
        for name in (*_SAMPLING_SCALARS, *_SAMPLING_LISTS, "logit_bias"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                if name in _SAMPLING_LISTS:
                    # A bare string would be split into characters: the classic mistake.
                    getattr(msg, name).extend([value] if isinstance(value, str) else value)
                elif name == "logit_bias":
                    msg.logit_bias.update({int(k): float(v) for k, v in value.items()})
                else:
                    setattr(msg, name, value)
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"sampling.{name}={value!r} is not valid: {e}") from e
        if self.structured_output is not None:
            msg.structured_output.CopyFrom(self.structured_output.to_proto())
        return msg


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class ChatTemplate:
    """Rendering options for chat ``messages`` (ignored for raw parts)."""

    add_generation_prompt: bool | None = None
    kwargs: Mapping[str, Any] | None = None  # e.g. {"enable_thinking": False}

    def to_proto(self) -> pb.ChatTemplateOptions:
        msg = pb.ChatTemplateOptions()
        if self.add_generation_prompt is not None:
            msg.add_generation_prompt = self.add_generation_prompt
        if self.kwargs:
            struct = struct_pb2.Struct()
            try:
                struct.update(dict(self.kwargs))
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"chat_template_kwargs must be JSON-like values: {e}") from e
            msg.chat_template_kwargs.CopyFrom(struct)
        return msg


def _common_fields(
    msg: pb.GenerateRequest | pb.StreamGenerateHeader,
    request_id: str | None,
    sampling: Sampling | None,
    chat_template: ChatTemplate | None,
) -> None:
    if request_id is not None:
        msg.request_id = request_id
    if sampling is not None:
        msg.sampling.CopyFrom(sampling.to_proto())
    if chat_template is not None:
        msg.chat_template.CopyFrom(chat_template.to_proto())


def build_generate_request(
    prompt: PromptLike,
    *,
    sampling: Sampling | None = None,
    request_id: str | None = None,
    chat_template: ChatTemplate | None = None,
) -> pb.GenerateRequest:
    """The Generate request for ``prompt`` (media payloads read in full)."""
    p = Prompt.of(prompt)
    req = pb.GenerateRequest()
    _common_fields(req, request_id, sampling, chat_template)
    if p.parts:
        req.parts.extend(part.to_proto() for part in p.parts)
    for m in p.messages:
        req.messages.add(role=m.role).parts.extend(part.to_proto() for part in m.parts)
    return req


def build_stream_header(
    prompt: PromptLike,
    *,
    sampling: Sampling | None = None,
    request_id: str | None = None,
    chat_template: ChatTemplate | None = None,
) -> pb.StreamGenerateHeader:
    """The StreamGenerate header: text inline, media declared with their sizes."""
    p = Prompt.of(prompt)
    header = pb.StreamGenerateHeader()
    _common_fields(header, request_id, sampling, chat_template)
    if p.parts:
        header.parts.extend(part.declare() for part in p.parts)
    for m in p.messages:
        header.messages.add(role=m.role).parts.extend(part.declare() for part in m.parts)
    return header


def iter_stream_chunks(
    prompt: PromptLike,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    sampling: Sampling | None = None,
    request_id: str | None = None,
    chat_template: ChatTemplate | None = None,
) -> Iterator[pb.GenerateChunk]:
    """The StreamGenerate client messages: header, each media part's chunks in order
    (contiguous, the last one flagged), then End. File payloads are read lazily, but the
    prompt, options and chunk size are validated now, before anything is sent."""
    if chunk_size <= 0:
        raise InvalidArgument(f"chunk_size must be > 0, got {chunk_size}")
    p = Prompt.of(prompt)
    header = build_stream_header(p, sampling=sampling, request_id=request_id, chat_template=chat_template)
    return _stream_chunks(p, header, chunk_size)


def _stream_chunks(p: Prompt, header: pb.StreamGenerateHeader, chunk_size: int) -> Iterator[pb.GenerateChunk]:
    yield pb.GenerateChunk(header=header)
    for index, part in enumerate(p.flat_parts()):
        if not part.is_media:
            continue
        pending: bytes | None = None
        # One chunk of look-ahead so the final data chunk carries `last` itself.
        for data in part.iter_payload(chunk_size):
            if pending is not None:
                yield pb.GenerateChunk(media=pb.MediaChunk(part_index=index, data=pending))
            pending = data
        yield pb.GenerateChunk(media=pb.MediaChunk(part_index=index, data=pending or b"", last=True))
    yield pb.GenerateChunk(end=pb.End())


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


# ---------------------------------------------------------------------------- responses


class FinishReason(StrEnum):
    UNSPECIFIED = "unspecified"
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"
    REPETITION = "repetition"


_FINISH_REASONS = {
    pb.FINISH_REASON_UNSPECIFIED: FinishReason.UNSPECIFIED,
    pb.FINISH_REASON_STOP: FinishReason.STOP,
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_ABORT: FinishReason.ABORT,
    pb.FINISH_REASON_ERROR: FinishReason.ERROR,
    pb.FINISH_REASON_REPETITION: FinishReason.REPETITION,
}


@dataclass(frozen=True)
class ModalityTokens:
    text: int = 0
    image: int = 0
    video: int = 0
    audio: int = 0

    @staticmethod
    def from_proto(m: pb.ModalityTokens) -> ModalityTokens:
        return ModalityTokens(text=m.text, image=m.image, video=m.video, audio=m.audio)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    prompt_tokens_by_modality: ModalityTokens
    cached_prompt_tokens: int

    @staticmethod
    def from_proto(m: pb.Usage) -> Usage:
        return Usage(
            prompt_tokens=m.prompt_tokens,
            completion_tokens=m.completion_tokens,
            prompt_tokens_by_modality=ModalityTokens.from_proto(m.prompt_tokens_by_modality),
            cached_prompt_tokens=m.cached_prompt_tokens,
        )


@dataclass(frozen=True)
class Timings:
    """Server-side durations in seconds (see ``Timings`` in inference.proto)."""

    queue_s: float
    ttft_s: float
    total_s: float
    prefill_s: float
    decode_s: float
    decode_media_s: float
    upload_s: float

    @staticmethod
    def from_proto(m: pb.Timings) -> Timings:
        return Timings(
            queue_s=m.queue_s,
            ttft_s=m.ttft_s,
            total_s=m.total_s,
            prefill_s=m.prefill_s,
            decode_s=m.decode_s,
            decode_media_s=m.decode_media_s,
            upload_s=m.upload_s,
        )


@dataclass(frozen=True)
class Logprob:
    token_id: int
    text: str
    logprob: float
    rank: int | None

    @staticmethod
    def from_proto(m: pb.TokenLogprob) -> Logprob:
        return Logprob(m.token_id, m.text, m.logprob, m.rank if m.HasField("rank") else None)


@dataclass(frozen=True)
class TokenLogprobs:
    token: Logprob | None  # None for the first prompt token (nothing predicts it)
    top: tuple[Logprob, ...]

    @staticmethod
    def from_proto(m: pb.TokenLogprobs) -> TokenLogprobs:
        token = Logprob.from_proto(m.token) if m.HasField("token") else None
        return TokenLogprobs(token, tuple(Logprob.from_proto(t) for t in m.top))


@dataclass(frozen=True)
class MediaItem:
    """What the model received for one media part (``Started.media``).

    ``kind`` is "image", "video" or "audio"; ``details`` holds that kind's fields
    (``ImageItemInfo`` / ``VideoItemInfo`` / ``AudioItemInfo`` in inference.proto) as
    plain Python values, e.g. ``details["frame_timestamps_s"]`` for a video."""

    part_index: int
    kind: str
    details: Mapping[str, Any]

    @staticmethod
    def from_proto(m: pb.MediaItemInfo) -> MediaItem:
        kind = m.WhichOneof("kind") or ""
        info = getattr(m, kind) if kind else None
        details = (
            {
                f.name: (v if isinstance(v, str | bytes | int | float) else list(v))  # repeated → list
                for f in info.DESCRIPTOR.fields
                for v in [getattr(info, f.name)]
            }
            if info is not None
            else {}
        )
        return MediaItem(part_index=m.part_index, kind=kind, details=details)

    def describe(self) -> str:
        """One line for humans, e.g. ``video: 8 frames 64x96 at 0.00, 1.00 … s, rotated 90°``."""
        d = self.details
        if self.kind == "image":
            return f"image: {d['width']}x{d['height']} {d['format']} (source mode {d['source_mode']})"
        if self.kind == "video":
            times = ", ".join(f"{t:.2f}" for t in d["frame_timestamps_s"])
            turn = f", rotated {d['rotation_degrees']}°" if d["rotation_degrees"] else ""
            mirror = ", mirrored" if d["mirrored"] else ""
            return (
                f"video: {len(d['frame_timestamps_s'])} of {d['source_frame_count']} frames, "
                f"{d['width']}x{d['height']}{turn}{mirror}, at [{times}] s of {d['duration_s']:.2f} s"
            )
        if self.kind == "audio":
            return (
                f"audio: {d['duration_s']:.2f} s {d['format']} ({d['source_channels']} ch at "
                f"{d['source_sample_rate']} Hz) → {d['num_samples']} samples at {d['sample_rate']} Hz mono"
            )
        return f"{self.kind or 'unknown'} item"


@dataclass(frozen=True)
class Started:
    """First event: the server accepted the request."""

    request_id: str
    prompt_tokens_by_modality: ModalityTokens | None
    media: tuple[MediaItem, ...] = ()  # what the model received, per media part


@dataclass(frozen=True)
class Delta:
    """Newly generated text and tokens."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...] = ()


@dataclass(frozen=True)
class Final:
    """Last event: why generation ended, token usage and server timings."""

    finish_reason: FinishReason
    stop_reason: str | int | None  # matched stop string, or stop token id
    usage: Usage
    timings: Timings
    request_id: str
    prompt_logprobs: tuple[TokenLogprobs, ...] = ()


Event = Started | Delta | Final


def event_from_proto(resp: pb.GenerateResponse) -> Event:
    kind = resp.WhichOneof("kind")
    if kind == "started":
        s = resp.started
        by_modality = (
            ModalityTokens.from_proto(s.prompt_tokens_by_modality) if s.HasField("prompt_tokens_by_modality") else None
        )
        return Started(
            request_id=s.request_id,
            prompt_tokens_by_modality=by_modality,
            media=tuple(MediaItem.from_proto(m) for m in s.media),
        )
    if kind == "delta":
        d = resp.delta
        return Delta(
            text=d.text,
            token_ids=tuple(d.token_ids),
            logprobs=tuple(TokenLogprobs.from_proto(lp) for lp in d.logprobs),
        )
    if kind == "final":
        f = resp.final
        stop_kind = f.WhichOneof("stop_reason")
        return Final(
            finish_reason=_FINISH_REASONS.get(f.finish_reason, FinishReason.UNSPECIFIED),
            stop_reason=getattr(f, stop_kind) if stop_kind else None,
            usage=Usage.from_proto(f.usage),
            timings=Timings.from_proto(f.timings),
            request_id=f.request_id,
            prompt_logprobs=tuple(TokenLogprobs.from_proto(lp) for lp in f.prompt_logprobs),
        )
    raise NanovlError(
        f"server sent a GenerateResponse with no known content ({kind!r}); upgrade the client",
        code=grpc.StatusCode.UNIMPLEMENTED,
    )


@dataclass(frozen=True)
class Result:
    """A whole generation (what ``generate_text`` returns)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    stop_reason: str | int | None
    usage: Usage
    timings: Timings
    request_id: str
    logprobs: tuple[TokenLogprobs, ...] = ()
    prompt_logprobs: tuple[TokenLogprobs, ...] = ()


class _ResultBuilder:
    def __init__(self) -> None:
        self._text: list[str] = []
        self._tokens: list[int] = []
        self._logprobs: list[TokenLogprobs] = []
        self.final: Final | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, Delta):
            self._text.append(event.text)
            self._tokens.extend(event.token_ids)
            self._logprobs.extend(event.logprobs)
        elif isinstance(event, Final):
            self.final = event

    def build(self) -> Result:
        f = self.final
        if f is None:
            raise NanovlError("the server ended the stream without a Final message", code=grpc.StatusCode.INTERNAL)
        return Result(
            text="".join(self._text),
            token_ids=tuple(self._tokens),
            finish_reason=f.finish_reason,
            stop_reason=f.stop_reason,
            usage=f.usage,
            timings=f.timings,
            request_id=f.request_id,
            logprobs=tuple(self._logprobs),
            prompt_logprobs=f.prompt_logprobs,
        )


def collect_result(events: Iterable[Event]) -> Result:
    """Fold a sequence of events into a :class:`Result`."""
    builder = _ResultBuilder()
    for e in events:
        builder.add(e)
    return builder.build()


class Modality(StrEnum):
    UNSPECIFIED = "unspecified"
    TEXT = "text"
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"


_MODALITIES = {
    pb.MODALITY_UNSPECIFIED: Modality.UNSPECIFIED,
    pb.MODALITY_TEXT: Modality.TEXT,
    pb.MODALITY_IMAGE: Modality.IMAGE,
    pb.MODALITY_VIDEO: Modality.VIDEO,
    pb.MODALITY_AUDIO: Modality.AUDIO,
}


def _opt(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


@dataclass(frozen=True)
class ModalityInfo:
    modality: Modality
    enabled: bool
    max_items_per_prompt: int
    accepted_formats: tuple[str, ...]
    accepted_raw_formats: tuple[str, ...]
    max_tokens_per_item: int | None
    default_num_frames: int | None
    max_num_frames: int | None
    default_fps: float | None = None
    default_max_frames: int | None = None

    @staticmethod
    def from_proto(m: pb.ModalityInfo) -> ModalityInfo:
        return ModalityInfo(
            modality=_MODALITIES.get(m.modality, Modality.UNSPECIFIED),
            enabled=m.enabled,
            max_items_per_prompt=m.max_items_per_prompt,
            accepted_formats=tuple(m.accepted_formats),
            accepted_raw_formats=tuple(m.accepted_raw_formats),
            max_tokens_per_item=_opt(m, "max_tokens_per_item"),
            default_num_frames=_opt(m, "default_num_frames"),
            max_num_frames=_opt(m, "max_num_frames"),
            default_fps=_opt(m, "default_fps"),
            default_max_frames=_opt(m, "default_max_frames"),
        )


@dataclass(frozen=True)
class ModelInfo:
    model_name: str
    model_path: str
    architecture: str
    max_model_len: int
    modalities: tuple[ModalityInfo, ...]
    audio_sample_rate: int
    has_chat_template: bool
    max_message_bytes: int
    max_request_bytes: int
    max_num_seqs: int
    vllm_version: str
    nanovl_version: str

    def modality(self, modality: Modality | str) -> ModalityInfo | None:
        return next((m for m in self.modalities if m.modality == modality), None)

    @staticmethod
    def from_proto(m: pb.ModelInfo) -> ModelInfo:
        return ModelInfo(
            model_name=m.model_name,
            model_path=m.model_path,
            architecture=m.architecture,
            max_model_len=m.max_model_len,
            modalities=tuple(ModalityInfo.from_proto(x) for x in m.modalities),
            audio_sample_rate=m.audio_sample_rate,
            has_chat_template=m.has_chat_template,
            max_message_bytes=m.max_message_bytes,
            max_request_bytes=m.max_request_bytes,
            max_num_seqs=m.max_num_seqs,
            vllm_version=m.vllm_version,
            nanovl_version=m.nanovl_version,
        )


class InferenceRpcError(NanovlError):
    """The server (or the channel) failed the RPC; ``code`` and ``details`` are gRPC's."""

    def __init__(self, error: grpc.RpcError) -> None:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = (error.details() if hasattr(error, "details") else None) or str(error)
        super().__init__(f"{code.name}: {details}", code=code)
        self.details: str = details


# ---------------------------------------------------------------------------- clients


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


class AsyncGeneration:
    """The events of one generation; cancelling it (or leaving ``async with``) cancels the RPC."""

    def __init__(self, call: Any) -> None:
        self.call = call  # the raw grpc.aio call (for metadata, code, ...)
        self.request_id: str | None = None
        self._cancelled = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        if self._cancelled:
            raise StopAsyncIteration
        try:
            resp = await self.call.read()
        except grpc.RpcError as e:
            raise InferenceRpcError(e) from e
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

    async def result(self) -> Result:
        builder = _ResultBuilder()
        async for event in self:
            builder.add(event)
        return builder.build()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self.call.done():
            self.cancel()


class AsyncInferenceClient:
    """asyncio client for ``nanovl.v1.Inference``.

    ``interceptors`` are grpc.aio client interceptors (e.g. OpenTelemetry's, which
    propagate the trace context); ``timeout`` is the default deadline per call in seconds.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
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
        self.stub = pb_grpc.InferenceStub(channel)
        self._defaults = _CallDefaults(timeout, tuple(metadata))

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
        req = build_generate_request(prompt, sampling=sampling, request_id=request_id, chat_template=chat_template)
        return AsyncGeneration(self.stub.Generate(req, **self._defaults.merge(timeout, metadata)))

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
        chunks = iter_stream_chunks(
            Prompt.of(prompt),  # validate now, not on the first read
            chunk_size=chunk_size,
            sampling=sampling,
            request_id=request_id,
            chat_template=chat_template,
        )
        call = self.stub.StreamGenerate(_aiter_in_thread(chunks), **self._defaults.merge(timeout, metadata))
        return AsyncGeneration(call)

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
        p = Prompt.of(prompt)
        kw: dict[str, Any] = {
            "sampling": sampling,
            "request_id": request_id,
            "chat_template": chat_template,
            "timeout": timeout,
            "metadata": metadata,
        }
        if _upload_mode(p, upload, chunk_size) == "stream":
            gen = self.stream_generate(p, chunk_size=chunk_size, **kw)
        else:
            gen = self.generate(p, **kw)
        async with gen:
            return await gen.result()

    async def get_model_info(
        self, *, timeout: float | None = None, metadata: Sequence[tuple[str, str]] | None = None
    ) -> ModelInfo:
        try:
            info = await self.stub.GetModelInfo(pb.GetModelInfoRequest(), **self._defaults.merge(timeout, metadata))
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._finished:
            self.cancel()


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


class InferenceClient:
    """Blocking client for ``nanovl.v1.Inference`` (same API as the async one).

    ``interceptors`` are blocking ``grpc`` client interceptors, or OpenTelemetry's
    ``client_interceptor()``.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        interceptors: Sequence[Any] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        opts = channel_options(max_message_bytes, options)
        if credentials is None:
            channel = grpc.insecure_channel(target, options=opts)
        else:
            channel = grpc.secure_channel(target, credentials, options=opts)
        self._raw_channel = channel
        self.channel: grpc.Channel = _intercept(channel, interceptors)
        self.stub = pb_grpc.InferenceStub(self.channel)
        self._defaults = _CallDefaults(timeout, tuple(metadata))

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
        req = build_generate_request(prompt, sampling=sampling, request_id=request_id, chat_template=chat_template)
        return Generation(self.stub.Generate(req, **self._defaults.merge(timeout, metadata)))

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
        chunks = iter_stream_chunks(
            Prompt.of(prompt),
            chunk_size=chunk_size,
            sampling=sampling,
            request_id=request_id,
            chat_template=chat_template,
        )
        return Generation(self.stub.StreamGenerate(chunks, **self._defaults.merge(timeout, metadata)))

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
        p = Prompt.of(prompt)
        kw: dict[str, Any] = {
            "sampling": sampling,
            "request_id": request_id,
            "chat_template": chat_template,
            "timeout": timeout,
            "metadata": metadata,
        }
        if _upload_mode(p, upload, chunk_size) == "stream":
            gen = self.stream_generate(p, chunk_size=chunk_size, **kw)
        else:
            gen = self.generate(p, **kw)
        with gen:
            return gen.result()

    def get_model_info(
        self, *, timeout: float | None = None, metadata: Sequence[tuple[str, str]] | None = None
    ) -> ModelInfo:
        try:
            info = self.stub.GetModelInfo(pb.GetModelInfoRequest(), **self._defaults.merge(timeout, metadata))
        except grpc.RpcError as e:
            raise InferenceRpcError(e) from e
        return ModelInfo.from_proto(info)

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
