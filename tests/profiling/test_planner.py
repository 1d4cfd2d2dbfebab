"""The planner's recommendation against a brute-force enumeration, on seeded random mixes.

For each mix (random counts, item sizes, frame timing, text and memory budget) every
combination of counts up to the asked ones is evaluated with the planner's own
constraints; the recommended counts must fit, and no combination that fits may have at
least as many items of every modality and more of one. Also: what binds is what the
asked mix breaks, the smallest ``max_model_len`` named is the smallest that fits, and a
memory budget below the fixed memory says so in words.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

import numpy as np
import pytest

from model.tiny import ensure_tiny_checkpoint
from profiling.sizing import budget
from profiling.sizing.budget import AudioItems, ImageItems, PlanRequest, VideoItems, plan_budget
from service.media import MediaLimits

MODALITIES = ("image", "video", "audio")
BOX = {"image": 4, "video": 2, "audio": 3}  # the most items asked per modality
CASES = 10  # per checkpoint; seeds


@pytest.fixture(scope="module", params=["full", "dynamic"])
def planner(request) -> budget._Planner:
    base = PlanRequest(
        image=ImageItems(BOX["image"], 640, 480),
        video=VideoItems(BOX["video"], 8, 320, 240),
        audio=AudioItems(BOX["audio"], 10.0),
        max_model_len=4096,
    )
    plan = plan_budget(base, ensure_tiny_checkpoint(request.param))
    assert plan.planner is not None
    return plan.planner


def _with(planner: budget._Planner, **changes: object) -> budget._Planner:
    other = copy.copy(planner)
    other.request = dataclasses.replace(planner.request, **changes)
    return other


def _random_mix(planner: budget._Planner, seed: int) -> tuple[budget._Planner, ImageItems, VideoItems, AudioItems]:
    rng = np.random.default_rng(seed)
    n = {m: int(rng.integers(0, BOX[m] + 1)) for m in MODALITIES}
    image = ImageItems(n["image"], int(rng.integers(32, 2500)), int(rng.integers(32, 2500)))
    frames = int(rng.integers(1, 40))
    size = (int(rng.integers(64, 900)), int(rng.integers(64, 900)))
    if rng.random() < 0.5:
        video = VideoItems.sampled_at(n["video"], frames, *size, float(rng.uniform(1, 60)))
    else:
        video = VideoItems(n["video"], frames, *size, fps=float(rng.choice([2.0, 29.97, 60.0])))
    audio = AudioItems(n["audio"], float(rng.uniform(0.5, 120)))
    fixed = sum(c.bytes for c in planner.fixed_memory())
    memory = None if rng.random() < 0.25 else int(fixed * rng.uniform(0.8, 6))
    p = _with(
        planner,
        image=image,
        video=video,
        audio=audio,
        text_tokens=int(rng.integers(0, 800)),
        memory_budget_bytes=memory,
    )
    return p, image, video, audio


def _mixes(image: ImageItems, video: VideoItems, audio: AudioItems, counts: tuple[int, int, int]):
    return (
        dataclasses.replace(image, count=counts[0]),
        dataclasses.replace(video, count=counts[1]),
        dataclasses.replace(audio, count=counts[2]),
    )


@pytest.mark.parametrize("seed", range(CASES))
def test_recommendation_is_maximal(planner, seed):
    p, image, video, audio = _random_mix(planner, seed)
    rec = budget._recommend(p, image, video, audio)
    asked = (image.count, video.count, audio.count)
    fits = {c: p.fits(*_mixes(image, video, audio, c)) for c in itertools.product(*(range(a + 1) for a in asked))}
    got = tuple(rec.counts[m] for m in MODALITIES)
    assert rec.binding == p.violations(*_mixes(image, video, audio, asked))
    if not rec.fits:
        assert not any(fits.values()), "the planner found nothing that fits, but something does"
        return
    assert fits[got]
    dominating = [c for c, ok in fits.items() if ok and c != got and all(x >= y for x, y in zip(c, got, strict=True))]
    assert not dominating, f"recommended {got}, but {dominating} fit too"
    if not rec.binding:
        assert got == asked


@pytest.mark.parametrize("seed", range(3))
def test_smallest_max_model_len_is_the_smallest(planner, seed):
    rng = np.random.default_rng(100 + seed)
    image = ImageItems(BOX["image"], int(rng.integers(1500, 3000)), int(rng.integers(1500, 3000)))
    video = VideoItems.sampled_at(BOX["video"], int(rng.integers(10, 30)), 640, 360, 2.0)
    audio = AudioItems(BOX["audio"], float(rng.uniform(20, 60)))
    p = _with(planner, image=image, video=video, audio=audio, text_tokens=100, memory_budget_bytes=None)
    small = p.at_max_model_len(1024)
    rec = budget._recommend(small, image, video, audio)
    assert "tokens" in rec.binding
    n = rec.admitting_max_model_len
    assert n is not None and 1024 < n <= p.model_max_len

    def fits_context(length: int) -> bool:
        at = small.at_max_model_len(length)
        return at.evaluate(image, video, audio).media_prompt_tokens + 100 <= length - 1

    assert fits_context(n) and not fits_context(n - 1)
    assert f"from max_model_len {n}" in rec.note


def test_memory_budget_below_fixed_memory_says_so(planner):
    fixed = sum(c.bytes for c in planner.fixed_memory())
    image, video, audio = ImageItems(1, 640, 480), VideoItems(0), AudioItems(0)
    p = _with(planner, image=image, video=video, audio=audio, text_tokens=0, memory_budget_bytes=fixed // 2)
    rec = budget._recommend(p, image, video, audio)
    assert not rec.fits and rec.binding == ("memory",)
    assert "below what this configuration holds before any media" in rec.note
    assert "0.00" not in rec.note and "MiB" in rec.note
    assert rec.admitting_memory_bytes is not None and rec.admitting_memory_bytes > fixed


def test_issue_example_keeps_videos_when_memory_binds():
    # Issue 13: 8192 tokens, asked 8 images, 2 videos, 4 audio under 100 MiB. The old
    # planner dropped both videos (most tokens per item) though they fit once images went.
    plan = plan_budget(
        PlanRequest(
            image=ImageItems(8, 640, 480),
            video=VideoItems.sampled_at(2, 16, 640, 360, 2.0),
            audio=AudioItems(4, 30.0),
            max_model_len=8192,
            memory_budget_bytes=100 << 20,
        ),
        ensure_tiny_checkpoint("full"),
    )
    rec = plan.recommendation
    assert rec.fits and rec.binding and not plan.accepted
    p = plan.planner
    assert p is not None
    counts = tuple(rec.counts[m] for m in MODALITIES)
    for i in range(3):
        more = list(counts)
        more[i] += 1
        if more[i] <= (8, 2, 4)[i]:
            assert not p.fits(*_mixes(p.request.image, p.request.video, p.request.audio, tuple(more)))


def test_items_over_the_media_limits_are_argument_errors():
    from nanovl.errors import InvalidArgument

    path = ensure_tiny_checkpoint("full")
    with pytest.raises(InvalidArgument, match="max_audio_seconds"):
        plan_budget(PlanRequest(audio=AudioItems(1, 655.0)), path)
    with pytest.raises(InvalidArgument, match="max_video_frames"):
        plan_budget(PlanRequest(video=VideoItems(1, 20, 64, 64), media_limits=MediaLimits(max_video_frames=16)), path)
