"""ENGINE-BACKED: the encoder memory model against measurement, within ±10 %.

A model-accuracy assertion (no wall clock): on the session engine, ``RunDummyProfile``
measures the encoder step's peak tensor bytes for a small grid (every modality, one item
and several of one modality: the case the old model got wrong by counting one video), and
the dummy profiler measures mixed prompts (modality groups encoded one after another); the
prediction (``profiling/sizing/memory_model.py``) must be within ±10 % of each. The full
grid over the three tiny variants is ``make bench-memory-model`` (docs/sizing.md).
"""

from __future__ import annotations

import pytest

from nanovl.v1 import profiling_pb2 as pb
from nanovl.v1 import profiling_pb2_grpc
from profiling.sizing.budget import AudioItems, ImageItems, VideoItems
from profiling.sizing.dummy import DummyProfiler

TOLERANCE = 0.10

GRID = [
    pb.MediaItems(count=1, image=pb.ImageItem(width=640, height=480)),
    pb.MediaItems(count=3, image=pb.ImageItem(width=320, height=240)),
    pb.MediaItems(count=1, video=pb.VideoItem(num_frames=8, width=320, height=240)),
    pb.MediaItems(count=2, video=pb.VideoItem(num_frames=8, width=320, height=240)),
    pb.MediaItems(count=1, audio=pb.AudioItem(seconds=3)),
    pb.MediaItems(count=2, audio=pb.AudioItem(seconds=10)),
]


def _error(measured: int, predicted: int) -> float:
    return (predicted - measured) / measured


async def test_predicted_encoder_memory_is_within_ten_percent_of_measured(admin_target):
    import grpc

    async with grpc.aio.insecure_channel(admin_target) as channel:
        stub = profiling_pb2_grpc.ProfilingStub(channel)
        result = await stub.RunDummyProfile(pb.RunDummyProfileRequest(items=GRID), timeout=300)
    errors = {
        f"{m.count} x {m.item.WhichOneof('item')}": _error(m.peak_memory_increase_bytes, m.predicted_memory_bytes)
        for m in result.modalities
    }
    assert len(errors) == len(GRID)
    assert all(abs(e) <= TOLERANCE for e in errors.values()), errors


@pytest.mark.parametrize(
    "mix",
    [
        [ImageItems(2, 320, 240), VideoItems(1, 8, 320, 240), AudioItems(1, 5.0)],
        [VideoItems(2, 6, 320, 240), AudioItems(2, 8.0)],
    ],
    ids=["image+video+audio", "videos+audios"],
)
async def test_mixed_prompts_are_within_ten_percent(engine, mix):
    profile = await DummyProfiler(engine, engine.engine_args).run_mix(mix)
    error = _error(profile.peak_memory_increase_bytes, profile.predicted_memory_bytes)
    assert abs(error) <= TOLERANCE, (mix, profile.peak_memory_increase_bytes, profile.predicted_memory_bytes)


# ------------------------------------------------------------------ the recorded grid (no engine)


def _prompt_items(geom, entries):
    """Exact token accounting for one dummy prompt, as the worker builds it (videos at 2 fps,
    frames 0..n-1; images beside the prompt's video and audio tags)."""
    from model.token_accounting import audio_tokens, dummy_text_length, images_tokens, video_tokens
    from nanovl.media_specs import parse_dims

    counts: dict[str, int] = {}
    for modality, count, _ in entries:
        counts[modality] = counts.get(modality, 0) + count
    items = []
    for modality, count, size in entries:
        if modality == "image":
            w, h = parse_dims(size, 2, "image")
            text = dummy_text_length(geom, num_videos=counts.get("video", 0), num_audios=counts.get("audio", 0))
            items += images_tokens(geom, [(w, h)] * count, text_prompt_length=text)
        elif modality == "video":
            n, w, h = parse_dims(size, 3, "video")
            items += [video_tokens(geom, n, w, h)] * count
        else:
            items += [audio_tokens(geom, seconds=float(size))] * count
    return items


def test_the_recorded_grid_is_within_ten_percent():
    """``make bench-memory-model``'s measurements (docs/benchmarks/memory_model.json, every
    tiny variant) against the model as it is now: a change to the model that breaks an
    earlier measurement fails here without an engine."""
    import json
    from pathlib import Path

    from transformers import AutoConfig

    from model.tiny import ensure_tiny_checkpoint
    from model.token_accounting import ModelGeometry
    from profiling.sizing.memory_model import EncoderMemoryModel

    rows = json.loads((Path(__file__).resolve().parents[2] / "docs/benchmarks/memory_model.json").read_text())
    assert {m for r in rows for m, _, _ in r["entries"]} == {"image", "video", "audio"}
    assert any(len(r["entries"]) > 1 for r in rows) and any(c > 1 for r in rows for _, c, _ in r["entries"])
    errors = {}
    for variant in sorted({r["variant"] for r in rows}):
        path = ensure_tiny_checkpoint(variant)
        model = EncoderMemoryModel(AutoConfig.from_pretrained(path, trust_remote_code=True))
        geom = ModelGeometry.from_checkpoint(path, max_model_len=8192)
        for r in (r for r in rows if r["variant"] == variant):
            predicted = model.prompt_peak(_prompt_items(geom, r["entries"])).peak_bytes
            errors[f"{variant}: {r['items']}"] = _error(r["measured_bytes"], predicted)
    assert all(abs(e) <= TOLERANCE for e in errors.values()), errors
