"""Deterministic synthetic media: images, videos and audio clips from a seed.

The same seed always gives the same pixels and samples, and different seeds never give
the same content, so nothing dedupes in vLLM's multimodal caches (or anywhere else).
Two kinds of pixel content:

- ``noise``: uniform random pixels. Worst case for codecs (files are large) and what the
  tests use. Video frames carry their index as an 8-bit marker in the top band (see
  :func:`read_frame_marker`) so tests can check which frames the server sampled.
- ``smooth``: random low-frequency colour fields (bicubic-upscaled random grids; video
  frames blend between two of them). Compresses like real photos and footage, so payload
  sizes and decode costs are realistic; this is the load tester's default.

``tests/media_fixtures.py`` re-exports the generators it shares with this module.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Literal

import av
import numpy as np
import numpy.typing as npt
import soundfile
from PIL import Image

__all__ = [
    "MARKER_BITS",
    "MARKER_HEIGHT",
    "Content",
    "encode_image",
    "encode_mp4",
    "encode_video",
    "encode_wav",
    "image_array",
    "make_image",
    "make_jpeg",
    "make_mp4",
    "make_png",
    "make_wav",
    "pcm_bytes",
    "raw_pcm",
    "raw_rgb_frames",
    "read_frame_marker",
    "smooth_image_array",
    "smooth_video_frames",
    "video_frames",
    "waveform",
]

MARKER_BITS = 8
MARKER_HEIGHT = 16  # one macroblock row: survives lossy codecs intact

Content = Literal["noise", "smooth"]

# Random grid cells per side of a smooth field: enough structure that codecs have work to
# do, few enough that the picture is smooth.
_SMOOTH_CELLS = 8


# --------------------------------------------------------------------------- images


def image_array(width: int, height: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    """[H, W, 3] uniform noise."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _upscale(grid: npt.NDArray[np.uint8], width: int, height: int) -> npt.NDArray[np.uint8]:
    return np.asarray(Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC))


def smooth_image_array(width: int, height: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    """[H, W, 3] smooth random colour field (photo-like compressibility)."""
    grid = np.random.default_rng(seed).integers(0, 256, (_SMOOTH_CELLS, _SMOOTH_CELLS, 3), dtype=np.uint8)
    return _upscale(grid, width, height)


def encode_image(array: npt.NDArray[np.uint8], format: str = "PNG", **save_kwargs: object) -> bytes:
    """Encode an [H, W, 3] uint8 array with Pillow (any format Pillow can write)."""
    buf = io.BytesIO()
    Image.fromarray(array, "RGB").save(buf, format=format, **save_kwargs)
    return buf.getvalue()


def make_image(
    width: int,
    height: int,
    seed: int = 0,
    *,
    format: str = "PNG",
    mode: str = "RGB",
    exif_orientation: int | None = None,
    **save_kwargs: object,
) -> bytes:
    """Encode a seeded noise image with Pillow (any format Pillow can write)."""
    im = Image.fromarray(image_array(width, height, seed), "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation  # Orientation
        save_kwargs["exif"] = exif.tobytes()
    buf = io.BytesIO()
    im.save(buf, format=format, **save_kwargs)
    return buf.getvalue()


def make_png(width: int, height: int, seed: int = 0, **kw: object) -> bytes:
    return make_image(width, height, seed, format="PNG", **kw)


def make_jpeg(width: int, height: int, seed: int = 0, *, quality: int = 90, **kw: object) -> bytes:
    return make_image(width, height, seed, format="JPEG", quality=quality, **kw)


# --------------------------------------------------------------------------- video


def video_frames(num_frames: int, width: int, height: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    """[T, H, W, 3] noise frames; frame i carries marker i (mod 256) in its top band.

    ``width`` must be a multiple of 16 and >= 64, ``height`` >= 32, so the marker cells
    align with codec blocks.
    """
    if width % 16 or width < 64 or height < 32:
        raise ValueError("video_frames needs width % 16 == 0, width >= 64, height >= 32")
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    cell = width // MARKER_BITS
    for i in range(num_frames):
        for bit in range(MARKER_BITS):
            frames[i, :MARKER_HEIGHT, bit * cell : (bit + 1) * cell] = 255 if (i >> bit) & 1 else 0
    return frames


def smooth_video_frames(num_frames: int, width: int, height: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    """[T, H, W, 3] frames morphing between two smooth random fields (footage-like motion)."""
    rng = np.random.default_rng(seed)
    start, end = rng.integers(0, 256, (2, _SMOOTH_CELLS, _SMOOTH_CELLS, 3)).astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        a = i / max(num_frames - 1, 1)
        grid = np.round((1 - a) * start + a * end).astype(np.uint8)
        frames[i] = _upscale(grid, width, height)
    return frames


def read_frame_marker(frame: npt.NDArray[np.uint8]) -> int:
    """Recover the index ``video_frames`` drew into a (possibly lossy-decoded) frame."""
    cell = frame.shape[1] // MARKER_BITS
    value = 0
    for bit in range(MARKER_BITS):
        patch = frame[4 : MARKER_HEIGHT - 4, bit * cell + 2 : (bit + 1) * cell - 2]
        if patch.mean() > 127:
            value |= 1 << bit
    return value


def encode_video(
    frames: npt.NDArray[np.uint8],
    fps: float,
    *,
    container: str,
    codec: str,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
) -> bytes:
    """Encode [T, H, W, 3] RGB frames with PyAV into an in-memory container."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = options
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def encode_mp4(frames: npt.NDArray[np.uint8], fps: float, *, crf: int = 23, gop: int = 12) -> bytes:
    """H.264 MP4 (libx264 ultrafast, B-frames on, keyframe every ``gop`` frames)."""
    options = {"crf": str(crf), "g": str(gop), "preset": "ultrafast", "bf": "2"}
    return encode_video(frames, fps, container="mp4", codec="libx264", options=options)


def make_mp4(
    num_frames: int,
    width: int,
    height: int,
    fps: int = 24,
    seed: int = 0,
    *,
    codec: str = "libx264",
    crf: int = 23,
    gop: int = 12,
    content: Content = "noise",
) -> bytes:
    """H.264 MP4 (B-frames on, keyframe every ``gop`` frames). Noise content makes it
    large: lower ``crf`` for bigger files (e.g. 640x480x64 frames at crf 10 is several MB).
    """
    frames = (video_frames if content == "noise" else smooth_video_frames)(num_frames, width, height, seed)
    if codec == "libx264":
        return encode_mp4(frames, fps, crf=crf, gop=gop)
    return encode_video(frames, fps, container="mp4", codec=codec)


def raw_rgb_frames(num_frames: int, width: int, height: int, seed: int = 0) -> bytes:
    return video_frames(num_frames, width, height, seed).tobytes()


# --------------------------------------------------------------------------- audio


def waveform(
    seconds: float, sample_rate: int, channels: int = 1, seed: int = 0, *, tone_hz: float = 440.0
) -> npt.NDArray[np.float32]:
    """[samples, channels] float32: a ``tone_hz`` sine (amplitude 0.5) plus seeded noise (0.05)."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    tone = 0.5 * np.sin(2 * np.pi * tone_hz * t)
    noise = 0.05 * np.random.default_rng(seed).standard_normal((n, channels))
    return (tone[:, None] + noise).astype(np.float32)


def _soundfile_bytes(
    seconds: float, sample_rate: int, channels: int, seed: int, *, format: str, subtype: str | None
) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, waveform(seconds, sample_rate, channels, seed), sample_rate, format=format, subtype=subtype)
    return buf.getvalue()


def make_wav(
    seconds: float, sample_rate: int = 16000, channels: int = 1, seed: int = 0, *, subtype: str = "PCM_16"
) -> bytes:
    return _soundfile_bytes(seconds, sample_rate, channels, seed, format="WAV", subtype=subtype)


def encode_wav(data: npt.NDArray[np.float32], sample_rate: int, *, subtype: str = "PCM_16") -> bytes:
    """A WAV file of a [samples] or [samples, channels] float waveform."""
    buf = io.BytesIO()
    soundfile.write(buf, data, sample_rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def pcm_bytes(data: npt.NDArray[np.float32], encoding: str = "s16le") -> bytes:
    """Headerless little-endian interleaved PCM (``s16le`` or ``f32le``) of a waveform."""
    if encoding == "s16le":
        return np.clip(np.round(data * 32767), -32768, 32767).astype("<i2").tobytes()
    if encoding == "f32le":
        return data.astype("<f4").tobytes()
    raise ValueError(f"unknown PCM encoding {encoding!r}")


def raw_pcm(
    seconds: float, sample_rate: int = 16000, channels: int = 1, seed: int = 0, *, encoding: str = "s16le"
) -> bytes:
    """Headerless little-endian interleaved PCM (``s16le`` or ``f32le``)."""
    return pcm_bytes(waveform(seconds, sample_rate, channels, seed), encoding)
