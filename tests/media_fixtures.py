"""Small, deterministic synthetic media for tests and the load tester.

Content is seeded random noise, so two calls with different seeds never dedupe (in
vLLM's multimodal cache or anywhere else) and the same seed always gives the same bytes
for the lossless formats. Video frames carry their own index as an 8-bit marker in the
top band (see ``read_frame_marker``), so tests can check which source frames were sampled.

The generators the load tester ships with live in ``loadtest/media.py`` and are
re-exported here; the formats only tests need are defined below.
"""

from __future__ import annotations

import io

import av
import numpy as np
import numpy.typing as npt
from PIL import Image

from loadtest.media import (  # noqa: F401  (re-exported)
    MARKER_BITS,
    MARKER_HEIGHT,
    _soundfile_bytes,
    encode_video,
    image_array,
    make_image,
    make_jpeg,
    make_mp4,
    make_png,
    make_wav,
    raw_pcm,
    raw_rgb_frames,
    read_frame_marker,
    video_frames,
    waveform,
)

# --------------------------------------------------------------------------- images


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
        video_frames(num_frames, width, height, seed),
        fps,
        container="mov",
        codec="libx264",
        options={"preset": "ultrafast", "g": "12"},
    )


def make_mkv(num_frames: int, width: int, height: int, fps: int = 24, seed: int = 0) -> bytes:
    return encode_video(
        video_frames(num_frames, width, height, seed),
        fps,
        container="matroska",
        codec="mpeg4",
        options={"g": "12", "qscale": "3"},
    )


def make_avi(num_frames: int, width: int, height: int, fps: int = 24, seed: int = 0) -> bytes:
    return encode_video(
        video_frames(num_frames, width, height, seed),
        fps,
        container="avi",
        codec="mpeg4",
        options={"g": "12", "qscale": "3"},
    )


# --------------------------------------------------------------------------- audio


def make_flac(seconds: float, sample_rate: int = 16000, channels: int = 1, seed: int = 0) -> bytes:
    return _soundfile_bytes(seconds, sample_rate, channels, seed, format="FLAC", subtype="PCM_16")


def make_ogg(seconds: float, sample_rate: int = 16000, channels: int = 1, seed: int = 0) -> bytes:
    """Ogg Vorbis via libsndfile."""
    return _soundfile_bytes(seconds, sample_rate, channels, seed, format="OGG", subtype="VORBIS")


def make_mp3(seconds: float, sample_rate: int = 44100, channels: int = 1, seed: int = 0) -> bytes:
    """MP3 via libsndfile (LAME); the decoder adds priming samples, so lengths are approximate."""
    return _soundfile_bytes(seconds, sample_rate, channels, seed, format="MP3", subtype="MPEG_LAYER_III")


def encode_audio(data: npt.NDArray[np.float32], sample_rate: int, *, container: str, codec: str) -> bytes:
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
