"""Request media bytes → the objects vLLM's ``multi_modal_data`` takes for Nemotron Nano VL.

Every function here is synchronous, CPU-bound and thread-safe (no shared mutable state,
no library globals touched): callers run them in a bounded thread pool, never on the
event loop.

Error policy:
- bytes that are empty, corrupt, truncated or in a format we do not accept →
  ``MediaDecodeError`` (INVALID_ARGUMENT), naming the modality and what was wrong;
- parameters that are nonsensical (zero width, negative fps, misaligned raw bytes) →
  ``InvalidArgument``;
- anything over a configured ``MediaLimits`` bound → ``ResourceExhausted`` (as gRPC does
  for oversized messages), saying the limit, its setting name, and what to send instead.
"""

from __future__ import annotations

import bisect
import io
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import av
import av.container
import numpy as np
import numpy.typing as npt
import soundfile
import soxr
from PIL import Image, ImageOps, UnidentifiedImageError

from nanovl.errors import InvalidArgument, MediaDecodeError, NanovlError, ResourceExhausted

T = TypeVar("T")

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_MEDIA_LIMITS",
    "AcceptedFormats",
    "DecodedAudio",
    "DecodedImage",
    "DecodedVideo",
    "MediaLimits",
    "PcmEncoding",
    "VideoSampling",
    "audio_from_pcm",
    "decode_audio",
    "decode_image",
    "decode_video",
    "decode_video_audio",
    "video_from_raw_frames",
]


# --------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class AcceptedFormats:
    """What each modality accepts; GetModelInfo reports this verbatim."""

    image: tuple[str, ...]
    video: tuple[str, ...]
    raw_video: tuple[str, ...]
    audio: tuple[str, ...]
    raw_audio: tuple[str, ...]


ACCEPTED_FORMATS = AcceptedFormats(
    image=("png", "jpeg", "webp", "gif", "bmp"),
    video=("mp4", "mov", "webm", "mkv", "avi"),
    raw_video=("rgb24",),
    audio=("wav", "flac", "ogg", "mp3", "m4a", "aac", "webm", "mp4"),
    raw_audio=("s16le", "f32le"),
)

_DISPLAY = {
    "png": "PNG",
    "jpeg": "JPEG",
    "webp": "WebP",
    "gif": "GIF",
    "bmp": "BMP",
    "mp4": "MP4",
    "mov": "MOV",
    "webm": "WebM",
    "mkv": "MKV",
    "avi": "AVI",
    "wav": "WAV",
    "flac": "FLAC",
    "ogg": "OGG",
    "mp3": "MP3",
    "m4a": "M4A",
    "aac": "AAC",
}

# Pillow format name → ours. Restricting Image.open to these plugins keeps the other ~40
# Pillow decoders (and their CVE history) out of reach of request bytes.
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
_PIL_OPENERS = ["PNG", "JPEG", "WEBP", "GIF", "BMP"]  # the JPEG opener also yields MPO

# FFmpeg demuxers we let video bytes reach. Checked right after probing, before any
# decoding, so FFmpeg's long tail of exotic demuxers/decoders stays out of reach.
_VIDEO_DEMUXERS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi")
_AUDIO_DEMUXERS = {
    "mp3": "mp3",
    "mov,mp4,m4a,3gp,3g2,mj2": "m4a",  # or "mp4": see _audio_container_name
    "ogg": "ogg",
    "aac": "aac",
    "matroska,webm": "webm",
    "wav": "wav",
    "flac": "flac",
}
# libsndfile major format → ours; anything else it recognises goes to the PyAV path.
_SNDFILE_FORMATS = {"WAV": "wav", "WAVEX": "wav", "RF64": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3"}


def _accepted(names: tuple[str, ...]) -> str:
    return ", ".join(_DISPLAY.get(n, n) for n in names)


def _head(data: bytes) -> str:
    return f"got {len(data)} bytes starting with 0x{data[:8].hex()}"


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class MediaLimits:
    """Per-item bounds enforced before the expensive part of decoding."""

    max_image_pixels: int = 40_000_000
    max_video_frames: int = 256
    max_video_pixels_per_frame: int = 3840 * 2160
    # Frames are kept at source resolution (the processor resizes them), so frames ×
    # resolution bounds the memory one request can pin: 256 4K frames would be 6.4 GB.
    max_video_decoded_bytes: int = 2 * 1024**3
    max_audio_seconds: float = 600.0  # = vLLM's MAX_AUDIO_LEN_S for this model
    # Decoded pixels per encoded byte, for images over IMAGE_AMPLIFICATION_FREE_PIXELS
    # (issue 10, N5). Real files stay far below: a baseline JPEG spends at least ~6 bits on
    # each 8x8 block (< 100 px/byte), and deflate compresses at most ~1032:1, so a blank
    # RGB PNG is ~340 px/byte and a blank 8-bit one ~1032. Above it: 1/2/4-bit PNGs of
    # nothing (a 4.4 KB PNG decoding to 36 Mpx) and JPEGs whose scan ends early (an 857 B
    # file declaring 6000x6000, the rest filled grey by the decoder): decode bombs, refused
    # from the header alone (RESOURCE_EXHAUSTED).
    max_image_pixels_per_byte: int = 2048
    # Decoded pixels per encoded byte of a video, counting every frame the decoder must
    # decode to reach the sampled ones (from each one's keyframe on), once that is over
    # VIDEO_AMPLIFICATION_FREE_PIXELS (verify-10b D6: a 51 KB single-GOP clip of 1500
    # black 1080p frames cost 5.8 s of CPU and 1.6 GB for 256 sampled frames, 61 000 px/B).
    # Camera video at 1 Mbit/s is ~500 px/B at 1080p30; a static screen recording with a
    # keyframe every 250 frames (x264's default) and 16 sampled frames stays under ~2000.
    max_video_pixels_per_byte: int = 4096

    def __post_init__(self) -> None:
        for name in (
            "max_image_pixels",
            "max_video_frames",
            "max_video_pixels_per_frame",
            "max_video_decoded_bytes",
            "max_audio_seconds",
            "max_image_pixels_per_byte",
            "max_video_pixels_per_byte",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"MediaLimits.{name} must be > 0, got {getattr(self, name)!r}")


DEFAULT_MEDIA_LIMITS = MediaLimits()


def _over_limit(what: str, value: str, limit: str, setting: str, remedy: str) -> ResourceExhausted:
    return ResourceExhausted(
        f"{what} {value} exceeds this server's limit of {limit} (media limit {setting}); "
        f"{remedy}, or ask the operator to raise {setting}"
    )


# --------------------------------------------------------------------------- decoded media


@dataclass(frozen=True, eq=False)
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied
    format: str  # one of ACCEPTED_FORMATS.image
    width: int
    height: int
    nbytes: int  # encoded size
    source_mode: str = "RGB"  # Pillow mode before conversion ("I;16", "P", "CMYK", ...)

    def to_vllm(self) -> Image.Image:
        return self.image


@dataclass(frozen=True, eq=False)
class DecodedVideo:
    """Sampled frames plus what the model is told about them.

    ``frames[i]`` is the source frame at presentation position ``frame_indices[i]``,
    shown at ``timestamps_s[i]`` seconds after the clip's first frame, already turned
    upright (``rotation_degrees`` clockwise, after a left-right mirror if ``mirrored``)
    as the container's display matrix asks.
    """

    frames: npt.NDArray[np.uint8]  # [T, H, W, 3] RGB, upright; treat as read-only
    frame_indices: tuple[int, ...]  # presentation-order position of each frame in the source clip
    fps: float  # source frame rate (average; informational for VFR clips)
    source_frame_count: int
    duration_s: float
    container_format: str  # one of ACCEPTED_FORMATS.video, or "raw"
    codec: str  # e.g. "h264", "vp8", "rgb24"
    nbytes: int  # request bytes
    timestamps_s: tuple[float, ...] = ()  # presentation time of each frame; () = index / fps
    rotation_degrees: int = 0  # clockwise rotation applied for display: 0, 90, 180 or 270
    mirrored: bool = False  # a left-right mirror was applied before the rotation
    width: int = field(init=False)
    height: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "height", int(self.frames.shape[1]))
        object.__setattr__(self, "width", int(self.frames.shape[2]))
        if not self.timestamps_s:
            object.__setattr__(self, "timestamps_s", tuple(i / self.fps for i in self.frame_indices))

    @property
    def sampled_frame_count(self) -> int:
        return int(self.frames.shape[0])

    def to_vllm(self) -> tuple[npt.NDArray[np.uint8], dict[str, Any]]:
        from model.prompt import video_item_at_times

        return video_item_at_times(
            self.frames,
            timestamps_s=self.timestamps_s,
            total_num_frames=self.source_frame_count,
            duration_s=self.duration_s,
            backend="pyav",
        )


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    waveform: npt.NDArray[np.float32]  # mono, at sample_rate
    sample_rate: int
    format: str  # "wav", "mp3", ..., or "pcm_s16le" / "pcm_f32le"
    source_sample_rate: int
    source_channels: int
    duration_s: float  # of the source
    resampled: bool
    nbytes: int  # request bytes

    def to_vllm(self) -> tuple[npt.NDArray[np.float32], int]:
        return self.waveform, self.sample_rate


# --------------------------------------------------------------------------- image


# Images up to this size are decoded whatever their bytes-to-pixels ratio (12 MB of RGB).
IMAGE_AMPLIFICATION_FREE_PIXELS = 4_000_000


def decode_image(data: bytes, limits: MediaLimits = DEFAULT_MEDIA_LIMITS) -> DecodedImage:
    """Decode PNG/JPEG/WebP/GIF (first frame)/BMP into an upright RGB PIL image."""
    if not data:
        raise MediaDecodeError(f"image: empty bytes; send one of {_accepted(ACCEPTED_FORMATS.image)}")
    return _guard("image", ACCEPTED_FORMATS.image, lambda: _decode_image(data, limits))


def _decode_image(data: bytes, limits: MediaLimits) -> DecodedImage:
    try:
        # Image.open reads only the header, so the size check below runs before any
        # pixel is decoded. Pillow raises DecompressionBombError itself above
        # 2 × Image.MAX_IMAGE_PIXELS (a process-wide setting we deliberately leave alone).
        im = Image.open(io.BytesIO(data), formats=_PIL_OPENERS)
    except Image.DecompressionBombError as e:
        raise ResourceExhausted(f"image: {e}; downscale the image") from e
    except UnidentifiedImageError as e:
        raise MediaDecodeError(
            f"image: cannot identify image format ({_head(data)}); accepted: {_accepted(ACCEPTED_FORMATS.image)}"
        ) from e
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
        # The header itself is cut short or inconsistent (e.g. a PNG cut inside IHDR:
        # "Truncated File Read").
        raise MediaDecodeError(
            f"image: the header is truncated or corrupt ({e}; {_head(data)}); "
            f"send a complete file in one of {_accepted(ACCEPTED_FORMATS.image)}"
        ) from e
    with im:
        fmt = _PIL_FORMATS[im.format or ""]
        w, h = im.size
        if w * h > limits.max_image_pixels:
            raise _over_limit(
                "image:",
                f"{w}x{h} = {w * h:,} pixels",
                f"{limits.max_image_pixels:,} pixels",
                "max_image_pixels",
                "downscale the image",
            )
        if w * h > IMAGE_AMPLIFICATION_FREE_PIXELS and w * h > limits.max_image_pixels_per_byte * len(data):
            raise _over_limit(
                "image:",
                f"{w}x{h} = {w * h:,} pixels from {len(data):,} bytes ({w * h // len(data):,} pixels per byte)",
                f"{limits.max_image_pixels_per_byte:,} pixels per byte above "
                f"{IMAGE_AMPLIFICATION_FREE_PIXELS:,} pixels",
                "max_image_pixels_per_byte",
                "send the image at its real size (a JPEG whose data ends early, or a PNG of that size "
                "holding almost nothing, decodes to more pixels than its bytes carry)",
            )
        try:
            im.load()
        except Image.DecompressionBombError as e:
            raise ResourceExhausted(f"image: {e}; downscale the image") from e
        except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError) as e:
            raise MediaDecodeError(f"image: corrupt or truncated {_DISPLAY[fmt]} data ({e})") from e
        if fmt == "jpeg" and not _jpeg_scan_complete(data):
            raise MediaDecodeError(
                "image: corrupt or truncated JPEG data (the compressed scan ends before the image's "
                f"{w}x{h} pixels are coded; a decoder would fill the rest with grey); send the complete file"
            )
        source_mode = im.mode
        rgb = _to_rgb(_upright(im))
    return DecodedImage(
        image=rgb, format=fmt, width=rgb.width, height=rgb.height, nbytes=len(data), source_mode=source_mode
    )


def _jpeg_scan_complete(data: bytes) -> bool:
    """Whether a JPEG that Pillow decoded codes every pixel it declares.

    libjpeg (Pillow's decoder) treats a scan that ends early (a file cut short and closed
    with an EOI marker, or a frame header claiming more than its data holds) as a warning:
    it fills the missing blocks with grey and Pillow reports nothing. FFmpeg's MJPEG
    decoder with ``err_detect=explode`` fails on such a scan instead; ``lowres=3``
    entropy-decodes every block but reconstructs only 1/8 of each side (about half of
    Pillow's decode time). When FFmpeg cannot decode the file even leniently (a JPEG
    variant it does not support, e.g. arithmetic coding), Pillow's verdict stands."""

    def decodes(options: dict[str, str]) -> bool:
        try:
            codec = av.CodecContext.create("mjpeg", "r")
            codec.thread_count = 1
            codec.options = {"lowres": "3", **options}
            codec.decode(av.Packet(data))
            return True
        except (av.FFmpegError, ValueError):
            return False

    return decodes({"err_detect": "explode"}) or not decodes({})


def _upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 — a malformed EXIF block must not reject good pixels
        return im


# Modes whose samples are wider than 8 bits. Pillow's own convert("RGB") clips them at
# 255 instead of rescaling (a 16-bit ramp becomes black/white), so they are scaled here.
# The PNG plugin opens 16-bit grayscale as "I;16" (older Pillow: "I", holding the same
# 16-bit sample values); 16-bit RGB/RGBA/LA PNGs already arrive reduced to 8 bits.
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode → the 8-bit RGB picture an image viewer shows.

    The reference is what a viewer renders: full-range samples mapped linearly to 0–255
    (16-bit: ``v / 257``, so 65535 → 255 and the 256-level ramp ``x * 257`` stays 256
    levels), palettes expanded, transparency (alpha channel, palette alpha or a PNG tRNS
    colour key) composited on white like vLLM's own ``convert_image_mode`` does, CMYK and
    YCbCr through Pillow's conversions. "F" (32-bit float) has no accepted file format
    that produces it; it is read as intensities in [0, 1], the float-image convention.

    Raises ``MediaDecodeError`` for a mode Pillow cannot convert to RGB.
    """
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode in _HIGH_DEPTH_MODES:
        im = _high_depth_to_8bit(im)
    try:
        if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
            # Composite on white like vLLM does: a plain convert() would expose whatever
            # colour sits under transparent pixels (often black).
            rgba = im.convert("RGBA")
            out = Image.new("RGB", rgba.size, (255, 255, 255))
            out.paste(rgba, mask=rgba.getchannel("A"))
            return out
        return im.convert("RGB")
    except ValueError as e:  # a mode without an RGB conversion (e.g. LAB from a plugin)
        raise MediaDecodeError(f"image: pixel mode {im.mode!r} cannot be shown as RGB ({e})") from e


def _high_depth_to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale → "L" (or "LA" for a tRNS colour key)."""
    samples = np.asarray(im)
    if im.mode == "F":
        scaled = np.clip(np.nan_to_num(samples.astype(np.float64)), 0.0, 1.0) * 255.0
    else:
        # 16-bit full scale; "I" from the accepted formats also holds 16-bit samples.
        scaled = np.clip(samples.astype(np.float64), 0, 65535) / 257.0
    gray = np.rint(scaled).astype(np.uint8)
    key = im.info.get("transparency")
    if isinstance(key, int | float) and im.mode != "F":
        # PNG tRNS for grayscale: pixels equal to this 16-bit value are transparent.
        alpha = np.where(samples == key, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([gray, alpha], axis=-1), "LA")
    return Image.fromarray(gray, "L")


# --------------------------------------------------------------------------- video


@dataclass(frozen=True)
class VideoSampling:
    """How to choose frames from a clip, by presentation time (the controls vLLM's HTTP
    server takes as ``media_io_kwargs``: ``num_frames``, ``fps``, ``max_frames``).

    - ``fps`` unset: ``num_frames`` frames at times spread uniformly from the first to
      the last frame's presentation time.
    - ``fps`` set: one frame every ``1 / fps`` seconds from the first frame on; if that
      gives more than ``num_frames`` (when set) or ``max_frames``, that many frames
      uniformly over the clip instead ("whichever gives fewer", as vLLM's loader does).
    - ``max_frames`` caps both modes.

    The frame taken for a time ``t`` is the one on screen at ``t`` (the last frame whose
    presentation time is <= ``t``), so a variable-frame-rate clip is sampled evenly in
    time, not in frame count. Times that land on the same frame give it once: a clip
    with fewer frames than asked (or a long still) yields fewer frames, never
    duplicates; ``DecodedVideo`` / ``Started`` report what was taken.
    """

    num_frames: int | None = None
    fps: float | None = None
    max_frames: int | None = None

    def validate(self, limits: MediaLimits) -> None:
        if self.num_frames is None and self.fps is None:
            raise InvalidArgument("video: set num_frames or fps to say how to sample frames")
        if self.num_frames is not None:
            if self.num_frames < 1:
                raise InvalidArgument(f"video: num_frames must be >= 1, got {self.num_frames}")
            _check_num_frames(self.num_frames, limits)
        if self.max_frames is not None:
            if self.max_frames < 1:
                raise InvalidArgument(f"video: max_frames must be >= 1, got {self.max_frames}")
            _check_num_frames(self.max_frames, limits, name="max_frames")
        if self.fps is not None and not (math.isfinite(self.fps) and 0 < self.fps <= _MAX_SAMPLING_FPS):
            raise InvalidArgument(
                f"video: fps must be > 0 and <= {_MAX_SAMPLING_FPS:g} frames per second, got {self.fps}"
            )

    def target_times(self, last_s: float, limits: MediaLimits) -> npt.NDArray[np.float64]:
        """Times (s, from the first frame) to take frames at, for a clip whose last frame
        is shown at ``last_s``."""
        cap = min(n for n in (self.num_frames, self.max_frames, limits.max_video_frames) if n is not None)
        if self.fps is not None:
            # +1 µs: a frame exactly on the grid is not lost to float rounding.
            on_grid = math.floor(last_s * self.fps + 1e-6) + 1
            if on_grid <= cap:
                return np.arange(on_grid, dtype=np.float64) / self.fps
        return np.linspace(0.0, last_s, cap) if cap > 1 else np.zeros(1)


_MAX_SAMPLING_FPS = 240.0


def decode_video(
    data: bytes,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    limits: MediaLimits = DEFAULT_MEDIA_LIMITS,
) -> DecodedVideo:
    """Decode an MP4/MOV/WebM/MKV/AVI clip into upright RGB frames sampled by time.

    Sampling (see ``VideoSampling``): ``num_frames`` uniformly over the clip, or one
    frame every ``1 / fps`` seconds, capped by ``max_frames``; frames are chosen by
    presentation timestamp, so variable-frame-rate clips (phones, screen recorders,
    streaming encoders) are sampled evenly in time and ``timestamps_s`` holds each
    frame's real time. Streams without usable timestamps fall back to ``index / fps``.

    Orientation: the container's display matrix (MP4/MOV ``tkhd`` matrix, Matroska
    projection, H.264 display-orientation SEI; what a phone writes for portrait video)
    is applied to every frame, as players and vLLM's default OpenCV loader do.

    Only the sampled frames are converted to RGB and kept. When keyframes allow, the
    decoder seeks to the keyframe before each sampled frame instead of decoding the whole
    clip; if seeking is unusable (no timestamps, inexact seek) it falls back to one
    sequential pass.

    Returns ``DecodedVideo`` with ``frames`` ``[T, H, W, 3] uint8``. Raises
    ``MediaDecodeError`` (INVALID_ARGUMENT) for bytes that are not an accepted, intact
    clip, ``InvalidArgument`` for bad sampling values and ``ResourceExhausted`` over a
    ``MediaLimits`` bound.
    """
    if not data:
        raise MediaDecodeError(f"video: empty bytes; send one of {_accepted(ACCEPTED_FORMATS.video)}")
    sampling = VideoSampling(num_frames=num_frames, fps=fps, max_frames=max_frames)
    sampling.validate(limits)
    return _guard("video", ACCEPTED_FORMATS.video, lambda: _decode_video(data, sampling, limits))


def _decode_video(data: bytes, sampling: VideoSampling, limits: MediaLimits) -> DecodedVideo:
    container = _open_av_or_raise("video", data, ACCEPTED_FORMATS.video)
    fmt = "video"
    try:
        with container:
            if container.format.name not in _VIDEO_DEMUXERS:
                raise MediaDecodeError(
                    f"video: container format {container.format.name!r} is not accepted; "
                    f"accepted: {_accepted(ACCEPTED_FORMATS.video)}"
                )
            fmt = _video_container_name(container, data)
            if not container.streams.video:
                raise MediaDecodeError(f"video: the {_DISPLAY.get(fmt, fmt)} container has no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            width, height = stream.codec_context.width, stream.codec_context.height
            if width <= 0 or height <= 0:
                raise MediaDecodeError(f"video: the {codec} stream declares no frame size")
            if width * height > limits.max_video_pixels_per_frame:
                raise _over_limit(
                    "video: frame size",
                    f"{width}x{height} = {width * height:,} pixels",
                    f"{limits.max_video_pixels_per_frame:,} pixels per frame",
                    "max_video_pixels_per_frame",
                    "downscale the video",
                )
            probe = _probe_packets(container, stream)
            if probe.count == 0:
                raise MediaDecodeError(f"video: the {codec} stream contains no frames")
            fps = _frame_rate(stream, container, probe.count)
            duration = _duration(stream, container, probe.count, fps)
            stream_index = stream.index

        times = _presentation_times(probe, stream_time_base=probe.time_base, fps=fps)
        # MP4 durations come from decode timestamps, which can end before the last frame's
        # presentation time (B-frames in a VFR clip); the clip lasts at least until its
        # last frame has been shown for as long as the one before it.
        last_gap = float(times[-1] - times[-2]) if len(times) > 1 else 1.0 / fps
        duration = max(duration, float(times[-1]) + last_gap)
        indices = _indices_at(times, sampling.target_times(float(times[-1]), limits))
        decoded_bytes = len(indices) * width * height * 3
        if decoded_bytes > limits.max_video_decoded_bytes:
            raise _over_limit(
                "video:",
                f"{len(indices)} frames of {width}x{height} RGB = {decoded_bytes:,} bytes",
                f"{limits.max_video_decoded_bytes:,} bytes",
                "max_video_decoded_bytes",
                "request fewer frames or send a lower-resolution video",
            )
        _check_amplification(_frames_to_decode(probe, indices), len(indices), width, height, len(data), limits)
        sink = _FrameSink(len(indices), width, height)
        # The same bound, enforced while decoding: the count above trusts the container's
        # keyframe index, which a file can fake (verify-10c E1: an MP4 without its stss box
        # says every frame is a keyframe, and its 1500 frames were decoded in full).
        budget = _DecodeBudget(len(indices), width, height, len(data), limits)
        done = probe.seekable and _decode_by_seeking(data, stream_index, probe, indices, sink, budget)
        if not done:
            _decode_sequentially(data, stream_index, indices, sink, budget)
    except av.FFmpegError as e:
        raise MediaDecodeError(
            f"video: corrupt or truncated {_DISPLAY.get(fmt, fmt)} data, or a frame mid-stream larger than this "
            f"server's max_video_pixels_per_frame ({limits.max_video_pixels_per_frame:,} pixels): {_av_reason(e)}"
        ) from e

    return DecodedVideo(
        frames=sink.frames,
        frame_indices=tuple(indices),
        fps=fps,
        source_frame_count=probe.count,
        duration_s=duration,
        container_format=fmt,
        codec=codec,
        nbytes=len(data),
        timestamps_s=tuple(float(times[i]) for i in indices),
        rotation_degrees=sink.orientation.rotation_degrees,
        mirrored=sink.orientation.mirrored,
    )


# Decoded pixels a video may cost whatever its size (129 frames of 1080p, about 0.5 s of
# one core here; 870 of 640x480): below this, the per-byte limit does not apply, as for
# images. A 10 s black 640x480 clip (11 KB, keyframe every 250 frames) stays below it.
VIDEO_AMPLIFICATION_FREE_PIXELS = 256 * 1024**2


def _frames_to_decode(probe: _PacketProbe, indices: Sequence[int]) -> int:
    """Frames the decoder must decode to reach the sampled ``indices`` (presentation
    order): from the keyframe at or before each one (``_decode_by_seeking``, which goes on
    without seeking inside the same stretch), or every frame up to the last one when the
    stream cannot be seeked (``_decode_sequentially``)."""
    if not indices:
        return 0
    if not probe.seekable:
        return max(indices) + 1
    key_positions = [bisect.bisect_left(probe.pts, k) for k in probe.keyframe_pts]
    decoded, last = 0, -1
    for index in sorted(indices):
        if index <= last:
            continue
        k = bisect.bisect_right(key_positions, index) - 1
        start = key_positions[k] if k >= 0 else 0
        decoded += index - max(start, last + 1) + 1
        last = index
    return decoded


def _check_amplification(
    frames: int, sampled: int, width: int, height: int, nbytes: int, limits: MediaLimits, *, pixels: int | None = None
) -> None:
    """RESOURCE_EXHAUSTED when decoding ``frames`` frames of ``width``x``height`` from
    ``nbytes`` encoded bytes is past ``max_video_pixels_per_byte`` (above
    ``VIDEO_AMPLIFICATION_FREE_PIXELS``): decided from the demuxed packets, before any
    frame is decoded. ``pixels``: the frames' actual total, when they were decoded (a
    stream can change its frame size mid-way)."""
    size = f"{width}x{height}" if pixels is None else f"{width}x{height} or more"
    pixels = frames * width * height if pixels is None else pixels
    if pixels > VIDEO_AMPLIFICATION_FREE_PIXELS and pixels > limits.max_video_pixels_per_byte * nbytes:
        raise _over_limit(
            "video:",
            f"reaching the {sampled} sampled frames means decoding {frames} frames of {size} = "
            f"{pixels:,} pixels from {nbytes:,} bytes ({pixels // nbytes:,} pixels per byte)",
            f"{limits.max_video_pixels_per_byte:,} pixels per byte above {VIDEO_AMPLIFICATION_FREE_PIXELS:,} pixels",
            "max_video_pixels_per_byte",
            "request fewer frames, send a lower-resolution video or one encoded with keyframes more often "
            "(e.g. every 2 s)",
        )


@dataclass
class _DecodeBudget:
    """Frames a decode may still go through: :func:`_check_amplification`'s bound, counted
    over every frame the decoder returns (the seeking path and the sequential one after it)."""

    sampled: int
    width: int
    height: int
    nbytes: int
    limits: MediaLimits
    decoded: int = 0
    pixels: int = 0

    def frames(self, frames: Iterator[av.VideoFrame]) -> Iterator[av.VideoFrame]:
        """``frames`` with each one's own size counted: a stream that declares 64x64 and
        switches to 4K after its first frames is counted at 4K (verify-10d F1). No frame
        over ``max_video_pixels_per_frame`` gets here (:func:`_bounded_decoder`)."""
        for frame in frames:
            self.decoded += 1
            self.pixels += frame.width * frame.height
            _check_amplification(
                self.decoded, self.sampled, self.width, self.height, self.nbytes, self.limits, pixels=self.pixels
            )
            yield frame


def _bounded_decoder(stream: av.VideoStream, limits: MediaLimits) -> av.VideoStream:
    """``stream`` whose decoder refuses, before decoding it, any frame over
    ``max_video_pixels_per_frame`` (FFmpeg's ``max_pixels`` codec option): the size the
    container declares is checked up front, but a stream can switch to a larger one
    mid-way (verify-10d F1: 30 frames of 64x64, then 8192x8192)."""
    stream.codec_context.options = {
        **stream.codec_context.options,
        "max_pixels": str(limits.max_video_pixels_per_frame),
    }
    return stream


def video_from_raw_frames(
    data: bytes,
    *,
    width: int,
    height: int,
    num_frames: int,
    fps: float,
    limits: MediaLimits = DEFAULT_MEDIA_LIMITS,
) -> DecodedVideo:
    """Wrap ``num_frames`` concatenated RGB24 frames (row-major, no padding) as a video."""
    for name, value in (("width", width), ("height", height), ("num_frames", num_frames)):
        if value <= 0:
            raise InvalidArgument(f"video: raw frames need {name} > 0, got {value}")
    if not (math.isfinite(fps) and fps > 0):
        raise InvalidArgument(f"video: raw frames need fps > 0, got {fps}")
    _check_num_frames(num_frames, limits)
    if width * height > limits.max_video_pixels_per_frame:
        raise _over_limit(
            "video: raw frame size",
            f"{width}x{height} = {width * height:,} pixels",
            f"{limits.max_video_pixels_per_frame:,} pixels per frame",
            "max_video_pixels_per_frame",
            "downscale the frames",
        )
    expected = num_frames * height * width * 3
    if expected > limits.max_video_decoded_bytes:
        raise _over_limit(
            "video:",
            f"{num_frames} raw frames of {width}x{height} = {expected:,} bytes",
            f"{limits.max_video_decoded_bytes:,} bytes",
            "max_video_decoded_bytes",
            "send fewer or smaller frames",
        )
    if len(data) != expected:
        diff = len(data) - expected
        raise InvalidArgument(
            f"video: raw RGB24 frames need num_frames x height x width x 3 = "
            f"{num_frames} x {height} x {width} x 3 = {expected} bytes; got {len(data)} "
            f"({abs(diff)} bytes {'too many' if diff > 0 else 'short'})"
        )
    # Copy: the array must own writable memory (torch.from_numpy warns on read-only
    # buffers) and must not pin the request message.
    frames = np.frombuffer(data, dtype=np.uint8).reshape(num_frames, height, width, 3).copy()
    return DecodedVideo(
        frames=frames,
        frame_indices=tuple(range(num_frames)),
        fps=float(fps),
        source_frame_count=num_frames,
        duration_s=num_frames / fps,
        container_format="raw",
        codec="rgb24",
        nbytes=len(data),
    )


def _check_num_frames(num_frames: int, limits: MediaLimits, *, name: str = "num_frames") -> None:
    if num_frames < 1:
        raise InvalidArgument(f"video: {name} must be >= 1, got {num_frames}")
    if num_frames > limits.max_video_frames:
        raise _over_limit(
            f"video: {name}",
            str(num_frames),
            f"{limits.max_video_frames} frames",
            "max_video_frames",
            f"request at most {limits.max_video_frames} frames",
        )


def _video_container_name(container: av.container.InputContainer, data: bytes) -> str:
    """mp4/mov/webm/mkv/avi: FFmpeg names demuxer families, spans want the file type."""
    name = container.format.name
    if name.startswith("mov,"):
        return "mov" if container.metadata.get("major_brand", "").strip() == "qt" else "mp4"
    if name.startswith("matroska"):
        # The EBML header's DocType ("webm" / "matroska") sits in the first bytes;
        # FFmpeg does not expose it.
        return "webm" if b"webm" in data[:64] else "mkv"
    return name


def _audio_container_name(container: av.container.InputContainer) -> str:
    name = _AUDIO_DEMUXERS[container.format.name]
    if name == "m4a" and not container.metadata.get("major_brand", "").startswith("M4A"):
        return "mp4"  # the audio track of an MP4 video
    return name


def _guard(kind: str, accepted: tuple[str, ...], decode: Callable[[], T]) -> T:
    """Run a decoder on client bytes; whatever escapes it becomes a status.

    Pillow, FFmpeg and libsndfile raise a zoo of exception types on hostile bytes
    (``OSError``, ``struct.error``, ``IndexError``, ``AttributeError`` on a missing codec
    context, ...). The specific ones are caught where they happen, with precise
    messages; this net guarantees the rest still reach the client as INVALID_ARGUMENT
    (or RESOURCE_EXHAUSTED for memory), never as INTERNAL.
    """
    try:
        return decode()
    except NanovlError:
        raise
    except MemoryError as e:
        raise ResourceExhausted(
            f"{kind}: decoding needs more memory than this server allows for one item; send a smaller {kind}"
        ) from e
    except Exception as e:  # noqa: BLE001 — see docstring
        raise MediaDecodeError(
            f"{kind}: the data could not be decoded ({type(e).__name__}: {e}); it is truncated, corrupt, "
            f"or not one of the accepted formats: {_accepted(accepted)}"
        ) from e


def _av_reason(e: av.FFmpegError) -> str:
    return getattr(e, "strerror", None) or str(e)


def _open_av_or_raise(kind: str, data: bytes, accepted: tuple[str, ...]) -> av.container.InputContainer:
    try:
        return _open_av(data)
    except av.FFmpegError as e:
        # ISO-BMFF files announce themselves with "ftyp" at offset 4; if FFmpeg still
        # cannot open one, the file is damaged (typically cut before its "moov" index).
        hint = (
            "the data looks like MP4/MOV but is truncated or corrupt (e.g. no moov atom)"
            if data[4:8] == b"ftyp"
            else "it is not an accepted format, or it is truncated or corrupt"
        )
        raise MediaDecodeError(
            f"{kind}: cannot open the data ({_head(data)}): {_av_reason(e)}; {hint}; accepted: {_accepted(accepted)}"
        ) from e


def _open_av(data: bytes) -> av.container.InputContainer:
    # metadata_errors="replace": a badly encoded title tag must not fail the request.
    return av.open(io.BytesIO(data), mode="r", metadata_errors="replace")


@dataclass(frozen=True)
class _PacketProbe:
    count: int  # frames in the stream (one packet per frame)
    pts: tuple[int, ...]  # presentation timestamps in presentation order
    keyframe_pts: tuple[int, ...]  # sorted
    seekable: bool  # every packet carried a distinct pts
    time_base: float  # seconds per pts unit (0 when the stream declares none)


def _probe_packets(container: av.container.InputContainer, stream: av.VideoStream) -> _PacketProbe:
    """Demux (no decoding) to count frames and locate keyframes exactly.

    Container headers are unreliable for this (WebM/MKV carry no frame count), and the
    bytes are already in memory, so a demux pass costs little next to decoding.
    """
    count = 0
    pts: list[int] = []
    keys: list[int] = []
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet PyAV appends at end of stream
            continue
        count += 1
        if packet.pts is not None:
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
    pts.sort()
    seekable = len(pts) == count and bool(keys) and len(set(pts)) == count
    return _PacketProbe(
        count=count,
        pts=tuple(pts),
        keyframe_pts=tuple(sorted(keys)),
        seekable=seekable,
        time_base=float(stream.time_base) if stream.time_base else 0.0,
    )


def _frame_rate(stream: av.VideoStream, container: av.container.InputContainer, count: int) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and float(rate) > 0:
            return float(rate)
    if container.duration and container.duration > 0:
        return count / (container.duration / av.time_base)
    raise MediaDecodeError("video: the stream declares no frame rate and no duration")


def _duration(stream: av.VideoStream, container: av.container.InputContainer, count: int, fps: float) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    return count / fps


def _presentation_times(probe: _PacketProbe, *, stream_time_base: float, fps: float) -> npt.NDArray[np.float64]:
    """Seconds from the first frame, per frame in presentation order.

    From the packets' timestamps when every frame has a distinct one (what a player
    uses); otherwise (e.g. AVI without pts) frames are assumed evenly spaced at ``fps``.
    """
    if probe.seekable and stream_time_base > 0 and len(probe.pts) == probe.count:
        pts = np.asarray(probe.pts, dtype=np.float64)
        return (pts - pts[0]) * stream_time_base
    return np.arange(probe.count, dtype=np.float64) / fps


def _indices_at(times: npt.NDArray[np.float64], targets: npt.NDArray[np.float64]) -> list[int]:
    """For each target time, the frame on screen then (last frame with time <= target);
    each frame at most once, in order."""
    # 1 µs slack: a target computed in float that sits on a frame's time takes that frame.
    positions = np.searchsorted(times, targets + 1e-6, side="right") - 1
    return sorted({int(p) for p in np.clip(positions, 0, len(times) - 1)})


@dataclass(frozen=True)
class _Orientation:
    """The display matrix reduced to a quarter-turn rotation and an optional mirror.

    FFmpeg's display matrix maps stored pixel (p, q) to display position
    ``(a*p + c*q, b*p + d*q)`` (``a, b, c, d`` = matrix[0], [1], [3], [4], 16.16 fixed
    point). Phones write pure quarter turns, possibly mirrored (front cameras); any other
    angle is snapped to the nearest quarter turn, as OpenCV's loader does (players would
    rotate by the exact angle and pad with black, which no sampled frame benefits from).
    """

    swap: bool = False  # output rows come from source columns
    flip_rows: bool = False
    flip_cols: bool = False

    @classmethod
    def of(cls, frame: av.VideoFrame) -> _Orientation:
        try:
            side = frame.side_data[av.sidedata.sidedata.Type.DISPLAYMATRIX]
        except (KeyError, ValueError, TypeError, AttributeError):
            return cls()
        raw = bytes(side)
        if len(raw) < 36:
            return cls()
        m = np.frombuffer(raw[:36], dtype="<i4").astype(np.float64)
        a, b, c, d = m[0], m[1], m[3], m[4]
        if not np.isfinite([a, b, c, d]).all() or (a == b == 0) or (c == d == 0):
            return cls()  # degenerate matrix: ignore rather than guess
        if abs(b) > abs(a):  # quarter turn: x' from q, y' from p
            return cls(swap=True, flip_rows=b < 0, flip_cols=c < 0)
        return cls(swap=False, flip_rows=d < 0, flip_cols=a < 0)

    def apply(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        out = rgb.transpose(1, 0, 2) if self.swap else rgb
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return out

    def shape(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) after orientation."""
        return (width, height) if self.swap else (height, width)

    @property
    def mirrored(self) -> bool:
        # A signed permutation is a mirror image when its determinant is negative.
        det = (-1 if self.flip_rows else 1) * (-1 if self.flip_cols else 1)
        return (det < 0) != self.swap

    @property
    def rotation_degrees(self) -> int:
        """Clockwise rotation applied (after the left-right mirror, when ``mirrored``)."""
        # Undo the mirror (negate the source x axis), then read the pure rotation.
        swap, fr, fc = self.swap, self.flip_rows, self.flip_cols
        if self.mirrored:
            if swap:
                fr = not fr  # x' = c*q, y' = b*p: negating p flips rows
            else:
                fc = not fc
        if not swap:
            return 180 if fr else 0
        return 90 if fc else 270


class _FrameSink:
    """The sampled frames, oriented as the display matrix says; the output array is
    allocated at the first frame, when the orientation is known."""

    def __init__(self, count: int, width: int, height: int) -> None:
        self.count, self.width, self.height = count, width, height
        self.orientation = _Orientation()
        self._frames: npt.NDArray[np.uint8] | None = None

    def put(self, slot: int, frame: av.VideoFrame) -> None:
        if self._frames is None:
            self.orientation = _Orientation.of(frame)
            h, w = self.orientation.shape(self.width, self.height)
            self._frames = np.empty((self.count, h, w, 3), dtype=np.uint8)
        # width/height force every frame to the stream's declared size, so a mid-stream
        # resolution change cannot break the [T, H, W, 3] layout.
        rgb = frame.to_ndarray(format="rgb24", width=self.width, height=self.height)
        self._frames[slot] = self.orientation.apply(rgb)

    def copy(self, slot: int, source_slot: int) -> None:
        assert self._frames is not None
        self._frames[slot] = self._frames[source_slot]

    @property
    def frames(self) -> npt.NDArray[np.uint8]:
        assert self._frames is not None, "no frame was decoded"
        return self._frames


def _decode_by_seeking(
    data: bytes,
    stream_index: int,
    probe: _PacketProbe,
    indices: list[int],
    out: _FrameSink,
    budget: _DecodeBudget,
) -> bool:
    """Fill ``out`` seeking keyframe to keyframe; False means 'use the sequential path'.
    ``budget`` counts every decoded frame (RESOURCE_EXHAUSTED past it)."""
    first_key = probe.keyframe_pts[0]
    with _open_av(data) as container:
        stream = _bounded_decoder(container.streams.video[stream_index], budget.limits)
        frames: Iterator[av.VideoFrame] = budget.frames(container.decode(stream))
        last_pts: int | None = None
        last_slot = -1
        for slot, index in enumerate(indices):
            target = probe.pts[index]
            k = bisect.bisect_right(probe.keyframe_pts, target) - 1
            key = probe.keyframe_pts[k] if k >= 0 else first_key
            # Seek only if it skips frames we would otherwise decode.
            if key > (last_pts if last_pts is not None else first_key):
                container.seek(key, stream=stream, backward=True)
                frames = budget.frames(container.decode(stream))
                last_pts = None
            if last_pts is not None and last_pts >= target and last_slot >= 0:
                out.copy(slot, last_slot)  # decoder skipped ahead; reuse nearest frame
                continue
            for frame in frames:
                if frame.pts is None:
                    return False
                if last_pts is None and frame.pts > target:
                    return False  # the seek overshot: timestamps cannot be trusted
                last_pts = frame.pts
                if frame.pts >= target:
                    out.put(slot, frame)
                    last_slot = slot
                    break
            else:
                return False  # ran out of frames before the target
    return True


def _decode_sequentially(
    data: bytes, stream_index: int, indices: list[int], out: _FrameSink, budget: _DecodeBudget
) -> None:
    wanted = {index: slot for slot, index in enumerate(indices)}
    filled = 0
    with _open_av(data) as container:
        stream = _bounded_decoder(container.streams.video[stream_index], budget.limits)
        for position, frame in enumerate(budget.frames(container.decode(stream))):
            slot = wanted.get(position)
            if slot is not None:
                out.put(slot, frame)
                filled += 1
                if filled == len(indices):
                    return
    raise MediaDecodeError(
        f"video: the stream ended after {filled} of the {len(indices)} sampled frames "
        f"(indices {indices[filled:]} missing); the file is probably truncated"
    )


# --------------------------------------------------------------------------- audio

PcmEncoding = Literal["s16le", "f32le"]
_PCM_DTYPES: dict[str, tuple[str, float]] = {"s16le": ("<i2", 1 / 32768), "f32le": ("<f4", 1.0)}
_MIN_SAMPLE_RATE, _MAX_SAMPLE_RATE = 1_000, 768_000
_MAX_CHANNELS = 64


class _MonoSink:
    """Downmix → resample (streaming) → accumulate, enforcing the duration limit.

    Streaming keeps peak memory at the output size (16 kHz mono) rather than the
    source's (e.g. 48 kHz × 8 channels) for long clips.
    """

    def __init__(self, source_rate: int, target_rate: int, limits: MediaLimits) -> None:
        self.source_rate = source_rate
        self.target_rate = target_rate
        self.limits = limits
        self.source_samples = 0
        self.resampler = (
            soxr.ResampleStream(source_rate, target_rate, 1, dtype="float32") if source_rate != target_rate else None
        )
        self.chunks: list[npt.NDArray[np.float32]] = []

    def add(self, block: npt.NDArray[np.floating]) -> None:
        """``block`` is [samples, channels]."""
        self.source_samples += block.shape[0]
        _check_duration(self.source_samples / self.source_rate, self.limits)
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if not np.isfinite(mono).all():
            raise MediaDecodeError("audio: samples contain NaN or infinity")
        self.chunks.append(self.resampler.resample_chunk(mono) if self.resampler else mono)

    def finish(self) -> npt.NDArray[np.float32]:
        if self.resampler is not None:
            self.chunks.append(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        if self.source_samples == 0:
            raise MediaDecodeError("audio: the stream contains no samples")
        return np.concatenate(self.chunks).astype(np.float32, copy=False)


def _check_duration(seconds: float, limits: MediaLimits) -> None:
    if seconds > limits.max_audio_seconds:
        raise _over_limit(
            "audio: duration",
            f"{seconds:.2f} s",
            f"{limits.max_audio_seconds:g} s",
            "max_audio_seconds",
            "send a shorter clip",
        )


def _check_target_rate(target_sample_rate: int) -> None:
    if not _MIN_SAMPLE_RATE <= target_sample_rate <= _MAX_SAMPLE_RATE:
        raise InvalidArgument(f"audio: target_sample_rate {target_sample_rate} Hz is out of range")


def decode_audio(data: bytes, *, target_sample_rate: int, limits: MediaLimits = DEFAULT_MEDIA_LIMITS) -> DecodedAudio:
    """Decode an encoded clip to mono float32 at ``target_sample_rate`` (Hz).

    WAV and Ogg go through libsndfile; FLAC, MP3, M4A, AAC and WebM through PyAV
    (FFmpeg). Lengths come from the samples actually in the bytes, not from headers,
    which streaming writers leave wrong: a WAV written to a pipe has data size 0 (or
    0xFFFFFFFF), a streamed FLAC has total samples 0, a concatenated or cut MP3 keeps its
    first Xing frame count. libsndfile stops at (and ``soundfile.blocks`` pads short reads
    up to) the header's count, so FLAC/MP3 go to FFmpeg, which decodes every frame there
    is, as players do; a WAV in which libsndfile finds no samples is retried with FFmpeg,
    which reads a zero-size data chunk to the end of the bytes. A WAV data size smaller
    than the bytes is honoured, as players honour it (what follows may be other chunks).

    Returns ``DecodedAudio``: ``waveform`` ``[samples] float32`` in [-1, 1].
    Raises ``MediaDecodeError`` (INVALID_ARGUMENT) for bytes that are not an accepted,
    intact clip, ``InvalidArgument`` for a bad target rate, ``ResourceExhausted`` over
    ``max_audio_seconds``.
    """
    if not data:
        raise MediaDecodeError(f"audio: empty bytes; send one of {_accepted(ACCEPTED_FORMATS.audio)}")
    _check_target_rate(target_sample_rate)

    def decode() -> DecodedAudio:
        decoded = _decode_with_soundfile(data, target_sample_rate, limits)
        return decoded if decoded is not None else _decode_with_pyav(data, target_sample_rate, limits)

    return _guard("audio", ACCEPTED_FORMATS.audio, decode)


# libsndfile formats whose length we take from libsndfile. FLAC and MP3 headers carry
# a length that libsndfile obeys even when the stream says otherwise (see decode_audio).
_SNDFILE_TRUSTED = ("wav", "ogg")
# libsndfile reports SF_COUNT_MAX frames for a stream of unknown length.
_SF_UNKNOWN_FRAMES = 2**62


def _decode_with_soundfile(data: bytes, target_rate: int, limits: MediaLimits) -> DecodedAudio | None:
    """None when PyAV should decode this (format not ours to trust, or no samples found)."""
    try:
        sf = soundfile.SoundFile(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    with sf:
        fmt = _SNDFILE_FORMATS.get(sf.format)
        if fmt not in _SNDFILE_TRUSTED:
            return None
        sr, channels = int(sf.samplerate), int(sf.channels)
        if sr <= 0 or channels <= 0:
            raise MediaDecodeError(f"audio: {fmt.upper()} header declares {sr} Hz, {channels} channels")
        if 0 < sf.frames < _SF_UNKNOWN_FRAMES:  # the sink checks as it goes in any case
            _check_duration(sf.frames / sr, limits)
        sink = _MonoSink(sr, target_rate, limits)
        try:
            # Not sf.blocks(): it sizes blocks from the header's frame count and yields a
            # short read's unfilled tail (uninitialised memory) as samples.
            while len(block := sf.read(1 << 16, dtype="float32", always_2d=True)):
                sink.add(block)
        except (soundfile.LibsndfileError, RuntimeError) as e:
            raise MediaDecodeError(f"audio: corrupt or truncated {fmt.upper()} data ({e})") from e
    if sink.source_samples == 0:
        return None  # e.g. a streamed WAV (data size 0): FFmpeg reads to the end
    return _finish_audio(sink, fmt, channels, len(data))


def _decode_with_pyav(data: bytes, target_rate: int, limits: MediaLimits) -> DecodedAudio:
    container = _open_av_or_raise("audio", data, ACCEPTED_FORMATS.audio)
    fmt = "audio"
    try:
        with container:
            if container.format.name not in _AUDIO_DEMUXERS:
                raise MediaDecodeError(
                    f"audio: format {container.format.name!r} is not accepted; "
                    f"accepted: {_accepted(ACCEPTED_FORMATS.audio)}"
                )
            fmt = _audio_container_name(container)
            if not container.streams.audio:
                raise MediaDecodeError(f"audio: the {_DISPLAY.get(fmt, fmt)} container has no audio stream")
            sink, channels = _read_audio_stream(container, f"audio: the {_DISPLAY.get(fmt, fmt)}", target_rate, limits)
    except av.FFmpegError as e:
        raise MediaDecodeError(f"audio: corrupt or truncated {_DISPLAY.get(fmt, fmt)} data: {_av_reason(e)}") from e
    return _finish_audio(sink, fmt, channels, len(data))


def _read_audio_stream(
    container: av.container.InputContainer, what: str, target_rate: int, limits: MediaLimits
) -> tuple[_MonoSink, int]:
    """Decode the container's first audio stream into a mono sink at ``target_rate``;
    returns the sink and the stream's channel count. ``what`` starts error messages."""
    stream = container.streams.audio[0]
    ctx = stream.codec_context
    if ctx is None:
        # FFmpeg found no decoder for the declared encoding, e.g. a WAV header
        # with 0 bits per sample or an unknown format tag.
        raise MediaDecodeError(
            f"{what} header declares an encoding that cannot be decoded "
            "(unknown codec, or a sample size such as 0 bits); the header is corrupt"
        )
    sr = int(ctx.sample_rate or 0)
    channels = int(ctx.channels or 0)
    if sr <= 0:
        raise MediaDecodeError(f"{what}'s {ctx.name} stream declares no sample rate")
    if container.duration and container.duration > 0:
        _check_duration(container.duration / av.time_base, limits)
    sink = _MonoSink(sr, target_rate, limits)
    # Float at a fixed rate: layout/rate changes mid-stream (chained MP3s) then arrive
    # normalised; the sink downmixes whatever channel count comes. Packed, not planar:
    # PyAV's to_ndarray on planar frames of 8 or more channels (7.1, where FFmpeg keeps
    # extra planes) crashes the process (verify-10e D1); interleaved samples are one plane.
    resampler = av.AudioResampler(format="flt", rate=sr)
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            sink.add(_interleaved(out))
    for out in resampler.resample(None):
        sink.add(_interleaved(out))
    return sink, channels


def _interleaved(frame: av.AudioFrame) -> np.ndarray:
    """A packed float frame as ``[samples, channels]`` float32."""
    return frame.to_ndarray().reshape(frame.samples, len(frame.layout.channels))


def decode_video_audio(
    data: bytes, *, target_sample_rate: int, limits: MediaLimits = DEFAULT_MEDIA_LIMITS
) -> DecodedAudio | None:
    """The audio track of an encoded video (MP4/MOV/WebM/MKV/AVI) as the model's audio
    input: its first audio stream, the one vLLM's ``use_audio_in_video`` reads
    (``vllm.multimodal.media.audio.load_audio_pyav``), decoded to mono float32 at
    ``target_sample_rate`` (Hz) like an Audio part. None when the clip has no audio stream.

    ``DecodedAudio.format`` is the container's name ("mp4", ...). Raises
    ``MediaDecodeError`` (INVALID_ARGUMENT) for bytes that are not an accepted, intact
    clip or an undecodable track, ``ResourceExhausted`` over ``max_audio_seconds``.
    """
    if not data:
        raise MediaDecodeError(f"video: empty bytes; send one of {_accepted(ACCEPTED_FORMATS.video)}")
    _check_target_rate(target_sample_rate)
    return _guard("video", ACCEPTED_FORMATS.video, lambda: _decode_video_audio(data, target_sample_rate, limits))


def _decode_video_audio(data: bytes, target_rate: int, limits: MediaLimits) -> DecodedAudio | None:
    container = _open_av_or_raise("video", data, ACCEPTED_FORMATS.video)
    fmt = "video"
    try:
        with container:
            if container.format.name not in _VIDEO_DEMUXERS:
                raise MediaDecodeError(
                    f"video: container format {container.format.name!r} is not accepted; "
                    f"accepted: {_accepted(ACCEPTED_FORMATS.video)}"
                )
            fmt = _video_container_name(container, data)
            if not container.streams.audio:
                return None
            what = f"video: the {_DISPLAY.get(fmt, fmt)} audio track"
            sink, channels = _read_audio_stream(container, what, target_rate, limits)
    except av.FFmpegError as e:
        raise MediaDecodeError(
            f"video: corrupt or truncated audio track in the {_DISPLAY.get(fmt, fmt)} data: {_av_reason(e)}"
        ) from e
    return _finish_audio(sink, fmt, channels, len(data))


def audio_from_pcm(
    data: bytes,
    *,
    encoding: PcmEncoding,
    sample_rate: int,
    channels: int,
    target_sample_rate: int,
    limits: MediaLimits = DEFAULT_MEDIA_LIMITS,
) -> DecodedAudio:
    """Interpret headerless little-endian PCM (interleaved channels) as audio."""
    if encoding not in _PCM_DTYPES:
        raise InvalidArgument(f"audio: PCM encoding {encoding!r} is not accepted; accepted: {', '.join(_PCM_DTYPES)}")
    if not _MIN_SAMPLE_RATE <= sample_rate <= _MAX_SAMPLE_RATE:
        raise InvalidArgument(
            f"audio: PCM sample_rate must be between {_MIN_SAMPLE_RATE} and {_MAX_SAMPLE_RATE} Hz, got {sample_rate}"
        )
    if not 1 <= channels <= _MAX_CHANNELS:
        raise InvalidArgument(f"audio: PCM channels must be between 1 and {_MAX_CHANNELS}, got {channels}")
    _check_target_rate(target_sample_rate)
    if not data:
        raise MediaDecodeError("audio: empty PCM bytes")
    dtype, scale = _PCM_DTYPES[encoding]
    sample_bytes = np.dtype(dtype).itemsize
    frame_bytes = sample_bytes * channels
    whole, stray = divmod(len(data), frame_bytes)
    if stray:
        raise InvalidArgument(
            f"audio: {len(data)} bytes of {encoding} PCM is not a whole number of frames: "
            f"{channels} channel(s) x {sample_bytes} bytes = {frame_bytes} bytes per frame, "
            f"and {len(data)} = {whole} frames + {stray} stray byte(s)"
        )
    _check_duration(whole / sample_rate, limits)
    samples = np.frombuffer(data, dtype=dtype).reshape(whole, channels)
    block = samples.astype(np.float32) * np.float32(scale) if scale != 1.0 else samples.astype(np.float32)
    sink = _MonoSink(sample_rate, target_sample_rate, limits)
    sink.add(block)
    return _finish_audio(sink, f"pcm_{encoding}", channels, len(data))


def _finish_audio(sink: _MonoSink, fmt: str, channels: int, nbytes: int) -> DecodedAudio:
    waveform = sink.finish()
    return DecodedAudio(
        waveform=waveform,
        sample_rate=sink.target_rate,
        format=fmt,
        source_sample_rate=sink.source_rate,
        source_channels=channels,
        duration_s=sink.source_samples / sink.source_rate,
        resampled=sink.resampler is not None,
        nbytes=nbytes,
    )
