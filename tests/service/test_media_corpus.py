"""Real-world media corpus, built from code: what the model receives for each case.

Every case asserts on the object handed to vLLM (pixels, frame times and the metadata
vLLM turns into the prompt's "Frame i sampled at t seconds", sample counts), not only
on a status. The reference is what a viewer or player shows. No downloaded files; every
random choice is seeded.
"""

from __future__ import annotations

import io
import random
import struct

import numpy as np
import pytest
import soundfile
from PIL import Image

from loadtest.media import encode_wav, smooth_image_array
from nanovl.errors import InvalidArgument, MediaDecodeError, NanovlError, ResourceExhausted
from service import media
from tests import media_fixtures as mf

SR = 16000


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(media.decode_image(data).to_vllm())


# =========================================================================== images
# --------------------------------------------------------------------------- reproducer 1


def test_reproducer_16bit_grayscale_png_keeps_256_levels() -> None:
    data = mf.gray16_ramp_png()
    assert (data[24], data[25]) == (16, 0)  # IHDR: bit depth 16, colour type 0
    decoded = media.decode_image(data)
    pixels = np.asarray(decoded.to_vllm())
    assert pixels.shape == (32, 256, 3)
    assert len(np.unique(pixels)) == 256  # was 2: everything above 255 clipped to white
    assert decoded.source_mode == "I;16"
    np.testing.assert_array_equal(pixels, np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (32, 256, 3)))


# --------------------------------------------------------------------------- every PNG layout

_RNG = np.random.default_rng(20261130)
_W, _H = 16, 8


def _scale(values: np.ndarray, bit_depth: int) -> np.ndarray:
    """A viewer's mapping of an n-bit sample to 8 bits: full scale to full scale."""
    return np.rint(values.astype(np.float64) * 255 / (2**bit_depth - 1)).astype(np.uint8)


def _on_white(rgb: np.ndarray, alpha8: np.ndarray) -> np.ndarray:
    a = alpha8.astype(np.float64)[..., None] / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


def _png_cases() -> dict[str, tuple[bytes, np.ndarray, int]]:
    """name → (PNG bytes, expected RGB pixels, tolerance)."""
    cases: dict[str, tuple[bytes, np.ndarray, int]] = {}
    for bd in (1, 2, 4, 8, 16):  # grayscale at every bit depth
        v = _RNG.integers(0, 2**bd, (_H, _W))
        cases[f"gray{bd}"] = (mf.png_bytes(_W, _H, bd, 0, v), np.repeat(_scale(v, bd)[..., None], 3, -1), 0)
    v = _RNG.integers(0, 65536, (_H, _W))
    v[0, :4] = 4242
    expected = np.repeat(_scale(v, 16)[..., None], 3, -1)
    expected[0, :4] = 255  # the tRNS key colour is transparent: white
    cases["gray16-trns"] = (mf.png_bytes(_W, _H, 16, 0, v, trns=struct.pack(">H", 4242)), expected, 0)
    for bd in (8, 16):
        v = _RNG.integers(0, 2**bd, (_H, _W, 3))
        # Pillow reduces 16-bit RGB to the high byte: at most 1 level from v / 257.
        cases[f"rgb{bd}"] = (mf.png_bytes(_W, _H, bd, 2, v), _scale(v, bd), 0 if bd == 8 else 1)
        ga = _RNG.integers(0, 2**bd, (_H, _W, 2))
        gray = np.repeat(_scale(ga[..., :1], bd), 3, -1)
        # Pillow reduces 16-bit samples to their high byte and the compositing rounds once
        # more: 16-bit layouts may land 2 levels from the exact value.
        tol = 1 if bd == 8 else 2
        cases[f"gray-alpha{bd}"] = (mf.png_bytes(_W, _H, bd, 4, ga), _on_white(gray, _scale(ga[..., 1], bd)), tol)
        rgba = _RNG.integers(0, 2**bd, (_H, _W, 4))
        cases[f"rgba{bd}"] = (
            mf.png_bytes(_W, _H, bd, 6, rgba),
            _on_white(_scale(rgba[..., :3], bd), _scale(rgba[..., 3], bd)),
            tol,
        )
    for bd in (1, 2, 4, 8):  # palettes, with and without palette alpha
        n = 2**bd
        palette = _RNG.integers(0, 256, (n, 3), dtype=np.uint8)
        idx = _RNG.integers(0, n, (_H, _W))
        cases[f"palette{bd}"] = (mf.png_bytes(_W, _H, bd, 3, idx, palette=palette), palette[idx], 0)
        alpha = _RNG.integers(0, 256, n, dtype=np.uint8)
        cases[f"palette{bd}-alpha"] = (
            mf.png_bytes(_W, _H, bd, 3, idx, palette=palette, trns=alpha.tobytes()),
            _on_white(palette[idx].astype(np.float64), alpha[idx]),
            1,
        )
    return cases


PNG_CASES = _png_cases()


@pytest.mark.parametrize("name", list(PNG_CASES))
def test_every_png_layout_reaches_the_model_as_a_viewer_shows_it(name: str) -> None:
    data, expected, tolerance = PNG_CASES[name]
    pixels = _pixels(data)
    assert pixels.dtype == np.uint8 and pixels.shape == (_H, _W, 3)
    worst = int(np.abs(pixels.astype(int) - expected.astype(int)).max())
    assert worst <= tolerance, f"{name}: off by {worst} levels"


# --------------------------------------------------------------------------- Pillow modes x formats


def _source(mode: str) -> Image.Image:
    rgb = Image.fromarray(smooth_image_array(48, 32, seed=3), "RGB")
    if mode == "RGBA":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 48).astype(np.uint8), (32, 1))))
        return rgba
    if mode == "LA":
        la = rgb.convert("LA")
        la.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 48).astype(np.uint8), (32, 1))))
        return la
    return rgb.convert(mode)


def _viewer(im: Image.Image) -> np.ndarray:
    """Independent reference: Pillow's conversions for 8-bit modes, alpha over white."""
    if im.mode in ("RGBA", "LA") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA")).astype(np.float64)
        return _on_white(rgba[..., :3], rgba[..., 3].astype(np.uint8))
    return np.asarray(im.convert("RGB"))


# (mode written, format, lossless?)
MODE_CASES = [
    ("1", "PNG", True), ("L", "PNG", True), ("LA", "PNG", True), ("P", "PNG", True), ("RGB", "PNG", True),
    ("RGBA", "PNG", True), ("I;16", "PNG", True),
    ("L", "JPEG", False), ("RGB", "JPEG", False), ("CMYK", "JPEG", False), ("YCbCr", "JPEG", False),
    ("RGB", "WEBP", True), ("RGBA", "WEBP", True), ("L", "WEBP", True),
    ("P", "GIF", True), ("L", "GIF", True), ("RGB", "GIF", True),
    ("1", "BMP", True), ("L", "BMP", True), ("P", "BMP", True), ("RGB", "BMP", True),
]  # fmt: skip


@pytest.mark.parametrize(("mode", "fmt", "lossless"), MODE_CASES, ids=[f"{m}-{f}" for m, f, _ in MODE_CASES])
def test_every_pillow_mode_in_every_format(mode: str, fmt: str, lossless: bool) -> None:
    src = _source(mode)
    buf = io.BytesIO()
    src.save(
        buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}), **({"quality": 95} if fmt == "JPEG" else {})
    )
    reopened = Image.open(io.BytesIO(buf.getvalue()))
    expected = (
        _viewer(reopened) if reopened.mode != "I;16" else _scale(np.asarray(reopened), 16)[..., None].repeat(3, -1)
    )
    pixels = _pixels(buf.getvalue())
    assert pixels.shape == (32, 48, 3)
    diff = np.abs(pixels.astype(int) - expected.astype(int))
    assert diff.max() <= (1 if lossless else 0), (mode, fmt, diff.max())  # the file's own pixels, as shown
    if fmt != "GIF" and mode != "I;16":  # and (palette quantisation aside) the source picture
        assert np.abs(pixels.astype(int) - _viewer(src).astype(int)).mean() < (2 if lossless else 12)


def test_transparency_in_a_gif_is_white() -> None:
    p = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L").convert("P")
    buf = io.BytesIO()
    p.save(buf, format="GIF", transparency=0)
    pixels = _pixels(buf.getvalue())
    index = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    assert (pixels[index == 0] == 255).all() and (index == 0).sum() >= 1


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I;16", np.array([[0, 257, 65535]], np.uint16), [0, 1, 255]),
        ("I", np.array([[0, 257 * 128, 70000]], np.int32), [0, 128, 255]),  # 16-bit samples, clipped
        ("F", np.array([[0.0, 0.5, 2.0]], np.float32), [0, 128, 255]),  # [0, 1] intensities
    ],
)
def test_wide_modes_scale_to_8_bits(mode: str, values: np.ndarray, expected: list[int]) -> None:
    im = Image.fromarray(values)
    assert im.mode == mode
    rgb = np.asarray(media._to_rgb(im))
    assert rgb[0, :, 0].tolist() == expected and (rgb[..., 0] == rgb[..., 2]).all()


def test_16bit_grayscale_honours_exif_orientation() -> None:
    im = Image.fromarray(np.tile((np.arange(64) * 1000).astype(np.uint16), (32, 1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif.tobytes())
    decoded = media.decode_image(buf.getvalue())
    assert (decoded.width, decoded.height) == (32, 64)
    np.testing.assert_array_equal(np.asarray(decoded.image)[:, 0, 0], _scale(np.arange(64) * 1000, 16))


# =========================================================================== video
# --------------------------------------------------------------------------- reproducer 2 and orientation


def _bands(frame: np.ndarray) -> tuple[str, str]:
    """Which edge holds the white band and which the black one."""
    edges = {"top": frame[:8], "bottom": frame[-8:], "left": frame[:, :8], "right": frame[:, -8:]}
    white = max(edges, key=lambda e: edges[e].mean())
    black = min(edges, key=lambda e: edges[e].mean())
    return white, black


def test_reproducer_phone_video_is_rotated_like_a_player() -> None:
    # 96x64 stored, white band on top, "-90°" display matrix (a phone held upright).
    data = mf.make_oriented_video("mp4", "libx264", degrees=-90)
    video = media.decode_video(data, num_frames=2)
    frames, _ = video.to_vllm()
    assert frames.shape == (2, 96, 64, 3)  # 64 wide, 96 high
    assert _bands(frames[0])[0] == "right"
    assert (video.rotation_degrees, video.mirrored) == (90, False)


def _expected_bands(degrees: int, hflip: bool) -> tuple[str, str]:
    # Apply the display transform (counter-clockwise rotation, then mirror) to the source.
    expected = np.rot90(mf.band_frames(1, 96, 64)[0], k=(degrees // 90) % 4)
    if hflip:
        expected = expected[:, ::-1]
    return _bands(expected)


ORIENTATION_CASES = [
    (c, k, d, f)
    for c, k in (("mp4", "libx264"), ("mov", "libx264"), ("matroska", "mpeg4"), ("webm", "libvpx"))
    for d in (0, 90, 180, 270, -90)
    for f in (False, True)
    if c == "mp4" or not f  # mirrors: once per container family is enough
]


@pytest.mark.parametrize(
    ("container", "codec", "degrees", "hflip"),
    ORIENTATION_CASES,
    ids=[f"{c}-{d}{'-mirror' if f else ''}" for c, _, d, f in ORIENTATION_CASES],
)
def test_every_rotation_in_every_container(container: str, codec: str, degrees: int, hflip: bool) -> None:
    video = media.decode_video(mf.make_oriented_video(container, codec, degrees=degrees, hflip=hflip), num_frames=2)
    quarter = (degrees // 90) % 2 == 1
    assert video.frames.shape[1:3] == ((96, 64) if quarter else (64, 96))
    assert _bands(video.frames[0]) == _expected_bands(degrees, hflip)
    assert video.rotation_degrees == (-degrees) % 360 if not hflip else video.mirrored
    assert video.mirrored == hflip


def test_rotation_matches_vllms_opencv_loader(tmp_path) -> None:
    cv2 = pytest.importorskip("cv2")
    for degrees in (90, 180, -90):
        data = mf.make_oriented_video("mp4", "libx264", degrees=degrees)
        path = tmp_path / f"r{degrees}.mp4"
        path.write_bytes(data)
        ok, reference = cv2.VideoCapture(str(path)).read()
        assert ok
        ours = media.decode_video(data, num_frames=1).frames[0]
        assert ours.shape == reference.shape
        assert np.abs(ours.astype(int) - reference[..., ::-1].astype(int)).mean() < 2


# --------------------------------------------------------------------------- reproducer 3 and VFR


def _prompt_times(video: media.DecodedVideo) -> list[float]:
    """The times vLLM's processor will write into the prompt for this item."""
    from vllm.transformers_utils.processors.nano_nemotron_vl import calculate_timestamps

    _, meta = video.to_vllm()
    return calculate_timestamps(meta["frames_indices"], int(1000 / meta["fps"]))


def test_reproducer_variable_frame_rate_is_sampled_by_time() -> None:
    data = mf.make_vfr_video(mf.VFR_TIMES_S)
    video = media.decode_video(data, num_frames=8)
    # Targets 0, 11/7, 22/7, … 11 s; each takes the frame on screen then.
    assert video.frame_indices == (0, 29, 31, 32, 34, 35, 37, 39)
    assert [mf.read_frame_marker(f) for f in video.frames] == list(video.frame_indices)  # the pixels are those frames
    real = [mf.VFR_TIMES_S[i] for i in video.frame_indices]
    assert video.timestamps_s == pytest.approx(real, abs=1e-3)
    assert _prompt_times(video) == pytest.approx(real, abs=1e-3)  # was 0, 1.36, 2.50, … 8.85
    assert sum(t < 1.0 for t in video.timestamps_s) == 2  # was 6 of 8 in the first second
    assert video.duration_s >= 11.0


@pytest.mark.parametrize(("container", "codec"), [("mp4", "libx264"), ("matroska", "libx264"), ("webm", "libvpx")])
def test_vfr_fps_sampling_in_every_container(container: str, codec: str) -> None:
    video = media.decode_video(mf.make_vfr_video(mf.VFR_TIMES_S, container=container, codec=codec), fps=1.0)
    # One frame per second of presentation time: at 1 s the frame shown is the one at 0.967 s.
    expected = [0.0, 29 / 30] + [float(s) for s in range(2, 12)]
    assert video.timestamps_s == pytest.approx(expected, abs=1e-3)
    assert _prompt_times(video) == pytest.approx(expected, abs=1e-3)
    assert [mf.read_frame_marker(f) for f in video.frames] == list(video.frame_indices)


def test_fps_max_frames_and_num_frames_controls() -> None:
    data = mf.make_mp4(48, 64, 48, fps=24, seed=1)  # 2 s
    assert media.decode_video(data, fps=2.0).timestamps_s == pytest.approx([0, 0.5, 1.0, 1.5])
    assert media.decode_video(data, fps=24.0).sampled_frame_count == 48
    capped = media.decode_video(data, fps=24.0, max_frames=5)  # too many at 24 fps: 5 uniformly
    assert capped.frame_indices == (0, 11, 23, 35, 47)
    fewer = media.decode_video(data, fps=24.0, num_frames=3)  # "whichever gives fewer"
    assert fewer.frame_indices == (0, 23, 47)
    assert media.decode_video(data, num_frames=100).frame_indices == tuple(range(48))  # clamped, no duplicates
    with pytest.raises(InvalidArgument, match="fps must be > 0"):
        media.decode_video(data, fps=0.0)
    with pytest.raises(InvalidArgument, match="set num_frames or fps"):
        media.decode_video(data)
    with pytest.raises(ResourceExhausted, match="max_frames 300 exceeds"):
        media.decode_video(data, fps=1.0, max_frames=300)


def test_cfr_uniform_sampling_times_are_the_frames_times() -> None:
    video = media.decode_video(mf.make_mp4(30, 64, 48, fps=15, seed=2), num_frames=4)
    assert video.timestamps_s == pytest.approx([i / 15 for i in video.frame_indices], abs=1e-3)
    assert _prompt_times(video) == pytest.approx([i / 15 for i in video.frame_indices], abs=1e-3)


# =========================================================================== audio
# --------------------------------------------------------------------------- reproducer 4 and headers


def _wav_3s() -> tuple[bytes, np.ndarray]:
    wave = mf.waveform(3.0, SR, 1, seed=4)
    data = encode_wav(wave, SR)
    return data, np.frombuffer(data[44:], "<i2").astype(np.float32) / 32768


def test_reproducer_streamed_wav_with_zero_data_size() -> None:
    data, samples = _wav_3s()
    audio = media.decode_audio(mf.with_wav_data_size(data, 0), target_sample_rate=SR)
    assert len(audio.waveform) == 48000 and audio.duration_s == pytest.approx(3.0)
    np.testing.assert_allclose(audio.to_vllm()[0], samples, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        ("data-size-ffffffff", lambda d: mf.with_wav_data_size(d, 0xFFFFFFFF)),
        ("data-size-too-big", lambda d: mf.with_wav_data_size(d, 10**7)),
        ("riff-size-0", lambda d: mf.with_wav_riff_size(d, 0)),
        ("riff-size-ffffffff", lambda d: mf.with_wav_riff_size(d, 0xFFFFFFFF)),
    ],
)
def test_wav_with_misstated_lengths_gives_every_sample(name: str, mutate) -> None:
    data, samples = _wav_3s()
    audio = media.decode_audio(mutate(data), target_sample_rate=SR)
    np.testing.assert_allclose(audio.waveform, samples, atol=1e-6)


def test_wav_data_size_smaller_than_the_bytes_is_honoured_like_players() -> None:
    data, samples = _wav_3s()
    audio = media.decode_audio(mf.with_wav_data_size(data, 2000), target_sample_rate=SR)
    np.testing.assert_allclose(audio.waveform, samples[:1000], atol=1e-6)


def test_streamed_flac_with_unknown_length() -> None:
    flac = mf.make_flac(3.0, SR, 1, seed=5)
    reference = media.decode_audio(flac, target_sample_rate=SR).waveform
    assert len(reference) == 48000
    for total in (0, 1000):  # unknown (was RESOURCE_EXHAUSTED: 5.8e14 s), and understated
        np.testing.assert_array_equal(
            media.decode_audio(mf.with_flac_total_samples(flac, total), target_sample_rate=SR).waveform, reference
        )


@pytest.mark.parametrize("make", [mf.make_mp3, mf.make_mp3_pyav], ids=["libsndfile-lame", "ffmpeg-lame"])
def test_mp3_length_comes_from_its_frames(make) -> None:
    mp3 = make(3.0, 44100, 1, seed=6)
    full = media.decode_audio(mp3, target_sample_rate=SR)
    assert full.duration_s == pytest.approx(3.0, abs=0.06)
    # Xing frame count halved (a cut/concatenated file): still the whole clip.
    if b"Xing" in mp3[:200] or b"Info" in mp3[:200]:
        restated = media.decode_audio(mf.with_mp3_xing_frames(mp3, 10), target_sample_rate=SR)
        assert restated.duration_s == pytest.approx(full.duration_s, abs=0.06)
    # Cut in half: about half the clip, every sample a real one (no padding, no garbage).
    half = media.decode_audio(mp3[: len(mp3) // 2], target_sample_rate=SR)
    assert 1.2 < half.duration_s < 1.8
    n = min(len(half.waveform), len(full.waveform)) - 2000
    assert np.abs(half.waveform[:n] - full.waveform[:n]).max() < 1e-3


# --------------------------------------------------------------------------- layouts and rates

RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000)
LAYOUTS = (1, 2, 6, 8)  # mono, stereo, 5.1, 7.1


@pytest.mark.parametrize("fmt", ["wav", "flac"])
@pytest.mark.parametrize("channels", LAYOUTS)
@pytest.mark.parametrize("rate", RATES)
def test_lossless_audio_every_rate_and_layout(fmt: str, channels: int, rate: int) -> None:
    wave = mf.waveform(0.5, rate, channels, seed=rate + channels)
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format=fmt.upper(), subtype="PCM_16")
    stored = soundfile.read(io.BytesIO(buf.getvalue()), dtype="float32", always_2d=True)[0]
    audio = media.decode_audio(buf.getvalue(), target_sample_rate=SR)
    assert (audio.source_sample_rate, audio.source_channels, audio.format) == (rate, channels, fmt)
    assert len(audio.waveform) == round(len(wave) * SR / rate)  # exact resampled length
    if rate == SR:  # no resampling: the channel mean of the stored 16-bit samples
        np.testing.assert_allclose(audio.waveform, stored.mean(axis=1), atol=1e-6)
    assert abs(_peak_hz(audio.waveform) - 440) < 4


@pytest.mark.parametrize("channels", [7, 8, 12, 16])
@pytest.mark.parametrize("container", ["streamed-wav", "flac-in-mkv", "pcm-in-mkv"])
def test_many_channels_through_ffmpeg_are_the_channel_mean(container: str, channels: int) -> None:
    """verify-10e D1: 7.1 audio (8 channels and more) decoded by FFmpeg crashed the server
    (PyAV's to_ndarray on planar frames with FFmpeg's extra planes). A streamed WAV (data
    size 0) and Matroska go through FFmpeg; each is the channel mean of its samples."""
    wave = mf.waveform(0.5, SR, channels, seed=channels)
    if container == "streamed-wav":
        buf = io.BytesIO()
        soundfile.write(buf, wave, SR, format="WAV", subtype="PCM_16")
        data = mf.with_wav_data_size(buf.getvalue(), 0)
        stored = soundfile.read(io.BytesIO(buf.getvalue()), dtype="float32", always_2d=True)[0]
    else:
        codec = "flac" if container == "flac-in-mkv" else "pcm_f32le"
        if codec == "flac" and channels > 8:
            pytest.skip("FLAC holds at most 8 channels")
        data = mf.encode_audio(wave, SR, container="matroska", codec=codec)
        stored = wave if codec == "pcm_f32le" else np.round(wave * 32767) / 32768  # FLAC: 16-bit samples
    audio = media.decode_audio(data, target_sample_rate=SR)
    assert (audio.source_channels, audio.source_sample_rate, len(audio.waveform)) == (channels, SR, len(wave))
    np.testing.assert_allclose(audio.waveform, stored.mean(axis=1), atol=1e-4)


@pytest.mark.parametrize(
    ("make", "rate", "channels"),
    [
        (mf.make_ogg, 22050, 6),
        (mf.make_ogg, 48000, 2),
        (mf.make_ogg, 8000, 1),
        (mf.make_mp3, 8000, 1),
        (mf.make_mp3, 32000, 2),
        (mf.make_mp3_pyav, 48000, 2),
        (mf.make_m4a, 44100, 6),
        (mf.make_webm_audio, 48000, 2),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_lossy_audio_rates_and_layouts(make, rate: int, channels: int) -> None:
    audio = media.decode_audio(make(1.0, rate, channels, seed=7), target_sample_rate=SR)
    assert (audio.source_sample_rate, audio.source_channels) == (rate, channels)
    assert audio.duration_s == pytest.approx(1.0, abs=0.08)  # codec priming/padding
    assert len(audio.waveform) == pytest.approx(audio.duration_s * SR, abs=2)
    assert abs(_peak_hz(audio.waveform) - 440) < 4


def _peak_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / SR)[spectrum.argmax()])


# =========================================================================== hostile input


def test_reproducer_png_cut_to_16_to_20_bytes_is_invalid_argument() -> None:
    png = mf.make_png(8, 8)
    for n in range(16, 21):
        with pytest.raises(MediaDecodeError, match="image: the header is truncated or corrupt"):
            media.decode_image(png[:n])


def test_reproducer_wav_with_zero_bits_per_sample_is_invalid_argument() -> None:
    data, _ = _wav_3s()
    with pytest.raises(MediaDecodeError, match="header declares an encoding that cannot be decoded"):
        media.decode_audio(mf.with_wav_bits_per_sample(data, 0), target_sample_rate=SR)


def _fuzz_corpus() -> dict[str, tuple[str, bytes]]:
    return {
        "png": ("image", mf.make_png(24, 16, seed=1)),
        "png16": ("image", mf.gray16_ramp_png()[:400] + mf.gray16_ramp_png()[400:]),
        "jpeg": ("image", mf.make_jpeg(24, 16, seed=2)),
        "webp": ("image", mf.make_image(24, 16, seed=3, format="WEBP")),
        "gif": ("image", mf.make_gif(24, 16, seed=4, frames=2)),
        "bmp": ("image", mf.make_bmp(24, 16, seed=5)),
        "mp4": ("video", mf.make_mp4(6, 64, 32, fps=6, seed=6, gop=3)),
        "mp4-rotated": ("video", mf.make_oriented_video("mp4", "libx264", degrees=-90, width=64, height=32)),
        "mp4-vfr": ("video", mf.make_vfr_video([0, 0.1, 0.2, 1.0, 2.5], width=64, height=32)),
        "webm": ("video", mf.make_webm(6, 64, 32, fps=6, seed=7)),
        "mkv": ("video", mf.make_mkv(6, 64, 32, fps=6, seed=8)),
        "avi": ("video", mf.make_avi(6, 64, 32, fps=6, seed=9)),
        "wav": ("audio", mf.make_wav(0.3, 8000, 2, seed=10)),
        "flac": ("audio", mf.make_flac(0.3, 8000, 1, seed=11)),
        "ogg": ("audio", mf.make_ogg(0.3, 8000, 1, seed=12)),
        "mp3": ("audio", mf.make_mp3(0.3, 8000, 1, seed=13)),
        "m4a": ("audio", mf.make_m4a(0.3, 8000, 1, seed=14)),
        "webm-audio": ("audio", mf.make_webm_audio(0.3, 8000, 1, seed=15)),
    }


def _decode(kind: str, data: bytes) -> object:
    if kind == "image":
        return media.decode_image(data)
    if kind == "video":
        return media.decode_video(data, num_frames=3)
    return media.decode_audio(data, target_sample_rate=SR)


def test_truncation_and_bit_flips_only_ever_raise_status_errors() -> None:
    """Seeded: every file cut at many points and with bits flipped, headers especially;
    the decoders may succeed or raise a status-carrying error, nothing else."""
    rng = random.Random(1234)
    outcomes: dict[str, int] = {}
    for name, (kind, data) in _fuzz_corpus().items():
        n = len(data)
        cuts = sorted({*range(0, min(n, 48)), *(rng.randrange(n) for _ in range(12))})
        variants = [data[:cut] for cut in cuts]
        for _ in range(24):
            b = bytearray(data)
            # Two thirds of the flips land in the first 64 bytes, where the headers are.
            pos = rng.randrange(min(n, 64)) if rng.random() < 2 / 3 else rng.randrange(n)
            b[pos] ^= 1 << rng.randrange(8)
            variants.append(bytes(b))
        for variant in variants:
            try:
                _decode(kind, variant)
                outcome = "ok"
            except (MediaDecodeError, InvalidArgument, ResourceExhausted) as e:
                assert isinstance(e, NanovlError) and e.message.startswith(f"{kind}:"), (name, e)
                outcome = type(e).__name__
            except Exception as e:  # pragma: no cover - the failure being tested for
                pytest.fail(f"{name}: {type(e).__name__} escaped the decoder: {e}")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("MediaDecodeError", 0) > 100 and outcomes.get("ok", 0) > 10
