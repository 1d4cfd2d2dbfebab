"""The planner on a server started with ``--exact-mm-sizing`` (no engine): the largest
items GetBudget and PlanBudget advertise, and the items they plan with, are the ones the
server accepts — within the declaration, not what the context alone would hold
(verify-13 D1/D2). The server's own refusals are checked end to end in
tests/deploy/test_balancer.py."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from model.item_maxima import parse
from model.tiny import ensure_tiny_checkpoint
from model.token_accounting import ModelGeometry, audio_tokens, video_tokens
from nanovl.errors import InvalidArgument
from profiling.sizing.budget import AudioItems, PlanRequest, VideoItems, plan_budget
from profiling.sizing.live_budget import largest_items, resolve_unsized

MAX_MODEL_LEN = 8192
SPECS = [
    "video=8x320x240@2,audio=20",
    "video=30x640x480@4,audio=0.5",
    "video=3x224x224@0.25,audio=601",
    "video=30x640x480@3,audio=0.005",  # under the planner's 10 ms step (verify-13b N1)
    "video=8x320x240@2,audio=7.3333",  # between two steps
]


@functools.cache
def _engine_args(spec: str | None):
    from service.engine import default_engine_args

    path = ensure_tiny_checkpoint("full")
    args = default_engine_args(
        str(path), max_model_len=MAX_MODEL_LEN, limit_mm_per_prompt={"image": 2, "video": 2, "audio": 2}
    )
    if spec is not None:
        maxima = parse(spec, max_video_frames=256, max_audio_seconds=900, frame_side=224)
        args.hf_overrides = maxima.hf_overrides(args.hf_overrides)
    return path, args


@functools.cache
def _largest(spec: str | None):
    path, args = _engine_args(spec)
    return largest_items(path, ("video", "audio"), engine_args=args, max_model_len=MAX_MODEL_LEN)


def _geometry() -> ModelGeometry:
    return ModelGeometry.from_checkpoint(ensure_tiny_checkpoint("full"), max_model_len=MAX_MODEL_LEN)


@pytest.mark.parametrize("spec", SPECS)
def test_largest_items_are_the_declared_ones(spec):
    maxima = parse(spec, max_video_frames=256, max_audio_seconds=900, frame_side=224)
    largest = _largest(spec)
    video, audio = largest["video"], largest["audio"]
    assert video is not None and audio is not None
    g = _geometry()
    # Video: the declared frames (or fewer, if the later timestamps of vLLM's 2 fps
    # dummy timing would take more tokens than the declared item); never more tokens.
    declared_video = video_tokens(
        g,
        maxima.video.num_frames,
        maxima.video.width,
        maxima.video.height,
        fps=1000.0,
        frame_indices=[round(maxima.video.last_frame_s * 1000)] * maxima.video.num_frames,
    ).encoder_tokens
    assert video.item.num_frames <= maxima.video.num_frames
    assert video.tokens.encoder_tokens <= declared_video
    one_more = dataclasses.replace(video.item, num_frames=video.item.num_frames + 1, frame_indices=None)
    more = video_tokens(g, one_more.num_frames, one_more.width, one_more.height, fps=one_more.fps).encoder_tokens
    assert one_more.num_frames > maxima.video.num_frames or more > declared_video
    # Audio: the declaration, capped by the 600 s media limit.
    assert audio.item.seconds == min(maxima.audio.seconds, 600.0)
    assert audio.tokens == audio_tokens(g, seconds=audio.item.seconds)


def test_without_a_declaration_the_context_and_media_limits_bound_them():
    largest = _largest(None)
    assert largest["audio"].item.seconds == 600.0  # --max-audio-seconds, below what 8192 tokens hold
    assert largest["video"].item.num_frames > 8


def test_plan_refuses_an_item_over_the_declaration_naming_the_setting():
    path, args = _engine_args(SPECS[0])
    for request, says in (
        (PlanRequest(audio=AudioItems(1, 20.5)), "20.5 s"),
        (PlanRequest(video=VideoItems(1, 9, 320, 240)), "9 frames"),
        (PlanRequest(video=VideoItems(1, 8, 320, 240, fps=0.1)), "encoder tokens"),  # timestamps up to 70 s
    ):
        with pytest.raises(InvalidArgument, match="--exact-mm-sizing") as err:
            plan_budget(request, path, engine_args=args)
        assert says in str(err.value)
    # At the declaration: planned.
    plan = plan_budget(PlanRequest(video=VideoItems(1, 8, 320, 240), audio=AudioItems(1, 20.0)), path, engine_args=args)
    assert plan.recommendation.fits and not plan.recommendation.binding


def test_unsized_items_resolve_within_the_declaration_and_the_recommendation_stays_there():
    path, args = _engine_args(SPECS[0])
    resolved = resolve_unsized(PlanRequest(video=VideoItems(2), audio=AudioItems(3)), path, engine_args=args)
    assert resolved.audio == AudioItems(3, 20.0) and resolved.video.num_frames == 8
    plan = plan_budget(resolved, path, engine_args=args)
    rec = plan.recommendation
    assert rec.largest_audio is not None and rec.largest_audio.seconds <= 20.0
    assert rec.largest_video is not None and rec.largest_video.num_frames <= 8
