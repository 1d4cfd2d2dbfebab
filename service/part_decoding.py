"""One media ``ContentPart`` (proto) → a decoded item for prompt assembly.

Pure and synchronous: the servicer runs it in its bounded decode pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model.prompt import MediaPart
from nanovl.errors import InvalidArgument
from nanovl.modalities import Modality
from nanovl.v1 import inference_pb2 as pb
from service import media

_PCM = {pb.PCM_ENCODING_S16LE: "s16le", pb.PCM_ENCODING_F32LE: "f32le"}


@dataclass(frozen=True)
class DecodedPart:
    part: MediaPart
    nbytes: int
    attributes: dict[str, Any]  # for the decode span
    info: pb.MediaItemInfo  # what the model gets, for Started.media (part_index set by the caller)


def payload_size(part: pb.ContentPart) -> int:
    kind = part.WhichOneof("kind")
    if kind == "image":
        return len(part.image.data)
    if kind == "video":
        return len(part.video.encoded) + len(part.video.raw_frames.rgb24)
    if kind == "audio":
        return len(part.audio.encoded) + len(part.audio.pcm.data)
    return 0


def decode_part(
    part: pb.ContentPart,
    *,
    default_video_frames: int,
    audio_sample_rate: int | None,
    limits: media.MediaLimits,
    default_video_fps: float | None = None,
    default_video_max_frames: int | None = None,
    default_use_audio_in_video: bool = False,
) -> DecodedPart:
    """Decode one media part. Video sampling: the request's num_frames / fps /
    max_frames; when it sets neither num_frames nor fps, ``default_video_fps`` if the
    server has one, else ``default_video_frames``; max_frames defaults to
    ``default_video_max_frames`` (``service.media.VideoSampling`` has the rules).

    A video's audio track goes with it when ``Video.use_audio_in_video`` says so, or,
    unset, when ``default_use_audio_in_video`` does; asked for explicitly, a clip without
    one is ``InvalidArgument``, by default it is used without."""
    kind = part.WhichOneof("kind")
    if kind == "image":
        img = media.decode_image(part.image.data, limits)
        return DecodedPart(
            MediaPart("image", img.to_vllm()),
            img.nbytes,
            {"format": img.format, "width": img.width, "height": img.height, "bytes": img.nbytes},
            pb.MediaItemInfo(
                image=pb.ImageItemInfo(
                    width=img.width, height=img.height, format=img.format, source_mode=img.source_mode
                )
            ),
        )
    if kind == "video":
        v = part.video
        if v.WhichOneof("source") == "raw_frames":
            raw = v.raw_frames
            video = media.video_from_raw_frames(
                raw.rgb24, width=raw.width, height=raw.height, num_frames=raw.num_frames, fps=raw.fps, limits=limits
            )
        else:
            num_frames = v.num_frames if v.HasField("num_frames") else None
            fps = v.fps if v.HasField("fps") else None
            max_frames = v.max_frames if v.HasField("max_frames") else default_video_max_frames
            if num_frames == 0:
                raise InvalidArgument("video.num_frames must be at least 1")
            if v.HasField("max_frames") and max_frames == 0:
                raise InvalidArgument("video.max_frames must be at least 1")
            if num_frames is None and fps is None:
                if default_video_fps:
                    fps = default_video_fps
                else:
                    num_frames = default_video_frames
            video = media.decode_video(v.encoded, num_frames=num_frames, fps=fps, max_frames=max_frames, limits=limits)
        track = _audio_track(v, default_use_audio_in_video, audio_sample_rate, limits, video.container_format)
        info = pb.VideoItemInfo(
            width=video.width,
            height=video.height,
            frame_timestamps_s=list(video.timestamps_s),
            frame_indices=list(video.frame_indices),
            rotation_degrees=video.rotation_degrees,
            mirrored=video.mirrored,
            source_frame_count=video.source_frame_count,
            duration_s=video.duration_s,
            format=video.container_format,
            codec=video.codec,
        )
        attributes: dict[str, Any] = {}
        if track is not None:
            info.audio.CopyFrom(_audio_info(track))
            attributes = {"audio_samples": len(track.waveform), "audio_duration_s": track.duration_s}
        return DecodedPart(
            MediaPart("video", video.to_vllm(), audio_track=track.to_vllm() if track is not None else None),
            video.nbytes,
            {
                **attributes,
                "format": video.container_format,
                "codec": video.codec,
                "frames": video.sampled_frame_count,
                "source_frames": video.source_frame_count,
                "fps": video.fps,
                "duration_s": video.duration_s,
                "width": video.width,
                "height": video.height,
                "bytes": video.nbytes,
                "rotation_degrees": video.rotation_degrees,
            },
            pb.MediaItemInfo(video=info),
        )
    if kind == "audio":
        if audio_sample_rate is None:
            raise InvalidArgument("this model has no audio encoder; remove the audio parts")
        a = part.audio
        if a.WhichOneof("source") == "pcm":
            pcm = a.pcm
            if pcm.encoding not in _PCM:
                raise InvalidArgument("audio.pcm.encoding must be PCM_ENCODING_S16LE or PCM_ENCODING_F32LE")
            audio = media.audio_from_pcm(
                pcm.data,
                encoding=_PCM[pcm.encoding],
                sample_rate=pcm.sample_rate,
                channels=pcm.channels,
                target_sample_rate=audio_sample_rate,
                limits=limits,
            )
        else:
            audio = media.decode_audio(a.encoded, target_sample_rate=audio_sample_rate, limits=limits)
        return DecodedPart(
            MediaPart("audio", audio.to_vllm()),
            audio.nbytes,
            {
                "format": audio.format,
                "duration_s": audio.duration_s,
                "source_sample_rate": audio.source_sample_rate,
                "source_channels": audio.source_channels,
                "resampled": audio.resampled,
                "bytes": audio.nbytes,
            },
            pb.MediaItemInfo(audio=_audio_info(audio)),
        )
    raise InvalidArgument(f"part of kind {kind!r} carries no media")


def _audio_info(audio: media.DecodedAudio) -> pb.AudioItemInfo:
    return pb.AudioItemInfo(
        duration_s=audio.duration_s,
        sample_rate=audio.sample_rate,
        num_samples=len(audio.waveform),
        source_sample_rate=audio.source_sample_rate,
        source_channels=audio.source_channels,
        format=audio.format,
    )


def wants_audio_in_video(video: pb.Video, default: bool) -> bool:
    """Whether a video part asks for its audio track (its own flag, else the server's default)."""
    return video.use_audio_in_video if video.HasField("use_audio_in_video") else default


def _audio_track(
    v: pb.Video, default: bool, audio_sample_rate: int | None, limits: media.MediaLimits, container: str
) -> media.DecodedAudio | None:
    """The video's audio track for the model, or None (not asked for, or absent by default)."""
    explicit = v.HasField("use_audio_in_video")
    if not wants_audio_in_video(v, default):
        return None
    # Request validation refuses an explicit flag these cannot honour; by default they are skipped.
    if audio_sample_rate is None or v.WhichOneof("source") == "raw_frames":
        if explicit:
            raise InvalidArgument("video.use_audio_in_video needs an encoded video and a model with an audio encoder")
        return None
    track = media.decode_video_audio(v.encoded, target_sample_rate=audio_sample_rate, limits=limits)
    if track is None and explicit:
        raise InvalidArgument(
            f"video.use_audio_in_video is set but the {container.upper()} has no audio track; "
            "send a video with an audio stream, or leave use_audio_in_video unset"
        )
    return track


def modality_of(part: pb.ContentPart) -> Modality:
    kind = part.WhichOneof("kind")
    assert kind in ("image", "video", "audio"), kind
    return kind  # type: ignore[return-value]
