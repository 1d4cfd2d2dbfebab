"""ENGINE-BACKED: the tiny V3 (Nemotron 3 Omni) checkpoints load and serve on CPU.

One engine start per V3 variant (a module-scoped fixture; one V3 engine alive at a
time), and each start is used for everything: every modality the checkpoint has in one
streamed prompt, beside a concurrent text-only request, and the weight-equality guard.

By default only ``omni-v3`` starts (it has every V3 feature: MoE, tubelets, dynamic
tiler, audio); ``omni-v3-no-audio`` (same LLM and vision tower, no sound encoder, the
no-audio architecture name) costs one more engine start (40-90 s on two shared cores)
and runs with ``NANOVL_TEST_ALL_V3_ENGINES=1``.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import numpy as np
import pytest
from PIL import Image
from vllm import SamplingParams

from model.prompt import MediaPart, TextPart, assemble_raw, video_item
from model.tiny import V3_VARIANTS, ensure_tiny_checkpoint
from model.token_accounting import ModelGeometry, audio_tokens, video_tokens
from model.weights import WeightReport, expected_vllm_tensors, load_checkpoint_tensors
from service.engine import Engine, default_engine_args

pytestmark = pytest.mark.engine  # starts its own V3 engine

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
MAX_MODEL_LEN = 2048


ENGINE_VARIANTS = [
    v
    if v == "omni-v3" or os.environ.get("NANOVL_TEST_ALL_V3_ENGINES") == "1"
    else pytest.param(v, marks=pytest.mark.skip(reason="one more engine start; set NANOVL_TEST_ALL_V3_ENGINES=1"))
    for v in V3_VARIANTS
]


@pytest.fixture(scope="module", params=ENGINE_VARIANTS)
async def v3(request):
    path = ensure_tiny_checkpoint(request.param)
    has_audio = request.param == "omni-v3"
    # 8 images: enough large ones to make the dynamic tiler share its budget at 2048.
    limits = {"image": 8, "video": 2, "audio": 1 if has_audio else 0}
    args = default_engine_args(str(path), max_model_len=MAX_MODEL_LEN, limit_mm_per_prompt=limits, max_num_seqs=8)
    engine = await Engine.start(args, warmup=False)
    yield request.param, path, engine
    engine.shutdown()


async def _stream(engine: Engine, parts):
    rendered = await engine.render(assemble_raw(parts))
    outputs = [out async for out in engine.generate(rendered, GREEDY, request_id=uuid.uuid4().hex)]
    return rendered, outputs


async def test_streams_every_modality_in_one_prompt(v3):
    variant, path, engine = v3
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8))
    frames = rng.integers(0, 255, (5, 240, 320, 3), dtype=np.uint8)  # 5 frames → 3 tubelets
    parts = [
        TextPart("Compare "),
        MediaPart("image", image),
        TextPart(" with "),
        MediaPart("video", video_item(frames, fps=2.0, frames_indices=list(range(5)), total_num_frames=5)),
    ]
    has_audio = variant == "omni-v3"
    if has_audio:
        wave = (rng.standard_normal(16000 * 2) * 0.1).astype(np.float32)
        parts += [TextPart(" and "), MediaPart("audio", (wave, 16000))]

    (rendered, outputs), (_, text_outputs) = await asyncio.gather(
        _stream(engine, parts), _stream(engine, [TextPart("Hello there")])
    )

    for stream in (outputs, text_outputs):
        final = stream[-1]
        assert final.finished and len(final.outputs[0].token_ids) == GREEDY.max_tokens
        assert len(stream) > 1  # streamed, not one final answer
    assert set(rendered.tokens_by_modality) == {"text", "image", "video"} | ({"audio"} if has_audio else set())
    assert len(outputs[-1].prompt_token_ids) == rendered.num_prompt_tokens
    # The engine's counts are the ones nanovl's token accounting predicts.
    geom = ModelGeometry.from_checkpoint(path, max_model_len=MAX_MODEL_LEN)
    assert geom.video_temporal_patch_size == 2 and geom.dynamic_resolution
    video = video_tokens(geom, 5, 320, 240)
    assert video.detail.tubelets == 3
    assert rendered.tokens_by_modality["video"] == video.prompt_tokens
    if has_audio:
        assert rendered.tokens_by_modality["audio"] == audio_tokens(geom, seconds=2.0).prompt_tokens


async def test_every_loaded_parameter_equals_its_checkpoint_tensor(v3):
    _, path, engine = v3
    (raw,) = await engine.llm.collective_rpc("nanovl_check_weights", args=(str(path),))
    report = WeightReport.from_wire(raw)
    assert report.ok, report.summary() + f" mismatched={report.mismatched[:5]} missing={report.missing_in_engine[:5]}"
    # 100 %: every tensor the checkpoint implies for vLLM's model was found and equal.
    expected = expected_vllm_tensors(load_checkpoint_tensors(path))
    assert set(report.matched) == set(expected) - set(report.skipped)
    experts = [n for n in report.matched if n.endswith(("routed_experts.w13_weight", "routed_experts.w2_weight"))]
    assert len(experts) == 2 * 2  # two MoE blocks in "MEM*E", w13 and w2 each
    assert sum(n.endswith(".mixer.gate.e_score_correction_bias") for n in report.matched) == 2
    assert all(n.endswith((".ls1", ".ls2")) for n in report.not_in_checkpoint), report.not_in_checkpoint


async def test_image_counts_do_not_depend_on_the_processor_cache(v3):
    # vLLM's processor cache is on (its default). An image first sent alone is stored at
    # its size alone; sent again beside seven large images, the tiler shares its budget
    # and would shrink it, but the cache would hand back the stored size (issue 13). The
    # engine keys such a prompt's items per request, so every count is what nanovl's
    # accounting says for the whole prompt, and the rendered prompt fits as predicted.
    _, path, engine = v3
    assert engine.engine_args.mm_processor_cache_gb > 0
    rng = np.random.default_rng(5)
    first = Image.fromarray(rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8))
    # Eight images of 1024 patches each: 8192 patches, over the budget of (2048 - 4) x 4.
    large = [Image.new("RGB", (2048, 2048), (i, 2 * i, 3 * i)) for i in range(7)]
    geom = engine.geometry
    alone = await engine.render(assemble_raw([MediaPart("image", first), TextPart("describe")]))
    together = await engine.render(
        assemble_raw([MediaPart("image", im) for im in [first, *large]] + [TextPart("compare")])
    )
    sizes = [im.size for im in [first, *large]]
    from model.token_accounting import images_tokens

    predicted = images_tokens(geom, sizes)
    got = [int(r.length) for r in together.engine_input["mm_placeholders"]["image"]]
    assert got == [it.prompt_tokens for it in predicted]
    assert got[0] < alone.tokens_by_modality["image"]  # the shared budget shrank it


async def test_an_image_the_tiler_cannot_process_is_refused_before_vllm(v3):
    from nanovl.errors import InvalidArgument

    _, _, engine = v3
    thin = Image.new("RGB", (20000, 1))  # its one patch row scales to 0: vLLM divides by zero
    with pytest.raises(InvalidArgument, match="too thin for this model's dynamic-resolution tiler"):
        await engine.render(assemble_raw([MediaPart("image", thin), TextPart("what is this?")]))
    # The engine still serves.
    rendered, outputs = await _stream(engine, [TextPart("Hello")])
    assert outputs[-1].finished


async def test_videos_resized_to_different_shapes_are_refused_before_vllm(v3):
    from nanovl.errors import InvalidArgument

    _, _, engine = v3
    wide = np.zeros((2, 240, 640, 3), np.uint8)
    tall = np.zeros((2, 640, 240, 3), np.uint8)
    parts = [
        MediaPart("video", video_item(v, fps=2.0, frames_indices=[0, 1], total_num_frames=2)) for v in (wide, tall)
    ]
    with pytest.raises(InvalidArgument, match="resize to different frame shapes"):
        await engine.render(assemble_raw([*parts, TextPart("compare")]))
