"""nanovl's token accounting against vLLM's real multimodal processor.

For every item the reference is what vLLM's ``NanoNemotronVLMultiModalProcessor`` (built
from a ``ModelConfig`` of the tiny checkpoint, as the engine builds it) does to real
synthetic media: the placeholder length it puts in the prompt, the embeddings it
attributes to the item, and the tiles/frames/clips it hands the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model.tiny import ensure_tiny_checkpoint
from model.token_accounting import (
    ItemTokens,
    ModelGeometry,
    audio_tokens,
    dummy_text_length,
    image_tokens,
    images_tokens,
    video_tokens,
)
from nanovl.errors import FailedPrecondition, InvalidArgument

MAX_MODEL_LEN = 1024  # small, so the dynamic tiler's shared budget is easy to exhaust


@dataclass(frozen=True)
class Reference:
    """vLLM's processor and nanovl's geometry for one checkpoint and one setting."""

    processor: Any
    geometry: ModelGeometry

    def process(self, prompt: str, data: dict[str, list[Any]], **hf_kwargs: Any) -> Any:
        import torch

        # Eager: vLLM torch.compiles its resize/mel helpers on first use, which costs
        # far more than processing these small items.
        with torch.compiler.set_stance("force_eager"):
            return self.processor(
                prompt, self.processor.info.parse_mm_data(data), hf_processor_mm_kwargs=hf_kwargs or None
            )


def _reference(variant: str, **engine_kwargs: Any) -> Reference:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.multimodal import MULTIMODAL_REGISTRY

    path = ensure_tiny_checkpoint(variant)
    model_config = EngineArgs(
        model=str(path),
        trust_remote_code=True,
        max_model_len=MAX_MODEL_LEN,
        mm_processor_cache_gb=0,
        **engine_kwargs,
    ).create_model_config()
    processor = MULTIMODAL_REGISTRY.create_processor(model_config)
    # nanovl's side is built independently: AutoConfig + AutoTokenizer from the directory.
    geometry = ModelGeometry.from_checkpoint(
        path, max_model_len=MAX_MODEL_LEN, video_pruning_rate=engine_kwargs.get("video_pruning_rate")
    )
    return Reference(processor, geometry)


@pytest.fixture(scope="module")
def tiled() -> Reference:
    return _reference("full")


@pytest.fixture(scope="module")
def dynamic() -> Reference:
    return _reference("dynamic")


@pytest.fixture(scope="module")
def evs() -> Reference:
    return _reference("full", video_pruning_rate=0.6)


def _placeholders(out: Any, modality: str) -> list[tuple[int, int]]:
    return [(r.length, r.get_num_embeds()) for r in out["mm_placeholders"][modality]]


def _counts(item: ItemTokens) -> tuple[int, int]:
    return item.prompt_tokens, item.encoder_tokens


def _video(
    num_frames: int, width: int, height: int, fps: float = 2.0, indices: list[int] | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    indices = list(range(num_frames)) if indices is None else indices
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    metadata = {
        "fps": fps,
        "frames_indices": indices,
        "duration": (indices[-1] + 1) / fps,
        "total_num_frames": indices[-1] + 1,
        "video_backend": "opencv",
        "do_sample_frames": False,
    }
    return frames, metadata


IMAGE_SIZES = [
    (640, 480),
    (4000, 100),
    (100, 4000),
    (16, 16),
    (1, 1),
    (224, 224),
    (448, 224),
    (3000, 2000),
    (1023, 767),
    (97, 1500),
    (2240, 2240),
]


@pytest.mark.parametrize("variant", ["tiled", "dynamic"])
@pytest.mark.parametrize(("width", "height"), IMAGE_SIZES)
def test_image_tokens_match_processor(request, variant, width, height):
    ref: Reference = request.getfixturevalue(variant)
    out = ref.process("<image>", {"image": [Image.new("RGB", (width, height))]})
    item = image_tokens(ref.geometry, width, height)
    assert _placeholders(out, "image") == [_counts(item)]
    assert item.feature_tokens == item.encoder_tokens
    pixels = out["mm_kwargs"]["image"][0]["pixel_values_flat"].data
    if ref.geometry.dynamic_resolution:
        assert (item.detail.tiles, item.detail.tile_height, item.detail.tile_width) == (1, *pixels.shape[-2:])
    else:
        assert (item.detail.tiles, item.detail.tile_height, item.detail.tile_width) == (
            pixels.shape[0],
            *pixels.shape[-2:],
        )


@pytest.mark.parametrize("max_num_tiles", [1, 4, 6])
def test_max_num_tiles_override(tiled, max_num_tiles):
    for width, height in [(4000, 100), (640, 480), (300, 1200)]:
        out = tiled.process("<image>", {"image": [Image.new("RGB", (width, height))]}, max_num_tiles=max_num_tiles)
        item = image_tokens(tiled.geometry, width, height, max_num_tiles=max_num_tiles)
        assert _placeholders(out, "image") == [_counts(item)]


def test_dynamic_images_share_one_budget(dynamic):
    # Five large images ask for more patches than max_model_len allows: the tiler
    # scales them down together, so each count depends on the others.
    sizes = [(3000, 2000), (2000, 3000), (2500, 2500), (4000, 100), (640, 480)]
    out = dynamic.process("<image>" * len(sizes), {"image": [Image.new("RGB", s) for s in sizes]})
    together = images_tokens(dynamic.geometry, sizes)
    assert _placeholders(out, "image") == [_counts(it) for it in together]
    alone = [image_tokens(dynamic.geometry, *s) for s in sizes]
    assert sum(it.feature_tokens for it in together) < sum(it.feature_tokens for it in alone)


def test_dynamic_images_beside_video_and_audio(dynamic):
    # vLLM feeds its processor one tag per video/audio item, which eats tiler budget.
    sizes = [(3000, 2000)] * 5
    data = {
        "image": [Image.new("RGB", s) for s in sizes],
        "video": [_video(2, 64, 64)],
        "audio": [(np.zeros(16000, np.float32), 16000)],
    }
    out = dynamic.process("<image>" * 5 + "<video><so_embedding>", data)
    text_len = dummy_text_length(dynamic.geometry, num_videos=1, num_audios=1)
    assert text_len > 0
    got = images_tokens(dynamic.geometry, sizes, text_prompt_length=text_len)
    assert _placeholders(out, "image") == [_counts(it) for it in got]


VIDEOS = [(1, 320, 240), (2, 64, 64), (3, 640, 480), (8, 100, 400), (17, 1280, 720)]


@pytest.mark.parametrize("variant", ["tiled", "dynamic"])  # temporal patch size 1 and 2
@pytest.mark.parametrize(("num_frames", "width", "height"), VIDEOS)
def test_video_tokens_match_processor(request, variant, num_frames, width, height):
    ref: Reference = request.getfixturevalue(variant)
    out = ref.process("<video>", {"video": [_video(num_frames, width, height)]})
    item = video_tokens(ref.geometry, num_frames, width, height)
    assert _placeholders(out, "video") == [_counts(item)]
    pixels = out["mm_kwargs"]["video"][0]["pixel_values_flat_video"].data
    assert (item.detail.frames, item.detail.frame_height, item.detail.frame_width) == (
        pixels.shape[0],
        *pixels.shape[-2:],
    )
    t = ref.geometry.video_temporal_patch_size
    assert item.detail.tubelets == -(-num_frames // t)
    # The separators and <img></img> wrappers are part of what vLLM caches for a video.
    assert item.encoder_tokens == item.prompt_tokens > item.feature_tokens


@pytest.mark.parametrize("variant", ["tiled", "dynamic"])
@pytest.mark.parametrize(
    ("fps", "indices"), [(29.97, [0, 15, 30, 45, 60, 75]), (1.0, [3, 9, 200]), (60.0, list(range(0, 1200, 100)))]
)
def test_video_timestamps_change_the_count(request, variant, fps, indices):
    ref: Reference = request.getfixturevalue(variant)
    n = len(indices)
    out = ref.process("<video>", {"video": [_video(n, 160, 120, fps, indices)]})
    item = video_tokens(ref.geometry, n, 160, 120, fps=fps, frame_indices=indices)
    assert _placeholders(out, "video") == [_counts(item)]


@pytest.mark.parametrize("num_frames", [1, 4, 9])
def test_video_tokens_with_evs_pruning(evs, num_frames):
    out = evs.process("<video>", {"video": [_video(num_frames, 320, 240)]})
    item = video_tokens(evs.geometry, num_frames, 320, 240)
    assert _placeholders(out, "video") == [_counts(item)]
    unpruned = item.detail.tubelets * item.detail.tokens_per_tubelet
    # EVS always keeps the first frame's tokens, and prunes from the second frame on.
    if num_frames == 1:
        assert item.detail.retained_tokens == unpruned
    else:
        assert item.detail.retained_tokens < unpruned


AUDIO_SECONDS = [0.01, 0.05, 1.0, 3.0, 29.99, 30.0, 30.05, 45.0, 61.3, 95.5]


@pytest.mark.parametrize("variant", ["tiled", "dynamic"])
@pytest.mark.parametrize("seconds", AUDIO_SECONDS)
def test_audio_tokens_match_processor(request, variant, seconds):
    ref: Reference = request.getfixturevalue(variant)
    samples = int(round(seconds * 16000))
    out = ref.process("<so_embedding>", {"audio": [(np.zeros(samples, np.float32), 16000)]})
    by_seconds = audio_tokens(ref.geometry, seconds=seconds)
    by_samples = audio_tokens(ref.geometry, num_samples=samples)
    assert by_seconds == by_samples
    assert _placeholders(out, "audio") == [_counts(by_samples)]
    features = out["mm_kwargs"]["audio"][0]["input_audio_features"].data
    assert by_samples.detail.clips == features.shape[0]


def test_mixed_prompt_adds_up(tiled):
    data = {
        "image": [Image.new("RGB", (640, 480)), Image.new("RGB", (50, 900))],
        "video": [_video(4, 320, 240)],
        "audio": [(np.zeros(16000 * 40, np.float32), 16000)],
    }
    prompt = "Look: <image> and <image>, watch <video>, listen <so_embedding>."
    out = tiled.process(prompt, data)
    g = tiled.geometry
    items = [*images_tokens(g, [(640, 480), (50, 900)]), video_tokens(g, 4, 320, 240), audio_tokens(g, seconds=40.0)]
    text = len(g.processor.tokenizer(prompt, add_special_tokens=False).input_ids) - 4  # minus the 4 tags
    assert len(out["prompt_token_ids"]) == text + sum(it.prompt_tokens for it in items)


def test_checkpoint_without_audio():
    geom = ModelGeometry.from_checkpoint(ensure_tiny_checkpoint("no-audio"))
    assert not geom.supports_audio
    with pytest.raises(FailedPrecondition):
        audio_tokens(geom, seconds=1.0)


def test_invalid_sizes_are_rejected(tiled):
    with pytest.raises(InvalidArgument):
        image_tokens(tiled.geometry, 0, 10)
    with pytest.raises(InvalidArgument):
        video_tokens(tiled.geometry, 3, 64, 64, frame_indices=[0, 1])
    with pytest.raises(InvalidArgument):
        audio_tokens(tiled.geometry, seconds=1.0, num_samples=16000)
    with pytest.raises(InvalidArgument):
        ModelGeometry.from_checkpoint("/nonexistent/checkpoint")


# ---------------------------------------------------------------- V3 (Nemotron 3 Omni)
# Dynamic tiles, tubelets, a fixed per-frame video patch budget with the aspect kept,
# EVS, 30 s audio clips; checked on seeded random sizes against vLLM's processor.


@pytest.fixture(scope="module")
def omni_v3() -> Reference:
    return _reference("omni-v3")


@pytest.fixture(scope="module")
def omni_v3_evs() -> Reference:
    return _reference("omni-v3", video_pruning_rate=0.6)


@pytest.fixture(scope="module")
def omni_v3_no_audio() -> Reference:
    return _reference("omni-v3-no-audio")


V3_REFERENCES = ["omni_v3", "omni_v3_evs", "omni_v3_no_audio"]
V3_CASES = range(8)  # seeds


@pytest.mark.parametrize("variant", V3_REFERENCES)
@pytest.mark.parametrize("seed", V3_CASES)
def test_v3_image_tokens_match_processor(request, variant, seed):
    ref: Reference = request.getfixturevalue(variant)
    rng = np.random.default_rng(seed)
    width, height = (int(x) for x in rng.integers(1, 4000, size=2))
    out = ref.process("<image>", {"image": [Image.new("RGB", (width, height))]})
    item = image_tokens(ref.geometry, width, height)
    assert _placeholders(out, "image") == [_counts(item)]
    pixels = out["mm_kwargs"]["image"][0]["pixel_values_flat"].data
    assert (item.detail.tiles, item.detail.tile_height, item.detail.tile_width) == (1, *pixels.shape[-2:])


@pytest.mark.parametrize("variant", V3_REFERENCES)
@pytest.mark.parametrize("seed", V3_CASES)
def test_v3_video_tokens_match_processor(request, variant, seed):
    ref: Reference = request.getfixturevalue(variant)
    rng = np.random.default_rng(100 + seed)
    num_frames = int(rng.integers(1, 14))
    width, height = (int(x) for x in rng.integers(16, 1600, size=2))
    fps = float(rng.choice([1.0, 2.0, 29.97]))
    indices = sorted(int(i) for i in rng.choice(400, size=num_frames, replace=False))
    out = ref.process("<video>", {"video": [_video(num_frames, width, height, fps, indices)]})
    item = video_tokens(ref.geometry, num_frames, width, height, fps=fps, frame_indices=indices)
    assert _placeholders(out, "video") == [_counts(item)]
    pixels = out["mm_kwargs"]["video"][0]["pixel_values_flat_video"].data
    assert (item.detail.frames, item.detail.frame_height, item.detail.frame_width) == (
        pixels.shape[0],
        *pixels.shape[-2:],
    )
    assert item.detail.tubelets == -(-num_frames // 2)
    if ref.geometry.video_pruning_rate and item.detail.tubelets > 1:
        assert item.detail.retained_tokens < item.detail.tubelets * item.detail.tokens_per_tubelet


@pytest.mark.parametrize("seed", V3_CASES)
def test_v3_audio_tokens_match_processor(omni_v3, seed):
    # Up to vLLM's 600 s audio limit: 30 s clips, the tail clip padded.
    seconds = float(np.random.default_rng(200 + seed).uniform(0.01, 600.0))
    samples = int(round(seconds * 16000))
    out = omni_v3.process("<so_embedding>", {"audio": [(np.zeros(samples, np.float32), 16000)]})
    item = audio_tokens(omni_v3.geometry, num_samples=samples)
    assert _placeholders(out, "audio") == [_counts(item)]
    assert item.detail.clips == out["mm_kwargs"]["audio"][0]["input_audio_features"].data.shape[0]


def test_v3_mixed_prompt_shares_the_tiler_budget(omni_v3):
    # Large images beside a video and an audio item: the dynamic tiler's budget is shared
    # and reduced by the other items' tags, as in vLLM.
    sizes = [(3000, 2000), (2000, 3000), (2500, 2500)]
    data = {
        "image": [Image.new("RGB", s) for s in sizes],
        "video": [_video(5, 320, 240)],
        "audio": [(np.zeros(16000 * 40, np.float32), 16000)],
    }
    prompt = "<image><image><image> then <video> and <so_embedding>."
    out = omni_v3.process(prompt, data)
    g = omni_v3.geometry
    text_len = dummy_text_length(g, num_videos=1, num_audios=1)
    images = images_tokens(g, sizes, text_prompt_length=text_len)
    assert _placeholders(out, "image") == [_counts(it) for it in images]
    items = [*images, video_tokens(g, 5, 320, 240), audio_tokens(g, seconds=40.0)]
    text = len(g.processor.tokenizer(prompt, add_special_tokens=False).input_ids) - 5  # minus the 5 tags
    assert len(out["prompt_token_ids"]) == text + sum(it.prompt_tokens for it in items)


def test_v3_no_audio_checkpoint_has_no_audio(omni_v3_no_audio):
    assert not omni_v3_no_audio.geometry.supports_audio
    with pytest.raises(FailedPrecondition):
        audio_tokens(omni_v3_no_audio.geometry, seconds=1.0)
