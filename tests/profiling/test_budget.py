"""The budget planner against vLLM's own code paths (config, budget, dummy inputs,
input validation) on the tiny checkpoint. No engine is started."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model.tiny import ensure_tiny_checkpoint
from model.token_accounting import dummy_text_length, image_tokens, images_tokens, video_tokens
from nanovl.errors import InvalidArgument
from profiling.sizing.budget import (
    AudioItems,
    ImageItems,
    PlanRequest,
    VideoItems,
    admission,
    plan_budget,
)

MAX_MODEL_LEN = 4096
MIX = PlanRequest(
    image=ImageItems(2, 640, 480),
    video=VideoItems(1, 8, 320, 240),
    audio=AudioItems(1, 45.0),
    max_model_len=MAX_MODEL_LEN,
    text_tokens=20,
)


@pytest.fixture(scope="module")
def checkpoint():
    return ensure_tiny_checkpoint("full")


@pytest.fixture(scope="module")
def mix_plan(checkpoint):
    return plan_budget(MIX, checkpoint)


def _vllm_budget(checkpoint, **engine_kwargs: Any):
    """vLLM's own VllmConfig and MultiModalBudget, built here independently."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.encoder_budget import MultiModalBudget

    config = EngineArgs(
        model=str(checkpoint), trust_remote_code=True, mm_processor_cache_gb=0, **engine_kwargs
    ).create_engine_config()
    return config, MultiModalBudget(config, MULTIMODAL_REGISTRY, enable_cache=False)


def _eager():
    import torch

    return torch.compiler.set_stance("force_eager")


# ------------------------------------------------------------------ vLLM's numbers


@pytest.mark.parametrize(
    "counts",
    [
        {"image": 2, "video": 1, "audio": 1},
        {"image": 1, "video": 0, "audio": 0},
        {"image": 2, "video": 1, "audio": 0},
        {"image": 0, "video": 0, "audio": 1},
        {"image": 3, "video": 0, "audio": 2},
    ],
)
def test_vllm_numbers_match_vllm(checkpoint, counts):
    request = PlanRequest(
        image=ImageItems(counts["image"], 640, 480),
        video=VideoItems(counts["video"], 4, 64, 64),
        audio=AudioItems(counts["audio"], 5.0),
        max_model_len=MAX_MODEL_LEN,
        max_num_batched_tokens=1024,
    )
    plan = plan_budget(request, checkpoint)
    _, budget = _vllm_budget(
        checkpoint, max_model_len=MAX_MODEL_LEN, max_num_batched_tokens=1024, limit_mm_per_prompt=counts
    )
    assert dict(plan.vllm.max_tokens_per_item) == dict(budget.mm_max_toks_per_item)
    assert plan.vllm.compute_budget_tokens == budget.encoder_compute_budget
    assert plan.vllm.cache_size_tokens == budget.encoder_cache_size
    assert plan.vllm.profiled_modality == budget.get_modality_with_max_tokens()
    assert plan.vllm.profiled_items == budget.mm_max_items_per_batch[plan.vllm.profiled_modality]
    # The rule vLLM applies to this model: video and audio reserve the whole context.
    for m in ("video", "audio"):
        assert plan.modality(m).vllm_max_tokens_per_item == (MAX_MODEL_LEN if counts[m] else 0)
    assert plan.vllm.cache_size_tokens == max(1024, *plan.vllm.max_tokens_per_item.values())


def test_text_only_profiles_nothing(checkpoint):
    plan = plan_budget(PlanRequest(max_model_len=MAX_MODEL_LEN), checkpoint)
    assert plan.vllm.profiled_modality is None
    assert plan.vllm.cache_size_tokens == plan.nanovl.needed_tokens == 0
    assert plan.recommendation.limit_mm_per_prompt == {"image": 0, "video": 0, "audio": 0}


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_profiled_dummy_item_matches_vllm_dummy(checkpoint, modality):
    counts = {m: int(m == modality) for m in ("image", "video", "audio")}
    request = PlanRequest(
        image=ImageItems(counts["image"]),
        video=VideoItems(counts["video"], 1, 64, 64),
        audio=AudioItems(counts["audio"], 1.0),
        max_model_len=MAX_MODEL_LEN,
    )
    plan = plan_budget(request, checkpoint)
    assert plan.vllm.profiled_modality == modality
    _, budget = _vllm_budget(checkpoint, max_model_len=MAX_MODEL_LEN, limit_mm_per_prompt=counts)
    with _eager():  # builds and processes the dummy media exactly as the profiler does
        dummy = budget.processor.get_dummy_mm_inputs({modality: 1})
    (placeholder,) = dummy["mm_placeholders"][modality]
    item = plan.vllm.profiled_item
    assert (placeholder.length, placeholder.get_num_embeds()) == (item.prompt_tokens, item.encoder_tokens)


def test_unset_image_size_is_vllms_largest_image(checkpoint):
    plan = plan_budget(PlanRequest(image=ImageItems(1), max_model_len=MAX_MODEL_LEN), checkpoint)
    item = plan.modality("image").item
    assert item.encoder_tokens == plan.vllm.max_tokens_per_item["image"]


# ------------------------------------------------------------------ admission


@pytest.fixture(scope="module")
def input_processor(checkpoint):
    from vllm.v1.engine.input_processor import InputProcessor

    config, _ = _vllm_budget(
        checkpoint, max_model_len=MAX_MODEL_LEN, limit_mm_per_prompt={"image": 2, "video": 1, "audio": 1}
    )
    return InputProcessor(config)


@pytest.fixture(scope="module")
def processed_mix(input_processor):
    """A real processed prompt: two images, a video, an audio clip and some text."""
    from vllm.multimodal import MULTIMODAL_REGISTRY

    proc = MULTIMODAL_REGISTRY.create_processor(input_processor.model_config)
    frames = np.zeros((8, 240, 320, 3), np.uint8)
    meta = {
        "fps": 2.0,
        "frames_indices": list(range(8)),
        "duration": 4.0,
        "total_num_frames": 8,
        "video_backend": "opencv",
        "do_sample_frames": False,
    }
    data = {
        "image": [Image.new("RGB", (640, 480))] * 2,
        "video": [(frames, meta)],
        "audio": [(np.zeros(16000 * 45, np.float32), 16000)],
    }
    with _eager():
        return proc("Compare <image> with <image>; then <video> and <so_embedding>.", proc.info.parse_mm_data(data))


def _vllm_accepts(input_processor, prompt, *, max_model_len: int, cache_size: int) -> tuple[bool, str]:
    from vllm.exceptions import VLLMValidationError

    # Both limits are read at call time, so one InputProcessor serves every case.
    input_processor.model_config.max_model_len = max_model_len
    input_processor.mm_encoder_cache_size = cache_size
    try:
        input_processor._validate_model_input(prompt, "decoder")
    except VLLMValidationError as exc:
        return False, str(exc)
    return True, ""


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_length_admission_at_the_boundary(input_processor, processed_mix, mix_plan, delta):
    n = len(processed_mix["prompt_token_ids"])
    items = [m.item for m in mix_plan.modalities for _ in range(m.count)]
    ours = admission(prompt_tokens=n, max_model_len=n + delta, items=items, encoder_cache_size=10**6)
    theirs, message = _vllm_accepts(input_processor, processed_mix, max_model_len=n + delta, cache_size=10**6)
    assert ours.accepted == theirs
    assert ours.over_by_tokens == max(0, n - (n + delta - 1))
    if not theirs:
        assert str(n) in message and f"remove {ours.over_by_tokens} tokens" in ours.reason


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_encoder_cache_admission_at_the_boundary(input_processor, processed_mix, mix_plan, delta):
    items = [m.item for m in mix_plan.modalities for _ in range(m.count)]
    largest = max(it.encoder_tokens for it in items)
    n = len(processed_mix["prompt_token_ids"])
    ours = admission(prompt_tokens=n, max_model_len=10**6, items=items, encoder_cache_size=largest + delta)
    theirs, message = _vllm_accepts(input_processor, processed_mix, max_model_len=10**6, cache_size=largest + delta)
    assert ours.accepted == theirs
    if not theirs:
        # Same condition and same item as vLLM's "exceeds the pre-allocated encoder cache size".
        vllm_item = re.search(r"item with (\d+) embedding tokens", message).group(1)
        assert ours.oversized_items and f"with {vllm_item} embedding tokens" in ours.oversized_items[0]


def test_plan_prompt_tokens_equal_the_processed_prompt(processed_mix, mix_plan):
    text = "Compare  with ; then  and ."
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mix_plan.model_path)
    text_tokens = len(tok(text, add_special_tokens=False).input_ids)
    assert mix_plan.media_prompt_tokens + text_tokens == len(processed_mix["prompt_token_ids"])


@pytest.mark.parametrize("spare", [1, 0, -1])
def test_plan_accepts_up_to_max_model_len_minus_one(checkpoint, mix_plan, spare):
    text = MAX_MODEL_LEN - 1 - mix_plan.media_prompt_tokens - spare + 1
    plan = plan_budget(dataclasses.replace(MIX, text_tokens=text), checkpoint)
    assert plan.prompt_tokens == MAX_MODEL_LEN - spare
    assert plan.accepted == (spare >= 1)
    assert plan.admission.over_by_tokens == max(0, 1 - spare)


# ------------------------------------------------------------------ nanovl's need and memory


def test_encoder_need(mix_plan):
    items = [m.item for m in mix_plan.modalities for _ in range(m.count)]
    largest = max(it.encoder_tokens for it in items)
    total = sum(it.encoder_tokens for it in items)
    need = mix_plan.nanovl
    assert need.min_tokens == largest
    assert need.needed_tokens == max(largest, min(total, mix_plan.max_num_batched_tokens + largest))
    assert need.needed_bytes == need.needed_tokens * mix_plan.geometry.llm_hidden_size * 2


def test_memory_components(checkpoint, mix_plan):
    from safetensors import safe_open

    # Weights: every tensor of the checkpoint as loaded (bf16 already).
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
        loaded = sum(f.get_tensor(k).nbytes for k in names)
        k_proj = [f.get_slice(k).get_shape() for k in names if k.endswith("mixer.k_proj.weight")]
        conv = [f.get_slice(k).get_shape() for k in names if k.endswith("mixer.conv1d.weight")]
    llm = mix_plan.llm
    assert llm.weights_bytes == loaded
    # Layer counts from the checkpoint's own tensors, not from the config pattern.
    assert (llm.attention_layers, llm.mamba_layers) == (len(k_proj), len(conv))
    assert llm.kv_bytes_per_token == sum(2 * shape[0] * 2 for shape in k_proj)  # K and V, bf16
    text = mix_plan.geometry.processor.config.text_config
    ssm = text.mamba_num_heads * text.mamba_head_dim * text.ssm_state_size * 4  # float32 SSM state
    assert llm.mamba_state_bytes_per_seq == sum(s[0] * (s[-1] - 1) * 2 + ssm for s in conv)

    for memory, cache_tokens in (
        (mix_plan.memory_nanovl, mix_plan.nanovl.needed_tokens),
        (mix_plan.memory_vllm, mix_plan.vllm.cache_size_tokens),
    ):
        assert memory.total_bytes == sum(c.bytes for c in memory.components)
        assert memory.bytes_of("weights") == llm.weights_bytes
        assert memory.bytes_of("kv_cache") == llm.kv_bytes_per_token * MAX_MODEL_LEN
        assert memory.bytes_of("mamba_state") == llm.mamba_state_bytes_per_seq * mix_plan.max_num_seqs
        assert memory.bytes_of("encoder_cache") == cache_tokens * mix_plan.geometry.llm_hidden_size * 2
    # vLLM profiles a dummy video that fills the context; nanovl's items are smaller.
    assert (
        mix_plan.memory_vllm.bytes_of("encoder_activations")
        > mix_plan.memory_nanovl.bytes_of("encoder_activations")
        > 0
    )


def test_activation_estimate_grows_with_the_item(mix_plan):
    from profiling.sizing.budget import encoder_activation_bytes

    g = mix_plan.geometry
    cfg = g.processor.config
    small, large = image_tokens(g, 224, 224), image_tokens(g, 640, 480)
    assert 0 < encoder_activation_bytes(cfg, [small], 2) < encoder_activation_bytes(cfg, [large], 2)
    assert encoder_activation_bytes(cfg, [large, large], 2) > encoder_activation_bytes(cfg, [large], 2)
    few, many = video_tokens(g, 2, 64, 64), video_tokens(g, 20, 64, 64)
    assert encoder_activation_bytes(cfg, [few], 2) < encoder_activation_bytes(cfg, [many], 2)


# ------------------------------------------------------------------ recommendation


def test_largest_items_are_maximal(checkpoint, mix_plan):
    rec = mix_plan.recommendation
    assert rec.fits
    g = mix_plan.geometry
    limit = MAX_MODEL_LEN - 1 - MIX.text_tokens
    rest_image = 2 * image_tokens(g, 640, 480).prompt_tokens
    rest_video = mix_plan.modality("video").item.prompt_tokens
    rest_audio = mix_plan.modality("audio").item.prompt_tokens

    v = rec.largest_video
    assert (v.width, v.height) == (320, 240)
    assert rest_image + rest_audio + video_tokens(g, v.num_frames, 320, 240).prompt_tokens <= limit
    assert rest_image + rest_audio + video_tokens(g, v.num_frames + 1, 320, 240).prompt_tokens > limit

    from model.token_accounting import audio_tokens

    a = rec.largest_audio
    assert rest_image + rest_video + audio_tokens(g, seconds=a.seconds).prompt_tokens <= limit
    assert rest_image + rest_video + audio_tokens(g, seconds=a.seconds + 0.01).prompt_tokens > limit

    i = rec.largest_image
    largest_image = image_tokens(g, i.width, i.height)
    assert rest_video + rest_audio + largest_image.prompt_tokens <= limit
    # The context has room for vLLM's worst-case image, so that is the answer.
    assert largest_image.encoder_tokens == mix_plan.vllm.max_tokens_per_item["image"]


def test_memory_budget_reduces_the_limits(checkpoint, mix_plan):
    # A budget between the fixed memory and what the full mix needs.
    fixed = sum(mix_plan.memory_nanovl.bytes_of(c) for c in ("weights", "kv_cache", "mamba_state"))
    budget = (fixed + mix_plan.memory_nanovl.total_bytes) // 2
    plan = plan_budget(dataclasses.replace(MIX, memory_budget_bytes=budget), checkpoint)
    assert plan.admission.accepted and not plan.accepted and "exceeds the budget" in plan.reason
    rec = plan.recommendation
    assert rec.fits
    limits = json.loads(rec.limit_mm_per_prompt_json)
    counts = {m: (v["count"] if isinstance(v, dict) else v) for m, v in limits.items()}
    assert counts != MIX.counts() and all(counts[m] <= MIX.counts()[m] for m in counts)
    # Re-planning with the recommended counts fits the budget.
    replanned = plan_budget(
        dataclasses.replace(
            MIX,
            memory_budget_bytes=budget,
            image=dataclasses.replace(MIX.image, count=counts["image"]),
            video=dataclasses.replace(MIX.video, count=counts["video"]),
            audio=dataclasses.replace(MIX.audio, count=counts["audio"]),
        ),
        checkpoint,
    )
    assert replanned.accepted
    # The dummy-options form vLLM takes, sizes included for the enabled modalities.
    if counts["video"]:
        assert limits["video"]["num_frames"] == MIX.video.num_frames
    if counts["audio"]:
        assert limits["audio"]["length"] == int(MIX.audio.seconds * 16000)


# ------------------------------------------------------------------ dynamic resolution and errors


def test_dynamic_checkpoint_plans_exact_image_tokens():
    path = ensure_tiny_checkpoint("dynamic")
    request = PlanRequest(image=ImageItems(3, 3000, 2000), video=VideoItems(1, 6, 64, 64), max_model_len=512)
    plan = plan_budget(request, path)
    g = plan.geometry
    assert g.dynamic_resolution and g.video_temporal_patch_size == 2
    text_length = dummy_text_length(g, num_videos=1)
    shared = images_tokens(g, [(3000, 2000)] * 3, text_prompt_length=text_length)
    assert plan.modality("image").item == shared[0]
    assert plan.modality("video").item == video_tokens(g, 6, 64, 64)
    assert plan.recommendation.largest_image is not None


def test_invalid_requests(checkpoint):
    with pytest.raises(InvalidArgument):
        plan_budget(PlanRequest(video=VideoItems(1)), checkpoint)  # no frames or size
    with pytest.raises(InvalidArgument):
        plan_budget(PlanRequest(image=ImageItems(-1)), checkpoint)
    with pytest.raises(InvalidArgument):
        plan_budget(PlanRequest(audio=AudioItems(1, 2.0)), ensure_tiny_checkpoint("no-audio"))
    with pytest.raises(InvalidArgument):
        plan_budget(PlanRequest(), checkpoint.parent / "missing")
