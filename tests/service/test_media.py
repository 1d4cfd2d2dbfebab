"""service.media: request bytes → vLLM multi_modal_data objects (no engine needed)."""

from __future__ import annotations

import io
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import av
import grpc
import numpy as np
import pytest
from PIL import Image

from nanovl.errors import InvalidArgument, MediaDecodeError, ResourceExhausted
from service import media
from service.media import ACCEPTED_FORMATS, MediaLimits
from tests import media_fixtures as mf

SR = 16000


# --------------------------------------------------------------------------- images

IMAGE_MAKERS = {
    "png": mf.make_png,
    "jpeg": mf.make_jpeg,
    "webp": mf.make_webp,
    "gif": mf.make_gif,
    "bmp": mf.make_bmp,
}


def test_every_accepted_image_format_is_tested() -> None:
    assert set(IMAGE_MAKERS) == set(ACCEPTED_FORMATS.image)


@pytest.mark.parametrize("fmt", sorted(IMAGE_MAKERS))
def test_image_round_trip(fmt: str) -> None:
    data = IMAGE_MAKERS[fmt](80, 48, seed=7)
    img = media.decode_image(data)
    assert (img.format, img.width, img.height, img.nbytes) == (fmt, 80, 48, len(data))
    assert img.image.mode == "RGB" and img.image.size == (80, 48)
    assert img.to_vllm() is img.image
    pixels = np.asarray(img.image).astype(int)
    original = mf.image_array(80, 48, seed=7).astype(int)
    if fmt in ("png", "bmp"):
        np.testing.assert_array_equal(pixels, original)
    else:
        # Lossy (JPEG/WebP) or palette-quantised (GIF): the decoded pixels must track the
        # source, and for GIF it must be frame 0, not frame 1 (seed 8).
        unrelated = mf.image_array(80, 48, seed=8).astype(int)
        assert _corr(pixels, original) > 0.5 > 0.1 > abs(_corr(pixels, unrelated))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_image_exif_orientation_is_applied() -> None:
    # Orientation 6: the stored pixels must be rotated 90° clockwise for display.
    data = mf.make_png(64, 40, seed=1, exif_orientation=6)
    img = media.decode_image(data)
    assert (img.width, img.height) == (40, 64)
    np.testing.assert_array_equal(np.asarray(img.image), np.rot90(mf.image_array(64, 40, seed=1), k=-1))


def test_image_transparency_is_composited_on_white() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # black, fully transparent
    rgba[:4, :, :] = (255, 0, 0, 255)  # opaque red top half
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    pixels = np.asarray(media.decode_image(buf.getvalue()).image)
    assert (pixels[:4] == (255, 0, 0)).all()
    assert (pixels[4:] == (255, 255, 255)).all()


def test_grayscale_image_becomes_rgb() -> None:
    img = media.decode_image(mf.make_png(16, 16, seed=3, mode="L"))
    pixels = np.asarray(img.image)
    assert img.image.mode == "RGB"
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def _png_with_header_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims ``width`` x ``height`` (a decompression-bomb header)."""
    png = bytearray(mf.make_png(4, 4))
    ihdr = bytes(png[12:16]) + struct.pack(">II", width, height) + bytes(png[24:29])
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(png)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"\x00\x01garbage" * 100, "cannot identify image format (got 900 bytes starting with 0x0001676172626167"),
        (mf.make_png(64, 64)[:300], "truncated PNG"),
        (mf.make_image(8, 8, format="TIFF"), "accepted: PNG, JPEG, WebP, GIF, BMP"),
    ],
    ids=["empty", "garbage", "truncated-png", "tiff"],
)
def test_bad_image_bytes(data: bytes, needle: str) -> None:
    with pytest.raises(MediaDecodeError) as err:
        media.decode_image(data)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.message.startswith("image:")
    assert needle in err.value.message


def test_image_over_pixel_limit() -> None:
    with pytest.raises(ResourceExhausted) as err:
        media.decode_image(mf.make_png(64, 48), MediaLimits(max_image_pixels=3000))
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "64x48 = 3,072 pixels" in err.value.message
    assert "3,000" in err.value.message and "max_image_pixels" in err.value.message


def test_image_limit_checked_before_decoding() -> None:
    # 8000x8000 header over 4x4 pixel data: rejected for size, never decoded as corrupt.
    with pytest.raises(ResourceExhausted, match="8000x8000 = 64,000,000 pixels"):
        media.decode_image(_png_with_header_size(8000, 8000))


def test_decompression_bomb_header() -> None:
    # Past Pillow's own hard bomb threshold even with a generous server limit.
    with pytest.raises(ResourceExhausted, match="decompression bomb"):
        media.decode_image(_png_with_header_size(30000, 30000), MediaLimits(max_image_pixels=10**9))


# --------------------------------------------------------------------------- video

VIDEO_MAKERS = {
    "mp4": (mf.make_mp4, "h264"),
    "mov": (mf.make_mov, "h264"),
    "webm": (mf.make_webm, "vp8"),
    "mkv": (mf.make_mkv, "mpeg4"),
    "avi": (mf.make_avi, "mpeg4"),
}


def test_every_accepted_video_format_is_tested() -> None:
    assert set(VIDEO_MAKERS) == set(ACCEPTED_FORMATS.video)


@pytest.mark.parametrize("fmt", sorted(VIDEO_MAKERS))
def test_video_round_trip(fmt: str) -> None:
    make, codec = VIDEO_MAKERS[fmt]
    data = make(48, 128, 96, 24, seed=5)
    video = media.decode_video(data, num_frames=8)
    assert (video.container_format, video.codec) == (fmt, codec)
    assert (video.width, video.height, video.nbytes) == (128, 96, len(data))
    assert video.source_frame_count == 48 and video.fps == pytest.approx(24)
    assert video.duration_s == pytest.approx(2.0, abs=0.1)
    assert video.frames.shape == (8, 96, 128, 3) and video.frames.dtype == np.uint8
    assert video.sampled_frame_count == 8
    indices = list(video.frame_indices)
    assert indices[0] == 0 and indices[-1] == 47 and indices == sorted(set(indices))
    gaps = np.diff(indices)
    assert gaps.max() - gaps.min() <= 1  # uniform
    # Each kept frame really is the source frame its index names.
    assert [mf.read_frame_marker(f) for f in video.frames] == indices


def test_video_sampling_is_pixel_exact_against_full_decode() -> None:
    # B-frames and a short GOP: the keyframe-seeking path must return exactly what a
    # plain full decode gives at those indices.
    data = mf.make_mp4(96, 64, 48, 24, seed=11, gop=8)
    video = media.decode_video(data, num_frames=7)
    with av.open(io.BytesIO(data)) as container:
        reference = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(reference) == 96
    np.testing.assert_array_equal(video.frames, np.stack([reference[i] for i in video.frame_indices]))


def test_video_sequential_fallback_matches_seeking(monkeypatch: pytest.MonkeyPatch) -> None:
    # Streams without usable timestamps take the one-pass path; it must pick the same frames.
    data = mf.make_mp4(40, 64, 48, 24, seed=12, gop=6)
    seeking = media.decode_video(data, num_frames=6)
    monkeypatch.setattr(media, "_decode_by_seeking", lambda *args: False)
    sequential = media.decode_video(data, num_frames=6)
    assert sequential.frame_indices == seeking.frame_indices
    np.testing.assert_array_equal(sequential.frames, seeking.frames)
    assert [mf.read_frame_marker(f) for f in sequential.frames] == list(sequential.frame_indices)


def test_video_with_fewer_frames_than_requested_keeps_all() -> None:
    video = media.decode_video(mf.make_mp4(5, 64, 48, 10, seed=2), num_frames=16)
    assert video.frame_indices == (0, 1, 2, 3, 4)
    assert [mf.read_frame_marker(f) for f in video.frames] == [0, 1, 2, 3, 4]
    assert video.duration_s == pytest.approx(0.5, abs=0.05)


def test_video_to_vllm_metadata() -> None:
    from vllm.transformers_utils.processors.nano_nemotron_vl import calculate_timestamps

    video = media.decode_video(mf.make_mp4(30, 64, 48, 15, seed=4), num_frames=4)
    frames, meta = video.to_vllm()
    assert frames is video.frames
    # Times on a 1000 Hz clock (model.prompt.TIMESTAMP_CLOCK_HZ): vLLM's own formula
    # must give back each frame's real presentation time.
    assert meta["fps"] == 1000.0
    assert meta["frames_indices"] == [round(t * 1000) for t in video.timestamps_s]
    assert calculate_timestamps(meta["frames_indices"], int(1000 / meta["fps"])) == pytest.approx(
        [i / 15 for i in video.frame_indices], abs=5e-4
    )
    assert meta["total_num_frames"] == 30
    assert meta["duration"] == pytest.approx(2.0, abs=0.1)
    assert meta["do_sample_frames"] is False and isinstance(meta["video_backend"], str)


def test_raw_frames_round_trip() -> None:
    data = mf.raw_rgb_frames(3, 64, 32, seed=9)
    video = media.video_from_raw_frames(data, width=64, height=32, num_frames=3, fps=2.0)
    np.testing.assert_array_equal(video.frames, mf.video_frames(3, 64, 32, seed=9))
    assert video.frames.flags.writeable and video.frames.flags.owndata
    assert video.frame_indices == (0, 1, 2) and video.duration_s == pytest.approx(1.5)
    assert (video.container_format, video.codec, video.width, video.height) == ("raw", "rgb24", 64, 32)
    assert video.timestamps_s == (0.0, 0.5, 1.0)
    assert video.to_vllm()[1]["frames_indices"] == [0, 500, 1000]


@pytest.mark.parametrize(("delta", "needle"), [(-1, "got 18431 (1 bytes short)"), (5, "got 18437 (5 bytes too many)")])
def test_raw_frames_byte_count_must_match(delta: int, needle: str) -> None:
    data = mf.raw_rgb_frames(3, 64, 32)
    data = data[:delta] if delta < 0 else data + b"\0" * delta
    with pytest.raises(InvalidArgument) as err:
        media.video_from_raw_frames(data, width=64, height=32, num_frames=3, fps=2.0)
    assert "3 x 32 x 64 x 3 = 18432 bytes" in err.value.message and needle in err.value.message


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"width": 0}, "width > 0"),
        ({"num_frames": 0}, "num_frames > 0"),
        ({"fps": 0.0}, "fps > 0"),
        ({"fps": float("nan")}, "fps > 0"),
    ],
)
def test_raw_frames_bad_parameters(kwargs: dict, needle: str) -> None:
    args = {"width": 64, "height": 32, "num_frames": 3, "fps": 2.0} | kwargs
    with pytest.raises(InvalidArgument, match=needle):
        media.video_from_raw_frames(b"\0" * 100, **args)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "video: empty bytes"),
        (b"\x13\x37" * 500, "video: cannot open the data (got 1000 bytes starting with 0x1337"),
        (mf.make_mp4(24, 64, 48)[:-2000], "looks like MP4/MOV but is truncated"),
        (mf.make_png(64, 48), "accepted: MP4, MOV, WebM, MKV, AVI"),
        (mf.make_wav(0.5), "video: container format 'wav' is not accepted"),
        (mf.make_webm_audio(0.5), "container has no video stream"),
    ],
    ids=["empty", "garbage", "truncated-mp4", "png", "wav", "audio-only-webm"],
)
def test_bad_video_bytes(data: bytes, needle: str) -> None:
    with pytest.raises(MediaDecodeError) as err:
        media.decode_video(data, num_frames=4)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.message


def test_video_limits() -> None:
    data = mf.make_mp4(12, 64, 48)
    with pytest.raises(ResourceExhausted, match="num_frames 9 exceeds .* limit of 8 frames .*max_video_frames"):
        media.decode_video(data, num_frames=9, limits=MediaLimits(max_video_frames=8))
    with pytest.raises(ResourceExhausted, match="64x48 = 3,072 pixels .*max_video_pixels_per_frame"):
        media.decode_video(data, num_frames=4, limits=MediaLimits(max_video_pixels_per_frame=3000))
    with pytest.raises(ResourceExhausted, match="4 frames of 64x48 RGB = 36,864 bytes .*max_video_decoded_bytes"):
        media.decode_video(data, num_frames=4, limits=MediaLimits(max_video_decoded_bytes=36863))
    with pytest.raises(InvalidArgument, match="num_frames must be >= 1"):
        media.decode_video(data, num_frames=0)
    raw = mf.raw_rgb_frames(9, 64, 32)
    with pytest.raises(ResourceExhausted, match="max_video_frames"):
        media.video_from_raw_frames(
            raw, width=64, height=32, num_frames=9, fps=1, limits=MediaLimits(max_video_frames=8)
        )


# --------------------------------------------------------------------------- audio

AUDIO_MAKERS = {
    "wav": mf.make_wav,
    "flac": mf.make_flac,
    "ogg": mf.make_ogg,
    "mp3": mf.make_mp3,
    "m4a": mf.make_m4a,
    "aac": mf.make_aac,
    "webm": mf.make_webm_audio,
}


def test_every_accepted_audio_format_is_tested() -> None:
    # "mp4" (the audio track of an MP4 video) is covered by test_audio_track_of_mp4_video.
    assert set(AUDIO_MAKERS) | {"mp4"} == set(ACCEPTED_FORMATS.audio)


def _peak_hz(waveform: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform))
    return float(np.fft.rfftfreq(len(waveform), 1 / sample_rate)[spectrum.argmax()])


@pytest.mark.parametrize("fmt", sorted(AUDIO_MAKERS))
def test_audio_round_trip(fmt: str) -> None:
    source_rate = 48000 if fmt == "webm" else 44100  # Opus runs at 48 kHz
    data = AUDIO_MAKERS[fmt](2.0, source_rate, 2, seed=1)
    audio = media.decode_audio(data, target_sample_rate=SR)
    assert (audio.format, audio.source_sample_rate, audio.source_channels) == (fmt, source_rate, 2)
    assert audio.resampled and audio.sample_rate == SR and audio.nbytes == len(data)
    assert audio.waveform.dtype == np.float32 and audio.waveform.ndim == 1
    # Lossy codecs add encoder delay / padding (a few ms); lossless are exact.
    tolerance = 0.0 if fmt in ("wav", "flac") else 0.1
    assert audio.duration_s == pytest.approx(2.0, abs=tolerance + 1e-9)
    assert len(audio.waveform) == pytest.approx(audio.duration_s * SR, abs=1)
    assert _peak_hz(audio.waveform, SR) == pytest.approx(440, abs=2)  # the tone survived
    waveform, rate = audio.to_vllm()
    assert waveform is audio.waveform and rate == SR


def test_resample_44k1_stereo_to_16k_mono_exact_length() -> None:
    seconds = 1.2345
    data = mf.make_wav(seconds, 44100, 2, seed=2)
    n_source = round(seconds * 44100)
    audio = media.decode_audio(data, target_sample_rate=SR)
    assert audio.duration_s == pytest.approx(n_source / 44100)
    assert len(audio.waveform) == round(n_source * SR / 44100)


def test_audio_at_target_rate_is_untouched() -> None:
    data = mf.make_wav(0.5, SR, 1, seed=3)
    audio = media.decode_audio(data, target_sample_rate=SR)
    expected = np.frombuffer(data[44:], dtype="<i2").astype(np.float32) / 32768  # after the 44-byte header
    assert not audio.resampled
    np.testing.assert_array_equal(audio.waveform, expected)


def test_audio_track_of_mp4_video() -> None:
    frames = mf.encode_video(mf.video_frames(4, 64, 48), 4, container="mp4", codec="libx264")
    assert media.decode_video(frames, num_frames=2).sampled_frame_count == 2
    # An MP4 with only a video track has no audio to give.
    with pytest.raises(MediaDecodeError, match="MP4 container has no audio stream"):
        media.decode_audio(frames, target_sample_rate=SR)


def test_pcm_downmix_is_channel_mean() -> None:
    rng = np.random.default_rng(0)
    interleaved = rng.uniform(-1, 1, (1000, 2)).astype("<f4")
    audio = media.audio_from_pcm(
        interleaved.tobytes(), encoding="f32le", sample_rate=SR, channels=2, target_sample_rate=SR
    )
    np.testing.assert_allclose(audio.waveform, interleaved.mean(axis=1), rtol=1e-6)
    assert (audio.format, audio.source_channels, audio.resampled) == ("pcm_f32le", 2, False)


def test_pcm_s16le_resampled() -> None:
    data = mf.raw_pcm(1.0, 22050, 1, seed=4, encoding="s16le")
    audio = media.audio_from_pcm(data, encoding="s16le", sample_rate=22050, channels=1, target_sample_rate=SR)
    assert audio.resampled and audio.duration_s == pytest.approx(1.0)
    assert len(audio.waveform) == SR
    assert _peak_hz(audio.waveform, SR) == pytest.approx(440, abs=2)
    assert np.abs(audio.waveform).max() < 1.0  # scaled from int16, not raw counts


def test_pcm_alignment_message() -> None:
    data = mf.raw_pcm(0.01, SR, 2, encoding="s16le") + b"\x01"  # 160 frames + 1 byte
    with pytest.raises(InvalidArgument) as err:
        media.audio_from_pcm(data, encoding="s16le", sample_rate=SR, channels=2, target_sample_rate=SR)
    assert err.value.message == (
        "audio: 641 bytes of s16le PCM is not a whole number of frames: 2 channel(s) x 2 bytes "
        "= 4 bytes per frame, and 641 = 160 frames + 1 stray byte(s)"
    )


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "needle"),
    [
        (b"", {}, MediaDecodeError, "empty PCM bytes"),
        (np.array([0.1, np.nan], "<f4").tobytes(), {"encoding": "f32le"}, MediaDecodeError, "NaN"),
        (b"\0\0", {"encoding": "u8"}, InvalidArgument, "accepted: s16le, f32le"),
        (b"\0\0", {"sample_rate": 0}, InvalidArgument, "sample_rate must be between"),
        (b"\0\0", {"channels": 0}, InvalidArgument, "channels must be between"),
    ],
    ids=["empty", "nan", "encoding", "rate", "channels"],
)
def test_pcm_bad_input(data: bytes, kwargs: dict, error: type, needle: str) -> None:
    args = {"encoding": "s16le", "sample_rate": SR, "channels": 1, "target_sample_rate": SR} | kwargs
    with pytest.raises(error, match=needle):
        media.audio_from_pcm(data, **args)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "audio: empty bytes"),
        (b"\x13\x37" * 500, "audio: cannot open the data (got 1000 bytes starting with 0x1337"),
        (mf.make_image(8, 8, format="TIFF"), "accepted: WAV, FLAC, OGG, MP3, M4A, AAC, WebM"),
        (mf.make_m4a(1.0)[:-3000], "looks like MP4/MOV but is truncated"),
    ],
    ids=["empty", "garbage", "tiff", "truncated-m4a"],
)
def test_bad_audio_bytes(data: bytes, needle: str) -> None:
    with pytest.raises(MediaDecodeError) as err:
        media.decode_audio(data, target_sample_rate=SR)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.message


@pytest.mark.parametrize(
    "make",
    [
        lambda: media.decode_audio(
            mf.make_wav(3.0, 8000), target_sample_rate=SR, limits=MediaLimits(max_audio_seconds=2)
        ),
        lambda: media.decode_audio(
            mf.make_m4a(3.0, 8000), target_sample_rate=SR, limits=MediaLimits(max_audio_seconds=2)
        ),
        lambda: media.audio_from_pcm(
            mf.raw_pcm(3.0, 8000),
            encoding="s16le",
            sample_rate=8000,
            channels=1,
            target_sample_rate=SR,
            limits=MediaLimits(max_audio_seconds=2),
        ),
    ],
    ids=["wav", "m4a", "pcm"],
)
def test_audio_over_duration_limit(make) -> None:
    with pytest.raises(ResourceExhausted) as err:
        make()
    assert re.search(r"audio: duration 3\.0\d s exceeds this server's limit of 2 s", err.value.message)
    assert "max_audio_seconds" in err.value.message


# --------------------------------------------------------------------------- concurrency


def test_decoders_are_thread_safe() -> None:
    videos = [mf.make_mp4(20, 64, 48, 10, seed=s) for s in range(6)]
    audios = [mf.make_flac(0.5, 44100, 2, seed=s) for s in range(6)]
    serial_v = [media.decode_video(v, num_frames=5).frames for v in videos]
    serial_a = [media.decode_audio(a, target_sample_rate=SR).waveform for a in audios]
    with ThreadPoolExecutor(4) as pool:
        par_v = list(pool.map(lambda v: media.decode_video(v, num_frames=5).frames, videos))
        par_a = list(pool.map(lambda a: media.decode_audio(a, target_sample_rate=SR).waveform, audios))
    for a, b in zip(serial_v + serial_a, par_v + par_a, strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- vLLM


def test_vllm_nemotron_processor_accepts_decoded_media() -> None:
    """What to_vllm() returns goes through vLLM's own parser and Nemotron processor."""
    tiny = pytest.importorskip("model.tiny")
    vllm_config = pytest.importorskip("vllm.config")
    from vllm.multimodal import MULTIMODAL_REGISTRY

    model_config = vllm_config.ModelConfig(
        model=str(tiny.ensure_tiny_checkpoint()), trust_remote_code=True, dtype="bfloat16", max_model_len=4096
    )
    processor = MULTIMODAL_REGISTRY.create_processor(model_config)
    image = media.decode_image(mf.make_jpeg(320, 240, seed=1))
    video = media.decode_video(mf.make_mp4(30, 160, 96, 24, seed=2), num_frames=4)
    audio = media.decode_audio(mf.make_wav(3.0, 44100, 2, seed=3), target_sample_rate=SR)
    items = processor.info.parse_mm_data({"image": image.to_vllm(), "video": video.to_vllm(), "audio": audio.to_vllm()})
    prompt = "<|im_start|>user\n<image><video><so_embedding>describe<|im_end|>\n<|im_start|>assistant\n"
    out = processor(prompt, items)

    placeholders = out["mm_placeholders"]
    assert {m: len(p) for m, p in placeholders.items()} == {"image": 1, "video": 1, "audio": 1}
    kwargs = out["mm_kwargs"]
    video_item = kwargs["video"][0]
    assert video_item["frames_indices"].data.tolist() == [round(t * 1000) for t in video.timestamps_s]
    assert video_item["pixel_values_flat_video"].data.shape[0] == video.sampled_frame_count
    # Per-frame timestamps in the prompt are the frames' real presentation times.
    tokenizer = processor.info.get_tokenizer()
    video_ph = placeholders["video"][0]
    video_text = tokenizer.decode(out["prompt_token_ids"][video_ph.offset : video_ph.offset + video_ph.length])
    for n, index in enumerate(video.frame_indices, start=1):
        assert f"Frame {n} sampled at {index / 24:.2f} seconds" in video_text
    # Audio: <so_start> + one token per encoder step + <so_end>, for our 16 kHz length.
    extractor = processor.info.get_hf_processor().audio_extractor
    assert placeholders["audio"][0].length == extractor.audio_token_count(len(audio.waveform)) + 2
