"""Decode amplification (issue 10, N5): images whose header promises far more pixels than
their bytes carry are refused from the header (RESOURCE_EXHAUSTED naming the limit);
Pillow's LOAD_TRUNCATED_IMAGES stays off once the whole server stack is imported."""

from __future__ import annotations

import io
import random

import grpc
import pytest
from PIL import Image, ImageFile

from nanovl.errors import NanovlError
from service.media import IMAGE_AMPLIFICATION_FREE_PIXELS, decode_image


def _png(mode: str, w: int, h: int) -> bytes:
    b = io.BytesIO()
    Image.new(mode, (w, h), 0).save(b, "PNG", optimize=True)
    return b.getvalue()


def _jpeg_claiming(w: int, h: int, *, real: int = 16) -> bytes:
    """A small real JPEG whose SOF is patched to claim ``w`` x ``h``: its scan ends early."""
    b = io.BytesIO()
    Image.new("L", (real, real), 0).save(b, "JPEG")
    d = bytearray(b.getvalue())
    i = d.find(b"\xff\xc0")
    d[i + 5 : i + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(d)


@pytest.mark.parametrize("seed", range(3))
def test_amplifying_images_are_refused_from_the_header(seed):
    rng = random.Random(seed)
    for _ in range(4):
        w, h = rng.randrange(2100, 6500), rng.randrange(2100, 6500)
        for data in (_png("1", w, h), _jpeg_claiming(w, h)):
            with pytest.raises(NanovlError) as err:
                decode_image(data)
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_image_pixels_per_byte" in err.value.message


def test_ordinary_images_still_decode():
    # Small images pass whatever their ratio; a blank RGB PNG over the free size is ~340 px/byte.
    assert decode_image(_png("1", 1000, 1000)).width == 1000
    w = 2500
    assert w * w > IMAGE_AMPLIFICATION_FREE_PIXELS
    assert decode_image(_png("RGB", w, w)).width == w


def test_truncated_images_stay_refused_after_the_server_stack_is_imported():
    import service.server  # noqa: F401  (vLLM, transformers and the model code with it)

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("seed", range(3))
def test_jpegs_whose_scan_ends_early_are_refused(seed):
    """A JPEG cut anywhere in its scan and closed with EOI decodes in Pillow with grey fill;
    it is INVALID_ARGUMENT (baseline, progressive, 4:4:4 and 4:2:0, any quality)."""
    import numpy as np

    rng = random.Random(seed)
    pixels = np.random.default_rng(seed).integers(0, 256, (rng.randrange(64, 400), rng.randrange(64, 400), 3))
    for kw in ({}, {"progressive": True}, {"subsampling": 0}, {"quality": rng.randrange(20, 95)}):
        b = io.BytesIO()
        Image.fromarray(pixels.astype("uint8")).save(b, "JPEG", **kw)
        whole = b.getvalue()
        assert decode_image(whole).width == pixels.shape[1]
        sos = whole.find(b"\xff\xda")
        cut = rng.randrange(sos + 20, len(whole) - 16)
        with pytest.raises(NanovlError) as err:
            decode_image(whole[:cut] + b"\xff\xd9")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, (kw, cut, len(whole))
        assert "truncated JPEG" in err.value.message or "truncated" in err.value.message


def _black_h264(frames: int, width: int, height: int, *, keyint: int, codec: str = "libx264") -> bytes:
    """An MP4 of ``frames`` black frames, a keyframe every ``keyint`` (H.264 skips the rest
    in a few bytes each: the verify-10b D6 clip, smaller)."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream(codec, rate=30)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = (
            {"preset": "ultrafast", "g": str(keyint), "keyint_min": str(keyint), "sc_threshold": "0"}
            if codec == "libx264"
            else {
                "preset": "ultrafast",
                "x265-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:log-level=none",
            }
        )
        black = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
        for _ in range(frames):
            c.mux(s.encode(black))
        c.mux(s.encode())
    return buf.getvalue()


def test_a_single_keyframe_video_bomb_is_refused_before_decoding(monkeypatch):
    """verify-10b D6: a 51 KB single-GOP clip of 1500 1080p frames with num_frames=256 cost
    5.8 s of CPU and 1.6 GB. The frames the decoder must go through to reach the sampled
    ones are counted from the demuxed packets; past max_video_pixels_per_byte (above the
    free allowance, scaled down here so the clip stays small) the clip is refused before
    any frame is decoded. The same frames with a keyframe every 10 are decoded."""
    from service import media

    monkeypatch.setattr(media, "VIDEO_AMPLIFICATION_FREE_PIXELS", 1_000_000)
    bomb = _black_h264(300, 640, 480, keyint=100_000)
    pixels = 300 * 640 * 480
    assert pixels > media.DEFAULT_MEDIA_LIMITS.max_video_pixels_per_byte * len(bomb)
    with pytest.raises(NanovlError) as err:
        media.decode_video(bomb, num_frames=256)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "decoding 300 frames of 640x480" in err.value.message and "max_video_pixels_per_byte" in err.value.message
    # Few sampled frames near the start need few decoded frames: accepted.
    assert media.decode_video(bomb, num_frames=1).frames.shape == (1, 480, 640, 3)
    # Seekable keyframes: only each sampled frame's stretch is decoded.
    seekable = _black_h264(300, 640, 480, keyint=10)
    assert media.decode_video(seekable, num_frames=4).frames.shape == (4, 480, 640, 3)
    # Raised by the operator: decoded.
    limits = media.MediaLimits(max_video_pixels_per_byte=10**9)
    assert media.decode_video(bomb, num_frames=8, limits=limits).frames.shape[0] == 8


def test_a_bomb_whose_container_fakes_its_keyframes_is_stopped_while_decoding(monkeypatch):
    """verify-10c E1: the same bomb (HEVC) with its MP4 sync-sample table (stss) renamed away, so
    the container says every frame is a keyframe and the count from the packets is small.
    The bound is enforced again on the frames the decoder returns: refused part-way."""
    from service import media

    monkeypatch.setattr(media, "VIDEO_AMPLIFICATION_FREE_PIXELS", 1_000_000)
    bomb = _black_h264(300, 640, 480, keyint=100_000, codec="libx265")
    assert bomb.count(b"stss") == 1
    faked = bomb.replace(b"stss", b"free")
    decoded: list[int] = []
    budget_frames = media._DecodeBudget.frames

    def counting(self, frames):
        try:
            yield from budget_frames(self, frames)
        finally:
            decoded.append(self.decoded)

    with pytest.raises(NanovlError) as err:
        media.decode_video(faked, num_frames=256)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_video_pixels_per_byte" in err.value.message
    # Stopped at the allowance: allowed pixels / frame pixels, not the 300 frames.
    allowed = max(
        media.VIDEO_AMPLIFICATION_FREE_PIXELS, media.DEFAULT_MEDIA_LIMITS.max_video_pixels_per_byte * len(faked)
    )
    stopped_at = int(err.value.message.split("means decoding ")[1].split(" frames")[0])
    assert stopped_at == allowed // (640 * 480) + 1 < 300
    # Within the allowance the faked file still decodes.
    monkeypatch.setattr(media._DecodeBudget, "frames", counting)
    assert media.decode_video(faked, num_frames=1).frames.shape == (1, 480, 640, 3)
    assert decoded and max(decoded) <= allowed // (640 * 480)


@pytest.mark.parametrize("seed", range(3))
def test_frames_to_decode_follow_the_decoders_path(seed):
    """Seeded: for each sampled frame, the frames from its keyframe (or from the last one
    decoded, inside the same stretch) up to it; every frame up to the last sampled one
    when the stream cannot seek."""
    from service.media import _frames_to_decode, _PacketProbe

    rng = random.Random(seed)
    count = rng.randrange(50, 500)
    keys = sorted({0, *rng.sample(range(count), rng.randrange(0, 10))})
    pts = tuple(range(count))
    indices = sorted(rng.sample(range(count), rng.randrange(1, 20)))
    probe = _PacketProbe(count=count, pts=pts, keyframe_pts=tuple(keys), seekable=True, time_base=1.0)
    decoded: set[int] = set()
    for i in indices:
        start = max(k for k in keys if k <= i)
        decoded.update(range(start if start > max(decoded, default=-1) else max(decoded) + 1, i + 1))
    assert _frames_to_decode(probe, indices) == len(decoded)
    unseekable = _PacketProbe(count=count, pts=pts, keyframe_pts=tuple(keys), seekable=False, time_base=1.0)
    assert _frames_to_decode(unseekable, indices) == indices[-1] + 1


def _switching_avi(n_small: int, n_big: int, width: int, height: int) -> bytes:
    """An AVI H.264 stream that declares 64x64 (its first ``n_small`` frames) and then
    switches to ``width`` x ``height``, one keyframe in all (verify-10d F1's shape): the
    big frames come from a second encoder, muxed into the same stream."""
    import fractions

    import av
    import numpy as np

    opts = {"g": "100000", "keyint_min": "100000", "sc_threshold": "0", "preset": "ultrafast", "crf": "51"}
    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt, s.options = 64, 64, "yuv420p", dict(opts)
        small = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        for i in range(n_small):
            small.pts = i
            out.mux(s.encode(small))
        out.mux(s.encode())
        big = av.CodecContext.create("libx264", "w")
        big.width, big.height, big.pix_fmt = width, height, "yuv420p"
        big.time_base, big.framerate = fractions.Fraction(1, 30), fractions.Fraction(30, 1)
        big.options = dict(opts)
        big.open()
        frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
        packets = []
        for i in range(n_big):
            frame.pts = i
            packets += big.encode(frame)
        packets += big.encode()
        for p in packets:
            p.pts, p.dts = (p.pts or 0) + n_small, (p.dts if p.dts is not None else p.pts) + n_small
            p.stream = s
            out.mux(p)
    return buf.getvalue()


def test_a_stream_that_switches_to_a_larger_frame_size_is_counted_at_that_size(monkeypatch):
    """verify-10d F1: 30 frames of 64x64, then 1280x720 (4K and more in the report): the
    declared 64x64 passed every check and every frame was decoded. Each decoded frame now
    counts at its own size, so the same bound stops it part-way."""
    from service import media

    monkeypatch.setattr(media, "VIDEO_AMPLIFICATION_FREE_PIXELS", 1_000_000)
    data = _switching_avi(30, 150, 1280, 720)
    assert 150 * 1280 * 720 > media.DEFAULT_MEDIA_LIMITS.max_video_pixels_per_byte * len(data)
    with pytest.raises(NanovlError) as err:
        media.decode_video(data, num_frames=8)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_video_pixels_per_byte" in err.value.message and "64x64 or more" in err.value.message
    decoded = int(err.value.message.split("means decoding ")[1].split(" frames")[0])
    assert 30 < decoded < 30 + 150  # stopped among the large frames, not after all of them
    # Within the limits the switch is decoded, every frame at the declared size.
    limits = media.MediaLimits(max_video_pixels_per_byte=10**9)
    assert media.decode_video(data, num_frames=8, limits=limits).frames.shape == (8, 64, 64, 3)


def test_a_frame_over_the_per_frame_limit_mid_stream_is_never_decoded():
    """verify-10d F1: a stream declaring 64x64 that switches to 8192x8192 passed the
    per-frame pixel limit (checked on the declared size). The decoder now refuses any frame
    over max_video_pixels_per_frame before decoding it (FFmpeg's max_pixels)."""
    from service import media

    data = _switching_avi(30, 2, 640, 480)
    limits = media.MediaLimits(max_video_pixels_per_frame=320 * 240)
    with pytest.raises(NanovlError) as err:
        media.decode_video(data, num_frames=32, limits=limits)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_video_pixels_per_frame (76,800 pixels)" in err.value.message
    # The first 30 frames alone are within it.
    assert media.decode_video(data, num_frames=1, limits=limits).frames.shape == (1, 64, 64, 3)
