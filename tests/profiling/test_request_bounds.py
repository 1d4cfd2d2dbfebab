"""Profiling requests' numbers (issue 10, N3): seeded extremes in every numeric field of
PlanBudget and RunDummyProfile requests get INVALID_ARGUMENT or OUT_OF_RANGE from the
bounds check, before any planning; values within the media limits pass it."""

from __future__ import annotations

import random

import grpc
import pytest

from nanovl.errors import NanovlError
from nanovl.v1 import profiling_pb2 as pb
from profiling.request_bounds import check_dummy_request, check_plan_request
from service.media import DEFAULT_MEDIA_LIMITS

U32, U64 = 2**32 - 1, 2**64 - 1
FLOATS = [float("nan"), float("inf"), -float("inf"), 1e308, -1.0, 5e-324]
REFUSED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)


def _hostile_items(rng: random.Random) -> pb.MediaItems:
    count = rng.choice([1, U32, 1025])
    kind = rng.choice(["image", "video", "audio"])
    if kind == "image":
        return pb.MediaItems(count=count, image=pb.ImageItem(width=rng.choice([U32, 70_000]), height=U32))
    if kind == "audio":
        return pb.MediaItems(count=count, audio=pb.AudioItem(seconds=rng.choice(FLOATS)))
    v = pb.VideoItem(num_frames=rng.choice([U32, 257]), width=rng.choice([64, U32]), height=64)
    pick = rng.randrange(4)
    if pick == 0:
        v.fps = rng.choice(FLOATS)
    elif pick == 1:
        v.frame_indices.extend([U64] * 8)
        v.num_frames = 8
    elif pick == 2:
        v.frame_times_s.extend([rng.choice(FLOATS[:5])] * 8)
        v.num_frames = 0
    return pb.MediaItems(count=count, video=v)


@pytest.mark.parametrize("seed", range(5))
def test_seeded_extremes_are_refused_precisely(seed):
    rng = random.Random(seed)
    for _ in range(40):
        req = pb.PlanBudgetRequest(items=[_hostile_items(rng)])
        with pytest.raises(NanovlError) as err:
            check_plan_request(req, limits=DEFAULT_MEDIA_LIMITS)
        assert err.value.code in REFUSED, err.value
        with pytest.raises(NanovlError) as err:
            check_dummy_request(pb.RunDummyProfileRequest(items=req.items), limits=DEFAULT_MEDIA_LIMITS)
        assert err.value.code in REFUSED, err.value
    for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "text_tokens"):
        with pytest.raises(NanovlError) as err:
            check_plan_request(pb.PlanBudgetRequest(**{name: U32}), limits=DEFAULT_MEDIA_LIMITS)
        assert err.value.code == grpc.StatusCode.OUT_OF_RANGE and name in err.value.message


@pytest.mark.parametrize("path", ["/tmp/\x00x", "", "a" * 5000])
def test_model_paths_that_are_not_paths(path):
    with pytest.raises(NanovlError) as err:
        check_plan_request(pb.PlanBudgetRequest(model_path=path), limits=DEFAULT_MEDIA_LIMITS)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_ordinary_plans_pass():
    check_plan_request(
        pb.PlanBudgetRequest(
            items=[
                pb.MediaItems(count=2, image=pb.ImageItem(width=1024, height=768)),
                pb.MediaItems(count=1, video=pb.VideoItem(num_frames=8, width=640, height=480, fps=2.0)),
                pb.MediaItems(count=1, audio=pb.AudioItem(seconds=30.0)),
            ],
            max_model_len=32768,
            max_num_seqs=64,
        ),
        limits=DEFAULT_MEDIA_LIMITS,
    )
    check_plan_request(
        pb.PlanBudgetRequest(items=[pb.MediaItems(count=1, image=pb.ImageItem())]), limits=DEFAULT_MEDIA_LIMITS
    )


def test_cpu_profile_process_lists_are_counted():
    from profiling.request_bounds import check_cpu_request

    check_cpu_request(pb.CaptureCpuProfileRequest(processes=[1, 2, 3]))
    with pytest.raises(NanovlError) as err:
        check_cpu_request(pb.CaptureCpuProfileRequest(processes=[1] * 100_000))
    assert err.value.code == grpc.StatusCode.OUT_OF_RANGE
