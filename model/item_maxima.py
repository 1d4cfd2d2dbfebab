"""The largest video and audio item a server is sized for (``nanovl serve --exact-mm-sizing``).

vLLM sizes every video and audio item of this model as the whole ``max_model_len``
(``NanoNemotronVLProcessingInfo.get_mm_max_tokens_per_item``). An operator who knows the
largest item the service will take declares it instead, and ``model.vllm_exact_sizing``
makes vLLM's encoder budget, encoder cache and start-up dummy profile use the exact token
count of that item. This module is the declaration itself: parsing, its JSON form (carried
to every vLLM process inside the model's config through vLLM's ``hf_overrides``), and the
words a refusal uses. It imports neither torch nor vLLM (``nanovl serve --help`` builds its
parser from it).

Spec (the flag's value): ``limits`` (derive both from the media limits) or a comma list of

- ``video=FRAMESxWIDTHxHEIGHT@FPS``: at most FRAMES sampled frames of at most WIDTH x HEIGHT
  pixels, sampled at FPS or faster, i.e. every frame's timestamp within
  ``(FRAMES - 1) / FPS`` seconds. The timestamps matter: each frame's prompt text is
  "Frame i sampled at t seconds:", and a longer ``t`` takes more tokens.
- ``audio=SECONDS``: at most SECONDS of audio.

A modality the spec does not name (when the model has it) is derived from the media
limits: ``--max-video-frames`` frames with timestamps up to one day, ``--max-audio-seconds``
of audio. Images are not declared: vLLM already sizes an image exactly (its tiler's worst
case, or the dynamic tiler's budget), and any image box wider than a few tiles holds an
image that reaches that worst case.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nanovl.errors import InvalidArgument
from nanovl.media_specs import parse_dims, parse_seconds

# The ModelConfig.hf_config attribute (set through vLLM's `hf_overrides`) that carries the
# declaration to vLLM's engine core and worker processes.
HF_CONFIG_KEY = "nanovl_item_maxima"

# The flag, as messages name it.
SETTING = "--exact-mm-sizing"

# Timestamp bound for a video derived from the media limits (which bound frames, not
# duration): "Frame i sampled at 86400.00 seconds" is the longest text it sizes for.
DERIVED_VIDEO_SECONDS = 86_400.0


@dataclass(frozen=True)
class VideoMaximum:
    """The largest video: frames, frame size, and the latest frame timestamp (seconds)."""

    num_frames: int
    width: int
    height: int
    last_frame_s: float
    fps: float | None = None  # as declared; None when derived (then only last_frame_s counts)

    def __post_init__(self) -> None:
        if min(self.num_frames, self.width, self.height) <= 0:
            raise InvalidArgument(f"{SETTING}: a video needs positive frames, width and height")
        if not (math.isfinite(self.last_frame_s) and self.last_frame_s >= 0):
            raise InvalidArgument(f"{SETTING}: the last frame's time must be finite and >= 0")

    @classmethod
    def at_fps(cls, num_frames: int, width: int, height: int, fps: float) -> VideoMaximum:
        if not (math.isfinite(fps) and fps > 0):
            raise InvalidArgument(f"{SETTING}: video fps must be a positive number, got {fps}")
        return cls(num_frames, width, height, (num_frames - 1) / fps, fps)

    def spec(self) -> str:
        size = f"{self.num_frames}x{self.width}x{self.height}"
        if self.fps is not None:
            return f"{size}@{self.fps:g}"
        return f"{size} within {self.last_frame_s:g} s"

    def describe(self) -> str:
        return f"{self.num_frames} frames of {self.width}x{self.height}, the last at most {self.last_frame_s:g} s in"


@dataclass(frozen=True)
class AudioMaximum:
    seconds: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.seconds) and self.seconds > 0):
            raise InvalidArgument(f"{SETTING}: audio seconds must be a positive number, got {self.seconds}")

    def spec(self) -> str:
        return f"{self.seconds:g}"

    def describe(self) -> str:
        return f"{self.seconds:g} s of audio"


@dataclass(frozen=True)
class ItemMaxima:
    """The declaration: the largest video and audio item (None: that modality is not
    declared, vLLM's own sizing stays). ``derived`` names the modalities taken from the
    media limits rather than from the spec."""

    video: VideoMaximum | None = None
    audio: AudioMaximum | None = None
    derived: tuple[str, ...] = ()

    def spec(self) -> str:
        """The flag value that declares exactly this (derived entries written out)."""
        parts = []
        if self.video is not None:
            parts.append(f"video={self.video.spec()}")
        if self.audio is not None:
            parts.append(f"audio={self.audio.spec()}")
        return ",".join(parts)

    def setting(self, modality: str) -> str:
        """How a message names where this modality's maximum comes from."""
        if modality in self.derived:
            flag = "--max-video-frames" if modality == "video" else "--max-audio-seconds"
            return f"{SETTING} (derived from {flag})"
        item = self.video if modality == "video" else self.audio
        return f"{SETTING} {modality}={item.spec() if item else '?'}"

    def to_config(self) -> dict[str, Any]:
        """The JSON-able form vLLM carries in ``hf_config`` (``hf_overrides``)."""
        out: dict[str, Any] = {"derived": list(self.derived)}
        if self.video is not None:
            v = self.video
            out["video"] = {
                "num_frames": v.num_frames,
                "width": v.width,
                "height": v.height,
                "last_frame_s": v.last_frame_s,
                "fps": v.fps,
            }
        if self.audio is not None:
            out["audio"] = {"seconds": self.audio.seconds}
        return out

    @classmethod
    def from_config(cls, value: Any) -> ItemMaxima | None:
        """The declaration in a model's ``hf_config`` (None: exact sizing is off)."""
        if not isinstance(value, Mapping):
            return None
        video = value.get("video")
        audio = value.get("audio")
        return cls(
            video=VideoMaximum(
                int(video["num_frames"]),
                int(video["width"]),
                int(video["height"]),
                float(video["last_frame_s"]),
                None if video.get("fps") is None else float(video["fps"]),
            )
            if video
            else None,
            audio=AudioMaximum(float(audio["seconds"])) if audio else None,
            derived=tuple(value.get("derived") or ()),
        )

    def hf_overrides(self, existing: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """vLLM ``hf_overrides`` carrying the declaration, merged into the operator's own.
        The value registers nanovl's model class in every engine process it reaches
        (``model.vllm_plugin.CarriedDeclaration``)."""
        from model.vllm_plugin import CarriedDeclaration

        if existing is not None and not isinstance(existing, Mapping):
            raise InvalidArgument(f"{SETTING} needs --hf-overrides to be a JSON object (it adds {HF_CONFIG_KEY!r})")
        return {**(existing or {}), HF_CONFIG_KEY: CarriedDeclaration(self.to_config())}


def parse(
    spec: str,
    *,
    max_video_frames: int,
    max_audio_seconds: float,
    frame_side: int = 0,
    supports_audio: bool = True,
) -> ItemMaxima:
    """Parse the flag's value against the media limits (an item over them is refused at
    decoding anyway, so a larger declaration is an operator error).

    ``frame_side``: the model's video frame side (``force_image_size``), the frame a
    derived video is sized with; ``supports_audio``: whether the checkpoint has audio.
    Raises ``InvalidArgument`` naming the flag.
    """
    text = spec.strip()
    if not text:
        raise InvalidArgument(f"{SETTING}: give 'limits' or video=FxWxH@FPS and/or audio=SECONDS")
    declared: dict[str, str] = {}
    if text != "limits":
        for part in text.split(","):
            name, sep, value = part.strip().partition("=")
            if not sep or name not in ("video", "audio") or not value:
                raise InvalidArgument(
                    f"{SETTING}: expected 'limits' or a comma list of video=FRAMESxWxH@FPS and "
                    f"audio=SECONDS, got {part.strip()!r} (images are sized exactly by vLLM already)"
                )
            if name in declared:
                raise InvalidArgument(f"{SETTING}: {name} is declared twice")
            declared[name] = value

    video: VideoMaximum | None
    derived: list[str] = []
    if "video" in declared:
        size, sep, fps_text = declared["video"].partition("@")
        if not sep:
            raise InvalidArgument(
                f"{SETTING}: video={declared['video']} needs a frame rate: FRAMESxWxH@FPS (frame timestamps "
                "are part of the prompt, so their range matters)"
            )
        frames, width, height = parse_dims(size, 3, f"{SETTING} video")
        fps = parse_seconds(fps_text, f"{SETTING} video fps")
        video = VideoMaximum.at_fps(frames, width, height, fps)
        if frames > max_video_frames:
            raise InvalidArgument(
                f"{SETTING} video={declared['video']}: {frames} frames is more than --max-video-frames "
                f"{max_video_frames} lets a request send"
            )
    else:
        side = max(frame_side, 1)
        video = VideoMaximum(max_video_frames, side, side, DERIVED_VIDEO_SECONDS)
        derived.append("video")

    audio: AudioMaximum | None = None
    if "audio" in declared:
        if not supports_audio:
            raise InvalidArgument(f"{SETTING}: this checkpoint has no audio encoder; drop audio=")
        audio = AudioMaximum(parse_seconds(declared["audio"], f"{SETTING} audio"))
        if audio.seconds > max_audio_seconds:
            raise InvalidArgument(
                f"{SETTING} audio={declared['audio']}: longer than --max-audio-seconds {max_audio_seconds:g}"
            )
    elif supports_audio:
        audio = AudioMaximum(max_audio_seconds)
        derived.append("audio")
    return ItemMaxima(video=video, audio=audio, derived=tuple(derived))
