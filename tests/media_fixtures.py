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
import struct
import zlib
from fractions import Fraction

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
            # Packed: PyAV's planar frames break at 8 channels and more (FFmpeg's extra planes).
            chunk = np.ascontiguousarray(data[start : start + frame_size]).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout=layout)
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


# --------------------------------------------------------------------------- corpus: hand-built PNGs


def png_bytes(
    width: int,
    height: int,
    bit_depth: int,
    color_type: int,
    samples: npt.NDArray[np.integer],
    *,
    palette: npt.NDArray[np.uint8] | None = None,
    trns: bytes | None = None,
) -> bytes:
    """A PNG written chunk by chunk (Pillow cannot write 16-bit RGB/GA or 2/4-bit gray).

    ``samples`` is [H, W, channels] (or [H, W]) of raw sample values at ``bit_depth``;
    colour types: 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA.
    """
    samples = samples.reshape(height, width, -1)
    rows = []
    for row in samples:
        flat = row.reshape(-1).astype(np.uint32)
        if bit_depth == 16:
            data = flat.astype(">u2").tobytes()
        elif bit_depth == 8:
            data = flat.astype(np.uint8).tobytes()
        else:  # 1, 2, 4 bits: pack big-endian within each byte
            per_byte = 8 // bit_depth
            padded = np.zeros(-(-len(flat) // per_byte) * per_byte, np.uint32)
            padded[: len(flat)] = flat
            groups = padded.reshape(-1, per_byte)
            shifts = np.array([8 - bit_depth * (i + 1) for i in range(per_byte)], np.uint32)
            data = (groups << shifts).sum(axis=1).astype(np.uint8).tobytes()
        rows.append(b"\0" + data)  # filter type 0

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    if palette is not None:
        out += chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")


def gray16_ramp_png() -> bytes:
    """The reproducer: 256x32, bit depth 16, colour type 0, each row ``x * 257``."""
    ramp = np.tile((np.arange(256, dtype=np.uint32) * 257), (32, 1))
    return png_bytes(256, 32, 16, 0, ramp)


# --------------------------------------------------------------------------- corpus: video


def band_frames(num_frames: int, width: int, height: int) -> npt.NDArray[np.uint8]:
    """Gray frames with a white band along the top and a black band down the left: where
    the two bands end up identifies each of the 8 orientations, through lossy codecs."""
    frames = np.full((num_frames, height, width, 3), 128, np.uint8)
    frames[:, :16] = 255
    frames[:, :, :16] = 0
    return frames


def make_oriented_video(
    container: str,
    codec: str,
    *,
    degrees: int,
    hflip: bool = False,
    num_frames: int = 4,
    width: int = 96,
    height: int = 64,
) -> bytes:
    """A clip whose display matrix says: rotate ``degrees`` counter-clockwise (PyAV's
    convention, as ``VideoFrame.rotation`` reads it; phones' "rotate 90" is -90), then
    mirror left-right if ``hflip``."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.set_display_rotation(degrees, hflip=hflip)
        for array in band_frames(num_frames, width, height):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def make_vfr_video(
    times_s: list[float],
    width: int = 64,
    height: int = 48,
    seed: int = 0,
    *,
    container: str = "mp4",
    codec: str = "libx264",
) -> bytes:
    """Frames (``video_frames``: frame i carries marker i) at the given presentation times,
    on a 1/1000 s time base (what phones and streaming encoders write for VFR)."""
    frames = video_frames(len(times_s), width, height, seed)
    buf = io.BytesIO()
    # MP4 would otherwise pick its own track timescale; Matroska is 1/1000 by design.
    options = {"video_track_timescale": "1000"} if container == "mp4" else {}
    with av.open(buf, mode="w", format=container, options=options) as out:
        stream = out.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "bf": "2", "g": "12"}
        for array, t in zip(frames, times_s, strict=True):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


# The reproducer: 30 frames at 30 fps, then 10 frames one second apart (2 s … 11 s).
VFR_TIMES_S = [i / 30 for i in range(30)] + [float(s) for s in range(2, 12)]


# --------------------------------------------------------------------------- corpus: audio headers


def _riff_chunk(data: bytes, kind: bytes) -> int:
    """Offset of a RIFF sub-chunk's header."""
    pos = 12
    while pos + 8 <= len(data):
        if data[pos : pos + 4] == kind:
            return pos
        pos += 8 + struct.unpack("<I", data[pos + 4 : pos + 8])[0] + (data[pos + 4] & 1)
    raise ValueError(f"no {kind!r} chunk")


def with_wav_data_size(wav: bytes, size: int) -> bytes:
    """The WAV with its data chunk's size field set to ``size`` (0: a recorder writing to
    a pipe; 0xFFFFFFFF: the other streaming convention)."""
    pos = _riff_chunk(wav, b"data")
    return wav[: pos + 4] + struct.pack("<I", size) + wav[pos + 8 :]


def with_wav_riff_size(wav: bytes, size: int) -> bytes:
    return wav[:4] + struct.pack("<I", size) + wav[8:]


def with_wav_bits_per_sample(wav: bytes, bits: int) -> bytes:
    pos = _riff_chunk(wav, b"fmt ")
    return wav[: pos + 22] + struct.pack("<H", bits) + wav[pos + 24 :]


def with_flac_total_samples(flac: bytes, total: int) -> bytes:
    """STREAMINFO's 36-bit total-samples field (0 = unknown, what streaming encoders write)."""
    b = bytearray(flac)
    si = 8  # "fLaC" + the STREAMINFO block header
    b[si + 13] = (b[si + 13] & 0xF0) | ((total >> 32) & 0x0F)
    b[si + 14 : si + 18] = struct.pack(">I", total & 0xFFFFFFFF)
    return bytes(b)


def with_mp3_xing_frames(mp3: bytes, frames: int) -> bytes:
    """The Xing/Info header's frame count set to ``frames`` (misstated, as after cutting or
    concatenating MP3s without rewriting it)."""
    pos = max(mp3.find(b"Xing"), mp3.find(b"Info"))
    if pos < 0:
        raise ValueError("no Xing/Info header")
    return mp3[: pos + 8] + struct.pack(">I", frames) + mp3[pos + 12 :]


def make_mp3_pyav(seconds: float, sample_rate: int = 44100, channels: int = 1, seed: int = 0) -> bytes:
    """MP3 written by FFmpeg (libmp3lame), the other common writer."""
    return encode_audio(
        waveform(seconds, sample_rate, channels, seed), sample_rate, container="mp3", codec="libmp3lame"
    )


def make_video_with_audio(
    num_frames: int,
    width: int,
    height: int,
    *,
    fps: int = 8,
    audio_seconds: float,
    sample_rate: int = 16000,
    channels: int = 1,
    container: str = "mp4",
    seed: int = 0,
) -> bytes:
    """A clip with a video and an audio stream, muxed with PyAV: ``container`` "mp4"
    (H.264 + AAC: the decoded track is padded to whole 1024-sample AAC frames) or
    "matroska" (H.264 + 16-bit PCM: the track decodes to exactly ``audio_seconds *
    sample_rate`` samples)."""
    frames = video_frames(num_frames, width, height, seed)
    wave = waveform(audio_seconds, sample_rate, channels, seed)
    layout = "mono" if channels == 1 else "stereo"
    codec = "aac" if container == "mp4" else "pcm_s16le"
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast"}
        audio = out.add_stream(codec, rate=sample_rate, layout=layout)
        resampler = av.AudioResampler(format=audio.codec_context.format, layout=layout, rate=sample_rate)
        for array in frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        out.mux(video.encode(None))
        for start in range(0, wave.shape[0], 1024):
            chunk = np.ascontiguousarray(wave[start : start + 1024].T)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = sample_rate, start
            for resampled in resampler.resample(frame):
                out.mux(audio.encode(resampled))
        out.mux(audio.encode(None))
    return buf.getvalue()
