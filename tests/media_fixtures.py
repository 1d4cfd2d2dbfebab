"""Small, deterministic synthetic media for tests and the load tester.

Content is seeded random noise, so two calls with different seeds never dedupe (in
vLLM's multimodal cache or anywhere else) and the same seed always gives the same bytes
for the lossless formats. Video frames carry their own index as an 8-bit marker in the
top band (see ``read_frame_marker``), so tests can check which source frames were sampled.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
import soundfile
from PIL import Image

MARKER_BITS = 8
MARKER_HEIGHT = 16  # one macroblock row: survives lossy codecs intact


# --------------------------------------------------------------------------- images


def image_array(width: int, height: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


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


def make_webp(width: int, height: int, seed: int = 0, **kw: object) -> bytes:
    return make_image(width, height, seed, format="WEBP", **kw)


def make_gif(width: int, height: int, seed: int = 0, *, frames: int = 3) -> bytes:
    """Animated GIF; frame 0 is ``image_array(w, h, seed)`` quantised."""
    ims = [Image.fromarray(image_array(width, height, seed + i), "RGB") for i in range(frames)]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=100, loop=0)
    return buf.getvalue()


def make_bmp(width: int, height: int, seed: int = 0) -> bytes:
    return make_image(width, height, seed, format="BMP")


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
    fps: int,
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
) -> bytes:
    """H.264 MP4 (B-frames on, keyframe every ``gop`` frames). Noise content makes it
    large: lower ``crf`` for bigger files (e.g. 640x480x64 frames at crf 10 is several MB).
    """
    options = {"crf": str(crf), "g": str(gop), "preset": "ultrafast", "bf": "2"} if codec == "libx264" else None
    return encode_video(
        video_frames(num_frames, width, height, seed), fps, container="mp4", codec=codec, options=options
    )


def make_webm(num_frames: int, width: int, height: int, fps: int = 24, seed: int = 0) -> bytes:
    """VP8 in WebM (libvpx ships with PyAV's wheels)."""
    return encode_video(
        video_frames(num_frames, width, height, seed),
        fps,
        container="webm",
        codec="libvpx",
        options={"deadline": "realtime", "cpu-used": "8", "g": "12", "b": "2M"},
    )


def make_mov(num_frames: int, width: int, height: int, fps: int = 24, seed: int = 0) -> bytes:
    """H.264 in a QuickTime container (what iPhones record)."""
    return encode_video(
        video_frames(num_frames, width, height, seed), fps, container="mov", codec="libx264",
        options={"preset": "ultrafast", "g": "12"},
    )  # fmt: skip


def make_mkv(num_frames: int, width: int, height: int, fps: int = 24, seed: int = 0) -> bytes:
    return encode_video(
        video_frames(num_frames, width, height, seed), fps, container="matroska", codec="mpeg4",
        options={"g": "12", "qscale": "3"},
    )  # fmt: skip


def make_avi(num_frames: int, width: int, height: int, fps: int = 24, seed: int = 0) -> bytes:
    return encode_video(
        video_frames(num_frames, width, height, seed), fps, container="avi", codec="mpeg4",
        options={"g": "12", "qscale": "3"},
    )  # fmt: skip


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


def make_wav(seconds: float, sample_rate: int = 16000, channels: int = 1, seed: int = 0, *, subtype: str = "PCM_16") -> bytes:
    return _soundfile_bytes(seconds, sample_rate, channels, seed, format="WAV", subtype=subtype)


def make_flac(seconds: float, sample_rate: int = 16000, channels: int = 1, seed: int = 0) -> bytes:
    return _soundfile_bytes(seconds, sample_rate, channels, seed, format="FLAC", subtype="PCM_16")


def make_ogg(seconds: float, sample_rate: int = 16000, channels: int = 1, seed: int = 0) -> bytes:
    """Ogg Vorbis via libsndfile."""
    return _soundfile_bytes(seconds, sample_rate, channels, seed, format="OGG", subtype="VORBIS")


def make_mp3(seconds: float, sample_rate: int = 44100, channels: int = 1, seed: int = 0) -> bytes:
    """MP3 via libsndfile (LAME); the decoder adds priming samples, so lengths are approximate."""
    return _soundfile_bytes(seconds, sample_rate, channels, seed, format="MP3", subtype="MPEG_LAYER_III")


def encode_audio(
    data: npt.NDArray[np.float32], sample_rate: int, *, container: str, codec: str
) -> bytes:
    """Encode [samples, channels] float32 with PyAV (for formats libsndfile cannot write)."""
    channels = data.shape[1]
    layout = "mono" if channels == 1 else "stereo" if channels == 2 else f"{channels}c"
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=sample_rate, layout=layout)
        # The encoder's own sample format (fltp for aac, flt/s16 for opus, ...).
        resampler = av.AudioResampler(format=stream.codec_context.format, layout=layout, rate=sample_rate)
        frame_size = 960 if codec == "libopus" else 1024
        for start in range(0, data.shape[0], frame_size):
            chunk = np.ascontiguousarray(data[start : start + frame_size].T)  # planar
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = start
            for resampled in resampler.resample(frame):
                for packet in stream.encode(resampled):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def make_m4a(seconds: float, sample_rate: int = 44100, channels: int = 1, seed: int = 0) -> bytes:
    """AAC in an MP4 (M4A) container: the path libsndfile cannot read."""
    return encode_audio(waveform(seconds, sample_rate, channels, seed), sample_rate, container="ipod", codec="aac")


def make_aac(seconds: float, sample_rate: int = 44100, channels: int = 1, seed: int = 0) -> bytes:
    """Raw AAC in ADTS framing (.aac files)."""
    return encode_audio(waveform(seconds, sample_rate, channels, seed), sample_rate, container="adts", codec="aac")


def make_webm_audio(seconds: float, sample_rate: int = 48000, channels: int = 1, seed: int = 0) -> bytes:
    """Opus in WebM (what browsers' MediaRecorder produces); Opus runs at 8/12/16/24/48 kHz."""
    return encode_audio(waveform(seconds, sample_rate, channels, seed), sample_rate, container="webm", codec="libopus")


def raw_pcm(
    seconds: float, sample_rate: int = 16000, channels: int = 1, seed: int = 0, *, encoding: str = "s16le"
) -> bytes:
    """Headerless little-endian interleaved PCM (``s16le`` or ``f32le``)."""
    data = waveform(seconds, sample_rate, channels, seed)
    if encoding == "s16le":
        return np.clip(np.round(data * 32767), -32768, 32767).astype("<i2").tobytes()
    if encoding == "f32le":
        return data.astype("<f4").tobytes()
    raise ValueError(f"unknown PCM encoding {encoding!r}")
