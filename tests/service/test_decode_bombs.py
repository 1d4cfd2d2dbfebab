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
