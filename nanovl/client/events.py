"""Response events (:class:`Started`, :class:`Delta`, :class:`Final`), the collected
:class:`Result`, and :class:`ModelInfo`, each converted from its protobuf message."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import grpc
import grpc.aio

from nanovl.client.tools import ToolCall
from nanovl.errors import NanovlError
from nanovl.modalities import modality_name
from nanovl.v1 import inference_pb2 as pb

# ---------------------------------------------------------------------------- responses


class FinishReason(StrEnum):
    UNSPECIFIED = "unspecified"
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"
    REPETITION = "repetition"
    TOOL_CALLS = "tool_calls"  # stopped to have its tool calls run


_FINISH_REASONS = {
    pb.FINISH_REASON_UNSPECIFIED: FinishReason.UNSPECIFIED,
    pb.FINISH_REASON_STOP: FinishReason.STOP,
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_ABORT: FinishReason.ABORT,
    pb.FINISH_REASON_ERROR: FinishReason.ERROR,
    pb.FINISH_REASON_REPETITION: FinishReason.REPETITION,
    pb.FINISH_REASON_TOOL_CALLS: FinishReason.TOOL_CALLS,
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
    reasoning_tokens: int = 0  # of completion_tokens, the reasoning's

    @staticmethod
    def from_proto(m: pb.Usage) -> Usage:
        return Usage(
            prompt_tokens=m.prompt_tokens,
            completion_tokens=m.completion_tokens,
            prompt_tokens_by_modality=ModalityTokens.from_proto(m.prompt_tokens_by_modality),
            cached_prompt_tokens=m.cached_prompt_tokens,
            reasoning_tokens=m.reasoning_tokens,
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
    preprocess_s: float = 0.0  # servers before it was added send none

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
            preprocess_s=m.preprocess_s,
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
        details = _fields(info) if info is not None else {}
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
            audio = d.get("audio")
            with_audio = (
                f", with its audio track: {audio['num_samples']} samples at {audio['sample_rate']} Hz" if audio else ""
            )
            return (
                f"video: {len(d['frame_timestamps_s'])} of {d['source_frame_count']} frames, "
                f"{d['width']}x{d['height']}{turn}{mirror}, at [{times}] s of {d['duration_s']:.2f} s{with_audio}"
            )
        if self.kind == "audio":
            return (
                f"audio: {d['duration_s']:.2f} s {d['format']} ({d['source_channels']} ch at "
                f"{d['source_sample_rate']} Hz) → {d['num_samples']} samples at {d['sample_rate']} Hz mono"
            )
        return f"{self.kind or 'unknown'} item"


def _fields(info: Any) -> dict[str, Any]:
    """A message's fields as plain values: repeated → list, a set message → dict, an
    unset message field left out."""
    out: dict[str, Any] = {}
    for f in info.DESCRIPTOR.fields:
        v = getattr(info, f.name)
        if f.message_type is not None and not f.is_repeated:
            if info.HasField(f.name):
                out[f.name] = _fields(v)
        elif isinstance(v, str | bytes | int | float):
            out[f.name] = v
        else:
            out[f.name] = list(v)
    return out


@dataclass(frozen=True)
class Started:
    """First event: the server accepted the request."""

    request_id: str
    prompt_tokens_by_modality: ModalityTokens | None
    media: tuple[MediaItem, ...] = ()  # what the model received, per media part


@dataclass(frozen=True)
class Delta:
    """Newly generated text and tokens: ``text`` is the answer, ``reasoning_text`` the
    reasoning (reasoning models), ``tool_calls`` the calls completed since the last Delta."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...] = ()
    reasoning_text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


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
            reasoning_text=d.reasoning_text,
            tool_calls=tuple(ToolCall.from_proto(c) for c in d.tool_calls),
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
    reasoning_text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()

    def assistant_message(self) -> Any:
        """This answer as the assistant ``Message`` that continues the conversation (its
        tool calls and reasoning included); send it back with the tools' results."""
        from nanovl.client.parts import Message

        return Message.assistant(
            *([self.text] if self.text else []), tool_calls=self.tool_calls, reasoning_text=self.reasoning_text
        )


class _ResultBuilder:
    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: list[ToolCall] = []
        self._tokens: list[int] = []
        self._logprobs: list[TokenLogprobs] = []
        self.final: Final | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, Delta):
            self._text.append(event.text)
            self._reasoning.append(event.reasoning_text)
            self._calls.extend(event.tool_calls)
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
            reasoning_text="".join(self._reasoning),
            tool_calls=tuple(self._calls),
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
            modality=Modality(modality_name(m.modality, Modality.UNSPECIFIED.value)),
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
    reasoning_parser: str = ""  # "" : no reasoning split, thinking options refused
    tool_call_parser: str = ""  # "" : tools refused
    supports_audio_in_video: bool = False
    default_use_audio_in_video: bool = False

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
            reasoning_parser=m.reasoning_parser,
            tool_call_parser=m.tool_call_parser,
            supports_audio_in_video=m.supports_audio_in_video,
            default_use_audio_in_video=m.default_use_audio_in_video,
        )
