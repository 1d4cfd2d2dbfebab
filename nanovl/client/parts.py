"""Prompt parts: text, images, video (encoded or raw frames), audio (encoded or raw PCM),
chat messages, and the :class:`Prompt` that holds either ordered parts or messages."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nanovl.client.tools import Tool, ToolCall, ToolChoice
from nanovl.errors import InvalidArgument
from nanovl.units import MiB
from nanovl.v1 import inference_pb2 as pb

if TYPE_CHECKING:
    import numpy as np

DEFAULT_CHUNK_SIZE = 1 * MiB
"""StreamGenerate payload bytes per message: small enough to stay far below any gRPC
message limit, large enough that per-message overhead is negligible."""


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
    use_audio_in_video: bool | None = None  # video: give the model its audio track (None: server default)
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
        use_audio_in_video: bool | None = None,
    ) -> Part:
        """An encoded video (MP4, WebM, ...) from a file path or bytes; the server samples
        ``num_frames`` frames uniformly over the clip by presentation time, or one every
        ``1 / fps`` seconds, at most ``max_frames`` (its defaults when None).
        ``use_audio_in_video``: also give the model the clip's audio track (None: the
        server's default, ``ModelInfo.default_use_audio_in_video``)."""
        _check_positive("num_frames", num_frames)
        _check_positive("max_frames", max_frames)
        if fps is not None and not fps > 0:
            raise InvalidArgument(f"fps must be > 0, got {fps}")
        return Part._media(
            "video",
            source,
            format=format,
            num_frames=num_frames,
            fps=fps,
            max_frames=max_frames,
            use_audio_in_video=use_audio_in_video,
        )

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
        if not isinstance(frames, bytes | bytearray | memoryview):
            import numpy as np  # only for array input: the client starts without numpy

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
        if not isinstance(samples, bytes | bytearray | memoryview):
            import numpy as np  # only for array input

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
            if self.use_audio_in_video is not None:
                video.use_audio_in_video = self.use_audio_in_video
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
    """One chat turn; rendered with the checkpoint's chat template. ``tool_calls``
    (assistant): the calls it made, as returned; ``tool_call_id`` (tool): the call whose
    result it carries; ``reasoning_text`` (assistant): its reasoning, if kept."""

    role: str
    parts: tuple[Part, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    reasoning_text: str = ""

    def __init__(
        self,
        role: str,
        parts: str | Part | Iterable[str | Part] = (),
        *,
        tool_calls: Iterable[ToolCall] = (),
        tool_call_id: str = "",
        reasoning_text: str = "",
    ) -> None:
        if isinstance(parts, (str, Part)):
            parts = (parts,)
        object.__setattr__(self, "role", role)
        object.__setattr__(self, "parts", tuple(_as_part(p) for p in parts))
        object.__setattr__(self, "tool_calls", tuple(tool_calls))
        object.__setattr__(self, "tool_call_id", tool_call_id)
        object.__setattr__(self, "reasoning_text", reasoning_text)

    @classmethod
    def system(cls, *parts: str | Part) -> Message:
        return cls("system", parts)

    @classmethod
    def user(cls, *parts: str | Part) -> Message:
        return cls("user", parts)

    @classmethod
    def assistant(cls, *parts: str | Part, tool_calls: Iterable[ToolCall] = (), reasoning_text: str = "") -> Message:
        return cls("assistant", parts, tool_calls=tool_calls, reasoning_text=reasoning_text)

    @classmethod
    def tool(cls, tool_call_id: str, *parts: str) -> Message:
        """The result of the call ``tool_call_id`` (text)."""
        return cls("tool", parts, tool_call_id=tool_call_id)

    def _fill(self, msg: pb.Message | pb.DeclaredMessage) -> None:
        msg.role = self.role
        msg.tool_calls.extend(c.to_proto() for c in self.tool_calls)
        msg.tool_call_id = self.tool_call_id
        msg.reasoning_text = self.reasoning_text


@dataclass(frozen=True)
class Prompt:
    """A normalised prompt: exactly one of ``parts`` (raw) and ``messages`` (chat) is set.
    A chat prompt may declare ``tools`` and a ``tool_choice`` (chat only)."""

    parts: tuple[Part, ...] = ()
    messages: tuple[Message, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None

    def __post_init__(self) -> None:
        if (self.tools or self.tool_choice is not None) and not self.messages:
            raise InvalidArgument("tools and tool_choice need a chat prompt (messages)")

    @staticmethod
    def chat(
        messages: Iterable[Message], *, tools: Iterable[Tool] = (), tool_choice: ToolChoice | str | None = None
    ) -> Prompt:
        """A chat prompt with tools (``tool_choice``: a ToolChoice, or "auto", "none",
        "required" or a function name)."""
        choice = ToolChoice.parse(tool_choice) if isinstance(tool_choice, str) else tool_choice
        return Prompt(messages=tuple(messages), tools=tuple(tools), tool_choice=choice)

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
