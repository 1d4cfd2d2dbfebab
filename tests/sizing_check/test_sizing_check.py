"""CI's slice of the sizing checker (``make sizing-check`` runs >= 2000 prompts per modality),
and the cases issue 13 reported, against vLLM's own processor (no engine)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from tests.sizing_check.cases import AudioSpec, Case, ImageSpec, VideoSpec, modality_of
from tests.sizing_check.checker import (
    Reference,
    Report,
    _media,
    actual,
    agree,
    check_variant,
    predict,
    reference,
    variants,
)

SLICE_CASES = 2  # prompts per modality (and mixed) per variant, each with the cache off and on
SLICE_LENS = (512,)  # small enough for the dynamic tiler's budget to bind


@pytest.mark.parametrize("variant", list(variants()))
def test_slice_has_no_mismatch(variant):
    report = Report()
    check_variant(variant, cases_per_kind=SLICE_CASES, seed=13, report=report, max_model_lens=SLICE_LENS)
    assert report.total_mismatches == 0, "\n".join(m.describe() for m in report.mismatches[:5])
    assert sum(r.cases for r in report.rows.values()) > 0


@pytest.fixture(scope="module")
def dynamic_512() -> Reference:
    return reference("dynamic", 512)


def _run(ref: Reference, case: Case, *, cache: bool, baseline: bool = False):
    media: dict = defaultdict(list)
    for spec in case.items:
        media[modality_of(spec)].append(_media(spec))
    predicted, uuids = predict(ref, case, media, baseline=baseline)
    refused = predicted.error.startswith("refused")
    return predicted, actual(ref, case, media, uuids, cache=cache and not refused)


def test_an_image_seen_alone_keeps_no_stale_size(dynamic_512):
    # Issue 13, why 1: image A alone, then A beside large images. vLLM's cache kept A's
    # size from its first prompt (742 tokens produced, 474 predicted); nanovl's item keys
    # make the second prompt process all its images together, as predicted.
    ref = dynamic_512
    ref.cache.clear_cache()
    a = ImageSpec(640, 480, 1)
    big = (ImageSpec(1500, 1200, 2), ImageSpec(1300, 1700, 3), ImageSpec(2000, 900, 4))
    first, second = Case("image", 0, (a,)), Case("image", 1, (a, *big))
    for case in (first, second):
        predicted, real = _run(ref, case, cache=True)
        assert agree(predicted, real), (predicted, real)
    ref.cache.clear_cache()
    _run(ref, first, cache=True, baseline=True)
    predicted, real = _run(ref, second, cache=True, baseline=True)
    assert real.items[0] == predicted_alone(ref, a) and not agree(predicted, real)  # the old behaviour


def predicted_alone(ref: Reference, spec: ImageSpec) -> tuple[int, int]:
    predicted, _ = _run(ref, Case("image", 0, (spec,)), cache=False)
    return predicted.items[0]


ISSUE_THIN = [(951, 1655), (4, 3219), (1457, 1814), (1974, 1230), (10, 762), (392, 1460)]


def test_issue_thin_images_are_refused_exactly_when_vllm_fails(dynamic_512):
    # Issue 13, why 3: at max_model_len 512 these images, two videos and one audio made
    # vLLM's processor (and nanovl's accounting) divide by zero.
    ref = dynamic_512
    video = VideoSpec(320, 240, 2.0, tuple(range(4)), 10)
    items = (
        *(ImageSpec(w, h, i + 1) for i, (w, h) in enumerate(ISSUE_THIN)),
        video,
        VideoSpec(320, 240, 30.0, (0, 15, 30), 11),
        AudioSpec(16000 * 3, 12),
    )
    predicted, real = _run(ref, Case("mixed", 0, items), cache=False)
    assert predicted.error.startswith("refused") and "too thin" in predicted.error
    assert "ZeroDivisionError" in real.error
    # Alone, each of them is fine for both.
    for i, (w, h) in enumerate(ISSUE_THIN):
        predicted, real = _run(ref, Case("image", 1, (ImageSpec(w, h, 20 + i),)), cache=False)
        assert not predicted.error and agree(predicted, real)


def test_thin_image_at_300_is_refused():
    ref = reference("dynamic", 300)
    predicted, real = _run(ref, Case("image", 0, (ImageSpec(10000, 1, 1),)), cache=False)
    assert predicted.error.startswith("refused: the image (10000x1 pixels) is too thin")
    assert real.error  # vLLM's processor cannot resize it to 0 pixels
    rng = np.random.default_rng(0)
    for i in range(20):  # thin images near the edge: refused exactly when vLLM fails
        w, h = int(rng.integers(1, 30)), int(rng.integers(2000, 30000))
        predicted, real = _run(ref, Case("image", 0, (ImageSpec(w, h, 2 + i),)), cache=False)
        assert agree(predicted, real), (w, h, predicted, real)
